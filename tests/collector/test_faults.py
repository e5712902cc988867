"""Faults with real parts: a collector SIGKILLed mid-ingest, two collectors on one shared
subscription, migrations run twice and at once, a database not yet migrated."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import psycopg
import pytest

from collector import migrate
from tests.collector.ingest_support import Fleet
from tests.platform_support import CollectorProcess, PostgresServer, swept
from tests.support import Broker, wait_until

pytestmark = pytest.mark.slow


def _count(db: psycopg.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM metrics").fetchone()[0])


def _assert_each_once(db: psycopg.Connection, fleet: Fleet) -> None:
    dup = db.execute("""SELECT count(*) FROM (SELECT 1 FROM metrics
                        GROUP BY school, device, seq HAVING count(*) > 1) d""").fetchone()[0]
    assert dup == 0, f"{dup} records stored twice"
    assert _count(db) == fleet.expected()
    wait_until(lambda: swept(db), 30, "the gap tracker to catch up")
    per = dict(db.execute("SELECT device, max_seq FROM terminals").fetchall())
    assert per == {d: s - 1 for d, s in fleet.next_seq.items()}
    assert db.execute("SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL").fetchone()[0] == 0


def _waiting_on_a_lock(db: psycopg.Connection) -> bool:
    return bool(db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
                           "'relation' AND datname = current_database()").fetchone()[0])


def test_collector_killed_mid_ingest_loses_nothing(
        broker: Broker, collector_factory: Callable[..., CollectorProcess],
        database: str, db: psycopg.Connection) -> None:
    collector = collector_factory(ingest={"batch_max": 50}).start()
    fleet = Fleet(broker.port, devices=20)
    try:
        fleet.publish(per_device=30)  # 600 records queued at the broker for the collector
        wait_until(lambda: _count(db) >= 200, 60, "ingest under way")
        # The table held: the next 600 cannot be committed, so the kill falls mid-ingest with a
        # batch waiting in its INSERT, however fast the collector runs beside this test.
        with psycopg.connect(database) as holder:
            holder.execute("LOCK TABLE metrics IN SHARE MODE")
            fleet.publish(per_device=30)
            wait_until(lambda: _waiting_on_a_lock(db), 60, "a batch waiting on the table")
            collector.kill()  # SIGKILL: batches in flight are neither committed nor acknowledged
            killed_at = _count(db)
        assert killed_at < fleet.expected(), "the kill came too late to prove anything"
        fleet.publish(per_device=20)  # more while it is down: queued for its session
        collector.start()  # same client id: the broker resends what was not acknowledged
        wait_until(lambda: _count(db) >= fleet.expected(), 90, "every record stored")
        _assert_each_once(db, fleet)
    finally:
        fleet.close()


def test_two_collectors_share_one_subscription_and_store_everything_once(
        broker: Broker, collector_factory: Callable[..., CollectorProcess],
        db: psycopg.Connection) -> None:
    first = collector_factory().start()
    second = collector_factory().start()
    fleet = Fleet(broker.port, devices=10)
    try:
        fleet.publish(per_device=100)
        wait_until(lambda: _count(db) >= fleet.expected(), 90, "every record stored")
        _assert_each_once(db, fleet)
        wait_until(lambda: sum(_stored(db, c) for c in (first, second)) == fleet.expected(), 30,
                   "both heartbeats to count every record")
        shares = [_stored(db, c) for c in (first, second)]
        assert min(shares) > 0, f"one collector took everything: {shares}"
        status = first.cli("status", "--config", str(first.config_path), "--json")
        snap = json.loads(status.stdout)
        assert status.returncode == 0, status.stdout + status.stderr
        assert len(snap["instances"]) == 2 and snap["open_gaps"] == 0
        text = first.cli("status", "--config", str(first.config_path))
        assert text.returncode == 0 and "No warnings." in text.stdout
        for c in (first, second):
            assert f"Instance    {c.config['mqtt']['client_id']} " in text.stdout
    finally:
        fleet.close()


def _stored(db: psycopg.Connection, c: CollectorProcess) -> int:
    row = db.execute("SELECT stats -> 'ingest' ->> 'stored' FROM collector_instances "
                     "WHERE client_id = %s", (c.config["mqtt"]["client_id"],)).fetchone()
    return int(row[0]) if row else 0


def test_migrations_are_idempotent_and_safe_to_run_at_once(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrate_race")
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                applied.append([m.version for m in migrate.migrate(conn)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    versions = [m.version for m in migrate.available()]
    assert sorted(applied) == [[], [], versions], "each version applied exactly once"
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate.migrate(conn) == []
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == versions


def test_run_refuses_an_unmigrated_database_and_migrate_fixes_it(
        tmp_path: object, broker: Broker, postgres: PostgresServer) -> None:
    from pathlib import Path

    url = postgres.create_database("unmigrated")
    c = CollectorProcess(Path(str(tmp_path)) / "c", broker.port, url)
    res = c.cli("run", "--config", str(c.config_path), timeout=60)
    assert res.returncode == 1
    assert "lacks migration(s) 0001_initial" in res.stderr
    assert "classroom-collector migrate" in res.stderr
    first = c.cli("migrate", "--config", str(c.config_path))
    assert first.returncode == 0 and "applied: 0001_initial" in first.stdout
    again = c.cli("migrate", "--config", str(c.config_path))
    assert again.returncode == 0 and "up to date" in again.stdout
