"""iCalendar timetables: for schools whose timetable already lives in a calendar system.

Recurrence (RRULE, RDATE, EXDATE, instances overridden by RECURRENCE-ID) is left to
``recurring_ical_events``; this module only maps events to lessons (docs/timetable.md) and checks
the file at load, so that a bad file fails when it is loaded, with the line of the VEVENT at fault,
rather than in the middle of a lesson. Occurrences are expanded a week at a time and cached,
because the lesson manager asks every half second.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

# Google-style calendars give their zone as X-WR-TIMEZONE only; without this, their lessons
# would be read at UTC times.
from x_wr_timezone import to_standard as _standardise

from agent.lessons.timetable import (
    HORIZON_DAYS,
    MAX_FILE_BYTES,
    ROLES,
    DaySchedule,
    PlannedLesson,
    TimetableError,
    course_code,
    read_file,
    zone,
)
from agent.urls import SINK_NAME_RE, SINK_NAME_RULE, SINK_RULE, SINK_URL_RE, redact_url

_TEACHER_LINE = re.compile(r"^\s*(?:teacher|教师|老师)\s*[:\uff1a]\s*(.+?)\s*$",
                           re.IGNORECASE | re.MULTILINE)
_ROLE_WORDS = {"lecturing": "lecturing", "主讲": "lecturing", "主讲端": "lecturing",
               "receiving": "receiving", "接收": "receiving", "接收端": "receiving",
               "听课": "receiving"}
_EPOCH = date(2000, 1, 3)  # a Monday: week chunks start on Mondays
_CACHE_CHUNKS = 128


def load_ical(path: Path | str, tz: str) -> IcalTimetable:
    """Read and check an .ics file; raise TimetableError naming what is wrong and where."""
    path = Path(path)
    raw = read_file(path, MAX_FILE_BYTES * 10)
    timetable = loads_ical(raw, tz, name=str(path))
    timetable.sha256 = hashlib.sha256(raw).hexdigest()
    return timetable


def loads_ical(data: bytes | str, tz: str, name: str = "<ical>") -> IcalTimetable:
    zi = zone(tz)
    text = data.decode("utf-8-sig", errors="replace") if isinstance(data, bytes) else data
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except Exception as exc:  # icalendar raises ValueError, KeyError, IndexError, ...
        raise TimetableError([f"{name}: not a valid iCalendar file: {_first_line(exc)}"]) from None
    if not isinstance(calendar, icalendar.Calendar):
        raise TimetableError([f"{name}: expected BEGIN:VCALENDAR at the top"])
    try:
        calendar = _standardise(calendar)
    except Exception as exc:
        raise TimetableError([f"{name}: bad X-WR-TIMEZONE: {_first_line(exc)}"]) from None
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() == "BEGIN:VEVENT"]
    problems: list[str] = []
    events = calendar.walk("VEVENT")
    for i, ev in enumerate(events):
        where = f"{name}:{lines[i]}" if i < len(lines) else name
        try:
            problems.extend(f"{where}: {_label(ev)}: {p}" for p in _check_event(ev))
        except Exception as exc:  # icalendar raises many types; a bad event is the file's fault
            problems.append(f"{where}: VEVENT cannot be read: {_first_line(exc)}")
    if not problems:
        problems = _check_recurrence(calendar, events, lines, zi, name)
    if problems:
        raise TimetableError(problems)
    return IcalTimetable(calendar, zi, name)


class IcalTimetable(DaySchedule):
    """Lessons from an iCalendar file, answered through the same two queries as Timetable."""

    format = "ical"

    def __init__(self, calendar: icalendar.Calendar, tz: ZoneInfo, name: str = "") -> None:
        self.tz = tz
        self.name = name
        self._query = recurring_ical_events.of(calendar)
        self._masters = {
            str(ev.get("UID")): ev for ev in calendar.walk("VEVENT")
            if ev.get("UID") is not None and ev.get("RECURRENCE-ID") is None
        }
        self._chunks: dict[int, dict[date, tuple[PlannedLesson, ...]]] = {}
        self._lock = threading.Lock()

    def _day(self, day: date) -> tuple[PlannedLesson, ...]:
        k = (day - _EPOCH).days // 7
        with self._lock:
            chunk = self._chunks.get(k)
        if chunk is None:
            chunk = self._expand(_EPOCH + timedelta(days=7 * k))
            with self._lock:
                if len(self._chunks) >= _CACHE_CHUNKS:
                    self._chunks.pop(next(iter(self._chunks)))
                self._chunks[k] = chunk
        return chunk.get(day, ())

    def _expand(self, first: date) -> dict[date, tuple[PlannedLesson, ...]]:
        start = datetime.combine(first, time(), self.tz)
        end = start + timedelta(days=7)
        out: dict[date, list[PlannedLesson]] = {}
        ids: set[str] = set()
        found = [
            lesson for ev in self._query.between(start, end)
            if (lesson := self._lesson(ev)) is not None and start <= lesson.start < end
        ]
        for lesson in sorted(found, key=lambda x: (x.start, x.end, x.course)):
            unique, n = lesson.lesson_id, 1
            while unique in ids:
                n += 1
                unique = f"{lesson.lesson_id}-{n}"
            ids.add(unique)
            if unique != lesson.lesson_id:
                lesson = replace(lesson, lesson_id=unique)
            out.setdefault(lesson.start.date(), []).append(lesson)
        return {d: tuple(ls) for d, ls in out.items()}

    def _lesson(self, ev: icalendar.Event) -> PlannedLesson | None:
        span = _span(ev, self.tz)
        if span is None or str(ev.get("STATUS", "")).upper() == "CANCELLED":
            return None
        master = self._masters.get(str(ev.get("UID")), ev)
        course = str(ev.get("SUMMARY", "") or master.get("SUMMARY", "")).strip()
        if not course:
            return None
        urls, names = _live(ev) or _live(master) or ((), ())
        has_live = ev.get("X-LIVE-URL") is not None or master.get("X-LIVE-URL") is not None
        start, end = span
        return PlannedLesson(
            lesson_id=f"{start.date().isoformat()}-{start:%H%M}-{course_code(course)}",
            course=course,
            teacher=_teacher(ev) or _teacher(master),
            role=_role(ev) or _role(master) or "lecturing",
            start=start, end=end,
            live=tuple(urls) if has_live else None,
            source="ical",
            live_names=tuple(names) if has_live else (),
        )


# -- mapping one event ----------------------------------------------------------------------------


def _span(ev: icalendar.Event, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """Aware start and end; None for all-day and empty events (they are not lessons)."""
    start = ev.get("DTSTART")
    if start is None or not isinstance(start.dt, datetime):
        return None
    begin = _localise(start.dt, tz)
    if ev.get("DTEND") is not None:
        end = ev["DTEND"].dt
        if not isinstance(end, datetime):
            return None
        finish = _localise(end, tz)
    elif ev.get("DURATION") is not None:
        finish = begin + ev["DURATION"].dt
    else:
        return None
    return (begin, finish) if finish > begin else None


def _localise(value: datetime, tz: ZoneInfo) -> datetime:
    """Floating times are local to the school; others are converted to its zone."""
    return value.replace(tzinfo=tz) if value.tzinfo is None else value.astimezone(tz)


def _teacher(ev: icalendar.Event) -> str:
    explicit = ev.get("X-TEACHER")
    if explicit is not None and str(explicit).strip():
        return str(explicit).strip()
    m = _TEACHER_LINE.search(str(ev.get("DESCRIPTION", "")))
    if m:
        return m[1]
    organizer = ev.get("ORGANIZER")
    if organizer is not None:
        return str(getattr(organizer, "params", {}).get("CN", "")).strip()
    return ""


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        cats = getattr(item, "cats", None)
        if cats is not None:
            out.extend(str(c) for c in cats)
        else:
            out.extend(str(item).split(","))
    return [w.strip().lower() for w in out if w.strip()]


def _role(ev: icalendar.Event) -> str | None:
    for word in _words(ev.get("X-ROLE")) + _words(ev.get("CATEGORIES")):
        if word in _ROLE_WORDS:
            return _ROLE_WORDS[word]
    return None


def _live(ev: icalendar.Event) -> tuple[list[str], list[str]] | None:
    value = ev.get("X-LIVE-URL")
    if value is None:
        return None
    urls, names = [], []
    for item in value if isinstance(value, list) else [value]:
        url = str(item).strip()
        if url:
            urls.append(url)
            names.append(str(getattr(item, "params", {}).get("NAME", "")))
    return urls, names


def _check_event(ev: icalendar.Event) -> Iterable[str]:
    errors = getattr(ev, "errors", []) or []
    for prop, problem in errors:
        yield f"{prop}: {problem}"
    if errors:  # a property icalendar could not parse raises on any use: check no further
        return
    if ev.get("DTSTART") is None:
        yield "DTSTART is missing"
    if ev.get("RECURRENCE-ID") is None and not str(ev.get("SUMMARY", "")).strip():
        yield "SUMMARY (the course) is missing or empty"
    declared = _words(ev.get("X-ROLE"))
    if declared and declared[0] not in _ROLE_WORDS:
        yield f"X-ROLE must be one of {', '.join(ROLES)}, got {declared[0]!r}"
    live = _live(ev)
    for url, name in zip(*(live or ([], [])), strict=True):
        if not SINK_URL_RE.match(url):
            yield f"X-LIVE-URL {redact_url(url)!r}: expected {SINK_RULE}"
        if name and not SINK_NAME_RE.match(name):
            yield f"X-LIVE-URL NAME={name!r}: {SINK_NAME_RULE}"


def _check_recurrence(calendar: icalendar.Calendar, events: list[icalendar.Event],
                      lines: list[int], tz: ZoneInfo, name: str) -> list[str]:
    """Expand a year around today once, so that a bad RRULE fails at load."""
    now = datetime.now(tz)
    window = (now - timedelta(days=31), now + timedelta(days=HORIZON_DAYS))
    try:
        list(recurring_ical_events.of(calendar).between(*window))
        return []
    except Exception as exc:  # find the events at fault, one calendar each
        problems = []
        for i, ev in enumerate(events):
            single = icalendar.Calendar()
            for tzc in calendar.walk("VTIMEZONE"):
                single.add_component(tzc)
            single.add_component(ev)
            try:
                list(recurring_ical_events.of(single).between(*window))
            except Exception as one:
                where = f"{name}:{lines[i]}" if i < len(lines) else name
                problems.append(f"{where}: {_label(ev)}: cannot expand: {_first_line(one)}")
        return problems or [f"{name}: cannot expand the calendar: {_first_line(exc)}"]


def _label(ev: icalendar.Event) -> str:
    summary = str(ev.get("SUMMARY", "")).strip() or "(no SUMMARY)"
    return f"VEVENT {summary!r}" + (f" UID {ev.get('UID')}" if ev.get("UID") else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
