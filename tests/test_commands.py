"""Commands: the router's validation (unit and fuzz), then MQTT and local control against the real
agent and a real Mosquitto: replies, response topics, error codes, a command sent while the agent
was away (persistent session), and POST /command/... with the broker down.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import commands
from agent.commands import (
    COMMANDS,
    MAX_PAYLOAD,
    CommandError,
    CommandRouter,
    CommandWorker,
    Request,
    encode_reply,
    reply_message,
)
from agent.config import MqttConfig, OutboxConfig
from agent.control import handle, http_status
from agent.lessons.manager import LessonError, LessonManager
from agent.localhttp import socket_routes
from agent.outbox import Outbox
from agent.publisher import MAX_PENDING_REPLIES, Publisher
from agent.records import Envelope, Record
from agent.status.http import HttpServer, Limits, Peer, UnixConnection, UnixListener
from agent.status.http import Request as HttpRequest
from agent.throttle import TokenBucket
from tests.fuzzing import (
    NASTY_CHARS,
    agent_log,
    command_args,
    command_names,
    fuzz_case,
    unicode_text,
    unsafe_chars,
)
from tests.httpfuzz import (
    COMMAND_POST,
    STATUS_GETS,
    RouteSpec,
    parse_answer,
    requests,
    status_board,
    verdict,
)
from tests.httpfuzz import exchange as send_raw
from tests.support import SCHEMAS, AgentProcess, Broker, Subscriber, wait_until
from tests.test_lesson_manager import Clock, FakeMedia

PREFIX = "classroom/v1/school-a/room-101"
OTHER_ROOM = "classroom/v1/school-a/room-102"
ENVELOPE = Envelope("room-101", "school-a")


@cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def reply_errors(reply: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}"
            for e in Draft202012Validator(_schema("reply")).iter_errors(reply)]


# -- the router, pure ------------------------------------------------------------------------


def _router(calls: list[tuple[str, dict[str, Any]]] | None = None) -> CommandRouter:
    log = calls if calls is not None else []

    def make(name: str) -> commands.Handler:
        def handler(args: dict[str, Any]) -> dict[str, Any]:
            log.append((name, args))
            return {"done": name}
        return handler

    return CommandRouter({name: make(name) for name in COMMANDS})


def _req(rid: Any = "r1", **args: Any) -> bytes:
    body: dict[str, Any] = {"args": args}
    if rid is not None:
        body["id"] = rid
    return json.dumps(body).encode()


def _code(reply: dict[str, Any]) -> str | None:
    return None if reply["ok"] else reply["error"]["code"]


def test_valid_request_runs_the_handler_with_its_args() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    router = _router(calls)
    reply = router.handle("lesson_start", _req(course="Maths", role="receiving", duration_s=2700))
    assert reply == {"id": "r1", "ok": True, "result": {"done": "lesson_start"}}
    assert calls == [("lesson_start", {"course": "Maths", "role": "receiving",
                                       "duration_s": 2700})]
    assert router.handle("lesson_stop", b'{"id": "r2"}')["ok"]  # args may be left out
    assert calls[-1] == ("lesson_stop", {})


@pytest.mark.parametrize("payload, code, rid", [
    (b"x" * (MAX_PAYLOAD + 1), "too_large", None),
    (b"{oops", "bad_json", None),
    (b"\xff\xfe{}", "bad_json", None),
    (b'{"id": "a", "args": {"duration_s": NaN}}', "bad_json", None),
    (b"[" * 8000 + b"]" * 8000, "bad_json", None),  # deep nesting: RecursionError inside
    (b"[]", "bad_request", None),
    (b'{"args": {}}', "bad_request", None),
    (b'{"id": 7}', "bad_request", None),
    (b'{"id": ""}', "bad_request", None),
    (json.dumps({"id": "x" * 65}).encode(), "bad_request", None),
    (b'{"id": "a", "when": "now"}', "bad_request", "a"),
])
def test_request_errors(payload: bytes, code: str, rid: str | None) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    reply = _router(calls).handle("lesson_start", payload)
    assert _code(reply) == code and reply["id"] == rid, reply
    assert reply["error"]["message"]
    assert not calls
    assert not reply_errors(reply_message(ENVELOPE, "lesson_start", reply))


def test_lone_surrogates_echoed_still_encode() -> None:
    reply = _router().handle("lesson.\udc80", b'{"id": "\\ud800"}')
    assert reply["id"] == "\ud800" and _code(reply) == "unknown_command"
    message = json.loads(encode_reply(reply_message(ENVELOPE, "lesson.\udc80", reply)))
    assert message["id"] == "\ud800" and not reply_errors(message)


def test_a_lone_surrogate_in_an_argument_is_bad_args(tmp_path: Path) -> None:
    """Found by fuzzing: lesson_start with teacher "\\ud800" passed the checks, started the
    lesson and media, then failed writing lesson.json and encoding the evidence: the platform got
    internal_error while a lesson ran with no lesson_started and no lesson_ended it could read."""
    router, encoded = _lesson_rig(tmp_path)
    for arg in ("course", "teacher"):
        reply = router.handle("lesson_start", f'{{"id": "s", "args": {{"{arg}": "x\\ud800"}}}}'
                              .encode())
        assert _code(reply) == "bad_args" and arg in reply["error"]["message"], reply
        assert "not valid Unicode" in reply["error"]["message"]
    assert not encoded and not (tmp_path / "lesson.json").exists()
    # and should one get in by another way, a record still encodes (escaped), never lost
    record = Record("event", {"type": "x", "details": {"t": "\ud800é"}})
    assert json.loads(ENVELOPE.encode(record, 1))["data"] == record.data


def test_size_is_checked_before_parsing() -> None:
    at_limit = _req(course="x" * 100).ljust(MAX_PAYLOAD, b" ")
    assert len(at_limit) == MAX_PAYLOAD and _router().handle("lesson_start", at_limit)["ok"]
    # Over the limit even a perfectly good request is refused, and its id is not read.
    reply = _router().handle("lesson_start", at_limit + b" ")
    assert _code(reply) == "too_large" and reply["id"] is None


def test_unknown_command_names_what_is_accepted() -> None:
    reply = _router().handle("lesson.pause", _req())
    assert _code(reply) == "unknown_command" and reply["id"] == "r1"
    assert "lesson.pause" in reply["error"]["message"] and "report_now" in reply["error"]["message"]
    # Declared but not served by this agent is unknown too (no handler registered).
    partial = CommandRouter({"report_now": lambda a: {}})
    assert _code(partial.handle("lesson_start", _req())) == "unknown_command"
    with pytest.raises(ValueError, match="undeclared"):
        CommandRouter({"reboot": lambda a: {}})


@pytest.mark.parametrize("name, args, word", [
    ("lesson_start", {"role": "teaching"}, "'role'"),
    ("lesson_start", {"duration_s": 5}, "'duration_s'"),
    ("lesson_start", {"duration_s": 86401}, "'duration_s'"),
    ("lesson_start", {"duration_s": "60"}, "'duration_s'"),
    ("lesson_start", {"duration_s": True}, "'duration_s'"),
    ("lesson_start", {"course": ""}, "'course'"),
    ("lesson_start", {"course": "x" * 201}, "'course'"),
    ("lesson_start", {"teacher": None}, "'teacher'"),
    ("lesson_start", {"room": "101"}, "'room'"),
    ("lesson_stop", {"now": True}, "'now'"),
    ("report_now", {"x": 1}, "'x'"),
])
def test_bad_args_name_the_argument(name: str, args: dict[str, Any], word: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    reply = _router(calls).handle(name, json.dumps({"id": "b", "args": args}).encode())
    assert _code(reply) == "bad_args" and reply["id"] == "b", reply
    assert word in reply["error"]["message"], reply
    assert not calls


def test_args_must_be_an_object() -> None:
    reply = _router().handle("lesson_stop", b'{"id": "b", "args": [1]}')
    assert _code(reply) == "bad_args" and "object" in reply["error"]["message"]


def test_handler_refusals_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(_a: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("conflict", "a lesson is already running")

    def crash(_a: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    router = CommandRouter({"lesson_start": refuse, "lesson_stop": crash,
                            "report_now": lambda a: "not a dict"})  # type: ignore[arg-type,return-value]
    reply = router.handle("lesson_start", _req(teacher="Wang Fang"))
    assert reply["error"] == {"code": "conflict", "message": "a lesson is already running"}
    assert http_status(reply) == 409
    with caplog.at_level(logging.ERROR, logger="agent.commands"):
        reply = router.handle("lesson_stop", _req("r9"))
    assert _code(reply) == "internal_error" and reply["id"] == "r9"
    assert "disk on fire" not in reply["error"]["message"]  # generic to the sender...
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text  # ...detailed in the log
    assert _code(router.handle("report_now", _req())) == "internal_error"


def test_http_status_mapping() -> None:
    assert http_status({"ok": True}) == 200
    for code, status in [("bad_json", 400), ("too_large", 400), ("bad_request", 400),
                         ("unknown_command", 400), ("bad_args", 400), ("busy", 503),
                         ("timeout", 504), ("internal_error", 500), ("conflict", 409),
                         ("outbox_unavailable", 409)]:
        assert http_status(commands.error("x", code, "m")) == status, code


# -- the router against command.json, and fuzzing -------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
#: Error codes a hostile request may get: the sender's fault or "not in this state", never the
#: agent's own failure (internal_error).
_INPUT_CODES = commands.INPUT_ERRORS | {"conflict"}


def _encode_request(rid: Any, args: Any) -> bytes:
    return json.dumps({"id": rid, "args": args}).encode()  # ASCII: surrogates become escapes


@pytest.mark.fuzz
@given(name=st.sampled_from(sorted(COMMANDS)), args=command_args)
def test_router_agrees_with_command_json(name: str, args: dict[str, Any]) -> None:
    """The Python checks and the published schema accept exactly the same arguments (text the
    schema cannot describe, a lone surrogate, is refused as well)."""
    with fuzz_case():
        schema_ok = Draft202012Validator(
            _schema("command")["x-commands"][name]["args"]).is_valid(args)
        valid_text = all(not isinstance(v, str) or _encodable(v) for v in args.values())
        reply = _router().handle(name, _encode_request("h", args))
        assert reply["ok"] == (schema_ok and valid_text), (reply, args)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_command_json_lists_exactly_the_allowed_commands() -> None:
    doc = _schema("command")
    Draft202012Validator.check_schema(doc)
    assert set(doc["x-commands"]) == set(COMMANDS)
    for name, spec in COMMANDS.items():
        props = doc["x-commands"][name]["args"]["properties"]
        assert set(props) == set(spec.args), name


#: Longest error message a reply may carry (the longest today is about 300 characters).
MAX_MESSAGE = 1000


def check_error_text(reply: dict[str, Any]) -> None:
    """A refusal's message is bounded and echoes nothing from the request un-neutralised (no
    control, format or separator character: agent/safetext.py)."""
    if not reply["ok"]:
        message = reply["error"]["message"]
        assert len(message) <= MAX_MESSAGE and not unsafe_chars(message), reply


def _check_reply(name: str, reply: dict[str, Any]) -> None:
    """A reply that validates, encodes, and is either ok or a documented input error."""
    assert isinstance(reply["ok"], bool)
    assert reply["ok"] or reply["error"]["code"] in _INPUT_CODES, reply
    check_error_text(reply)
    message = reply_message(ENVELOPE, name, reply)
    json.loads(encode_reply(message))  # always encodes, even with lone surrogates echoed
    assert not reply_errors(message), reply



@pytest.mark.fuzz
@given(name=command_names,
       payload=st.binary(max_size=300)
       | _json.map(lambda v: json.dumps(v).encode())
       | st.builds(_encode_request, st.text(max_size=70) | _json, _json | command_args)
       | st.sampled_from([b"", b"{}", b"[]", b"null", b'{"id": "x", "args": NaN}',
                          b'{"id": "x"' + b', "args": {"a": ' * 3000, b"\xef\xbb\xbf{}",
                          b'{"id": "\\ud800"}', b"x" * (commands.MAX_PAYLOAD + 1)]))
def test_fuzz_always_a_valid_reply(name: str, payload: bytes) -> None:
    with fuzz_case():
        _check_reply(name, _router().handle(name, payload))


# Topics as the broker delivers them: the agent's own command prefix followed by anything (empty
# levels, wildcards, NUL, RTL marks, 64 KiB), or somebody else's topic altogether.
_levels = st.text(st.sampled_from([*NASTY_CHARS, "/", "+", "#", ".", "a", "é", " "]), max_size=30)
_topics = st.one_of(
    st.builds(lambda rest: f"{PREFIX}/cmd/{rest}", _levels | st.sampled_from(sorted(COMMANDS))),
    st.builds(lambda n: f"{PREFIX}/cmd/" + "a/" * n, st.integers(0, 30_000)),
    st.sampled_from(["", "#", "+", f"{PREFIX}/cmd", f"{PREFIX}/cmd/", f"{PREFIX}//cmd/x",
                     "classroom/v1/school-a/room-102/cmd/report_now", "(invalid UTF-8)"]),
    _levels,
)


class _Props:
    def __init__(self, response_topic: Any, correlation: Any) -> None:
        self.ResponseTopic = response_topic
        self.CorrelationData = correlation


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    """A real Publisher, never connected: its command path is pure up to the socket."""
    state = tmp_path_factory.mktemp("pub")
    outbox = Outbox(state, OutboxConfig(), ENVELOPE)
    pub = Publisher(MqttConfig(host="127.0.0.1", port=1), ENVELOPE, outbox, state, 1.0,
                    time.time(), command_sink=lambda *_a: None)
    yield pub
    outbox.close()


@pytest.fixture(scope="module")
def door() -> Iterator[tuple[CommandWorker, list[tuple[bytes, Any, Any]]]]:
    """A running CommandWorker over the fake handlers, its refusals never rate-limited (each
    example must get its reply), collecting what it asks the publisher to send."""
    sent: list[tuple[bytes, Any, Any]] = []
    worker = CommandWorker(_router(), ENVELOPE, lambda p, t, c: sent.append((p, t, c)))
    worker._unanswered = TokenBucket(1e9, 1e9)
    worker.start()
    yield worker, sent
    worker.stop()


@pytest.mark.fuzz
@given(topic=_topics,
       payload=st.binary(max_size=64) | st.builds(_encode_request, unicode_text, command_args),
       response=st.none() | _levels | st.sampled_from(["", "a/+", "#", "x\x00y", "é" * 40_000,
                                                        f"{PREFIX}/reply/ok", f"{PREFIX}/state",
                                                        f"{PREFIX}/reply/" + "é" * 40_000]),
       correlation=st.none() | st.binary(max_size=16) | st.integers(), retained=st.booleans())
def test_fuzz_command_topics_are_answered_or_ignored(
        publisher: Publisher, door: tuple[CommandWorker, list[tuple[bytes, Any, Any]]],
        topic: str, payload: bytes, response: Any, correlation: Any, retained: bool) -> None:
    """The publisher's command path and the worker's door with any topic, request id and MQTT 5
    properties: a command for this device gets exactly one reply that validates, its name is
    bounded, it is queued only to {base}/reply and below it, and every log line stays one line."""
    worker, sent = door
    with fuzz_case():
        got: list[tuple[str, bytes, Any]] = []
        publisher.command_sink = lambda n, p, r: got.append((n, p, r))
        publisher._replies.clear()
        with agent_log() as logged:
            publisher._on_command(publisher._conn_id, topic, payload,
                                  _Props(response, correlation), retained, 1, 1)
            ours = topic.startswith(f"{PREFIX}/cmd/") and not retained
            assert len(got) == int(ours)
            for name, body, reply_to in got:
                sent.clear()
                worker.submit(name, body, reply_to)
                wait_until(lambda: sent, 10, "the reply", step=0.001)
                raw, rt, corr = sent[0]
                message = json.loads(raw)
                assert not reply_errors(message), message
                assert message["command"] == name[:64]
                assert message["ok"] or message["error"]["code"] in _INPUT_CODES, message
                check_error_text(message)
                publisher._queue_reply(raw, rt, corr)
                topics = [out.topic for out in publisher._replies]
                assert topics[0] == f"{PREFIX}/reply"
                assert all(t.startswith(f"{PREFIX}/reply/") and len(t.encode()) <= 65535
                           and not set(t) & {"+", "#", "\x00"} for t in topics[1:]), topics
        assert not logged.forged()


@pytest.fixture(scope="module")
def control_socket(tmp_path_factory: pytest.TempPathFactory,
                   door: tuple[CommandWorker, Any]) -> Iterator[str]:
    """Local control as the daemon serves it (agent/localhttp.py): control and read-only status
    routes over a real StatusBoard on a Unix socket, with the daemon's limits for it."""
    state = tmp_path_factory.mktemp("ctl")
    path = str(state / "control.sock")
    with status_board(state) as board:
        server = HttpServer(socket_routes(door[0], board.snapshot, lambda: _PAGE_URL),
                            UnixListener(path),
                            Limits(max_connections=16, max_pending=4, request_timeout_s=1.0),
                            name="fuzz-control")
        server.start()
        yield path
        server.stop()


