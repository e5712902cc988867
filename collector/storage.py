"""Writing one batch of checked messages to PostgreSQL, in one transaction.

The batch is copied (COPY, one round trip) into a temporary staging table; one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` per kind moves it into the kind's table, and the
rows that were new are queued in ``arrivals`` for the gap tracker in the same statement. So a
duplicate or a replay changes nothing, and whatever was committed is exactly what the gap
tracker will see. PostgreSQL parses each payload once (``payload::jsonb``); Python never
re-serialises it. State, inventory, lessons and schedules, a few per terminal and day, are
applied row by row after that (collector/terminals.py, collector/lessons.py).

A batch the database refuses for its data (a value out of range it alone checks) is split in
halves until the one bad message is found; that one goes to the quarantine with the database's
reason and the rest is stored. Any other error (connection lost, server restarting) is raised:
the caller retries the same batch, and nothing is acknowledged before the commit.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from collector import lessons, migrate, partitions, terminals
from collector.config import CollectorConfig
from collector.validation import Accepted, Cleared, Outcome, Rejected

log = logging.getLogger(__name__)

PASSWORD_ENV = "CLASSROOM_COLLECTOR_DB_PASSWORD"
#: Metrics further ahead than this (a terminal's clock far in the future) are quarantined
#: rather than creating partitions without end.
MAX_FUTURE_MONTHS = 12
_RESET_EVENTS = ("outbox_corrupted", "outbox_unavailable")
#: Errors of our own Python code on a message (not the database's, not the connection's).
_OUR_BUGS = (ValueError, TypeError, KeyError, AttributeError, IndexError)

# ``data`` is the record's data as orjson writes it: PostgreSQL parses it once, as json for
# metrics and as jsonb for the rest (far fewer).
_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS stage (
    school text, device text, seq bigint, kind text, ts timestamptz, historical boolean,
    received_epoch double precision, data text, etype text, severity text, message text,
    period_start timestamptz, period_end timestamptz, window_start timestamptz,
    window_end timestamptz, connected boolean
) ON COMMIT DELETE ROWS"""

_ARRIVE = ("INSERT INTO arrivals (school, device, seq, ts, resets_seq) "
           "SELECT school, device, seq, ts, {resets} FROM ins")

# kind -> (target table, its columns, the SELECT list from ``stage s`` and ``d`` = data)
_COMMON = "s.school, s.device, s.seq, s.ts, to_timestamp(s.received_epoch), s.historical"
_TABLES: dict[str, tuple[str, str, str]] = {
    "metrics": ("metrics", "school, device, seq, ts, received_at, historical, data, connected",
                f"{_COMMON}, s.data::json, s.connected"),
    "usage": ("usage", "school, device, seq, ts, received_at, historical, period_start, "
              "period_end, data",
              f"{_COMMON}, s.period_start, s.period_end, s.data::jsonb"),
    "event": ("events", "school, device, seq, ts, received_at, historical, type, severity, "
              "message, details",
              f"{_COMMON}, s.etype, s.severity, s.message, s.data::jsonb -> 'details'"),
    "inventory": ("inventories", "school, device, seq, ts, received_at, historical, data",
                  f"{_COMMON}, s.data::jsonb"),
    "schedule": ("schedules", "school, device, seq, ts, received_at, historical, window_start, "
                 "window_end, data", f"{_COMMON}, s.window_start, s.window_end, s.data::jsonb"),
}
_OTHER = ("other_records", "school, device, seq, kind, ts, received_at, historical, data",
          "s.school, s.device, s.seq, s.kind, s.ts, to_timestamp(s.received_epoch), s.historical, "
          "s.data::jsonb")


def _insert_sql(table: str, cols: str, select: str, where: str, resets: str = "false") -> str:
    return (f"WITH ins AS (INSERT INTO {table} ({cols}) SELECT {select} FROM stage s "
            f"WHERE {where} ON CONFLICT DO NOTHING RETURNING school, device, seq, ts"
            + (", type" if table == "events" else "") + ") "
            + _ARRIVE.format(resets=resets))


@dataclass
class BatchResult:
    stored: int = 0  # sequenced records new to the database
    duplicates: int = 0  # sequenced records it already had
    states: int = 0  # state messages (not sequenced) applied or already known
    cleared: int = 0  # empty retained messages
    expired: int = 0  # metrics older than the retention: counted for gaps, not stored
    quarantined: int = 0
    ignored: int = 0  # commands and replies
    by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, other: BatchResult) -> None:
        for name in ("stored", "duplicates", "states", "cleared", "expired", "quarantined",
                     "ignored"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_kind.update(other.by_kind)


def connect(cfg: CollectorConfig, application: str) -> psycopg.Connection:
    """A connection to ``database.url``; the password from ``database.password_file``, the
    environment (:data:`PASSWORD_ENV`) or libpq's own PGPASSFILE, never from the URL."""
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(cfg.database.connect_timeout_s)),
                              "application_name": application[:63], "autocommit": True}
    if cfg.database.password_file:
        with open(cfg.database.password_file, encoding="utf-8") as fh:
            kwargs["password"] = fh.read().rstrip("\r\n")
    elif os.environ.get(PASSWORD_ENV):
        kwargs["password"] = os.environ[PASSWORD_ENV]
    return psycopg.connect(cfg.database.url, **kwargs)


