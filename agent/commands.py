"""Commands: validate a request, run its handler, build the reply; MQTT and local HTTP share it.

Two parts, kept apart on purpose:

- :class:`CommandRouter` is pure: it checks size, JSON, the request shape and each command's
  arguments against a small declared schema (:data:`COMMANDS`), then calls the handler. Whatever
  comes in (any bytes, any topic name), it returns a reply body and never raises, so a bad
  command cannot crash the daemon.
- :class:`CommandWorker` runs handlers on one thread of its own behind a bounded queue. The
  publisher thread (MQTT) and the status server's request threads (HTTP) only enqueue, so a slow
  handler never blocks delivery; a full queue is answered at once with ``busy``.

Errors are codes a machine can act on plus a sentence for people (docs/contract.md, "Commands").
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent import CONTRACT_VERSION
from agent.records import Envelope, Record, rfc3339
from agent.safetext import clip
from agent.throttle import Summary, Tally, TokenBucket

log = logging.getLogger(__name__)

#: Largest request payload, checked before parsing (MQTT and HTTP alike).
MAX_PAYLOAD = 16 * 1024
#: Longest request id; ids are echoed in replies and used to recognise a repeated request.
MAX_ID = 64
#: Requests waiting for the worker; beyond this the answer is ``busy`` (a terminal gets a handful
#: of commands a day, so a full queue means something is stuck or flooding).
QUEUE_SIZE = 8
#: Replies remembered by request id, so a QoS 1 duplicate is answered again but not run twice.
RECENT_IDS = 128
#: Longest command name taken from a topic or URL (the allow-listed ones are far shorter).
MAX_NAME = 64
#: Refusals at the door are logged once, then summarised once per this many seconds.
REFUSAL_WINDOW_S = 60.0
#: Replies to requests that never ran (refused at the door, busy): at most this many per second
#: on average, in bursts of REFUSAL_BURST; the rest are acknowledged without a reply.
REFUSAL_REPLIES = 2.0
REFUSAL_BURST = 20
#: report_now runs at most this often on average, in bursts of REPORT_NOW_BURST; beyond that it is
#: answered ``rate_limited`` (a flood of report_now must not become a flood of records).
REPORT_NOW_PER_S = 1.0
REPORT_NOW_BURST = 10

# Error codes. Input errors are the sender's fault (HTTP 400); the rest are the agent's answer.
BAD_JSON = "bad_json"
TOO_LARGE = "too_large"
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGS = "bad_args"
BUSY = "busy"
TIMEOUT = "timeout"
INTERNAL_ERROR = "internal_error"
RATE_LIMITED = "rate_limited"
#: Conventional code for "not now" (a lesson already running, none to stop); HTTP 409.
CONFLICT = "conflict"
INPUT_ERRORS = frozenset({BAD_JSON, TOO_LARGE, BAD_REQUEST, UNKNOWN_COMMAND, BAD_ARGS})
#: Answers that mean "not now, nothing was done": in a flood their replies and log lines are
#: rate-limited like refusals at the door.
_TURNED_AWAY = frozenset({BUSY, RATE_LIMITED})

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: Tracebacks caused by input are logged at most this often (one per 10 s, bursts of 3).
_TRACEBACKS = TokenBucket(0.1, 3)


class CommandError(Exception):
    """Raised by a handler to refuse a command: ``code`` for machines, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- argument schemas ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument: JSON type, bounds, allowed values. ``command.json`` mirrors these."""

    type: Literal["string", "number", "integer", "boolean"]
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    max_length: int = 200
    doc: str = ""


@dataclass(frozen=True)
class CommandSpec:
    doc: str
    args: Mapping[str, Arg] = field(default_factory=dict)


#: The allow-list. A name not here is ``unknown_command`` whatever handlers are registered.
COMMANDS: dict[str, CommandSpec] = {
    "lesson_start": CommandSpec(
        "Start a lesson now (manual, outside the timetable).",
        {
            "course": Arg("string", doc="course name shown on the platform"),
            "teacher": Arg("string", doc="teacher's name"),
            "role": Arg("string", enum=("lecturing", "receiving"),
                        doc="lecturing: this room teaches; receiving: it follows a remote lesson"),
            "duration_s": Arg("number", minimum=10, maximum=86400,
                              doc="stop by itself after this many seconds"),
        },
    ),
    "lesson_stop": CommandSpec("Stop the running lesson."),
    "report_now": CommandSpec("Collect and publish a metrics record now; the reply has its seq."),
    "upload_retry": CommandSpec(
        "Retry uploading recordings now: failed lessons are queued again and the back-off is "
        "reset (the upload schedule still applies).",
        {"lesson_id": Arg("string", max_length=128, doc="only this lesson")},
    ),
    "upload_status": CommandSpec(
        "The upload queue: its state, what is being sent, each lesson's progress.",
        {"lesson_id": Arg("string", max_length=128, doc="only this lesson")},
    ),
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int in Python, never a number in JSON
        return False
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def check_args(spec: CommandSpec, args: Any) -> str | None:
    """Why ``args`` does not fit ``spec`` (naming the argument), or None when it fits."""
    if not isinstance(args, dict):
        return f"args must be a JSON object, not {_json_type(args)}"
    unknown = sorted(set(args) - set(spec.args))
    if unknown:
        known = ", ".join(spec.args) or "none"
        return f"unknown argument {_clip(unknown[0])!r} (known: {known})"
    for name, arg in spec.args.items():
        if name not in args:
            if arg.required:
                return f"missing argument {name!r}"
            continue
        value = args[name]
        if not _type_ok(value, arg.type):
            return f"argument {name!r} must be a {arg.type}, not {_json_type(value)}"
        if arg.type == "string":
            if not 1 <= len(value) <= arg.max_length:
                return f"argument {name!r} must be 1 to {arg.max_length} characters long"
            if not _is_unicode(value):
                return (f"argument {name!r} is not valid Unicode text (a lone surrogate such as "
                        "\\ud800); send the text itself, UTF-8 encoded")
            if arg.enum is not None and value not in arg.enum:
                return f"argument {name!r} must be one of {', '.join(arg.enum)}"
        if arg.minimum is not None and value < arg.minimum:
            return f"argument {name!r} must be at least {arg.minimum:g}"
        if arg.maximum is not None and value > arg.maximum:
            return f"argument {name!r} must be at most {arg.maximum:g}"
    return None


def _is_unicode(text: str) -> bool:
    """False for a lone surrogate (JSON allows a bare "\\ud800" escape): such text cannot be
    written to the lesson state or encoded into a record, so it must not get past the door."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _clip(text: str, n: int = 64) -> str:
    return text if len(text) <= n else text[:n] + "..."