_paths = st.one_of(
    st.sampled_from(sorted(COMMANDS)),
    st.text(st.sampled_from(["%", "2", "F", "0", "a", "_", "/", ".", "?", "#", "~"]),
            max_size=20),
    st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe="")),
    st.just("x" * 3000))


@pytest.mark.fuzz
@given(path=_paths, ctype=st.sampled_from(["application/json", "application/json; charset=x",
                                           "text/plain", ""]),
       origin=st.none() | st.just("null"),
       body=st.binary(max_size=64) | st.builds(_encode_request, unicode_text, command_args)
       | st.just(b"{" + b" " * (commands.MAX_PAYLOAD + 1) + b"}"))
def test_fuzz_the_control_socket_answers_every_request(control_socket: str, path: str,
                                                        ctype: str, origin: str | None,
                                                        body: bytes) -> None:
    """POST /command/<anything> on the Unix socket: a well-formed HTTP answer (a reply that
    validates, or a plain refusal), never a hang or a crash; the socket keeps serving."""
    with fuzz_case():
        head = [f"POST /command/{path} HTTP/1.1", f"Content-Length: {len(body)}"]
        head += [f"Content-Type: {ctype}"] if ctype else []
        head += [f"Origin: {origin}"] if origin else []
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(control_socket)
            s.sendall(raw)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        code = int(status_line.split()[1])
        head_bytes, _, payload = rest.partition(b"\r\n\r\n")
        assert 200 <= code < 600 and f"Content-Length: {len(payload)}".encode() in head_bytes
        if b"application/json" in head_bytes:
            reply = json.loads(payload)
            if "kind" in reply:  # a command's reply: the contract's shape
                assert not reply_errors(reply), reply
                assert http_status(reply) == code
            else:  # refused before any command: id, ok, error only
                assert set(reply) == {"id", "ok", "error"} and not reply["ok"]
        else:
            assert code in (400, 404, 405, 413, 431), answer[:200]


