"""The ingest path on a real PostgreSQL: idempotence, gap tracking, quarantine, terminal state
and inventory. Messages are the agent's own encoding; only the broker is left out (the round
trip and fault tests have it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from agent.telemetry.inventory import collect_inventory
from collector import partitions
from tests.collector.ingest_support import (
    Ingest,
    agent_section,
    batch,
    event,
    metrics,
    msg,
    payload,
    started,
    state,
)
from tests.platform_support import PostgresServer, stored_seqs


@pytest.fixture
def ingest(database: str) -> Iterator[Ingest]:
    i = Ingest(database)
    yield i
    i.close()


def test_duplicates_and_replays_change_nothing(ingest: Ingest) -> None:
    first = ingest.write(*(metrics(s) for s in range(1, 6)))
    assert (first.stored, first.duplicates) == (5, 0)
    # The same batch again (a replay after a restart), with a QoS 1 duplicate inside it.
    again = ingest.write(*(metrics(s) for s in (1, 2, 3, 3, 4, 5)))
    assert (again.stored, again.duplicates) == (0, 6)
    assert stored_seqs(ingest.conn, "school-a", "room-101") == [1, 2, 3, 4, 5]
    ingest.sweep()
    assert ingest.one("SELECT max_seq, records_total FROM terminals") == (5, 5)
    assert ingest.gaps() == []


def test_late_records_shrink_split_and_close_a_gap(ingest: Ingest) -> None:
    ingest.write(metrics(1), metrics(2), metrics(10))
    assert ingest.sweep().opened == 1
    assert ingest.gaps() == [(3, 9, False, False)]
    opened_at = ingest.one("SELECT opened_at FROM seq_gaps")
    ingest.write(metrics(6), metrics(3))  # a backlog arriving late and out of order
    res = ingest.sweep()
    assert res.filled == 2
    assert ingest.gaps() == [(4, 5, False, False), (7, 9, False, False)]
    assert ingest.one("SELECT count(DISTINCT opened_at) FROM seq_gaps") == 1
    assert ingest.conn.execute("SELECT opened_at FROM seq_gaps").fetchone()[0] == opened_at
    ingest.write(*(metrics(s) for s in (9, 8, 7, 5, 4)))
    ingest.sweep()
    assert ingest.gaps() == []
    assert ingest.one("SELECT count(*) FROM seq_gaps WHERE closed_at IS NOT NULL") == 2
    assert ingest.one("SELECT max_seq, records_total FROM terminals") == (10, 10)


def test_first_record_of_a_terminal_opens_the_gap_below_it(ingest: Ingest) -> None:
    ingest.write(metrics(4))
    ingest.sweep()
    assert ingest.gaps() == [(1, 3, False, False)]
    ingest.write(metrics(1), metrics(2), metrics(3))
    ingest.sweep()
    assert ingest.gaps() == []


def test_gap_open_past_the_timeout_is_reported_lost_and_still_fillable(ingest: Ingest) -> None:
    ingest.write(metrics(1), metrics(3))
    ingest.sweep(lost_after_s=3600)
    assert ingest.gaps() == [(2, 2, False, False)]
    time.sleep(0.05)
    res = ingest.sweep(lost_after_s=0.01)
    assert res.lost == [("school-a", "room-101", 2, 2)]
    assert ingest.gaps() == [(2, 2, True, False)]
    assert ingest.sweep(lost_after_s=0.01).lost == [], "reported once"
    ingest.write(metrics(2))  # it came after all
    ingest.sweep()
    assert ingest.gaps() == []


def test_outbox_quarantine_explains_the_jump_in_numbering(ingest: Ingest) -> None:
    ingest.write(metrics(1), metrics(2))
    # The agent quarantined its outbox: records 3..5 died with it, and the new file numbers from
    # the floor (a block above): its first record is the outbox_corrupted event.
    ingest.write(event(10_006, "outbox_corrupted", {"quarantined": ["/x"]}), metrics(10_007))
    ingest.sweep()
    assert ingest.gaps() == [(3, 10_005, False, True)]
    time.sleep(0.05)
    assert ingest.sweep(lost_after_s=0.01).lost == [], "explained, not a silent loss"


def test_bad_messages_are_quarantined_with_their_reason_and_the_rest_stored(
        ingest: Ingest) -> None:
    good = metrics(1)
    wrong_schema = msg("metrics", payload("metrics", 2, {"cpu": "hot"}))
    mismatch = msg("metrics", payload("metrics", 3, {}, device="room-102"))
    bad_json = msg("metrics", b'{"v": 1, "seq": NaN}')
    nul = msg("event", payload("event", 4, {"type": "agent_started", "severity": "info",
                                             "message": "a\u0000b"}))
    unknown = msg("video", b"{}")
    huge = msg("metrics", b"x" * (ingest.cfg.ingest.max_payload_bytes + 1))
    bad_topic = msg("metrics", b"{}", topic="classroom/v1/only-two")
    command = msg("x", b'{"id": "c1"}', topic="classroom/v1/school-a/room-101/cmd/report_now")
    reply = msg("x", b"not even json", topic="classroom/v1/school-a/room-101/reply")
    res = ingest.write(good, wrong_schema, mismatch, bad_json, nul, unknown, huge, bad_topic,
                       command, reply)
    assert (res.stored, res.quarantined, res.ignored) == (1, 7, 2)
    reasons = [r[0] for r in ingest.conn.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[0].startswith("metrics.json: at data/cpu:")
    assert reasons[1].startswith("topic/payload mismatch: the topic names school-a/room-101/"
                                 "metrics, the payload school-a/room-102/metrics")
    assert reasons[2].startswith("not UTF-8 JSON")
    assert "\\u0000" in reasons[3]
    assert reasons[4].startswith("unknown kind 'video'")
    assert "over ingest.max_payload_bytes" in reasons[5]
    assert reasons[6].startswith("topic is not classroom/v1/{school}/{device}/{kind}")
    cap = ingest.cfg.quarantine.max_payload_bytes
    assert ingest.one("SELECT length(payload), payload_bytes FROM quarantine WHERE reason LIKE "
                      "'%%max_payload_bytes%%'") == (cap, cap * 16 + 1)


def test_a_batch_is_stored_record_by_record_and_a_bad_record_spoils_only_itself(
        ingest: Ingest) -> None:
    """Each record of a batch is checked as if it had come alone: the bad ones are quarantined
    with their place in the batch and their own bytes, the others stored; a replay of the batch
    changes nothing."""
    raws = [payload("metrics", s, {}, historical=True) for s in range(1, 6)]
    raws.append(payload("event", 6, {"type": "agent_started", "severity": "info",
                                     "message": "started"}))
    raws.append(payload("metrics", 7, {"cpu": "hot"}))  # breaks metrics-data.json
    raws.append(payload("inventory", 8, {}))  # a retained kind never comes in a batch
    raws.append(payload("metrics", 9, {}, device="room-102"))  # another terminal's record
    raws.append(payload("metrics", 10, {}))
    res = ingest.write(batch(*raws))
    assert (res.stored, res.quarantined, res.duplicates) == (7, 3, 0)
    assert stored_seqs(ingest.conn, "school-a", "room-101") == [1, 2, 3, 4, 5, 6, 10]
    assert ingest.one("SELECT count(*) FROM metrics WHERE historical AND seq <= 5") == 5
    rows = ingest.conn.execute("SELECT topic, reason, payload FROM quarantine ORDER BY id"
                               ).fetchall()
    assert [r[0] for r in rows] == ["classroom/v1/school-a/room-101/batch"] * 3
    assert rows[0][1].startswith("batch record 7 of 10: metrics.json: at data/cpu:")
    assert rows[1][1].startswith("batch record 8 of 10: kind 'inventory' cannot come in a batch")
    assert rows[2][1].startswith("batch record 9 of 10: topic/payload mismatch")
    assert [json.loads(bytes(r[2])) for r in rows] == [json.loads(raws[i]) for i in (6, 7, 8)]
    again = ingest.write(batch(*raws))
    assert (again.stored, again.duplicates) == (0, 7)


def test_a_batch_that_breaks_its_own_schema_is_quarantined_whole(ingest: Ingest) -> None:
    one = batch(payload("metrics", 1, {}))  # a batch holds at least two records
    other = batch(payload("metrics", 2, {}), payload("metrics", 3, {}), school="school-b")
    other = msg("batch", other.payload)  # on school-a's topic, naming school-b
    not_objects = batch(b"1", b"2")
    res = ingest.write(one, other, not_objects)
    assert (res.stored, res.quarantined) == (0, 3)
    reasons = [r[0] for r in ingest.conn.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[0].startswith("batch.json: at records:")
    assert reasons[1].startswith("topic/payload mismatch: the topic names school-a/room-101, "
                                 "the batch school-b/room-101")
    assert reasons[2].startswith("batch.json: at records/0:")


BAD_USAGE = {"period": {"start": "2026-13-45T99:00:00Z", "end": "2026-11-30T08:00:00Z"},
             "power_on": [{"start": "2026-11-30T07:00:00Z", "end": "2026-11-30T08:00:00Z",
                           "ongoing": True}],
             "sessions": {"count": 1, "local": 1, "remote": 0}, "apps": {}}


def test_a_value_only_the_database_refuses_is_bisected_out(ingest: Ingest) -> None:
    res = ingest.write(*(metrics(s) for s in range(1, 8)),
                       msg("usage", payload("usage", 8, BAD_USAGE)),
                       *(metrics(s) for s in range(9, 12)))
    assert (res.stored, res.quarantined) == (10, 1)
    reason = ingest.one("SELECT reason FROM quarantine")
    assert reason.startswith("refused by the database:"), reason


def test_a_batch_record_the_database_refuses_is_quarantined_with_its_own_bytes(
        ingest: Ingest) -> None:
    bad = payload("usage", 3, BAD_USAGE)
    res = ingest.write(batch(*(payload("metrics", s, {}) for s in (1, 2)), bad,
                             payload("metrics", 4, {})))
    assert (res.stored, res.quarantined) == (3, 1)
    reason, raw = ingest.one("SELECT reason, payload FROM quarantine")
    assert reason.startswith("refused by the database:"), reason
    assert json.loads(bytes(raw)) == json.loads(bad)


def test_state_order_follows_the_session_counter(ingest: Ingest) -> None:
    ingest.write(state("online", 5, "connected"))
    ingest.write(state("offline", 4, "connection_lost"))  # late will of an older connection
    assert ingest.one("SELECT status, state_session FROM terminals") == ("online", 5)
    ingest.write(state("online", 5, "connected"))  # the retained copy again
    ingest.write(state("offline", 5, "connection_lost"))  # this connection's will
    assert ingest.one("SELECT status, status_reason FROM terminals") == ("offline",
                                                                         "connection_lost")
    # A reinstalled terminal counts sessions from 1 again, with a later start.
    ingest.write(state("online", 1, "connected", started_at="2026-12-01T08:00:00.000Z"))
    assert ingest.one("SELECT status, state_session FROM terminals") == ("online", 1)
    assert ingest.one("SELECT count(*) FROM terminal_states") == 4


def test_inventory_newest_wins_and_an_empty_retained_message_clears_it(ingest: Ingest) -> None:
    inv = collect_inventory("0.1.0", "cafe", None)
    older = {**inv, "agent": {**inv["agent"], "version": "0.0.9"}}
    assert ingest.write(msg("inventory", payload("inventory", 7, inv))).stored == 1
    assert ingest.write(msg("inventory", payload("inventory", 3, older))).stored == 1
    assert ingest.one("SELECT inventory -> 'agent' ->> 'version', inventory_seq FROM terminals"
                      ) == ("0.1.0", 7)
    res = ingest.write(msg("inventory", b""))
    assert (res.cleared, res.quarantined) == (1, 0)
    assert ingest.one("SELECT inventory IS NULL, inventory_seq FROM terminals") == (True, 7)
    ingest.write(msg("inventory", payload("inventory", 9, inv)))
    assert ingest.one("SELECT inventory IS NOT NULL FROM terminals") is True


def test_an_empty_retained_message_on_a_topic_no_terminal_can_have_makes_no_terminal(
        ingest: Ingest) -> None:
    """An empty payload carries no envelope to check: the topic's school and device must obey
    the envelope's rules themselves, or any string becomes a terminal (and reaches status,
    reports, spreadsheets and terminals as a name)."""
    bad = ["room\x1b[31m-1", "=HYPERLINK(\"http://x\")", "room 101", "r" * 65, "room.101"]
    res = ingest.write(*(msg(kind, b"", device=d) for d in bad for kind in
                         ("inventory", "state", "schedule")),
                       msg("inventory", b"", school="\u202eschool"))
    assert (res.cleared, res.quarantined) == (0, 3 * len(bad) + 1)
    assert ingest.conn.execute("SELECT count(*) FROM terminals").fetchone()[0] == 0
    reasons = [r[0] for r in ingest.conn.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[0].startswith("the topic's device 'room\\x1b[31m-1' is not a valid device")
    assert all(r.isprintable() for r in reasons), reasons
    assert reasons[-1].startswith("the topic's school '\\u202eschool' is not a valid school")
    # A real terminal's clear still works.
    assert ingest.write(msg("inventory", b"")).cleared == 1


def test_metrics_go_to_monthly_partitions_and_old_ones_expire(ingest: Ingest) -> None:
    now = time.time()
    old = now - 500 * 86400  # older than the 13-month retention: counted, not stored
    res = ingest.write(metrics(1, ts=old), metrics(2, ts=now), metrics(3, ts=now + 40 * 86400))
    assert (res.stored, res.expired) == (2, 1)
    ingest.sweep()
    assert ingest.gaps() == [], "an expired record's seq still counts"
    names = {r[0] for r in ingest.conn.execute(
        "SELECT tableoid::regclass::text FROM metrics")}
    assert len(names) == 2 and all(n.startswith("metrics_y") for n in names)
    far = ingest.write(metrics(4, ts=now + 800 * 86400))
    assert far.quarantined == 1
    from datetime import UTC, datetime
    dropped = partitions.drop_expired(ingest.conn, datetime.now(UTC).replace(year=2099), 13)
    assert dropped and ingest.one("SELECT count(*) FROM metrics") == 0


def test_a_message_our_own_code_cannot_store_is_quarantined_not_fatal(
        ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit test of the last resort: a message that passes the schemas but breaks our code (here
    a stand-in lesson handler that fails on one lesson) is quarantined, the rest stored."""
    from collector import lessons

    real = lessons.apply_events

    def fragile(conn: object, events: list) -> None:
        if any((e.data.get("details") or {}).get("lesson_id") == "bad" for e in events):
            raise KeyError("scheduled_start")
        real(conn, events)  # type: ignore[arg-type]

    monkeypatch.setattr(lessons, "apply_events", fragile)
    res = ingest.write(metrics(1), event(2, "lesson_started", started("good")),
                       event(3, "lesson_started", started("bad")), metrics(4))
    assert (res.stored, res.quarantined) == (3, 1)
    reason = ingest.one("SELECT reason FROM quarantine")
    assert reason == "the collector could not store it: KeyError: 'scheduled_start'"
    assert ingest.one("SELECT lesson_id FROM lessons") == "good"


