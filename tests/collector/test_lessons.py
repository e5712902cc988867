"""One row per lesson, whatever the order and the number of copies of its evidence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.collector.ingest_support import Ingest, event

START = "2026-11-30T00:00:00.000Z"
END = "2026-11-30T00:40:00.000Z"


@pytest.fixture
def ingest(database: str) -> Iterator[Ingest]:
    i = Ingest(database)
    yield i
    i.close()


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
