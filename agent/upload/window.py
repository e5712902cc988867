"""When an upload may run: never during a live lesson (by default), and only in given hours.

``upload.hours`` lists local time windows ``HH:MM-HH:MM`` in the timetable's time zone; a window
may pass midnight (``18:00-07:30``), and an empty list means any time. The school's link is
shared with the live lessons of every classroom, so a region can keep uploads to the evening.
"""

from __future__ import annotations

from datetime import datetime, time


def _parse(window: str) -> tuple[time, time]:
    start, _, end = window.partition("-")
    return time.fromisoformat(start), time.fromisoformat(end)


def in_hours(hours: list[str], when: datetime) -> bool:
    """Whether the local time of ``when`` falls in one of ``hours`` (always, when empty)."""
    if not hours:
        return True
    now = when.time().replace(second=0, microsecond=0)
    for window in hours:
        start, end = _parse(window)
        if start == end:
            return True
        if (start <= now < end) if start < end else (now >= start or now < end):
            return True
    return False