_SOCKET_ROUTES = [*(RouteSpec("GET", p) for p in (*STATUS_GETS, "/page-url.json")),
                  COMMAND_POST]
_PAGE_URL = "http://127.0.0.1:8089/#key=fuzz"


@pytest.mark.fuzz
@given(raw=requests([*STATUS_GETS, "/page-url.json",
                     *(f"/command/{n}" for n in sorted(COMMANDS))]))
def test_fuzz_the_control_socket_answers_every_request_as_its_rules_say(
        control_socket: str, raw: bytes) -> None:
    """Any request on the control socket (request line, any path, query, headers, Origin,
    Content-Type, body, cut off anywhere): the plumbing's refusal, or for POST /command/{name}
    the control's (403 from a web page, 415 not JSON, 400 too large) or the command's reply with
    the status it calls for; every answer well-formed, bounded and inert; a close only for a
    request that never fully arrived; no error in the log, no forged log line."""
    with fuzz_case(), agent_log("asyncio") as logged:
        want = verdict(raw, _SOCKET_ROUTES, tcp=False)
        answer = send_raw(control_socket, raw)
        if not answer:
            assert want.may_close, (want, raw[:300])
            return
        got = parse_answer(answer)
        if want.route is None:
            assert got.code == want.code, (want, raw[:300], answer[:300])
        elif want.path == "/page-url.json":  # the page's key: for the socket's group only
            assert got.code == 200 and got.json() == {"url": _PAGE_URL}
        elif want.route is not COMMAND_POST:  # no camera on the socket: the page is on TCP
            assert got.code == (204 if want.path == "/favicon.ico" else
                                404 if want.path in ("/snapshot.json", "/level.json") else 200)
        else:
            assert want.headers is not None
            ctype = want.headers.get("content-type", "").split(";")[0].strip().lower()
            reply = got.json()
            check_error_text(reply)
            if "origin" in want.headers:
                assert got.code == 403 and reply["error"]["code"] == "forbidden"
            elif ctype != "application/json":
                assert got.code == 415 and reply["error"]["code"] == "bad_request"
            elif len(want.body) > MAX_PAYLOAD:
                assert got.code == 400 and reply["error"]["code"] == "too_large"
            else:
                name = urllib.parse.unquote(want.path[len("/command/"):])
                assert not reply_errors(reply) and reply["command"] == name[:64], reply
                assert got.code == http_status(reply) and got.code in (200, 400), reply
        assert not logged.errors, logged.lines
    assert not logged.forged()


