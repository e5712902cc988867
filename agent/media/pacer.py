"""The clock drives the pace: exactly ``fps`` frames and ``rate`` samples per second into FFmpeg.

Raw pipes carry no timestamps, FFmpeg counts frames and samples (MEDIA-NOTES), so each stream
must be written at the nominal rate of the monotonic clock whatever the devices do. The decision
parts (``VideoPacer``, ``AudioAligner``) are pure and take the time as an argument, so they are
tested with a fake clock; the pumps are the threads that apply them.
"""

from __future__ import annotations

import enum
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class FrameKind(enum.Enum):
    NEW = "new"
    REPEAT = "repeat"
    SLATE = "slate"


@dataclass
class VideoCounters:
    encoded: int = 0  # frames written to the encoder (= slots elapsed)
    duplicated: int = 0  # the camera was late: the last frame went again
    dropped: int = 0  # the camera was early: captured frames never written
    slate: int = 0  # the camera was gone (or not there yet)


class VideoPacer:
    """Slot ``n`` is due at ``start + n / fps``; each slot gets exactly one frame."""

    def __init__(self, fps: int, start: float) -> None:
        self.fps, self.start = fps, start
        self.n = 0
        self.last_seq = 0
        self.counters = VideoCounters()

    def due(self) -> float:
        return self.start + self.n / self.fps

    def decide(self, seq: int | None, lost: bool) -> FrameKind:
        """Which frame fills the current slot, given the latest capture's sequence number."""
        self.n += 1
        c = self.counters
        c.encoded += 1
        if lost or seq is None:
            c.slate += 1
            return FrameKind.SLATE
        if seq == self.last_seq:
            c.duplicated += 1
            return FrameKind.REPEAT
        if self.last_seq:
            c.dropped += max(0, seq - self.last_seq - 1)
        self.last_seq = seq
        return FrameKind.NEW


def nearest_frame(frames: tuple[Any, ...], due: float, last_seq: int) -> Any:
    """Of ``frames`` (oldest first, each with ``t`` and ``seq``), the one not yet written that
    was captured nearest the slot's time ``due``; the newest if every one was written already.

    A pump on time sees only frames captured before ``due``, so this is the newest; a pump woken
    late may see the next slot's frame too, and takes its own slot's instead of dropping it.
    """
    unwritten = [f for f in frames if f.seq > last_seq]
    if not unwritten:
        return frames[-1] if frames else None
    return min(unwritten, key=lambda f: abs(f.t - due))


class Slate:
    """A "camera unavailable" frame with the time; redrawn once a second, not per frame."""

    def __init__(self, width: int, height: int, convert: Callable[[np.ndarray], Any]) -> None:
        self.width, self.height, self.convert = width, height, convert
        bg = np.full((height, width, 3), 48, np.uint8)
        scale = height / 360
        cv2.putText(bg, "camera unavailable", (width // 12, height // 2),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.4 * scale, (255, 255, 255),
                    max(1, round(2 * scale)), cv2.LINE_AA)
        self._bg = bg
        self._second = -1
        self._data: Any = None

    def image(self, wall: float) -> np.ndarray:
        img = self._bg.copy()
        scale = self.height / 360
        cv2.putText(img, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)),
                    (self.width // 12, self.height * 2 // 3), cv2.FONT_HERSHEY_SIMPLEX,
                    0.9 * scale, (200, 200, 200), max(1, round(2 * scale)), cv2.LINE_AA)
        return img

    def data(self, wall: float) -> Any:
        if int(wall) != self._second or self._data is None:
            self._second = int(wall)
            self._data = self.convert(self.image(wall))
        return self._data


@dataclass
class AudioCounters:
    chunks: int = 0
    inserted_frames: int = 0  # silence added (late or lost microphone, delay_ms)
    dropped_frames: int = 0  # samples thrown away (fast microphone clock, delay_ms < 0)


