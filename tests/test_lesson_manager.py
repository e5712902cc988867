"""The lesson state machine, with a fake media control and fake clocks.

This is the unit test of the state machine (timing, triggers, crash recovery, evidence); the
daemon-level proof with the real media worker lives with the daemon tests.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest

from agent.lessons.manager import LessonError, LessonManager
from agent.lessons.timetable import PlannedLesson, Timetable
from agent.records import Record
from tests.support import REPO

SH = ZoneInfo("Asia/Shanghai")
DAY = "2026-11-23"
DEFAULT_LIVE = [("platform", "rtmp://platform.example/live/secret-key")]
SCHEMA = json.loads((REPO / "agent" / "schemas" / "lesson-evidence.json").read_text())


def _at(hhmm: str, day: str = DAY) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=SH)


def _lesson(lesson_id: str, start: str, end: str, **kw: Any) -> PlannedLesson:
    fields: dict[str, Any] = {"course": "Math", "teacher": "Wang Fang", "role": "lecturing"}
    fields.update(kw)
    return PlannedLesson(lesson_id=lesson_id, start=_at(start), end=_at(end), **fields)


P1 = _lesson(f"{DAY}-p1-math", "08:00", "08:40")
P2 = _lesson(f"{DAY}-p2-music", "08:50", "09:30", course="音乐", teacher="李明", role="receiving",
             live=("srt://school-b.example:9000?streamid=x&passphrase=y", "rtmp://c/app/k"),
             live_names=("school-b", ""))


class Clock:
    """A wall clock and a monotonic clock that tests move independently."""

    def __init__(self, at: datetime) -> None:
        self.w = at.timestamp()
        self.m = 5000.0

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def advance(self, seconds: float) -> None:
        self.w += seconds
        self.m += seconds


class FakeMedia:
    def __init__(self, clock: Clock, fail_starts: int = 0) -> None:
        self.clock = clock
        self.fail_starts = fail_starts
        self.calls: list[tuple[Any, ...]] = []
        self.live: list[tuple[str, str]] | None = None
        self.started_at = 0.0
        self.summary_override: Any = "unset"

    def start(self, lesson_id: str, live: list[tuple[str, str]]) -> None:
        self.calls.append(("start", lesson_id, live))
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("ffmpeg: not found\nmore text")
        self.live, self.started_at = live, self.clock.mono()

    def stop(self) -> dict[str, Any] | None:
        self.calls.append(("stop",))
        if self.summary_override != "unset":
            self.live = None
            return self.summary_override
        live, self.live = self.live or [], None
        t0, t1 = self.started_at, self.clock.mono()  # the worker counts on its own clock
        wall0 = self.clock.wall() - (t1 - t0)
        return {
            "live_s": {name: round(t1 - t0 - 2, 1) for name, _ in live},
            "recorded_s": t1 - t0,
            "segments": [{"path": "/rec/seg-00000.ts", "bytes": 1234, "sha256": "ab" * 32,
                          "start": wall0, "end": wall0 + t1 - t0, "duration_s": t1 - t0,
                          "partial": False}],
            "interruptions": [{"what": "camera_lost", "start": wall0 + 5, "end": wall0 + 7,
                               "duration_s": 2.0}],
        }

    def running(self) -> bool:
        return self.live is not None

    @property
    def starts(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "start"]


class Rig:
    """A manager with its fakes; ``events`` are the emitted records' data."""

    def __init__(self, tmp_path: Path, at: str = "07:59:00", lessons: tuple[PlannedLesson, ...]
                 = (P1, P2), clock: Clock | None = None, media: FakeMedia | None = None) -> None:
        self.clock = clock or Clock(_at(at))
        self.media = media or FakeMedia(self.clock)
        self.records: list[Record] = []
        self.state = tmp_path / "lesson.json"
        self.timetable = Timetable.from_lessons(lessons, "Asia/Shanghai")
        self.manager = self.make()

    def make(self) -> LessonManager:
        return LessonManager(
            timetable=self.timetable, device_id="room-101", default_live=list(DEFAULT_LIVE),
            manual_duration_s=2700, media=self.media, emit=self.records.append,
            state_path=self.state, wall=self.clock.wall, mono=self.clock.mono,
            tz="Asia/Shanghai",
        )

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Tick like the thread does, for ``seconds`` of both clocks."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.manager.tick()

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [r.data for r in self.records if type_ in (None, r.data["type"])]

    def ended(self) -> list[dict[str, Any]]:
        return [e["details"] for e in self.events("lesson_ended")]

    def started(self) -> list[dict[str, Any]]:
        return [e["details"] for e in self.events("lesson_started")]

    def saved(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())


