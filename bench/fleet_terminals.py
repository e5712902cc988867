"""Simulated terminals for bench/fleet.py: many in one process, each with the agent's own code.

Per terminal: the real outbox (agent/outbox.py, SQLite in WAL mode, its own file) and publisher
(agent/publisher.py: its own thread and connection, client id ``{school}.{device}``, full-jitter
reconnects, a persistent session with the command subscription), the real lesson manager
(agent/lessons/manager.py, ticked here instead of by its own thread) on a timetable read by the
real loader, the real schedule (agent/lessons/plan.py) and missed-lesson reports
(agent/lessons/missed.py), the real ``agent`` metrics section (agent/telemetry/agent_self.py).
What is not measured on this machine: the machine readings (a template of the real agent's own
metrics and usage, captured when the bench starts, with this terminal's times) and the media
(a stand-in that "streams and records" for the lesson's length).

The state directories live under ``--state-root`` (tmpfs in the bench: every real terminal has a
disk of its own, so a thousand outboxes fsyncing on one disk would measure that disk).

Control: one JSON command a line on stdin, one JSON answer a line on stdout (``status``,
``connects``, ``pause``, ``final``, ``stop``); the spec is a JSON file (see ``bench/fleet.py``).
"""

from __future__ import annotations

import copy
import heapq
import json
import logging
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from _benchlib import ROOT  # noqa: F401  (puts the repository on sys.path)

from agent.boot import Boot
from agent.config import MqttConfig, OutboxConfig
from agent.lessons.manager import LessonManager, joinable
from agent.lessons.missed import LastSeen, find_missed, planned_missed_event
from agent.lessons.plan import schedule_data
from agent.lessons.timetable import Timetable
from agent.lessons.timetable_yaml import loads_timetable
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.records import Envelope, Record, event, rfc3339
from agent.telemetry.agent_self import AgentCollector

LESSON_TICK_S = 0.5  # the lesson manager's own tick while a lesson runs (manager.TICK_S)
IDLE_TICK_S = 5.0


