"""The lesson manager's view of media: one call to start a lesson's pipeline, one to stop it.

Builds the worker spec from the config (one recording directory per lesson), keeps recordings
within their retention before each lesson, and turns the worker's event lines into agent events.
Runs in the daemon: it imports neither OpenCV nor NumPy (the supervisor spawns the worker).

The disk guard: at the start and every ``recording.check_s`` during a lesson, free space on the
recording disk is compared with ``recording.min_free_mb``. Under it, older lessons' recordings are
removed first (never the running one); if that is not enough, the recording stops before the disk
is full (``recording_stopped``, reason ``disk_full``): the worker is stopped cleanly (its open
segment is finished) and, if the lesson has live sinks, a live-only worker takes over. When free
space is back above the reserve plus ``resume_margin_mb`` the recording resumes in the same lesson
(``recording_resumed``), continuing the segment numbering; the gap is one interruption
(``recording_stopped``) in the lesson's evidence.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from agent.config import LiveSinkConfig, MediaConfig
from agent.media import hwenc, retention
from agent.media.checksum import sha256_file
from agent.media.ffmpeg import locate as ffmpeg_locate
from agent.media.ffmpeg import probe as ffmpeg_probe
from agent.media.ffmpeg import report as ffmpeg_report
from agent.media.spec import MediaSpec
from agent.media.supervisor import MediaSupervisor
from agent.records import Record, event
from agent.urls import live_kinds

log = logging.getLogger(__name__)



class Ledger(Protocol):
    """What retention needs from the uploader (agent.upload.uploader.Uploader)."""

    def uploaded(self, folder: Path) -> bool: ...

    def discarded(self, folder: Path, size: int, reason: str) -> None: ...


@dataclass
class _Lesson:
    """The running lesson's media, as far as the disk guard is concerned."""

    lesson_id: str
    spec: MediaSpec
    guard: retention.ReserveGuard
    parts: list[dict[str, Any]] = field(default_factory=list)  # workers stopped mid-lesson
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    stopped_at: float | None = None  # wall time the recording stopped for lack of space
    stopped_why: str = ""


