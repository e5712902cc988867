"""What a report reads from the database: one function per kind of fact, each one query that
PostgreSQL aggregates (a region's month of metrics is hundreds of millions of rows; Python only
sees their runs, boots, sums and counts).

Times come back as Unix seconds. ``school`` narrows every query to one school (None: all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from collector.reports.timeline import Interval, Run

#: Usage records up to this long after the month still count for it: a boot's end is reported
#: by the first usage record of the next boot, which can come days later.
BOOT_REPORT_DAYS = 31
#: Peripheral events that are faults (at warning or error: a USB stick pulled out is not).
FAULT_EVENTS = ("camera_lost", "microphone_lost", "peripheral_removed", "display_disconnected")

Key = tuple[str, str]  # (school, device)


def _t(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def _school(alias: str = "") -> str:
    col = f"{alias}.school" if alias else "school"
    return f"(%(school)s::text IS NULL OR {col} = %(school)s)"


class Reader:
    def __init__(self, conn: psycopg.Connection, school: str | None) -> None:
        self.conn = conn
        self.school = school

    def _rows(self, sql: str, **params: Any) -> Iterator[tuple[Any, ...]]:
        for k in ("lo", "hi", "before"):  # instants; other numbers stay numbers
            if k in params:
                params[k] = _dt(params[k])
        yield from self.conn.execute(sql, {"school": self.school, **params})

    def terminals(self, before: float) -> list[Key]:
        """Terminals the collector had heard of before ``before``."""
        return [(r[0], r[1]) for r in self._rows(
            f"SELECT school, device FROM terminals WHERE first_seen < %(before)s AND {_school()}",
            before=before)]

    def link_runs(self, span: Interval, hold: float) -> dict[Key, list[Run]]:
        """Observations of the broker link in ``span``, as runs: metrics records (their
        ``connected`` column: ``agent.mqtt.connected``, kept at ingest so that no metrics
        document is parsed here), connects (``online`` state, at the connect time) and graceful
        stops (``offline``/``shutdown``, persistent). A last will says nothing about when the
        link went (its ``ts`` is when that connection was made)."""
        sql = f"""
        WITH obs AS (
            SELECT school, device, ts, connected AS up, false AS persistent
            FROM metrics
            WHERE ts >= %(lo)s AND ts < %(hi)s AND connected IS NOT NULL AND {_school()}
          UNION ALL
            SELECT school, device, ts, status = 'online', status = 'offline'
            FROM terminal_states
            WHERE ts >= %(lo)s AND ts < %(hi)s AND {_school()}
              AND (status = 'online' OR reason = 'shutdown')
        ), edges AS (  -- one pass: does a run start here, does it end here?
            SELECT school, device, ts, up, persistent,
                   (up IS DISTINCT FROM lag(up) OVER w
                    OR ts - lag(ts) OVER w > %(hold)s * interval '1 second'
                    OR lag(persistent) OVER w) IS TRUE AS starts,
                   (up IS DISTINCT FROM lead(up) OVER w
                    OR lead(ts) OVER w - ts > %(hold)s * interval '1 second'
                    OR persistent) IS TRUE AS ends
            FROM obs WINDOW w AS (PARTITION BY school, device ORDER BY ts, up)
        )
        SELECT school, device, ts, up, persistent, starts, ends FROM edges
        WHERE starts OR ends ORDER BY school, device, ts, up"""
        out: dict[Key, list[Run]] = {}
        first = 0.0
        for s, d, ts, up, persistent, starts, ends in self._rows(sql, lo=span[0], hi=span[1],
                                                                 hold=hold):
            if starts:
                first = ts.timestamp()
            if ends:
                out.setdefault((s, d), []).append(Run(first, ts.timestamp(), up, persistent))
        return out

    def boots(self, span: Interval) -> dict[Key, list[Interval]]:
        """Power-on intervals (usage ``power_on``, deduplicated by start, latest end) that
        overlap ``span``, and the one before each (so the time off between them is known)."""
        sql = f"""
        SELECT school, device, (p ->> 'start')::timestamptz AS s, max((p ->> 'end')::timestamptz)
        FROM usage u, jsonb_array_elements(u.data -> 'power_on') p
        WHERE u.ts >= %(lo)s AND u.ts < %(hi)s + %(late)s * interval '1 day' AND {_school('u')}
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
        out: dict[Key, list[Interval]] = {}
        for s, d, start, end in self._rows(sql, lo=span[0] - 86400, hi=span[1],
                                           late=BOOT_REPORT_DAYS):
            if end is not None and end >= start:
                out.setdefault((s, d), []).append((start.timestamp(), end.timestamp()))
        return out

    def apps(self, span: Interval) -> dict[Key, dict[str, tuple[float, float]]]:
        """Seconds each catalogued application ran and was active, per terminal. A usage
        period that straddles the span counts pro rata."""
        sql = f"""
        SELECT school, device, a.key, sum((a.value ->> 'running_s')::float8 * f),
               sum((a.value ->> 'active_s')::float8 * f)
        FROM (SELECT school, device, data,
                     CASE WHEN period_end > period_start THEN
                         greatest(0, extract(epoch FROM least(period_end, %(hi)s)
                                                        - greatest(period_start, %(lo)s)))
                         / extract(epoch FROM period_end - period_start)
                     WHEN ts >= %(lo)s AND ts < %(hi)s THEN 1 ELSE 0 END AS f
              FROM usage
              WHERE ts >= %(lo)s AND ts < %(hi)s + interval '1 day' AND {_school()}) u,
             jsonb_each(u.data -> 'apps') a
        WHERE f > 0 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
        out: dict[Key, dict[str, tuple[float, float]]] = {}
        for s, d, app, running, active in self._rows(sql, lo=span[0], hi=span[1]):
            out.setdefault((s, d), {})[app] = (float(running or 0), float(active or 0))
        return out

    def faults(self, span: Interval) -> dict[Key, dict[str, int]]:
        sql = f"""
        SELECT school, device, type, count(*) FROM events
        WHERE type = ANY(%(types)s) AND severity IN ('warning', 'error')
          AND ts >= %(lo)s AND ts < %(hi)s AND {_school()}
        GROUP BY 1, 2, 3"""
        out: dict[Key, dict[str, int]] = {}
        for s, d, kind, n in self._rows(sql, types=list(FAULT_EVENTS), lo=span[0], hi=span[1]):
            out.setdefault((s, d), {})[kind] = int(n)
        return out

    def gaps(self) -> list[Gap]:
        """Every sequence gap, with the observation times of the records on either side (of the
        range still missing while open, of the range first opened once closed; None: no such
        record, e.g. below a terminal's first record)."""
        records = " UNION ALL ".join(
            f"SELECT school, device, seq, ts FROM {t}"
            for t in ("metrics", "usage", "events", "inventories", "schedules", "other_records"))
        sql = f"""
        WITH r AS NOT MATERIALIZED ({records})
        SELECT g.school, g.device, g.first_seq, g.last_seq, g.opened_first_seq,
               g.opened_last_seq, g.opened_at, g.closed_at IS NULL, g.lost_at IS NOT NULL,
               g.explained,
               (SELECT max(ts) FROM r WHERE r.school = g.school AND r.device = g.device
                  AND r.seq = CASE WHEN g.closed_at IS NULL THEN g.first_seq
                                   ELSE g.opened_first_seq END - 1),
               (SELECT min(ts) FROM r WHERE r.school = g.school AND r.device = g.device
                  AND r.seq = CASE WHEN g.closed_at IS NULL THEN g.last_seq
                                   ELSE g.opened_last_seq END + 1)
        FROM seq_gaps g WHERE {_school('g')}
        ORDER BY g.school, g.device, g.first_seq"""
        return [Gap((r[0], r[1]), r[2], r[3], (r[4], r[5], r[6]), r[7], r[8], r[9],
                    _t(r[10]), _t(r[11])) for r in self._rows(sql)]

    def lessons(self, span: Interval) -> list[LessonRow]:
        """Lessons whose scheduled (else actual) start is in ``span``, and every part of
        their chains (a continuation carries its root's times, but is fetched by root anyway)."""
        sql = f"""
        WITH roots AS (
            SELECT school, device, coalesce(root_lesson_id, lesson_id) AS root FROM lessons
            WHERE coalesce(scheduled_start, actual_start) >= %(lo)s
              AND coalesce(scheduled_start, actual_start) < %(hi)s AND {_school()}
        )
        SELECT l.school, l.device, l.lesson_id, coalesce(l.root_lesson_id, l.lesson_id),
               l.continues, l.course, l.teacher, l.role, l.trigger, l.scheduled_start,
               l.scheduled_end, l.actual_start, l.actual_end, l.duration_s, l.ended_by,
               l.live_seconds, l.recorded_s, l.interruption_count, l.planned,
               l.started_seq IS NOT NULL, l.ended_seq IS NOT NULL, l.missed_reason,
               l.missed_seq IS NOT NULL
        FROM lessons l JOIN (SELECT DISTINCT * FROM roots) r
          ON r.school = l.school AND r.device = l.device
         AND r.root = coalesce(l.root_lesson_id, l.lesson_id)
        ORDER BY 1, 2, 4, coalesce(l.actual_start, l.scheduled_start), 3"""
        return [LessonRow(*r[:9], *(_t(x) for x in r[9:13]), *r[13:])
                for r in self._rows(sql, lo=span[0], hi=span[1])]


@dataclass(frozen=True)
class Gap:
    terminal: Key
    first_seq: int
    last_seq: int
    origin: tuple[int, int, datetime]  # the range first opened, and when: pieces share it
    open: bool
    lost: bool
    explained: str | None
    before: float | None
    after: float | None

    @property
    def span(self) -> Interval:
        """The time the missing records were observed in, as far as the records around
        them tell."""
        return (self.before if self.before is not None else float("-inf"),
                self.after if self.after is not None else float("inf"))


@dataclass(frozen=True)
class LessonRow:
    school: str
    device: str
    lesson_id: str
    root: str
    continues: str | None
    course: str | None
    teacher: str | None
    role: str | None
    trigger: str | None
    scheduled_start: float | None
    scheduled_end: float | None
    actual_start: float | None
    actual_end: float | None
    duration_s: float | None
    ended_by: str | None
    live_seconds: float | None
    recorded_s: float | None
    interruption_count: int | None
    planned: bool
    started: bool
    ended: bool
    missed_reason: str | None
    missed: bool
