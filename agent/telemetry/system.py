"""System collectors: CPU, memory, disks, network, sensors and host facts from psutil.

Rates (bytes/s, operations/s, packets/s) come from counter deltas between two successive
``gather()`` calls over ``time.monotonic()``. A rate is ``None`` (JSON ``null``) when there is no
previous sample yet (the first gather, a device that just appeared) or when a counter went
backwards (a device re-created): "unknown" must not read as "idle".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.records import rfc3339
from agent.telemetry.base import Accumulator, Collector

#: File systems that are never a physical partition worth reporting.
_VIRTUAL_FSTYPES = frozenset(
    {"squashfs", "overlay", "tmpfs", "devtmpfs", "ramfs", "iso9660", "udf", "fuse", "aufs"}
)
#: Block devices that are not disks: loop images, RAM disks, compressed swap, LVM/crypt maps
#: (those double-count the disk below them).
_VIRTUAL_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-", "nbd", "sr")
#: Devices whose partitions are never physical (an LVM ``dm-`` root still is).
_IMAGE_DEVICE_PREFIXES = ("loop", "ram", "zram", "nbd")


def _rate(new: float, old: float | None, elapsed: float) -> float | None:
    """Per-second rate of a monotonically growing counter, or None when it cannot be known."""
    if old is None or elapsed <= 0 or new < old:
        return None
    return round((new - old) / elapsed, 2)


# --- CPU ------------------------------------------------------------------------------------


def _busy_total(t: Any) -> tuple[float, float]:
    """(busy, total) seconds of one cpu_times entry, the way psutil's cpu_percent counts them."""
    total = sum(t)
    # On Linux guest time is already included in user/nice.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


class CpuCollector:
    """Section ``cpu``: overall and per-core busy percent, load average, logical core count.

    Keeps its own previous ``cpu_times`` instead of relying on ``psutil.cpu_percent``'s hidden
    module state (shared by every caller in older psutil), so another caller such as the status
    page cannot shorten our window. The baseline is taken on construction, so the first gather
    reports usage since construction.
    """

    name = "cpu"

    def __init__(self) -> None:
        self._prev: list[tuple[float, float]] = self._sample()

    @staticmethod
    def _sample() -> list[tuple[float, float]]:
        return [_busy_total(t) for t in psutil.cpu_times(percpu=True)]

    def gather(self, acc: Accumulator) -> None:
        cur = self._sample()
        prev = self._prev if len(self._prev) == len(cur) else cur  # CPU hot-plug: re-baseline
        self._prev = cur
        per_core: list[float] = []
        busy_sum = total_sum = 0.0
        for (b1, t1), (b2, t2) in zip(prev, cur, strict=True):
            busy, total = max(b2 - b1, 0.0), t2 - t1
            busy_sum += busy
            total_sum += total
            per_core.append(round(min(busy / total * 100, 100.0), 1) if total > 0 else 0.0)
        percent = round(min(busy_sum / total_sum * 100, 100.0), 1) if total_sum > 0 else 0.0
        acc.add_metrics(
            "cpu",
            {
                "percent": percent,
                "per_core": per_core,
                "load": [round(x, 2) for x in psutil.getloadavg()],
                "count": psutil.cpu_count() or len(cur),
            },
        )


# --- memory ---------------------------------------------------------------------------------


class MemoryCollector:
    """Sections ``memory`` and ``swap`` (bytes and percent), straight from psutil."""

    name = "memory"

    def gather(self, acc: Accumulator) -> None:
        vm = psutil.virtual_memory()
        acc.add_metrics(
            "memory",
            {
                "total": vm.total,
                "available": vm.available,
                "used": vm.used,
                "percent": float(vm.percent),
            },
        )
        sw = psutil.swap_memory()
        acc.add_metrics("swap", {"total": sw.total, "used": sw.used, "percent": float(sw.percent)})


# --- disks ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    device: str
    mount: str
    fstype: str


def physical_partitions() -> list[Partition]:
    """Mounted physical partitions, one per device (bind mounts repeat the same file system).

    Skips loop devices, snaps, squashfs/overlay/tmpfs and the like. Sorted by mount point so the
    shortest (the "real" mount) of a device wins and the order is stable.
    """
    seen: set[str] = set()
    out: list[Partition] = []
    parts = sorted(
        psutil.disk_partitions(all=False), key=lambda p: (len(p.mountpoint), p.mountpoint)
    )
    for p in parts:
        dev_name = os.path.basename(p.device)
        if (
            p.fstype in _VIRTUAL_FSTYPES
            or p.fstype.startswith("fuse.")
            or dev_name.startswith(_IMAGE_DEVICE_PREFIXES)
            or p.mountpoint.startswith("/snap/")
            or p.device in seen
        ):
            continue
        seen.add(p.device)
        out.append(Partition(p.device, p.mountpoint, p.fstype))
    return sorted(out, key=lambda p: p.mount)