# -- the router ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    name: str
    id: str
    args: dict[str, Any]
    #: Signed commands only (agent/signing.py checks them; the router passes them through).
    ts: Any = None
    sig: Any = None


class Guard(Protocol):
    """A check run on a valid request before it runs (agent/signing.py's ``CommandGuard``)."""

    def check(self, req: Request) -> dict[str, Any] | None:
        """None when ``req`` may run, else the error reply."""

    def ran(self, req: Request) -> None:
        """``req`` (which passed :meth:`check`) has run."""

    def release(self, req: Request) -> None:
        """``req`` passed :meth:`check` but will not run (the router refused its name or
        arguments, or the queue was full)."""


def error(req_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class CommandRouter:
    """Validates requests and dispatches them to ``handlers`` (name -> callable(args) -> dict)."""

    def __init__(self, handlers: Mapping[str, Handler],
                 specs: Mapping[str, CommandSpec] = COMMANDS) -> None:
        unknown = set(handlers) - set(specs)
        if unknown:  # a programming error, caught at start-up rather than on the first command
            raise ValueError(f"handlers for undeclared commands: {sorted(unknown)}")
        self.handlers = dict(handlers)
        self.specs = specs

    def handle(self, name: str, payload: bytes) -> dict[str, Any]:
        """The reply body for one request; never raises."""
        parsed = self.parse(name, payload)
        return parsed if isinstance(parsed, dict) else self.execute(parsed)

    def parse(self, name: str, payload: bytes,
              guard: Guard | None = None) -> Request | dict[str, Any]:
        """A valid :class:`Request`, or the error reply explaining what is wrong with it.

        ``guard`` (signed commands) is asked once the request's id is known and before the
        command name and arguments are checked, so an unauthenticated request learns nothing
        about them and every such attempt is counted the same way.
        """
        try:
            return self._parse(name, payload, guard)
        except Exception:  # the checks above are total; this is a last line of defence
            # Input can repeat this at will: a traceback at most every few seconds.
            if _TRACEBACKS.allow():
                log.exception("commands: unexpected error validating %r", _clip(str(name)))
            return error(None, INTERNAL_ERROR, "the agent failed to read the command; see its log")

    def _parse(self, name: str, payload: bytes,
               guard: Guard | None) -> Request | dict[str, Any]:
        if len(payload) > MAX_PAYLOAD:
            return error(None, TOO_LARGE,
                         f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD}")
        try:
            body = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return error(None, BAD_JSON, f"payload is not UTF-8 JSON: {_clip(str(exc), 120)}")
        if not isinstance(body, dict):
            return error(None, BAD_REQUEST,
                         f'payload must be a JSON object {{"id": ..., "args": {{...}}}}, '
                         f"not {_json_type(body)}")
        req_id = body.get("id")
        if not isinstance(req_id, str) or not 1 <= len(req_id) <= MAX_ID:
            return error(None, BAD_REQUEST,
                         f'"id" must be a string of 1 to {MAX_ID} characters (got '
                         f"{'nothing' if req_id is None else _json_type(req_id)})")
        extra = sorted(set(body) - {"id", "args", "ts", "sig"})
        if extra:
            return error(req_id, BAD_REQUEST, f"unknown field {_clip(extra[0])!r}; a request "
                         "has only id, args and, when signed, ts and sig")
        req = Request(name, req_id, body.get("args", {}), body.get("ts"), body.get("sig"))
        refused = guard.check(req) if guard is not None else None
        if refused is not None:
            return refused
        refused = self._check_command(req)
        if refused is not None and guard is not None:
            guard.release(req)  # it will not run: its id is not held as if it had
        return refused or req

    def _check_command(self, req: Request) -> dict[str, Any] | None:
        spec = self.specs.get(req.name)
        if spec is None or req.name not in self.handlers:
            known = ", ".join(sorted(n for n in self.specs if n in self.handlers))
            return error(req.id, UNKNOWN_COMMAND,
                         f"unknown command {_clip(req.name)!r}; this agent accepts: {known}")
        why = check_args(spec, req.args)
        if why is not None:
            return error(req.id, BAD_ARGS, f"{req.name}: {why}")
        return None

    def execute(self, req: Request) -> dict[str, Any]:
        """Run the handler; a :class:`CommandError` is a refusal, anything else a bug."""
        try:
            result = self.handlers[req.name](dict(req.args))
        except CommandError as exc:
            return error(req.id, exc.code, exc.message)
        except Exception:
            # Logged with its traceback but without the arguments (names of people).
            log.exception("commands: %s (id %s) failed", req.name, req.id)
            return error(req.id, INTERNAL_ERROR,
                         f"{req.name} failed inside the agent; the agent log has the details")
        if not isinstance(result, dict):
            log.error("commands: handler of %s returned %s, not a dict", req.name,
                      type(result).__name__)
            return error(req.id, INTERNAL_ERROR, f"{req.name} returned no result")
        return {"id": req.id, "ok": True, "result": result}


def reply_message(envelope: Envelope, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The whole reply: the body plus who is speaking and when (no ``seq``: not a record)."""
    return {"v": CONTRACT_VERSION, "device": envelope.device, "school": envelope.school,
            "ts": rfc3339(time.time()), "kind": "reply", "command": clip(name, MAX_NAME), **body}


def encode_reply(message: dict[str, Any]) -> bytes:
    """ASCII-only JSON, so that any text echoed from a request (even a lone surrogate) encodes."""
    return json.dumps(message, separators=(",", ":"), default=str).encode()


# -- the worker ------------------------------------------------------------------------------


ReplySink = Callable[[bytes, str | None, bytes | None], None]


@dataclass
class _Job:
    req: Request
    done: Callable[[dict[str, Any]], None]
    #: Passed the door (the guard); only such a request may have its reply sent where it asks.
    admitted: bool = True


class CommandWorker:
    """Runs commands one at a time on its own thread; MQTT and HTTP requests queue here.

    The door (size, JSON, request shape and, for MQTT, the signature checks) is passed on the
    caller's thread, before the queue: a flood of bad or badly signed requests costs a parse and
    a counter each and never takes a place in the queue, so a legitimate command behind it still
    gets in. What the door refuses is logged once per :data:`REFUSAL_WINDOW_S` with counts, and
    answered on the device's reply topic only, at most :data:`REFUSAL_REPLIES` per second.
    """

    def __init__(self, router: CommandRouter, envelope: Envelope, reply: ReplySink,
                 queue_size: int = QUEUE_SIZE, guard: Callable[[], Guard | None] | None = None,
                 name: str = "commands") -> None:
        self.router = router
        self.guard = guard or (lambda: None)  # a getter: a reload may replace the guard
        self.envelope = envelope
        self.reply = reply
        self.name = name
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._recent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._refusals = Tally(REFUSAL_WINDOW_S, self._log_refusals)
        self._unanswered = TokenBucket(REFUSAL_REPLIES, REFUSAL_BURST)
        self.executed_total = 0
        self.rejected_total = 0
        self.unanswered_total = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the running command finish (up to ``timeout``); queued ones get no reply."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            return
        if self._thread is not None:
            self._thread.join(timeout)
        self._refusals.flush()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, name: str, payload: bytes, reply_to: Any = None) -> None:
        """From the publisher thread (MQTT): check at the door, enqueue, never block; the reply
        goes to ``reply``.

        ``reply_to`` is the publisher's ``ReplyTo`` (response topic, correlation data and an
        ``ack`` called after the reply is queued, so an unanswered request is redelivered) or None.
        """
        name = clip(name, MAX_NAME)  # a topic level can be 64 KiB: bounded before anything else
        topic = getattr(reply_to, "response_topic", None)
        correlation = getattr(reply_to, "correlation", None)
        ack = getattr(reply_to, "ack", None)

        def answer(body: dict[str, Any], admitted: bool) -> None:
            never_ran = not admitted or (body.get("error") or {}).get("code") in _TURNED_AWAY
            if never_ran and not self._unanswered.allow():
                self.unanswered_total += 1
            else:
                # A request refused at the door chose nothing: its reply goes to {base}/reply only.
                self.reply(encode_reply(reply_message(self.envelope, name, body)),
                           topic if admitted else None, correlation)
            if callable(ack):
                ack()

        parsed = self._door(name, payload, self.guard())
        if isinstance(parsed, dict):
            self._finish(_Job(Request(name, "", {}), lambda b: answer(b, False), False), parsed)
            return
        self._enqueue(_Job(parsed, lambda b: answer(b, True)))

    def call(self, name: str, payload: bytes, timeout: float = 30.0) -> dict[str, Any]:
        """From an HTTP request thread: the same door and queue; waits for the reply."""
        name = clip(name, MAX_NAME)
        parsed = self._door(name, payload, None)
        if isinstance(parsed, dict):
            return reply_message(self.envelope, name, parsed)
        got: list[dict[str, Any]] = []
        ready = threading.Event()

        def done(body: dict[str, Any]) -> None:
            got.append(body)
            ready.set()

        self._enqueue(_Job(parsed, done))
        if not ready.wait(timeout):
            body = error(parsed.id, TIMEOUT,
                         f"{name} did not finish within {timeout:.0f} s; it may still complete. "
                         "Next step: check `classroom-agent status` before retrying")
        else:
            body = got[0]
        return reply_message(self.envelope, name, body)

    def _door(self, name: str, payload: bytes, guard: Guard | None) -> Request | dict[str, Any]:
        parsed = self.router.parse(name, payload, guard)
        if isinstance(parsed, dict):
            self.rejected_total += 1
            err = parsed["error"]
            self._refusals.note(err["code"], {"command": name, "id": parsed.get("id"),
                                              "message": err["message"]})
        return parsed

    def _log_refusals(self, s: Summary) -> None:
        ex = s.example
        if s.first:
            log.info("%s: refused %s (id %s): %s", self.name, ex["command"], ex["id"],
                     ex["message"])
        else:
            log.warning("%s: %d more requests refused in the last %.0f s (%s); the last: %s "
                        "(id %s): %s", self.name, s.count, s.window_s,
                        ", ".join(f"{k} {n}" for k, n in sorted(s.by_key.items())),
                        ex["command"], ex["id"], ex["message"])

    def _enqueue(self, job: _Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.rejected_total += 1
            guard = self.guard()
            if guard is not None:
                guard.release(job.req)
            self._refusals.note(BUSY, {"command": job.req.name, "id": job.req.id,
                                       "message": "queue full"})
            self._finish(job, error(job.req.id, BUSY,
                                    "the agent is still running earlier commands; retry shortly"))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                body = self._execute(job.req)
            except Exception:  # _execute is total; keep the thread alive whatever happens
                log.exception("%s: unexpected error running %s", self.name, job.req.name)
                body = error(None, INTERNAL_ERROR, "the agent failed to run the command")
            self._finish(job, body)

    def _execute(self, req: Request) -> dict[str, Any]:
        key = (req.name, req.id)
        if key in self._recent:
            log.info("%s: %s id %s is a repeat; answering again without running it", self.name,
                     req.name, req.id)
            return self._recent[key]
        started = time.monotonic()
        body = self.router.execute(req)
        guard = self.guard()
        if guard is not None:
            guard.ran(req)
        self.executed_total += 1
        outcome = "ok" if body["ok"] else body["error"]["code"]
        if outcome in _TURNED_AWAY:  # a flood's answer: counted, not a log line each
            self._refusals.note(outcome, {"command": req.name, "id": req.id,
                                          "message": body["error"]["message"]})
        else:
            log.info("%s: %s id %s -> %s (%.0f ms)", self.name, req.name, req.id, outcome,
                     (time.monotonic() - started) * 1000)
        if body["ok"] or body["error"]["code"] not in (INTERNAL_ERROR, BUSY):
            self._recent[key] = body
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        return body

    @staticmethod
    def _finish(job: _Job, body: dict[str, Any]) -> None:
        try:
            job.done(body)
        except Exception:
            log.exception("commands: could not deliver the reply to %s", job.req.name)


# -- handlers the agent implements itself ----------------------------------------------------


def report_now(
    tick: Callable[[], tuple[Record, list[Record]]],
    commit: Callable[[list[Record]], Sequence[int]],
    limit: TokenBucket | None = None,
) -> Handler:
    """``report_now``: one telemetry tick committed to the outbox; the reply carries its seq.

    ``tick`` must be safe to call beside the telemetry thread's own ticks (the scheduler
    serialises them). ``limit`` (shared by MQTT and local control) answers ``rate_limited`` once
    it is spent, so a flood of requests is not a flood of records.
    """

    def handler(_args: dict[str, Any]) -> dict[str, Any]:
        if limit is not None and not limit.allow():
            raise CommandError(RATE_LIMITED, f"report_now runs at most {limit.rate:g} times a "
                               f"second (bursts of {limit.burst:g}); a record was sent moments "
                               "ago. Next step: retry in a few seconds")
        metrics, events = tick()
        try:
            seqs = commit([metrics, *events])
        except Exception as exc:
            raise CommandError("outbox_unavailable",
                               f"the record could not be stored ({exc}); check the state "
                               "directory (space, permissions)") from exc
        return {"seq": seqs[0], "events": len(events)}

    return handler
