"""The report's figures, from the rows ``query`` read: per terminal, per school, per teacher.

Pure functions of rows, configuration and "now"; docs/reports.md defines every figure and
tests/collector/test_reports.py checks each against a month computed by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from collector.config import ReportsConfig
from collector.reports import timeline
from collector.reports.calendar import Interval, SchoolClock, TermProgress
from collector.reports.query import Gap, Key, LessonRow
from collector.reports.timeline import Run

ROLES = ("lecturing", "receiving")
Outcome = Literal["delivered", "missed", "unconfirmed", "upcoming"]


def hours(seconds: float) -> float:
    return round(seconds / 3600, 4)


def share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


# -- terminals -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppHours:
    running_hours: float
    active_hours: float


@dataclass(frozen=True)
class TerminalFigures:
    school: str
    device: str
    school_hours: float
    online_hours: float
    offline_hours: float
    unknown_hours: float
    online_share: float | None  # of school hours; unknown time counts as not online
    offline_share: float | None
    unknown_share: float | None
    power_on_hours: float
    power_on_school_hours: float
    apps: dict[str, AppHours]
    peripheral_faults: int
    faults_by_type: dict[str, int]
    open_gaps: int
    missing_records: int
    lost_gaps: int
    closed_gaps: int


def terminal_figures(key: Key, clock: SchoolClock, month: Interval, now: float,
                     cfg: ReportsConfig, runs: Sequence[Run], boots: Sequence[Interval],
                     apps: dict[str, tuple[float, float]], faults: dict[str, int],
                     gaps: Sequence[Gap]) -> TerminalFigures:
    """One terminal's month. School hours end at ``now`` (the rest of the month is not yet)."""
    span = (month[0], min(month[1], now))
    school = timeline.union(clock.school_hours(span)) if span[1] > span[0] else []
    mine = [g for g in gaps if g.terminal == key and _overlaps(g.span, span)]
    open_gaps = [g for g in mine if g.open]
    link = timeline.link(runs, cfg.online_hold_s, timeline.off_between(boots),
                         [g.span for g in open_gaps], span[1])
    school_s = timeline.total(school)
    up = timeline.total(timeline.intersect(link.up, school))
    down = timeline.total(timeline.intersect(link.down, school))
    unknown = school_s - up - down
    powered = timeline.intersect(timeline.union(boots), [span])
    origins: dict[tuple[int, int, object], bool] = {}
    for g in mine:
        origins[g.origin] = origins.get(g.origin, True) and not g.open
    return TerminalFigures(
        school=key[0], device=key[1], school_hours=hours(school_s), online_hours=hours(up),
        offline_hours=hours(down), unknown_hours=hours(unknown),
        online_share=share(up, school_s), offline_share=share(down, school_s),
        unknown_share=share(unknown, school_s),
        power_on_hours=hours(timeline.total(powered)),
        power_on_school_hours=hours(timeline.total(timeline.intersect(powered, school))),
        apps={name: AppHours(hours(r), hours(a)) for name, (r, a) in sorted(apps.items())
              if hours(r) > 0},
        peripheral_faults=sum(faults.values()), faults_by_type=dict(sorted(faults.items())),
        open_gaps=len(open_gaps),
        missing_records=sum(g.last_seq - g.first_seq + 1 for g in open_gaps),
        lost_gaps=sum(1 for g in open_gaps if g.lost),
        closed_gaps=sum(1 for closed in origins.values() if closed))