def _whole_disks(names: Sequence[str], sys_block: Path = Path("/sys/block")) -> list[str]:
    """Whole physical disks among ``names`` (partitions would double-count their disk)."""
    try:
        whole = {p.name for p in sys_block.iterdir()}
    except OSError:
        whole = None  # no sysfs: keep everything that is not obviously virtual
    return sorted(
        n
        for n in names
        if not n.startswith(_VIRTUAL_BLOCK_PREFIXES) and (whole is None or n in whole)
    )


class DiskCollector:
    """Section ``disks``: usage of physical mounts and per-disk I/O rates (see module doc)."""

    name = "disks"

    def __init__(self) -> None:
        self._prev: dict[str, tuple[int, int, int, int]] = {}
        self._prev_t: float | None = None

    def _mounts(self) -> list[dict[str, Any]]:
        mounts: list[dict[str, Any]] = []
        for p in physical_partitions():
            try:
                u = psutil.disk_usage(p.mount)
            except OSError:
                continue  # unmounted between the two calls, or unreadable
            mounts.append(
                {
                    "mount": p.mount,
                    "fstype": p.fstype,
                    "total": u.total,
                    "used": u.used,
                    "free": u.free,
                    "percent": float(u.percent),
                }
            )
        return mounts

    def _io(self) -> dict[str, dict[str, float | None]]:
        now = time.monotonic()
        elapsed = now - self._prev_t if self._prev_t is not None else 0.0
        try:
            counters = psutil.disk_io_counters(perdisk=True) or {}
        except (OSError, RuntimeError):
            counters = {}
        cur: dict[str, tuple[int, int, int, int]] = {}
        io: dict[str, dict[str, float | None]] = {}
        for dev in _whole_disks(list(counters)):
            c = counters[dev]
            cur[dev] = (c.read_bytes, c.write_bytes, c.read_count, c.write_count)
            old = self._prev.get(dev)
            rb, wb, rc, wc = (None, None, None, None) if old is None else old
            io[dev] = {
                "read_bps": _rate(c.read_bytes, rb, elapsed),
                "write_bps": _rate(c.write_bytes, wb, elapsed),
                "read_iops": _rate(c.read_count, rc, elapsed),
                "write_iops": _rate(c.write_count, wc, elapsed),
            }
        self._prev, self._prev_t = cur, now
        return io

    def gather(self, acc: Accumulator) -> None:
        acc.add_metrics("disks", {"mounts": self._mounts(), "io": self._io()})


# --- network --------------------------------------------------------------------------------


class NetworkCollector:
    """Section ``network``: per-interface rates, error/drop counters since boot, link state.

    Errors and drops stay raw counters: a platform can diff them, and a counter keeps its meaning
    when a sample is lost. ``lo`` is skipped.
    """

    name = "network"

    def __init__(self) -> None:
        self._prev: dict[str, tuple[int, int, int, int]] = {}
        self._prev_t: float | None = None

    def gather(self, acc: Accumulator) -> None:
        now = time.monotonic()
        elapsed = now - self._prev_t if self._prev_t is not None else 0.0
        counters = psutil.net_io_counters(pernic=True)
        try:
            stats = psutil.net_if_stats()
        except OSError:
            stats = {}
        cur: dict[str, tuple[int, int, int, int]] = {}
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(counters):
            if name == "lo":
                continue
            c = counters[name]
            cur[name] = (c.bytes_recv, c.bytes_sent, c.packets_recv, c.packets_sent)
            old = self._prev.get(name)
            rb, tb, rp, tp = (None, None, None, None) if old is None else old
            st = stats.get(name)
            out[name] = {
                "rx_bps": _rate(c.bytes_recv, rb, elapsed),
                "tx_bps": _rate(c.bytes_sent, tb, elapsed),
                "rx_pps": _rate(c.packets_recv, rp, elapsed),
                "tx_pps": _rate(c.packets_sent, tp, elapsed),
                "errin": c.errin,
                "errout": c.errout,
                "dropin": c.dropin,
                "dropout": c.dropout,
                "up": bool(st.isup) if st is not None else False,
            }
        self._prev, self._prev_t = cur, now
        acc.add_metrics("network", out)


