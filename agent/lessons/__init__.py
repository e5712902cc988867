"""Lessons: the timetable, the lesson state machine and the evidence each lesson leaves.

``load_schedule`` picks the reader by file name: ``.ics``/``.ical`` is iCalendar
(``ical.py``), anything else the YAML timetable (``timetable_yaml.py``, docs/timetable.md); the
model both give is ``timetable.py``. The iCalendar libraries are imported only when needed.
"""

from __future__ import annotations

from pathlib import Path

from agent.lessons.timetable import PlannedLesson, Schedule, Timetable, TimetableError

__all__ = ["PlannedLesson", "Schedule", "Timetable", "TimetableError", "load_schedule"]


def load_schedule(path: str | Path, tz: str) -> Schedule:
    """The timetable in ``path``; raises TimetableError listing every problem (file:line)."""
    path = Path(path)
    if path.suffix.lower() in (".ics", ".ical", ".ifb", ".icalendar"):
        from agent.lessons.ical import load_ical

        return load_ical(path, tz)
    from agent.lessons.timetable_yaml import load_timetable

    return load_timetable(path, tz)