def _lesson_rig(tmp: Path) -> tuple[CommandRouter, list[bytes]]:
    """The lesson commands over a real LessonManager (media faked, as in its own tests); every
    record it emits is encoded exactly as the outbox would."""
    encoded: list[bytes] = []
    clock = Clock(datetime(2026, 11, 23, 7, 59, tzinfo=ZoneInfo("Asia/Shanghai")))
    manager = LessonManager(
        timetable=None, device_id="room-101", default_live=[("platform", "rtmp://h/app/k")],
        manual_duration_s=2700, media=FakeMedia(clock),
        emit=lambda r: encoded.append(ENVELOPE.encode(r, len(encoded) + 1)),
        state_path=tmp / "lesson.json", wall=clock.wall, mono=clock.mono)

    def start(a: dict[str, Any]) -> dict[str, Any]:
        try:
            return manager.start_manual(a.get("course"), a.get("teacher"), a.get("role"),
                                        a.get("duration_s"), trigger="command")
        except LessonError as exc:
            raise CommandError("conflict", str(exc)) from None

    def stop(_a: dict[str, Any]) -> dict[str, Any]:
        try:
            return manager.stop_current("command")
        except LessonError as exc:
            raise CommandError("conflict", str(exc)) from None

    return CommandRouter({"lesson_start": start, "lesson_stop": stop}), encoded


