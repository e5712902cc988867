"""Missed lessons: planned lessons that did not happen, with the reason the agent can tell.

Two ways a planned lesson is missed (docs/contract.md, ``lesson_missed``):

* its time passed while the terminal was off or the agent was not running. ``{state_dir}/
  lessons-missed.json`` holds when the agent was last seen running (refreshed every minute and at
  a clean stop) and in which boot. At the next start every lesson of the timetable that began
  since then (at most ``lessons.missed_lookback_days`` back), that the lesson manager never
  started and that can no longer be joined late, is reported once. The boot tells the reason: the
  same boot means the terminal was on without the agent (``agent_not_running``); a new boot that
  began after the lesson's start means it was off (``terminal_off``);
* the lesson ran but its media never produced anything (``media_failed``), reported by the lesson
  manager when the lesson ends.

Reported ids are kept in the same file (bounded by the look-back), so a restart never reports a
lesson again. The event is committed before its id is saved: a crash between the two repeats it
once at the next start (at least once; the platform deduplicates by ``lesson_id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.boot import Boot
from agent.lessons.timetable import PlannedLesson
from agent.records import Record, event, rfc3339
from agent.statefile import atomic_write_json, load_state

log = logging.getLogger(__name__)

STATE_FILE = "lessons-missed.json"
REASONS = ("terminal_off", "agent_not_running", "media_failed")
MAX_DETAIL = 500
#: Reported ids kept at most (a month of 30 lessons a day is well under it).
MAX_REPORTED = 2000
#: Reported ids are kept this long after the look-back (a clock stepped back a day is covered).
KEEP_EXTRA_S = 86400.0


@dataclass(frozen=True, slots=True)
class LastSeen:
    """When the agent was last seen running, and in which boot."""

    at: float
    boot_id: str | None
    boot_time: float


def reason_for(start: float, last: LastSeen, boot: Boot, now: float) -> tuple[str, str]:
    """Why a lesson starting at ``start`` (after ``last``) was missed, and a sentence saying so."""
    seen = rfc3339(last.at)
    if boot.same(last.boot_id, last.boot_time):
        return "agent_not_running", (
            f"the terminal was on (same boot, since {rfc3339(boot.time)}) but the agent was not "
            f"running: last seen running at {seen}, started again at {rfc3339(now)}")
    if start < boot.time:
        return "terminal_off", (
            f"the terminal was off or restarting at the scheduled start: the agent was last seen "
            f"running at {seen} in an earlier boot, and this boot began at {rfc3339(boot.time)}")
    return "agent_not_running", (
        f"the terminal was on (switched on at {rfc3339(boot.time)}) but the agent started only "
        f"at {rfc3339(now)}")


def find_missed(
    lessons: Iterable[PlannedLesson], last: LastSeen, boot: Boot, now: float, since: float,
    started: Callable[[str], bool], joinable: Callable[[PlannedLesson, float], bool],
    reported: Iterable[str],
) -> list[tuple[PlannedLesson, str, str]]:
    """Lessons that began in ``[max(last.at, since), now]`` and were neither started nor can be
    joined late, nor reported before; each with its reason and detail."""
    floor = max(last.at, since)
    done = set(reported)
    out = []
    for p in lessons:
        start = p.start.timestamp()
        if not floor <= start <= now or p.lesson_id in done or started(p.lesson_id) \
                or joinable(p, now):
            continue
        out.append((p, *reason_for(start, last, boot, now)))
    return out


def missed_event(*, lesson_id: str, course: str, teacher: str, role: str, scheduled_start: float,
                 scheduled_end: float, reason: str, detail: str,
                 ts: float | None = None) -> Record:
    """The ``lesson_missed`` event (agent/schemas/lesson-evidence.json#/$defs/lesson_missed)."""
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
    what = {"terminal_off": "the terminal was off",
            "agent_not_running": "the agent was not running",
            "media_failed": "its media produced nothing"}[reason]
    record = event("lesson_missed", "warning",
                   f"lesson {lesson_id} ({course or 'no course given'}) planned "
                   f"{rfc3339(scheduled_start)} .. {rfc3339(scheduled_end)} was missed: {what}",
                   lesson_id=lesson_id, course=course, teacher=teacher, role=role,
                   scheduled_start=rfc3339(scheduled_start),
                   scheduled_end=rfc3339(scheduled_end), reason=reason,
                   detail=detail[:MAX_DETAIL])
    return record if ts is None else Record(record.kind, record.data, ts)


def planned_missed_event(p: PlannedLesson, reason: str, detail: str, ts: float) -> Record:
    return missed_event(lesson_id=p.lesson_id, course=p.course, teacher=p.teacher, role=p.role,
                        scheduled_start=p.start.timestamp(), scheduled_end=p.end.timestamp(),
                        reason=reason, detail=detail, ts=ts)


class RunLog:
    """``{state_dir}/lessons-missed.json``: last seen running, and the lessons reported missed.

    ``previous`` is what the file said when the agent started (None on a first start, or when
    the file was unreadable: then nothing can be said about the time before)."""

    def __init__(self, state_dir: Path, boot: Boot) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.boot = boot
        self.previous: LastSeen | None = None
        self.reported: dict[str, float] = {}  # lesson id -> scheduled end (for pruning)
        self._failed = False
        self._load()

    def _load(self) -> None:
        def parse(state: Any) -> tuple[LastSeen, dict[str, float]]:
            boot_id = state.get("boot_id")
            return (LastSeen(float(state["last_running"]),
                             boot_id if isinstance(boot_id, str) else None,
                             float(state["boot_time"])),
                    {str(k): float(v) for k, v in dict(state.get("reported", {})).items()})

        loaded = load_state(self.path, "missed-lesson state", parse)
        if loaded is not None:
            self.previous, self.reported = loaded

    def beat(self, now: float | None = None) -> None:
        """Record that the agent runs now (every minute, and at a clean stop)."""
        self._save(time.time() if now is None else now)

    def mark(self, reported: Iterable[tuple[str, float]], now: float, keep_s: float) -> None:
        """Remember reported lessons (id, scheduled end); forget those older than ``keep_s``."""
        self.reported.update(reported)
        floor = now - keep_s - KEEP_EXTRA_S
        kept = sorted(((k, v) for k, v in self.reported.items() if v >= floor),
                      key=lambda kv: kv[1])[-MAX_REPORTED:]
        self.reported = dict(kept)
        self._save(now)

    def _save(self, now: float) -> None:
        state = {"last_running": now, "boot_id": self.boot.id, "boot_time": self.boot.time,
                 "reported": self.reported}
        try:
            atomic_write_json(self.path, state)
            self._failed = False
        except OSError as exc:  # a full or read-only disk must not stop the agent
            if not self._failed:
                log.warning("cannot write the missed-lesson state %s: %s (missed lessons may be "
                            "reported late or twice)", self.path, exc)
            self._failed = True
