"""Hostile HTTP requests for the local server's fuzzers, and what the server must answer.

:func:`requests` builds requests from HTTP's own parts (methods, the agent's real paths and
near misses, queries, ``Host`` values, ``Content-Length`` values, ``Origin``, malformed and
duplicated header lines, bodies, bare ``\\n`` line ends, cut-off requests). :func:`verdict`
says, from the raw bytes and the rules written in agent/status/http.py's docstring (not from
its code), what the answer must be: a refusal code, "the route answers", or "a close is fine".
The fuzzers in tests/test_local_http.py (TCP status address) and tests/test_commands.py (the
control socket) use both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzzing import NASTY_CHARS, unsafe_chars

MAX_HEAD = 8 * 1024
MAX_HEADERS = 64
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,2047}")
_SINGLE = ("host", "content-length", "content-type", "origin")


@dataclass(frozen=True)
class RouteSpec:
    method: str
    #: an exact path, or a prefix ending in "/"
    path: str
    max_body: int = 0

    def matches(self, path: str) -> bool:
        if self.path != "/" and self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path


@dataclass(frozen=True)
class Verdict:
    #: the refusal the server must answer with; None when the route itself answers
    code: int | None
    #: a close without an answer is acceptable (the request never fully arrived)
    may_close: bool = False
    route: RouteSpec | None = None
    method: str = ""
    path: str = ""
    query: str = ""
    headers: dict[str, str] | None = None
    body: bytes = b""


def _host_ok(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def verdict(raw: bytes, routes: list[RouteSpec], tcp: bool) -> Verdict:
    """What the server must answer to ``raw`` (sent whole, then the write side closed)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        if len(raw) > MAX_HEAD:
            return Verdict(431)
        return Verdict(400 if raw else None, may_close=not raw)
    if end + 4 > MAX_HEAD:
        return Verdict(431)
    lines = raw[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if (len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1])
            or parts[2] not in ("HTTP/1.0", "HTTP/1.1")):
        return Verdict(400)
    method, target = parts[0], parts[1]
    if len(lines) - 1 > MAX_HEADERS:
        return Verdict(400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return Verdict(400)
        key, value = name.lower(), value.strip(" \t")
        if key in headers:
            if key in _SINGLE:
                return Verdict(400)
            value = f"{headers[key]}, {value}"
        headers[key] = value
    if tcp:
        if "host" not in headers:
            return Verdict(400)
        if not _host_ok(headers["host"]):
            return Verdict(421)
    if "transfer-encoding" in headers:
        return Verdict(501)
    length = headers.get("content-length", "0")
    if not re.fullmatch(r"[0-9]{1,12}", length):
        return Verdict(400)
    path, _, query = target.partition("?")
    route = next((r for r in routes if r.method == method and r.path == path), None) or next(
        (r for r in routes if r.method == method and r.matches(path)), None)
    if route is None:
        return Verdict(405 if any(r.matches(path) for r in routes) else 404)
    if int(length) > route.max_body:
        return Verdict(413)
    body = raw[end + 4:end + 4 + int(length)]
    return Verdict(None, may_close=len(body) < int(length), route=route, method=method,
                   path=path, query=query, headers=headers, body=body)


# -- the requests ------------------------------------------------------------------------------

_METHODS = ["GET", "GET", "POST", "POST", "HEAD", "DELETE", "PATCH", "get", "GET\n", "G T", "",
            "A" * 17, "OPTIONS"]
_ODD_PATHS = ["/nope", "//", "/status.json/", "/STATUS.JSON", "/command/", "/command",
              "/command/report_now", "/command/%0a%1b%5b2J", "/command/lesson%5fstart",
              "/command/" + "x" * 3000, "/" + "y" * 2100, "/\x00", "/é", "/a b", "/x\n", "*",
              "http://evil.example/", "/%2e%2e/%2e%2e/etc/passwd", "/page.json?lang=",
              "/i18n.json?lang=zh_CN", "/page.json?lang=\x1b[2J", "/?lang=" + "x" * 300]
_HOSTS = ["localhost", "127.0.0.1", "127.0.0.1:8089", "[::1]:8089", "::1", "LOCALHOST:1",
          "evil.example", "evil.example:8089", "127.0.0.1.nip.io", "localhost.", "",
          "[::1", "[evil]:80", "1.2.3.4:abc:1", "0x7f000001", "127.1", "fe80::1%eth0",
          "\u202elocalhost", "localhost\x00evil"]
_LENGTHS = ["0", "3", "5", "65536", "65537", "-1", "+3", "3 ", " 3", "\u00b2", "\u00b3",
            "1" * 13, "0x10", "", "3, 3", "99999999999"]
#: The page's key in the fuzzers' servers, and near misses of it.
PAGE_KEY = "k" * 20 + "-fuzz-key_0123456789"
_KEYS = [PAGE_KEY, PAGE_KEY, PAGE_KEY + "x", PAGE_KEY[:-1], PAGE_KEY.upper(), "", " " + PAGE_KEY,
         "\u00e9" + PAGE_KEY[1:]]
_CTYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
           "text/plain", "", "application/json\x00"]
