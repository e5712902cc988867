"""The lessons table: one row per (school, device, lesson_id), built idempotently.

Sources, in any order and any number of times:
- ``lesson_started`` (agent/schemas/lesson-evidence.json): identity, late_s, live sinks, media
  error. The first one counts.
- ``lesson_ended``: the lesson's evidence. The first one counts, except that a proper one
  replaces an ``agent_interrupted`` one (sent after a kill, when the real end may still come).
- ``lesson_missed``: the agent says a planned lesson did not happen, and why.
- ``schedule`` (retained, agent/schemas/schedule-data.json): the terminal's planned lessons
  for its local dates ``from``..``to``. It decides for the lessons starting from its own ``ts``
  to the end of ``to`` (its window): the newest schedule (highest seq) whose window covers a
  lesson's start decides whether it is planned. A lesson it lists is planned; a lesson an older
  schedule planned in its window and it does not list is no longer planned (moved or
  cancelled); an older schedule arriving late changes nothing a newer one covers.
Evidence wins over the plan for the identity columns (course, teacher, role, times).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.types.json import Jsonb

from collector.validation import Accepted

LESSON_EVENTS = frozenset({"lesson_started", "lesson_ended", "lesson_missed"})

# Identity columns: set by any evidence; by a plan or a missed-report only while no evidence.
_IDENTITY = ("course", "teacher", "role", "trigger", "scheduled_start", "scheduled_end",
             "actual_start", "continues", "root_lesson_id")
_STARTED = ("late_s", "live_sinks", "media_error", "started_seq")
_ENDED = ("actual_end", "duration_s", "ended_by", "live_s", "live_seconds", "recorded_s",
          "interruptions", "interruption_count", "segments", "segment_bytes", "ended_seq")
_MISSED = ("missed_seq", "missed_reason")


def _upsert(columns: Sequence[str], groups: dict[str, tuple[Sequence[str], str]]) -> str:
    """INSERT ... ON CONFLICT DO UPDATE where each group of columns changes only when its
    condition (over ``lessons`` = the stored row, ``EXCLUDED`` = the new one) holds."""
    cols = ["school", "device", "lesson_id", *columns, "historical"]
    sets = []
    for group, cond in groups.values():
        sets += [f"{c} = CASE WHEN {cond} THEN EXCLUDED.{c} ELSE lessons.{c} END" for c in group]
    sets.append("historical = lessons.historical AND EXCLUDED.historical")
    sets.append("updated_at = now()")
    return (f"INSERT INTO lessons ({', '.join(cols)}) "
            f"VALUES ({', '.join(f'%({c})s' for c in cols)}) "
            f"ON CONFLICT (school, device, lesson_id) DO UPDATE SET {', '.join(sets)}")


_NO_EVIDENCE = "lessons.started_seq IS NULL AND lessons.ended_seq IS NULL"
_SQL_STARTED = _upsert((*_IDENTITY, *_STARTED), {
    "identity": (_IDENTITY, "lessons.ended_seq IS NULL"),
    "started": (_STARTED, "lessons.started_seq IS NULL"),
})
_ENDED_WINS = ("(lessons.ended_seq IS NULL OR (lessons.ended_by = 'agent_interrupted' "
               "AND EXCLUDED.ended_by <> 'agent_interrupted'))")
_SQL_ENDED = _upsert((*_IDENTITY, *_ENDED), {
    "identity": (_IDENTITY, _ENDED_WINS),
    "ended": (_ENDED, _ENDED_WINS),
})
_MISSED_IDENTITY = ("course", "teacher", "role", "scheduled_start", "scheduled_end")
_SQL_MISSED = _upsert((*_MISSED_IDENTITY, *_MISSED), {
    "identity": (_MISSED_IDENTITY, _NO_EVIDENCE),
    "missed": (_MISSED, "lessons.missed_seq IS NULL"),
})
_ROOT = """SELECT root_lesson_id FROM lessons
           WHERE school = %s AND device = %s AND lesson_id = %s"""
# Continuations stored before this lesson named it (or a lesson between) as their root: give
# the whole chain below it this lesson's root.
_REROOT = """
WITH RECURSIVE chain(lesson_id) AS (
    SELECT lesson_id FROM lessons
    WHERE school = %(school)s AND device = %(device)s AND continues = %(lesson_id)s
  UNION
    SELECT l.lesson_id FROM lessons l JOIN chain c ON l.continues = c.lesson_id
    WHERE l.school = %(school)s AND l.device = %(device)s)
