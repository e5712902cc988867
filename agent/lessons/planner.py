"""When the schedule goes out and missed lessons are reported: the planner's own small thread.

* At start: the lessons missed while the agent was away (agent.lessons.missed), then the schedule.
* Then the schedule again whenever what it says changes: a reloaded timetable, new
  ``lessons.*`` settings, or a new local date (the window moves, so at least once a day). The
  version digest suppresses a reload that changed nothing.
* Every ``HEARTBEAT_S`` (and at a clean stop) "last seen running" is written, which is what the
  next start measures missed lessons from.

Records go to ``emit`` (the outbox); nothing here waits for the network. A timetable that could
not be read at start publishes no schedule: the broker keeps the last good one, and the
``timetable_invalid`` event says why (docs/contract.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.boot import Boot
from agent.lessons.manager import joinable
from agent.lessons.missed import RunLog, find_missed, planned_missed_event
from agent.lessons.plan import planned_on, schedule_data
from agent.lessons.timetable import PlannedLesson, Schedule
from agent.records import Record

log = logging.getLogger(__name__)

#: How often "last seen running" is written; a lesson starting within this of a kill was
#: started by the lesson manager, which reports it as interrupted instead.
HEARTBEAT_S = 60.0
#: The local date is checked at least this often besides at the computed midnight, so a wall
#: clock stepped forward (NTP, a date fixed by hand) moves the window within seconds.
DATE_CHECK_S = 5.0
DAY_S = 86400.0


@dataclass(frozen=True)
class PlanSettings:
    """The ``lessons.*`` settings the planner uses."""

    timezone: str
    schedule_days: int
    missed_lookback_days: float


class Planner:
    def __init__(
        self, *, state_dir: Path, settings: PlanSettings,
        sink_names: Callable[[PlannedLesson], list[str]], started: Callable[[str], bool],
        emit: Callable[[Record], None], wall: Callable[[], float] = time.time,
        boot: Boot | None = None,
    ) -> None:
        self._settings = settings
        self._sink_names = sink_names
        self._started = started
        self._emit = emit
        self._wall = wall
        self._runlog = RunLog(state_dir, boot or Boot.current())
        self._lock = threading.Lock()
        self._timetable: Schedule | None = None
        self._broken = False
        self._published: tuple[date, str] | None = None  # (local date, version) last sent
        self._changed = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the daemon tells it ----------------------------------------------------------------

    def set_timetable(self, timetable: Schedule | None, broken: bool = False) -> None:
        """The timetable in use (None: none configured, or ``broken``: it could not be read)."""
        with self._lock:
            self._timetable, self._broken, self._changed = timetable, broken, True
        self._wake.set()

    def configure(self, settings: PlanSettings) -> None:
        with self._lock:
            self._settings, self._changed = settings, True
        self._wake.set()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Report what was missed while the agent was away, publish the schedule, then keep both
        up to date on a thread of its own. Call before the lesson manager starts ticking (its
        memory of started lessons is what tells a missed lesson from an interrupted one)."""
        try:
            self._report_missed()
        except Exception:  # never let this stop the agent from starting
            log.exception("could not work out the lessons missed while the agent was away")
        self._runlog.beat(self._wall())
        self._step()
        self._thread = threading.Thread(target=self._run, name="planner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._runlog.beat(self._wall())

    def _run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_S
        while not self._stop.is_set():
            self._wake.wait(self._sleep_s(next_beat))
            self._wake.clear()
            if self._stop.is_set():
                break
            self._step()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                self._runlog.beat(self._wall())

    def _sleep_s(self, next_beat: float) -> float:
        """Until the next heartbeat, date check or just past the next local midnight."""
        tz = ZoneInfo(self._settings.timezone)
        here = datetime.fromtimestamp(self._wall(), tz)
        midnight = datetime.combine(here.date() + timedelta(days=1), datetime.min.time(), tz)
        return max(0.05, min(next_beat - time.monotonic(), DATE_CHECK_S,
                             midnight.timestamp() - here.timestamp() + 0.05))

    # -- the schedule ----------------------------------------------------------------------------

    def _step(self) -> None:
        try:
            self._publish_if_changed()
        except Exception:  # an iCalendar series that fails far from load time, a bad zone...
            log.exception("could not build the schedule; trying again at the next change")

    def _publish_if_changed(self) -> None:
        now = self._wall()
        with self._lock:
            settings, timetable, broken = self._settings, self._timetable, self._broken
            changed, self._changed = self._changed, False
        today = datetime.fromtimestamp(now, ZoneInfo(settings.timezone)).date()
        if broken or (not changed and self._published is not None
                      and self._published[0] == today):
            return
        data = schedule_data(timetable, settings.timezone, today, settings.schedule_days,
                             self._sink_names)
        if self._published == (today, data["version"]):
            return  # a reload that changed nothing the platform sees
        self._emit(Record("schedule", data, now))
        self._published = (today, data["version"])
        log.info("schedule published: %d lesson(s) from %s to %s (version %s)",
                 len(data["lessons"]), data["from"], data["to"], data["version"])

    # -- missed lessons --------------------------------------------------------------------------

    def _report_missed(self) -> None:
        last = self._runlog.previous
        with self._lock:
            settings, timetable = self._settings, self._timetable
        lookback_s = settings.missed_lookback_days * DAY_S
        if last is None or timetable is None or lookback_s <= 0:
            return
        now = self._wall()
        since = max(last.at, now - lookback_s)
        if since >= now:
            return  # the clock was stepped back since: nothing can have been missed
        tz = ZoneInfo(settings.timezone)
        lessons = planned_on(timetable, tz, datetime.fromtimestamp(since, tz).date(),
                             datetime.fromtimestamp(now, tz).date())
        missed = find_missed(lessons, last, self._runlog.boot, now, since, self._started,
                             joinable, self._runlog.reported)
        for p, reason, detail in missed:
            self._emit(planned_missed_event(p, reason, detail, now))
            log.warning("lesson %s (%s) was missed: %s", p.lesson_id, p.course, detail)
        if missed:
            self._runlog.mark([(p.lesson_id, p.end.timestamp()) for p, _, _ in missed], now,
                              lookback_s)
