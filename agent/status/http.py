"""Local HTTP plumbing: requests, responses, routes, and a server that stays bounded.

Routes map a method and a path (or a path prefix) to a handler ``Request -> Response``; new
endpoints are one :meth:`Routes.get` or :meth:`Routes.post` call (agent/status/endpoints.py,
agent/control.py). The server knows nothing of what it serves.

Why not ``http.server``: it spends a thread per connection and waits forever for a request, so a
local user holding a thousand half-sent requests took the agent to its open-file limit, and the
media worker of the next lesson could not start (docs/security.md). This server runs one
``selectors`` loop on one thread for all connections (not asyncio: its modules alone are ~1.4 MB
of the daemon's RSS, issue 12) and is bounded in every dimension:

- connections: at most ``Limits.max_connections`` open; when a new one arrives at the cap, the
  oldest connection still sending its request is closed (a client that sends its request at once,
  like the CLI, is served before it can be pushed out, whatever a flooder does);
- time: the whole request (head and body) must arrive within ``request_timeout_s``, the response
  must be taken within ``write_timeout_s``;
- memory: the head is read up to ``max_head_bytes`` (431 beyond), the body up to what its route
  takes (413 beyond; nothing for a route that takes none, or no route), one request per
  connection (``Connection: close``);
- work: handlers run on ``workers`` threads with at most ``max_pending`` requests waiting
  (503 beyond), so a slow handler never stalls the loop.

On TCP the ``Host`` header must name this machine by IP address or ``localhost``: a web page that
re-points its own domain name at 127.0.0.1 (DNS rebinding) sends its own name and is refused.
A Unix socket has no such problem (no browser reaches it); there the peer's uid is known
(``SO_PEERCRED``) and the file's group decides who may connect (agent/control.py).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import queue
import re
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from agent import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """Who is asking: an IP address (TCP) or the uid/pid of a local process (Unix socket)."""

    address: str = ""
    uid: int | None = None
    pid: int | None = None

    def __str__(self) -> str:
        if self.uid is not None:
            return f"uid {self.uid} (pid {self.pid})"
        return self.address or "?"


@dataclass(frozen=True)
class Request:
    method: str
    #: The path without the query, as sent (percent-escapes not decoded).
    path: str
    query: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    peer: Peer = field(default_factory=Peer)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, body: str, status: int = 200) -> Response:
        return cls(status, body.encode("utf-8"))

    @classmethod
    def json(cls, doc: Any, status: int = 200, indent: int | None = None) -> Response:
        return cls(status, json.dumps(doc, indent=indent).encode(), "application/json")


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    handler: Handler
    #: Largest request body this route reads (413 beyond); 0 for a route that takes none.
    max_body: int = 0


class Routes:
    """Exact paths and path prefixes per method; unknown paths are 404, wrong methods 405.
    Each route says how large a body it takes, so nothing is read for a route that takes none."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        self._prefix: list[tuple[str, str, Route]] = []

    def get(self, path: str, handler: Handler) -> Routes:
        return self.add("GET", path, handler)

    def post(self, path: str, handler: Handler, max_body: int = 0) -> Routes:
        return self.add("POST", path, handler, max_body)

    def add(self, method: str, path: str, handler: Handler, max_body: int = 0) -> Routes:
        """``path`` ending in ``/`` (other than ``/`` itself) matches every path below it."""
        route = Route(handler, max_body)
        if path != "/" and path.endswith("/"):
            self._prefix.append((method, path, route))
        else:
            self._exact[(method, path)] = route
        return self

    def include(self, other: Routes) -> Routes:
        self._exact.update(other._exact)
        self._prefix.extend(other._prefix)
        return self

    def paths(self, method: str = "GET") -> list[str]:
        return sorted(p for m, p in self._exact if m == method)

    def find(self, method: str, path: str) -> Route | Response:
        route = self._exact.get((method, path))
        if route is None:
            route = next((r for m, p, r in self._prefix if m == method and path.startswith(p)),
                         None)
        if route is not None:
            return route
        if any(p == path for _m, p in self._exact) or any(
                path.startswith(p) for _m, p, _r in self._prefix):
            return Response.text(f"method {method} is not allowed here\n", 405)
        known = ", ".join(self.paths()) or "nothing"
        return Response.text(f"not found: try {known}\n", 404)


@dataclass(frozen=True)
class Limits:
    #: Wide enough that a client sending its request at once is read before that many newer
    #: connections push it out, small enough for the fd budget (the default limit is 1,024).
    max_connections: int = 128
    request_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    max_head_bytes: int = 8 * 1024
    max_headers: int = 64
    workers: int = 2
    max_pending: int = 8