def test_the_link_flag_of_metrics_is_kept_in_a_column(ingest: Ingest) -> None:
    """``agent.mqtt.connected``, the one figure reports read from metrics, lands in
    ``metrics.connected`` at ingest (NULL when the record does not say)."""
    ingest.write(msg("metrics", payload("metrics", 1, {"agent": agent_section(True)})),
                 msg("metrics", payload("metrics", 2, {"agent": agent_section(False)})),
                 metrics(3))
    rows = ingest.conn.execute("SELECT seq, connected FROM metrics ORDER BY seq").fetchall()
    assert rows == [(1, True), (2, False), (3, None)]


def test_migration_4_fills_the_link_column_of_rows_stored_before_it(
        postgres: PostgresServer) -> None:
    from collector import migrate

    url = postgres.create_database("before_0004")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text "
                     "NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for mig in migrate.available():
            if mig.version < 4:
                conn.execute(mig.sql.encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (mig.version, mig.name))
        now = datetime.now(UTC)
        partitions.ensure(conn, partitions.month_index(now), partitions.month_index(now))
        for seq, data in ((1, {"agent": agent_section(True)}),
                          (2, {"agent": agent_section(False)}), (3, {})):
            conn.execute("INSERT INTO metrics (school, device, seq, ts, received_at, historical, "
                         "data) VALUES ('s', 'd', %s, now(), now(), false, %s)",
                         (seq, json.dumps(data)))
        assert [m.version for m in migrate.migrate(conn)] == [
            m.version for m in migrate.available() if m.version >= 4]
        rows = conn.execute("SELECT seq, connected FROM metrics ORDER BY seq").fetchall()
    assert rows == [(1, True), (2, False), (3, None)]
