"""A timetable's rules applied to every date of its term: the parsed file in, concrete lessons
per local date out.

The YAML reader (:mod:`agent.lessons.timetable_yaml`) turns the file into a :class:`TermSpec`;
:class:`Expander` applies its rules in the order a school does: term bounds, holidays, make-up
days (调休, "this Saturday follows Monday"), odd/even weeks, then per-date overrides (cancel,
move, add) which always win. Expanding up front checks every date once (overlaps, cancels of
lessons that do not exist), so a bad file fails at load, never in the middle of a lesson.
Clock times and slots (a grid's period or an explicit range) are read here too, because a move
names its target slot only and is resolved while expanding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from agent.lessons.timetable import PlannedLesson

MAX_LESSONS_PER_DAY = 30
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

#: A grid or period name (it goes in lesson ids).
PERIOD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,15}$")
_CLOCK = re.compile(r"^(\d{1,2})[:\uff1a](\d{2})$")  # also the full-width colon
#: "08:00-08:40"; also en/em dashes, "~", the full-width tilde and 至, as typed in Chinese IMEs.
_RANGE = re.compile(r"^\s*(\S+?)\s*(?:-|\u2013|\u2014|~|\uff5e|至)\s*(\S+)\s*$")

#: grid name -> period name -> (start, end)
Grids = dict[str, dict[str, tuple[time, time]]]


class Problems(Protocol):
    """Where conflicts are reported, as ``file:line: key: message`` (the reader collects them)."""

    def err(self, node: int, path: str, msg: str, /) -> None: ...


# -- the parsed file (before expansion) -----------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    key: str  # "p1", "partner-p1" or "1540": part of the lesson id
    period: str  # the period name ("" for explicit times): what cancel/move refer to
    start: time
    end: time


@dataclass(frozen=True)
class Entry:
    slot: Slot
    grid: str | None
    course: str
    teacher: str
    role: str
    live: tuple[str, ...] | None
    live_names: tuple[str, ...]
    code: str
    weeks: str
    line: int
    path: str

    def describe(self) -> str:
        return f"{self.slot.period or self.slot.start.strftime('%H:%M')} {self.course}"


@dataclass(frozen=True)
class Move:
    ref: str
    to: str
    to_date: date | None
    line: int
    path: str


@dataclass(frozen=True)
class Override:
    day: date
    cancel: tuple[tuple[str, int, str], ...]  # (ref, line, path); ref "all" cancels the day
    moves: tuple[Move, ...]
    add: tuple[Entry, ...]
    line: int
    path: str


@dataclass(frozen=True)
class TermSpec:
    name: str
    term: tuple[date, date]
    grids: Grids
    default_grid: str | None
    weekly: dict[int, tuple[Entry, ...]]
    holidays: tuple[tuple[date, date], ...]
    make_up: dict[date, int]
    overrides: tuple[Override, ...]
    make_up_lines: dict[date, int] = field(default_factory=dict)


def parse_clock(text: str) -> time | None:
    m = _CLOCK.match(text.strip())
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        return None
    return time(int(m[1]), int(m[2]))


def parse_range(text: str) -> tuple[time, time] | str:
    """``"08:00-08:40"`` into two times, or the reason it is not a range."""
    m = _RANGE.match(text)
    start, end = (parse_clock(m[1]), parse_clock(m[2])) if m else (None, None)
    if start is None or end is None:
        return f"invalid time range {text!r}: write it as HH:MM-HH:MM, e.g. 08:00-08:40"
    if end <= start:
        return f"invalid time range {text!r}: the end must be after the start, on the same day"
    return start, end


def find_slot(ref: str, grid: str | None, grids: Grids, default_grid: str | None) -> Slot | str:
    """A period name of ``grid`` (else of the default grid) or an explicit ``HH:MM-HH:MM``; the
    problem, as text, when ``ref`` is neither."""
    span = parse_range(ref)
    if not isinstance(span, str):
        return Slot(span[0].strftime("%H%M"), "", span[0], span[1])
    gname = grid or default_grid
    if gname is None:
        if PERIOD.match(ref):
            return (f"period {ref!r}: which grid? there are several; set default_grid or give "
                    "the lesson a grid")
        return span
    periods = grids.get(gname, {})
    if ref not in periods:
        if not PERIOD.match(ref) and any(c in ref for c in ":\uff1a-~"):
            return span
        known = ", ".join(periods) or "(none)"
        return f"no period {ref!r} in grid {gname!r}; periods: {known}"
    key = ref if gname == default_grid else f"{gname}-{ref}"
    return Slot(key, ref, *periods[ref])


# -- expansion ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    entry: Entry
    slot: Slot

    def matches(self, ref: str) -> bool:
        if ref in (self.slot.key, self.slot.period):
            return True
        clock = parse_clock(ref)
        return clock is not None and clock == self.slot.start


class Expander:
    """Applies the rules of the file to every date of the term, reporting conflicts."""

    def __init__(self, r: Problems, spec: TermSpec, tz: ZoneInfo) -> None:
        self.r, self.spec, self.tz = r, spec, tz
        self.holiday_days = {
            first + timedelta(days=n)
            for first, last in spec.holidays for n in range((last - first).days + 1)
        }
        first, _ = spec.term
        self.week_one = first - timedelta(days=first.weekday())
        self.reported: set[tuple[int, int]] = set()

    def week_number(self, day: date) -> int:
        return (day - self.week_one).days // 7 + 1

    def in_term(self, day: date) -> bool:
        return self.spec.term[0] <= day <= self.spec.term[1]

    def base_day(self, day: date) -> list[_Item]:
        if day in self.holiday_days:
            return []
        weekday = self.spec.make_up.get(day, day.weekday())
        parity = "odd" if self.week_number(day) % 2 else "even"
        return [
            _Item(e, e.slot) for e in self.spec.weekly.get(weekday, ())
            if e.weeks in ("all", parity)
        ]

    def run(self) -> dict[date, list[PlannedLesson]]:
        """The term's lessons per date: the weekly pattern, then each override's cancels and
        moves out, then what the overrides add and what moves in; conflicts are reported."""
        self._check_make_up_days()
        first, last = self.spec.term
        dates = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        days = {day: self.base_day(day) for day in dates}
        moving: list[tuple[date, _Item, Move]] = []
        for ov in self.spec.overrides:
            if not self.in_term(ov.day):
                self.r.err(ov.line, f"{ov.path}.date", f"{ov.day} is outside the term "
                                                       f"({first} .. {last})")
                continue
            days[ov.day] = self._cancel_and_move_out(ov, days[ov.day], moving)
        for ov in self.spec.overrides:
            if self.in_term(ov.day):
                days[ov.day].extend(_Item(e, e.slot) for e in ov.add)
        for target, item, mv in moving:
            self._move_in(days, target, item, mv)
        return {d: self._lessons(d, items) for d, items in days.items() if items}

    def _check_make_up_days(self) -> None:
        spec = self.spec
        for day, line in spec.make_up_lines.items():
            if not self.in_term(day):
                self.r.err(line, "make_up_days", f"{day} is outside the term "
                                                 f"({spec.term[0]} .. {spec.term[1]})")
            elif day in self.holiday_days:
                self.r.err(line, "make_up_days", f"{day} is both a holiday and a make-up day")

    def _cancel_and_move_out(self, ov: Override, todays: list[_Item],
                             moving: list[tuple[date, _Item, Move]]) -> list[_Item]:
        """The day's lessons once ``ov`` cancelled and moved out what it names; each lesson
        moved out goes to ``moving`` with its target date."""
        r = self.r
        for ref, line, path in ov.cancel:
            hit = todays if ref == "all" else [it for it in todays if it.matches(ref)]
            if not hit and ref != "all":
                r.err(line, path, f"no lesson at {ref!r} on {_day_name(ov.day)} to cancel"
                                  f"{self._listing(todays)}")
            todays = [it for it in todays if it not in hit]
        for mv in ov.moves:
            hit = [it for it in todays if it.matches(mv.ref)]
            if len(hit) != 1:
                what = "no lesson" if not hit else "more than one lesson"
                r.err(mv.line, f"{mv.path}.from", f"{what} at {mv.ref!r} on "
                                                  f"{_day_name(ov.day)} to move"
                                                  f"{self._listing(todays)}")
                continue
            todays = [it for it in todays if it is not hit[0]]
            moving.append((mv.to_date or ov.day, hit[0], mv))
        return todays

    def _move_in(self, days: dict[date, list[_Item]], target: date, item: _Item,
                 mv: Move) -> None:
        if not self.in_term(target):
            self.r.err(mv.line, f"{mv.path}.to_date", f"{target} is outside the term")
            return
        slot = find_slot(mv.to, item.entry.grid, self.spec.grids, self.spec.default_grid)
        if isinstance(slot, str):
            self.r.err(mv.line, f"{mv.path}.to", slot)
        else:
            days[target].append(_Item(item.entry, slot))

    def _listing(self, items: list[_Item]) -> str:
        if not items:
            return " (there are no lessons that day)"
        return "; lessons that day: " + ", ".join(it.entry.describe() for it in items)

    def _lessons(self, day: date, items: list[_Item]) -> list[PlannedLesson]:
        items = sorted(items, key=lambda it: (it.slot.start, it.slot.end))
        if len(items) > MAX_LESSONS_PER_DAY:
            self.r.err(items[0].entry.line, items[0].entry.path,
                       f"more than {MAX_LESSONS_PER_DAY} lessons on {_day_name(day)}")
            return []
        out: list[PlannedLesson] = []
        ids: set[str] = set()
        prev: _Item | None = None  # the kept lesson that ends last so far
        for it in items:
            if prev is not None and it.slot.start < prev.slot.end:
                pair = (prev.entry.line, it.entry.line)
                if pair not in self.reported:
                    self.reported.add(pair)
                    self.r.err(it.entry.line, it.entry.path,
                               f"{it.entry.describe()} ({_span(it.slot)}) overlaps "
                               f"{prev.entry.describe()} ({_span(prev.slot)}, line "
                               f"{prev.entry.line}) on {_day_name(day)}")
                continue
            prev = it
            lesson_id = f"{day.isoformat()}-{it.slot.key}-{it.entry.code}"
            if lesson_id in ids:
                self.r.err(it.entry.line, it.entry.path, f"two lessons get the id {lesson_id}")
                continue
            ids.add(lesson_id)
            e = it.entry
            out.append(PlannedLesson(
                lesson_id=lesson_id, course=e.course, teacher=e.teacher, role=e.role,
                start=datetime.combine(day, it.slot.start, self.tz),
                end=datetime.combine(day, it.slot.end, self.tz),
                live=e.live, source="timetable", live_names=e.live_names,
            ))
        return out


def _span(slot: Slot) -> str:
    return f"{slot.start:%H:%M}-{slot.end:%H:%M}"


def _day_name(day: date) -> str:
    return f"{day.isoformat()} ({WEEKDAY_NAMES[day.weekday()].capitalize()})"
