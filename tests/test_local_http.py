"""The local HTTP server (agent/status/http.py) over real sockets: routes, the Host check, every
bound (connections, time, head, body, handler threads), the Unix socket, and a fuzzer.

The same server carries the status port and local control; the flood test against the whole
agent is in tests/test_hardening.py.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.localhttp import tcp_routes
from agent.status.http import (
    HttpServer,
    Limits,
    Request,
    Response,
    Routes,
    TcpListener,
    UnixListener,
)
from tests.fuzzing import NASTY_CHARS, agent_log, fuzz_case
from tests.httpfuzz import (
    COMMAND_POST,
    KEYED,
    PAGE_KEY,
    STATUS_GETS,
    FakePeeker,
    RouteSpec,
    key_verdict,
    parse_answer,
    requests,
    status_board,
    verdict,
)
from tests.httpfuzz import exchange as send_raw
from tests.support import wait_until


def _routes(gate: threading.Event | None = None) -> Routes:
    def slow(_req: Request) -> Response:
        assert gate is not None
        gate.wait(10)
        return Response.text("slow\n")

    def echo(req: Request) -> Response:
        return Response.json({"path": req.path, "query": req.query, "body": req.body.decode(),
                              "peer": str(req.peer), "uid": req.peer.uid})

    def boom(_req: Request) -> Response:
        raise RuntimeError("handler bug")

    return (Routes().get("/", lambda _r: Response.text("home\n")).get("/slow", slow)
            .post("/echo/", echo, max_body=1024).get("/echo", echo).get("/boom", boom))


@contextlib.contextmanager
def serving(limits: Limits | None = None, gate: threading.Event | None = None,
            listener: TcpListener | UnixListener | None = None) -> Iterator[HttpServer]:
    server = HttpServer(_routes(gate), listener or TcpListener("127.0.0.1", 0),
                        limits or Limits(), name="test-http")
    server.start()
    try:
        yield server
    finally:
        if gate is not None:
            gate.set()
        server.stop()


def port_of(server: HttpServer) -> int:
    return int(server.address.rpartition(":")[2])


def exchange(server: HttpServer, raw: bytes, timeout: float = 5) -> bytes:
    """Send ``raw``, half-close, read the whole answer (b"" if the server just closed)."""
    if isinstance(server.listener, UnixListener):
        return send_raw(server.listener.path, raw, timeout)
    return send_raw(("127.0.0.1", port_of(server)), raw, timeout)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def get(server: HttpServer, path: str, host: str | None = "127.0.0.1") -> bytes:
    head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    return exchange(server, (head + "\r\n").encode())


def test_routes_answer_and_name_what_exists() -> None:
    with serving() as server:
        answer = get(server, "/echo?x=1")
        assert status_of(answer) == 200 and b'"query": "x=1"' in answer
        assert b"Connection: close" in answer and b"Cache-Control: no-store" in answer
        answer = get(server, "/nope")
        assert status_of(answer) == 404 and b"try /, /boom, /echo, /slow" in answer
        assert status_of(exchange(server, b"DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n")) == 405
        body = b'{"a": 1}'
        answer = exchange(server, b"POST /echo/sub HTTP/1.1\r\nHost: localhost\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert status_of(answer) == 200 and b'"path": "/echo/sub"' in answer
        assert b'\\"a\\": 1' in answer
        answer = get(server, "/boom")  # a handler bug is a 500, the server goes on
        assert status_of(answer) == 500 and b"handler bug" not in answer
        assert status_of(get(server, "/")) == 200


@pytest.mark.parametrize("host, code", [
    ("127.0.0.1", 200), ("127.0.0.1:8765", 200), ("localhost:8765", 200), ("LOCALHOST", 200),
    ("[::1]:8765", 200), ("192.168.1.20:8765", 200),  # the operator opened it on the LAN
    ("evil.example:8765", 421), ("evil.example", 421), ("127.0.0.1.nip.io:8765", 421),
    ("localhost.evil.example", 421), ("", 421), (None, 400),
])
def test_the_host_header_must_be_an_address_or_localhost(host: str | None, code: int) -> None:
    """DNS rebinding: a page on evil.example re-points its name at 127.0.0.1 and reads the
    status with its own name in Host; only IP literals and localhost get an answer."""
    with serving() as server:
        answer = get(server, "/echo", host=host)
        assert status_of(answer) == code, answer[:300]
        if code != 200:
            assert b'"path"' not in answer


@pytest.mark.parametrize("raw, code", [
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST /echo/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx", 405),
    (b"POST /echo/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999\r\n\r\n", 400),
    (b"POST /echo/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /echo/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     501),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n", 400),
    (b"GET /\x1b[2J HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"GET http://evil/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 70 + b"\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n", 400),  # ended before the head did
    # Found by the status-address fuzzer: "$" in the patterns matched before a final "\n", so
    # "GET\n" was a method (405, echoed with its newline) and "Host\n" a header name; a
    # Content-Length of "²" passed str.isdigit() and int() raised: no answer, a traceback.
    (b"GET\n / HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"GET /\n HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nHost\n: evil.example\r\n\r\n", 400),
    (b"POST /echo/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: \xb2\r\n\r\nab", 400),
])
def test_malformed_and_oversized_requests_are_refused(raw: bytes, code: int) -> None:
    with serving() as server:
        assert status_of(exchange(server, raw)) == code
        assert server.stats.refused_total == (code not in (404, 405))  # a wrong path is no attack
        assert status_of(get(server, "/")) == 200


def test_a_request_that_never_completes_is_closed_after_the_timeout() -> None:
    with serving(Limits(request_timeout_s=0.3)) as server:
        s = socket.create_connection(("127.0.0.1", port_of(server)))
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: local")  # and nothing more
            s.settimeout(5)
            began = time.monotonic()
            assert s.recv(100) == b""  # closed by the server, without an answer
            assert time.monotonic() - began < 3
        wait_until(lambda: server.stats.timed_out_total == 1, 5, "the timeout to be counted")


def test_a_flood_of_half_sent_connections_stays_bounded_and_status_still_answers() -> None:
    """500 connections that never finish their request: the server keeps at most 32 open (the
    oldest half-sent one makes room), and a real request still gets its answer at once."""
    limits = Limits(max_connections=32, request_timeout_s=30)
    with serving(limits) as server:
        flood = []
        try:
            for _ in range(500):
                s = socket.create_connection(("127.0.0.1", port_of(server)))
                s.sendall(b"GET / HTTP/1.1\r\n")
                flood.append(s)
            wait_until(lambda: server.stats.connections_total == 500, 10, "every connection")
            wait_until(lambda: server.stats.open <= 32, 10, "the server to shed connections")
            assert server.stats.evicted_total >= 500 - 32
            began = time.monotonic()
            assert status_of(get(server, "/")) == 200
            assert time.monotonic() - began < 2
        finally:
            for s in flood:
                s.close()


def test_busy_handlers_answer_503_instead_of_queueing_without_bound() -> None:
    gate = threading.Event()
    with serving(Limits(workers=1, max_pending=1), gate=gate) as server:
        results: list[int] = []

        def slow() -> None:
            results.append(status_of(get(server, "/slow")))

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: server._pending == 2, 5, "one running and one waiting")
        assert status_of(get(server, "/slow")) == 503
        assert server.stats.busy_total == 1
        gate.set()
        for t in threads:
            t.join(10)
        assert results == [200, 200]


def test_unix_socket_mode_group_and_peer(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    group = grp.getgrgid(os.getgid()).gr_name
    with serving(listener=UnixListener(str(path), 0o660, group)) as server:
        st_ = path.stat()
        assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
        assert st_.st_gid == os.getgid()
        answer = exchange(server, b"GET /echo HTTP/1.1\r\n\r\n")  # no Host needed here
        assert status_of(answer) == 200 and f'"uid": {os.getuid()}'.encode() in answer
    assert not path.exists(), "the socket file is removed at stop"


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with serving(listener=UnixListener(str(path))), pytest.raises(
            OSError, match="another process already listens"):
        HttpServer(Routes(), UnixListener(str(path)))
    with pytest.raises(OSError, match="group 'no-such-group-x' does not exist"):
        HttpServer(Routes(), UnixListener(str(path), group="no-such-group-x"))
    assert not path.exists()


# -- fuzzing -----------------------------------------------------------------------------------

_PIECES = [b"GET ", b"POST ", b"/", b"/echo", b"/echo/", b"?", b"%00", b"%2e%2e/", b" HTTP/1.1",
           b" HTTP/1.0", b"\r\n", b"\n", b"\r", b"Host: ", b"localhost", b"evil.example",
           b"127.0.0.1:1", b"Content-Length: ", b"0", b"5", b"-1", b"99999999999",
           b"Transfer-Encoding: chunked", b"Origin: null", b": ", b":", b" ", b"\t", b"\x00",
           b"\xff", b"\r\n\r\n", *(c.encode("utf-8", "surrogatepass") for c in NASTY_CHARS)]

_FUZZ_SERVER: dict[str, HttpServer] = {}


def _fuzz_server() -> HttpServer:
    """One server for every example (starting one per example would be most of the cost)."""
    server = _FUZZ_SERVER.get("s")
    if server is None:
        server = HttpServer(_routes(), TcpListener("127.0.0.1", 0),
                            Limits(request_timeout_s=0.5), name="fuzz-http")
        server.start()
        _FUZZ_SERVER["s"] = server
    return server


@pytest.fixture(scope="module", autouse=True)
def _stop_fuzz_server() -> Iterator[None]:
    yield
    if "s" in _FUZZ_SERVER:
        _FUZZ_SERVER.pop("s").stop()


@pytest.mark.fuzz
@given(st.lists(st.sampled_from(_PIECES) | st.binary(max_size=8), max_size=40).map(b"".join))
def test_fuzz_any_bytes_get_an_http_answer_or_a_close(raw: bytes) -> None:
    """Whatever arrives, the server answers with a well-formed HTTP response or closes the
    connection, within its timeout, and goes on serving."""
    with fuzz_case():
        server = _fuzz_server()
        answer = exchange(server, raw, timeout=5)
        if answer:
            code = status_of(answer)
            assert 200 <= code < 600
            head, sep, body = answer.partition(b"\r\n\r\n")
            assert sep and b"Content-Length: %d" % len(body) in head
        assert status_of(get(server, "/")) == 200


# -- fuzzing the status address as the agent serves it -----------------------------------------

#: The TCP status address's routes (agent/localhttp.py) and what each answers a good request.
_STATUS_ROUTES = [*(RouteSpec("GET", p) for p in STATUS_GETS), COMMAND_POST]
_STATUS_ANSWERS = {"/favicon.ico": 204, "/command/": 403}


@pytest.fixture(scope="module")
def status_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The routes of the agent's TCP status address over a real StatusBoard, on a real server
    with the agent's limits (a shorter request timeout: cut-off requests are common here)."""
    state = tmp_path_factory.mktemp("status-fuzz")
    with status_board(state) as board:
        server = HttpServer(tcp_routes(board.snapshot, FakePeeker(), str(state / "control.sock"),
                                       PAGE_KEY),
                            TcpListener("127.0.0.1", 0), Limits(request_timeout_s=1.0),
                            name="fuzz-status")
        server.start()
        yield "127.0.0.1", port_of(server)
        server.stop()


