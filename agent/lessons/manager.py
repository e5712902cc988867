"""The lesson manager: starts and stops lessons and turns each into one piece of evidence.

State machine: idle -> live (at a timetable lesson's start, or on a manual/command start) ->
ending (media stopping) -> idle. Offline-first: nothing here waits on the broker or the network;
events go to ``emit`` (the outbox), media is driven through :class:`MediaControl`.

Durations come from the monotonic clock, so a wall-clock jump (NTP, a technician fixing the date)
can never make a lesson negative or endless; the wall clock only decides *which* lesson the
timetable says is on and stamps the reported instants (``actual_end = actual_start + duration``).

The state file holds the running lesson (rewritten every few seconds, atomically) and the ids of
today's lessons. After a kill or power cut the next start reports the lost lesson as
``agent_interrupted`` and continues it as ``<id>-resumed-N`` if it is still on; a lesson stopped by
hand is not restarted by the timetable, even across an agent restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agent.lessons.evidence import MediaSummary
from agent.lessons.lessonstate import LessonIdentity, LessonState, SavedLesson, Seen
from agent.lessons.missed import missed_event
from agent.lessons.timetable import ROLES, PlannedLesson, Schedule, course_code, zone
from agent.records import Record, Severity, event, rfc3339
from agent.urls import redact_host

log = logging.getLogger(__name__)

TICK_S = 0.5
#: With no lesson running the manager sleeps until the next planned start, at most this long
#: (a stepped wall clock is noticed within it). Ticking every 0.5 s cost ~1.2 CPU s/h idle.
IDLE_TICK_S = 5.0
#: How often the running lesson is written to the state file (bounds what a power cut loses).
PERSIST_S = 10.0
#: Retry a media start that raised, this often, for as long as the lesson runs.
MEDIA_RETRY_S = 30.0
#: A timetable lesson with less than this left is not started (the agent came up at its end).
MIN_REMAINING_S = 30.0
#: A start later than this after the scheduled start is reported as late.
LATE_AFTER_S = 2.0
#: Lesson ids are remembered this long after their end (a day covers any restart).
HISTORY_S = 86400.0
MIN_DURATION_S, MAX_DURATION_S = 10.0, 86400.0

ENDED_BY = ("schedule", "duration", "manual", "command", "preempted", "agent_stopping",
            "agent_interrupted")


class LessonError(Exception):
    """A lesson request that cannot be honoured; the message is for the person who asked."""


class MediaControl(Protocol):
    """What the manager needs from media (agent.media.supervisor.MediaSupervisor)."""

    def start(self, lesson_id: str, live: list[tuple[str, str]]) -> None: ...

    def stop(self) -> dict[str, Any] | None: ...

    def running(self) -> bool: ...


@dataclass
class _Running(LessonIdentity):
    """The live lesson (mutable; only changed under the manager's lock)."""

    start_mono: float
    deadline_mono: float
    sinks: list[tuple[str, str]]
    late_s: float = 0.0
    continues: str | None = None
    media_started: bool = False
    media_error: str | None = None
    media_down_mono: float | None = None
    next_retry_mono: float = 0.0
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    persisted_mono: float = 0.0
    phase: str = "live"

    def wall_at(self, mono: float) -> float:
        """A reported instant: the start plus monotonic time, immune to wall-clock jumps."""
        return self.actual_start + max(0.0, mono - self.start_mono)

    def saved(self, now_m: float) -> SavedLesson:
        """What the state file keeps of it: the lesson so far, should the agent die now."""
        identity = {f.name: getattr(self, f.name) for f in fields(LessonIdentity)}
        return SavedLesson(**identity, elapsed_s=max(0.0, now_m - self.start_mono),
                           continues=self.continues)


class LessonManager:
    def __init__(
        self, *, timetable: Schedule | None, device_id: str, default_live: list[tuple[str, str]],
        manual_duration_s: float, media: MediaControl, emit: Callable[[Record], None],
        state_path: Path, wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic, tz: str = "Asia/Shanghai",
    ) -> None:
        self._timetable = timetable
        self._device_id = device_id
        self._default_live = list(default_live)
        self._manual_duration_s = manual_duration_s
        self._media = media
        self._emit_record = emit
        self._state = LessonState(Path(state_path), device_id)
        self._wall, self._mono = wall, mono
        self._tz = zone(tz)
        self._lock = threading.Lock()  # guards the fields below; never held across media or emit
        self._busy = threading.RLock()  # serialises transitions; held across media.stop()
        self._current: _Running | None = None
        self._history: dict[str, Seen] = {}
        self._pending_manual: dict[str, Any] | None = None
        self._last_manual_id = ""
        self._planning_error = ""
        self._stop_event = threading.Event()
        self._wake = threading.Event()  # a new timetable: plan again now
        self._upcoming: PlannedLesson | None = None  # the next planned start, as of the last tick
        self._thread: threading.Thread | None = None
        self._recover()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="lessons", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and end a running lesson cleanly (``agent_stopping``)."""
        self._stop_event.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=60)
        with self._busy:
            if self._current is not None and self._current.phase == "live":
                self._end("agent_stopping")

    def _run(self) -> None:
        while not self._stop_event.is_set():
            wait = TICK_S
            try:
                self.tick()
                wait = self._next_wait()
            except Exception:  # one bad tick must not end lesson tracking
                log.exception("lesson manager tick failed")
            self._wake.wait(wait)
            self._wake.clear()

    def _next_wait(self) -> float:
        """Seconds to sleep: a running (or resumable) lesson is ticked every ``TICK_S``;
        otherwise until the next planned start, within ``TICK_S`` .. ``IDLE_TICK_S``."""
        with self._busy:
            if self._current is not None or self._pending_manual is not None:
                return TICK_S
            upcoming = self._upcoming  # what the tick just planned
        if upcoming is None:
            return IDLE_TICK_S
        return max(TICK_S, min(IDLE_TICK_S, upcoming.start.timestamp() - self._wall()))

    # -- the state machine ------------------------------------------------------------------------

    def tick(self) -> None:
        """One step: end what is due, keep the running lesson healthy, start what is on."""
        with self._busy:
            now_w, now_m = self._wall(), self._mono()
            run = self._current
            if run is not None and now_m >= run.deadline_mono:
                self._end("schedule" if run.trigger == "timetable" else "duration")
                run = None
            elif run is not None:
                self._maintain(run, now_m)
            self._prune(now_w)
            if self._pending_manual is not None:
                pending, self._pending_manual = self._pending_manual, None
                if run is None and pending["until"] - now_w >= MIN_REMAINING_S:
                    run = self._resume_manual(pending, now_w)
            planned, self._upcoming = self._planned(now_w)
            if planned is not None and self._due(planned, run, now_w):
                if run is not None:
                    self._end("schedule" if run.trigger == "timetable" else "preempted")
                self._start_planned(planned)

    def start_manual(
        self, course: str | None = None, teacher: str | None = None, role: str | None = None,
        duration_s: float | None = None, *, trigger: str = "manual",
    ) -> dict[str, Any]:
        """Start a lesson now for ``duration_s`` (default ``lessons.manual_duration_s``)."""
        role = role or "lecturing"
        if role not in ROLES:
            raise LessonError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if trigger not in ("manual", "command"):
            raise LessonError(f"trigger must be manual or command, got {trigger!r}")
        try:
            duration = self._manual_duration_s if duration_s is None else float(duration_s)
        except (TypeError, ValueError):
            duration = float("nan")
        if not MIN_DURATION_S <= duration <= MAX_DURATION_S:  # also rejects NaN
            raise LessonError(f"duration_s must be {MIN_DURATION_S:g} .. {MAX_DURATION_S:g} s, "
                              f"got {duration_s!r}")
        with self._busy:
            run = self._current
            if run is not None:
                raise LessonError(f"a lesson is already running: {run.lesson_id} ({run.course}), "
                                  f"{run.trigger}, since {rfc3339(run.actual_start)}")
            now_w = self._wall()
            lesson_id = self._manual_id(now_w, course, trigger)
            return self._begin(
                lesson_id=lesson_id, base_id=lesson_id, resume_n=0, course=(course or "").strip(),
                teacher=(teacher or "").strip(), role=role, trigger=trigger, planned=None,
                duration_s=duration, sinks=list(self._default_live),
            )

    def stop_current(self, reason: str = "manual") -> dict[str, Any]:
        """End the running lesson now; returns its evidence (the ``lesson_ended`` details)."""
        if reason not in ENDED_BY:
            raise LessonError(f"reason must be one of {', '.join(ENDED_BY)}, got {reason!r}")
        with self._busy:
            if self._current is None or self._current.phase != "live":
                raise LessonError("no lesson is running")
            return self._end(reason)

    def set_timetable(self, timetable: Schedule | None) -> None:
        """Use a reloaded timetable. A running lesson is never cut short by a reload; if the new
        timetable still has it, its end follows the new one."""
        with self._busy:
            self._timetable = timetable
            self._planning_error = ""
            self._wake.set()  # the loop ticks with it as soon as the lock is free
            run = self._current
            if run is None or run.trigger != "timetable" or timetable is None:
                return
            now_w, now_m = self._wall(), self._mono()
            here = datetime.fromtimestamp(now_w, self._tz)
            same = [p for p in self._safe_between(here) if p.lesson_id == run.base_id]
            if same and same[0].end.timestamp() != run.scheduled_end:
                end = same[0].end.timestamp()
                with self._lock:
                    run.scheduled_end = run.until = end
                    run.deadline_mono = now_m + max(0.0, end - now_w)
                log.info("lesson %s now ends at %s (timetable reloaded)", run.lesson_id,
                         rfc3339(end))

    def set_defaults(self, default_live: list[tuple[str, str]], manual_duration_s: float) -> None:
        """Config reload: new media.live and manual duration, for lessons that start from now."""
        with self._lock:
            self._default_live = list(default_live)
            self._manual_duration_s = manual_duration_s

    @property
    def timetable(self) -> Schedule | None:
        return self._timetable

    def known(self, lesson_id: str) -> bool:
        """Whether this lesson was started (recently enough to be remembered, see HISTORY_S)."""
        with self._lock:
            return lesson_id in self._history

    def sink_names(self, p: PlannedLesson) -> list[str]:
        """Names of the live sinks a planned lesson will stream to, as its evidence names them."""
        return [name for name, _ in self._sinks(p)]

    def snapshot(self) -> dict[str, Any]:
        """For the status board: the running lesson (or None) and the next one on the timetable."""
        now_w, now_m = self._wall(), self._mono()
        with self._lock:
            run = replace(self._current) if self._current is not None else None
        current = None
        if run is not None:
            elapsed = max(0.0, now_m - run.start_mono)
            current = {
                **self._identity(run),
                "state": run.phase,
                "elapsed_s": round(elapsed, 1),
                "remaining_s": round(max(0.0, run.deadline_mono - now_m), 1),
                "late_s": round(run.late_s, 1),
                "live": [{"name": n, "url": redact_host(u)} for n, u in run.sinks],
                "media": self._media_state(run),
            }
        _, upcoming = self._planned(now_w)
        nxt = None
        if upcoming is not None:
            nxt = {"lesson_id": upcoming.lesson_id, "course": upcoming.course,
                   "teacher": upcoming.teacher, "role": upcoming.role,
                   "start": rfc3339(upcoming.start.timestamp()),
                   "end": rfc3339(upcoming.end.timestamp())}
        return {"state": run.phase if run else "idle", "current": current, "next": nxt}

    # -- starting ---------------------------------------------------------------------------------

    def _due(self, planned: PlannedLesson, run: _Running | None, now_w: float) -> bool:
        seen = self._history.get(planned.lesson_id)
        if seen is not None and seen.done:
            return False
        if run is not None and run.base_id == planned.lesson_id:
            return False
        return joinable(planned, now_w)

    def _start_planned(self, p: PlannedLesson) -> dict[str, Any]:
        seen = self._history.get(p.lesson_id)
        n = 0 if seen is None else seen.resume_n + 1
        return self._begin(
            lesson_id=p.lesson_id if n == 0 else f"{p.lesson_id}-resumed-{n}",
            base_id=p.lesson_id, resume_n=n, course=p.course, teacher=p.teacher, role=p.role,
            trigger="timetable", planned=p, duration_s=None, sinks=self._sinks(p),
            continues=None if seen is None else _resumed_id(p.lesson_id, seen.resume_n),
        )

    def _resume_manual(self, pending: dict[str, Any], now_w: float) -> _Running | None:
        n = int(pending["resume_n"]) + 1
        base = str(pending["base_id"])
        self._begin(
            lesson_id=f"{base}-resumed-{n}", base_id=base, resume_n=n,
            course=str(pending["course"]), teacher=str(pending["teacher"]),
            role=str(pending["role"]), trigger=str(pending["trigger"]), planned=None,
            duration_s=max(MIN_DURATION_S, pending["until"] - now_w),
            sinks=list(self._default_live), continues=str(pending["lesson_id"]),
            planned_duration_s=pending.get("planned_duration_s"),
        )
        return self._current

    def _begin(
        self, *, lesson_id: str, base_id: str, resume_n: int, course: str, teacher: str,
        role: str, trigger: str, planned: PlannedLesson | None, duration_s: float | None,
        sinks: list[tuple[str, str]], continues: str | None = None,
        planned_duration_s: float | None = None,
    ) -> dict[str, Any]:
        self._wake.set()  # a lesson is running now: tick every TICK_S from here on
        now_w, now_m = self._wall(), self._mono()
        if planned is not None:
            remaining = max(0.0, planned.end.timestamp() - now_w)
            until = planned.end.timestamp()
            late = max(0.0, now_w - planned.start.timestamp())
        else:
            remaining = float(duration_s or self._manual_duration_s)
            until, late = now_w + remaining, 0.0
        run = _Running(
            lesson_id=lesson_id, base_id=base_id, resume_n=resume_n, course=course,
            teacher=teacher, role=role, trigger=trigger,
            scheduled_start=planned.start.timestamp() if planned else None,
            scheduled_end=planned.end.timestamp() if planned else None,
            planned_duration_s=None if planned else (planned_duration_s or remaining),
            actual_start=now_w, start_mono=now_m, deadline_mono=now_m + remaining, until=until,
            sinks=sinks, late_s=late if late > LATE_AFTER_S else 0.0, continues=continues,
        )
        with self._lock:
            self._history[base_id] = Seen(resume_n, False, until)
        # On disk before media starts: a kill from here on is reported as agent_interrupted,
        # never leaving a recording folder that no evidence mentions.
        self._persist(run, now_m)
        try:
            self._media.start(lesson_id, list(sinks))
            run.media_started = True
        except Exception as exc:  # the lesson is tracked whatever media does
            run.media_error = _first_line(exc)
            run.media_down_mono = now_m
            run.next_retry_mono = now_m + MEDIA_RETRY_S
            log.warning("lesson %s: media did not start: %s", lesson_id, run.media_error)
        with self._lock:
            self._current = run
        details = self._started_details(run)
        self._emit("lesson_started", "warning" if run.media_error else "info",
                   self._started_message(run), details)
        return details

    def _sinks(self, p: PlannedLesson) -> list[tuple[str, str]]:
        """(name, url) pairs: the lesson's own URLs (named) or media.live."""
        if p.live is None:
            return list(self._default_live)
        known = {url: name for name, url in self._default_live if name}
        out: list[tuple[str, str]] = []
        for i, url in enumerate(p.live):
            name = p.sink_name(i) or known.get(url) or f"live-{i + 1}"
            while name in (n for n, _ in out):
                name += "-2"
            out.append((name, url))
        return out

    def _manual_id(self, now_w: float, course: str | None, trigger: str) -> str:
        local = datetime.fromtimestamp(now_w, self._tz)
        lesson_id = f"{local:%Y-%m-%d}-{trigger}-{local:%H%M%S}"
        if course and course.strip():
            lesson_id += f"-{course_code(course)}"
        while lesson_id == self._last_manual_id or lesson_id in self._history:
            lesson_id += "-2"
        self._last_manual_id = lesson_id
        return lesson_id

    # -- running ----------------------------------------------------------------------------------

    def _maintain(self, run: _Running, now_m: float) -> None:
        if run.media_error is not None and not run.media_started and now_m >= run.next_retry_mono:
            try:
                self._media.start(run.lesson_id, list(run.sinks))
            except Exception as exc:
                run.next_retry_mono = now_m + MEDIA_RETRY_S
                log.debug("lesson %s: media still failing: %s", run.lesson_id, exc)
            else:
                with self._lock:
                    run.media_started = True
                    self._close_media_gap(run, now_m)
                log.info("lesson %s: media started on retry", run.lesson_id)
        if now_m - run.persisted_mono >= PERSIST_S:
            self._persist(run, now_m)

    def _close_media_gap(self, run: _Running, now_m: float) -> None:
        if run.media_down_mono is None:
            return
        start, end = run.wall_at(run.media_down_mono), run.wall_at(now_m)
        run.interruptions.append({
            "what": "media_failed", "start": rfc3339(start), "end": rfc3339(end),
            "duration_s": round(end - start, 3), "detail": run.media_error or "",
        })
        run.media_down_mono = None

    # -- ending -----------------------------------------------------------------------------------

    def _end(self, ended_by: str) -> dict[str, Any]:
        run = self._current
        assert run is not None
        end_m = self._mono()
        with self._lock:
            run.phase = "ending"
            self._close_media_gap(run, end_m)
        duration = max(0.0, end_m - run.start_mono)
        summary = None
        if run.media_started or self._media_running():
            try:
                summary = self._media.stop()
            except Exception:
                log.exception("lesson %s: media did not stop cleanly", run.lesson_id)
        details = self._ended_details(run, run.wall_at(end_m), duration, ended_by, summary)
        interrupted = ended_by in ("agent_stopping", "agent_interrupted") or bool(
            details["interruptions"])
        self._emit("lesson_ended", "warning" if interrupted else "info",
                   _ended_message(details), details)
        if _delivered_nothing(run, summary, details) and ended_by in _FOR_GOOD:
            self._emit_missed(run)
        with self._lock:
            self._current = None
            self._history[run.base_id] = Seen(run.resume_n, ended_by != "agent_stopping",
                                               run.until)
        self._persist(None, end_m)
        return details

    def _ended_details(self, run: _Running, end_w: float, duration: float, ended_by: str,
                       summary: dict[str, Any] | None) -> dict[str, Any]:
        media = MediaSummary(summary)
        live_s = media.live_s
        if summary is not None:
            live_s = {name: live_s.get(name, 0.0) for name, _ in run.sinks} | live_s
        details = self._identity(run)
        details.update({
            "actual_end": rfc3339(end_w),
            "duration_s": round(duration, 3),
            "ended_by": ended_by,
            "live_s": live_s,
            "recorded_s": media.recorded_s,
            "interruptions": run.interruptions + media.interruptions,
            "segments": media.segments,
        })
        if media.encoder:
            details["encoder"] = media.encoder
        return details

    def _emit_missed(self, run: _Running) -> None:
        """A timetable lesson whose media never produced anything: missed (``media_failed``)."""
        assert run.scheduled_start is not None and run.scheduled_end is not None
        why = run.media_error or "the media pipeline produced nothing live and nothing recorded"
        record = missed_event(
            lesson_id=run.lesson_id, course=run.course, teacher=run.teacher, role=run.role,
            scheduled_start=run.scheduled_start, scheduled_end=run.scheduled_end,
            reason="media_failed", detail=f"the lesson ran but its media never produced "
                                          f"anything: {why}", ts=self._wall())
        try:
            self._emit_record(record)
        except Exception:
            log.exception("cannot record lesson_missed for %s", run.lesson_id)

    # -- recovery after a kill or power cut -------------------------------------------------------

    def _recover(self) -> None:
        loaded = self._state.load()
        if loaded is None:
            return
        self._history, lost = loaded
        if lost is not None:
            self._report_lost(lost)
        self._persist(None, self._mono())

    def _report_lost(self, lost: SavedLesson) -> None:
        now_w = self._wall()
        end_w = lost.actual_start + lost.elapsed_s
        details = {
            "lesson_id": lost.lesson_id, "course": lost.course, "teacher": lost.teacher,
            "role": lost.role, "trigger": lost.trigger,
            "scheduled_start": _maybe_time(lost.scheduled_start),
            "scheduled_end": _maybe_time(lost.scheduled_end),
            "actual_start": rfc3339(lost.actual_start),
            "planned_duration_s": lost.planned_duration_s,
            "actual_end": rfc3339(end_w),
            "duration_s": round(lost.elapsed_s, 3),
            "ended_by": "agent_interrupted",
            "live_s": {}, **self._recorded(lost.lesson_id, lost.actual_start),
            "interruptions": [{
                "what": "agent_interrupted", "start": rfc3339(end_w),
                "end": rfc3339(max(now_w, end_w)), "duration_s": round(max(0.0, now_w - end_w), 3),
                "detail": "the agent stopped without ending the lesson (killed, crashed or "
                          "power lost); the end is the last time it was seen running",
            }],
        }
        if lost.continues:
            details["continues"] = lost.continues
        self._emit("lesson_ended", "warning", _ended_message(details), details)
        self._history[lost.base_id] = Seen(lost.resume_n, False, lost.until)
        if lost.trigger != "timetable":
            self._pending_manual = {
                "lesson_id": lost.lesson_id, "base_id": lost.base_id,
                "resume_n": lost.resume_n, "course": lost.course, "teacher": lost.teacher,
                "role": lost.role, "trigger": lost.trigger, "until": lost.until,
                "planned_duration_s": lost.planned_duration_s,
            }

    def _recorded(self, lesson_id: str, since: float) -> dict[str, Any]:
        """What a killed lesson left on disk (segments with size and SHA-256), if the media side
        can tell; the evidence of an interrupted lesson still lists its recording."""
        found = getattr(self._media, "recorded", None)
        summary = MediaSummary(None)
        if callable(found):
            try:
                summary = MediaSummary(found(lesson_id, since))
            except Exception:  # evidence without segments beats no evidence
                log.exception("could not list the recording of %s", lesson_id)
        return {"recorded_s": summary.recorded_s, "segments": summary.segments}

    # -- the state file ---------------------------------------------------------------------------

    def _persist(self, run: _Running | None, now_m: float) -> None:
        """Write the running lesson and the history to the state file."""
        with self._lock:
            current = None
            if run is not None:
                run.persisted_mono = now_m
                current = run.saved(now_m)
            history = dict(self._history)
        self._state.save(current, history)

    def _prune(self, now_w: float) -> None:
        old = [k for k, v in self._history.items() if v.until < now_w - HISTORY_S]
        if old:
            with self._lock:
                for k in old:
                    self._history.pop(k, None)

    # -- helpers ----------------------------------------------------------------------------------

    def _planned(self, now_w: float) -> tuple[PlannedLesson | None, PlannedLesson | None]:
        timetable = self._timetable
        if timetable is None:
            return None, None
        try:
            return timetable.current_and_next(datetime.fromtimestamp(now_w, self._tz))
        except Exception as exc:  # an iCalendar series that only fails far from load time
            text = _first_line(exc)
            if text != self._planning_error:
                log.error("the timetable cannot be read at %s: %s", rfc3339(now_w), text)
                self._planning_error = text
            return None, None

    def _safe_between(self, here: datetime) -> list[PlannedLesson]:
        midnight = here.replace(hour=0, minute=0, second=0, microsecond=0)
        try:
            assert self._timetable is not None
            return self._timetable.lessons_between(midnight - timedelta(days=1),
                                                   midnight + timedelta(days=2))
        except Exception:
            log.exception("the reloaded timetable cannot be read")
            return []

    def _media_running(self) -> bool:
        try:
            return bool(self._media.running())
        except Exception:
            return False

    def _media_state(self, run: _Running) -> str:
        if not run.media_started:
            return f"failed: {run.media_error}"
        return "running" if self._media_running() else "stopped"

    def _identity(self, run: _Running) -> dict[str, Any]:
        out = {
            "lesson_id": run.lesson_id, "course": run.course, "teacher": run.teacher,
            "role": run.role, "trigger": run.trigger,
            "scheduled_start": _maybe_time(run.scheduled_start),
            "scheduled_end": _maybe_time(run.scheduled_end),
            "actual_start": rfc3339(run.actual_start),
            "planned_duration_s": _round(run.planned_duration_s),
        }
        if run.continues:
            out["continues"] = run.continues
        return out

    def _started_details(self, run: _Running) -> dict[str, Any]:
        details = self._identity(run)
        details["late_s"] = round(run.late_s, 3)
        details["live"] = [name for name, _ in run.sinks]
        if run.media_error:
            details["media_error"] = run.media_error
        return details

    def _started_message(self, run: _Running) -> str:
        what = f"lesson {run.lesson_id} ({run.course or 'no course given'})"
        how = {"timetable": "on the timetable", "manual": "by hand",
               "command": "by a platform command"}[run.trigger]
        text = f"{what} started {how}"
        if run.continues:
            text += f", continuing {run.continues} after the agent was interrupted"
        if run.late_s:
            text += f", {_human(run.late_s)} after its scheduled start"
        if run.media_error:
            text += f"; media did not start ({run.media_error}), retrying"
        return text

    def _emit(self, type_: str, severity: Severity, message: str, details: dict[str, Any]) -> None:
        record = replace(event(type_, severity, message, **details), ts=self._wall())
        try:
            self._emit_record(record)
        except Exception:
            log.exception("cannot record %s for %s", type_, details.get("lesson_id"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


#: How a lesson ends for good (not a stop or kill of the agent, after which it may continue).
_FOR_GOOD = ("schedule", "manual", "command", "preempted")


def joinable(planned: PlannedLesson, now_w: float) -> bool:
    """Whether a planned lesson is still worth starting at ``now_w`` (late if need be): not with
    under 30 s left (an agent started at the very end of a lesson), unless the lesson itself is
    that short and at least half of it remains."""
    length = planned.end.timestamp() - planned.start.timestamp()
    return planned.end.timestamp() - now_w >= min(MIN_REMAINING_S, length / 2)


def _delivered_nothing(run: _Running, summary: dict[str, Any] | None,
                       details: dict[str, Any]) -> bool:
    """A whole timetable lesson (not a continuation: its earlier part may have delivered) whose
    media never started, or whose media summary shows nothing live and nothing recorded."""
    if run.trigger != "timetable" or run.resume_n or run.scheduled_start is None:
        return False
    if not run.media_started:
        return True
    if summary is None:
        return False  # unknown is not nothing
    return (not any(v > 0 for v in details["live_s"].values())
            and not (details["recorded_s"] or 0) > 0 and not details["segments"])


def _maybe_time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)


def _resumed_id(base: str, n: int) -> str:
    return base if n == 0 else f"{base}-resumed-{n}"


def _ended_message(d: dict[str, Any]) -> str:
    text = (f"lesson {d['lesson_id']} ({d['course'] or 'no course given'}) ended after "
            f"{_human(d['duration_s'])}: {d['ended_by'].replace('_', ' ')}")
    if d["interruptions"]:
        text += f", {len(d['interruptions'])} interruption(s)"
    return text


def _human(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m}m" if h else f"{m}m {s}s" if m else f"{s}s"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
