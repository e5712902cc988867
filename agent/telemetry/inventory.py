"""Inventory: what this terminal is (hardware, OS, network cards, peripherals, agent version).

Published retained, and re-published when it changes. Every list is sorted and nothing volatile
(usage, free space, temporary IPv6 addresses) is included, so a hash of the JSON changes only
when the machine does.
"""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import psutil

from agent.telemetry.system import physical_partitions

_MACHINE_ID = Path("/etc/machine-id")
_OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
_CPUINFO = Path("/proc/cpuinfo")
_IF_INET6 = Path("/proc/net/if_inet6")
#: IFA_F_TEMPORARY: RFC 4941 privacy addresses rotate daily and would churn the inventory.
_IFA_F_TEMPORARY = 0x01


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5), quotes removed."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


def _os() -> dict[str, str | None]:
    for path in _OS_RELEASE:
        text = _read(path)
        if text is not None:
            rel = parse_os_release(text)
            return {
                "name": rel.get("PRETTY_NAME") or rel.get("NAME"),
                "version": rel.get("VERSION_ID") or rel.get("VERSION"),
                "id": rel.get("ID"),
            }
    return {"name": platform.system() or None, "version": platform.version() or None, "id": None}


def _cpu_model() -> str | None:
    for line in (_read(_CPUINFO) or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware"):  # x86, then ARM boards
            return value.strip() or None
    return platform.processor() or None


def _temporary_ipv6() -> set[str]:
    """Temporary (privacy) IPv6 addresses, from the kernel's flags."""
    temp: set[str] = set()
    for line in (_read(_IF_INET6) or "").splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & _IFA_F_TEMPORARY and len(fields[0]) == 32:
            packed = bytes.fromhex(fields[0])
            temp.add(socket.inet_ntop(socket.AF_INET6, packed))
    return temp


def _nics() -> list[dict[str, Any]]:
    temporary = _temporary_ipv6()
    nics: list[dict[str, Any]] = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name == "lo":
            continue
        mac: str | None = None
        v4: set[str] = set()
        v6: set[str] = set()
        for a in addrs:
            if a.family == psutil.AF_LINK:
                mac = a.address.lower() or None
            elif a.family == socket.AF_INET:
                v4.add(a.address)
            elif a.family == socket.AF_INET6:
                addr = a.address.split("%", 1)[0]  # drop the zone of link-local addresses
                if addr not in temporary:
                    v6.add(addr)
        nics.append({"name": name, "mac": mac, "ipv4": sorted(v4), "ipv6": sorted(v6)})
    return nics


def _disks() -> list[dict[str, Any]]:
    disks: list[dict[str, Any]] = []
    for p in physical_partitions():
        try:
            total = psutil.disk_usage(p.mount).total
        except OSError:
            continue
        disks.append({"device": p.device, "mount": p.mount, "fstype": p.fstype, "total": total})
    return disks


def collect_inventory(agent_version: str, config_hash: str, peripherals: dict | None) -> dict:
    """The inventory ``data``; ``peripherals`` is a :meth:`PeripheralWatch.snapshot`, or None
    when the peripherals class is off (the key is then left out)."""
    machine_id = (_read(_MACHINE_ID) or "").strip() or None
    inv = {
        "host": {"hostname": socket.gethostname(), "machine_id": machine_id},
        "os": _os(),
        "kernel": platform.release(),
        "cpu": {
            "model": _cpu_model(),
            "cores_logical": psutil.cpu_count(),
            "cores_physical": psutil.cpu_count(logical=False),
        },
        "memory_bytes": psutil.virtual_memory().total,
        "disks": _disks(),
        "nics": _nics(),
        "agent": {"version": agent_version, "config_hash": config_hash},
    }
    if peripherals is not None:
        inv["peripherals"] = peripherals
    return inv
