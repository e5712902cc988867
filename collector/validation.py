"""Every inbound message becomes outcomes: a valid record, a cleared retained topic, a rejection
(for the quarantine table, with its reason), or nothing (commands and replies). A message is one
outcome, except a ``batch`` (several records of one terminal in one message,
``agent/schemas/batch.json``): one outcome per record, each checked as if it had come alone, so
one bad record is quarantined and its neighbours stored.

The schemas are the agent's own (``agent/schemas/``, one source of truth), all loaded from the
directory: the kinds are the envelope's ``kind`` enum, and kind ``K`` is checked against
``K.json`` (or the envelope alone when a new kind has no file yet). Parsing is orjson (strict
RFC 8259: no NaN, no lone surrogates, UTF-8 only) and validation jsonschema-rs: on the agent's
real payloads they were 270 and 100 times faster than json + jsonschema, and fastjsonschema
(draft 7) lets ``unevaluatedProperties`` violations through (docs/collector.md, "Validation").
Beyond the schemas, a record must name the school, device and kind of its topic, and carry what
PostgreSQL can store (a valid time, a 64-bit seq, no ``\\u0000``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

import agent

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(agent.__file__).resolve().parent / "schemas"
#: Kinds whose topic is retained: an empty payload there means "deleted" (e.g. no inventory).
RETAINED = frozenset({"state", "inventory", "schedule"})
#: The topic level of a batch message.
BATCH = "batch"
_MAX_SEQ = 2**63 - 1
_REASON_MAX = 500
_TOPIC_MAX = 512


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as the subscription hands it over; ``conn`` is the connection it came on
    (its acknowledgement is only valid there)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_at: float
    conn: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    school: str
    device: str
    kind: str
    seq: int | None
    ts: datetime
    historical: bool
    data: dict[str, Any]
    raw: bytes  # the whole payload as received (for the quarantine, if the database refuses it)
    received_at: float
    #: A record of a batch: its parsed form, serialised again only if it must be quarantined
    #: (``raw`` is then empty: most records never need it).
    parsed: dict[str, Any] | None = None

    def payload(self) -> bytes:
        """The record's bytes: as received, or (a record of a batch) serialised again."""
        return self.raw if self.parsed is None else orjson.dumps(self.parsed)


@dataclass(frozen=True, slots=True)
class Cleared:
    """An empty retained message: the terminal withdrew its ``kind`` (e.g. no inventory)."""

    school: str
    device: str
    kind: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Rejected:
    topic: str
    school: str | None
    device: str | None
    kind: str | None
    reason: str
    payload: bytes
    received_at: float


Outcome = Accepted | Cleared | Rejected | None


