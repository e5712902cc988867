"""One row per lesson, whatever the order and the number of copies of its evidence."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from collector.validation import Inbound
from tests.collector.ingest_support import Ingest, ended, event, msg, payload, started


@pytest.fixture
def ingest(database: str) -> Iterator[Ingest]:
    i = Ingest(database)
    yield i
    i.close()


def test_evidence_in_any_order_and_any_number_makes_one_row(ingest: Ingest) -> None:
    lid = "2026-11-30-p1-math"
    # The end arrives first (a backlog), the start after, then both again (QoS 1 duplicates).
    ingest.write(event(11, "lesson_ended", ended(lid)))
    ingest.write(event(10, "lesson_started", started(lid)))
    ingest.write(event(10, "lesson_started", started(lid)), event(11, "lesson_ended", ended(lid)))
    row = ingest.one("""SELECT course, teacher, role, trigger, ended_by, duration_s, live_seconds,
                               recorded_s, interruption_count, segments, segment_bytes, late_s,
                               live_sinks, started_seq, ended_seq, root_lesson_id, planned
                        FROM lessons""")
    assert row == ("数学", "李明", "lecturing", "timetable", "schedule", 2400.0, 2390.5, 2400.0,
                   0, 1, 1000, 0.0, ["platform"], 10, 11, lid, False)


def test_an_interrupted_end_never_replaces_a_proper_one(ingest: Ingest) -> None:
    lid = "2026-11-30-p2-math"
    ingest.write(event(20, "lesson_ended", ended(lid, "agent_interrupted")))
    assert ingest.one("SELECT ended_by, ended_seq FROM lessons") == ("agent_interrupted", 20)
    ingest.write(event(21, "lesson_ended", ended(lid, "schedule")))  # the real end came after
    assert ingest.one("SELECT ended_by, ended_seq FROM lessons") == ("schedule", 21)
    ingest.write(event(22, "lesson_ended", ended(lid, "agent_interrupted")))  # and a late copy
    assert ingest.one("SELECT ended_by, ended_seq FROM lessons") == ("schedule", 21)


def test_a_continuation_names_the_first_lesson_of_its_chain(ingest: Ingest) -> None:
    lid = "2026-11-30-p3-math"
    # The second continuation arrives before the first one (two collectors, a backlog).
    ingest.write(event(33, "lesson_started", started(f"{lid}-resumed-2",
                                                     continues=f"{lid}-resumed-1")))
    ingest.write(event(30, "lesson_started", started(lid)),
                 event(31, "lesson_ended", ended(lid, "agent_interrupted")),
                 event(32, "lesson_started", started(f"{lid}-resumed-1", continues=lid)))
    rows = dict(ingest.conn.execute("SELECT lesson_id, root_lesson_id FROM lessons").fetchall())
    assert rows == {lid: lid, f"{lid}-resumed-1": lid, f"{lid}-resumed-2": lid}


def _rfc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def schedule(seq: int, ts: float, lessons: list[tuple[str, float]]) -> Inbound:
    """A schedule record as agent/schemas/schedule-data.json has it: today and tomorrow (the
    terminal's local dates), lessons of 40 minutes at the given starts."""
    zone = ZoneInfo("Asia/Shanghai")
    today = datetime.fromtimestamp(ts, zone).date()
    data = {"timezone": "Asia/Shanghai", "from": today.isoformat(),
            "to": (today + timedelta(days=1)).isoformat(), "days": 2, "timetable": None,
            "version": f"{seq:016x}",
            "lessons": [{"lesson_id": lid, "date": datetime.fromtimestamp(s, zone).date()
                         .isoformat(), "scheduled_start": _rfc(s),
                         "scheduled_end": _rfc(s + 2400), "course": "数学", "teacher": "李明",
                         "role": "lecturing", "live": []} for lid, s in lessons]}
    return msg("schedule", payload("schedule", seq, data, ts=ts))


def test_planned_delivered_and_missed_from_schedules_and_evidence(ingest: Ingest) -> None:
    t0 = time.time()
    a, b = t0 + 3600, t0 + 7200
    assert ingest.write(schedule(5, t0, [("les-a", a), ("les-b", b)])).stored == 1
    planned = dict(ingest.conn.execute("SELECT lesson_id, planned FROM lessons").fetchall())
    assert planned == {"les-a": True, "les-b": True}
    # The timetable changed: the newer schedule no longer has lesson b.
    ingest.write(schedule(9, t0 + 600, [("les-a", a)]))
    # An older schedule that still had b arrives late: the newer one decides.
    ingest.write(schedule(7, t0 + 300, [("les-a", a), ("les-b", b)]))
    planned = dict(ingest.conn.execute("SELECT lesson_id, planned FROM lessons").fetchall())
    assert planned == {"les-a": True, "les-b": False}
    assert ingest.one("SELECT count(*) FROM schedules") == 3, "each stored once"
    # The terminal was off at a's time and says so at its next start.
    ingest.write(event(12, "lesson_missed", {
        "lesson_id": "les-a", "course": "数学", "teacher": "李明", "role": "lecturing",
        "scheduled_start": _rfc(a), "scheduled_end": _rfc(a + 2400),
        "reason": "terminal_off", "detail": "off since 07:10"}))
    # A manual lesson, never planned, was delivered.
    ingest.write(event(13, "lesson_started", started("manual-1", trigger="manual")))
    rows = {r[0]: r[1:] for r in ingest.conn.execute(
        """SELECT lesson_id, planned, started_seq IS NOT NULL OR ended_seq IS NOT NULL,
                  missed_reason FROM lessons""")}
    assert rows == {"les-a": (True, False, "terminal_off"), "les-b": (False, False, None),
                    "manual-1": (False, True, None)}
    ingest.sweep()
    assert ingest.gaps() == [(1, 4, False, False), (6, 6, False, False), (8, 8, False, False),
                             (10, 11, False, False)], "schedules count for gap tracking"