class SchemaNotReady(RuntimeError):
    """The database lacks migrations this version needs."""


class Store:
    """Owns one connection (the ingest thread's) and writes batches through it."""

    def __init__(self, cfg: CollectorConfig, client_id: str) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.conn: psycopg.Connection | None = None
        self._months: set[int] = set()

    def open(self) -> None:
        self.close()
        conn = connect(self.cfg, f"classroom-collector {self.client_id}")
        try:
            missing = migrate.pending(conn)
            if missing:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
                raise SchemaNotReady(f"the database lacks migration(s) {names}; next step: "
                                     "classroom-collector migrate --config FILE")
            conn.execute(_STAGE)
            self._months = partitions.existing(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    # -- writing -----------------------------------------------------------------------------

    def write(self, outcomes: Sequence[Outcome]) -> BatchResult:
        """Store a batch; returns what happened. Raises psycopg.OperationalError (and other
        non-data errors) with nothing committed."""
        if self.conn is None:
            self.open()
        now = datetime.now(UTC)
        outcomes = [self._check_time(o, now) for o in outcomes]
        return self._write(outcomes, now)

    def _write(self, outcomes: Sequence[Outcome], now: datetime) -> BatchResult:
        try:
            return self._transaction(outcomes, now)
        except (psycopg.DataError, psycopg.IntegrityError, *_OUR_BUGS) as exc:
            # One message the database refuses, or that our own code cannot handle (a shape
            # the schemas allow and we did not foresee): found by halving, quarantined, and
            # the collector goes on (a crash here would only bring the message back forever).
            if isinstance(exc, _OUR_BUGS):
                log.exception("storage: could not store a batch of %d; looking for the message "
                              "that causes it", len(outcomes))
            if len(outcomes) == 1:
                why = (f"refused by the database: {_diag(exc)}" if isinstance(exc, psycopg.Error)
                       else f"the collector could not store it: {type(exc).__name__}: "
                            f"{str(exc)[:200]}")
                return self._transaction([_as_rejected(outcomes[0], why)], now)
            half = len(outcomes) // 2
            first = self._write(outcomes[:half], now)
            first.add(self._write(outcomes[half:], now))
            return first

    def _check_time(self, o: Outcome, now: datetime) -> Outcome:
        """Metrics partitions for the record's month exist, or it is quarantined."""
        if not isinstance(o, Accepted) or o.kind != "metrics":
            return o
        idx = partitions.month_index(o.ts)
        if idx in self._months or idx < partitions.month_index(
                partitions.cutoff(now, self.cfg.metrics.retention_months)):
            return o
        if idx > partitions.month_index(now) + MAX_FUTURE_MONTHS:
            return _as_rejected(o, f"ts {o.ts.isoformat()} is more than {MAX_FUTURE_MONTHS} "
                                   "months ahead (the terminal's clock is wrong)")
        assert self.conn is not None
        partitions.ensure(self.conn, idx, idx)
        self._months = partitions.existing(self.conn)
        return o

    def _transaction(self, outcomes: Sequence[Outcome], now: datetime) -> BatchResult:
        conn = self.conn
        assert conn is not None
        res = BatchResult()
        seqd: list[Accepted] = []
        states: list[Accepted] = []
        inventories: list[Accepted | Cleared] = []
        lesson_events: list[Accepted] = []
        schedules: list[Accepted] = []
        rejected: list[Rejected] = []
        for o in outcomes:
            if o is None:
                res.ignored += 1
            elif isinstance(o, Rejected):
                rejected.append(o)
            elif isinstance(o, Cleared):
                res.cleared += 1
                if o.kind == "inventory":
                    inventories.append(o)
            elif o.seq is None:
                states.append(o)
            else:
                seqd.append(o)
                if o.kind == "inventory":
                    inventories.append(o)
                elif o.kind == "schedule":
                    schedules.append(o)
                elif o.kind == "event" and o.data.get("type") in lessons.LESSON_EVENTS:
                    lesson_events.append(o)
        with conn.transaction():
            if seqd:
                self._stage(conn, seqd)
                kinds = {o.kind for o in seqd}
                res.stored, res.expired = self._insert(conn, kinds, now)
                res.duplicates = len(seqd) - res.stored - res.expired
                res.by_kind.update(o.kind for o in seqd)
            touched = [(o.school, o.device) for o in (*states, *inventories)]
            if touched:
                terminals.lock(conn, touched)
            if states:
                terminals.apply_states(conn, states)
                res.states = len(states)
            if inventories:
                terminals.apply_inventories(
                    conn, sorted(inventories, key=lambda i: (i.school, i.device)))
            if schedules:
                lessons.apply_schedules(conn, schedules)
            if lesson_events:
                lessons.apply_events(conn, lesson_events)
            if rejected:
                self._quarantine(conn, rejected)
                res.quarantined = len(rejected)
        return res

    def _stage(self, conn: psycopg.Connection, records: Sequence[Accepted]) -> None:
        with conn.cursor() as cur, cur.copy(
                "COPY stage (school, device, seq, kind, ts, historical, received_epoch, data, "
                "etype, severity, message, period_start, period_end, window_start, window_end, "
                "connected) FROM STDIN") as copy:
            for r in records:
                etype = severity = message = start = end = connected = None
                window: tuple[Any, Any] = (None, None)
                if r.kind == "metrics":
                    connected = link_connected(r.data)
                elif r.kind == "event":
                    etype, severity, message = (r.data.get("type"), r.data.get("severity"),
                                                r.data.get("message"))
                elif r.kind == "usage":
                    period = r.data.get("period") or {}
                    start, end = period.get("start"), period.get("end")
                elif r.kind == "schedule":
                    window = lessons.schedule_window(r.data, r.ts)
                copy.write_row((r.school, r.device, r.seq, r.kind, r.ts, r.historical,
                                r.received_at, orjson.dumps(r.data).decode(), etype, severity,
                                message, start, end, *window, connected))

    def _insert(self, conn: psycopg.Connection, kinds: set[str], now: datetime
                ) -> tuple[int, int]:
        """Move the staged records into their tables: (new ones, expired metrics)."""
        stored = expired = 0
        cutoff = partitions.cutoff(now, self.cfg.metrics.retention_months)
        for kind in sorted(kinds):
            if kind == "metrics":
                table, cols, select = _TABLES[kind]
                cur = conn.execute(_insert_sql(table, cols, select,
                                               "s.kind = 'metrics' AND s.ts >= %(cutoff)s"),
                                   {"cutoff": cutoff})
                stored += max(cur.rowcount, 0)
                # Older than the retention: the seq counts (no false gap), the data is not kept.
                cur = conn.execute("INSERT INTO arrivals (school, device, seq, ts) "
                                   "SELECT school, device, seq, ts FROM stage "
                                   "WHERE kind = 'metrics' AND ts < %(cutoff)s",
                                   {"cutoff": cutoff})
                expired += max(cur.rowcount, 0)
                continue
            table, cols, select = _TABLES.get(kind, _OTHER)
            resets = (f"(type IN ({', '.join(repr(t) for t in _RESET_EVENTS)}))"
                      if kind == "event" else "false")
            cur = conn.execute(_insert_sql(table, cols, select, "s.kind = %(kind)s", resets),
                               {"kind": kind})
            stored += max(cur.rowcount, 0)
        return stored, expired

    def _quarantine(self, conn: psycopg.Connection, rejected: Sequence[Rejected]) -> None:
        cap = self.cfg.quarantine.max_payload_bytes
        with conn.cursor() as cur, cur.copy(
                "COPY quarantine (received_at, collector, topic, school, device, kind, reason, "
                "payload, payload_bytes) FROM STDIN") as copy:
            for r in rejected:
                copy.write_row((datetime.fromtimestamp(r.received_at, UTC), self.client_id,
                                r.topic, _printable(r.school), _printable(r.device),
                                _printable(r.kind), r.reason, r.payload[:cap], len(r.payload)))


def link_connected(data: dict[str, Any]) -> bool | None:
    """``agent.mqtt.connected`` of a metrics record (the broker link as the terminal saw it),
    the one figure the reports read from metrics: kept in ``metrics.connected`` so that a
    report never parses the documents. None when the record does not say."""
    agent = data.get("agent")
    mqtt = agent.get("mqtt") if isinstance(agent, dict) else None
    value = mqtt.get("connected") if isinstance(mqtt, dict) else None
    return value if isinstance(value, bool) else None


def _as_rejected(o: Outcome, reason: str) -> Rejected:
    if isinstance(o, Accepted):
        return Rejected(f"{o.school}/{o.device}/{o.kind}", o.school, o.device, o.kind, reason,
                        o.payload(), o.received_at)
    if isinstance(o, Cleared):
        return Rejected(f"{o.school}/{o.device}/{o.kind}", o.school, o.device, o.kind, reason,
                        b"", o.received_at)
    if isinstance(o, Rejected):
        return Rejected(o.topic, None, None, None, reason, o.payload, o.received_at)
    raise TypeError(f"cannot quarantine {o!r}")


def _diag(exc: psycopg.Error) -> str:
    primary = getattr(exc.diag, "message_primary", None) or str(exc).splitlines()[0]
    return primary[:300]


def _printable(text: str | None) -> str | None:
    if text is None:
        return None
    text = text[:128]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")

