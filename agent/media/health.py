"""Signal health: audio levels and silence, black and frozen pictures.

Cheap by construction: audio statistics are a few NumPy reductions per 20 ms chunk; pictures are
judged on a 64x36 grey thumbnail at most ``max_per_s`` times a second. Nothing leaves the worker
but numbers and flags.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

FLOOR_DBFS = -120.0
SILENCE_DBFS = -60.0
HOLD_S = 2.0
BLACK_LUMA = 16.0
FROZEN_DIFF = 0.5
THUMB = (64, 36)


def dbfs(value: float) -> float:
    """Full scale = 32768 (int16); silence is floored at -120 dBFS, never -inf (JSON-safe)."""
    if value <= 0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 20 * math.log10(value / 32768.0))


def levels(pcm: bytes) -> tuple[float, float]:
    """(RMS dBFS, peak dBFS) of int16 samples (all channels together)."""
    a = np.frombuffer(pcm, dtype=np.int16)
    if a.size == 0:
        return FLOOR_DBFS, FLOOR_DBFS
    f = a.astype(np.float32)
    rms = float(np.sqrt(np.mean(f * f)))
    peak = float(np.max(np.abs(f)))
    return dbfs(rms), dbfs(peak)


class Hold:
    """A condition that must last ``hold_s`` before the flag goes up; it drops at once."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self.since: float | None = None

    def update(self, now: float, condition: bool) -> bool:
        if not condition:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.hold_s


@dataclass
class AudioLevels:
    rms_dbfs: float = FLOOR_DBFS
    peak_dbfs: float = FLOOR_DBFS
    silence: bool = False


class AudioMeter:
    """Per chunk: silence tracking; per stats window: RMS over the window and its peak."""

    def __init__(self, silence_dbfs: float = SILENCE_DBFS, hold_s: float = HOLD_S) -> None:
        self.silence_dbfs = silence_dbfs
        self._silence = Hold(hold_s)
        self._lock = threading.Lock()
        self._sum_sq = 0.0
        self._count = 0
        self._peak = 0.0
        self.silence = False

    def add(self, now: float, pcm: bytes) -> None:
        a = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        if a.size == 0:
            return
        sum_sq = float(np.dot(a, a))
        peak = float(np.max(np.abs(a)))
        silent = dbfs(peak) < self.silence_dbfs
        with self._lock:
            self._sum_sq += sum_sq
            self._count += a.size
            self._peak = max(self._peak, peak)
            self.silence = self._silence.update(now, silent)

    def lost(self, now: float) -> None:
        """No sound at all (microphone gone) counts as silence too."""
        with self._lock:
            self.silence = self._silence.update(now, True)

    def take(self) -> AudioLevels:
        """The levels since the last call (the stats period), then start a new window."""
        with self._lock:
            rms = math.sqrt(self._sum_sq / self._count) if self._count else 0.0
            out = AudioLevels(round(dbfs(rms), 1), round(dbfs(self._peak), 1), self.silence)
            self._sum_sq, self._count, self._peak = 0.0, 0, 0.0
        return out


def thumbnail(image: np.ndarray, pix_fmt: str = "bgr24") -> np.ndarray:
    """64x36 full-range grey of a frame (downscaled first: the conversion is then free). An
    I420 frame's luma plane is its grey picture, in limited range (16-235): stretched to full
    range, so black is 0 as from BGR."""
    if pix_fmt == "yuv420p":
        luma = image[: image.shape[0] * 2 // 3]
        small = cv2.resize(luma, THUMB, interpolation=cv2.INTER_AREA)
        return cv2.convertScaleAbs(small, alpha=255 / 219, beta=-16 * 255 / 219)
    small = cv2.resize(image, THUMB, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


class VideoHealth:
    """Black (mean luma < 16) and frozen (mean abs diff < 0.5 for 2 s) flags, rate-limited."""

    def __init__(self, max_per_s: float = 4.0, hold_s: float = HOLD_S) -> None:
        self.min_gap = 1.0 / max_per_s
        self._last_t = -math.inf
        self._prev: np.ndarray | None = None
        self._frozen = Hold(hold_s)
        self.black = False
        self.frozen = False
        self.luma = 0.0

    def due(self, now: float) -> bool:
        return now - self._last_t >= self.min_gap

    def frame(self, now: float, image: np.ndarray, pix_fmt: str = "bgr24") -> None:
        if not self.due(now):
            return
        self._last_t = now
        thumb = thumbnail(image, pix_fmt)
        self.luma = float(thumb.mean())
        self.black = self.luma < BLACK_LUMA
        if self._prev is not None:
            diff = float(cv2.absdiff(thumb, self._prev).mean())
            self.frozen = self._frozen.update(now, diff < FROZEN_DIFF)
        self._prev = thumb

    def reset(self) -> None:
        """The camera is gone: neither black nor frozen (that is reported as camera_lost)."""
        self._prev = None
        self._frozen = Hold(self._frozen.hold_s)
        self.black = self.frozen = False