# --- sensors --------------------------------------------------------------------------------


def _opt_float(x: Any) -> float | None:
    return None if x is None else round(float(x), 1)


class SensorsCollector:
    """Section ``sensors``: temperatures, fans, battery; empty or null when the hardware lacks them.

    Overheating classroom PCs (dusty, in closed cabinets) are a common fault, hence temperatures.
    """

    name = "sensors"

    def gather(self, acc: Accumulator) -> None:
        temps: dict[str, list[dict[str, Any]]] = {}
        fans: dict[str, list[dict[str, Any]]] = {}
        battery: dict[str, Any] | None = None
        with contextlib.suppress(AttributeError, OSError, RuntimeError):
            for chip, entries in sorted(psutil.sensors_temperatures().items()):
                temps[chip] = [
                    {
                        "label": e.label or "",
                        "current_c": _opt_float(e.current),
                        "high_c": _opt_float(e.high),
                        "critical_c": _opt_float(e.critical),
                    }
                    for e in entries
                ]
        with contextlib.suppress(AttributeError, OSError, RuntimeError):
            for chip, entries in sorted(psutil.sensors_fans().items()):
                fans[chip] = [{"label": e.label or "", "rpm": int(e.current)} for e in entries]
        with contextlib.suppress(AttributeError, OSError, RuntimeError):
            b = psutil.sensors_battery()
            if b is not None:
                secs = b.secsleft
                battery = {
                    "percent": round(min(float(b.percent), 100.0), 1),  # some report > 100
                    "plugged": b.power_plugged,
                    # POWER_TIME_UNLIMITED / POWER_TIME_UNKNOWN are negative sentinels
                    "secs_left": int(secs) if isinstance(secs, int | float) and secs >= 0 else None,
                }
        acc.add_metrics("sensors", {"temperatures": temps, "fans": fans, "battery": battery})


# --- host -----------------------------------------------------------------------------------


def uptime_s() -> float:
    """Seconds since boot from CLOCK_BOOTTIME (immune to wall-clock jumps, counts suspend)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is not None:
        with contextlib.suppress(OSError):
            return time.clock_gettime(clock)
    return max(time.time() - psutil.boot_time(), 0.0)


class ProcessCounter:
    """How many processes run, without reading the whole of /proc at every tick.

    The link count of /proc is the kernel's process count plus a constant (its own
    subdirectories; fs/proc/root.c), so one ``stat()`` (~3 us) replaces a directory listing that
    grows with the machine (~1 ms at 1,000 processes; issue 12). The constant is measured again
    by a listing every :attr:`calibrate_s`, which also absorbs processes the listing cannot see
    (other PID namespaces). Falls back to the listing where the link count says nothing.
    """

    def __init__(self, proc: str = "/proc", calibrate_s: float = 300.0) -> None:
        self.proc = proc
        self.calibrate_s = calibrate_s
        self._offset: int | None = None
        self._next = 0.0

    def count(self) -> int:
        now = time.monotonic()
        if self._offset is None or now >= self._next:
            links = os.stat(self.proc).st_nlink
            listed = sum(1 for n in os.listdir(self.proc) if n.isdigit())
            offset = links - listed
            self._offset = offset if 0 <= offset < links else None
            self._next = now + self.calibrate_s
            return listed
        return max(0, os.stat(self.proc).st_nlink - self._offset)


class HostCollector:
    """Section ``host``: uptime, boot time, process and login-session counts (never user names)."""

    name = "host"

    def __init__(self) -> None:
        self._processes = ProcessCounter()

    def gather(self, acc: Accumulator) -> None:
        try:
            users = len(psutil.users())
        except (OSError, RuntimeError):
            users = 0
        acc.add_metrics(
            "host",
            {
                "uptime_s": round(uptime_s(), 1),
                "boot_time": rfc3339(psutil.boot_time()),
                "process_count": self._processes.count(),
                "users": users,
            },
        )


def system_collectors() -> list[Collector]:
    """All system collectors, in the order their sections are best read."""
    return [
        CpuCollector(),
        MemoryCollector(),
        DiskCollector(),
        NetworkCollector(),
        SensorsCollector(),
        HostCollector(),
    ]
