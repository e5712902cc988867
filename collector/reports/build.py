"""One month's report: read the database (``query``), compute the figures (``figures``), as a
plain dict (the JSON form; CSV and HTML are drawn from it)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from collector import __version__
from collector.config import ReportsConfig
from collector.reports import figures
from collector.reports.calendar import (
    Interval,
    SchoolClock,
    clocks,
    iso,
    parse_month,
    term_progress,
)
from collector.reports.query import Key, Reader

Progress = Callable[[str], None]


def build(conn: psycopg.Connection, cfg: ReportsConfig, month: str, school: str | None = None,
          now: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The report of ``month`` (YYYY-MM, local time), for one school or all."""
    now = time.time() if now is None else now
    say = progress or (lambda _msg: None)
    year, mon = parse_month(month)
    region, per_school = clocks(cfg)
    reader = Reader(conn, school)
    with _snapshot(conn):
        return _build(reader, cfg, year, mon, region, per_school, now, say)


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """Every query sees the same database: collectors keep writing while a report runs."""
    level, read_only = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            # Sorting a month of metrics by terminal and time: in memory, not on disk.
            conn.execute("SET LOCAL work_mem = '64MB'")
            yield
    finally:
        conn.isolation_level, conn.read_only = level, read_only


def _build(reader: Reader, cfg: ReportsConfig, year: int, mon: int, region: SchoolClock,
           per_school: dict[str, SchoolClock], now: float, say: Progress) -> dict[str, Any]:
    def clock(s: str) -> SchoolClock:
        return per_school.get(s, region)

    # One wide span covers every school's month whatever its zone (UTC-12 .. UTC+14).
    lo, hi = region.month(year, mon)
    wide: Interval = (lo - 86400, hi + 86400)

    say("lessons")
    term = term_progress(cfg, region, region.month(year, mon), now)
    lesson_span = (min(wide[0], term.start - 86400), wide[1]) if term else wide
    all_lessons = figures.chains(reader.lessons(lesson_span), now)
    month_lessons = [x for x in all_lessons if _in_month(clock(x.school), x.start, year, mon)]

    say("terminals: link, boots, applications, faults, gaps")
    known = set(reader.terminals(hi))
    runs = reader.link_runs(wide, cfg.online_hold_s)
    boots = reader.boots(wide)
    apps = reader.apps((lo, hi))
    faults = reader.faults((lo, hi))
    gaps = reader.gaps()
    keys: set[Key] = known | set(runs) | set(apps) | set(faults)
    keys |= {(x.school, x.device) for x in month_lessons}
    keys |= {k for k, b in boots.items() if any(e > lo and s < hi for s, e in b)}
    say(f"terminals: {len(keys)}")
    terminals = []
    for key in sorted(keys):
        c = clock(key[0])
        month_span = c.month(year, mon)
        terminals.append(figures.terminal_figures(
            key, c, month_span, now, cfg, runs.get(key, []), boots.get(key, []),
            apps.get(key, {}), faults.get(key, {}), gaps))

    schools = sorted({k[0] for k in keys} | {x.school for x in month_lessons})
    by_school = [figures.school_figures(s, [x for x in month_lessons if x.school == s])
                 for s in schools]
    term_lessons = [x for x in all_lessons if term and term.start <= x.start < term.as_of]
    teachers = figures.teacher_figures(month_lessons, term_lessons, cfg, term, reader.school)

    return {
        "month": f"{year:04d}-{mon:02d}",
        "school": reader.school,
        "generated_at": iso(now),
        "as_of": iso(min(now, hi)),
        "collector_version": __version__,
        "settings": {
            "timezone": cfg.timezone,
            "school_day": {"start": cfg.school_day.start, "end": cfg.school_day.end},
            "online_hold_s": cfg.online_hold_s,
            "weight": cfg.weight,
            "term": None if term is None else {
                "name": term.term.name, "start": term.term.start, "end": term.term.end,
                "school_days": term.total_days, "school_days_elapsed": term.elapsed_days,
                "elapsed_share": round(term.share, 4)},
        },
        "terminals": [dataclasses.asdict(t) for t in terminals],
        "schools": [_school(s) for s in by_school],
        "teachers": [dataclasses.asdict(t) for t in teachers],
    }


def _school(fig: figures.SchoolFigures) -> dict[str, Any]:
    counts = {f.name: getattr(fig, f.name) for f in dataclasses.fields(figures.Counts)}
    return {"school": fig.school, **counts, "missed_reasons": fig.missed_reasons,
            "by_role": {role: dataclasses.asdict(c) for role, c in fig.by_role.items()}}


def _in_month(clock: SchoolClock, when: float, year: int, mon: int) -> bool:
    lo, hi = clock.month(year, mon)
    return lo <= when < hi