class LessonMedia:
    def __init__(self, media: MediaConfig, recording_root: Path,
                 emit: Callable[[Record], None],
                 free_mb: Callable[[Path], float] = retention.free_mb) -> None:
        self.media = media
        self.root = recording_root
        self._next_root = recording_root  # media.recording.dir after a reload (set_root)
        self.emit = emit
        self._free_mb = free_mb
        self._lock = threading.Lock()
        self._active: Path | None = None
        self._busy = threading.RLock()  # serialises start, stop and the guard's stop/resume
        self._lesson: _Lesson | None = None
        self._guard_stop = threading.Event()
        self._guard_thread: threading.Thread | None = None
        self.supervisor = MediaSupervisor(self._on_line)
        self._ffmpeg: dict[str, Any] | None = None
        self._encoder = hwenc.Choice("libx264", "the encoder trial had not finished")
        self._probed = threading.Event()
        #: With upload on: retention keeps what is not uploaded yet (set by the daemon).
        self.ledger: Ledger | None = None
        threading.Thread(target=self._probe_ffmpeg, name="ffmpeg-probe", daemon=True).start()

    def _probe_ffmpeg(self) -> None:
        """Once at start (seconds of subprocesses): the FFmpeg and the H.264 encoder (trial
        encodes), for the status, `devices` and every lesson's spec."""
        e = self.media.encoder
        try:
            report = ffmpeg_report(self.media.ffmpeg, live_kinds(self.media.live))
            if report.get("version"):
                encoders = ffmpeg_probe(self.media.ffmpeg).encoders
                self._encoder = hwenc.choose(report["path"], e.codec, encoders, e.hw_device)
                log.info("H.264 encoder: %s (%s)", self._encoder.codec, self._encoder.reason)
            report["encoder"] = self._encoder.as_dict()
            self._ffmpeg = report
        except Exception as exc:  # status must never fail because of the probe
            log.exception("probing FFmpeg failed")
            self._ffmpeg = {"choice": self.media.ffmpeg, "error": f"probe failed: {exc}"}
        finally:
            self._probed.set()

    def ffmpeg_report(self) -> dict[str, Any] | None:
        """The FFmpeg in use and its capabilities (None while the first probe runs)."""
        return self._ffmpeg

    # -- MediaControl (agent.lessons.manager) ----------------------------------------------------

    def set_root(self, root: Path) -> None:
        """Record the lessons started from now on under ``root`` (``media.recording.dir`` was
        reloaded); a running lesson keeps its folder, and retention its disk, until it ends."""
        with self._busy:
            self._next_root = root
            if self._lesson is None:
                self.root = root

    def start(self, lesson_id: str, live: list[tuple[str, str]]) -> None:
        with self._busy:
            self.root = self._next_root
        directory = self.root / lesson_id
        directory.mkdir(parents=True, exist_ok=True)
        rec = self.media.recording
        # Never wait for the trial: a lesson resumed at boot starts at once (on libx264 if the
        # trial has not finished; the reason says so).
        enc = self._encoder if self._probed.is_set() else hwenc.Choice(
            "libx264", "the encoder trial had not finished when the lesson started")
        lesson = _Lesson(lesson_id, MediaSpec.from_config(
            self.media, lesson_id, directory, self._sinks(live), ffmpeg_locate(self.media.ffmpeg),
            (enc.codec, enc.reason, enc.device)),
            retention.ReserveGuard(rec.min_free_mb, rec.resume_margin_mb))
        with self._busy:
            with self._lock:
                self._active = directory
            self._lesson = lesson
            self.housekeeping()
            free = self._free()
            if free is not None and lesson.guard.update(free) == "stop":
                self._stop_recording(lesson, free)
            else:
                self.supervisor.start(lesson.spec)
        self._start_guard()

    def _sinks(self, live: list[tuple[str, str]]) -> list[LiveSinkConfig]:
        """The lesson's (name, URL) pairs with the protocol and token file media.live gives
        that URL (a timetable names only URLs)."""
        known = {s.url: s for s in self.media.live}
        return [replace(known[url], name=name) if url in known
                else LiveSinkConfig(url=url, name=name) for name, url in live]

    def stop(self) -> dict | None:
        self._stop_guard()
        with self._busy:
            lesson, self._lesson = self._lesson, None
            try:
                last = self.supervisor.stop()
            finally:
                with self._lock:
                    self._active = None
            if lesson is None:
                return last
            if lesson.stopped_at is not None:
                self._close_gap(lesson, time.time())
            return _merge([*lesson.parts, last], lesson.interruptions)

    def recording_dir(self) -> Path | None:
        """The running lesson's recording directory (None between lessons)."""
        with self._lock:
            return self._active

    def running(self) -> bool:
        """The worker runs, or the lesson's recording is held off for lack of disk space."""
        lesson = self._lesson
        return self.supervisor.running() or (lesson is not None and lesson.guard.stopped)

    # -- the disk guard ---------------------------------------------------------------------------

    def check_space(self) -> None:
        """One guard step (the guard thread calls it every ``recording.check_s``)."""
        with self._busy:
            lesson = self._lesson
            free = self._free()
            if lesson is None or free is None:
                return
            if free < lesson.guard.reserve_mb and not lesson.guard.stopped:
                self.housekeeping()  # older lessons' recordings go first
                free = self._free() or 0.0
            action = lesson.guard.update(free)
            if action == "stop":
                self._stop_recording(lesson, free)
            elif action == "resume":
                self._resume_recording(lesson, free)

    def _free(self) -> float | None:
        try:
            return self._free_mb(self.root)
        except OSError as exc:
            log.warning("cannot measure free space of %s: %s", self.root, exc)
            return None

    def _stop_recording(self, lesson: _Lesson, free: float) -> None:
        part = self.supervisor.stop()
        if part is not None:
            lesson.parts.append(part)
        lesson.stopped_at = time.time()
        live = bool(lesson.spec.live)
        lesson.stopped_why = (f"disk_full: {free:.0f} MB free on {self.root}, under the "
                              f"{lesson.guard.reserve_mb:g} MB reserve")
        if live:
            self._start_worker(replace(lesson.spec, recording=replace(lesson.spec.recording,
                                                                      enabled=False)))
        log.warning("lesson %s: recording stopped, %s", lesson.lesson_id, lesson.stopped_why)
        self.emit(event(
            "recording_stopped", "warning",
            f"recording of lesson {lesson.lesson_id} stopped before the disk is full: "
            f"{free:.0f} MB free, reserve {lesson.guard.reserve_mb:g} MB"
            + ("; the live stream goes on" if live else "")
            + ". Next step: free space on the recording disk (or lower "
            "media.recording.retention_days); the recording resumes by itself",
            lesson_id=lesson.lesson_id, reason="disk_full", free_mb=round(free, 1),
            min_free_mb=lesson.guard.reserve_mb, dir=str(self.root), live_continues=live))

    def _resume_recording(self, lesson: _Lesson, free: float) -> None:
        part = self.supervisor.stop()  # the live-only worker, if any
        if part is not None:
            lesson.parts.append(part)
        gap = self._close_gap(lesson, time.time())
        self._start_worker(lesson.spec)
        log.info("lesson %s: recording resumed after %.0f s", lesson.lesson_id, gap["duration_s"])
        self.emit(event(
            "recording_resumed", "info",
            f"recording of lesson {lesson.lesson_id} resumed: {free:.0f} MB free again after "
            f"{gap['duration_s']:.0f} s without recording",
            lesson_id=lesson.lesson_id, free_mb=round(free, 1), stopped_s=gap["duration_s"]))

    def _close_gap(self, lesson: _Lesson, end: float) -> dict[str, Any]:
        assert lesson.stopped_at is not None
        gap = {"what": "recording_stopped", "start": round(lesson.stopped_at, 3),
               "end": round(end, 3), "duration_s": round(max(0.0, end - lesson.stopped_at), 3),
               "detail": lesson.stopped_why}
        lesson.interruptions.append(gap)
        lesson.stopped_at = None
        return gap

    def _start_worker(self, spec: MediaSpec) -> None:
        try:
            self.supervisor.start(spec)
        except Exception:  # the lesson goes on; the next lesson starts media afresh
            log.exception("lesson %s: the media worker could not be started", spec.lesson_id)

    def _start_guard(self) -> None:
        if self._guard_thread is not None and self._guard_thread.is_alive():
            return
        self._guard_stop = threading.Event()
        self._guard_thread = threading.Thread(target=self._guard_loop, args=(self._guard_stop,),
                                              name="media-disk-guard", daemon=True)
        self._guard_thread.start()

    def _stop_guard(self) -> None:
        self._guard_stop.set()
        thread, self._guard_thread = self._guard_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(60)

    def _guard_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.media.recording.check_s):
            try:
                self.check_space()
            except Exception:  # the guard must outlive one bad check
                log.exception("disk guard: check failed; trying again in %.0f s",
                              self.media.recording.check_s)

    def recorded(self, lesson_id: str, since: float) -> dict[str, Any]:
        """The segments a lesson left on disk (after a kill or power cut), hashed, in order.
        Times come from the files' modification times; the last one is marked partial."""
        folder = self.root / lesson_id
        segments: list[dict[str, Any]] = []
        start = since
        paths = sorted(folder.glob("seg-*.ts")) if folder.is_dir() else []
        for path in paths:
            try:
                size, end = path.stat().st_size, path.stat().st_mtime
                digest = sha256_file(path)
            except OSError:
                continue
            end = max(end, start)
            segments.append({"path": str(path), "bytes": size, "sha256": digest,
                             "start": start, "end": end, "duration_s": end - start,
                             "partial": path == paths[-1]})
            start = end
        recorded = sum(seg["duration_s"] for seg in segments) if segments else None
        return {"segments": segments, "recorded_s": recorded}

    # -- for telemetry and status ---------------------------------------------------------------

    def stats(self) -> dict[str, Any] | None:
        return self.supervisor.last_stats() if self.supervisor.running() else None

    def housekeeping(self) -> None:
        """Retention by age and free-space reserve; never touches the lesson being recorded."""
        rec = self.media.recording
        with self._lock:
            active = self._active
        ledger = self.ledger
        try:
            removed = retention.enforce(self.root, rec.retention_days, rec.min_free_mb, active,
                                        uploaded=ledger.uploaded if ledger else None)
        except OSError as exc:
            log.warning("retention: %s", exc)
            return
        lost = [r for r in removed if r.uploaded is False]
        removed = [r for r in removed if r.uploaded is not False]
        if removed:
            self.emit(event(
                "recordings_removed", "info",
                f"removed {len(removed)} old recording(s) to keep retention and free space",
                removed=[{"path": r.path, "bytes": r.bytes, "reason": r.reason} for r in removed],
            ))
        for r in lost:  # the reserve needed them before they reached the store
            assert ledger is not None
            ledger.discarded(Path(r.path), r.bytes, r.reason)

    def _on_line(self, line: dict[str, Any]) -> None:
        if line.get("type") != "event":
            return
        name = str(line.get("event", "media_event"))
        severity = line.get("severity") if line.get("severity") in (
            "info", "warning", "error") else "warning"
        self.emit(event(name, severity, str(line.get("message", name)),
                        **(line.get("details") or {})))


def _merge(parts: list[dict[str, Any] | None], gaps: list[dict[str, Any]]) -> dict | None:
    """One lesson summary from the workers that ran it in turn (the disk guard stops and starts
    them) plus the guard's own interruptions."""
    done = [p for p in parts if p is not None]
    if not gaps and len(done) <= 1:
        return done[0] if done else None
    live: dict[str, float] = collections.defaultdict(float)
    segments: list[dict[str, Any]] = []
    recorded = 0.0
    interruptions = list(gaps)
    for p in done:
        for name, sec in (p.get("live_s") or {}).items():
            live[str(name)] += float(sec)
        segments += p.get("segments") or []
        recorded += float(p.get("recorded_s") or 0.0)
        interruptions += p.get("interruptions") or []
    encoder = next((p["encoder"] for p in done if isinstance(p.get("encoder"), dict)), None)
    return {**({"encoder": encoder} if encoder else {}),
            "live_s": {k: round(v, 1) for k, v in live.items()}, "recorded_s": round(recorded, 3),
            "segments": segments,
            "interruptions": sorted(interruptions, key=lambda i: float(i.get("start") or 0))}