def _valid(details: dict[str, Any], which: str) -> None:
    schema = {k: v for k, v in SCHEMA.items() if k != "anyOf"} | {"$ref": f"#/$defs/{which}"}
    jsonschema.Draft202012Validator(schema).validate(details)
    jsonschema.Draft202012Validator(SCHEMA).validate(details)


def _secs(a: str, b: str) -> float:
    def parse(x: str) -> datetime:
        return datetime.fromisoformat(x.replace("Z", "+00:00"))
    return (parse(b) - parse(a)).total_seconds()


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$id"] == "https://classroom-agent.dev/schemas/v1/lesson-evidence.json"


# -- the timetable drives it ---------------------------------------------------------------------


def test_a_scheduled_lesson_starts_and_stops_on_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:59:00")
    rig.run(59.5)
    assert rig.records == [] and rig.manager.snapshot()["state"] == "idle"
    rig.run(0.5)  # 08:00:00
    (started,) = rig.started()
    assert started["lesson_id"] == P1.lesson_id and started["trigger"] == "timetable"
    assert started["actual_start"] == started["scheduled_start"] == "2026-11-23T00:00:00.000Z"
    assert started["scheduled_end"] == "2026-11-23T00:40:00.000Z" and started["late_s"] == 0
    assert started["live"] == ["platform"]
    _valid(started, "lesson_started")
    assert rig.media.calls[0] == ("start", P1.lesson_id, DEFAULT_LIVE)
    assert rig.saved()["current"]["lesson_id"] == P1.lesson_id
    rig.run(40 * 60 - 0.5)
    assert rig.ended() == []
    rig.run(0.5)  # 08:40:00
    (ended,) = rig.ended()
    assert ended["ended_by"] == "schedule" and ended["duration_s"] == 2400
    assert ended["actual_end"] == "2026-11-23T00:40:00.000Z"
    assert ended["live_s"] == {"platform": 2398.0} and ended["recorded_s"] == 2400
    assert ended["segments"][0]["start"] == "2026-11-23T00:00:00.000Z"
    assert [i["what"] for i in ended["interruptions"]] == ["camera_lost"]
    _valid(ended, "lesson_ended")
    (record,) = [r for r in rig.records if r.data["type"] == "lesson_ended"]
    assert record.data["severity"] == "warning"  # the camera was lost for 2 s
    assert record.ts == _at("08:40").timestamp()
    assert rig.saved()["current"] is None
    rig.run(5)
    assert len(rig.ended()) == 1 and rig.media.starts == [P1.lesson_id]


