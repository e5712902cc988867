"""Classes of telemetry: the one table of what each class puts on the wire.

``telemetry.classes`` in the config turns a class off; the scheduler then never runs its
collectors, never samples usage or builds the inventory, so nothing of it is read or sent.
docs/privacy.md describes the same table for people; a test keeps the two and the schemas in step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from agent.config import TelemetryClasses
from agent.records import RETAINED_KINDS


@dataclass(frozen=True, slots=True)
class TelemetryClass:
    """What one class produces: collectors (by name), metrics sections, record kinds, events."""

    collectors: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    events: tuple[str, ...] = ()


CLASSES: dict[str, TelemetryClass] = {
    "system": TelemetryClass(
        collectors=("cpu", "memory", "disks", "network", "sensors", "host"),
        sections=("cpu", "memory", "swap", "disks", "network", "sensors", "host")),
    "usage": TelemetryClass(kinds=("usage",)),
    "peripherals": TelemetryClass(
        collectors=("peripherals",), sections=("peripherals",),
        events=("peripheral_added", "peripheral_removed", "display_connected",
                "display_disconnected")),
    "netquality": TelemetryClass(collectors=("netquality",), sections=("netquality",)),
    "inventory": TelemetryClass(kinds=("inventory",)),
    "media": TelemetryClass(collectors=("media",), sections=("media",)),
}

#: Collectors the agent needs to work: in no class, never off.
ALWAYS_ON_COLLECTORS = ("agent",)


def enabled(classes: TelemetryClasses, name: str) -> bool:
    return bool(getattr(classes, name))


def off(classes: TelemetryClasses) -> list[str]:
    """Names of the classes turned off, in config order."""
    return [f.name for f in fields(classes) if not enabled(classes, f.name)]


def collector_allowed(classes: TelemetryClasses, collector: str) -> bool:
    """Whether a collector may run; a collector in no class and not always-on is a bug."""
    if collector in ALWAYS_ON_COLLECTORS:
        return True
    for name, cls in CLASSES.items():
        if collector in cls.collectors:
            return enabled(classes, name)
    raise ValueError(f"collector {collector!r} belongs to no telemetry class "
                     "(add it to agent.telemetry.classes.CLASSES)")


def retained_to_clear(classes: TelemetryClasses) -> tuple[str, ...]:
    """Retained kinds of the classes that are off: the publisher empties them on the broker."""
    return tuple(k for name, cls in CLASSES.items() if not enabled(classes, name)
                 for k in cls.kinds if k in RETAINED_KINDS)
