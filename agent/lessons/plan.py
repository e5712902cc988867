"""The schedule: the timetable expanded for the coming days, as the platform receives it.

The platform cannot count a lesson that never happened unless it knows it was planned, also when
the terminal is switched off. So the agent publishes what its timetable plans for the next
``lessons.schedule_days`` local dates (the retained ``schedule`` kind, docs/contract.md), each
lesson with the ``lesson_id`` its evidence will carry. The lessons come from the timetable's own
expansion (``lessons_between``: term, odd/even weeks, holidays, make-up days, overrides, iCalendar
recurrence), the same call the lesson manager plans with, never from a second reading of the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agent.lessons.timetable import PlannedLesson, Schedule
from agent.records import rfc3339

#: Lessons in one schedule at most (31 days of 30 lessons is under it): bounds the message.
MAX_LESSONS = 1000


def window(today: date, days: int) -> tuple[date, date]:
    """The local dates a schedule made on ``today`` covers, both inclusive."""
    return today, today + timedelta(days=max(1, days) - 1)


def planned_on(timetable: Schedule, tz: ZoneInfo, first: date, last: date) -> list[PlannedLesson]:
    """Lessons whose scheduled start falls on a local date in ``first .. last``, by start."""
    start = datetime.combine(first, time(), tz)
    end = datetime.combine(last + timedelta(days=1), time(), tz)
    return [p for p in timetable.lessons_between(start, end)
            if first <= p.start.astimezone(tz).date() <= last]


def schedule_data(
    timetable: Schedule | None, tz_name: str, today: date, days: int,
    sink_names: Callable[[PlannedLesson], list[str]],
) -> dict[str, Any]:
    """The ``data`` of a ``schedule`` record (agent/schemas/schedule-data.json)."""
    tz = ZoneInfo(tz_name)
    first, last = window(today, days)
    lessons = [] if timetable is None else planned_on(timetable, tz, first, last)[:MAX_LESSONS]
    body: dict[str, Any] = {
        "timezone": tz_name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "lessons": [_lesson(p, tz, sink_names(p)) for p in lessons],
    }
    version = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())
    source = None if timetable is None else {
        "format": getattr(timetable, "format", "yaml"),
        "sha256": getattr(timetable, "sha256", None),
    }
    return {"timezone": tz_name, "from": body["from"], "to": body["to"],
            "days": (last - first).days + 1, "timetable": source,
            "version": version.hexdigest()[:16], "lessons": body["lessons"]}


def _lesson(p: PlannedLesson, tz: ZoneInfo, live: list[str]) -> dict[str, Any]:
    return {
        "lesson_id": p.lesson_id,
        "date": p.start.astimezone(tz).date().isoformat(),
        "scheduled_start": rfc3339(p.start.timestamp()),
        "scheduled_end": rfc3339(p.end.timestamp()),
        "course": p.course,
        "teacher": p.teacher,
        "role": p.role,
        "live": live,
    }
