"""The fixture month of the report tests: September 2026 at two terminals, as the agents would
have sent it, record by record (docs/reports.md, "The fixture month", tells the story).

- ``school-a/room-101`` is a dedicated classroom's lecturing end: 王芳 teaches 数学 in p1 on
  Monday, Wednesday and Friday live to school-b, 李明 teaches 语文 in p3 on Tuesday and Thursday.
- ``school-b/room-101`` (the same room name in another school) receives 王芳's 数学.

Both timetables follow the state calendar: 2026-09-25 (Friday) is the Mid-Autumn holiday,
Saturday 2026-09-26 is a make-up day that runs Monday's timetable, and an override moves the
2026-09-16 lesson from p1 to p2 (entered on 2026-09-14: schedules sent before that list p1).
Every payload is encoded by the agent's own envelope code and every schedule is the agent's own
expansion of its timetable (agent/lessons/plan.py). This module only tells what happened; the
figures the report must give are computed by hand in test_reports.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agent.lessons.plan import schedule_data
from agent.lessons.timetable import PlannedLesson, Timetable
from agent.lessons.timetable_yaml import loads_timetable
from agent.records import rfc3339
from collector.validation import Inbound
from tests.collector.ingest_support import agent_section, msg, payload

TZ = ZoneInfo("Asia/Shanghai")
MONTH = "2026-09"
Action = tuple[float, Callable[[], object]]
APPS = ("browser", "classroom_live", "media_player", "office_libreoffice", "office_wps",
        "whiteboard")


def at(day: date, hhmm: str, plus_days: int = 0) -> float:
    h, m = (int(x) for x in hhmm.split(":")[:2])
    s = int(hhmm.split(":")[2]) if hhmm.count(":") == 2 else 0
    return datetime(day.year, day.month, day.day, h, m, s, tzinfo=TZ).timestamp() \
        + plus_days * 86400


def d(day: int, month: int = 9) -> date:
    return date(2026, month, day)


_CALENDAR = """
term: {start: 2026-09-01, end: 2027-01-22}
grids:
  school: {p1: 08:00-08:40, p2: 08:50-09:30, p3: 10:00-10:40}
holidays:
  - {date: 2026-09-25, name: 中秋节}
  - {from: 2026-10-01, to: 2026-10-07, name: 国庆节}
make_up_days:
  - {date: 2026-09-26, follows: monday}
