"""The upload queue, on disk: which lessons wait, which objects and parts the store already has.

SQLite in WAL mode with ``synchronous=FULL`` in the state directory (``uploads.db``), like the
outbox: a lesson is queued in one transaction with all its objects; an upload id is committed the
moment the store hands it out, each part the moment the store acknowledges it. After a kill or a
power cut the uploader therefore knows every multipart upload it started (it resumes them with
ListParts; the store, not this file, is the truth about parts) and never sends a part again that
the store has. An upload id the store handed out but that never reached this file is found by
ListMultipartUploads and aborted (``known_upload_ids``).

Lesson states: ``queued`` (waiting or in progress), ``verified`` (every object in the store and
checked: local retention may delete it), ``failed`` (a cause retrying cannot fix, e.g. the file
no longer matches its evidence; ``upload_retry`` queues it again), ``lost`` (deleted locally
before it was uploaded).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lessons (
    lesson_id   TEXT PRIMARY KEY,
    dir         TEXT NOT NULL,
    state       TEXT NOT NULL,
    queued_at   REAL NOT NULL,
    done_at     REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    cause       TEXT,
    error       TEXT,
    evidence    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    lesson_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    duration_s  REAL,
    upload_id   TEXT,
    etag        TEXT,
    verified    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lesson_id, seq)
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id   TEXT NOT NULL,
    number      INTEGER NOT NULL,
    etag        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    PRIMARY KEY (upload_id, number)
);
"""
STATES = ("queued", "verified", "failed", "lost")


@dataclass(frozen=True)
class Segment:
    """One recording segment as the lesson's evidence lists it."""

    path: str
    bytes: int
    sha256: str
    duration_s: float | None


@dataclass(frozen=True)
class Obj:
    lesson_id: str
    seq: int
    key: str
    path: str
    bytes: int
    sha256: str
    duration_s: float | None
    upload_id: str | None
    etag: str | None
    verified: bool


@dataclass(frozen=True)
class Lesson:
    lesson_id: str
    dir: str
    state: str
    queued_at: float
    done_at: float | None
    attempts: int
    cause: str | None
    error: str | None
    evidence: dict