@pytest.mark.fuzz
@given(args=command_args, rid=unicode_text)
def test_fuzz_lesson_commands_leave_evidence_that_encodes(args: dict[str, Any], rid: str) -> None:
    """Arguments the router accepts must be usable all the way: a started lesson's evidence
    (lesson.json, the lesson_started and lesson_ended records) is written and encodes."""
    with fuzz_case(), tempfile.TemporaryDirectory() as tmp:
        router, encoded = _lesson_rig(Path(tmp))
        started = router.handle("lesson_start", _encode_request(rid[:64], args))
        _check_reply("lesson_start", started)
        if not started["ok"]:
            assert not encoded and not (Path(tmp) / "lesson.json").exists()
            return
        stopped = router.handle("lesson_stop", _encode_request("stop", {}))
        assert stopped["ok"], stopped
        kinds = [json.loads(b)["data"]["type"] for b in encoded]
        assert kinds == ["lesson_started", "lesson_ended"]
        json.loads((Path(tmp) / "lesson.json").read_text(encoding="utf-8"))


# -- the worker ------------------------------------------------------------------------------


@pytest.fixture
def worker_parts() -> Iterator[tuple[CommandWorker, list[bytes], threading.Event, list[str]]]:
    sent: list[bytes] = []
    gate = threading.Event()
    ran: list[str] = []

    def slow(_a: dict[str, Any]) -> dict[str, Any]:
        gate.wait(10)
        ran.append("slow")
        return {}

    def quick(_a: dict[str, Any]) -> dict[str, Any]:
        ran.append("quick")
        return {"n": len(ran)}

    router = CommandRouter({"lesson_start": slow, "report_now": quick})
    w = CommandWorker(router, ENVELOPE, lambda p, _t, _c: sent.append(p), queue_size=2)
    w.start()
    yield w, sent, gate, ran
    gate.set()
    w.stop()


def test_worker_answers_busy_when_full_and_never_blocks(worker_parts: Any) -> None:
    w, sent, gate, _ran = worker_parts
    w.submit("lesson_start", _req("s1"))
    wait_until(lambda: w._jobs.empty(), 5, "the slow command to start")
    started = time.monotonic()
    for i in range(4):
        w.submit("report_now", _req(f"q{i}"))
    assert time.monotonic() - started < 0.5
    busy = [json.loads(p) for p in sent]
    assert [(r["id"], r["error"]["code"]) for r in busy] == [("q2", "busy"), ("q3", "busy")]
    gate.set()
    wait_until(lambda: len(sent) == 5, 10, "all replies")
    replies = [json.loads(p) for p in sent]
    assert all(not reply_errors(r) for r in replies)
    assert {r["id"] for r in replies if r["ok"]} == {"s1", "q0", "q1"}
    assert http_status(busy[0]) == 503


def test_worker_answers_a_repeated_id_without_running_it_again(worker_parts: Any) -> None:
    w, sent, gate, ran = worker_parts
    gate.set()
    for n in range(1, 4):  # e.g. QoS 1 redeliveries after a lost PUBACK
        w.submit("report_now", _req("same"))
        wait_until(lambda n=n: len(sent) == n, 5, f"reply {n}")
    assert ran == ["quick"]
    assert len({json.dumps(json.loads(p)["result"]) for p in sent}) == 1
    w.submit("report_now", _req("other"))
    wait_until(lambda: len(sent) == 4, 5, "a fourth reply")
    assert ran == ["quick", "quick"]


def test_worker_call_times_out_with_a_reply(worker_parts: Any) -> None:
    w, _sent, gate, _ran = worker_parts
    reply = w.call("lesson_start", _req("t1"), timeout=0.3)
    assert _code(reply) == "timeout" and reply["id"] == "t1" and http_status(reply) == 504
    assert not reply_errors(reply)
    gate.set()
    ok = w.call("report_now", _req("t2"), timeout=5)
    assert ok["ok"] and ok["kind"] == "reply" and not reply_errors(ok)


def test_local_control_refusals_without_running_anything() -> None:
    calls: list[str] = []

    class Fake:
        def call(self, name: str, payload: bytes, timeout: float = 0) -> dict[str, Any]:
            calls.append(name)
            return {"id": "f", "ok": True, "result": {}}

    json_ct = {"content-type": "application/json; charset=utf-8"}

    def post(path: str, headers: dict[str, str] = json_ct,
             body: bytes = b"{}") -> tuple[int, dict[str, Any]]:
        return handle(Fake(), HttpRequest("POST", path, "", headers, body, Peer("unix", 0, 1)))

    assert post("/command/report_now")[0] == 200
    assert post("/command/lesson%5Fstop")[0] == 200
    assert calls == ["report_now", "lesson_stop"]
    assert post("/status.json")[0] == 404
    assert post("/command/report_now", headers={"content-type": "text/plain"})[0] == 415
    assert post("/command/report_now", headers={**json_ct, "origin": "null"})[0] == 403
    status, reply = post("/command/report_now", body=b" " * (MAX_PAYLOAD + 1))
    assert status == 400 and reply["error"]["code"] == "too_large"
    assert len(calls) == 2