"""
_MATH_A = "{period: p1, course: 数学, teacher: 王芳, live: [{name: school-b, url: 'rtmp://live.example/a'}]}"
_CHINESE = "{period: p3, course: 语文, teacher: 李明, live: [{name: school-c, url: 'rtmp://live.example/c'}]}"
_MATH_B = "{period: p1, course: 数学, teacher: 王芳, role: receiving, live: []}"


@functools.cache
def _load(text: str) -> Timetable:
    return loads_timetable(text, "Asia/Shanghai")


def _timetable(math: str, chinese: bool, override: bool) -> str:
    text = _CALENDAR + "weekly:\n"
    for day in ("monday", "wednesday", "friday"):
        text += f"  {day}: [{math}]\n"
    if chinese:
        text += f"  tuesday: [{_CHINESE}]\n  thursday: [{_CHINESE}]\n"
    if override:
        moved = math.replace("period: p1", "period: p2")
        text += f"overrides:\n  - {{date: 2026-09-16, cancel: [p1], add: [{moved}]}}\n"
    return text


@dataclass
class Terminal:
    """One terminal's records in observation order (seq), with its state messages."""

    school: str
    device: str
    math: str
    chinese: bool
    seq: int = 0
    session: int = 0
    records: list[tuple[int, float, Inbound]] = field(default_factory=list)  # (seq, ts, msg)
    states: list[tuple[float, Inbound]] = field(default_factory=list)
    pending_boot: tuple[float, float] | None = None  # the last boot, until a usage reports it
    historical: bool = False  # records sent from the outbox's backlog

    def timetable(self, override: bool) -> Timetable:
        return _load(_timetable(self.math, self.chinese, override))

    def lessons_on(self, day: date) -> list[PlannedLesson]:
        tt = self.timetable(override=True)
        start = datetime.combine(day, datetime.min.time(), TZ)
        return tt.lessons_between(start, start + timedelta(days=1))

    # -- records -------------------------------------------------------------------------------

    def record(self, kind: str, data: dict[str, Any], ts: float, historical: bool = False
               ) -> int:
        self.seq += 1
        raw = payload(kind, self.seq, data, ts=ts, school=self.school, device=self.device,
                      historical=historical or self.historical)
        self.records.append((self.seq, ts, msg(kind, raw, self.school, self.device)))
        return self.seq

    def state(self, status: str, reason: str, ts: float, started: float) -> None:
        data = {"status": status, "session": self.session, "reason": reason,
                "agent_version": "0.1.0", "started_at": rfc3339(started)}
        raw = payload("state", None, data, ts=ts, school=self.school, device=self.device)
        self.states.append((ts, msg("state", raw, self.school, self.device)))

    def connect(self, ts: float, started: float) -> float:
        self.session += 1
        self.state("online", "connected", ts, started)
        return ts

    def metrics(self, ts: float, connected: bool) -> None:
        self.record("metrics", {"agent": agent_section(connected, self.session, self.seq)},
                    ts, historical=not connected)

    def usage(self, start: float, end: float, boot: float, apps: dict[str, tuple[float, float]]
              ) -> None:
        power_on = []
        if self.pending_boot is not None:
            s, e = self.pending_boot
            power_on.append({"start": rfc3339(s), "end": rfc3339(e), "ongoing": False})
            self.pending_boot = None
        power_on.append({"start": rfc3339(boot), "end": rfc3339(end), "ongoing": True})
        self.record("usage", {
            "period": {"start": rfc3339(start), "end": rfc3339(end)}, "power_on": power_on,
            "sessions": {"count": 1, "local": 1, "remote": 0},
            "apps": {a: {"running_s": apps.get(a, (0.0, 0.0))[0],
                         "active_s": apps.get(a, (0.0, 0.0))[1]} for a in APPS}}, end)

    def event(self, type_: str, severity: str, ts: float, details: dict[str, Any] | None = None
              ) -> int:
        data: dict[str, Any] = {"type": type_, "severity": severity, "message": type_}
        if details is not None:
            data["details"] = details
        return self.record("event", data, ts)

    def schedule(self, ts: float, today: date, override: bool) -> None:
        self.record("schedule", schedule_data(
            self.timetable(override), "Asia/Shanghai", today, 14,
            lambda p: [n for n in p.live_names if n] if p.live else []), ts)

    # -- a lesson's evidence -------------------------------------------------------------------

    def lesson(self, p: PlannedLesson, *, live: float | None = None, recorded: float = 2400.0,
               start: float | None = None, end: float | None = None, lesson_id: str | None = None,
               continues: str | None = None, ended_by: str = "schedule",
               reported: float | None = None,
               interruptions: list[dict[str, Any]] | None = None,
               media_error: str | None = None, trigger: str = "timetable") -> list[Action]:
        """lesson_started at its start and lesson_ended at its end (or ``reported``) of ``p``
        or of a part of it, as actions of a day."""
        t0 = start if start is not None else p.start.timestamp()
        t1 = end if end is not None else p.end.timestamp()
        timetable = trigger == "timetable"
        ident: dict[str, Any] = {
            "lesson_id": lesson_id or p.lesson_id, "course": p.course, "teacher": p.teacher,
            "role": p.role, "trigger": trigger,
            "scheduled_start": rfc3339(p.start.timestamp()) if timetable else None,
            "scheduled_end": rfc3339(p.end.timestamp()) if timetable else None,
            "actual_start": rfc3339(t0), "planned_duration_s": None if timetable else t1 - t0}
        if continues:
            ident["continues"] = continues
        sinks = [n for n in p.live_names if n] if p.live else []
        started = {**ident, "live": sinks,
                   "late_s": max(0.0, t0 - p.start.timestamp()) if timetable else 0.0}
        if media_error:
            started["media_error"] = media_error
        live_s = {n: (live if live is not None else t1 - t0 - 10.0) for n in sinks}
        ended = {**ident, "actual_end": rfc3339(t1), "duration_s": t1 - t0,
                 "ended_by": ended_by, "live_s": live_s, "recorded_s": recorded,
                 "interruptions": interruptions or [],
                 "segments": [] if not recorded else [{
                     "path": f"{ident['lesson_id']}/000.ts", "bytes": int(recorded) * 1000,
                     "sha256": "ab" * 32, "start": rfc3339(t0), "end": rfc3339(t1)}]}
        severity = "warning" if interruptions or media_error else "info"
        return [(t0, lambda: self.event("lesson_started", severity, t0, started)),
                (reported or t1, lambda: self.event("lesson_ended", severity, reported or t1,
                                                    ended))]

    def missed(self, p: PlannedLesson, reason: str, ts: float) -> Action:
        return (ts, lambda: self.event("lesson_missed", "warning", ts, {
            "lesson_id": p.lesson_id, "course": p.course, "teacher": p.teacher, "role": p.role,
            "scheduled_start": rfc3339(p.start.timestamp()),
            "scheduled_end": rfc3339(p.end.timestamp()), "reason": reason,
            "detail": "reported by the fixture"}))

    # -- a day ---------------------------------------------------------------------------------

    def day(self, day: date, boot: str, off: str | None = None, *, sample_from: str,
            apps_first: dict[str, tuple[float, float]],
            apps_each: dict[str, tuple[float, float]], connected: bool = True,
            override: bool = True, down: tuple[str, str] | None = None,
            actions: list[Action] = (), off_days_later: int = 0,
            power_lost: str | None = None, usage_every_h: int = 2) -> None:
        """A day the terminal is on: boot, connect, the schedule, metrics every 15 minutes from
        ``sample_from``, usage every ``usage_every_h`` hours from the boot and at the stop, the
        day's ``actions`` (lessons, faults) at their times; then a clean shutdown at ``off``
        (``off_days_later``), or the power lost at ``power_lost`` (nothing more is sent: that
        boot's end is never reported)."""
        t_boot = at(day, boot)
        started = t_boot + 20
        plan: list[Action] = []
        if connected:
            plan.append((t_boot + 30, lambda: self.connect(t_boot + 30, started)))
        plan.append((t_boot + 25, lambda: self.event("agent_started", "info", t_boot + 25,
                                                     {"version": "0.1.0"})))
        plan.append((t_boot + 40, lambda: self.schedule(t_boot + 40, day, override)))
        t_end = at(day, off, off_days_later) if off else at(day, power_lost or "23:59")
        t = at(day, sample_from)
        while t < t_end:
            up = connected and not (down is not None and at(day, down[0]) <= t < at(day, down[1]))
            plan.append((t, lambda t=t, up=up: self.metrics(t, up)))
            t += 900
        stops = []
        u = t_boot + usage_every_h * 3600
        while u < t_end:
            stops.append(u)
            u += usage_every_h * 3600
        if off:
            stops.append(t_end)
        for i, u in enumerate(stops):
            prev = stops[i - 1] if i else t_boot
            apps = apps_first if i == 0 else apps_each
            plan.append((u, lambda u=u, prev=prev, apps=apps: self.usage(prev, u, t_boot, apps)))
        plan += actions
        for _when, act in sorted(plan, key=lambda a: a[0]):
            act()
        if off:
            if connected:
                self.state("offline", "shutdown", t_end, started)
            self.pending_boot = (t_boot, t_end)


