"""The lesson manager's state file (``lesson.json`` in the state directory).

It holds the running lesson, rewritten atomically every few seconds and at every transition,
and the ids of the lessons of the last day. After a kill or a power cut the next start reads it
to report the lost lesson as ``agent_interrupted`` and to continue it if it is still on; a
corrupt file is set aside (``lesson.json.corrupt``) and the manager starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.lessons.timetable import ROLES
from agent.statefile import atomic_write_text, load_state

log = logging.getLogger(__name__)

VERSION = 1
TRIGGERS = ("timetable", "manual", "command")


@dataclass(frozen=True)
class Seen:
    """A lesson started recently (remembered for a day, so a restart never starts it twice)."""

    resume_n: int
    done: bool  # ended for good (schedule, by hand, ...): the timetable must not start it again
    until: float


@dataclass
class LessonIdentity:
    """What a lesson is and when it was planned and started: the same for the running lesson
    and for what the state file keeps of it."""

    lesson_id: str
    base_id: str
    resume_n: int
    course: str
    teacher: str
    role: str
    trigger: str
    scheduled_start: float | None
    scheduled_end: float | None
    planned_duration_s: float | None
    actual_start: float
    until: float  # wall time after which the lesson is over (for the history and resumes)


@dataclass
class SavedLesson(LessonIdentity):
    """The running lesson as the state file keeps it: after a kill, what the next start
    reports as interrupted (and continues, if it is still on). Never changed once made."""

    elapsed_s: float
    continues: str | None

    @classmethod
    def parse(cls, d: dict[str, Any]) -> SavedLesson:
        def opt(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        role, trigger = str(d["role"]), str(d["trigger"])
        if role not in ROLES or trigger not in TRIGGERS:
            raise ValueError(f"bad role or trigger {role!r}/{trigger!r}")
        return cls(
            lesson_id=str(d["lesson_id"]), base_id=str(d["base_id"]),
            resume_n=int(d["resume_n"]), course=str(d["course"]), teacher=str(d["teacher"]),
            role=role, trigger=trigger, scheduled_start=opt("scheduled_start"),
            scheduled_end=opt("scheduled_end"), planned_duration_s=opt("planned_duration_s"),
            actual_start=float(d["actual_start"]), elapsed_s=max(0.0, float(d["elapsed_s"])),
            until=float(d["until"]), continues=d.get("continues") or None,
        )


class LessonState:
    """Reads and writes the state file; a write that fails is logged once until one succeeds."""

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = Path(path)
        self._device_id = device_id
        self._failing = False

    def load(self) -> tuple[dict[str, Seen], SavedLesson | None] | None:
        """The history and the lesson that was running; None when there is nothing to recover
        (no file, or one that cannot be read or is corrupt: logged, and set aside)."""
        def parse(state: dict[str, Any]) -> tuple[dict[str, Seen], SavedLesson | None]:
            history = {
                str(k): Seen(int(v["resume_n"]), bool(v["done"]), float(v["until"]))
                for k, v in state.get("history", {}).items()
            }
            current = state.get("current")
            return history, SavedLesson.parse(current) if current is not None else None

        return load_state(self.path, "lesson state", parse, set_aside=True)

    def save(self, current: SavedLesson | None, history: dict[str, Seen]) -> None:
        """Write atomically (temporary file, fsync, rename): a power cut leaves the old file or
        the new one, whole."""
        body = json.dumps({
            "v": VERSION, "device": self._device_id,
            "current": dataclasses.asdict(current) if current is not None else None,
            "history": {k: dataclasses.asdict(v) for k, v in history.items()},
        }, ensure_ascii=False, sort_keys=True)
        try:
            atomic_write_text(self.path, body)
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.error("cannot write the lesson state %s: %s (a crash now would lose the "
                          "running lesson's evidence)", self.path, exc)
            self._failing = True
