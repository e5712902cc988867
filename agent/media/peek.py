"""Run the device probe (agent/media/probe.py) as a child process, bounded in time.

Used by ``classroom-agent doctor`` (one look and one listen) and by the daemon for the status
page (:class:`Peeker`: a camera snapshot and a live microphone level on request). This side
imports neither OpenCV nor NumPy: a driver that crashes or hangs takes only the child with it,
and the child is killed at its deadline.

On the page's behalf the :class:`Peeker` is rate-limited (one snapshot at a time, a fresh one at
most every ``SNAPSHOT_EVERY_S``; one listening session at a time, each at most ``LEVEL_S``) and
stands aside while a lesson holds the devices: the level then comes from the lesson's own media
worker, and a snapshot is refused with the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from agent.config import MediaConfig
from agent.i18n import N_
from agent.media.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

#: Time the child may take to load Python, OpenCV and NumPy before it says ``ready``: a second
#: on a quiet PC, several on a busy one (a probe child took 4.4 s at a tenth of a core).
READY_S = 20.0
#: Time the devices get beyond the listening time, counted from ``ready``: up to
#: ``probe.OPEN_S`` (5 s) for the first data, and the result line. The child's start-up is not
#: the device's: counting it here told a technician on a busy PC that a working microphone
#: "did not answer".
DEVICE_S = 7.0
SNAPSHOT_S = 1.0
SNAPSHOT_WIDTH = 640
SNAPSHOT_EVERY_S = 2.0
LEVEL_S = 20.0
LEVEL_EVERY_S = 0.1
MAX_LINE = 4 * 1024 * 1024


def video_spec(media: MediaConfig) -> VideoSpec:
    v = media.video
    return VideoSpec(source=v.source, width=v.width, height=v.height, fps=v.fps)


def audio_spec(media: MediaConfig) -> AudioSpec:
    a = media.audio
    return AudioSpec(source=a.source, rate=a.rate, channels=a.channels)


def probe(video: VideoSpec | None, audio: AudioSpec | None, seconds: float,
          jpeg_width: int = 0, level_every_s: float = 0.0,
          on_level: Callable[[dict[str, Any]], None] | None = None,
          stop: threading.Event | None = None, python: str = sys.executable,
          ffmpeg: str = "bundled") -> dict[str, Any]:
    """The probe's result line (``video`` and ``audio`` sections), or ``{"error": ...}`` when
    the child could not be run, died, or missed its deadline (it is then killed). ``ffmpeg``
    (media.ffmpeg) reads a network camera."""
    request = json.dumps({"video": asdict(video) if video else None, "ffmpeg": ffmpeg,
                          "audio": asdict(audio) if audio else None, "seconds": seconds,
                          "jpeg_width": jpeg_width, "level_every_s": level_every_s}) + "\n"
    try:
        proc = subprocess.Popen([python, "-m", "agent.media.probe"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ,
                                                             "PYTHONUNBUFFERED": "1"})
    except OSError as exc:
        return {"error": f"cannot start the probe: {exc}"}
    result: dict[str, Any] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if len(raw) > MAX_LINE:
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if doc.get("type") == "ready":
                ready.set()
            elif doc.get("type") == "level" and on_level is not None:
                on_level(doc)
            elif doc.get("type") == "result":
                result.update(doc)

    reader = threading.Thread(target=read, name="probe-reader", daemon=True)
    reader.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(request.encode())
        proc.stdin.close()
    except OSError:
        pass
    deadline = time.monotonic() + READY_S
    started = False
    while reader.is_alive() and time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            break
        if not started and ready.is_set():
            started = True
            deadline = time.monotonic() + seconds + DEVICE_S
        reader.join(0.1)
    timed_out = reader.is_alive()
    _kill(proc)
    reader.join(2.0)
    if result:
        return result
    if timed_out and not (stop is not None and stop.is_set()):
        if not started:
            return {"error": f"the probe did not start within {READY_S:.0f} s: this PC is too "
                             f"busy (load {os.getloadavg()[0]:.1f}); try again"}
        return {"error": f"the device did not answer within {seconds + DEVICE_S:.0f} s "
                         "(the probe was stopped)"}
    return {"error": f"the probe ended without a result (exit code {proc.returncode})"}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class Busy(Exception):
    """The request cannot be served now; ``str()`` says why and what to do."""


class Peeker:
    """Snapshots and live levels for the status page, run in child processes on request."""

    def __init__(self, media: Callable[[], MediaConfig],
                 lesson_stats: Callable[[], dict[str, Any] | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.media = media
        self.lesson_stats = lesson_stats
        self.clock = clock
        self._lock = threading.Lock()
        self._snap_busy = threading.Lock()
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._level: dict[str, Any] | None = None
        self._level_until = 0.0
        self._level_thread: threading.Thread | None = None
        self._stop = threading.Event()

    def snapshot(self) -> dict[str, Any]:
        """The camera's picture now (JPEG base64 and its health); raises :class:`Busy`."""
        if self.lesson_stats() is not None:
            raise Busy(N_("A lesson is using the camera: the snapshot works between lessons "
                          "(the lesson's picture health is shown above)."))
        if not self._snap_busy.acquire(blocking=False):
            raise Busy(N_("A snapshot is being taken; try again in a few seconds."))
        try:
            with self._lock:
                cached = self._snapshot
            if cached is not None and self.clock() - cached[0] < SNAPSHOT_EVERY_S:
                return cached[1]
            media = self.media()
            res = probe(video_spec(media), None, SNAPSHOT_S, jpeg_width=SNAPSHOT_WIDTH,
                        stop=self._stop, ffmpeg=media.ffmpeg)
            doc = res.get("video") or {"ok": False, "error": res.get("error", "no answer")}
            doc = {**doc, "taken_at": time.time()}
            with self._lock:
                self._snapshot = (self.clock(), doc)
            # Kept only to answer several clicks with one camera opening, then forgotten.
            forget = threading.Timer(SNAPSHOT_EVERY_S, self._forget)
            forget.daemon = True
            forget.start()
            return doc
        finally:
            self._snap_busy.release()

    def _forget(self) -> None:
        with self._lock:
            if self._snapshot is not None and self.clock() - self._snapshot[0] >= \
                    SNAPSHOT_EVERY_S - 0.01:
                self._snapshot = None

    def level(self) -> dict[str, Any]:
        """The microphone level now. Outside a lesson the first call starts a listening session
        of ``LEVEL_S`` in a child process (later calls read it); during a lesson the level is
        the lesson worker's."""
        stats = self.lesson_stats()
        if stats is not None:
            audio = stats.get("audio") or {}
            return {"source": "lesson", "listening": True, "rms_dbfs": audio.get("rms_dbfs"),
                    "peak_dbfs": audio.get("peak_dbfs")}
        with self._lock:
            now = self.clock()
            running = self._level_thread is not None and self._level_thread.is_alive()
            if not running:
                self._level = {"source": "probe", "listening": True, "rms_dbfs": None,
                               "peak_dbfs": None, "starting": True}
                self._level_until = now + LEVEL_S
                self._level_thread = threading.Thread(target=self._listen, name="level-probe",
                                                      daemon=True)
                self._level_thread.start()
            return {**(self._level or {}), "remaining_s": round(max(0.0, self._level_until
                                                                    - now), 1)}

    def _listen(self) -> None:
        def on_level(doc: dict[str, Any]) -> None:
            with self._lock:
                self._level = {"source": "probe", "listening": True,
                               "rms_dbfs": doc.get("rms_dbfs"), "peak_dbfs": doc.get("peak_dbfs")}

        res = probe(None, audio_spec(self.media()), LEVEL_S, level_every_s=LEVEL_EVERY_S,
                    on_level=on_level, stop=self._stop)
        audio = res.get("audio") or {}
        with self._lock:
            self._level = {"source": "probe", "listening": False,
                           "rms_dbfs": audio.get("rms_dbfs"), "peak_dbfs": audio.get("peak_dbfs"),
                           "error": audio.get("error") or res.get("error")}

    def stop(self) -> None:
        self._stop.set()
        thread = self._level_thread
        if thread is not None:
            thread.join(10)