# -- the month -----------------------------------------------------------------------------------

WHITEBOARD_A = {"whiteboard": (1800.0, 900.0)}
FIRST_A = {"whiteboard": (1800.0, 900.0), "classroom_live": (3600.0, 1200.0)}
WHITEBOARD_B = {"whiteboard": (1200.0, 600.0)}


@dataclass
class Month:
    a: Terminal
    b: Terminal
    #: What the broker delivers while the month goes on; then what arrives days late (the
    #: backlog of school-a, 2026-09-22..24) and what is delivered twice.
    on_time: list[list[Inbound]]
    backlog: list[Inbound]
    again: list[Inbound]


def _school_days() -> list[date]:
    days = [d(n) for n in range(1, 31) if d(n).isoweekday() <= 5 and n != 25]
    return sorted([*days, d(26)])


def build() -> Month:
    a = Terminal("school-a", "room-101", _MATH_A, chinese=True)
    b = Terminal("school-b", "room-101", _MATH_B, chinese=False)
    per_day: dict[tuple[str, date], tuple[int, int, int]] = {}  # seq range and state count

    def mark(t: Terminal, day: date, run: Callable[[], None]) -> None:
        first, states = t.seq + 1, len(t.states)
        run()
        per_day[(t.school, day)] = (first, t.seq, states)

    for day in _school_days():
        override = day >= d(14)
        if day != d(10):
            mark(a, day, lambda day=day, override=override: _day_a(a, day, override))
        if day <= d(26):
            mark(b, day, lambda day=day, override=override: _day_b(b, day, override))

    def records(t: Terminal, day: date) -> list[Inbound]:
        first, last, _ = per_day[(t.school, day)]
        return [m for seq, _ts, m in t.records if first <= seq <= last]

    def states(t: Terminal, day: date) -> list[Inbound]:
        _, _, first = per_day[(t.school, day)]
        nxt = [v[2] for k, v in per_day.items() if k[0] == t.school and k[1] > day]
        return [m for _ts, m in t.states[first:min(nxt, default=len(t.states))]]

    on_time: list[list[Inbound]] = []
    backlog: list[Inbound] = []
    lost = next(seq for seq, ts, _m in b.records if ts == at(d(17), "12:15"))
    for day in _school_days():
        if (a.school, day) in per_day:
            msgs = [*states(a, day), *records(a, day)]
            if d(22) <= day <= d(24):
                backlog += msgs  # the school's firewall blocked the broker for three days
            elif day == d(21):
                on_time.append(msgs[::-1])  # out of order: the continuation first
            elif day == d(15):  # the link came back at 11:00: live records first
                early = [m for seq, ts, m in a.records if ts < at(day, "11:00")]
                on_time.append([m for m in msgs if m not in early] + [m for m in msgs
                                                                       if m in early])
            else:
                on_time.append(msgs)
        if (b.school, day) in per_day:
            msgs = [*states(b, day), *[m for m in records(b, day)
                                       if m is not b.records[lost - 1][2]]]
            on_time.append(msgs[::-1] if day == d(14) else msgs)
    again = [*records(a, d(8)), *records(b, d(8)), *records(a, d(9)), *records(a, d(11))]
    return Month(a, b, on_time, backlog, again)


