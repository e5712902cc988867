"""Messages as the agent encodes them (agent/records.py), fed through the collector's own
validation and storage into a real PostgreSQL: the ingest path without a broker."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from agent.records import Envelope, Record, mark_historical
from collector import config, gaps
from collector.storage import BatchResult, Store
from collector.validation import Inbound, Validator

PREFIX = "classroom/v1"
#: Observation times derive from the seq, so a replay is byte for byte the same record.
BASE_TS = time.time() - 3600


def payload(kind: str, seq: int | None, data: dict[str, Any], ts: float | None = None,
            school: str = "school-a", device: str = "room-101",
            historical: bool = False) -> bytes:
    when = ts if ts is not None else BASE_TS + (seq or 0)
    raw = Envelope(device, school).encode(Record(kind, data, when), seq)  # type: ignore[arg-type]
    return mark_historical(raw) if historical else raw


def msg(kind: str, raw: bytes, school: str = "school-a", device: str = "room-101",
        topic: str | None = None) -> Inbound:
    return Inbound(topic or f"{PREFIX}/{school}/{device}/{kind}", raw, 1, 1, False, time.time())


def metrics(seq: int, **kw: Any) -> Inbound:
    return msg("metrics", payload("metrics", seq, {}, **kw),
               kw.get("school", "school-a"), kw.get("device", "room-101"))


def batch(*records: bytes, school: str = "school-a", device: str = "room-101") -> Inbound:
    """A ``batch`` message (agent/schemas/batch.json) as the agent's publisher builds it: the
    records' payloads unchanged, in ``records``."""
    head = f'{{"v":1,"school":"{school}","device":"{device}","kind":"batch","records":['
    return msg("batch", head.encode() + b",".join(records) + b"]}", school, device)


def agent_section(connected: bool, session: int = 1, last_seq: int = 0) -> dict[str, Any]:
    """The ``agent`` section of a metrics record (agent/schemas/metrics-data.json) with the
    broker link as the terminal saw it."""
    return {
        "outbox": {"depth": 0, "bytes": 0, "oldest_age_s": None, "dropped_total": 0,
                   "held_in_memory": 0, "last_seq": last_seq, "quarantined_total": 0},
        "mqtt": {"connected": connected, "protocol": "5" if connected else None,
                 "session": session, "reconnects_total": 0, "connect_failures_total": 0,
                 "published_total": 0, "acked_total": 0, "publish_failures_total": 0,
                 "inflight": 0},
        "process": {"cpu_s": 1.0, "rss_bytes": 30_000_000, "threads": 12, "fds": 20}}


def event(seq: int, type_: str, details: dict[str, Any] | None = None, **kw: Any) -> Inbound:
    data: dict[str, Any] = {"type": type_, "severity": "info", "message": type_}
    if details is not None:
        data["details"] = details
    return msg("event", payload("event", seq, data, **kw))


def state(status: str, session: int, reason: str, started_at: str = "2026-11-30T08:00:00.000Z",
          ts: float | None = None) -> Inbound:
    data = {"status": status, "session": session, "reason": reason, "agent_version": "0.1.0",
            "started_at": started_at}
    return msg("state", payload("state", None, data, ts=ts))


START = "2026-11-30T00:00:00.000Z"
END = "2026-11-30T00:40:00.000Z"


def identity(lesson_id: str, **kw: Any) -> dict[str, Any]:
    return {"lesson_id": lesson_id, "course": "数学", "teacher": "李明", "role": "lecturing",
            "trigger": "timetable", "scheduled_start": START, "scheduled_end": END,
            "actual_start": START, "planned_duration_s": None, **kw}


def started(lesson_id: str, **kw: Any) -> dict[str, Any]:
    return {**identity(lesson_id, **kw), "late_s": 0.0, "live": ["platform"]}


def ended(lesson_id: str, ended_by: str = "schedule", **kw: Any) -> dict[str, Any]:
    return {**identity(lesson_id, **kw), "actual_end": END, "duration_s": 2400.0,
            "ended_by": ended_by, "live_s": {"platform": 2390.5, "backup": 100.0},
            "recorded_s": 2400.0,
            "interruptions": [] if ended_by != "agent_interrupted" else [
                {"what": "agent_interrupted", "start": None, "end": None, "duration_s": None}],
            "segments": [{"path": "a.ts", "bytes": 1000, "sha256": "0" * 64, "start": START,
                          "end": END}]}



class Ingest:
    """The collector's validation + storage + gap tracker on one database."""

    def __init__(self, url: str, **overrides: Any) -> None:
        text = f"database: {{url: '{url}'}}\n"
        for section, values in overrides.items():
            text += f"{section}: {values}\n"
        self.cfg = config.loads(text)
        self.validator = Validator(PREFIX, self.cfg.ingest.max_payload_bytes)
        self.store = Store(self.cfg, "test")
        self.store.open()
        self.conn = psycopg.connect(url, autocommit=True)

    def write(self, *messages: Inbound) -> BatchResult:
        return self.store.write([o for m in messages for o in self.validator.check(m)])

    def sweep(self, lost_after_s: float = 3600.0) -> gaps.SweepResult:
        return gaps.sweep(self.conn, lost_after_s)

    def gaps(self, device: str = "room-101") -> list[tuple[int, int, bool, bool]]:
        """Open gaps as (first, last, lost, explained)."""
        return [(r[0], r[1], r[2], r[3]) for r in self.conn.execute(
            """SELECT first_seq, last_seq, lost_at IS NOT NULL, explained IS NOT NULL
               FROM seq_gaps WHERE device = %s AND closed_at IS NULL ORDER BY first_seq""",
            (device,))]

    def one(self, sql: str, *args: Any) -> Any:
        rows = self.conn.execute(sql, args).fetchall()
        assert len(rows) == 1, rows
        return rows[0] if len(rows[0]) > 1 else rows[0][0]

    def close(self) -> None:
        self.store.close()
        self.conn.close()


class Fleet:
    """Many terminals' sequenced records, published at QoS 1 as the agent encodes them (the
    agent's own publisher is one terminal per process; this is many, fast). ``publish`` waits
    for every PUBACK: from then on the broker owns the records."""

    def __init__(self, port: int, devices: int) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.devices = [f"room-{100 + i}" for i in range(devices)]
        self.next_seq = dict.fromkeys(self.devices, 1)
        self._acked = 0
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.on_publish = lambda *_a: self._ack()
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _ack(self) -> None:
        with self._lock:
            self._acked += 1

    def publish(self, per_device: int, timeout: float = 60) -> int:
        """``per_device`` more records from every terminal, interleaved; returns how many."""
        from tests.support import wait_until

        with self._lock:
            target = self._acked
        for _ in range(per_device):
            for dev in self.devices:
                seq = self.next_seq[dev]
                self.next_seq[dev] = seq + 1
                raw = payload("metrics", seq, {}, device=dev)
                self.client.publish(f"{PREFIX}/school-a/{dev}/metrics", raw, qos=1)
                target += 1
        wait_until(lambda: self._acked >= target, timeout, "the broker to take every record")
        return per_device * len(self.devices)

    def expected(self) -> int:
        return sum(s - 1 for s in self.next_seq.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
