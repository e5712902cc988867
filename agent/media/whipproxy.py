"""WHIP signalling through the worker, so that FFmpeg never sees the endpoint or its token.

FFmpeg 9's ``whip`` muxer takes the bearer token only as an option on its command line, where
every local user can read it (``/proc/PID/cmdline``), and the endpoint URL may be secret too.
So FFmpeg is pointed at this proxy (``http://127.0.0.1:PORT/whip/RANDOM``) and the proxy, in the
worker, sends the SDP offer to the real endpoint with ``Authorization: Bearer TOKEN``, returns
the answer, and later relays the ``DELETE`` of the session. On the way the offer is mended where
FFmpeg leaves its retransmission stream undeclared (whipsdp.py), and the answer's candidate is
moved to a UDP relay in the worker (whiprelay.py) that forwards the media (ICE, DTLS, SRTP) to
the receiver and answers the receiver's consent checks, which FFmpeg 9.0.2 drops once media
flows (docs/media.md).

The proxy must not lend the token to anyone else who reads FFmpeg's command line: each path
answers one offer only, and only from a socket that belongs to the FFmpeg process the sink
started (checked in /proc: the client's TCP socket inode among that process's descriptors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urljoin

from agent.media.whiprelay import ConsentRelay
from agent.media.whipsdp import declare_group_ssrcs, ice_credentials, relay_candidate
from agent.safetext import inert

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 256 * 1024
UPSTREAM_TIMEOUT_S = 10.0
PID_WAIT_S = 2.0


def socket_owned_by(pid: int, client: tuple[str, int]) -> bool:
    """Whether the TCP socket on 127.0.0.1:``client[1]`` is one of ``pid``'s descriptors."""
    want = f"0100007F:{client[1]:04X}"
    inode = None
    with contextlib.suppress(OSError), open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            cols = line.split()
            if cols[1] == want:
                inode = cols[9]
                break
    if inode is None:
        return False
    target = f"socket:[{inode}]"
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
    except OSError:
        return False
    return False


class WhipProxy:
    """One sink's signalling relay. ``arm()`` gives the URL for the next FFmpeg process;
    ``bind(pid)`` says which process may use it."""

    def __init__(self, endpoint: str, token: Callable[[], str]) -> None:
        self.endpoint, self._token = endpoint, token
        self._lock = threading.Lock()
        self._path = ""
        self._pid: int | None = None
        self._resource: str | None = None  # the session URL the endpoint answered with
        self._relay: ConsentRelay | None = None  # the media path of the current session
        self._answered_before = 0  # consent checks answered by relays already closed
        self.last_error = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                proxy._offer(self)

            def do_DELETE(self) -> None:
                proxy._delete(self)

            def do_PATCH(self) -> None:
                self.send_error(405)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("whip proxy: " + fmt, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="whip-proxy",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def consent_answered(self) -> int:
        """Consent checks of the receiver answered on FFmpeg's behalf, all sessions."""
        relay = self._relay
        return self._answered_before + (relay.answered if relay is not None else 0)

    def arm(self) -> str:
        """A fresh one-use URL for the next FFmpeg process."""
        self._close_relay()
        with self._lock:
            self._path = f"/whip/{secrets.token_urlsafe(24)}"
            self._pid = None
            self._resource = None
            return f"http://127.0.0.1:{self.port}{self._path}"

    def bind(self, pid: int) -> None:
        with self._lock:
            self._pid = pid

    def close(self) -> None:
        self.delete_session()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def delete_session(self) -> None:
        """End the session: its relay, and at the endpoint (FFmpeg killed before its DELETE)."""
        self._close_relay()
        with self._lock:
            resource, self._resource = self._resource, None
        if resource:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                self._upstream("DELETE", resource, None)

    # -- the requests FFmpeg makes --------------------------------------------------------------

    def _allowed(self, req: BaseHTTPRequestHandler, path: str) -> bool:
        deadline = time.monotonic() + PID_WAIT_S
        while True:
            with self._lock:
                pid, armed = self._pid, self._path
            if pid is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not armed or path != armed or pid is None:
            return False
        return socket_owned_by(pid, req.client_address)

    def _offer(self, req: BaseHTTPRequestHandler) -> None:
        if not self._allowed(req, req.path):
            req.send_error(403, "not this sink's FFmpeg")
            return
        with self._lock:
            self._path = ""  # one offer per armed path
        length = int(req.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_SDP_BYTES:
            req.send_error(400, "SDP offer missing or too large")
            return
        offer = declare_group_ssrcs(req.rfile.read(length))
        credentials = ice_credentials(offer)
        try:
            status, body, location = self._upstream("POST", self.endpoint, offer)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self.last_error = f"the WHIP endpoint did not answer: {exc}"
            req.send_error(502, "WHIP endpoint unreachable")
            return
        if status == 201 and credentials is not None:
            body = self._relayed(body, credentials)
        if status == 201 and location:
            with self._lock:
                self._resource = urljoin(self.endpoint, location)
                session = f"{req.path}/session"
                self._session_path = session
        else:
            self.last_error = f"the WHIP endpoint answered HTTP {status}" + (
                " (check token_file)" if status in (401, 403) else "")
            session = ""
        req.send_response(status)
        req.send_header("Content-Type", "application/sdp")
        req.send_header("Content-Length", str(len(body)))
        if session:
            req.send_header("Location", session)
        req.end_headers()
        req.wfile.write(body)

    def _relayed(self, answer: bytes, credentials: tuple[str, str]) -> bytes:
        """The answer pointing FFmpeg at a new consent relay (unchanged if it cannot be)."""
        self._close_relay()

        def start(target: tuple[str, int]) -> int:
            relay = ConsentRelay(target, *credentials)
            with self._lock:
                self._relay = relay
            return relay.port

        try:
            moved = relay_candidate(answer, start)
        except OSError as exc:
            log.warning("whip proxy: no consent relay (%s); the receiver may end the session "
                        "after ~30 s", inert(exc))
            return answer
        if moved is None:
            log.warning("whip proxy: the answer has no UDP candidate with an IP address to "
                        "relay; FFmpeg connects directly and the receiver may end the session "
                        "after ~30 s (its consent checks go unanswered)")
            return answer
        return moved

    def _close_relay(self) -> None:
        with self._lock:
            relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
            self._answered_before += relay.answered

    def _delete(self, req: BaseHTTPRequestHandler) -> None:
        with self._lock:
            ok = self._resource is not None and req.path == getattr(self, "_session_path", None)
            pid = self._pid
        if not ok or pid is None or not socket_owned_by(pid, req.client_address):
            req.send_error(403)
            return
        self.delete_session()
        req.send_response(200)
        req.send_header("Content-Length", "0")
        req.end_headers()

    def _upstream(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes, str]:
        headers = {"Content-Type": "application/sdp"} if body is not None else {}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        ctx = ssl.create_default_context() if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=UPSTREAM_TIMEOUT_S,
                                        context=ctx) as resp:
                return resp.status, resp.read(MAX_SDP_BYTES), resp.headers.get("Location", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(4096), ""
