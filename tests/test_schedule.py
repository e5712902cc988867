"""The agent says what was planned: the retained ``schedule`` and ``lesson_missed``.

End to end with the real agent and a real Mosquitto. The wall clock of the agent is moved with
libfaketime (as in tests/faults/test_clock_jumps.py) so that a morning, a missed lesson and a
midnight pass in seconds: the agent believes it is Monday 2026-11-23 (Asia/Shanghai). The rules
of the reasons (terminal off or agent not running, look-back, no repeats) are unit-tested below
with fake clocks and boots, since a test cannot switch the machine off.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.boot import Boot
from agent.lessons.manager import joinable
from agent.lessons.missed import LastSeen, RunLog, find_missed
from agent.lessons.plan import schedule_data
from agent.lessons.planner import Planner, PlanSettings
from agent.lessons.timetable import PlannedLesson, Timetable
from agent.lessons.timetable_yaml import loads_timetable
from agent.records import Record
from tests.support import (
    LIBFAKETIME,
    Broker,
    Subscriber,
    epoch,
    fake_clock,
    schema_errors,
    wait_until,
)

TZ = "Asia/Shanghai"
SH = ZoneInfo(TZ)
PREFIX = "classroom/v1/school-a/room-101"

#: Monday 2026-11-23 is "today" for the agent. The window of 14 days holds a holiday (the
#: Wednesday), a make-up Saturday that follows Monday (调休) and an override on the next Monday.
TIMETABLE = """\
term: {start: 2026-11-02, end: 2027-01-22}
grids:
  main: {p1: "10:00-10:40", p2: "10:50-11:30", p3: "14:00-14:40"}
weekly:
  monday:
    - {period: p1, course: 数学, teacher: 王芳}
    - period: p2
      course: 音乐
      teacher: 李明
      role: receiving
      live: [{name: lijiawan, url: "rtmp://live.example/zd/lijiawan-secret-key"}]
  wednesday:
    - {period: p3, course: English, teacher: Chen Jing}
holidays:
  - {date: 2026-11-25, name: a holiday}
make_up_days:
  - {date: 2026-11-28, follows: monday}
overrides:
  - {date: 2026-11-30, cancel: [p1], add: [{period: p3, course: 科学, teacher: 赵强}]}
"""
EXPECTED = {
    "2026-11-23-p1-math": ("2026-11-23", "2026-11-23T02:00:00.000Z", "数学", "王芳", []),
    "2026-11-23-p2-music": ("2026-11-23", "2026-11-23T02:50:00.000Z", "音乐", "李明",
                            ["lijiawan"]),
    "2026-11-28-p1-math": ("2026-11-28", "2026-11-28T02:00:00.000Z", "数学", "王芳", []),
    "2026-11-28-p2-music": ("2026-11-28", "2026-11-28T02:50:00.000Z", "音乐", "李明",
                            ["lijiawan"]),
    "2026-11-30-p2-music": ("2026-11-30", "2026-11-30T02:50:00.000Z", "音乐", "李明",
                            ["lijiawan"]),
    "2026-11-30-p3-science": ("2026-11-30", "2026-11-30T06:00:00.000Z", "科学", "赵强", []),
    "2026-12-02-p3-english": ("2026-12-02", "2026-12-02T06:00:00.000Z", "English",
                              "Chen Jing", []),
}


def _offset_to(local: str) -> str:
    """A libfaketime offset that makes the agent's clock read ``local`` (Asia/Shanghai) now."""
    target = datetime.fromisoformat(local).replace(tzinfo=SH).timestamp()
    return f"{target - time.time():+.0f}"


def _schedules(sub: Subscriber) -> list[dict[str, Any]]:
    return [m.payload for m in sub.snapshot("schedule") if m.raw]


def _missed(sub: Subscriber) -> list[dict[str, Any]]:
    return [m.payload["data"] for m in sub.snapshot("event")
            if m.payload["data"]["type"] == "lesson_missed"]