_text = st.text(st.characters(max_codepoint=0x2FF) | st.sampled_from(NASTY_CHARS), max_size=16)


@st.composite
def _header(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "host", "length", "ctype", "origin", "te", "key",
                                 "random", "malformed"]))
    if kind == "key":
        return draw(st.sampled_from(["X-Page-Key", "x-page-key", "X-Page-Key "])) + ": " + draw(
            st.sampled_from(_KEYS) | _text)
    if kind == "host":
        return "Host: " + draw(st.sampled_from(_HOSTS) | _text)
    if kind == "length":
        return "Content-Length: " + draw(st.sampled_from(_LENGTHS))
    if kind == "ctype":
        return "Content-Type: " + draw(st.sampled_from(_CTYPES))
    if kind == "origin":
        return "Origin: " + draw(st.sampled_from(["null", "http://evil.example", ""]))
    if kind == "te":
        return "Transfer-Encoding: chunked"
    if kind == "random":
        return draw(st.sampled_from(["X-A", "Accept", "Cookie", "x" * 65, "Bad Name", "Host\n",
                                     "Content-Length\t"]) | _text) + ": " + draw(_text)
    return draw(st.sampled_from([" folded", "no colon", ":", ": empty name", "\x00: x"]) | _text)


@st.composite
def requests(draw: st.DrawFn, paths: list[str]) -> bytes:
    """One request's raw bytes, aimed at ``paths``: half of them well-formed but for one or two
    header lines (so that a bad value reaches the checks deep in the server, not only the
    request line), the other half spoiled anywhere."""
    clean = draw(st.booleans())
    if clean:
        method = draw(st.sampled_from(["GET", "GET", "POST"]))
        path = draw(st.sampled_from(paths))
        version, eol = "HTTP/1.1", "\r\n"
        headers = ["Host: 127.0.0.1", *draw(st.lists(_header(), min_size=1, max_size=2))]
    else:
        method = draw(st.sampled_from(_METHODS))
        path = draw(st.sampled_from(paths) | st.sampled_from(_ODD_PATHS)
                    | _text.map(lambda t: "/" + t))
        version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "http/1.1", ""]))
        eol = draw(st.sampled_from(["\r\n"] * 8 + ["\n", "\r"]))
        headers = draw(st.lists(_header(), max_size=6))
        if draw(st.booleans()):
            headers.insert(0, "Host: 127.0.0.1")
        if draw(st.integers(0, 30)) == 0:
            headers += ["X-Many: 1"] * 70
        if draw(st.integers(0, 30)) == 0:
            headers.append("X-Big: " + "b" * 9000)
    body = draw(st.binary(max_size=40) | st.sampled_from(
        [b'{"id": "f-1", "args": {}}', b'{"id": "\\u001b[2J", "args": {}}', b"{" * 3000]))
    if not any(h.lower().startswith("content-length") for h in headers) and draw(st.booleans()):
        headers.append(f"Content-Length: {len(body)}")
    head = eol.join([f"{method} {path} {version}".rstrip(" ") if version else f"{method} {path}",
                     *headers]) + eol + eol
    # Bytes as a browser sends them (UTF-8) or one byte per character (latin-1, what the server
    # decodes with): "²" must also arrive as the single byte 0xB2.
    latin = draw(st.booleans()) and all(ord(c) < 256 for c in head)
    raw = (head.encode("latin-1") if latin else head.encode("utf-8", "surrogatepass")) + body
    if not clean and draw(st.integers(0, 9)) == 0:  # cut off anywhere
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


