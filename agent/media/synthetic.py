"""Synthetic sources: a test pattern with a burned-in clock and a tone with a beep every second.

They stand in for a camera and a microphone on machines without either, and make latency and
A/V sync measurable: the beep starts at each wall-clock second, and each frame carries its
capture time to the millisecond twice, as text for people and as the time strip for machines
(agent/media/timestrip.py). Both are paced by the caller (they only compute what was asked for).
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from agent.media.timestrip import draw_strip

FLASH_S = 0.1  # the beep and the flash: the first 100 ms of every wall-clock second

_BARS_BGR = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0), (192, 0, 192),
             (0, 0, 192), (192, 0, 0)]


class SyntheticVideo:
    """Colour bars, a moving box, the wall clock + frame number as large text, and the time
    strip (BGR frames). A white square (``flash_rect``) shows during the audio beep, so people
    can see the A/V offset too."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        self.width, self.height, self.fps = width, height, fps
        side = max(8, height // 8)
        self.flash_rect = (width - side - width // 40, height * 3 // 4 + height // 40, side, side)
        self._bg = self._background()
        self._box = max(8, height // 6)
        self._scale = height / 360 * 1.1
        self._thick = max(1, round(height / 180))

    def _background(self) -> np.ndarray:
        """Drawn once: a frame costs one copy, one box and one line of text."""
        w, h = self.width, self.height
        bg = np.zeros((h, w, 3), np.uint8)
        for i, colour in enumerate(_BARS_BGR):
            bg[: h * 2 // 3, i * w // 7:(i + 1) * w // 7] = colour
        ramp = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8)
        bg[h * 2 // 3: h * 3 // 4] = ramp[None, :, None]
        x, y, fw, fh = self.flash_rect
        bg[y - 2:y + fh + 2, x - 2:x + fw + 2] = (96, 96, 96)  # a frame around the flash
        bg[y:y + fh, x:x + fw] = 0
        return bg

    def frame(self, n: int, wall: float | None = None) -> np.ndarray:
        """Frame ``n``; ``wall`` (epoch seconds) is the time burned in, now by default."""
        wall = time.time() if wall is None else wall
        img = self._bg.copy()
        box, w, h = self._box, self.width, self.height
        span = max(1, w - box)
        pos = n * max(1, w // (4 * self.fps)) % (2 * span)
        x = pos if pos < span else 2 * span - pos
        y = h * 2 // 3 - box - h // 20
        img[y:y + box, x:x + box] = (255, 255, 255)
        if wall % 1.0 < FLASH_S:
            fx, fy, fw, fh = self.flash_rect
            img[fy:fy + fh, fx:fx + fw] = 255
        lt = time.localtime(wall)
        text = f"{time.strftime('%H:%M:%S', lt)}.{int(wall * 1000) % 1000:03d}  #{n}"
        org = (w // 40, h - h // 14)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, self._scale, (255, 255, 255),
                    self._thick, cv2.LINE_AA)
        draw_strip(img, wall)
        return img


class SyntheticAudio:
    """440 Hz at about -20 dBFS; a 100 ms 1 kHz beep (-12 dBFS) at each wall-clock second."""

    TONE_HZ = 440.0
    BEEP_HZ = 1000.0
    TONE_AMPLITUDE = 0.1   # peak -20 dBFS
    BEEP_AMPLITUDE = 0.25  # peak -12 dBFS: stands out for sync measurements
    BEEP_S = FLASH_S

    def __init__(self, rate: int, channels: int) -> None:
        self.rate, self.channels = rate, channels
        self._n = 0  # samples made so far: keeps the tone's phase continuous across chunks

    def chunk(self, frames: int, wall: float | None = None) -> bytes:
        """``frames`` samples per channel, int16 interleaved; ``wall`` = time of the first one."""
        wall = time.time() if wall is None else wall
        idx = np.arange(self._n, self._n + frames, dtype=np.float64)
        self._n += frames
        phase = 2 * math.pi * idx / self.rate
        t = wall + np.arange(frames, dtype=np.float64) / self.rate
        beep = np.mod(t, 1.0) < self.BEEP_S
        wave = np.where(beep, self.BEEP_AMPLITUDE * np.sin(phase * self.BEEP_HZ),
                        self.TONE_AMPLITUDE * np.sin(phase * self.TONE_HZ))
        pcm = (wave * 32767).astype(np.int16)
        if self.channels > 1:
            pcm = np.repeat(pcm, self.channels)
        return pcm.tobytes()
