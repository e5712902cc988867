"""Monthly partitions of ``metrics``: created ahead, dropped after the retention.

A partition covers one calendar month (UTC) of the observation time ``ts`` and is named
``metrics_yYYYYmMM``. :func:`ensure` creates the months from the retention cutoff to
``months_ahead`` after now; :func:`drop_expired` drops the months wholly older than the cutoff.
DDL runs in its own short transaction under an advisory lock, never inside an ingest batch.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import psycopg

log = logging.getLogger(__name__)

PARTITION_LOCK = 0x636C7074
_NAME = re.compile(r"^metrics_y(\d{4})m(\d{2})$")


def month_start(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def month_index(ts: datetime) -> int:
    """Months since year 0: consecutive months differ by one."""
    return ts.year * 12 + ts.month - 1


def _from_index(idx: int) -> datetime:
    return month_start(idx // 12, idx % 12 + 1)


def cutoff(now: datetime, retention_months: int) -> datetime:
    """The oldest instant metrics are kept for: the first day of the month ``retention_months``
    before this one (so the current month plus ``retention_months`` whole months are kept)."""
    return _from_index(month_index(now) - retention_months)


def existing(conn: psycopg.Connection) -> set[int]:
    rows = conn.execute("""SELECT c.relname FROM pg_inherits i
                           JOIN pg_class c ON c.oid = i.inhrelid
                           JOIN pg_class p ON p.oid = i.inhparent
                           WHERE p.relname = 'metrics'""").fetchall()
    out = set()
    for (name,) in rows:
        m = _NAME.match(name)
        if m:
            out.add(int(m.group(1)) * 12 + int(m.group(2)) - 1)
    return out


def ensure(conn: psycopg.Connection, first: int, last: int) -> list[str]:
    """Create the partitions of month indexes ``first`` .. ``last`` that are missing."""
    made = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        have = existing(conn)
        for idx in range(first, last + 1):
            if idx in have:
                continue
            lo, hi = _from_index(idx), _from_index(idx + 1)
            name = f"metrics_y{lo.year:04d}m{lo.month:02d}"
            conn.execute(f"CREATE TABLE {name} PARTITION OF metrics "  # name from integers
                         f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")
            made.append(name)
    if made:
        log.info("partitions: created %s", ", ".join(made))
    return made


def drop_expired(conn: psycopg.Connection, now: datetime, retention_months: int) -> list[str]:
    """Drop the partitions wholly older than the retention cutoff."""
    limit = month_index(cutoff(now, retention_months))
    dropped = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for idx in sorted(existing(conn)):
            if idx < limit:
                lo = _from_index(idx)
                name = f"metrics_y{lo.year:04d}m{lo.month:02d}"
                conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
    if dropped:
        log.info("partitions: dropped %s (older than %d months)", ", ".join(dropped),
                 retention_months)
    return dropped
