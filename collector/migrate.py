"""Versioned SQL migrations (``classroom-collector migrate``).

Each ``collector/migrations/NNNN_name.sql`` is applied once, in order, and recorded in
``schema_migrations``. Everything runs in one transaction under an advisory lock, so two
instances starting at the same moment apply each version once (the second waits, then finds
nothing to do) and a failure leaves the database as it was.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key: "classroom-collector migrate" (any constant; ours alone).
MIGRATE_LOCK = 0x636C6D67
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("collector.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply what is missing; returns what was applied (empty when up to date)."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                            version integer PRIMARY KEY,
                            name text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now())""")
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for mig in available():
            if mig.version in applied:
                continue
            log.info("migrate: applying %04d_%s", mig.version, mig.name)
            conn.execute(mig.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (mig.version, mig.name))
            done.append(mig)
    return done


def pending(conn: psycopg.Connection) -> list[Migration]:
    """Migrations not yet applied (the collector refuses to run until there are none)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    applied: set[int] = set()
    if exists and exists[0] is not None:
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [mig for mig in available() if mig.version not in applied]
