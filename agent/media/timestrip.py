"""The time strip: each synthetic frame's capture time, machine-readable in the picture.

A row of 48 square blocks at the top-left corner: sync 1010, the epoch time in milliseconds
modulo 2^40 (MSB first) and a 4-bit checksum (sum of the ten nibbles mod 16); white = 1. OCR of
the burned-in clock would be slow and fragile; these blocks survive H.264 at low bit rates and
let bench/latency.py and the A/V sync checks read exactly when a decoded frame was captured.
Drawing costs ~0.1 ms a frame.
"""

from __future__ import annotations

import time

import numpy as np

SYNC = (1, 0, 1, 0)
VALUE_BITS = 40
BITS = len(SYNC) + VALUE_BITS + 4


def block_size(width: int) -> int:
    """Block edge in pixels: large enough to survive H.264 at low bit rates."""
    return max(6, width // 80)


def crop_filter(width: int) -> str:
    """FFmpeg filter that keeps only the strip of a ``width``-wide frame, in grey."""
    b = block_size(width)
    return f"crop={BITS * b}:{b}:0:0,format=gray"


def strip_bits(ms: int) -> list[int]:
    value = ms % (1 << VALUE_BITS)
    bits = [(value >> (VALUE_BITS - 1 - i)) & 1 for i in range(VALUE_BITS)]
    check = sum((value >> (4 * i)) & 0xF for i in range(VALUE_BITS // 4)) % 16
    return [*SYNC, *bits, *((check >> (3 - i)) & 1 for i in range(4))]


def draw_strip(img: np.ndarray, wall: float) -> None:
    """Write ``wall`` (epoch seconds) into ``img`` (H x W x 3 or H x W, uint8) in place."""
    b = block_size(img.shape[1])
    for i, bit in enumerate(strip_bits(round(wall * 1000))):
        img[0:b, i * b:(i + 1) * b] = 255 if bit else 0


def read_strip(gray: np.ndarray, near: float | None = None) -> float | None:
    """The epoch seconds written in a grey frame's strip (whose width is the strip's), or None.

    ``near`` (epoch seconds, default now) resolves the 2^40 ms wrap (34 years).
    """
    b = gray.shape[1] // BITS
    if b < 1 or gray.shape[0] < b:
        return None
    row = gray[b // 2, [i * b + b // 2 for i in range(BITS)]]
    bits = [int(v > 127) for v in row]
    if tuple(bits[:4]) != SYNC:
        return None
    value = 0
    for bit in bits[4:4 + VALUE_BITS]:
        value = value << 1 | bit
    check = 0
    for bit in bits[4 + VALUE_BITS:]:
        check = check << 1 | bit
    if check != sum((value >> (4 * i)) & 0xF for i in range(VALUE_BITS // 4)) % 16:
        return None
    now_ms = round((time.time() if near is None else near) * 1000)
    ms = now_ms - ((now_ms - value) % (1 << VALUE_BITS))
    if now_ms - ms > (1 << (VALUE_BITS - 1)):
        ms += 1 << VALUE_BITS
    return ms / 1000