def test_publisher_keeps_at_most_100_replies_while_offline(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, _outbox_cfg(), ENVELOPE)
    pub = Publisher(MqttConfig(host="127.0.0.1", port=1), ENVELOPE, outbox, tmp_path, 1.0,
                    time.time(), command_sink=lambda *_a: None)
    for i in range(MAX_PENDING_REPLIES + 30):
        pub.reply(f'{{"n":{i}}}'.encode(), None, None)
    pub.reply(b'{"n":"rt"}', "bad/+/topic", b"c")  # invalid response topic: base topic only
    # '.' and spaces are refused too: NATS drops a client that publishes there (contract, Brokers)
    pub.reply(b'{"n":"dot"}', pub.topic("reply/req.7"), b"c")
    pub.reply(b'{"n":"space"}', pub.topic("reply/req 7"), b"c")
    pub.reply(b'{"n":"ok"}', pub.topic("reply/req-7"), b"c")  # the control: this one is kept
    pub._handle_events(timeout=0.1)
    assert len(pub._replies) == MAX_PENDING_REPLIES
    assert pub.stats.replies_dropped_total == 35
    assert [(r.payload, r.topic) for r in list(pub._replies)[-5:]] == [
        (b'{"n":"rt"}', pub.topic("reply")), (b'{"n":"dot"}', pub.topic("reply")),
        (b'{"n":"space"}', pub.topic("reply")), (b'{"n":"ok"}', pub.topic("reply")),
        (b'{"n":"ok"}', pub.topic("reply/req-7"))]
    outbox.close()


def _outbox_cfg() -> Any:
    from agent.config import OutboxConfig

    return OutboxConfig()


# -- against the real agent and broker -------------------------------------------------------


class Commander:
    """A platform-side client: publishes commands (QoS 1) and reads its own response topic."""

    def __init__(self, port: int, protocol: int = mqtt.MQTTv5) -> None:
        self.v5 = protocol == mqtt.MQTTv5
        self.received: list[tuple[str, dict[str, Any], bytes | None]] = []
        self._ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"platform-{time.monotonic_ns()}",
                        protocol=protocol)
        # Its own reply topic below the device's, where the contract lets replies go, and two
        # places a request must not be able to send the device's reply to.
        c.on_connect = lambda cl, *_a: (cl.subscribe([(f"{PREFIX}/reply/+", 1),
                                                      ("test/replies/#", 1),
                                                      (f"{OTHER_ROOM}/cmd/+", 1)]),
                                        self._ready.set())
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        wait_until(self._ready.is_set, 10, "the platform client to connect")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        self.received.append((msg.topic, json.loads(msg.payload), corr))

    def send(self, name: str, payload: bytes | dict[str, Any], response_topic: str | None = None,
             correlation: bytes | None = None, retain: bool = False) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        props = None
        if self.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        info = self.client.publish(f"{PREFIX}/cmd/{name}", raw, qos=1, retain=retain,
                                   properties=props)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def commander(broker: Broker) -> Iterator[Commander]:
    c = Commander(broker.port)
    yield c
    c.close()


def replies(sub: Subscriber, rid: str | None = None) -> list[dict[str, Any]]:
    return [m.payload for m in sub.snapshot("reply") if rid is None or m.payload.get("id") == rid]


def wait_reply(sub: Subscriber, rid: str | None, timeout: float = 20,
               command: str | None = None) -> dict[str, Any]:
    got = sub.wait_for(
        lambda _ms: [r for r in replies(sub) if r.get("id") == rid
                     and (command is None or r.get("command") == command)],
        timeout, f"a reply with id {rid!r}")
    return got[0]


def commands_reach(agent: AgentProcess, sub: Subscriber, cmd: Commander) -> None:
    """Wait until the agent is subscribed: ping with report_now until one is answered."""
    wait_until(lambda: agent.status()["broker"]["connected"], 30, "the agent to connect")
    n = 0

    def answered() -> bool:
        nonlocal n
        n += 1
        cmd.send("report_now", {"id": f"warmup-{n}"})
        time.sleep(0.3)
        return any(r["id"].startswith("warmup-") for r in replies(sub) if r.get("id"))

    wait_until(answered, 30, "the agent to answer commands", step=0.0)


def test_report_now_over_mqtt(broker: Broker, subscriber: Subscriber, commander: Commander,
                              agent_factory) -> None:
    agent = agent_factory(telemetry={"interval_s": 30}).start()  # regular ticks out of the way
    commands_reach(agent, subscriber, commander)
    commander.send("report_now", {"id": "now-1"}, response_topic=f"{PREFIX}/reply/now-1",
                   correlation=b"\x00corr-1")
    reply = wait_reply(subscriber, "now-1")
    assert reply["ok"] and reply["command"] == "report_now" and "seq" not in reply
    assert reply["device"] == "room-101" and reply["school"] == "school-a"
    seq = reply["result"]["seq"]
    metrics = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/metrics") and m.payload["seq"] == seq],
        20, f"the metrics record seq {seq}")
    assert {"cpu", "memory", "agent"} <= metrics[0].payload["data"].keys()
    # The same reply on the MQTT 5 response topic, with the correlation data.
    direct = wait_until(lambda: [r for r in commander.received if r[1].get("id") == "now-1"], 20,
                        "the reply on the response topic")
    topic, body, corr = direct[0]
    assert topic == f"{PREFIX}/reply/now-1" and corr == b"\x00corr-1" and body == reply
    problems = [e for r in replies(subscriber) for e in reply_errors(r)]
    assert not problems, problems
    assert not [m for m in subscriber.snapshot("reply") if m.retain]