@pytest.mark.fuzz
@given(raw=requests([r.path for r in _STATUS_ROUTES]))
def test_fuzz_the_status_address_answers_every_request_as_its_rules_say(
        status_address: tuple[str, int], raw: bytes) -> None:
    """Any request to the status address (request line, path, query, headers, Host, body,
    cut off anywhere): the refusal its rules call for (400, 404, 405, 413, 421, 431, 501) or
    the route's own answer (the camera snapshot and microphone level only with the page's
    exact key, 403 otherwise), well-formed, bounded and inert; a close only for a request that
    never fully arrived; never an error in the log; the server goes on serving."""
    with fuzz_case(), agent_log("asyncio") as logged:
        want = verdict(raw, _STATUS_ROUTES, tcp=True)
        answer = send_raw(status_address, raw)
        if not answer:
            assert want.may_close, (want, raw[:300])
        else:
            got = parse_answer(answer)
            if want.route is None:
                expected = want.code
            elif want.path in KEYED:  # a picture of the classroom: only with the page's key
                assert want.headers is not None
                expected = key_verdict(want.headers)
            else:
                expected = _STATUS_ANSWERS.get(want.route.path, 200)
            assert got.code == expected, (want, raw[:300], answer[:300])
        assert not logged.errors, logged.lines
    assert not logged.forged()
