"""The lesson pipeline's health as a metrics section, from the media worker's latest stats line.

The worker computes everything (frame counters, encoder speed, per-sink bit rate and state, audio
levels, black/frozen/silence flags) in its own process; this collector only copies the latest
numbers, so telemetry never imports OpenCV or NumPy. No image or sound is ever part of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.telemetry.base import Accumulator

_SECTIONS = ("video", "audio", "flags", "encoder", "sinks", "recording")


class MediaHealthCollector:
    name = "media"

    def __init__(self, stats: Callable[[], dict[str, Any] | None],
                 lesson_id: Callable[[], str | None]) -> None:
        self.stats = stats
        self.lesson_id = lesson_id

    def gather(self, acc: Accumulator) -> None:
        lesson = self.lesson_id()
        s = self.stats() if lesson else None
        if not s:
            acc.add_metrics("media", {"active": False, "lesson_id": lesson})
            return
        section: dict[str, Any] = {"active": True, "lesson_id": lesson}
        section.update({k: s[k] for k in _SECTIONS if k in s})
        acc.add_metrics("media", section)