# -- what is served ----------------------------------------------------------------------------

#: The read-only status routes (agent/status/endpoints.py, page.py) on both addresses.
STATUS_GETS = ("/", "/page.js", "/page.css", "/favicon.ico", "/page.json", "/i18n.json",
               "/snapshot.json", "/level.json", "/status.json", "/metrics")
#: POST /command/{name} on either address (the socket runs it, TCP refuses it).
COMMAND_POST = RouteSpec("POST", "/command/", 4 * 16384)
#: What needs the page's key on the status address.
KEYED = ("/snapshot.json", "/level.json")


class FakePeeker:
    """The page's camera and microphone as the routes see them (agent/media/peek.py's Peeker
    opens real devices in a child process; here only the key in front of it is under test)."""

    def snapshot(self) -> dict[str, Any]:
        return {"jpeg": "", "width": 1, "height": 1}

    def level(self) -> dict[str, Any]:
        return {"rms_dbfs": -60.0, "peak_dbfs": -50.0}


def key_verdict(headers: dict[str, str]) -> int:
    """200 when the request carries exactly the page's key, else 403."""
    return 200 if headers.get("x-page-key") == PAGE_KEY else 403


@contextlib.contextmanager
def status_board(state: Path) -> Iterator[Any]:
    """A real StatusBoard (a real config, outbox and never-connected publisher): the snapshot
    the routes serve."""
    from agent import config
    from agent.outbox import Outbox
    from agent.publisher import Publisher
    from agent.records import Envelope
    from agent.status.board import StatusBoard

    cfg = config.loads(f"device: {{id: room-101, school: school-a}}\nstate_dir: {state}\n")
    outbox = Outbox(state, cfg.outbox, Envelope("room-101", "school-a"))
    pub = Publisher(cfg.mqtt, outbox.envelope, outbox, state, 1.0, time.time(),
                    command_sink=lambda *_a: None)
    try:
        yield StatusBoard(cfg, "agent.yaml", time.time(), outbox, lambda: pub, dict)
    finally:
        outbox.close()


# -- talking to the server ---------------------------------------------------------------------


def exchange(address: str | tuple[str, int], raw: bytes, timeout: float = 10) -> bytes:
    """Send ``raw``, half-close, read the whole answer (b"" if the server just closed)."""
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX)
        s.connect(address)
    else:
        s = socket.create_connection(address)
    with s:
        s.settimeout(timeout)
        with contextlib.suppress(OSError):  # the server may refuse before reading it all
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@dataclass(frozen=True)
class Answer:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


#: Largest answer the local server may give to any request here (the status JSON is ~10 KiB).
MAX_ANSWER = 256 * 1024


def parse_answer(answer: bytes) -> Answer:
    """A well-formed HTTP/1.1 answer, bounded, its length right; a text refusal echoes nothing
    un-neutralised (only its own line ends)."""
    assert answer.startswith(b"HTTP/1.1 ") and len(answer) <= MAX_ANSWER, answer[:300]
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep, answer[:300]
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body), answer[:300]
    code = int(lines[0].split(" ")[1])
    if headers["content-type"].startswith("text/plain"):
        assert not unsafe_chars(body.decode("utf-8"), "\n"), body
    return Answer(code, headers, body)
