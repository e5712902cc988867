"""School days, school hours, months and terms in a school's own time zone.

Everything here is pure: dates and instants in, instants (UTC) out. Months start at local
midnight of their first day; school hours are a daily window on school days (weekdays minus
holidays, plus make-up days, 调休).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from collector.config import ReportsConfig, TermConfig

Interval = tuple[float, float]  # [start, end) in Unix seconds

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class ReportError(Exception):
    """A report cannot be made as asked (bad month, contradictory configuration)."""


def parse_month(text: str) -> tuple[int, int]:
    m = _MONTH.match(text)
    if m is None:
        raise ReportError(f"--month {text[:20]!r}: expected YYYY-MM, e.g. 2026-09")
    return int(m[1]), int(m[2])


def _date_set(items: list[str]) -> frozenset[date]:
    out: set[date] = set()
    for item in items:
        first, _, last = item.partition("..")
        d, end = date.fromisoformat(first), date.fromisoformat(last or first)
        while d <= end:
            out.add(d)
            d += timedelta(days=1)
    return frozenset(out)


@dataclass(frozen=True)
class Calendar:
    weekdays: frozenset[int]
    holidays: frozenset[date]
    make_up_days: frozenset[date]

    @classmethod
    def from_config(cls, cfg: ReportsConfig) -> Calendar:
        return cls(frozenset(cfg.calendar.weekdays), _date_set(cfg.calendar.holidays),
                   _date_set(cfg.calendar.make_up_days))

    def is_school_day(self, day: date) -> bool:
        return day in self.make_up_days or (day.isoweekday() in self.weekdays
                                            and day not in self.holidays)

    def school_days(self, first: date, last: date) -> list[date]:
        """School days from ``first`` to ``last``, both included."""
        days, d = [], first
        while d <= last:
            if self.is_school_day(d):
                days.append(d)
            d += timedelta(days=1)
        return days


@dataclass(frozen=True)
class SchoolClock:
    """One school's time zone, daily window and calendar."""

    zone: ZoneInfo
    day_start: time
    day_end: time
    calendar: Calendar

    def instant(self, day: date, at: time = time()) -> float:
        return datetime.combine(day, at, self.zone).timestamp()

    def local_date(self, when: float) -> date:
        return datetime.fromtimestamp(when, self.zone).date()

    def month(self, year: int, month: int) -> Interval:
        first = date(year, month, 1)
        nxt = date(year + month // 12, month % 12 + 1, 1)
        return self.instant(first), self.instant(nxt)

    def school_hours(self, span: Interval) -> list[Interval]:
        """The daily windows of the school days within ``span``, clipped to it."""
        lo, hi = span
        out: list[Interval] = []
        d, last = self.local_date(lo), self.local_date(hi)
        while d <= last:
            if self.calendar.is_school_day(d):
                a = max(lo, self.instant(d, self.day_start))
                b = min(hi, self.instant(d, self.day_end))
                if a < b:
                    out.append((a, b))
            d += timedelta(days=1)
        return out


def clocks(cfg: ReportsConfig) -> tuple[SchoolClock, dict[str, SchoolClock]]:
    """The region's clock and each configured school's (ReportError on a bad window)."""
    cal = Calendar.from_config(cfg)

    def make(tz: str, day: tuple[time, time], where: str) -> SchoolClock:
        if day[1] <= day[0]:
            raise ReportError(f"{where}.school_day: the end ({day[1]:%H:%M}) must be after the "
                              f"start ({day[0]:%H:%M}), on the same day")
        return SchoolClock(ZoneInfo(tz), day[0], day[1], cal)

    region = make(cfg.timezone, cfg.school_day.times(), "reports")
    schools = {
        school: make(s.timezone or cfg.timezone, (s.school_day or cfg.school_day).times(),
                     f"reports.schools.{school}")
        for school, s in cfg.schools.items()}
    return region, schools


@dataclass(frozen=True)
class TermProgress:
    """How far a term has gone at ``as_of``, in school days (a week of holidays is no
    teaching time, so it does not make a teacher fall behind)."""

    term: TermConfig
    start: float
    end: float
    as_of: float
    elapsed_days: int
    total_days: int

    @property
    def share(self) -> float:
        return self.elapsed_days / self.total_days if self.total_days else 1.0


def term_progress(cfg: ReportsConfig, clock: SchoolClock, month: Interval,
                  now: float) -> TermProgress | None:
    """The term the month belongs to (the latest one begun by the month's end), as of the end
    of the month or now, whichever is earlier; None when no term has begun by then."""
    as_of = min(month[1], now)
    found = None
    for i, term in enumerate(cfg.terms):
        first, last = date.fromisoformat(term.start), date.fromisoformat(term.end)
        if last < first:
            raise ReportError(f"reports.terms[{i}] ({term.name}): end {term.end} is before "
                              f"start {term.start}")
        start, end = clock.instant(first), clock.instant(last + timedelta(days=1))
        if start < as_of and end > month[0] and (found is None or start > found[1]):
            found = (term, start, end, first, last)
    if found is None:
        return None
    term, start, end, first, last = found
    cut = min(as_of, end)
    total = clock.calendar.school_days(first, last)
    elapsed = [d for d in total if clock.instant(d) < cut]
    return TermProgress(term, start, end, cut, len(elapsed), len(total))


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