def _overlaps(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# -- lessons -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lesson:
    """A lesson counted once: its first part and every continuation after an interruption."""

    school: str
    device: str
    lesson_id: str
    course: str
    teacher: str
    role: str
    start: float  # scheduled start, else actual
    scheduled: bool
    outcome: Outcome
    missed_reason: str | None
    interrupted: bool
    parts: int
    live_s: float
    recorded_s: float
    duration_s: float

    @property
    def online(self) -> bool:
        """Taught live from this terminal as the lecturing end."""
        return self.role == "lecturing" and self.outcome == "delivered" and self.live_s > 0


def chains(rows: Iterable[LessonRow], now: float) -> list[Lesson]:
    groups: dict[tuple[str, str, str], list[LessonRow]] = {}
    for r in rows:
        groups.setdefault((r.school, r.device, r.root), []).append(r)
    return [_chain(parts, now) for parts in groups.values()]


def _chain(parts: list[LessonRow], now: float) -> Lesson:
    root = next((p for p in parts if p.lesson_id == p.root), parts[0])
    live = sum(p.live_seconds or 0.0 for p in parts)
    recorded = sum(p.recorded_s or 0.0 for p in parts)
    said_missed = next((p for p in parts if p.missed), None)
    # Planned by the schedule current at its start, or the agent says so: it started the
    # lesson from its timetable, or reported it missed. (A lesson a newer schedule withdrew,
    # moved or cancelled, keeps the trigger 'timetable' of its plan but is not scheduled.)
    evidence = any(p.started or p.ended for p in parts)
    scheduled = (any(p.planned for p in parts) or said_missed is not None
                 or (root.trigger == "timetable" and evidence))
    end = root.scheduled_end if root.scheduled_end is not None else root.actual_end
    outcome: Outcome
    reason = None
    if live + recorded > 0:
        outcome = "delivered"
    elif said_missed is not None:
        outcome, reason = "missed", said_missed.missed_reason or "unknown"
    elif any(p.started and not p.ended for p in parts):
        outcome = "unconfirmed"  # started, and its end (or its backlog) not here yet
    elif any(p.ended for p in parts):
        outcome, reason = "missed", "nothing_live_or_recorded"
    elif end is not None and end <= now:
        outcome, reason = "missed", "unreported"
    else:
        outcome = "upcoming"
    interrupted = outcome == "delivered" and (
        len(parts) > 1 or any((p.interruption_count or 0) > 0 for p in parts)
        or any(p.ended_by == "agent_interrupted" for p in parts))
    start = root.scheduled_start if root.scheduled_start is not None else root.actual_start
    return Lesson(
        school=root.school, device=root.device, lesson_id=root.root, course=root.course or "",
        teacher=root.teacher or "", role=root.role or "lecturing",
        start=start if start is not None else 0.0, scheduled=scheduled, outcome=outcome,
        missed_reason=reason, interrupted=interrupted, parts=len(parts), live_s=live,
        recorded_s=recorded,
        duration_s=sum(p.duration_s or 0.0 for p in parts if p.ended))


@dataclass
class Counts:
    scheduled: int = 0
    delivered: int = 0
    missed: int = 0
    interrupted: int = 0
    unconfirmed: int = 0
    upcoming: int = 0
    extra: int = 0  # delivered without being scheduled (started by hand or on command)
    delivery_rate: float | None = None
    live_seconds: float = 0.0
    recorded_seconds: float = 0.0

    def add(self, lesson: Lesson) -> None:
        if lesson.outcome == "delivered":
            self.live_seconds = round(self.live_seconds + lesson.live_s, 3)
            self.recorded_seconds = round(self.recorded_seconds + lesson.recorded_s, 3)
            if not lesson.scheduled:
                self.extra += 1
        if not lesson.scheduled:
            return
        self.scheduled += 1
        if lesson.outcome == "delivered":
            self.delivered += 1
            self.interrupted += lesson.interrupted
        elif lesson.outcome == "missed":
            self.missed += 1
        elif lesson.outcome == "unconfirmed":
            self.unconfirmed += 1
        else:
            self.upcoming += 1
        self.delivery_rate = share(self.delivered, self.scheduled - self.upcoming)


@dataclass
class SchoolFigures(Counts):
    school: str = ""
    missed_reasons: dict[str, int] = field(default_factory=dict)
    by_role: dict[str, Counts] = field(default_factory=dict)


def school_figures(school: str, lessons: Iterable[Lesson]) -> SchoolFigures:
    fig = SchoolFigures(school=school, by_role={role: Counts() for role in ROLES})
    reasons: Counter[str] = Counter()
    for lesson in lessons:
        fig.add(lesson)
        fig.by_role.setdefault(lesson.role, Counts()).add(lesson)
        if lesson.scheduled and lesson.outcome == "missed":
            reasons[lesson.missed_reason or "unknown"] += 1
    fig.missed_reasons = dict(sorted(reasons.items()))
    return fig


# -- teachers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherFigures:
    teacher: str
    school: str | None
    lessons_online: int
    hours_online: float
    weighted_lessons: float
    term: str | None = None
    minimum_hours: float | None = None
    term_hours_online: float | None = None
    expected_hours: float | None = None
    on_track: bool | None = None


def teacher_figures(month_lessons: Sequence[Lesson], term_lessons: Sequence[Lesson],
                    cfg: ReportsConfig, progress: TermProgress | None,
                    only_school: str | None = None) -> list[TeacherFigures]:
    """Online lessons as the lecturing end, by (school, teacher); teachers a term's minimum
    names are listed even with nothing this month (in one school's report, only those the
    minimum names with that school)."""
    month: dict[tuple[str | None, str], list[Lesson]] = {}
    for lesson in month_lessons:
        if lesson.online:
            month.setdefault((lesson.school, lesson.teacher), []).append(lesson)
    term: dict[tuple[str | None, str], float] = {}
    for lesson in term_lessons:
        if lesson.online:
            key = (lesson.school, lesson.teacher)
            term[key] = term.get(key, 0.0) + lesson.duration_s
    minimums = progress.term.minimum_hours if progress else {}
    keys = set(month)
    for name in minimums:
        school, _, teacher = name.rpartition("/")
        if only_school is not None and school != only_school:
            continue
        if not any(k[1] == teacher and (not school or k[0] == school) for k in keys | set(term)):
            keys.add((school or None, teacher))
    keys |= {k for k in term if _minimum(minimums, k) is not None}
    out = []
    for key in sorted(keys, key=lambda k: (k[0] or "", k[1])):
        done = month.get(key, [])
        fig = TeacherFigures(
            teacher=key[1], school=key[0], lessons_online=len(done),
            hours_online=hours(sum(x.duration_s for x in done)),
            weighted_lessons=round(len(done) * cfg.weight, 4))
        minimum = _minimum(minimums, key)
        if progress is not None and minimum is not None:
            got = term.get(key, 0.0) / 3600
            expected = minimum * progress.share
            fig = TeacherFigures(**{**fig.__dict__, "term": progress.term.name,
                                    "minimum_hours": minimum, "term_hours_online": round(got, 4),
                                    "expected_hours": round(expected, 4),
                                    "on_track": got + 1e-9 >= expected})
        out.append(fig)
    return out


def _minimum(minimums: dict[str, float], key: tuple[str | None, str]) -> float | None:
    school, teacher = key
    if school is not None and f"{school}/{teacher}" in minimums:
        return minimums[f"{school}/{teacher}"]
    return minimums.get(teacher)