def _set_clock(offset_file: Path, local: str) -> None:
    offset_file.write_text(_offset_to(local) + "\n")
    time.sleep(1.2)  # libfaketime rereads the offset every second


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime missing: scripts/deps.sh")
def test_schedule_and_missed_lessons_through_restarts_reload_and_midnight(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    timetable = tmp_path / "timetable.yaml"
    timetable.write_text(TIMETABLE, encoding="utf-8")
    agent = agent_factory(lessons={"timetable": str(timetable), "schedule_days": 14},
                          mqtt={"flush_on_exit_s": 2}, telemetry={"interval_s": 5})
    offset = fake_clock(agent, _offset_to("2026-11-23T09:00:00"))

    # 1. Monday 09:00: the schedule for 14 days, as the timetable's rules expand it.
    agent.start()
    first = subscriber.wait_for(lambda _m: _schedules(subscriber), 20, "the schedule")[0]
    data = first["data"]
    assert (data["from"], data["to"], data["days"], data["timezone"]) == (
        "2026-11-23", "2026-12-06", 14, TZ)
    assert data["timetable"]["format"] == "yaml" and len(data["timetable"]["sha256"]) == 64
    got = {x["lesson_id"]: (x["date"], x["scheduled_start"], x["course"], x["teacher"], x["live"])
           for x in data["lessons"]}
    assert got == EXPECTED
    music = next(x for x in data["lessons"] if x["lesson_id"] == "2026-11-23-p2-music")
    assert music["role"] == "receiving" and music["scheduled_end"] == "2026-11-23T03:30:00.000Z"
    assert "secret" not in json.dumps(first), "sink URLs never leave the terminal"
    assert agent.stop() == 0

    # 2. The agent was stopped over both Monday lessons: at 11:35 each is reported missed once.
    _set_clock(offset, "2026-11-23T11:35:00")
    agent.start()
    missed = subscriber.wait_for(lambda _m: len(_missed(subscriber)) >= 2 and _missed(subscriber),
                                 20, "two lesson_missed events")
    by_id = {m["details"]["lesson_id"]: m for m in missed}
    assert set(by_id) == {"2026-11-23-p1-math", "2026-11-23-p2-music"}
    math = by_id["2026-11-23-p1-math"]
    assert math["severity"] == "warning"
    assert math["details"]["reason"] == "agent_not_running", math  # same boot: the PC was on
    assert (math["details"]["scheduled_start"], math["details"]["scheduled_end"]) == (
        "2026-11-23T02:00:00.000Z", "2026-11-23T02:40:00.000Z")
    assert (math["details"]["course"], math["details"]["teacher"],
            math["details"]["role"]) == ("数学", "王芳", "lecturing")
    assert by_id["2026-11-23-p2-music"]["details"]["role"] == "receiving"
    wait_until(lambda: len(_schedules(subscriber)) >= 2, 20, "the schedule at the second start")
    assert agent.stop() == 0

    # 3. And never again on the next restart.
    agent.start()
    wait_until(lambda: len(_schedules(subscriber)) >= 3, 20, "the schedule at the third start")
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 20, "the outbox to drain")
    assert len(_missed(subscriber)) == 2

    # 4. The timetable file changes (Wednesday's English cancelled) and the agent is reloaded.
    timetable.write_text(TIMETABLE + "  - {date: 2026-12-02, cancel: all}\n", encoding="utf-8")
    agent.signal(signal.SIGHUP)
    reloaded = subscriber.wait_for(lambda _m: len(_schedules(subscriber)) >= 4
                                   and _schedules(subscriber)[3], 20, "the reloaded schedule")
    ids = {x["lesson_id"] for x in reloaded["data"]["lessons"]}
    assert ids == set(EXPECTED) - {"2026-12-02-p3-english"}
    assert reloaded["data"]["version"] != data["version"]
    assert reloaded["data"]["timetable"]["sha256"] != data["timetable"]["sha256"]

    # 5. Midnight passes: the window moves by a day.
    _set_clock(offset, "2026-11-23T23:59:57")
    moved = subscriber.wait_for(lambda _m: len(_schedules(subscriber)) >= 5
                                and _schedules(subscriber)[4], 20, "the schedule after midnight")
    assert (moved["data"]["from"], moved["data"]["to"]) == ("2026-11-24", "2026-12-07")
    ids = {x["lesson_id"] for x in moved["data"]["lessons"]}
    assert ids == set(EXPECTED) - {"2026-12-02-p3-english", "2026-11-23-p1-math",
                                   "2026-11-23-p2-music"} | {"2026-12-07-p1-math",
                                                             "2026-12-07-p2-music"}
    assert epoch(moved["ts"]) >= datetime.fromisoformat("2026-11-24T00:00:00+08:00").timestamp()

    seqs = [m["seq"] for m in _schedules(subscriber)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "schedules carry their own seq"
    problems = [e for m in subscriber.snapshot() for e in schema_errors(m)]
    assert not problems, problems[:5]
    latest = wait_until(lambda: _retained_schedule(broker.port), 10, "the retained schedule")
    assert latest["seq"] == moved["seq"]


def _retained_schedule(port: int) -> dict[str, Any] | None:
    from tests.support import retained

    return retained(port, f"{PREFIX}/schedule")


# -- the rules, with fake clocks and boots ---------------------------------------------------


def _at(hhmm: str, day: str = "2026-11-23") -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=SH)


