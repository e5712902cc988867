"""Which boot of the machine this is: tells a terminal that was switched off from an agent that
was merely stopped (power-on intervals in usage, missed lessons)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

#: Boot times closer than this are the same boot (``btime`` wobbles when the clock is adjusted).
BOOT_TOLERANCE_S = 2.0

_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str | None:
    """The kernel's per-boot UUID (Linux): a sturdier boot identity than a wall-clock time."""
    try:
        return _BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Boot:
    """One boot: the kernel's boot id (None where there is none) and the boot time (epoch s)."""

    id: str | None
    time: float

    @classmethod
    def current(cls) -> Boot:
        return cls(read_boot_id(), psutil.boot_time())

    def same(self, other_id: object, other_time: float) -> bool:
        """Whether a boot recorded as (``other_id``, ``other_time``) is this one."""
        if self.id and isinstance(other_id, str):
            return other_id == self.id
        return abs(other_time - self.time) <= BOOT_TOLERANCE_S
