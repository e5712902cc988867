"""The one place that decides when collectors run and turns what they report into records.

Ticks follow a monotonic schedule (no drift, no bursts after a wall-clock jump). Each tick gathers
every collector into one ``metrics`` record plus any events, samples usage, and at their own
cadences emits ``usage`` and ``inventory`` (when it changed, or every ``inventory_refresh_s``).
A collector that raises is reported once per distinct error as a ``collector_failed`` event and
never stops the others. A telemetry class that is off (``cfg.classes``, see
:mod:`agent.telemetry.classes`) is skipped entirely: its collectors never run, usage is never
sampled, the inventory never built.

Records go to ``sink`` (the outbox). If the sink fails (disk full, I/O error), records are held
in memory, bounded, and offered again at the next tick, so a transient fault loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.config import TelemetryConfig
from agent.records import Record, Severity, event
from agent.telemetry import classes
from agent.telemetry.base import Collector
from agent.telemetry.peripherals import PeripheralWatch
from agent.telemetry.usage import UsageTracker

log = logging.getLogger(__name__)

_MAX_HELD = 10_000


@dataclass
class _Acc:
    metrics: dict[str, Any] = field(default_factory=dict)
    events: list[Record] = field(default_factory=list)

    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        self.metrics[section] = values

    def add_event(self, type_: str, severity: Severity, message: str, **details: Any) -> None:
        self.events.append(event(type_, severity, message, **details))


class Scheduler:
    def __init__(
        self,
        cfg: TelemetryConfig,
        collectors: Sequence[Collector],
        usage: UsageTracker,
        peripherals: PeripheralWatch,
        inventory: Callable[[dict[str, Any] | None], dict[str, Any]],
        sink: Callable[[list[Record]], None],
        on_tick: Callable[[dict[str, Any], list[Record]], None] = lambda m, e: None,
    ) -> None:
        self.cfg = cfg
        on = cfg.classes
        self.collectors = [c for c in [*collectors, peripherals]
                           if classes.collector_allowed(on, c.name)]
        self.usage = usage if on.usage else None
        self.peripherals = peripherals if on.peripherals else None
        self.inventory = inventory if on.inventory else None
        self.sink = sink
        self.on_tick = on_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[str, str] = {}
        self._errors: dict[str, int] = {}
        self._held: list[Record] = []
        self._held_lock = threading.Lock()  # hold() is called from other threads
        self._tick_lock = threading.Lock()  # tick() too (report_now)
        self._held_dropped = 0
        self._inventory_hash = ""
        self._inventory_sent = 0.0
        self._usage_failure: Exception | None = None
        self.last_tick: float | None = None

    def start(self) -> None:
        if self.usage is not None:
            self.usage.start()  # program starts between samples, where the kernel tells them
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.usage is not None:
            self.usage.stop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        start = time.monotonic()
        next_tick = start
        next_usage = start + self.cfg.usage_interval_s
        next_sample = start
        next_inventory = start
        while not self._stop.is_set():
            now = time.monotonic()
            records: list[Record] = []
            try:
                if self.usage is not None and (now >= next_sample or now >= next_usage):
                    # The process scan is most of a tick's cost: sample on its own cadence.
                    next_sample = now + self.cfg.usage_sample_s
                    self._sample_usage(self.usage)
                metrics, events = self.tick()
                records += [metrics, *events]
                changed = any(e.data["type"].startswith(("peripheral", "display")) for e in events)
                if self.inventory is not None and (now >= next_inventory or changed):
                    next_inventory = now + self.cfg.inventory_check_s
                    inv = self._inventory_if_changed(self.inventory)
                    if inv is not None:
                        records.append(inv)
                if self.usage is not None and now >= next_usage:
                    next_usage = now + self.cfg.usage_interval_s
                    records.append(Record("usage", self.usage.take()))
                self.on_tick(metrics.data, events)
            except Exception:
                log.exception("telemetry: tick failed; continuing at the next interval")
            self._deliver(records)
            self.last_tick = time.time()
            next_tick += self.cfg.interval_s
            if next_tick < time.monotonic():  # we overran (suspend, slow disk): skip, no burst
                next_tick = time.monotonic() + self.cfg.interval_s
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def tick(self) -> tuple[Record, list[Record]]:
        """Gather every collector once: one metrics record and the events raised.

        Called by the telemetry thread and by ``report_now`` (the command worker): one at a
        time, since collectors keep their previous sample to compute rates and counters."""
        with self._tick_lock:
            ts = time.time()
            acc = _Acc()
            for c in self.collectors:
                try:
                    c.gather(acc)
                except Exception as exc:
                    self._report_failure(c.name, exc, acc)
                else:
                    self._failures.pop(c.name, None)
            if self._usage_failure is not None:
                self._report_failure("usage", self._usage_failure, acc)
                self._usage_failure = None
            return Record("metrics", acc.metrics, ts), acc.events

    def _sample_usage(self, usage: UsageTracker) -> None:
        try:
            usage.sample()
        except Exception as exc:
            self._usage_failure = exc  # reported as an event with the next metrics record
        else:
            self._failures.pop("usage", None)

    def _report_failure(self, name: str, exc: Exception, acc: _Acc) -> None:
        why = f"{type(exc).__name__}: {exc}"
        self._errors[name] = self._errors.get(name, 0) + 1
        if self._failures.get(name) == why:
            return
        self._failures[name] = why
        log.warning("telemetry: collector %s failed: %s", name, why, exc_info=exc)
        acc.add_event("collector_failed", "warning", f"collector {name} failed: {why}",
                      collector=name)

    @property
    def failing(self) -> dict[str, str]:
        return dict(self._failures)

    @property
    def errors_total(self) -> dict[str, int]:
        """Every failure of each collector, repeated ones too (``/metrics`` counts them)."""
        return dict(self._errors)

    def _inventory_if_changed(
        self, inventory: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> Record | None:
        watch = self.peripherals
        inv = inventory(None if watch is None else watch.last or watch.snapshot())
        digest = hashlib.sha256(json.dumps(inv, sort_keys=True, default=str).encode()).hexdigest()
        now = time.monotonic()
        if (digest == self._inventory_hash
                and now - self._inventory_sent < self.cfg.inventory_refresh_s):
            return None
        # Unchanged but due again: a consumer on a broker that keeps retained messages from
        # wildcard subscriptions (RabbitMQ) learns the inventory only from a fresh publication.
        self._inventory_hash, self._inventory_sent = digest, now
        return Record("inventory", inv)

    def hold(self, records: list[Record]) -> None:
        """Records another part could not commit (an event while the disk is full): kept with
        the telemetry held in memory, under the same bound, and offered again at the next tick."""
        with self._held_lock:
            self._keep_locked([*self._held, *records])

    def _keep_locked(self, batch: list[Record]) -> None:
        self._held = batch[-_MAX_HELD:]
        self._held_dropped += len(batch) - len(self._held)

    def _deliver(self, records: list[Record]) -> None:
        with self._held_lock:
            batch, self._held = [*self._held, *records], []
        if not batch:
            return
        try:
            self.sink(batch)
        except Exception as exc:
            with self._held_lock:  # anything held meanwhile came later: it stays behind
                self._keep_locked([*batch, *self._held])
            log.error("telemetry: cannot commit %d records to the outbox (%s); holding them in "
                      "memory (%d dropped so far). Next step: check free space and permissions "
                      "of the state directory.", len(batch), exc, self._held_dropped)

    @property
    def held(self) -> tuple[int, int]:
        """(records held in memory awaiting the outbox, records dropped from that hold)."""
        return len(self._held), self._held_dropped
