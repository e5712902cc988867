"""The whole chain with real parts: the agent -> Mosquitto -> the collector -> PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from tests.collector.ingest_support import payload
from tests.platform_support import CollectorProcess, stored_seqs, swept
from tests.support import AgentProcess, Broker, MqttClient, wait_until


def test_agent_records_arrive_once_each_with_state_inventory_and_lesson(
        agent_factory: Callable[..., AgentProcess],
        collector_factory: Callable[..., CollectorProcess], db: psycopg.Connection) -> None:
    collector = collector_factory().start()
    agent = agent_factory().start()
    wait_until(lambda: len(stored_seqs(db, "school-a", "room-101")) >= 8, 30,
               "the first records in PostgreSQL")
    cfg = str(agent.config_path)
    assert agent.cli("lesson", "start", "--config", cfg, "--course", "数学", "--teacher",
                     "李明", "--role", "lecturing").returncode == 0
    assert agent.cli("lesson", "stop", "--config", cfg).returncode == 0
    assert agent.stop() == 0
    last = _last_seq(agent)
    wait_until(lambda: stored_seqs(db, "school-a", "room-101")[-1:] == [last], 30,
               f"seq {last} stored")
    wait_until(lambda: swept(db), 10, "the gap tracker")
    seqs = stored_seqs(db, "school-a", "room-101")
    assert seqs == list(range(1, last + 1)), "every seq exactly once"
    term = _row(db, "SELECT max_seq, records_total, status, status_reason, inventory IS NOT NULL,"
                    " agent_version FROM terminals")
    assert term[:5] == (last, last, "offline", "shutdown", True)
    assert db.execute("SELECT count(*) FROM seq_gaps").fetchone()[0] == 0
    states = db.execute("SELECT status, reason FROM terminal_states ORDER BY received_at"
                        ).fetchall()
    assert states[0] == ("online", "connected") and states[-1] == ("offline", "shutdown")
    lesson = _row(db, "SELECT course, teacher, role, trigger, ended_by, started_seq IS NOT NULL,"
                      " ended_seq IS NOT NULL, root_lesson_id = lesson_id FROM lessons")
    assert lesson == ("数学", "李明", "lecturing", "manual", "manual", True, True, True)
    kinds = dict(db.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    assert kinds["agent_started"] == 1 and kinds["lesson_ended"] == 1
    assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    assert collector.stop() == 0
    assert "collector stopped" in collector.log_text()


def _last_seq(agent: AgentProcess) -> int:
    """The agent's last committed seq, from its outbox's floor-independent record: the
    collector must hold every seq up to it."""
    import sqlite3

    db = sqlite3.connect(agent.workdir / "state" / "outbox.db")
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
    finally:
        db.close()


def _row(db: psycopg.Connection, sql: str) -> Any:
    rows = db.execute(sql).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def test_retained_state_of_terminals_known_before_the_collector_is_read_at_start(
        broker: Broker, collector_factory: Callable[..., CollectorProcess],
        db: psycopg.Connection) -> None:
    """A shared subscription never gets retained messages: a collector installed after the
    terminals reads their retained state and inventory once, at start."""
    client = MqttClient(broker.port)
    try:
        online = payload("state", None, {"status": "online", "session": 3,
                                         "reason": "connected", "agent_version": "0.1.0",
                                         "started_at": "2026-11-30T07:00:00.000Z"},
                         school="school-z", device="room-9")
        client.client.publish("classroom/v1/school-z/room-9/state", online, qos=1,
                              retain=True).wait_for_publish(10)
    finally:
        client.close()
    collector = collector_factory().start()
    wait_until(lambda: db.execute("SELECT status FROM terminals WHERE device = 'room-9'"
                                  ).fetchall() == [("online",)], 30, "the retained state")
    wait_until(lambda: "read 1 retained" in collector.log_text(), 30, "the catch-up to end")
