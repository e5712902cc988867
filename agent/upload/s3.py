"""A small S3 client of our own: AWS Signature V4 over http.client, the calls the uploader needs.

Why not boto3 or the MinIO SDK: measured in bench/upload.py (docs/upload.md), importing boto3 adds
~40 MB to the daemon's RSS (its target is 35 MB in all) and the MinIO SDK ~20 MB (urllib3,
certifi, pycryptodome, argon2); this client adds under 1 MB and spends less CPU per byte. It
speaks what every S3-compatible store (MinIO, Ceph RGW, SeaweedFS, the cloud services) accepts:
path-style URLs, SigV4, a signed Content-MD5 on every body (bodies as ``UNSIGNED-PAYLOAD``).

Bodies are streamed from the file in blocks (never a whole part in memory), through a
:class:`~agent.throttle.TokenBucket` and a ``keep_going`` check between blocks, so a cap is
kept and a lesson that starts can stop a part at once. Everything the store answers is
untrusted: bodies are read up to a bound, XML is parsed only from those, and error texts are
clipped before they reach a log or an event.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote, urlsplit

from agent.throttle import TokenBucket

if TYPE_CHECKING:  # both are imported when first needed: the daemon holds this module always,
    # uploads or not (xml.etree with pyexpat ~0.6 MB; ssl only for an https:// store)
    import ssl
    import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
BLOCK = 64 * 1024
MAX_ANSWER = 1 << 20  # bytes of a store's answer we read at most (XML listings, errors)
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Error(Exception):
    """The store answered with an error (``status``, S3 ``code``) or could not be reached
    (``status`` 0, ``code`` the OS error's kind)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def network(self) -> bool:
        return self.status == 0


class Stopped(Exception):
    """``keep_going`` said stop while a body was being sent (a lesson started, agent stopping)."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # without quotes
    size: int


@dataclass(frozen=True)
class Body:
    """A byte range of a file, with its MD5 (computed beforehand, in a first read)."""

    path: Path
    offset: int
    size: int
    md5: bytes
    #: Fed every block as it is read for sending (the file's SHA-256, computed while the
    #: network drains instead of in a pass of its own).
    tap: Callable[[bytes], object] | None = field(default=None, compare=False)

    def blocks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.size
            while left > 0:
                chunk = f.read(min(BLOCK, left))
                if not chunk:
                    raise S3Error(0, "file_changed", f"{self.path} is shorter than expected")
                left -= len(chunk)
                if self.tap is not None:
                    self.tap(chunk)
                yield chunk


def digest_range(f: BinaryIO, size: int, whole: hashlib._Hash | None = None) -> bytes:
    """MD5 (raw) of the next ``size`` bytes of ``f``; ``whole`` (the file's own SHA-256) is fed
    the same bytes on the way."""
    md5 = hashlib.md5(usedforsecurity=False)
    left = size
    while left > 0:
        chunk = f.read(min(1 << 20, left))
        if not chunk:
            raise S3Error(0, "file_changed", "file is shorter than expected")
        md5.update(chunk)
        if whole is not None:
            whole.update(chunk)
        left -= len(chunk)
    return md5.digest()


class S3Client:
    """One connection to one bucket; not thread-safe (the uploader has one thread)."""

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str,
                 secret_key: str, *, ca_file: str | None = None, verify: bool = True,
                 timeout_s: float = 30.0, bucket_limiter: TokenBucket | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        default = (self.scheme == "https" and self.port == 443) or (
            self.scheme == "http" and self.port == 80)
        self.host_header = self.host if default else f"{self.host}:{self.port}"
        self.bucket, self.region = bucket, region
        self._access, self._secret = access_key, secret_key
        self.timeout_s = timeout_s
        self.limiter = bucket_limiter
        self._clock = clock
        self._ctx: ssl.SSLContext | None = None
        if self.scheme == "https":
            import ssl

            self._ctx = ssl.create_default_context(cafile=ca_file)
            if not verify:
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPConnection | None = None
        self.bytes_sent = 0

    def __repr__(self) -> str:  # never the keys
        return f"S3Client({self.scheme}://{self.host_header}/{self.bucket})"

    # -- the calls ------------------------------------------------------------------------------

    def head_bucket(self) -> None:
        self._call("HEAD", "", {}, ok=(200,))

    def create_bucket(self) -> None:
        """For tests and benchmarks: the agent itself never creates buckets."""
        self._call("PUT", "", {}, ok=(200,))

    def head_object(self, key: str) -> Answer | None:
        try:
            return self._call("HEAD", key, {}, ok=(200,))
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    def put_object(self, key: str, body: Body, meta: dict[str, str], content_type: str,
                   keep_going: Callable[[], bool] = lambda: True) -> str:
        ans = self._call("PUT", key, {}, body=body, ok=(200,), keep_going=keep_going,
                         headers={"content-type": content_type, **_meta(meta)})
        return _etag(ans)

    def put_bytes(self, key: str, data: bytes, meta: dict[str, str], content_type: str) -> str:
        ans = self._call("PUT", key, {}, data=data, ok=(200,),
                         headers={"content-type": content_type, **_meta(meta)})
        return _etag(ans)

    def create_multipart(self, key: str, meta: dict[str, str], content_type: str) -> str:
        ans = self._call("POST", key, {"uploads": ""}, ok=(200,),
                         headers={"content-type": content_type, **_meta(meta)})
        upload_id = _text(_xml(ans.body), "UploadId")
        if not upload_id:
            raise S3Error(ans.status, "bad_answer", "CreateMultipartUpload without an UploadId")
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, body: Body,
                    keep_going: Callable[[], bool] = lambda: True) -> str:
        ans = self._call("PUT", key, {"partNumber": str(number), "uploadId": upload_id},
                         body=body, ok=(200,), keep_going=keep_going)
        return _etag(ans)

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        marker = ""
        for _ in range(10_000):  # 10,000 parts at most in S3; a store that loops is cut off
            q = {"uploadId": upload_id, "max-parts": "1000"}
            if marker:
                q["part-number-marker"] = marker
            root = _xml(self._call("GET", key, q, ok=(200,)).body)
            for p in root.iter(f"{_NS}Part"):
                parts.append(Part(int(_text(p, "PartNumber") or 0),
                                  (_text(p, "ETag") or "").strip('"'), int(_text(p, "Size") or 0)))
            if (_text(root, "IsTruncated") or "").lower() != "true":
                break
            marker = _text(root, "NextPartNumberMarker") or ""
            if not marker:
                break
        return parts

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>\"{e}\"</ETag></Part>"
                      for n, e in sorted(parts))
        data = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        ans = self._call("POST", key, {"uploadId": upload_id}, data=data, ok=(200,))
        root = _xml(ans.body)
        if root.tag.endswith("Error"):  # S3 may answer 200 and an error in the body
            raise S3Error(ans.status, _text(root, "Code") or "InternalError",
                          _clip(_text(root, "Message") or "CompleteMultipartUpload failed"))
        return (_text(root, "ETag") or "").strip('"')

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call("DELETE", key, {"uploadId": upload_id}, ok=(204, 200))
        except S3Error as exc:
            if exc.status != 404:
                raise

    def list_multipart(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the unfinished multipart uploads under ``prefix``."""
        out: list[tuple[str, str]] = []
        key_marker = id_marker = ""
        for _ in range(1000):
            q = {"uploads": "", "prefix": prefix, "max-uploads": "1000"}
            if key_marker:
                q["key-marker"], q["upload-id-marker"] = key_marker, id_marker
            root = _xml(self._call("GET", "", q, ok=(200,)).body)
            for u in root.iter(f"{_NS}Upload"):
                out.append((_text(u, "Key") or "", _text(u, "UploadId") or ""))
            if (_text(root, "IsTruncated") or "").lower() != "true":
                break
            key_marker = _text(root, "NextKeyMarker") or ""
            id_marker = _text(root, "NextUploadIdMarker") or ""
            if not key_marker:
                break
        return out

    def get_object(self, key: str) -> bytes:
        """For tests: the whole object (bounded by nothing but the caller's sense)."""
        return self._call("GET", key, {}, ok=(200,), limit=None).body

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    # -- the wire -------------------------------------------------------------------------------

    def _call(self, method: str, key: str, query: dict[str, str], *, ok: tuple[int, ...],
              body: Body | None = None, data: bytes | None = None,
              headers: dict[str, str] | None = None,
              keep_going: Callable[[], bool] = lambda: True,
              limit: int | None = MAX_ANSWER) -> Answer:
        path = "/" + quote(self.bucket, safe="") + ("/" + quote(key, safe="/~") if key else "")
        if body is not None:
            # The body's integrity rests on Content-MD5 (signed, checked by the store, echoed
            # as the ETag): a SHA-256 payload hash on top cost a third hash pass here and one
            # in the store (bench/upload.py: docs/upload.md).
            size, payload_hash, md5 = body.size, UNSIGNED, body.md5
        elif data is not None:
            size, payload_hash = len(data), hashlib.sha256(data).hexdigest()
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
        else:
            size, payload_hash, md5 = 0, EMPTY_SHA256, None
        hdrs = {"host": self.host_header, "x-amz-content-sha256": payload_hash,
                **(headers or {})}
        if body is not None or data is not None:
            hdrs["content-length"] = str(size)
            hdrs["content-md5"] = _b64(md5 or b"")
        query_text = _canonical_query(query)
        hdrs.update(self._sign(method, path, query_text, hdrs, payload_hash))
        url = path + (f"?{query_text}" if query_text else "")
        ans = self._exchange(method, url, hdrs, body, data, keep_going, limit)
        if ans.status not in ok:
            raise _error(ans)
        return ans

    def _exchange(self, method: str, url: str, hdrs: dict[str, str], body: Body | None,
                  data: bytes | None, keep_going: Callable[[], bool],
                  limit: int | None) -> Answer:
        conn = self._connection()
        try:
            conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            if data:
                self._send(conn, data)
            elif body is not None:
                for chunk in body.blocks():
                    if not keep_going():
                        raise Stopped()
                    self._send(conn, chunk)
            resp = conn.getresponse()
            answer = resp.read() if limit is None else resp.read(limit)
            if limit is not None and not resp.isclosed():
                self.close()  # an answer over the bound: never reuse that connection
            headers = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.close()
            return Answer(resp.status, headers, answer)
        except Stopped:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            refused = _certificate_refused(exc) if self._ctx is not None else None
            if refused is not None:
                raise S3Error(0, "tls", _clip(refused)) from None
            kind = "timeout" if isinstance(exc, socket.timeout | TimeoutError) else "network"
            raise S3Error(0, kind, _clip(f"{type(exc).__name__}: {exc}")) from None

    def _send(self, conn: http.client.HTTPConnection, chunk: bytes) -> None:
        if self.limiter is not None:
            self.limiter.take(len(chunk))
        conn.send(chunk)
        self.bytes_sent += len(chunk)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ctx is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.timeout_s, context=self._ctx)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout_s)
        return self._conn

    def _sign(self, method: str, path: str, query: str, hdrs: dict[str, str],
              payload_hash: str) -> dict[str, str]:
        """AWS Signature Version 4 (header form); returns the headers to add."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        signed = {k.lower(): " ".join(str(v).split()) for k, v in hdrs.items()}
        signed["x-amz-date"] = amz_date
        names = sorted(signed)
        canonical = "\n".join([method, path, query,
                               "".join(f"{k}:{signed[k]}\n" for k in names),
                               ";".join(names), payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self._secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {"x-amz-date": amz_date, "authorization": (
            f"AWS4-HMAC-SHA256 Credential={self._access}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={sig}")}


def _canonical_query(q: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(q.items()))


def _meta(meta: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{k}": v for k, v in meta.items()}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _etag(ans: Answer) -> str:
    return ans.headers.get("etag", "").strip('"')


def _certificate_refused(exc: BaseException) -> str | None:
    """Why the store's certificate was refused, when that is what ``exc`` is."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    return None


def _xml(body: bytes) -> ET.Element:
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error(0, "bad_answer", f"the store answered with unreadable XML ({exc})") from None


def _text(node: ET.Element, tag: str) -> str | None:
    found = node.find(f"{_NS}{tag}")
    if found is None:
        found = node.find(tag)
    return found.text if found is not None else None


def _error(ans: Answer) -> S3Error:
    code, message = "", ""
    if ans.body:
        with contextlib.suppress(S3Error):
            root = _xml(ans.body)
            code, message = _text(root, "Code") or "", _text(root, "Message") or ""
    if not code:
        code = {400: "BadRequest", 403: "AccessDenied", 404: "NotFound",
                503: "SlowDown"}.get(ans.status, f"HTTP{ans.status}")
    return S3Error(ans.status, _clip(code, 64), _clip(message or http.client.responses.get(
        ans.status, "error")))


def _clip(text: str, n: int = 300) -> str:
    """One printable line of at most ``n`` characters: a store's text cannot forge log lines."""
    flat = "".join(c if c.isprintable() else " " for c in str(text))
    return flat if len(flat) <= n else flat[:n] + "..."