@dataclass
class ServerStats:
    connections_total: int = 0
    open: int = 0
    #: closed to make room for a new connection while still sending their request
    evicted_total: int = 0
    #: closed because the request or the response took too long
    timed_out_total: int = 0
    #: answered 503: every handler thread busy and the waiting list full
    busy_total: int = 0
    #: malformed, oversized or for another host
    refused_total: int = 0


@dataclass(frozen=True)
class TcpListener:
    host: str
    port: int


@dataclass(frozen=True)
class UnixListener:
    path: str
    #: Mode of the socket file: who may connect is who may write it.
    mode: int = 0o660
    #: Group of the socket file (a name); None keeps the process's group.
    group: str | None = None


Listener = TcpListener | UnixListener

# Used with fullmatch: "$" would also match before a final "\n" ("GET\n" was a method).
_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,2047}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_LENGTH = re.compile(r"[0-9]{1,12}")  # ASCII digits: str.isdigit() takes "²", int() does not
#: Connections accepted per loop iteration at most.
_ACCEPT_BATCH = 16
#: How often the server logs that it is shedding connections (the counts are in the stats).
_FLOOD_LOG_S = 60.0


@dataclass(eq=False)
class _Conn:
    """One connection: reading its request, waiting for its handler, or writing its answer."""

    sock: socket.socket
    peer: Peer
    #: Monotonic time by which the request must have arrived (reading) or the answer been
    #: taken (writing); _NEVER while a handler works.
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    #: Once the head is parsed: the request without its body, its route and the body's length.
    head: tuple[Request, Route, int] | None = None
    out: memoryview | None = None
    closed: bool = False


_LISTENER, _WAKE = object(), object()
_NEVER = float("inf")