class Journal:
    """Thread-safe; one connection guarded by a lock (the uploader writes, status reads)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- queueing -------------------------------------------------------------------------------

    def add(self, lesson_id: str, folder: str, objects: list[tuple[str, Segment]],
            evidence: dict, now: float | None = None) -> bool:
        """Queue a lesson with its objects (key, segment) in one transaction; False if known."""
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM lessons WHERE lesson_id=?",
                                (lesson_id,)).fetchone():
                return False
            self._db.execute(
                "INSERT INTO lessons (lesson_id, dir, state, queued_at, evidence) "
                "VALUES (?, ?, 'queued', ?, ?)",
                (lesson_id, folder, time.time() if now is None else now,
                 json.dumps(evidence, ensure_ascii=False, sort_keys=True)))
            self._db.executemany(
                "INSERT INTO objects (lesson_id, seq, key, path, bytes, sha256, duration_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(lesson_id, i, key, s.path, s.bytes, s.sha256, s.duration_s)
                 for i, (key, s) in enumerate(objects)])
            return True

    def add_object(self, lesson_id: str, key: str, seg: Segment) -> Obj:
        """Append an object (the playlist, made once the segments are in the store)."""
        with self._lock, self._tx():
            row = self._db.execute("SELECT seq FROM objects WHERE lesson_id=? AND key=?",
                                   (lesson_id, key)).fetchone()
            if row is None:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM objects "
                                       "WHERE lesson_id=?", (lesson_id,)).fetchone()[0]
                self._db.execute(
                    "INSERT INTO objects (lesson_id, seq, key, path, bytes, sha256, duration_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (lesson_id, seq, key, seg.path, seg.bytes, seg.sha256, seg.duration_s))
        return next(o for o in self.objects(lesson_id) if o.key == key)

    # -- reading --------------------------------------------------------------------------------

    def lesson(self, lesson_id: str) -> Lesson | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_LESSON_COLS} FROM lessons WHERE lesson_id=?",
                                   (lesson_id,)).fetchone()
        return _lesson(row) if row else None

    def lessons(self, states: Iterable[str] = STATES, limit: int = 1000) -> list[Lesson]:
        wanted = tuple(states)
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_LESSON_COLS} FROM lessons WHERE state IN ({marks}) "
                "ORDER BY queued_at, lesson_id LIMIT ?", (*wanted, limit)).fetchall()
        return [_lesson(r) for r in rows]

    def objects(self, lesson_id: str) -> list[Obj]:
        with self._lock:
            rows = self._db.execute(
                "SELECT lesson_id, seq, key, path, bytes, sha256, duration_s, upload_id, etag, "
                "verified FROM objects WHERE lesson_id=? ORDER BY seq", (lesson_id,)).fetchall()
        return [Obj(*r[:9], bool(r[9])) for r in rows]

    def parts(self, upload_id: str) -> dict[int, tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT number, etag, bytes FROM parts WHERE upload_id=?",
                                    (upload_id,)).fetchall()
        return {n: (e, b) for n, e, b in rows}

    def known_upload_ids(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT upload_id FROM objects WHERE upload_id IS NOT NULL"
                                    ).fetchall()
        return {r[0] for r in rows}

    def totals(self) -> dict[str, dict[str, int]]:
        """Per state: lessons and bytes (of their objects)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT l.state, COUNT(DISTINCT l.lesson_id), COALESCE(SUM(o.bytes), 0) "
                "FROM lessons l LEFT JOIN objects o ON o.lesson_id = l.lesson_id "
                "GROUP BY l.state").fetchall()
            pending = self._db.execute(
                "SELECT COALESCE(SUM(o.bytes), 0) FROM objects o JOIN lessons l "
                "ON o.lesson_id = l.lesson_id WHERE l.state='queued' AND o.verified=0"
            ).fetchone()[0]
        out = {s: {"lessons": 0, "bytes": 0} for s in STATES}
        for state, n, size in rows:
            out[state] = {"lessons": int(n), "bytes": int(size)}
        out["queued"]["bytes_left"] = int(pending)
        return out

    # -- progress -------------------------------------------------------------------------------

    def set_upload_id(self, lesson_id: str, seq: int, upload_id: str | None) -> None:
        with self._lock, self._tx():
            old = self._db.execute("SELECT upload_id FROM objects WHERE lesson_id=? AND seq=?",
                                   (lesson_id, seq)).fetchone()
            if old and old[0]:
                self._db.execute("DELETE FROM parts WHERE upload_id=?", (old[0],))
            self._db.execute("UPDATE objects SET upload_id=? WHERE lesson_id=? AND seq=?",
                             (upload_id, lesson_id, seq))

    def part_done(self, upload_id: str, number: int, etag: str, size: int) -> None:
        with self._lock, self._tx():
            self._db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)",
                             (upload_id, number, etag, size))

    def object_verified(self, lesson_id: str, seq: int, etag: str) -> None:
        with self._lock, self._tx():
            row = self._db.execute("SELECT upload_id FROM objects WHERE lesson_id=? AND seq=?",
                                   (lesson_id, seq)).fetchone()
            if row and row[0]:
                self._db.execute("DELETE FROM parts WHERE upload_id=?", (row[0],))
            self._db.execute("UPDATE objects SET verified=1, etag=?, upload_id=NULL "
                             "WHERE lesson_id=? AND seq=?", (etag, lesson_id, seq))

    def set_state(self, lesson_id: str, state: str, cause: str | None = None,
                  error: str | None = None, now: float | None = None) -> None:
        assert state in STATES
        done = (time.time() if now is None else now) if state != "queued" else None
        with self._lock, self._tx():
            self._db.execute("UPDATE lessons SET state=?, cause=?, error=?, done_at=? "
                             "WHERE lesson_id=?", (state, cause, error, done, lesson_id))

    def note_attempt(self, lesson_id: str, cause: str | None, error: str | None) -> None:
        with self._lock, self._tx():
            self._db.execute("UPDATE lessons SET attempts=attempts+1, cause=?, error=? "
                             "WHERE lesson_id=?", (cause, error, lesson_id))

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_a: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


_LESSON_COLS = "lesson_id, dir, state, queued_at, done_at, attempts, cause, error, evidence"


def _lesson(row: tuple) -> Lesson:
    try:
        evidence = json.loads(row[8])
    except ValueError:
        evidence = {}
    return Lesson(*row[:8], evidence if isinstance(evidence, dict) else {})