P1 = PlannedLesson("2026-11-23-p1-math", "Math", "Wang Fang", "lecturing", _at("08:00"),
                   _at("08:40"))
P2 = PlannedLesson("2026-11-23-p2-music", "音乐", "李明", "receiving", _at("08:50"), _at("09:30"),
                   live=("rtmp://c/app/secret-key",), live_names=("school-b",))
BOOT = Boot("boot-b", _at("07:00").timestamp())


def _last(hhmm: str, boot_id: str = "boot-b", day: str = "2026-11-23") -> LastSeen:
    return LastSeen(_at(hhmm, day).timestamp(), boot_id, _at("07:00").timestamp())


def _find(lessons: list[Any], last: LastSeen, now: str, boot: Boot = BOOT,
          started: set[str] | None = None, reported: tuple[str, ...] = (),
          since: float = 0.0) -> dict[str, str]:
    found = find_missed(lessons, last, boot, _at(now).timestamp(), since,
                        lambda i: i in (started or set()), joinable, reported)
    return {p.lesson_id: reason for p, reason, _detail in found}


def test_a_lesson_missed_in_the_same_boot_is_agent_not_running() -> None:
    assert _find([P1, P2], _last("07:30"), "09:40") == {
        P1.lesson_id: "agent_not_running", P2.lesson_id: "agent_not_running"}


def test_a_lesson_before_this_boot_is_terminal_off_after_it_agent_not_running() -> None:
    boot = Boot("boot-c", _at("08:45").timestamp())  # switched on between the two lessons
    assert _find([P1, P2], _last("07:30", "boot-b"), "09:40", boot=boot) == {
        P1.lesson_id: "terminal_off", P2.lesson_id: "agent_not_running"}
    # Without a kernel boot id, the boot time tells (within 2 s).
    no_id = Boot(None, _at("08:45").timestamp())
    last = LastSeen(_at("07:30").timestamp(), None, _at("07:00").timestamp())
    assert _find([P1], last, "09:40", boot=no_id) == {P1.lesson_id: "terminal_off"}


