"""The one contract every telemetry input follows (after Telegraf's ``Gather``).

A collector reads the machine and reports through an :class:`Accumulator`; it never schedules
itself, never publishes and never raises for an absent sensor (it just reports nothing). The
scheduler calls every collector once per interval and turns what was accumulated into records.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.records import Severity


class Accumulator(Protocol):
    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Add one section (e.g. ``cpu``) to this interval's ``metrics`` record."""

    def add_event(self, type_: str, severity: Severity, message: str, **details: Any) -> None:
        """Raise an ``event`` (a change worth telling the platform about now)."""


class Collector(Protocol):
    #: Stable name; used in logs and in the ``collector_failed`` event.
    name: str

    def gather(self, acc: Accumulator) -> None:
        """Read the machine once and report through ``acc``. Must not block for long."""