UPDATE lessons SET root_lesson_id = %(root_lesson_id)s
WHERE school = %(school)s AND device = %(device)s
  AND lesson_id IN (SELECT lesson_id FROM chain)
  AND root_lesson_id IS DISTINCT FROM %(root_lesson_id)s"""


def apply_events(conn: psycopg.Connection, events: Sequence[Accepted]) -> None:
    """Upsert the lessons named by lesson events (in key order, so that two collectors never
    lock two lesson rows in opposite orders)."""
    ordered = sorted(events, key=lambda e: (e.school, e.device,
                                            str((e.data.get("details") or {}).get("lesson_id")),
                                            e.seq or 0))
    with conn.cursor() as cur:
        for ev in ordered:
            d = ev.data.get("details") or {}
            kind = ev.data.get("type")
            row = _identity(ev, d)
            if kind == "lesson_started":
                row["root_lesson_id"] = _root(cur, ev, d)
                row.update(late_s=d.get("late_s"), live_sinks=Jsonb(d.get("live", [])),
                           media_error=d.get("media_error"), started_seq=ev.seq)
                cur.execute(_SQL_STARTED, row)
                cur.execute(_REROOT, row)
            elif kind == "lesson_ended":
                row["root_lesson_id"] = _root(cur, ev, d)
                live = d.get("live_s") or {}
                segments = d.get("segments") or []
                row.update(
                    actual_end=_time(d.get("actual_end")), duration_s=d.get("duration_s"),
                    ended_by=d.get("ended_by"), live_s=Jsonb(live),
                    live_seconds=max((float(v) for v in live.values()), default=0.0),
                    recorded_s=d.get("recorded_s"),
                    interruptions=Jsonb(d.get("interruptions") or []),
                    interruption_count=len(d.get("interruptions") or []),
                    segments=len(segments),
                    segment_bytes=sum(s.get("bytes") or 0 for s in segments),
                    ended_seq=ev.seq)
                cur.execute(_SQL_ENDED, row)
                cur.execute(_REROOT, row)
            elif kind == "lesson_missed":
                row.update(missed_seq=ev.seq, missed_reason=_reason(d))
                cur.execute(_SQL_MISSED, row)


def _identity(ev: Accepted, d: dict[str, Any]) -> dict[str, Any]:
    return {
        "school": ev.school, "device": ev.device, "lesson_id": d.get("lesson_id"),
        "course": d.get("course"), "teacher": d.get("teacher"), "role": d.get("role"),
        "trigger": d.get("trigger"), "scheduled_start": _time(d.get("scheduled_start")),
        "scheduled_end": _time(d.get("scheduled_end")),
        "actual_start": _time(d.get("actual_start")), "continues": d.get("continues"),
        "historical": ev.historical,
    }


def _root(cur: psycopg.Cursor[Any], ev: Accepted, d: dict[str, Any]) -> str:
    """The first lesson of a chain of continuations (the lesson itself when it continues none).
    A continuation stored before the lesson it continues names that lesson as its root."""
    parent = d.get("continues")
    if not parent:
        return str(d.get("lesson_id"))
    row = cur.execute(_ROOT, (ev.school, ev.device, parent)).fetchone()
    return str(row[0]) if row and row[0] else str(parent)


def _reason(d: dict[str, Any]) -> str | None:
    value = d.get("reason")
    return str(value) if value is not None else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- schedules -----------------------------------------------------------------------------------

# A listed lesson becomes planned unless a newer schedule covers its start (that one decided).
_SQL_PLAN = f"""
INSERT INTO lessons AS lessons (school, device, lesson_id, course, teacher, role, trigger,
                                scheduled_start, scheduled_end, planned, planned_seq, historical)