def test_replies_go_only_below_the_devices_own_reply_topic(
        broker: Broker, subscriber: Subscriber, commander: Commander, agent_factory) -> None:
    """A request cannot make the device publish its reply (under its own credentials) onto its
    retained state, another room's commands or any other topic; a refused request gets no copy
    even below its own reply topic."""
    agent = agent_factory(telemetry={"interval_s": 30}).start()
    commands_reach(agent, subscriber, commander)
    for rid, topic in [("to-state", f"{PREFIX}/state"),
                       ("to-other-room", f"{OTHER_ROOM}/cmd/lesson_start"),
                       ("elsewhere", "test/replies/x"),
                       ("prefix-trick", f"{PREFIX}/replyx/y")]:
        commander.send("report_now", {"id": rid}, response_topic=topic, correlation=b"c")
    commander.send("report_now", {"id": "refused", "args": {"x": 1}},
                   response_topic=f"{PREFIX}/reply/refused")
    commander.send("report_now", {"id": "allowed"}, response_topic=f"{PREFIX}/reply/allowed")
    for rid in ("to-state", "to-other-room", "elsewhere", "prefix-trick", "refused", "allowed"):
        wait_reply(subscriber, rid)  # each answered on {base}/reply
    wait_until(lambda: [r for r in commander.received if r[1].get("id") == "allowed"], 20,
               "the allowed copy")
    assert [(t, b["id"]) for t, b, _c in commander.received
            if not b.get("id", "").startswith("warmup")] == [(f"{PREFIX}/reply/allowed", "allowed")]
    assert not [m for m in subscriber.snapshot("state") if m.payload.get("kind") == "reply"]
    assert "asked for a reply outside" in agent.log_text()


def test_bad_commands_get_error_replies_and_the_agent_carries_on(
        broker: Broker, subscriber: Subscriber, commander: Commander, agent_factory) -> None:
    agent = agent_factory().start()
    commands_reach(agent, subscriber, commander)
    commander.send("reboot.now", {"id": "u1"})
    commander.send("report_now", {"id": "a1", "args": {"verbose": True}})
    commander.send("report_now", {"args": {}})
    commander.send("report_now", b"{not json")
    commander.send("report_now", json.dumps({"id": "big", "pad": "x" * 17 * 1024}).encode())
    assert wait_reply(subscriber, "u1")["error"]["code"] == "unknown_command"
    bad_args = wait_reply(subscriber, "a1")["error"]
    assert bad_args["code"] == "bad_args" and "'verbose'" in bad_args["message"]
    subscriber.wait_for(lambda _m: len([r for r in replies(subscriber) if r["id"] is None]) >= 3,
                        20, "three replies without an id")
    codes = sorted(r["error"]["code"] for r in replies(subscriber) if r["id"] is None)
    assert codes == ["bad_json", "bad_request", "too_large"], codes
    problems = [e for r in replies(subscriber) for e in reply_errors(r)]
    assert not problems, problems
    # Still running, connected and publishing.
    before = max(subscriber.seqs())
    subscriber.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/metrics")
                                    and m.payload["seq"] > before], 20, "new metrics")
    status = agent.status()
    assert status["broker"]["connected"] and status["agent"]["pid"] == agent.proc.pid
    commander.send("report_now", {"id": "after"})
    assert wait_reply(subscriber, "after")["ok"]


def test_command_sent_while_the_agent_was_away_runs_when_it_is_back(
        broker: Broker, subscriber: Subscriber, commander: Commander, agent_factory) -> None:
    agent = agent_factory().start()
    commands_reach(agent, subscriber, commander)
    agent.kill()  # SIGKILL: the broker keeps the agent's session and queues what comes
    commander.send("report_now", {"id": "while-away"}, response_topic=f"{PREFIX}/reply/away",
                   correlation=b"away")
    time.sleep(1.0)
    assert not replies(subscriber, "while-away")
    agent.start()
    reply = wait_reply(subscriber, "while-away", timeout=30)
    assert reply["ok"]
    seq = reply["result"]["seq"]
    subscriber.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/metrics")
                                    and m.payload["seq"] == seq], 20, f"metrics seq {seq}")
    wait_until(lambda: [r for r in commander.received if r[2] == b"away"], 20,
               "the reply on the response topic after the restart")
    time.sleep(1.0)
    assert len(replies(subscriber, "while-away")) == 1  # run once, not replayed


def test_command_in_flight_when_the_agent_died_is_redelivered_and_run_once(
        broker: Broker, subscriber: Subscriber, commander: Commander, agent_factory) -> None:
    """The broker resends an unacknowledged command (DUP) to the next, fresh paho client.

    Under load the stop can land after paho read the command but before the worker ran it: the
    agent acknowledges only after replying, so that case is redelivered too.
    """
    agent = agent_factory().start()
    commands_reach(agent, subscriber, commander)
    agent.signal(signal.SIGSTOP)  # the broker writes the PUBLISH to the socket; no PUBACK comes
    try:
        commander.send("report_now", {"id": "in-flight"})
        time.sleep(1.0)
    finally:
        agent.kill()  # SIGKILL works on a stopped process
    assert not replies(subscriber, "in-flight")
    agent.start()
    assert wait_reply(subscriber, "in-flight", timeout=30)["ok"]
    before = max(subscriber.seqs())
    subscriber.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/metrics")
                                    and m.payload["seq"] > before], 20, "metrics after it")
    assert len(replies(subscriber, "in-flight")) == 1
    assert agent.status()["broker"]["connected"]


