"""Timetables as schools keep them: the lessons a terminal should give, whatever file they came
from.

A timetable is read from a YAML file (:mod:`agent.lessons.timetable_yaml`, format:
docs/timetable.md; expanded over its term by :mod:`agent.lessons.timetable_term`) or from an
iCalendar file (:mod:`agent.lessons.ical`). Either way the lesson manager sees a
:class:`Schedule` of :class:`PlannedLesson`, every instant an aware datetime in the configured
zone, and a bad file is a :class:`TimetableError` naming every problem, never anything else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ROLES = ("lecturing", "receiving")
SOURCES = ("timetable", "ical")
#: How far ahead ``current_and_next`` looks for the next lesson when the schedule is open-ended.
HORIZON_DAYS = 400
MAX_FILE_BYTES = 1_000_000

#: Subject codes for lesson ids, so "数学" gives "2026-11-23-p1-math" rather than a hash.
SUBJECT_CODES = {
    "语文": "chinese", "数学": "math", "英语": "english", "科学": "science", "音乐": "music",
    "美术": "art", "体育": "pe", "体育与健康": "pe", "道德与法治": "ethics", "品德与社会": "ethics",
    "信息技术": "it", "信息科技": "it", "书法": "calligraphy", "综合实践": "practice",
    "劳动": "labour", "心理健康": "wellbeing", "物理": "physics", "化学": "chemistry",
    "生物": "biology", "历史": "history", "地理": "geography", "政治": "politics",
    "思想政治": "politics", "班会": "class-meeting", "阅读": "reading",
}


class TimetableError(Exception):
    """Problems in a timetable file; ``str()`` lists each as ``file:line: key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PlannedLesson:
    """One lesson on one date: what the lesson manager starts and stops.

    ``live`` holds the URLs that replace ``media.live`` for this lesson (``()`` means record only,
    ``None`` means use ``media.live``); ``live_names`` gives each URL's sink name ("" = unnamed),
    so the evidence can say which receiving school got how many seconds without publishing URLs.
    """

    lesson_id: str
    course: str
    teacher: str
    role: str
    start: datetime
    end: datetime
    live: tuple[str, ...] | None = None
    source: str = "timetable"
    live_names: tuple[str, ...] = ()

    def sink_name(self, index: int) -> str:
        return self.live_names[index] if index < len(self.live_names) else ""


class Schedule(Protocol):
    """What the lesson manager needs from a timetable, whatever file it came from."""

    def lessons_between(self, start: datetime, end: datetime) -> list[PlannedLesson]: ...

    def current_and_next(
        self, now: datetime
    ) -> tuple[PlannedLesson | None, PlannedLesson | None]: ...


def zone(tz: str) -> ZoneInfo:
    """The zone named ``tz``, or TimetableError (a typo must not silently mean UTC)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise TimetableError([f"lessons.timezone: unknown time zone {tz!r} ({exc})"]) from None


def course_code(course: str) -> str:
    """A stable ASCII slug for a course, for lesson ids (which become file and topic names)."""
    name = course.strip()
    if name in SUBJECT_CODES:
        return SUBJECT_CODES[name]
    slug = "-".join(re.findall(r"[a-z0-9]+", name.lower()))[:32].strip("-")
    return slug or "c" + hashlib.sha256(name.encode()).hexdigest()[:7]


def _aware(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got {when!r}")
    return when


class DaySchedule:
    """Lessons indexed by local date; answers both queries from ``_day`` alone."""

    tz: ZoneInfo
    #: SHA-256 of the file's bytes as loaded (None when built in memory): which version of the
    #: timetable a terminal runs, published with its schedule.
    sha256: str | None = None
    #: The file format, as the schedule names it: "yaml" or "ical".
    format = "yaml"

    def _day(self, day: date) -> tuple[PlannedLesson, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _span(self) -> tuple[date, date] | None:
        """First and last date that can hold a lesson, or None when open-ended."""
        return None

    def _dates(self, first: date, last: date) -> Iterable[date]:
        span = self._span()
        if span is not None:
            first, last = max(first, span[0]), min(last, span[1])
        day = first
        while day <= last:
            yield day
            day += timedelta(days=1)

    def lessons_between(self, start: datetime, end: datetime) -> list[PlannedLesson]:
        """Lessons overlapping ``[start, end)``, sorted by start."""
        start, end = _aware(start, "start"), _aware(end, "end")
        first = start.astimezone(self.tz).date() - timedelta(days=1)
        last = end.astimezone(self.tz).date()
        found = [
            lesson for day in self._dates(first, last) for lesson in self._day(day)
            if lesson.end > start and lesson.start < end
        ]
        return sorted(found, key=lambda x: (x.start, x.end, x.lesson_id))

    def current_and_next(
        self, now: datetime
    ) -> tuple[PlannedLesson | None, PlannedLesson | None]:
        """The lesson on at ``now`` (the earliest started, if several) and the next one to start."""
        now = _aware(now, "now")
        today = now.astimezone(self.tz).date()
        on = [
            lesson for day in self._dates(today - timedelta(days=1), today)
            for lesson in self._day(day) if lesson.start <= now < lesson.end
        ]
        current = min(on, key=lambda x: (x.start, x.lesson_id)) if on else None
        for day in self._dates(today, today + timedelta(days=HORIZON_DAYS)):
            later = [lesson for lesson in self._day(day) if lesson.start > now]
            if later:
                return current, min(later, key=lambda x: (x.start, x.lesson_id))
        return current, None


class Timetable(DaySchedule):
    """An expanded timetable: concrete lessons per local date."""

    def __init__(
        self, days: Mapping[date, Sequence[PlannedLesson]], tz: ZoneInfo, name: str = ""
    ) -> None:
        self.tz = tz
        self.name = name
        self._days = {
            d: tuple(sorted(ls, key=lambda x: (x.start, x.lesson_id)))
            for d, ls in days.items() if ls
        }

    @classmethod
    def from_lessons(cls, lessons: Iterable[PlannedLesson], tz: str | ZoneInfo) -> Timetable:
        """A timetable of exactly these lessons (tests, commands, other sources)."""
        zi = tz if isinstance(tz, ZoneInfo) else zone(tz)
        days: dict[date, list[PlannedLesson]] = {}
        for lesson in lessons:
            days.setdefault(lesson.start.astimezone(zi).date(), []).append(lesson)
        return cls(days, zi)

    def _day(self, day: date) -> tuple[PlannedLesson, ...]:
        return self._days.get(day, ())

    def _span(self) -> tuple[date, date] | None:
        if not self._days:
            return (date.max, date.min)  # empty: nothing to iterate
        return min(self._days), max(self._days)

    def __len__(self) -> int:
        return sum(len(v) for v in self._days.values())


def read_file(path: Path, limit: int) -> bytes:
    """The bytes of a timetable file of at most ``limit`` bytes, or TimetableError saying why
    not (read bounded: a wrong path to a huge file must not fill the memory)."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise TimetableError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise TimetableError([f"{path}: cannot read: {exc}"]) from None
    if len(raw) > limit:
        raise TimetableError([f"{path}: larger than {limit} bytes: not a timetable"])
    return raw

