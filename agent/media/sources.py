"""Capture threads: the camera (OpenCV) and the microphone (PyAudio), each surviving device loss.

Each source owns one thread that opens the device, reads, and on trouble releases it and reopens
with back-off (0.5 s doubling to 5 s) in the same thread, so a driver is never touched from two
threads. No data for ``LOSS_S`` -> ``*_lost`` event; the first data after that -> ``*_restored``.
Every OpenCV/PortAudio call is guarded: a read error must never take the lesson down (Galicaster
segfaulted on an unplugged webcam because it reused a dead capture).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.media.devices import open_pyaudio, quiet_stderr
from agent.media.netsource import FfmpegReader, is_network
from agent.media.spec import AudioSpec, VideoSpec
from agent.media.synthetic import SyntheticAudio, SyntheticVideo
from agent.urls import shown_source

log = logging.getLogger(__name__)

EventFn = Callable[[str, str, str, dict[str, Any]], None]
Clock = Callable[[], float]

LOSS_S = 2.0
REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 5.0
OPEN_TIMEOUT_MS = 3000
READ_TIMEOUT_MS = 1500
STALL_S = 1.0  # a read this slow, once frames flowed, means the stream stalled
UDP_OPTIONS = "overrun_nonfatal=1&fifo_size=5000000"


def quiet_opencv() -> None:
    """OpenCV's FFmpeg backend logs decoder chatter ("non-existing PPS", "no frame!") on fd 2
    until a stream's first key frame, and OpenCV warns on each read timeout: both would drown
    the worker's log, and we report failures ourselves. The FFmpeg level is read when the
    backend first opens something, so this must run before the first capture.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class ReopenDelay:
    """0.5 s, 1 s, 2 s, 4 s, 5 s, 5 s ...: quick for a glitch, gentle on a dead device."""

    def __init__(self, low: float = REOPEN_MIN_S, high: float = REOPEN_MAX_S) -> None:
        self.low, self.high, self._next = low, high, low

    def next(self) -> float:
        delay, self._next = self._next, min(self.high, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.low


class LossWatch:
    """The ok/lost state of one source and its events; thread-safe, fed by data arrival times."""

    def __init__(self, what: str, source: str, on_event: EventFn, clock: Clock) -> None:
        self.what, self.source, self.on_event, self.clock = what, source, on_event, clock
        self.state = "ok"
        self.last_data = clock()
        self.reason = ""
        self._lock = threading.Lock()

    def data(self) -> None:
        now = self.clock()
        with self._lock:
            self.last_data = now
            self.reason = ""
            if self.state == "ok":
                return
            self.state = "ok"
        self.on_event(f"{self.what}_restored", "info", f"{self.what} {self.source} is back",
                      {"source": self.source})

    def check(self, reason: str = "") -> bool:
        """Flip to lost after ``LOSS_S`` without data; True while lost."""
        now = self.clock()
        with self._lock:
            if reason:
                self.reason = reason
            if self.state == "lost":
                return True
            if now - self.last_data < LOSS_S:
                return False
            self.state = "lost"
            why = self.reason or f"no data for {now - self.last_data:.1f} s"
        self.on_event(
            f"{self.what}_lost", "warning",
            f"{self.what} {self.source} lost ({why}); recording goes on with "
            f"{'a slate' if self.what == 'camera' else 'silence'}; check the cable or the "
            "device, it is reopened automatically",
            {"source": self.source, "reason": why})
        return True


class _Capture:
    """A device read on a thread of its own: opened, reopened with back-off, watched for loss.

    Subclasses set ``reader`` (open/read/release) before calling this ``__init__`` and write
    ``_run``; the reading itself differs (latest frame vs queued chunks), the rest does not.
    """

    def __init__(self, device: str, source: str, on_event: EventFn, clock: Clock) -> None:
        self.device, self.source, self.clock = device, source, clock
        self.watch = LossWatch(device, source, on_event, clock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{device}-capture",
                                        daemon=True)

    @property
    def state(self) -> str:
        return self.watch.state

    def start(self) -> None:
        self._thread.start()

    def check(self) -> bool:
        """True while lost; called by the pacer too, in case a read blocks in the driver."""
        return self.watch.check()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s thread did not stop within %.0f s (blocked in the driver?)",
                        self.device, timeout)

    def _open(self, delay: ReopenDelay, reset: bool = True) -> bool:
        """Open the reader; on failure report it, wait the back-off and return False. ``reset``
        False: the back-off is reset by the first data instead (an FFmpeg reader always
        "opens": it only starts a process)."""
        try:
            self.reader.open()
        except Exception as exc:
            self.watch.check(f"cannot open: {exc}")
            self._stop.wait(delay.next())
            return False
        if reset:
            delay.reset()
        log.info("%s %s opened", self.device, self.source)
        return True

    def _run(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------- video


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # the spec's size: BGR (h, w, 3), or I420 planes (h*3/2, w) if yuv420p
    t: float  # monotonic capture time
    seq: int  # 1, 2, 3 ... per source, across reopenings
    pix_fmt: str = "bgr24"  # "yuv420p": from the FFmpeg reader, the encoder's own format

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture."""
        h, w = self.image.shape[:2]
        return w, (h * 2 // 3 if self.pix_fmt == "yuv420p" else h)

    def bgr(self) -> np.ndarray:
        """The picture as BGR (converted for a snapshot; the lesson path never needs it)."""
        if self.pix_fmt == "yuv420p":
            return cv2.cvtColor(self.image, cv2.COLOR_YUV2BGR_I420)
        return self.image


def classify(source: str) -> tuple[str, str | int]:
    """-> (kind, target): synthetic, index, device, url or file."""
    s = source.strip()
    if s == "synthetic":
        return "synthetic", s
    if s.isdigit():
        return "index", int(s)
    if s.startswith("/dev/"):
        return "device", s
    if "://" in s:
        return "url", with_udp_options(s)
    return "file", s


def with_udp_options(url: str) -> str:
    """UDP needs a big FIFO and must not die on overrun (MEDIA-NOTES); others are left alone."""
    if not url.startswith("udp://") or "overrun_nonfatal" in url:
        return url
    return url + ("&" if "?" in url else "?") + UDP_OPTIONS


class _SyntheticReader:
    pix_fmt = "bgr24"
    problem = ""

    def __init__(self, spec: VideoSpec, clock: Clock) -> None:
        self.gen = SyntheticVideo(spec.width, spec.height, spec.fps)
        self.clock, self.period, self.n = clock, 1.0 / spec.fps, 0
        self.t0 = 0.0

    def open(self) -> None:
        self.t0, self.n = self.clock(), 0

    def read(self) -> np.ndarray | None:
        due = self.t0 + self.n * self.period
        wait = due - self.clock()
        if wait > 0:
            time.sleep(wait)
        elif wait < -1.0:  # we were starved (suspend, overload): restart the schedule
            self.t0, self.n = self.clock(), 0
        self.n += 1
        return self.gen.frame(self.n)

    def release(self) -> None:
        pass

    def warming(self) -> bool:
        return False


class _CvReader:
    """An OpenCV capture; a file is paced to its own frame rate and looped."""

    pix_fmt = "bgr24"
    problem = ""

    def __init__(self, kind: str, target: str | int, spec: VideoSpec, clock: Clock) -> None:
        self.kind, self.target, self.spec, self.clock = kind, target, spec, clock
        self.cap: Any = None
        self.period = 0.0
        self.next_due = 0.0

    def open(self) -> None:
        spec = self.spec
        if self.kind in ("index", "device"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
                cap.set(cv2.CAP_PROP_FPS, spec.fps)
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"OpenCV cannot open {self.target}")
        self.cap = cap
        if self.kind == "file":
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            self.period = 1.0 / (fps if 1 <= fps <= 240 else spec.fps)
            self.next_due = self.clock()

    def read(self) -> np.ndarray | None:
        ok, img = self.cap.read()
        if not ok and self.kind == "file":  # end of file: loop
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self.cap.read()
        if not ok or img is None:
            return None
        if self.kind == "file":  # OpenCV reads files at hundreds of fps: real time is ours
            wait = self.next_due - self.clock()
            if wait > 0:
                time.sleep(wait)
            self.next_due = max(self.next_due + self.period, self.clock() - 1.0)
        return img

    def release(self) -> None:
        cap, self.cap = self.cap, None
        if cap is not None:
            try:
                cap.release()
            except Exception as exc:  # a dead device may fail even here; never crash on it
                log.warning("releasing camera %s failed: %s", self.target, exc)

    def warming(self) -> bool:
        return False


class VideoSource(_Capture):
    """Keeps the last two frames (with their capture times); the pacer takes what it needs.

    Two, not one: a pump woken late (another process ran) finds the next slot's frame stored
    already and must still be able to take the one captured for its own slot
    (``pacer.nearest_frame``); with only the latest it dropped that one and repeated the next.

    Network URLs are read by FFmpeg into I420 (agent/media/netsource.py); devices and files by
    OpenCV, as BGR. ``ffmpeg`` is the executable media.ffmpeg chose.
    """

    def __init__(self, spec: VideoSpec, on_event: EventFn, clock: Clock = time.monotonic,
                 ffmpeg: str = "ffmpeg") -> None:
        self.spec = spec
        quiet_opencv()
        kind, target = classify(spec.source)
        self.kind = kind
        self.reader: Any
        if kind == "synthetic":
            self.reader = _SyntheticReader(spec, clock)
        elif kind == "url" and is_network(str(target)):
            self.reader = FfmpegReader(str(target), spec, ffmpeg, clock)
        else:
            self.reader = _CvReader(kind, target, spec, clock)
        self.captured = 0
        self._latest: Frame | None = None
        self._previous: Frame | None = None
        self._lock = threading.Lock()
        self._fresh = threading.Condition(self._lock)
        super().__init__("camera", shown_source(spec.source), on_event, clock)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._latest

    def recent(self) -> tuple[Frame, ...]:
        """The last two frames stored (fewer at first), oldest first."""
        with self._lock:
            return tuple(f for f in (self._previous, self._latest) if f is not None)

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The latest frame, waiting up to ``timeout`` for one newer than ``seq``."""
        with self._fresh:
            self._fresh.wait_for(lambda: self._latest is not None and self._latest.seq > seq,
                                 timeout)
            return self._latest

    def _run(self) -> None:
        delay = ReopenDelay()
        is_open = False
        frames_since_open = 0
        while not self._stop.is_set():
            if not is_open:
                if not self._open(delay, reset=False):
                    continue
                is_open, frames_since_open = True, 0
            began = self.clock()
            try:
                img = self.reader.read()
            except Exception as exc:
                log.warning("camera %s read failed: %s", self.source, exc)
                img = None
            if img is not None and frames_since_open and self.clock() - began > STALL_S:
                # A stream that stalled: FFmpeg's read timeout flushes the decoder's delayed
                # frames, which are old. They must not hide the loss; start afresh.
                log.info("camera %s stalled for %.1f s; reopening", self.source,
                         self.clock() - began)
                img = None
            if img is None and not frames_since_open and self.reader.warming():
                self.watch.check(self.reader.problem)  # FFmpeg still probing the stream
                continue
            if img is None:
                if (self.watch.check(self.reader.problem or "no frames") or frames_since_open
                        or self.clock() - self.watch.last_data > STALL_S):
                    self.reader.release()  # release before reopening, always
                    is_open = False
                    self._stop.wait(delay.next())
                else:
                    self._stop.wait(0.02)
                continue
            frames_since_open += 1
            if frames_since_open == 1:
                delay.reset()
            self._publish(img)
        self.reader.release()

    def _publish(self, img: np.ndarray) -> None:
        if self.reader.pix_fmt == "yuv420p":  # FFmpeg made it the spec's size already
            self._store(img, "yuv420p")
            return
        h, w = img.shape[:2]
        if (w, h) != (self.spec.width, self.spec.height):
            img = cv2.resize(img, (self.spec.width, self.spec.height),
                             interpolation=cv2.INTER_AREA if w > self.spec.width
                             else cv2.INTER_LINEAR)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        self._store(img, "bgr24")

    def _store(self, img: np.ndarray, pix_fmt: str) -> None:
        now = self.clock()
        with self._lock:
            self.captured += 1
            self._previous, self._latest = self._latest, Frame(img, now, self.captured,
                                                               pix_fmt)
            self._fresh.notify_all()
        self.watch.data()


# --------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Chunk:
    t: float  # monotonic time the chunk was read (its last sample)
    data: bytes  # int16 interleaved


class _SyntheticAudioReader:
    def __init__(self, spec: AudioSpec, frames: int, clock: Clock) -> None:
        self.gen = SyntheticAudio(spec.rate, spec.channels)
        self.frames, self.clock, self.spec = frames, clock, spec
        self.t0 = 0.0
        self.n = 0

    def open(self) -> None:
        self.t0, self.n = self.clock(), 0

    def read(self) -> bytes:
        due = self.t0 + (self.n + self.frames) / self.spec.rate
        wait = due - self.clock()
        if wait > 0:
            time.sleep(wait)
        wall = time.time() - self.frames / self.spec.rate
        self.n += self.frames
        return self.gen.chunk(self.frames, wall)

    def release(self) -> None:
        pass


class _PyAudioReader:
    """A PortAudio input stream; PortAudio is restarted on each open to see replugged devices."""

    def __init__(self, spec: AudioSpec, frames: int) -> None:
        self.spec, self.frames = spec, frames
        self.pa: Any = None
        self.stream: Any = None

    def open(self) -> None:
        import pyaudio

        self.pa = open_pyaudio()
        try:
            index = find_input_device(self.pa, self.spec.source)
            with quiet_stderr():
                self.stream = self.pa.open(
                    format=pyaudio.paInt16, channels=self.spec.channels, rate=self.spec.rate,
                    input=True, input_device_index=index, frames_per_buffer=self.frames)
        except Exception:
            self.release()
            raise

    def read(self) -> bytes:
        return bytes(self.stream.read(self.frames, exception_on_overflow=False))

    def release(self) -> None:
        stream, pa, self.stream, self.pa = self.stream, self.pa, None, None
        for step in (lambda: stream and stream.stop_stream(), lambda: stream and stream.close(),
                     lambda: pa and pa.terminate()):
            try:
                step()
            except Exception as exc:
                log.debug("closing the microphone: %s", exc)


def find_input_device(pa: Any, source: str) -> int | None:
    """``default`` -> None (PortAudio's default input), digits -> index, else a name substring."""
    s = source.strip()
    if s == "default":
        return None
    if s.isdigit():
        return int(s)
    names = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) <= 0:
            continue
        names.append(str(info["name"]))
        if s.lower() in str(info["name"]).lower():
            return i
    raise OSError(f"no input device matches {s!r}; inputs here: {', '.join(names) or 'none'} "
                  "(see `classroom-agent devices`)")