def test_a_command_is_acknowledged_only_after_its_reply(tmp_path: Path, broker: Broker,
                                                       commander: Commander) -> None:
    """Publisher level: until ``ack`` is called the broker redelivers the command to the next
    connection (a crash between receiving and answering loses nothing); after it, never."""
    got: list[tuple[str, bytes, Any]] = []
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_min_s=0.1,
                     reconnect_max_s=0.5)
    outbox = Outbox(tmp_path, _outbox_cfg(), ENVELOPE)

    def connect() -> Publisher:
        pub = Publisher(cfg, ENVELOPE, outbox, tmp_path, 1.0, time.time(),
                        command_sink=lambda *a: got.append(a))
        pub.start()
        wait_until(lambda: pub.stats.commands_subscribed, 10, "the command subscription")
        return pub

    try:
        pub = connect()
        commander.send("report_now", {"id": "unanswered"})
        wait_until(lambda: len(got) == 1, 10, "the command")
        pub.stop(flush_s=0)  # never answered, never acknowledged
        pub = connect()
        wait_until(lambda: len(got) == 2, 10, "the command again")
        assert got[1][:2] == got[0][:2] == ("report_now", b'{"id": "unanswered"}')
        pub.reply(b'{"answer": 1}', None, None)
        got[1][2].ack()
        time.sleep(0.5)
        pub.stop(flush_s=0)
        pub = connect()
        time.sleep(1.5)
        assert len(got) == 2, "an acknowledged command must not come back"
        pub.stop(flush_s=0)
    finally:
        outbox.close()


def test_commands_over_mqtt_3_1_1(broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    cmd = Commander(broker.port, protocol=mqtt.MQTTv311)
    try:
        agent = agent_factory(mqtt={"protocol": "3.1.1"}).start()
        commands_reach(agent, subscriber, cmd)
        agent.kill()
        cmd.send("report_now", {"id": "v311-away"})
        agent.start()
        reply = wait_reply(subscriber, "v311-away", timeout=30)
        assert reply["ok"] and not reply_errors(reply)
    finally:
        cmd.close()


# -- local control ---------------------------------------------------------------------------


def post(agent: AgentProcess, name: str, body: bytes,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST to the agent's control socket, as `classroom-agent lesson` does."""
    conn = UnixConnection(agent.config["status"]["socket"], 40)
    try:
        conn.request("POST", f"/command/{name}", body,
                     headers if headers is not None else {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_local_control_works_without_a_broker(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")  # never started: nothing listens on its port
    agent = AgentProcess(tmp_path / "agent", broker.port)
    try:
        agent.start()
        wait_until(lambda: agent.status()["outbox"]["last_seq"] >= 1, 20, "first records")
        status, reply = post(agent, "report_now", b'{"id": "local-1"}')
        assert status == 200 and reply["ok"] and reply["id"] == "local-1", reply
        assert not reply_errors(reply)
        seq = reply["result"]["seq"]
        st_ = agent.status()
        assert not st_["broker"]["connected"] and st_["outbox"]["last_seq"] >= seq
        assert st_["outbox"]["depth"] >= 1  # waiting in the outbox for the broker

        status, reply = post(agent, "report_now", b'{"id": "x", "args": {"n": 1}}')
        assert status == 400 and reply["error"]["code"] == "bad_args"
        status, reply = post(agent, "lesson_stop", b'{"id": "x"}')
        assert status == 409 and reply["error"]["code"] == "conflict"  # no lesson is running
        status, reply = post(agent, "report_now", b"{" + b" " * (MAX_PAYLOAD + 10) + b"}")
        assert status == 400 and reply["error"]["code"] == "too_large"
        status, reply = post(agent, "report_now", b'{"id": "x"}',
                             {"Content-Type": "application/json",
                              "Origin": "http://evil.example"})
        assert status == 403
        status, reply = post(agent, "report_now", b'{"id": "x"}', {"Content-Type": "text/plain"})
        assert status == 415
        # The TCP status address is read-only: it says where control went.
        req = urllib.request.Request(f"http://127.0.0.1:{agent.status_port}/command/report_now",
                                     data=b'{"id": "tcp"}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403
        assert "Unix socket" in json.load(refused.value)["error"]["message"]

        # The CLI: a refusal is exit 1 with the reason; the agent keeps running.
        res = agent.cli("lesson", "stop", "--config", str(agent.config_path))
        assert res.returncode == 1, res.stdout + res.stderr
        assert "refused lesson_stop" in res.stdout and "no lesson is running" in res.stdout
        res = agent.cli("lesson", "stop", "--json", "--config", str(agent.config_path))
        assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "conflict"
        assert agent.status()["agent"]["pid"] == agent.proc.pid  # type: ignore[union-attr]
    finally:
        agent.kill()
    res = agent.cli("lesson", "stop", "--config", str(agent.config_path))
    assert res.returncode == 3 and "NOT running" in res.stdout


def test_devices_cli(tmp_path: Path) -> None:
    """Cameras, microphones and the FFmpeg in use with what the config needs of it."""
    agent = AgentProcess(tmp_path, 1)
    res = agent.cli("devices", "--json", "--config", str(agent.config_path))
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert set(found) == {"cameras", "microphones", "ffmpeg"}
    ff = found["ffmpeg"]
    assert ff["ok"] and ff["choice"] == "bundled" and ff["version"].startswith("n9."), ff
    assert ff["missing"] == {} and "libx264" in ff["needs"]["encoders"]
    assert ff["preset_options"] is False and ff["pusher"]["pyav"], ff
    res = agent.cli("devices", "--config", str(agent.config_path))
    assert res.returncode == 0 and "camera(s)" in res.stdout and "microphone(s)" in res.stdout
    assert f"FFmpeg {ff['version']} (bundled: {ff['path']})" in res.stdout
    bad = tmp_path / "missing-ffmpeg.yaml"
    bad.write_text(agent.config_path.read_text() + "\nmedia: {ffmpeg: /nonexistent/ffmpeg}\n")
    res = agent.cli("devices", "--config", str(bad))
    assert res.returncode == 1 and "is not an executable file" in res.stdout, res.stdout


def test_request_dataclass_is_what_parse_returns() -> None:
    parsed = _router().parse("report_now", _req("p"))
    assert parsed == Request("report_now", "p", {})