def _manual(day: date, start: str, end: str) -> PlannedLesson:
    return PlannedLesson(lesson_id=f"{day.isoformat()}-manual-{start.replace(':', '')}00",
                         course="数学", teacher="王芳", role="lecturing",
                         start=datetime.fromtimestamp(at(day, start), TZ),
                         end=datetime.fromtimestamp(at(day, end), TZ),
                         live=("rtmp://live.example/a",), source="manual",
                         live_names=("school-b",))


def _day_a(a: Terminal, day: date, override: bool) -> None:
    actions: list[Action] = []
    kw: dict[str, Any] = {}
    for p in a.lessons_on(day):
        if day == d(15) and p.course == "语文":
            actions += a.lesson(p, live=0.0)  # recorded; nothing live while the link was down
        elif day == d(21) and p.course == "数学":
            # The agent was killed at 08:15 and restarted at 08:20: the first part's end is
            # reported at the restart, the rest continues as <id>-resumed-1.
            actions += a.lesson(p, end=at(day, "08:15"), live=895.0, recorded=900.0,
                                ended_by="agent_interrupted", reported=at(day, "08:20:05"),
                                interruptions=[{"what": "agent_interrupted", "start": None,
                                                "end": None, "duration_s": None}])
            actions += a.lesson(p, start=at(day, "08:20"), live=1195.0, recorded=1200.0,
                                lesson_id=f"{p.lesson_id}-resumed-1", continues=p.lesson_id)
            actions.append((at(day, "08:16"), lambda: a.state(
                "offline", "connection_lost", at(day, "07:50:30"), at(day, "07:50:20"))))
            actions.append((at(day, "08:20:10"), lambda: a.connect(at(day, "08:20:10"),
                                                                   at(day, "08:20"))))
        else:
            actions += a.lesson(p)
    if day == d(1):
        actions += a.lesson(_manual(day, "07:10", "07:55"), recorded=2700.0, trigger="manual")
        kw = {"boot": "07:00", "sample_from": "07:10"}
    if day == d(11):  # back after a day switched off: the Chinese lesson of the 10th
        p10 = next(p for p in a.lessons_on(d(10)) if p.course == "语文")
        actions.append(a.missed(p10, "terminal_off", at(day, "07:50:35")))
    if day == d(15):
        actions.append((at(day, "09:01"), lambda: a.state(
            "offline", "connection_lost", at(day, "07:50:30"), at(day, "07:50:20"))))
        actions.append((at(day, "11:00"), lambda: a.connect(at(day, "11:00"),
                                                            at(day, "07:50:20"))))
        kw["down"] = ("09:00", "11:00")
    if day == d(8):
        actions.append((at(day, "12:00"), lambda: a.event(
            "peripheral_removed", "info", at(day, "12:00"), {"class": "usb", "device": {}})))
    if day == d(17):
        actions.append((at(day, "14:00"), lambda: a.event(
            "display_disconnected", "warning", at(day, "14:00"),
            {"class": "display", "device": {}})))
    if day == d(29):
        actions.append((at(day, "12:00"), lambda: a.event(
            "peripheral_removed", "warning", at(day, "12:00"), {"class": "video", "device": {}})))
    if d(22) <= day <= d(24):
        kw["connected"] = False
    if day == d(30):  # left on overnight, switched off on the holiday morning
        kw.update(off="08:30", off_days_later=1)
    a.historical = d(22) <= day <= d(24)
    a.day(day, **{"boot": "07:50", "off": "17:30", "sample_from": "07:55", **kw},
          apps_first=FIRST_A, apps_each=WHITEBOARD_A, override=override, actions=actions)
    a.historical = False