class AudioAligner:
    """Keeps samples written within ``tolerance_s`` of the clock (plus ``delay_ms``).

    The drift of each chunk (samples written - samples due) is noisy with arrival jitter, so the
    correction uses the median over ``window_s``; a drift beyond ``jump_s`` is corrected at once.
    Silence is inserted, or samples dropped, by exactly the estimated drift.
    """

    def __init__(self, rate: int, channels: int, start: float, delay_ms: float = 0,
                 tolerance_s: float = 0.02, window_s: float = 1.0, gap_s: float = 0.2,
                 jump_s: float = 0.5) -> None:
        self.rate, self.frame_bytes, self.start = rate, 2 * channels, start
        self.offset = round(delay_ms * rate / 1000)
        self.tolerance = round(tolerance_s * rate)
        self.jump = round(jump_s * rate)
        self.window_s, self.gap_s = window_s, gap_s
        self.written = 0  # frames (one sample per channel)
        self.counters = AudioCounters()
        self._to_drop = 0
        self._drifts: list[int] = []
        self._window_start = start
        self._last_chunk = start
        self._first = True

    def due(self, now: float) -> int:
        """Frames that should have been written by ``now`` (negative early on if delay < 0)."""
        return round((now - self.start) * self.rate) + self.offset

    def feed(self, now: float, data: bytes) -> bytes:
        """What to write for this captured chunk (maybe preceded by silence, maybe trimmed)."""
        self.counters.chunks += 1
        self._last_chunk = now
        n = len(data) // self.frame_bytes
        drift = self.written + n - self.due(now)
        out = b""
        if self._first or abs(drift) > self.jump:
            self._first = False
            out = self._correct(drift)
        else:
            self._drifts.append(drift)
            if now - self._window_start >= self.window_s:
                out = self._correct(round(statistics.median(self._drifts)))
        if self._to_drop:
            cut = min(self._to_drop, n)
            self._to_drop -= cut
            self.counters.dropped_frames += cut
            data = data[cut * self.frame_bytes:]
        self.written += len(data) // self.frame_bytes
        return out + data

    def fill(self, now: float) -> bytes:
        """No chunk for ``gap_s`` (late or lost microphone): silence up to the clock."""
        if now - self._last_chunk < self.gap_s:
            return b""
        missing = self.due(now) - self.written
        if missing <= 0:
            return b""
        self._to_drop = 0
        self._reset_window(now)
        return self._silence(missing)

    def _correct(self, drift: int) -> bytes:
        self._reset_window(self._last_chunk)
        if abs(drift) <= self.tolerance:
            return b""
        if drift > 0:
            self._to_drop = drift
            return b""
        self._to_drop = 0
        return self._silence(-drift)

    def _silence(self, frames: int) -> bytes:
        self.written += frames
        self.counters.inserted_frames += frames
        return bytes(frames * self.frame_bytes)

    def _reset_window(self, now: float) -> None:
        self._drifts.clear()
        self._window_start = now


class _Pump:
    """A writer thread into one encoder pipe: start, stop, and the error that ended it."""

    name = "pump"

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> bool:
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _guarded(self) -> None:
        try:
            self._run()
        except (BrokenPipeError, ValueError, OSError) as exc:  # the encoder went away
            if not self._stop.is_set():
                self.error = exc
                log.warning("%s stopped: %s", self.name.replace("-", " "), exc)

    def _run(self) -> None:
        raise NotImplementedError


#: A pump more than this many slots behind repeats the last frame until it has caught up.
MAX_LAG_FRAMES = 2


class VideoPump(_Pump):
    """The thread that writes one frame per slot: new, repeated, or the slate."""

    name = "video-pump"

    def __init__(self, source: Any, fps: int, start: float, write: Callable[[Any], None],
                 convert: Callable[..., Any], slate: Slate,
                 on_frame: Callable[[float, np.ndarray, str], None] | None = None,
                 clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.source, self.write, self.convert, self.slate = source, write, convert, slate
        self.on_frame, self.clock, self.wall = on_frame, clock, wall
        self.pacer = VideoPacer(fps, start)
        self.patience = 0.5 / fps
        self.max_lag = MAX_LAG_FRAMES / fps
        self._last: Any = None
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.pacer.due() - self.clock()
            if wait > 0:
                self._stop.wait(wait)
                continue
            self.write(self._next_frame())

    def _next_frame(self) -> Any:
        lost = self.source.check()
        if (self._last is not None and not lost
                and self.clock() - self.pacer.due() > self.max_lag):
            # Behind its slots (the encoder or this thread was starved): fill the missed slots
            # with the last frame. A newer picture in an old slot would put the video behind
            # the sound by the lag, for the rest of the lesson if the lag never clears.
            self.pacer.decide(self.pacer.last_seq, False)
            return self._last
        frame = nearest_frame(self.source.recent(), self.pacer.due(), self.pacer.last_seq)
        if frame is not None and not lost and frame.seq == self.pacer.last_seq:
            # A camera at the same nominal rate arrives with jitter around our slot: wait a
            # little for its next frame instead of a duplicate now and a drop next slot.
            frame = self.source.wait_newer(frame.seq, self.patience)
        kind = self.pacer.decide(frame.seq if frame else None, lost)
        if kind is FrameKind.SLATE:
            self._last = None
            return self.slate.data(self.wall())
        if kind is FrameKind.NEW or self._last is None:
            self._last = self.convert(frame.image, src_fmt=frame.pix_fmt)
            if self.on_frame is not None:
                self.on_frame(self.clock(), frame.image, frame.pix_fmt)
        return self._last


class AudioPump(_Pump):
    """The thread that writes captured audio, aligned to the clock, silence when there is none."""

    name = "audio-pump"

    def __init__(self, source: Any, aligner: AudioAligner, write: Callable[[bytes], None],
                 on_chunk: Callable[[float, bytes], None] | None = None,
                 on_gap: Callable[[float], None] | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.source, self.aligner, self.write = source, aligner, write
        self.on_chunk, self.on_gap, self.clock = on_chunk, on_gap, clock
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            chunk = self.source.get(timeout=0.05)
            now = self.clock()
            if chunk is not None:
                # Aligned on when it was captured, not when it got here: a backlog (chunks
                # queued before the lesson started, or behind a stalled pipe) is dropped
                # instead of playing late.
                out = self.aligner.feed(chunk.t, chunk.data)
                if self.on_chunk is not None:
                    self.on_chunk(now, chunk.data)
            else:
                self.source.check()
                out = self.aligner.fill(now)
                if out and self.on_gap is not None:
                    self.on_gap(now)
            if out:
                self.write(out)
