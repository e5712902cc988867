"""Records: what the agent observed, before it becomes an MQTT payload.

A record carries its observation time; the outbox gives it a sequence number and the envelope
(contract version, device, school) when it commits it. Nothing here touches the network or disk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from agent import CONTRACT_VERSION

Kind = Literal["state", "inventory", "metrics", "usage", "event", "schedule"]
KINDS: tuple[str, ...] = ("state", "inventory", "metrics", "usage", "event", "schedule")
#: Kinds the broker keeps as the last value of the topic.
RETAINED_KINDS = frozenset({"state", "inventory", "schedule"})

Severity = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Record:
    """One observation of one kind; ``ts`` is when it was observed (epoch seconds, UTC)."""

    kind: Kind
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)

    @property
    def retained(self) -> bool:
        return self.kind in RETAINED_KINDS


def event(type_: str, severity: Severity, message: str, **details: Any) -> Record:
    """Build an ``event`` record: ``type`` is a stable machine name, ``message`` is for people."""
    data: dict[str, Any] = {"type": type_, "severity": severity, "message": message}
    if details:
        data["details"] = details
    return Record("event", data)


def age_s(ts: float, now: float | None = None) -> float:
    """Seconds since the wall-clock instant ``ts``, never negative: the clock may have been
    stepped back since ``ts`` was taken (NTP, a technician fixing the date)."""
    return max(0.0, (time.time() if now is None else now) - ts)


def rfc3339(ts: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with milliseconds, e.g. 2026-11-23T08:00:00.123Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who is speaking: the fields every payload carries besides its own data."""

    device: str
    school: str

    def encode(self, record: Record, seq: int | None) -> bytes:
        """The contract payload (docs/contract.md). ``seq`` is None only for ``state``."""
        body: dict[str, Any] = {
            "v": CONTRACT_VERSION,
            "device": self.device,
            "school": self.school,
            "seq": seq,
            "ts": rfc3339(record.ts),
            "kind": record.kind,
            "data": record.data,
        }
        if seq is None:
            del body["seq"]
        try:
            return json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                              default=str).encode()
        except UnicodeEncodeError:  # a lone surrogate got in: escape it rather than lose this
            return json.dumps(body, separators=(",", ":"), default=str).encode()


def mark_historical(payload: bytes) -> bytes:
    """Add ``"historical":true`` to an encoded payload without re-parsing it (backlog drain)."""
    return payload[:-1] + b',"historical":true}'
