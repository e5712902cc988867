"""Recording retention: delete lessons by age, then oldest first to keep a free-space reserve.

Recordings live in one directory per lesson under the recording root. A lesson directory is
removed whole (its segments belong together), never the one being recorded. Runs in the daemon,
cheaply (a directory listing and a statvfs), so it can run every minute.

With upload on (``uploaded`` given), age alone never deletes a recording that is not yet in the
object store and verified; the free-space reserve takes uploaded recordings first and only then,
if it must, the oldest ones not uploaded (``Removed.uploaded`` is False: the caller reports them
as lost).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Removed:
    path: str
    bytes: int
    reason: str  # "age" | "free_space"
    uploaded: bool | None = None  # None: upload is off


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1_048_576


def _size(d: Path) -> int:
    total = 0
    for f in d.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def enforce(
    root: Path,
    retention_days: float,
    min_free_mb: float,
    active: Path | None = None,
    now: float | None = None,
    uploaded: Callable[[Path], bool] | None = None,
) -> list[Removed]:
    """Delete lesson directories older than ``retention_days``, then the oldest ones while free
    space is under ``min_free_mb``. Returns what was removed (for an event).

    ``uploaded`` (upload on) says whether a lesson directory is in the object store and verified.
    """
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    lessons = []
    for d in root.iterdir():
        if not d.is_dir() or (active is not None and d.resolve() == active.resolve()):
            continue
        try:
            lessons.append((d.stat().st_mtime, d))
        except OSError:
            continue
    lessons.sort()
    removed: list[Removed] = []
    cutoff = now - retention_days * 86400
    keep = []
    done = {d: True if uploaded is None else uploaded(d) for _, d in lessons}
    for mtime, d in lessons:
        if mtime < cutoff and done[d]:
            removed.append(_remove(d, "age", None if uploaded is None else True))
        else:
            keep.append(d)
    keep.sort(key=lambda d: not done[d])  # stable: uploaded ones first, each oldest first
    for d in keep:
        if free_mb(root) >= min_free_mb:
            break
        removed.append(_remove(d, "free_space", None if uploaded is None else done[d]))
    return [r for r in removed if r.bytes >= 0]


def _remove(d: Path, reason: str, uploaded: bool | None) -> Removed:
    size = _size(d)
    try:
        shutil.rmtree(d)
    except OSError as exc:
        log.warning("retention: cannot remove %s: %s. Next step: check its permissions.", d, exc)
        return Removed(str(d), -1, reason, uploaded)
    log.info("retention: removed %s (%d bytes, %s)", d, size, reason)
    return Removed(str(d), size, reason, uploaded)


class ReserveGuard:
    """Hysteresis on the free-space reserve: say "stop" once when free space falls under the
    reserve, "resume" once when it is back above reserve + margin (so a segment written and a
    recording removed do not make it flap)."""

    def __init__(self, reserve_mb: float, margin_mb: float) -> None:
        self.reserve_mb, self.margin_mb = reserve_mb, margin_mb
        self.stopped = False

    def update(self, free: float) -> str | None:
        if not self.stopped and free < self.reserve_mb:
            self.stopped = True
            return "stop"
        if self.stopped and free >= self.reserve_mb + self.margin_mb:
            self.stopped = False
            return "resume"
        return None
