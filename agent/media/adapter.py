"""The lesson manager's view of media: one call to start a lesson's pipeline, one to stop it.

Builds the worker spec from the config (one recording directory per lesson), keeps recordings
within their retention before each lesson, and turns the worker's event lines into agent events.
Runs in the daemon: it imports neither OpenCV nor NumPy (the supervisor spawns the worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import LiveSinkConfig, MediaConfig
from agent.media import retention
from agent.media.checksum import sha256_file
from agent.media.spec import MediaSpec
from agent.media.supervisor import MediaSupervisor
from agent.records import Record, event

log = logging.getLogger(__name__)


class LessonMedia:
    def __init__(self, media: MediaConfig, recording_root: Path,
                 emit: Callable[[Record], None]) -> None:
        self.media = media
        self.root = recording_root
        self.emit = emit
        self._lock = threading.Lock()
        self._active: Path | None = None
        self.supervisor = MediaSupervisor(self._on_line)

    # -- MediaControl (agent.lessons.manager) ----------------------------------------------------

    def start(self, lesson_id: str, live: list[tuple[str, str]]) -> None:
        directory = self.root / lesson_id
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._active = directory
        self.housekeeping()
        sinks = [LiveSinkConfig(url=url, name=name) for name, url in live]
        self.supervisor.start(MediaSpec.from_config(self.media, lesson_id, directory, sinks))

    def stop(self) -> dict | None:
        try:
            return self.supervisor.stop()
        finally:
            with self._lock:
                self._active = None

    def running(self) -> bool:
        return self.supervisor.running()

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
        try:
            removed = retention.enforce(self.root, rec.retention_days, rec.min_free_mb, active)
        except OSError as exc:
            log.warning("retention: %s", exc)
            return
        if removed:
            self.emit(event(
                "recordings_removed", "info",
                f"removed {len(removed)} old recording(s) to keep retention and free space",
                removed=[{"path": r.path, "bytes": r.bytes, "reason": r.reason} for r in removed],
            ))

    def _on_line(self, line: dict[str, Any]) -> None:
        if line.get("type") != "event":
            return
        name = str(line.get("event", "media_event"))
        severity = line.get("severity") if line.get("severity") in (
            "info", "warning", "error") else "warning"
        self.emit(event(name, severity, str(line.get("message", name)),
                        **(line.get("details") or {})))