def test_consecutive_lessons_with_their_own_sinks(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:59:59")
    rig.run(5401)  # to 09:30:00
    assert [d["lesson_id"] for d in rig.started()] == [P1.lesson_id, P2.lesson_id]
    assert [d["lesson_id"] for d in rig.ended()] == [P1.lesson_id, P2.lesson_id]
    start_p2 = [c for c in rig.media.calls if c[0] == "start"][1]
    assert start_p2[2] == [("school-b", P2.live[0]), ("live-2", P2.live[1])]
    p2 = rig.ended()[1]
    assert (p2["role"], p2["course"], p2["teacher"]) == ("receiving", "音乐", "李明")
    assert set(p2["live_s"]) == {"school-b", "live-2"}
    for d in rig.started():
        _valid(d, "lesson_started")
    for d in rig.ended():
        _valid(d, "lesson_ended")


def test_an_agent_started_during_a_lesson_starts_it_at_once_and_says_so(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:15:00")
    rig.manager.tick()
    (started,) = rig.started()
    assert started["late_s"] == 900 and started["actual_start"] == "2026-11-23T00:15:00.000Z"
    (event,) = rig.events("lesson_started")
    assert "15m 0s after its scheduled start" in event["message"]
    rig.run(25 * 60)
    (ended,) = rig.ended()
    assert ended["duration_s"] == 1500 and ended["ended_by"] == "schedule"


def test_a_lesson_in_its_last_seconds_is_not_started(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:39:40")
    rig.run(10)
    assert rig.records == [] and rig.media.calls == []


def test_a_timetable_lesson_preempts_a_manual_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:55:00")
    rig.manager.start_manual("Rehearsal", None, None, 1800)
    rig.run(300)
    ended, = rig.ended()
    assert ended["ended_by"] == "preempted" and ended["duration_s"] == 300
    assert [d["lesson_id"] for d in rig.started()][1] == P1.lesson_id


def test_a_reloaded_timetable_moves_the_end_of_the_running_lesson(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:59:59")
    rig.run(1)
    longer = _lesson(P1.lesson_id, "08:00", "08:45")
    rig.manager.set_timetable(Timetable.from_lessons([longer, P2], "Asia/Shanghai"))
    rig.run(40 * 60)
    assert rig.ended() == []
    rig.run(5 * 60)
    assert rig.ended()[0]["duration_s"] == 45 * 60
    rig.manager.set_timetable(None)  # no timetable: nothing starts
    rig.run(3600)
    assert len(rig.started()) == 1


# -- by hand and by command ----------------------------------------------------------------------


def test_manual_start_and_stop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    started = rig.manager.start_manual("Math", "Wang Fang", None, 600)
    assert started["lesson_id"] == "2026-11-23-manual-120000-math"
    assert started["trigger"] == "manual" and started["role"] == "lecturing"
    assert started["scheduled_start"] is None and started["planned_duration_s"] == 600
    _valid(started, "lesson_started")
    rig.run(120)
    ended = rig.manager.stop_current()
    assert ended == rig.ended()[0]
    assert ended["ended_by"] == "manual" and ended["duration_s"] == 120
    assert ended["scheduled_start"] is None and ended["scheduled_end"] is None
    _valid(ended, "lesson_ended")
    with pytest.raises(LessonError, match="no lesson is running"):
        rig.manager.stop_current()


def test_a_manual_lesson_ends_after_its_duration(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    rig.manager.start_manual(None, None, "receiving", None, trigger="command")
    rig.run(2700)
    (ended,) = rig.ended()
    assert ended["ended_by"] == "duration" and ended["duration_s"] == 2700
    assert ended["course"] == "" and ended["trigger"] == "command"
    assert ended["lesson_id"] == "2026-11-23-command-120000"
    _valid(ended, "lesson_ended")


def test_start_while_running_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:00:00")
    rig.manager.tick()
    with pytest.raises(LessonError, match=f"a lesson is already running: {P1.lesson_id}"):
        rig.manager.start_manual("Art", None, None, None)
    assert len(rig.started()) == 1


@pytest.mark.parametrize(("kw", "match"), [
    ({"role": "teaching"}, "role must be one of"),
    ({"duration_s": 1}, "duration_s must be"),
    ({"duration_s": float("nan")}, "duration_s must be"),
    ({"duration_s": "soon"}, "duration_s must be"),
    ({"trigger": "timetable"}, "trigger must be"),
])
def test_bad_manual_requests_are_refused(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    with pytest.raises(LessonError, match=match):
        rig.manager.start_manual("Math", None, **kw)
    assert rig.records == []


def test_a_lesson_stopped_by_hand_is_not_restarted_even_after_an_agent_restart(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:00:00")
    rig.manager.tick()
    rig.run(60)
    rig.manager.stop_current("command")
    rig.run(60)
    assert len(rig.started()) == 1
    rig.manager = rig.make()  # restart
    rig.run(60)
    assert len(rig.started()) == 1 and rig.ended()[0]["ended_by"] == "command"


# -- clocks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("jump", [-3600, 3600])
def test_a_wall_clock_jump_never_makes_durations_wrong(tmp_path: Path, jump: int) -> None:
    rig = Rig(tmp_path, at="07:59:59", lessons=(P1,))
    rig.run(1)
    rig.run(600)
    elapsed = [rig.manager.snapshot()["current"]["elapsed_s"]]
    rig.clock.w += jump  # NTP step or a technician fixing the date
    for _ in range(30):
        rig.run(60)
        snap = rig.manager.snapshot()["current"]
        if snap is None:
            break
        elapsed.append(snap["elapsed_s"])
    assert elapsed == sorted(elapsed) and all(e > 0 for e in elapsed)
    (ended,) = rig.ended()
    assert ended["duration_s"] == 2400 and ended["ended_by"] == "schedule"
    assert _secs(ended["actual_start"], ended["actual_end"]) == 2400
    assert ended["actual_start"] == "2026-11-23T00:00:00.000Z"
    _valid(ended, "lesson_ended")


def test_a_manual_lesson_survives_a_backwards_jump(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    rig.manager.start_manual("Math", None, None, 600)
    rig.run(100)
    rig.clock.w -= 7200
    rig.run(100)
    assert rig.manager.snapshot()["current"]["elapsed_s"] == 200
    ended = rig.manager.stop_current()
    assert ended["duration_s"] == 200 and _secs(ended["actual_start"], ended["actual_end"]) == 200


# -- crash recovery ------------------------------------------------------------------------------


def test_a_killed_agent_reports_the_lesson_and_resumes_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:59:59")
    rig.run(1)
    rig.run(300)  # 08:05; the state file was last written at 08:04:50 or later
    first = rig.started()[0]
    # SIGKILL: the manager is gone without a word; the agent comes back two minutes later
    rig.clock.advance(120)
    rig.records.clear()
    rig.manager = rig.make()
    (lost,) = rig.ended()
    assert lost["lesson_id"] == P1.lesson_id and lost["ended_by"] == "agent_interrupted"
    assert 290 <= lost["duration_s"] <= 300
    assert lost["actual_start"] == first["actual_start"]
    assert lost["live_s"] == {} and lost["recorded_s"] is None and lost["segments"] == []
    (gap,) = lost["interruptions"]
    assert gap["what"] == "agent_interrupted" and 120 <= gap["duration_s"] <= 130
    assert rig.events("lesson_ended")[0]["severity"] == "warning"
    _valid(lost, "lesson_ended")
    rig.manager.tick()
    (resumed,) = rig.started()
    assert resumed["lesson_id"] == f"{P1.lesson_id}-resumed-1"
    assert resumed["continues"] == P1.lesson_id and resumed["late_s"] == 7 * 60
    _valid(resumed, "lesson_started")
    rig.run(60)
    rig.clock.advance(60)  # killed again
    rig.records.clear()
    rig.manager = rig.make()
    assert rig.ended()[0]["lesson_id"] == f"{P1.lesson_id}-resumed-1"
    rig.manager.tick()
    assert rig.started()[0]["lesson_id"] == f"{P1.lesson_id}-resumed-2"
    assert rig.started()[0]["continues"] == f"{P1.lesson_id}-resumed-1"
    rig.run(40 * 60)
    ended = rig.ended()[-1]
    assert ended["lesson_id"] == f"{P1.lesson_id}-resumed-2" and ended["ended_by"] == "schedule"
    assert ended["continues"] == f"{P1.lesson_id}-resumed-1"
    _valid(ended, "lesson_ended")


def test_a_lesson_over_by_the_restart_is_reported_and_not_resumed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:30:00", lessons=(P1,))
    rig.manager.tick()
    rig.run(30)
    rig.clock.advance(3600)
    rig.records.clear()
    rig.manager = rig.make()
    rig.run(10)
    assert [d["ended_by"] for d in rig.ended()] == ["agent_interrupted"] and rig.started() == []


def test_a_killed_manual_lesson_resumes_for_the_rest_of_its_duration(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    started = rig.manager.start_manual("Math", None, None, 600)
    rig.run(100)
    rig.clock.advance(50)
    rig.records.clear()
    rig.manager = rig.make()
    rig.manager.tick()
    (resumed,) = rig.started()
    assert resumed["lesson_id"] == f"{started['lesson_id']}-resumed-1"
    assert resumed["trigger"] == "manual" and resumed["planned_duration_s"] == 600
    rig.run(600)
    ended = rig.ended()[-1]
    assert ended["ended_by"] == "duration" and 449 <= ended["duration_s"] <= 450


def test_stopping_the_agent_ends_the_lesson_and_a_restart_continues_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="08:00:00")
    rig.manager.tick()
    rig.run(60)
    rig.manager.stop()
    (ended,) = rig.ended()
    assert ended["ended_by"] == "agent_stopping" and ended["duration_s"] == 60
    assert rig.events("lesson_ended")[0]["severity"] == "warning"
    assert rig.saved()["current"] is None
    rig.manager = rig.make()
    rig.run(1)
    assert len(rig.ended()) == 1  # no agent_interrupted duplicate
    assert rig.started()[-1]["lesson_id"] == f"{P1.lesson_id}-resumed-1"


def test_a_corrupt_state_file_is_moved_aside(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    rig.state.write_text('{"v": 1, "current": {"lesson_id": 3}', encoding="utf-8")
    rig.manager = rig.make()
    assert rig.records == []
    assert (tmp_path / "lesson.json.corrupt").exists()
    rig.manager.start_manual("Math", None, None, 60)
    assert rig.saved()["current"]["course"] == "Math"


def test_an_unwritable_state_file_does_not_stop_lessons(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    rig = Rig(tmp_path, at="08:00:00")
    rig.state = blocker / "lesson.json"
    rig.manager = rig.make()
    rig.manager.tick()
    rig.run(2400)
    assert [d["ended_by"] for d in rig.ended()] == ["schedule"]


# -- media ---------------------------------------------------------------------------------------


def test_a_media_failure_never_stops_the_lesson_being_tracked(tmp_path: Path) -> None:
    clock = Clock(_at("08:00:00"))
    rig = Rig(tmp_path, clock=clock, media=FakeMedia(clock, fail_starts=2))
    rig.manager.tick()
    (started,) = rig.started()
    assert started["media_error"] == "ffmpeg: not found"
    assert rig.events("lesson_started")[0]["severity"] == "warning"
    _valid(started, "lesson_started")
    assert rig.manager.snapshot()["current"]["media"].startswith("failed")
    rig.run(61)  # retried at +30 s (fails again) and +60 s (works)
    assert rig.media.starts == [P1.lesson_id] * 3
    assert rig.manager.snapshot()["current"]["media"] == "running"
    rig.run(2400 - 61)
    (ended,) = rig.ended()
    failed = [i for i in ended["interruptions"] if i["what"] == "media_failed"]
    assert len(failed) == 1 and failed[0]["duration_s"] == 60
    assert failed[0]["start"] == ended["actual_start"] and failed[0]["detail"]
    _valid(ended, "lesson_ended")


def test_media_that_never_starts_spans_the_whole_lesson(tmp_path: Path) -> None:
    clock = Clock(_at("08:00:00"))
    rig = Rig(tmp_path, clock=clock, media=FakeMedia(clock, fail_starts=10**6), lessons=(P1,))
    rig.manager.tick()
    rig.run(2400)
    (ended,) = rig.ended()
    assert ("stop",) not in rig.media.calls
    (failed,) = ended["interruptions"]
    assert failed["duration_s"] == ended["duration_s"] == 2400
    assert ended["live_s"] == {} and ended["recorded_s"] is None
    _valid(ended, "lesson_ended")
    # Nothing live, nothing recorded: the planned lesson was missed, and the platform is told.
    (missed,) = rig.events("lesson_missed")
    assert missed["severity"] == "warning"
    d = missed["details"]
    assert (d["lesson_id"], d["reason"]) == (P1.lesson_id, "media_failed")
    assert (d["scheduled_start"], d["scheduled_end"]) == (ended["scheduled_start"],
                                                          ended["scheduled_end"])
    assert "ffmpeg: not found" in d["detail"]
    _valid(d, "lesson_missed")


@pytest.mark.parametrize(("summary", "missed"), [
    ({"live_s": {"platform": 0.0}, "recorded_s": 0.0, "segments": []}, True),
    ({"live_s": {"platform": 0.0}, "recorded_s": 12.0, "segments": []}, False),
    ({"live_s": {"platform": 3.0}, "recorded_s": None, "segments": []}, False),
    (None, False),  # unknown is not nothing
])
def test_a_lesson_is_missed_for_media_only_when_it_delivered_nothing(
        tmp_path: Path, summary: Any, missed: bool) -> None:
    rig = Rig(tmp_path, at="08:00:00", lessons=(P1,))
    rig.media.summary_override = summary
    rig.manager.tick()
    rig.run(2400, step=60)
    assert [e["details"]["reason"] for e in rig.events("lesson_missed")] == (
        ["media_failed"] if missed else [])
    rig.manager.start_manual("Math", None, None, 60)  # not planned: never "missed"
    rig.run(60)
    assert len(rig.events("lesson_missed")) == (1 if missed else 0)


@pytest.mark.parametrize("summary", [
    None, {}, "nonsense", {"live_s": {"platform": "x", "b": float("nan")}, "recorded_s": -1e999,
                           "segments": [1, {"path": 3}, {"path": "/a", "sha256": "XYZ",
                                                         "start": "not a time"}],
                           "interruptions": [{"what": "camera_lost", "start": 1.7e9}, {}]},
])
def test_a_bad_media_summary_still_gives_valid_evidence(tmp_path: Path, summary: Any) -> None:
    rig = Rig(tmp_path, at="12:00:00")
    rig.media.summary_override = summary
    rig.manager.start_manual("Math", None, None, 60)
    rig.run(60)
    (ended,) = rig.ended()
    _valid(ended, "lesson_ended")


# -- what the status board sees ------------------------------------------------------------------


def test_snapshot_shows_the_current_and_next_lesson_without_secrets(tmp_path: Path) -> None:
    rig = Rig(tmp_path, at="07:00:00")
    snap = rig.manager.snapshot()
    assert snap["state"] == "idle" and snap["current"] is None
    assert snap["next"]["lesson_id"] == P1.lesson_id
    assert snap["next"]["start"] == "2026-11-23T00:00:00.000Z"
    rig.clock.advance(3600 + 50 * 60 + 30)  # 08:50:30
    rig.manager.tick()
    snap = rig.manager.snapshot()
    cur = snap["current"]
    assert snap["state"] == "live" and cur["lesson_id"] == P2.lesson_id
    assert cur["elapsed_s"] == 0 and cur["remaining_s"] == 2370 and cur["late_s"] == 30
    assert cur["live"] == [{"name": "school-b", "url": "srt://school-b.example:9000/..."},
                           {"name": "live-2", "url": "rtmp://c/..."}]
    assert "passphrase" not in json.dumps(snap) and snap["next"] is None
    assert cur["media"] == "running"


def test_the_thread_ticks_and_stops_cleanly(tmp_path: Path) -> None:
    records: list[Record] = []
    clock = Clock(_at("12:00:00"))
    media = FakeMedia(clock)
    manager = LessonManager(
        timetable=None, device_id="room-101", default_live=[], manual_duration_s=600,
        media=media, emit=records.append, state_path=tmp_path / "lesson.json", tz="Asia/Shanghai",
    )
    manager.start()
    manager.start()  # idempotent
    manager.start_manual("Math", None, None, 60)
    ticked = threading.Event()
    threading.Timer(0.7, ticked.set).start()
    ticked.wait(5)
    manager.stop()
    types = [r.data["type"] for r in records]
    assert types == ["lesson_started", "lesson_ended"]
    assert records[1].data["details"]["ended_by"] == "agent_stopping"
    manager.stop()  # idempotent


def test_the_daemon_side_imports_no_media_or_calendar_libraries() -> None:
    import subprocess
    import sys

    code = ("import sys, agent.lessons, agent.lessons.manager; "
            "print(sorted({'numpy', 'cv2', 'pyaudio', 'icalendar'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