def _day_b(b: Terminal, day: date, override: bool) -> None:
    actions: list[Action] = []
    for p in b.lessons_on(day):
        if day == d(9):  # the media never produced anything
            actions += b.lesson(p, recorded=0.0, media_error="camera did not open")
            actions.append(b.missed(p, "media_failed", p.end.timestamp() + 1))
        elif day == d(14):
            actions += b.lesson(p, interruptions=[{
                "what": "camera_lost", "start": rfc3339(at(day, "08:10")),
                "end": rfc3339(at(day, "08:12")), "duration_s": 120.0}])
            actions.append((at(day, "08:10"), lambda: b.event(
                "camera_lost", "warning", at(day, "08:10"), {"source": "0"})))
            actions.append((at(day, "08:12"), lambda: b.event(
                "camera_restored", "info", at(day, "08:12"), {"source": "0"})))
        else:
            actions += b.lesson(p)
    kw: dict[str, Any] = {"off": "17:40"}
    if day == d(26):  # the power went at 17:00 and the terminal stayed dead
        kw = {"off": None, "power_lost": "17:00"}
        actions.append((at(day, "17:01"), lambda: b.state(
            "offline", "connection_lost", at(day, "07:40:30"), at(day, "07:40:20"))))
    b.day(day, "07:40", sample_from="07:45", apps_first=WHITEBOARD_B, apps_each=WHITEBOARD_B,
          override=override, actions=actions, **kw)
