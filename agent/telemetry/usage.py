"""Usage of the terminal: power-on intervals, login sessions and which teaching software runs.

This is the "collected as it goes" (伴随式) usage data the county plans ask for. It reads only
process names and executable basenames, never command lines, window titles, focus or keystrokes,
and counts sessions instead of naming users. Which processes belong to which app comes from
:mod:`agent.telemetry.procs` (an incremental /proc table, and the kernel's process events where
it allows them).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.boot import Boot
from agent.records import rfc3339
from agent.statefile import atomic_write_json, load_state
from agent.telemetry.procs import Catalog, ExecEvents, ProcessTable, open_connector

log = logging.getLogger(__name__)

STATE_FILE = "usage.json"
#: An app is "active" in a sample when its processes used at least this share of one core.
ACTIVE_CPU_SHARE = 0.01
#: Completed boots kept while waiting to be reported (a terminal off the network for months).
MAX_PENDING_BOOTS = 100


@dataclass(slots=True)
class _Period:
    """What has been counted since the last ``take()``."""

    start_mono: float = field(default_factory=time.monotonic)  # the wall start is derived
    sessions: int = 0
    local: int = 0
    remote: int = 0
    running_s: dict[str, float] = field(default_factory=dict)
    active_s: dict[str, float] = field(default_factory=dict)


class UsageTracker:
    """Counts, per catalogued app, seconds running and seconds active; tracks power-on intervals.

    ``apps`` maps an app name to fnmatch globs matched case-insensitively against a process's
    name and the basename of its executable (never its command line).

    Definitions, at the resolution of one sample interval:

    * *running*: the time, within each sample interval, during which at least one matching
      process was alive: from its creation (or the previous sample) to its exit (or this
      sample). Where the kernel reports program starts (:mod:`agent.telemetry.procs`), a program
      that starts and ends between two samples counts, with its exit time from a pidfd;
      otherwise a process is seen only at samples and one found gone earns nothing for that
      last interval. The first sample only sets the baseline.
    * *active*: while running, the matching processes together used CPU time of at least
      ``ACTIVE_CPU_SHARE`` (1 %) of one core over the elapsed time. We do not read window focus
      or titles, so an app left open and idle counts as running but not active.

    Power-on: ``usage.json`` in ``state_dir`` holds this boot's identity and the last time the
    agent saw it alive. When a new boot is found on construction, the stored boot becomes a
    completed power-on interval ``[boot_time, last_seen]`` (so shutdowns are seen across
    restarts; its end is late by at most one sample interval). Completed boots stay pending in
    ``usage.json`` until a ``sample()`` after the ``take()`` that reported them persists them as
    gone: delivery is at-least-once, so a crash between ``take()`` and the next ``sample()``
    repeats them once. Consumers deduplicate by the interval's ``start``.
    """

    def __init__(self, state_dir: Path, apps: dict[str, list[str]]) -> None:
        self._path = Path(state_dir) / STATE_FILE
        self._catalog = Catalog(apps)
        self._app_names = sorted(apps)
        self._lock = threading.Lock()
        self._boot = Boot.current()
        self._boot_time = self._boot.time
        self._boot_id = self._boot.id
        self._pending: list[tuple[float, float]] = []
        self._load()
        self._table = ProcessTable(self._catalog)
        self._events: ExecEvents | None = None
        self.source = "/proc at each sample"
        self._prev_mono: float | None = None
        self._period = _Period()

    def start(self) -> None:
        """Follow program starts between samples where the kernel allows it (no-op otherwise:
        the samples alone then see what runs, as before)."""
        if not self._catalog.apps or self._events is not None:
            return
        sock, why = open_connector()
        if sock is None:
            log.info("usage: %s; applications are seen at each sample (every "
                     "telemetry.usage_sample_s), a shorter run can be missed", why)
            return
        self._events = ExecEvents(sock, self._table, self._lock)
        self._events.start()
        self.source = why
        log.info("usage: following program starts through the kernel's %s", why)

    def stop(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            events.stop()

    # --- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        def parse(state: Any) -> tuple[float, float, Any, list[tuple[float, float]]]:
            return (float(state["boot_time"]), float(state["last_seen"]), state.get("boot_id"),
                    [(float(s), float(e)) for s, e in state.get("pending", [])])

        loaded = load_state(self._path, "usage state", parse)
        if loaded is None:
            return
        boot_time, last_seen, boot_id, pending = loaded
        new_boot = not self._boot.same(boot_id, boot_time)
        if new_boot and last_seen >= boot_time:
            pending.append((boot_time, last_seen))
        self._pending = pending[-MAX_PENDING_BOOTS:]

    def _save(self, now: float) -> None:
        state = {
            "boot_time": self._boot_time,
            "boot_id": self._boot_id,
            "last_seen": now,
            "pending": [list(p) for p in self._pending],
        }
        try:
            atomic_write_json(self._path, state)
        except OSError as exc:  # a full or read-only disk must not stop telemetry
            log.warning("cannot write usage state %s: %s", self._path, exc)

    # --- sampling ---------------------------------------------------------------------------

    def _credit(self, since: float, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per app, seconds with at least one process alive in ``[since, now]`` and the CPU
        seconds its processes used in it; starts the next interval's CPU baselines."""
        spans: dict[str, list[tuple[float, float]]] = {}
        cpu: dict[str, float] = {}
        table = self._table
        for t in [*table.live.values(), *table.ended]:
            end = now if t.pid in table.live and table.live[t.pid] is t else t.end
            a, b = max(t.start, since), min(since if end is None else end, now)
            used = max(t.cpu_s - t.cpu_base, 0.0)
            t.cpu_base = t.cpu_s
            for app in t.apps:
                cpu[app] = cpu.get(app, 0.0) + used
                if b > a:
                    spans.setdefault(app, []).append((a, b))
        table.ended.clear()
        return {app: _covered(s) for app, s in spans.items()}, cpu

    def _sessions(self) -> tuple[int, int]:
        try:
            users = psutil.users()
        except (OSError, RuntimeError):
            return 0, 0
        local = sum(1 for u in users if not u.host or u.host.startswith(":"))
        return local, len(users) - local

    def sample(self) -> None:
        """Count one interval: call once per telemetry interval."""
        with self._lock:
            mono, wall = time.monotonic(), time.time()
            elapsed = mono - self._prev_mono if self._prev_mono is not None else None
            since_wall = wall - elapsed if elapsed is not None else None
            if self._catalog.apps:
                self._table.refresh(since_wall)
            running, cpu_used = self._credit(wall if since_wall is None else since_wall, wall)
            p = self._period
            if elapsed is not None and elapsed > 0:
                for app, ran in running.items():
                    p.running_s[app] = p.running_s.get(app, 0.0) + ran
                    if cpu_used.get(app, 0.0) >= ACTIVE_CPU_SHARE * elapsed:
                        p.active_s[app] = p.active_s.get(app, 0.0) + ran
            local, remote = self._sessions()
            p.sessions = max(p.sessions, local + remote)
            p.local, p.remote = max(p.local, local), max(p.remote, remote)
            self._prev_mono = mono
            self._save(wall)

    def take(self) -> dict[str, Any]:
        """Return what was counted since the last take (see class doc) and start a new period."""
        with self._lock:
            now, mono = time.time(), time.monotonic()
            p, self._period = self._period, _Period(start_mono=mono)
            # The period's length is monotonic time, placed on today's wall clock: a clock
            # stepped back during the period must not make it end before it starts. Power-on
            # ends are clamped for the same reason (the boot time is the kernel's, read once).
            start = now - max(0.0, mono - p.start_mono)
            power_on = [
                {"start": rfc3339(s), "end": rfc3339(max(s, e)), "ongoing": False}
                for s, e in self._pending
            ]
            power_on.append({"start": rfc3339(self._boot_time),
                             "end": rfc3339(max(now, self._boot_time)), "ongoing": True})
            self._pending = []  # persisted as reported by the next sample()
            return {
                "period": {"start": rfc3339(start), "end": rfc3339(now)},
                "power_on": power_on,
                "sessions": {"count": p.sessions, "local": p.local, "remote": p.remote},
                "apps": {
                    app: {
                        "running_s": round(p.running_s.get(app, 0.0), 3),
                        "active_s": round(p.active_s.get(app, 0.0), 3),
                    }
                    for app in self._app_names
                },
            }


def _covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``spans``: two processes of one app alive at once count once."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total