class AudioSource(_Capture):
    """Captured chunks go into a bounded queue (about 2 s); the oldest go when it is full.

    Chunks are 10 ms: FFmpeg muxes in timestamp order, so each frame of video waits in the
    encoder until the sound of its moment has arrived; a shorter chunk shortens that wait
    (measured: p95 live latency 171 -> 156 ms from 20 ms to 5 ms chunks).
    """

    def __init__(self, spec: AudioSpec, on_event: EventFn, clock: Clock = time.monotonic,
                 chunk_ms: int = 10) -> None:
        self.spec = spec
        self.frames = max(1, spec.rate * chunk_ms // 1000)
        self.reader: Any = (_SyntheticAudioReader(spec, self.frames, clock)
                            if spec.source.strip() == "synthetic"
                            else _PyAudioReader(spec, self.frames))
        self.chunks = 0
        self.overflowed = 0
        self.queue: queue.Queue[Chunk] = queue.Queue(maxsize=max(4, 2000 // chunk_ms))
        super().__init__("microphone", spec.source, on_event, clock)

    def get(self, timeout: float) -> Chunk | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        delay = ReopenDelay()
        is_open = False
        expect = self.frames * self.spec.channels * 2
        while not self._stop.is_set():
            if not is_open:
                if not self._open(delay):
                    continue
                is_open = True
            try:
                data = self.reader.read()
            except Exception as exc:
                log.warning("microphone %s read failed: %s", self.spec.source, exc)
                data = b""
            if len(data) != expect:
                self.reader.release()
                is_open = False
                self.watch.check("read error")
                self._stop.wait(delay.next())
                continue
            self._put(Chunk(self.clock(), data))
            self.watch.data()
        self.reader.release()

    def _put(self, chunk: Chunk) -> None:
        self.chunks += 1
        while True:
            try:
                self.queue.put_nowait(chunk)
                return
            except queue.Full:
                self.overflowed += 1
                with contextlib.suppress(queue.Empty):
                    self.queue.get_nowait()
