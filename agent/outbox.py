"""The outbox: a durable, bounded, ordered queue of encoded records (SQLite in WAL mode).

A record counts as collected only once its transaction has committed (``synchronous=FULL``, so a
power cut cannot take it back); it leaves the outbox only when the broker has acknowledged it.
The sequence number is ours, not SQLite's rowid: it never goes back, even after the file is
quarantined, because a floor is kept in a side file a block ahead of the last number issued.

Bounds (count, bytes, age) drop the oldest records first and count what they dropped; that count
survives restarts and is published in ``metrics`` so the platform can tell a gap from a loss.
A corrupt file is moved aside (quarantined) and replaced, never a crash loop.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import OutboxConfig
from agent.records import Envelope, Record, event
from agent.statefile import atomic_write_text

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY,
    kind    TEXT    NOT NULL,
    ts      REAL    NOT NULL,
    payload BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SEQ_BLOCK = 10_000
#: How often appends check the age bound (outbox.max_age_s is at least 60 s).
_EXPIRE_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    kind: str
    ts: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_ts: float | None
    dropped_total: int
    last_seq: int
    quarantined_total: int
    in_memory: bool


class Outbox:
    """Thread-safe: collectors append, the publisher fetches and acknowledges."""

    def __init__(
        self,
        state_dir: Path,
        limits: OutboxConfig,
        envelope: Envelope,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_dir) / "outbox.db"
        self._floor_path = Path(state_dir) / "outbox.seq-floor"
        self.limits = limits
        self.envelope = envelope
        self._clock = clock
        self._lock = threading.Lock()
        self._pending_acks: list[int] = []
        self._quarantined = 0
        self._in_memory = False
        self._last_drop_log = -1e9
        self._last_expire = -1e9
        self._quarantine_event: Record | None = None
        self._db = self._open()

    # -- opening, quarantine -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect(str(self.path))
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                return self._fallback_in_memory(exc)
            self._quarantine(exc)
            try:
                db = self._connect(str(self.path))
            except sqlite3.DatabaseError as exc2:
                return self._fallback_in_memory(exc2)
        except OSError as exc:
            return self._fallback_in_memory(exc)
        return db

    def _connect(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            if not getattr(exc, "sqlite_errorcode", None):
                exc.sqlite_errorcode = 11  # type: ignore[attr-defined]  # failed quick_check
            raise
        self._load_counters(db)
        return db

    def _load_counters(self, db: sqlite3.Connection) -> None:
        count, size, top = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), MAX(seq) FROM records"
        ).fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._count, self._bytes = int(count), int(size)
        self._dropped = int(meta.get("dropped_total", 0))
        floor = self._read_floor()
        known = max(int(top or 0), int(meta.get("last_seq", 0)))
        # A database that knows no sequence is new: continue above the floor (after quarantine
        # or loss of the file) so that no number is ever issued twice.
        self._last_seq = known or floor
        self._floor = floor

    def _read_floor(self) -> int:
        try:
            return int(self._floor_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("outbox: cannot read %s (%s); sequence continues from the database",
                        self._floor_path, exc)
            return 0

    def _raise_floor(self, seq: int) -> None:
        """Keep a floor a block ahead of ``seq`` so a new file after quarantine never reuses it."""
        if seq < self._floor:
            return
        floor = seq + _SEQ_BLOCK
        try:
            atomic_write_text(self._floor_path, f"{floor}\n")
            self._floor = floor
        except OSError as exc:
            log.warning("outbox: cannot write sequence floor %s: %s", self._floor_path, exc)

    def _quarantine(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        moved = []
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                dst = src.with_name(f"outbox.corrupt-{stamp}.db{suffix}")
                os.replace(src, dst)
                moved.append(str(dst))
        self._quarantined += 1
        log.error("outbox: %s is corrupt (%s); moved to %s and started a new one. "
                  "Next step: keep the quarantined file for analysis, check the disk (dmesg, "
                  "smartctl).", self.path, exc, ", ".join(moved) or "nowhere")
        self._quarantine_event = event(
            "outbox_corrupted", "error",
            f"outbox database was corrupt and has been quarantined: {exc}",
            quarantined=moved,
        )

    def _fallback_in_memory(self, exc: Exception) -> sqlite3.Connection:
        log.error("outbox: cannot use %s (%s); keeping records in memory until restart. "
                  "Next step: check that the state directory exists, is writable and has space.",
                  self.path, exc)
        self._in_memory = True
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        self._load_counters(db)
        self._quarantine_event = event(
            "outbox_unavailable", "error", f"outbox file unusable, records kept in memory: {exc}",
            path=str(self.path),
        )
        return db

    def take_startup_event(self) -> Record | None:
        """The event explaining a quarantine or fallback at open, once."""
        ev, self._quarantine_event = self._quarantine_event, None
        return ev

    # -- writing -------------------------------------------------------------------------------

    def append(self, records: Iterable[Record]) -> list[int]:
        """Commit ``records`` (one transaction, in order) and return their sequence numbers."""
        records = list(records)
        if not records:
            return []
        with self._lock:
            try:
                return self._append_locked(records)
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                    raise
                self._db.close()
                self._db = self._open_after_corruption(exc)
                return self._append_locked(records)

    def _open_after_corruption(self, exc: Exception) -> sqlite3.Connection:
        self._quarantine(exc)
        try:
            return self._connect(str(self.path))
        except sqlite3.DatabaseError as exc2:
            return self._fallback_in_memory(exc2)

    def _append_locked(self, records: Sequence[Record]) -> list[int]:
        db = self._db
        seqs: list[int] = []
        rows = []
        seq = self._last_seq
        added = 0
        for rec in records:
            seq += 1
            payload = self.envelope.encode(rec, seq)
            rows.append((seq, rec.kind, rec.ts, payload))
            seqs.append(seq)
            added += len(payload)
        dropped_before = self._dropped
        count, size = self._count + len(rows), self._bytes + added
        # The age bound is checked on appends (the broker may be down for days: nothing else
        # runs then), at most every _EXPIRE_EVERY_S, so a full scan never rides on each tick.
        expire_due = time.monotonic() - self._last_expire >= _EXPIRE_EVERY_S
        # Acknowledged rows awaiting deletion were delivered: at a bound they go first,
        # uncounted, or a bound reached right after a reconnection would count them as lost.
        take_acks = bool(self._pending_acks) and (self._over_bounds(count, size) or expire_due)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO records(seq, kind, ts, payload) VALUES (?,?,?,?)", rows)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?)", (seq,))
            if take_acks:
                n, freed = self._delete_locked(self._pending_acks)
                count, size = count - n, size - freed
            n, freed = self._enforce_bounds_locked(count, size)
            count, size = count - n, size - freed
            if expire_due:
                n, freed = self._expire_locked()
                count, size = count - n, size - freed
            db.execute("COMMIT")
        except BaseException:
            self._rollback_locked(dropped_before)
            raise
        if take_acks:
            self._pending_acks = []
        if expire_due:
            self._last_expire = time.monotonic()
        self._last_seq = seq
        self._count, self._bytes = count, size
        self._raise_floor(seq)
        return seqs

    def _over_bounds(self, count: int, size: int) -> bool:
        return count > self.limits.max_records or size > self.limits.max_bytes

    def _delete_locked(self, seqs: list[int]) -> tuple[int, int]:
        """Within the open transaction, delete delivered rows: (rows deleted, their bytes)."""
        lengths = self._db.execute(
            "DELETE FROM records WHERE seq IN (SELECT value FROM json_each(?)) "
            "RETURNING length(payload)",
            (json.dumps(seqs),),
        ).fetchall()
        return len(lengths), sum(n for (n,) in lengths)

    def _enforce_bounds_locked(self, count: int, size: int) -> tuple[int, int]:
        """Within the open transaction, drop the oldest rows until under the count/byte bounds."""
        over_n = count - self.limits.max_records
        if not self._over_bounds(count, size):
            return 0, 0
        n = 0
        freed = 0
        cur = self._db.execute("SELECT seq, length(payload) FROM records ORDER BY seq")
        last = None
        for seq, length in cur:
            if n >= over_n and size - freed <= self.limits.max_bytes:
                break
            n += 1
            freed += length
            last = seq
        cur.close()
        if last is not None:
            self._db.execute("DELETE FROM records WHERE seq <= ?", (last,))
            self._count_dropped_locked(n)
            now = time.monotonic()
            if now - self._last_drop_log >= 60:
                self._last_drop_log = now
                log.warning("outbox: bound reached (%d records / %d bytes max); dropping the "
                            "oldest, %d dropped so far. Next step: check why the broker is "
                            "unreachable (classroom-agent status).", self.limits.max_records,
                            self.limits.max_bytes, self._dropped)
        return n, freed

    def _rollback_locked(self, dropped_before: int) -> None:
        """Undo a failed transaction (disk full, I/O error), its drop count included: the rows it
        would have dropped are still there. SQLite may have rolled back already."""
        self._dropped = dropped_before
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            log.debug("outbox: rollback: %s", exc)

    def _count_dropped_locked(self, n: int) -> None:
        self._dropped += n
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_total', ?)",
                         (self._dropped,))

    def expire(self) -> int:
        """Drop the records observed more than ``max_age_s`` ago now; returns how many.
        (Appends do this by themselves every ``_EXPIRE_EVERY_S``.)"""
        with self._lock:
            dropped_before = self._dropped
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n, freed = self._expire_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback_locked(dropped_before)
                raise
            self._count -= n
            self._bytes -= freed
            self._last_expire = time.monotonic()
        return n

    def _expire_locked(self) -> tuple[int, int]:
        """Within the open transaction, drop the oldest records while their observation time is
        older than ``max_age_s``; counted as dropped like the other bounds."""
        cutoff = self._clock() - self.limits.max_age_s
        n = freed = 0
        last = None
        cur = self._db.execute("SELECT seq, ts, length(payload) FROM records ORDER BY seq")
        for seq, ts, length in cur:
            if ts >= cutoff:
                break
            n += 1
            freed += length
            last = seq
        cur.close()
        if last is None:
            return 0, 0
        self._db.execute("DELETE FROM records WHERE seq <= ?", (last,))
        self._count_dropped_locked(n)
        now = time.monotonic()
        if now - self._last_drop_log >= 60:
            self._last_drop_log = now
            log.warning("outbox: dropped %d records observed more than %.0f s ago "
                        "(outbox.max_age_s), %d dropped so far. Next step: check why the broker "
                        "is unreachable (classroom-agent status).", n, self.limits.max_age_s,
                        self._dropped)
        return n, freed

    # -- reading, acknowledging ----------------------------------------------------------------

    def fetch_after(self, seq: int, limit: int) -> list[Row]:
        """Up to ``limit`` records with a sequence number above ``seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, ts, payload FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [Row(s, k, t, bytes(p)) for s, k, t, p in rows]

    def ack(self, seqs: Iterable[int]) -> None:
        """Mark records delivered; they are deleted at the next :meth:`flush_acks`."""
        with self._lock:
            self._pending_acks.extend(seqs)

    @property
    def pending_acks(self) -> int:
        return len(self._pending_acks)

    def flush_acks(self) -> int:
        """Delete acknowledged records in one transaction. Losing this (a crash) only duplicates."""
        with self._lock:
            if not self._pending_acks:
                return 0
            seqs, self._pending_acks = self._pending_acks, []
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                n, freed = self._delete_locked(seqs)
                db.execute("COMMIT")
            except BaseException:
                self._rollback_locked(self._dropped)
                self._pending_acks[:0] = seqs
                raise
            self._count -= n
            self._bytes -= freed
            return n

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = self._db.execute(
                "SELECT ts FROM records ORDER BY seq LIMIT 1"
            ).fetchone()
            return OutboxStats(
                depth=self._count - len(self._pending_acks),  # acknowledged = delivered
                bytes=self._bytes,
                oldest_ts=oldest[0] if oldest else None,
                dropped_total=self._dropped,
                last_seq=self._last_seq,
                quarantined_total=self._quarantined,
                in_memory=self._in_memory,
            )

    def close(self) -> None:
        try:
            self.flush_acks()
        except sqlite3.Error as exc:
            log.warning("outbox: could not record the last acknowledgements: %s", exc)
        with self._lock:
            self._db.close()