SELECT %(school)s, %(device)s, %(lesson_id)s, %(course)s, %(teacher)s, %(role)s, 'timetable',
       %(scheduled_start)s, %(scheduled_end)s, true, %(seq)s, %(historical)s
WHERE NOT EXISTS (SELECT 1 FROM schedules n
                  WHERE n.school = %(school)s AND n.device = %(device)s AND n.seq > %(seq)s
                    AND n.window_start <= %(scheduled_start)s
                    AND %(scheduled_start)s < n.window_end)
ON CONFLICT (school, device, lesson_id) DO UPDATE SET
    planned = true, planned_seq = EXCLUDED.planned_seq,
    course = CASE WHEN {_NO_EVIDENCE} THEN EXCLUDED.course ELSE lessons.course END,
    teacher = CASE WHEN {_NO_EVIDENCE} THEN EXCLUDED.teacher ELSE lessons.teacher END,
    role = CASE WHEN {_NO_EVIDENCE} THEN EXCLUDED.role ELSE lessons.role END,
    scheduled_start = CASE WHEN {_NO_EVIDENCE} THEN EXCLUDED.scheduled_start
                           ELSE lessons.scheduled_start END,
    scheduled_end = CASE WHEN {_NO_EVIDENCE} THEN EXCLUDED.scheduled_end
                         ELSE lessons.scheduled_end END,
    updated_at = now()
WHERE lessons.planned_seq IS NULL OR lessons.planned_seq < EXCLUDED.planned_seq
"""

# Lessons an older schedule planned in this window and this one does not list: not planned.
_SQL_WITHDRAW = """
UPDATE lessons SET planned = false, planned_seq = %(seq)s, updated_at = now()
WHERE school = %(school)s AND device = %(device)s AND planned
  AND planned_seq < %(seq)s
  AND scheduled_start >= %(window_start)s AND scheduled_start < %(window_end)s
  AND NOT (lesson_id = ANY(%(listed)s))"""


def apply_schedules(conn: psycopg.Connection, schedules: Sequence[Accepted]) -> None:
    """Plan and withdraw lessons for schedule records already stored in ``schedules`` (the
    ingest stored them with their window, collector/storage.py)."""
    with conn.cursor() as cur:
        for rec in sorted(schedules, key=lambda r: (r.school, r.device, r.seq or 0)):
            window_start, window_end = schedule_window(rec.data, rec.ts)
            entries = schedule_entries(rec.data)
            base = {"school": rec.school, "device": rec.device, "seq": rec.seq,
                    "historical": rec.historical}
            for entry in entries:
                cur.execute(_SQL_PLAN, {**base, **entry})
            if window_start is not None and window_end is not None:
                cur.execute(_SQL_WITHDRAW, {**base, "window_start": window_start,
                                            "window_end": window_end,
                                            "listed": [e["lesson_id"] for e in entries]})


def schedule_window(data: dict[str, Any], ts: datetime
                    ) -> tuple[datetime | None, datetime | None]:
    """What a ``schedule`` record (agent/schemas/schedule-data.json) decides: the lessons
    starting from its own ``ts`` (lessons already started or passed are settled by their
    evidence or by ``lesson_missed``) to the end of its last local date ``to``. (None, None)
    when the dates or the time zone cannot be read: its lessons are planned, none withdrawn."""
    try:
        zone = ZoneInfo(str(data.get("timezone")))
        first = date.fromisoformat(str(data.get("from")))
        last = date.fromisoformat(str(data.get("to")))
        start = max(ts, datetime.combine(first, time.min, zone).astimezone(UTC))
        return start, datetime.combine(last + timedelta(days=1), time.min, zone).astimezone(UTC)
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return None, None


def schedule_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The planned lessons of a ``schedule`` record's data."""
    entries = []
    for item in data.get("lessons") or []:
        if not isinstance(item, dict) or not item.get("lesson_id"):
            continue
        sched_start = _time(item.get("scheduled_start"))
        if sched_start is None:
            continue
        entries.append({
            "lesson_id": str(item["lesson_id"]), "course": item.get("course"),
            "teacher": item.get("teacher"), "role": item.get("role"),
            "scheduled_start": sched_start, "scheduled_end": _time(item.get("scheduled_end")),
        })
    return entries