class _Workers:
    """``count`` handler threads, started at the first request."""

    def __init__(self, count: int, name: str, done: Callable[[_Conn, Response], None]) -> None:
        self._count, self._name, self._done = count, name, done
        self._jobs: queue.SimpleQueue[tuple[_Conn, Handler, Request] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def submit(self, conn: _Conn, handler: Handler, req: Request) -> None:
        while len(self._threads) < self._count:
            t = threading.Thread(target=self._work, daemon=True,
                                 name=f"{self._name}-handler_{len(self._threads)}")
            self._threads.append(t)
            t.start()
        self._jobs.put((conn, handler, req))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._stopped:  # requests still waiting at stop are dropped, not served
                conn, handler, req = job
                self._done(conn, _call(handler, req, self._name))

    def stop(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(None)


class HttpServer:
    """Serves ``routes`` on ``listener`` from one thread; see the module docstring for bounds.

    The listening socket is bound in the constructor, so a port in use fails the daemon's start
    (with its cause) instead of a thread later.
    """

    def __init__(self, routes: Routes, listener: Listener, limits: Limits = Limits(),
                 name: str = "status") -> None:
        self.routes = routes
        self.listener = listener
        self.limits = limits
        self.name = name
        self.stats = ServerStats()
        self._sock = _bind(listener)
        self._sel = selectors.DefaultSelector()
        self._conns: set[_Conn] = set()
        #: Connections still sending their request, oldest first: the ones evicted at the cap.
        self._reading: OrderedDict[_Conn, None] = OrderedDict()
        self._pending = 0
        self._finished: queue.SimpleQueue[tuple[_Conn, Response]] = queue.SimpleQueue()
        # Handler threads wake the loop through it (a socket object: once closed, a late
        # handler's write fails instead of landing on whatever reuses the fd number).
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._workers = _Workers(limits.workers, name, self._handled)
        self._accept_paused_until: float | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._last_flood_log = -_FLOOD_LOG_S
        self._shed_since_log = 0

    @property
    def address(self) -> str:
        if isinstance(self.listener, UnixListener):
            return self.listener.path
        host, port = self._sock.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._wake()
            self._thread.join(10)
        self._workers.stop()
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        if isinstance(self.listener, UnixListener):
            with contextlib.suppress(OSError):
                os.unlink(self.listener.path)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sock.setblocking(False)
            self._sel.register(self._sock, selectors.EVENT_READ, _LISTENER)
            self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            log.debug("%s: serving on %s (%s)", self.name, self.address,
                      type(self._sel).__name__)
            self._ready.set()
            while not self._stopping:
                self._step()
        except Exception:
            log.exception("%s: the local HTTP server stopped", self.name)
        finally:
            for conn in list(self._conns):
                self._close(conn)
            self._sel.close()

    def _step(self) -> None:
        """One wait and what it brought. With nothing open it waits for a connection only: an
        idle agent's status thread never wakes (issue 12)."""
        for key, events in self._sel.select(self._timeout()):
            if key.data is _LISTENER:
                self._accept()
            elif key.data is _WAKE:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                while True:
                    try:
                        conn, response = self._finished.get_nowait()
                    except queue.Empty:
                        break
                    self._pending -= 1
                    if not conn.closed:
                        self._respond(conn, response)
            elif not key.data.closed:
                if events & selectors.EVENT_READ:
                    self._read(key.data)
                elif events & selectors.EVENT_WRITE:
                    self._write(key.data)
        self._expire()

    def _timeout(self) -> float | None:
        due = min((c.deadline for c in self._conns), default=_NEVER)
        if self._accept_paused_until is not None:
            due = min(due, self._accept_paused_until)
        return None if due == _NEVER else max(0.0, due - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._sel.register(self._sock, selectors.EVENT_READ, _LISTENER)
        for conn in [c for c in self._conns if c.deadline <= now]:
            self._close(conn)
            self.stats.timed_out_total += 1
            self._note_shed()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the loop wakes anyway; closed: stopped
            self._wake_w.send(b"\0")

    def _handled(self, conn: _Conn, response: Response) -> None:
        """A handler thread's answer, handed to the loop."""
        self._finished.put((conn, response))
        self._wake()

    # -- connections -------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of fds or memory: stop accepting for a second
                log.warning("%s: cannot accept a connection (%s); trying again in 1 s",
                            self.name, exc.strerror or exc)
                self._sel.unregister(self._sock)
                self._accept_paused_until = time.monotonic() + 1.0
                return
            sock.setblocking(False)
            conn = _Conn(sock, _peer(sock, self.listener),
                         time.monotonic() + self.limits.request_timeout_s)
            self.stats.connections_total += 1
            self.stats.open += 1
            self._conns.add(conn)
            self._make_room()
            self._reading[conn] = None
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _make_room(self) -> None:
        """At the cap, close the oldest connection that has not finished sending its request."""
        while len(self._conns) > self.limits.max_connections and self._reading:
            oldest = next(iter(self._reading))
            self._close(oldest)
            self.stats.evicted_total += 1
            self._note_shed()

    def _close(self, conn: _Conn) -> None:
        """At once, no lingering: the fd is released now."""
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()
        self.stats.open -= 1

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)  # the client went away; nothing to answer
            return
        if not data:
            if conn.head is None and conn.buf:
                self._answer_refusal(conn, Response.text("incomplete request\n", 400))
            else:
                self._close(conn)
            return
        conn.buf += data
        if conn.head is None:
            parsed = self._read_head(conn)
            if isinstance(parsed, Response):
                self._answer_refusal(conn, parsed)
                return
            if parsed is None:
                return  # more to come
            conn.head = parsed
        req, route, length = conn.head
        if len(conn.buf) < length:
            return
        self._reading.pop(conn, None)
        self._sel.unregister(conn.sock)
        self._dispatch(conn, Request(req.method, req.path, req.query, req.headers,
                                     bytes(conn.buf[:length]), req.peer), route)

    def _read_head(self, conn: _Conn) -> tuple[Request, Route, int] | Response | None:
        """The head once it is all there (the body's bytes stay in ``conn.buf``)."""
        limit = self.limits.max_head_bytes
        end = conn.buf.find(b"\r\n\r\n")
        if end == -1:
            if len(conn.buf) - 3 > limit:
                return Response.text(f"request head over {limit} bytes\n", 431)
            return None
        if end > limit:
            return Response.text(f"request head over {limit} bytes\n", 431)
        lines = conn.buf[:end].decode("latin-1").split("\r\n")
        del conn.buf[:end + 4]
        parts = lines[0].split(" ")
        if (len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1])
                or parts[2] not in ("HTTP/1.0", "HTTP/1.1")):
            return Response.text("malformed request line\n", 400)
        method, target, _version = parts
        headers = _parse_headers(lines[1:], self.limits.max_headers)
        if headers is None:
            return Response.text("malformed or too many header lines\n", 400)
        path, _, query = target.partition("?")
        route = self.routes.find(method, path)
        refused = self._check_headers(headers, route)
        if refused is not None:
            return refused
        assert isinstance(route, Route)
        length = int(headers.get("content-length", "0"))
        return Request(method, path, query, headers, b"", conn.peer), route, length

    def _answer_refusal(self, conn: _Conn, response: Response) -> None:
        self._reading.pop(conn, None)
        if response.status not in (404, 405):
            self.stats.refused_total += 1
        self._sel.unregister(conn.sock)
        self._respond(conn, response)

    def _check_headers(self, headers: Mapping[str, str], route: Route | Response,
                       ) -> Response | None:
        if isinstance(self.listener, TcpListener):
            wrong_host = _check_host(headers.get("host"), self.listener.port)
            if wrong_host is not None:
                return wrong_host
        if "transfer-encoding" in headers:
            return Response.text("Transfer-Encoding is not supported; send Content-Length\n", 501)
        length = headers.get("content-length", "0")
        if not _LENGTH.fullmatch(length):
            return Response.text("Content-Length is not a number\n", 400)
        if isinstance(route, Response):  # 404 or 405: no body is read for it
            return route
        if int(length) > route.max_body:
            return Response.text(f"body over {route.max_body} bytes\n", 413)
        return None

    def _dispatch(self, conn: _Conn, req: Request, route: Route) -> None:
        if self._pending >= self.limits.workers + self.limits.max_pending:
            self.stats.busy_total += 1
            self._note_shed()
            self._respond(conn, Response.text("busy: too many requests at once; retry shortly\n",
                                              503))
            return
        self._pending += 1
        conn.deadline = _NEVER  # the handler's time is not the client's
        self._workers.submit(conn, route.handler, req)

    def _respond(self, conn: _Conn, response: Response) -> None:
        conn.out = memoryview(_encode(response))
        conn.deadline = time.monotonic() + self.limits.write_timeout_s
        self._write(conn)
        if not conn.closed:
            self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)

    def _note_shed(self) -> None:
        """Log shedding at most once a minute: a flood must not become a flood of log lines."""
        self._shed_since_log += 1
        now = time.monotonic()
        if now - self._last_flood_log < _FLOOD_LOG_S:
            return
        s = self.stats
        log.warning("%s: %d connection(s) shed since the last report (%d closed to make room "
                    "at %d open, %d timed out, %d answered busy in all); a program on this PC "
                    "may be flooding %s. The agent's other work is not affected.", self.name,
                    self._shed_since_log, s.evicted_total, self.limits.max_connections,
                    s.timed_out_total, s.busy_total, self.address)
        self._last_flood_log = now
        self._shed_since_log = 0

