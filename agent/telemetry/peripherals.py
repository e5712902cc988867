"""Peripherals of a classroom terminal: cameras, microphones, displays and USB devices.

Read from sysfs and procfs only (no device is opened, so a lesson holding the camera is never
disturbed). A camera or microphone unplugged before a remote lesson is the fault technicians see
most, hence the events on change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.records import Severity
from agent.telemetry.base import Accumulator

Device = dict[str, Any]
Snapshot = dict[str, list[Device]]

#: Classes diffed into peripheral_added / peripheral_removed, by the device's ``id``.
_DEVICE_CLASSES = ("video", "audio_inputs", "usb")
#: Losing one of these can break a lesson.
_CRITICAL_CLASSES = frozenset({"video", "audio_inputs"})
_CLASS_LABEL = {"video": "video device", "audio_inputs": "audio input", "usb": "USB device"}

# ' 0 [PCH            ]: HDA-Intel - HDA Intel PCH'
_CARD_RE = re.compile(r"^\s*(\d+)\s+\[[^\]]*\]:\s*.*?\s+-\s+(.*?)\s*$")
# '00-00: ALC887-VD Analog : ALC887-VD Analog : playback 1 : capture 1'
_PCM_RE = re.compile(r"^(\d+)-(\d+):\s*(.*)$")


def _natural_key(s: str) -> list[Any]:
    """Sort video2 before video10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _read(path: Path) -> str | None:
    """A sysfs attribute, stripped; None if absent or unreadable (a device may vanish mid-read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _entries(directory: Path, pattern: str) -> list[Path]:
    try:
        return sorted(directory.glob(pattern), key=lambda p: _natural_key(p.name))
    except OSError:
        return []


class PeripheralWatch:
    """Collector ``peripherals``: device counts each interval, events when devices come and go.

    The first gather sets the baseline and raises no event (the inventory reports what is there).
    """

    name = "peripherals"

    def __init__(self, sysfs: Path = Path("/sys"), procfs: Path = Path("/proc")) -> None:
        self._sys = Path(sysfs)
        self._proc = Path(procfs)
        self._last: Snapshot | None = None

    @property
    def last(self) -> Snapshot | None:
        """The snapshot taken by the latest gather (for the inventory), or None before one."""
        return self._last

    # --- reading ----------------------------------------------------------------------------

    def _video(self) -> list[Device]:
        out: list[Device] = []
        for d in _entries(self._sys / "class" / "video4linux", "video*"):
            name = _read(d / "name")
            if name is not None:
                out.append({"id": d.name, "name": name})
        return out

    def _audio_inputs(self) -> list[Device]:
        asound = self._proc / "asound"
        cards: dict[int, str] = {}
        for line in (_read(asound / "cards") or "").splitlines():
            m = _CARD_RE.match(line)
            if m:
                cards[int(m.group(1))] = m.group(2)
        out: list[Device] = []
        for line in (_read(asound / "pcm") or "").splitlines():
            m = _PCM_RE.match(line.strip())
            if not m:
                continue
            parts = [p.strip() for p in m.group(3).split(":")]
            if not any(p.startswith("capture") for p in parts[2:]):
                continue
            card, dev = int(m.group(1)), int(m.group(2))
            out.append(
                {
                    "id": f"card{card}-pcm{dev}c",
                    "name": parts[1] if len(parts) > 1 and parts[1] else parts[0],
                    "card": cards.get(card),
                }
            )
        return sorted(out, key=lambda d: _natural_key(d["id"]))

    def _displays(self) -> list[Device]:
        out: list[Device] = []
        for d in _entries(self._sys / "class" / "drm", "card*-*"):
            status = _read(d / "status")
            if status is not None:
                out.append({"id": d.name, "status": status})
        return out

    def _usb(self) -> list[Device]:
        out: list[Device] = []
        for d in _entries(self._sys / "bus" / "usb" / "devices", "*"):
            if ":" in d.name or d.name.startswith("usb"):  # interfaces and root hubs
                continue
            vendor = _read(d / "idVendor")
            if vendor is None:
                continue
            out.append(
                {
                    "id": d.name,
                    "vendor_id": vendor,
                    "product_id": _read(d / "idProduct"),
                    "manufacturer": _read(d / "manufacturer"),
                    "product": _read(d / "product"),
                }
            )
        return out

    def snapshot(self) -> Snapshot:
        """What is attached now; sorted by id, missing directories give empty lists."""
        return {
            "video": self._video(),
            "audio_inputs": self._audio_inputs(),
            "displays": self._displays(),
            "usb": self._usb(),
        }

    # --- collecting -------------------------------------------------------------------------

    def gather(self, acc: Accumulator) -> None:
        snap = self.snapshot()
        acc.add_metrics(
            "peripherals",
            {
                "video": len(snap["video"]),
                "audio_inputs": len(snap["audio_inputs"]),
                "displays_connected": sum(d["status"] == "connected" for d in snap["displays"]),
                "usb": len(snap["usb"]),
            },
        )
        if self._last is not None:
            _diff(self._last, snap, acc)
        self._last = snap


def _describe(dev: Device) -> str:
    label = dev.get("name") or dev.get("product")
    return f"{dev['id']} ({label})" if label else str(dev["id"])


def _diff(old: Snapshot, new: Snapshot, acc: Accumulator) -> None:
    """Raise events for what changed; a device whose attributes changed is removed + added."""
    for cls in _DEVICE_CLASSES:
        before = {d["id"]: d for d in old.get(cls, [])}
        after = {d["id"]: d for d in new.get(cls, [])}
        label = _CLASS_LABEL[cls]
        for id_, dev in before.items():
            if after.get(id_) != dev:
                sev: Severity = "warning" if cls in _CRITICAL_CLASSES else "info"
                acc.add_event(
                    "peripheral_removed",
                    sev,
                    f"{label} removed: {_describe(dev)}",
                    **{"class": cls, "device": dev},
                )
        for id_, dev in after.items():
            if before.get(id_) != dev:
                acc.add_event(
                    "peripheral_added",
                    "info",
                    f"{label} added: {_describe(dev)}",
                    **{"class": cls, "device": dev},
                )
    was = {d["id"]: d["status"] == "connected" for d in old.get("displays", [])}
    now = {d["id"]: d for d in new.get("displays", [])}
    for id_ in sorted(set(was) | set(now), key=_natural_key):
        connected = id_ in now and now[id_]["status"] == "connected"
        if connected and not was.get(id_, False):
            acc.add_event(
                "display_connected",
                "info",
                f"display connected: {id_}",
                **{"class": "displays", "device": now[id_]},
            )
        elif was.get(id_, False) and not connected:
            dev = now.get(id_, {"id": id_, "status": "disconnected"})
            acc.add_event(
                "display_disconnected",
                "warning",
                f"display disconnected: {id_}",
                **{"class": "displays", "device": dev},
            )