class SimulatedMedia:
    """The media worker's contract (start, stop with a summary, running), without media."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._live: list[tuple[str, str]] = []

    def start(self, lesson_id: str, live: list[tuple[str, str]]) -> None:
        self._since, self._live = time.time(), live

    def stop(self) -> dict[str, Any] | None:
        if self._since is None:
            return None
        t0, t1 = self._since, time.time()
        self._since = None
        return {"live_s": {name: round(t1 - t0, 1) for name, _ in self._live},
                "recorded_s": round(t1 - t0, 3),
                "segments": [{"path": "/var/lib/classroom-agent/recordings/seg-00000.ts",
                              "bytes": int((t1 - t0) * 250_000), "sha256": "ab" * 32,
                              "start": t0, "end": t1, "duration_s": t1 - t0, "partial": False}],
                "interruptions": []}

    def running(self) -> bool:
        return self._since is not None


class _Sections:
    """An Accumulator that keeps the metrics sections (agent/telemetry/base.py)."""

    def __init__(self) -> None:
        self.sections: dict[str, Any] = {}

    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        self.sections[section] = values

    def add_event(self, type_: str, severity: Any, message: str, **details: Any) -> None:
        pass


class Terminal:
    def __init__(self, school: str, device: str, state_dir: Path, mqtt: MqttConfig,
                 timetable: Timetable, tz: str, templates: dict[str, Any],
                 counts: dict[str, int], lock: threading.Lock) -> None:
        self.school, self.device = school, device
        self.templates = templates
        self.counts, self._count_lock = counts, lock
        envelope = Envelope(device, school)
        self.outbox = Outbox(state_dir, OutboxConfig(), envelope)
        self.publisher = Publisher(mqtt, envelope, self.outbox, state_dir,
                                   historical_after_s=20.0, started_at=time.time(),
                                   command_sink=self._command)
        self.timetable, self.tz = timetable, tz
        self.lessons = LessonManager(
            timetable=timetable, device_id=device,
            default_live=[("platform", "rtmp://live.example.edu.cn/app/key")],
            manual_duration_s=2700, media=SimulatedMedia(), emit=self.emit,
            state_path=state_dir / "lessons.json", tz=tz)
        self.agent = AgentCollector(self.outbox, lambda: self.publisher, lambda: (0, 0))
        self.boot_time = time.time() - 3600
        now = datetime.now(ZoneInfo(tz))
        self._spans = [(p.start.timestamp(), p.end.timestamp()) for p in
                       timetable.lessons_between(now, now + timedelta(days=1))]

    def next_tick(self) -> float:
        """When the lesson manager wants its next tick: every ``LESSON_TICK_S`` around a lesson,
        else at the next start (at most ``IDLE_TICK_S`` away), as its own thread would."""
        now = time.time()
        upcoming = IDLE_TICK_S
        for start, end in self._spans:
            if start - 1 <= now <= end + 1:
                return LESSON_TICK_S
            if start > now:
                upcoming = min(upcoming, start - now + 0.05)
                break
        return max(0.05, upcoming)

    def _command(self, _name: str, _payload: bytes, reply_to: Any) -> None:
        if reply_to.ack is not None:  # no commands in this bench; never leave one unanswered
            reply_to.ack()

    def emit(self, record: Record) -> None:
        self.outbox.append([record])
        self.publisher.notify()
        with self._count_lock:
            self.counts[record.kind] = self.counts.get(record.kind, 0) + 1
            if record.kind == "event":
                kind = str(record.data.get("type"))
                self.counts[kind] = self.counts.get(kind, 0) + 1

    def start(self, missed_since: float | None) -> None:
        """As the agent starts: agent_started, lessons missed while it was away, the schedule,
        then the connection."""
        self.emit(event("agent_started", "info", "agent started",
                        version="0.1.0", config_hash="0123456789abcdef", previous_stop="clean"))
        now = time.time()
        if missed_since is not None:
            boot = Boot.current()
            past = self.timetable.lessons_between(datetime.fromtimestamp(missed_since, ZoneInfo(
                self.tz)), datetime.fromtimestamp(now, ZoneInfo(self.tz)))
            for p, reason, detail in find_missed(
                    past, LastSeen(missed_since, boot.id, boot.time), boot, now, missed_since,
                    self.lessons.known, joinable, ()):
                self.emit(planned_missed_event(p, reason, detail, now))
        today = datetime.fromtimestamp(now, ZoneInfo(self.tz)).date()
        self.emit(Record("schedule", schedule_data(self.timetable, self.tz, today, 14,
                                                   self.lessons.sink_names)))
        self.publisher.start()

    def metrics(self) -> None:
        acc = _Sections()
        self.agent.gather(acc)
        data = dict(self.templates["metrics"])
        data["agent"] = acc.sections["agent"]
        self.emit(Record("metrics", data))

    def usage(self, period_s: float) -> None:
        now = time.time()
        data = copy.deepcopy(self.templates["usage"])
        data["period"] = {"start": rfc3339(now - period_s), "end": rfc3339(now)}
        data["power_on"] = [{"start": rfc3339(self.boot_time), "end": rfc3339(now),
                             "ongoing": True}]
        self.emit(Record("usage", data, now))

    def peripheral_event(self, rng: random.Random) -> None:
        added = rng.random() < 0.5
        self.emit(event("peripheral_added" if added else "peripheral_removed", "info",
                        f"USB device {'added' if added else 'removed'}: 046d:0825 webcam",
                        bus="usb", id="046d:0825", name="Webcam C270"))


class Fleet:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rng = random.Random(spec["seed"])
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        templates = json.loads(Path(spec["templates"]).read_text())
        mqtt = MqttConfig(host="127.0.0.1", port=spec["port"], protocol="5",
                          keepalive_s=spec["keepalive_s"], reconnect_min_s=spec["reconnect_min_s"],
                          reconnect_max_s=spec["reconnect_max_s"],
                          batch_records=spec.get("batch_records", 50))
        tz = spec["timezone"]
        timetables = [loads_timetable(text, tz, f"variant-{i}")
                      for i, text in enumerate(spec["timetables"])]
        root = Path(spec["state_root"])
        self.terminals = [
            Terminal(school, device, root / school / device, mqtt, timetables[variant], tz,
                     templates, self.counts, self._lock)
            for school, device, variant in spec["terminals"]]
        self.missed = set(spec.get("missed", []))
        self._stop = threading.Event()
        self._connected_at: dict[int, float | None] = {}
        self._connects: list[float] = []
        self._clock: threading.Thread | None = None

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        ramp = self.spec["ramp_s"]
        began = time.monotonic()
        for i, t in enumerate(self.terminals):
            delay = began + ramp * i / max(1, len(self.terminals)) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t.start(self.spec["missed_since"] if i in self.missed else None)
        self._clock = threading.Thread(target=self._run, name="fleet-clock", daemon=True)
        self._clock.start()

    def _run(self) -> None:
        """One thread drives every terminal's timers: metrics, usage, events, lesson ticks."""
        every = self.spec["metrics_interval_s"]
        usage_s = self.spec["usage_interval_s"]
        event_s = self.spec["event_interval_s"]
        now = time.monotonic()
        heap: list[tuple[float, int, str]] = []
        for i in range(len(self.terminals)):
            heap.append((now + self.rng.uniform(0, every), i, "metrics"))
            heap.append((now + self.rng.uniform(0, usage_s), i, "usage"))
            heap.append((now + self.rng.expovariate(1 / event_s), i, "event"))
            heap.append((now + self.rng.uniform(0, 1), i, "tick"))
        heapq.heapify(heap)
        while not self._stop.is_set():
            due, i, what = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._watch_connections()
                if self._stop.wait(min(wait, 0.25)):
                    break
                continue
            heapq.heappop(heap)
            t = self.terminals[i]
            try:
                if what == "metrics":
                    t.metrics()
                    heapq.heappush(heap, (due + every, i, what))
                elif what == "usage":
                    t.usage(usage_s)
                    heapq.heappush(heap, (due + usage_s, i, what))
                elif what == "event":
                    t.peripheral_event(self.rng)
                    heapq.heappush(heap, (due + self.rng.expovariate(1 / event_s), i, what))
                else:
                    t.lessons.tick()
                    heapq.heappush(heap, (time.monotonic() + t.next_tick(), i, what))
            except Exception:
                logging.exception("terminal %s/%s: %s failed", t.school, t.device, what)
                heapq.heappush(heap, (time.monotonic() + 1.0, i, what))

    def _watch_connections(self) -> None:
        for i, t in enumerate(self.terminals):
            since = t.publisher.stats.connected_since
            if since is not None and self._connected_at.get(i) != since:
                self._connects.append(since)
            self._connected_at[i] = since

    # -- answers ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        depth = inflight = connected = 0
        for t in self.terminals:
            st = t.outbox.stats()
            depth += st.depth
            inflight += t.publisher.stats.inflight
            connected += bool(t.publisher.stats.connected)
        with self._lock:
            counts = dict(self.counts)
        return {"terminals": len(self.terminals), "connected": connected, "depth": depth,
                "inflight": inflight, "appended": counts, "pid": os.getpid()}

    def connects(self) -> list[float]:
        out, self._connects = self._connects, []
        return out

    def final(self) -> dict[str, Any]:
        rows = []
        for t in self.terminals:
            st = t.outbox.stats()
            rows.append([t.school, t.device, st.last_seq, st.depth, st.dropped_total])
        with self._lock:
            counts = dict(self.counts)
        return {"terminals": rows, "appended": counts}

    def pause(self) -> None:
        """No new records from here on (the publishers go on draining)."""
        self._stop.set()
        if self._clock is not None:
            self._clock.join(10)

    def stop(self) -> None:
        self.pause()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda t: t.publisher.stop(self.spec["flush_s"]), self.terminals))
        for t in self.terminals:
            t.outbox.close()


def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s: %(message)s")
    spec = json.loads(Path(sys.argv[1]).read_text())
    fleet = Fleet(spec)
    print(json.dumps({"ready": len(fleet.terminals)}), flush=True)
    fleet.start()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "status":
            answer: Any = fleet.status()
        elif cmd == "connects":
            answer = fleet.connects()
        elif cmd == "final":
            answer = fleet.final()
        elif cmd == "pause":
            fleet.pause()
            answer = {"paused": True}
        elif cmd == "stop":
            fleet.stop()
            print(json.dumps({"stopped": True}), flush=True)
            return
        else:
            answer = {"error": f"unknown command {cmd[:40]!r}"}
        print(json.dumps(answer), flush=True)
    fleet.stop()


if __name__ == "__main__":
    main()