def _call(handler: Handler, req: Request, name: str) -> Response:
    try:
        return handler(req)
    except Exception:
        log.exception("%s: %s %s failed", name, req.method, req.path[:100])
        return Response.text("the agent failed to answer; see its log\n", 500)


def _parse_headers(lines: list[str], max_headers: int) -> dict[str, str] | None:
    if len(lines) > max_headers:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # also refuses obsolete folded lines
            return None
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key in ("host", "content-length", "content-type", "origin"):
                return None  # two of these can only be a trick
            value = f"{headers[key]}, {value}"
        headers[key] = value
    return headers


def _check_host(host: str | None, port: int) -> Response | None:
    """Only ``localhost`` or an IP address: a DNS-rebinding page sends its own domain name."""
    if host is None:
        return Response.text("a Host header is required\n", 400)
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.lower() == "localhost" or _is_ip(name):
        return None
    return Response.text(
        f"this is the classroom agent's status; it answers only to its IP address or localhost "
        f"(Host {host[:80]!r} refused). Open http://127.0.0.1:{port}/ on the terminal itself.\n",
        421)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _peer(sock: socket.socket, listener: Listener) -> Peer:
    if isinstance(listener, UnixListener):
        try:
            pid, uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, struct.error):
            return Peer("unix")
        return Peer("unix", uid=uid, pid=pid)
    try:
        name = sock.getpeername()
    except OSError:
        return Peer("")
    return Peer(str(name[0]) if name else "")


def _encode(r: Response) -> bytes:
    try:
        reason = HTTPStatus(r.status).phrase
    except ValueError:
        reason = "Status"
    head = [f"HTTP/1.1 {r.status} {reason}", f"Server: classroom-agent/{__version__}",
            f"Content-Type: {r.content_type}", f"Content-Length: {len(r.body)}",
            "Cache-Control: no-store", "X-Content-Type-Options: nosniff", "Connection: close"]
    head += [f"{k}: {v}" for k, v in r.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + r.body


def _bind(listener: Listener) -> socket.socket:
    if isinstance(listener, TcpListener):
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        return socket.create_server((listener.host, listener.port), family=family, backlog=64)
    return bind_unix(listener)


def bind_unix(listener: UnixListener) -> socket.socket:
    """A listening Unix socket at ``listener.path`` with its mode and group set before anyone
    can connect: created under umask 077 (so only the owner could connect in between), then
    chown'd and chmod'ed. A stale socket file (nobody listening) is replaced; a live one is an
    error (another agent runs)."""
    import grp

    path = listener.path
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale
        else:
            raise OSError(f"{path}: another process already listens there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    try:
        if listener.group:
            try:
                gid = grp.getgrnam(listener.group).gr_gid
            except KeyError:
                raise OSError(f"group {listener.group!r} does not exist") from None
            os.chown(path, -1, gid)
        os.chmod(path, listener.mode)
        sock.listen(64)
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock


class UnixConnection(http.client.HTTPConnection):
    """The client side: HTTP over a Unix socket (http.client speaks only TCP by itself)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