def test_joinable_started_reported_and_earlier_lessons_are_not_missed() -> None:
    # 09:10: P2 (08:50-09:30) can still be joined late; P1 is over.
    assert _find([P1, P2], _last("07:30"), "09:10") == {P1.lesson_id: "agent_not_running"}
    # The lesson manager started P1 before the agent went away: it has its own evidence.
    assert _find([P1, P2], _last("07:30"), "09:40", started={P1.lesson_id}) == {
        P2.lesson_id: "agent_not_running"}
    assert _find([P1, P2], _last("07:30"), "09:40", reported=(P1.lesson_id,)) == {
        P2.lesson_id: "agent_not_running"}
    # Last seen at 08:10: P1 began while the agent ran, so it is not missed "while away".
    assert _find([P1, P2], _last("08:10"), "09:40") == {P2.lesson_id: "agent_not_running"}
    # The look-back floor.
    assert _find([P1, P2], _last("07:30"), "09:40", since=_at("08:30").timestamp()) == {
        P2.lesson_id: "agent_not_running"}


def test_the_run_log_survives_restarts_and_forgets_old_reports(tmp_path: Path) -> None:
    log = RunLog(tmp_path, BOOT)
    assert log.previous is None  # first start: nothing can be said about before
    log.mark([("old", _at("08:00", "2026-10-01").timestamp()), ("new", _at("08:40").timestamp())],
             _at("09:00").timestamp(), keep_s=14 * 86400)
    again = RunLog(tmp_path, BOOT)
    assert again.previous == LastSeen(_at("09:00").timestamp(), "boot-b", BOOT.time)
    assert set(again.reported) == {"new"}
    (tmp_path / "lessons-missed.json").write_text("{not json")
    assert RunLog(tmp_path, BOOT).previous is None


class _Wall:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def test_the_planner_reports_each_missed_lesson_once_and_publishes_on_change(
        tmp_path: Path) -> None:
    """A lesson the lesson manager started is not missed, a lesson reported once is never
    reported again, a reload that changes nothing sends no new schedule."""
    wall = _Wall(_at("07:30"))
    records: list[Record] = []
    timetable = Timetable.from_lessons([P1, P2], TZ)
    started: set[str] = set()

    def planner() -> Planner:
        p = Planner(state_dir=tmp_path, settings=PlanSettings(TZ, 3, 14),
                    sink_names=lambda lesson: list(lesson.live_names), started=started.__contains__,
                    emit=records.append, wall=wall, boot=BOOT)
        p.set_timetable(timetable)
        return p

    first = planner()
    first.start()
    first.stop()
    assert [r.kind for r in records] == ["schedule"]
    lessons = records[0].data["lessons"]
    assert [x["lesson_id"] for x in lessons] == [P1.lesson_id, P2.lesson_id]
    assert lessons[1]["live"] == ["school-b"]
    wall.now = _at("10:30").timestamp()  # both lessons passed while the agent was away...
    started.add(P1.lesson_id)  # ...but P1 had been started (it has its own evidence)
    records.clear()
    second = planner()
    second.start()
    second.set_timetable(timetable)  # a reload with the same timetable
    time.sleep(0.3)
    second.stop()
    assert [(r.kind, r.data.get("details", {}).get("lesson_id")) for r in records] == [
        ("event", P2.lesson_id), ("schedule", None)]
    records.clear()
    third = planner()
    third.start()
    third.stop()
    assert [r.kind for r in records] == ["schedule"]


def test_schedule_data_of_no_timetable_is_empty_and_valid() -> None:
    from tests.support import Message

    data = schedule_data(None, TZ, datetime(2026, 11, 23).date(), 14, lambda p: [])
    assert (data["lessons"], data["timetable"]) == ([], None)
    msg = Message(f"{PREFIX}/schedule", {"v": 1, "device": "room-101", "school": "school-a",
                                         "seq": 1, "ts": "2026-11-23T00:00:00.000Z",
                                         "kind": "schedule", "data": data}, True, b"{}")
    assert schema_errors(msg) == []
    tt = loads_timetable(TIMETABLE, TZ)
    same = schedule_data(tt, TZ, datetime(2026, 11, 23).date(), 14, lambda p: [])
    assert same["timetable"] == {"format": "yaml", "sha256": None}  # built in memory
    assert len(same["lessons"]) == len(EXPECTED)
    assert timedelta(days=13) == (datetime.fromisoformat(same["to"])
                                  - datetime.fromisoformat(same["from"]))