class Validator:
    def __init__(self, topic_prefix: str, max_payload_bytes: int,
                 schema_dir: Path = SCHEMA_DIR) -> None:
        self.prefix = topic_prefix.rstrip("/") + "/"
        self.max_payload_bytes = max_payload_bytes
        docs = {p.stem: json.loads(p.read_text("utf-8")) for p in sorted(schema_dir.glob("*.json"))}
        registry = jsonschema_rs.Registry([(d["$id"], d) for d in docs.values() if "$id" in d])
        envelope = docs["envelope"]["properties"]
        self.kinds: tuple[str, ...] = tuple(envelope["kind"]["enum"])
        # A topic's school and device obey the envelope's rules before anything else: an
        # empty retained message carries no payload to check them against, and would make a
        # terminal of any string a client can publish to.
        self._names = {k: re.compile(envelope[k]["pattern"]) for k in ("school", "device")}
        self._validators = {
            kind: jsonschema_rs.validator_for(docs.get(kind, docs["envelope"]), registry=registry)
            for kind in self.kinds
        }
        self._batch = jsonschema_rs.validator_for(docs["batch"], registry=registry)

    def check(self, msg: Inbound) -> list[Outcome]:
        """The outcomes of one message (one, or one per record of a batch); never raises (a
        message our code cannot handle is a rejection too, with the error as its reason)."""
        try:
            return self._check(msg)
        except Exception as exc:
            log.exception("validation: unexpected error on a message of %s", _clip(msg.topic, 200))
            return [self._reject(msg, None, None, None,
                                 f"the collector could not check it: {type(exc).__name__}")]

    def _check(self, msg: Inbound) -> list[Outcome]:
        topic = msg.topic
        if not topic.startswith(self.prefix):
            return [self._reject(msg, None, None, None, f"topic is not under {self.prefix}")]
        parts = topic[len(self.prefix):].split("/")
        if len(parts) >= 3 and parts[2] in ("cmd", "reply"):
            return [None]  # the platform's commands and the agent's replies: not records
        if len(parts) != 3 or not all(parts):
            return [self._reject(msg, None, None, None,
                                 f"topic is not {self.prefix}{{school}}/{{device}}/{{kind}}")]
        school, device, kind = parts
        for what, name in (("school", school), ("device", device)):
            if not self._names[what].fullmatch(name):
                return [self._reject(msg, None, None, None,
                                     f"the topic's {what} '{_clip(name, 64)}' is not a valid "
                                     f"{what} id ({self._names[what].pattern})")]
        if kind != BATCH and kind not in self._validators:
            return [self._reject(msg, school, device, kind,
                                 f"unknown kind {_clip(kind, 64)!r} (known: "
                                 f"{', '.join(self.kinds)}, {BATCH})")]
        if not msg.payload:
            if kind in RETAINED:
                return [Cleared(school, device, kind, msg.received_at)]
            return [self._reject(msg, school, device, kind, "empty payload")]
        if len(msg.payload) > self.max_payload_bytes:
            return [self._reject(msg, school, device, kind,
                                 f"payload of {len(msg.payload)} bytes is over "
                                 f"ingest.max_payload_bytes ({self.max_payload_bytes})")]
        try:
            obj = orjson.loads(msg.payload)
        except orjson.JSONDecodeError as exc:
            return [self._reject(msg, school, device, kind, f"not UTF-8 JSON: {exc}")]
        if not isinstance(obj, dict):
            return [self._reject(msg, school, device, kind, "payload is not a JSON object")]
        if kind == BATCH:
            return self._unpack(msg, school, device, obj)
        return [self._record(msg, school, device, kind, obj, msg.payload, "",
                             b"\\u0000" in msg.payload)]

    def _unpack(self, msg: Inbound, school: str, device: str, obj: dict[str, Any]
                ) -> list[Outcome]:
        """The records of a batch, each checked as if it had come alone on its kind's topic."""
        if (obj.get("school"), obj.get("device")) != (school, device):
            return [self._reject(
                msg, school, device, BATCH,
                f"topic/payload mismatch: the topic names {school}/{device}, the batch "
                f"{_clip(str(obj.get('school')), 64)}/{_clip(str(obj.get('device')), 64)}")]
        if not self._batch.is_valid(obj):
            return [self._reject(msg, school, device, BATCH,
                                 f"batch.json: {_first_error(self._batch, obj)}")]
        out: list[Outcome] = []
        nul = b"\\u0000" in msg.payload
        for i, rec in enumerate(obj["records"]):
            kind = rec.get("kind")
            where = f"batch record {i + 1} of {len(obj['records'])}: "
            if not isinstance(kind, str) or kind not in self._validators or kind in RETAINED:
                out.append(self._reject(
                    msg, school, device, None,
                    f"{where}kind {_clip(str(kind), 64)!r} cannot come in a batch (only "
                    f"{', '.join(k for k in self.kinds if k not in RETAINED)})",
                    orjson.dumps(rec)))
                continue
            out.append(self._record(msg, school, device, kind, rec, None, where, nul))
        return out

    def _record(self, msg: Inbound, school: str, device: str, kind: str, obj: dict[str, Any],
                raw: bytes | None, where: str, nul: bool) -> Outcome:
        """One record (``obj``, parsed from ``raw``, or from a batch when None) that came on a
        topic naming ``school``, ``device`` and ``kind``; ``where`` starts a rejection's reason
        (the place in a batch); ``nul``: the payload has a ``\\u0000`` somewhere."""
        def reject(reason: str) -> Rejected:
            return self._reject(msg, school, device, kind, where + reason,
                                orjson.dumps(obj) if raw is None else raw)

        if (obj.get("school"), obj.get("device"), obj.get("kind")) != (school, device, kind):
            return reject(
                "topic/payload mismatch: the topic names "
                f"{school}/{device}/{kind}, the payload {_clip(str(obj.get('school')), 64)}/"
                f"{_clip(str(obj.get('device')), 64)}/{_clip(str(obj.get('kind')), 64)}")
        validator = self._validators[kind]
        if not validator.is_valid(obj):
            return reject(f"{kind}.json: {_first_error(validator, obj)}")
        seq = obj.get("seq")
        if seq is None and kind != "state":
            return reject("no seq: every record but state has one")
        if seq is not None and not (type(seq) is int and 1 <= seq <= _MAX_SEQ):
            return reject("seq is not a 64-bit integer >= 1")
        try:
            ts = datetime.fromisoformat(obj["ts"])
        except ValueError as exc:
            return reject(f"ts is not a valid time: {exc}")
        if nul and _has_nul(obj):
            return reject("a string holds \\u0000, which PostgreSQL cannot store")
        return Accepted(school, device, kind, seq, ts, obj.get("historical") is True,
                        obj["data"], raw or b"", msg.received_at, None if raw else obj)

    def _reject(self, msg: Inbound, school: str | None, device: str | None, kind: str | None,
                reason: str, payload: bytes | None = None) -> Rejected:
        """``payload``: what is kept, when not the whole message (one record of a batch)."""
        return Rejected(_clip(msg.topic, _TOPIC_MAX), school, device, kind,
                        _clip(reason, _REASON_MAX), msg.payload if payload is None else payload,
                        msg.received_at)


def _first_error(validator: Any, obj: Any) -> str:
    for err in validator.iter_errors(obj):
        where = "/".join(str(p) for p in err.instance_path) or "(top)"
        return f"at {where}: {err.message}"
    return "invalid"


def _strings(obj: Any) -> Iterator[str]:
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _has_nul(obj: Any) -> bool:
    return any("\x00" in s for s in _strings(obj))


def _clip(text: str, n: int) -> str:
    """Bounded and printable: control characters (a forged log line, a terminal escape) are
    shown escaped."""
    text = text if len(text) <= n else text[:n] + "..."
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
