"""The status board: the daemon's one snapshot of itself, as plain JSON-able data.

The daemon gives the board getters for its parts (outbox, publisher, scheduler, lessons, media,
security); :meth:`StatusBoard.snapshot` reads them all at once and adds the warnings derived from
them (agent/status/warnings.py). Everything that shows the state of the terminal (the CLI, the
page, ``/metrics``) renders this one snapshot, so what people read and what scripts parse agree.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from agent import CONTRACT_VERSION, __version__
from agent.config import Config
from agent.outbox import Outbox
from agent.records import Record, age_s, rfc3339
from agent.status import warnings
from agent.telemetry import classes as telemetry_classes
from agent.urls import shown_source

log = logging.getLogger(__name__)


class _HasStats(Protocol):
    """The publisher as the board sees it (agent/publisher.py's ``Publisher``)."""

    @property
    def stats(self) -> Any: ...


class StatusBoard:
    def __init__(
        self,
        cfg: Config,
        config_path: str,
        started_at: float,
        outbox: Outbox,
        publisher: Callable[[], _HasStats],
        failing: Callable[[], dict[str, str]],
        lessons: Callable[[], dict[str, Any]] | None = None,
        media: Callable[[], dict[str, Any] | None] | None = None,
        security: Callable[[], dict[str, Any]] | None = None,
        collector_errors: Callable[[], dict[str, int]] | None = None,
        ffmpeg: Callable[[], dict[str, Any] | None] | None = None,
        upload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.started_at = started_at
        # Uptime counts on the monotonic clock: a wall-clock step must not make it negative.
        self._started_mono = time.monotonic() - age_s(started_at)
        self.outbox = outbox
        self.publisher = publisher
        self.failing = failing
        self.lessons = lessons
        self.media = media
        self.security = security
        self.collector_errors = collector_errors
        self.ffmpeg = ffmpeg
        self.upload = upload
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        self._metrics_ts: float | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=20)
        # Lessons that ended and their interruptions, counted from the events (for /metrics).
        self._lesson_counts = {"ended": 0, "interruptions": 0}

    def on_tick(self, metrics: dict[str, Any], events: list[Record]) -> None:
        with self._lock:
            self._metrics = metrics
            self._metrics_ts = time.time()
        self.note_events(events)

    def note_events(self, events: list[Record]) -> None:
        with self._lock:
            for ev in events:
                if ev.kind != "event":
                    continue
                self._events.append({"ts": rfc3339(ev.ts), **ev.data})
                if ev.data.get("type") == "lesson_ended":
                    gaps = ev.data.get("interruptions")
                    self._lesson_counts["ended"] += 1
                    self._lesson_counts["interruptions"] += (len(gaps) if isinstance(gaps, list)
                                                             else 0)

    def _lessons(self) -> dict[str, Any]:
        if self.lessons is None:
            return {"state": "idle", "current": None, "next": None}
        try:
            return self.lessons()
        except Exception:  # a status page must never fail because of one part
            log.exception("status: lessons snapshot failed")
            return {"state": "unknown", "current": None, "next": None}

    def _upload(self) -> dict[str, Any]:
        if self.upload is None:
            return {"enabled": False}
        try:
            return self.upload()
        except Exception:  # a status page must never fail because of one part
            log.exception("status: upload snapshot failed")
            return {"enabled": True, "state": "unknown"}

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        ob = self.outbox.stats()
        pub = self.publisher().stats
        with self._lock:
            metrics = dict(self._metrics)
            metrics_ts = self._metrics_ts
            events = list(self._events)
            lesson_counts = dict(self._lesson_counts)
        snap: dict[str, Any] = {
            "agent": {
                "version": __version__,
                "contract": CONTRACT_VERSION,
                "pid": os.getpid(),
                "started_at": rfc3339(self.started_at),
                "uptime_s": round(time.monotonic() - self._started_mono, 1),
                "config_path": self.config_path,
                "config_hash": self.cfg.hash,
            },
            "device": {"id": self.cfg.device.id, "school": self.cfg.device.school,
                       "name": self.cfg.device.name},
            "broker": {
                "address": pub.broker,
                "tls": self.cfg.mqtt.tls.active,
                "connected": pub.connected,
                "protocol": pub.protocol or None,
                "session": pub.session,
                "connected_since": _ts(pub.connected_since),
                "last_puback": _ts(pub.last_puback),
                "no_subscriber_since": _ts(pub.no_subscriber_since),
                "last_error": pub.last_error,
                "last_error_at": _ts(pub.last_error_ts),
                "reconnects_total": pub.reconnects_total,
                "connect_failures_total": pub.connect_failures_total,
                "publish_failures_total": pub.publish_failures_total,
                "next_attempt_in_s": _round(pub.next_attempt_in_s),
                "inflight": pub.inflight,
            },
            "outbox": {
                "depth": ob.depth,
                "bytes": ob.bytes,
                "oldest_age_s": _round(age_s(ob.oldest_ts, now)) if ob.oldest_ts else None,
                "dropped_total": ob.dropped_total,
                "last_seq": ob.last_seq,
                "quarantined_total": ob.quarantined_total,
                "in_memory": ob.in_memory,
            },
            "telemetry": {
                "interval_s": self.cfg.telemetry.interval_s,
                "last_sample": _ts(metrics_ts),
                "failing_collectors": self.failing(),
                "collector_errors_total": self.collector_errors() if self.collector_errors
                else {},
                "classes_off": telemetry_classes.off(self.cfg.telemetry.classes),
            },
            "metrics": _key_metrics(metrics),
            "peripherals": metrics.get("peripherals", {}),
            "recent_events": events,
            "lessons": self._lessons(),
            "lesson_counts": lesson_counts,
            "media": self.media() if self.media else None,
            "ffmpeg": self.ffmpeg() if self.ffmpeg else None,
            "security": self.security() if self.security else {},
            "upload": self._upload(),
        }
        found = warnings.collect(snap, warnings.Context(
            self.cfg.telemetry.interval_s, self.cfg.state_dir,
            shown_source(self.cfg.media.video.source),
            self.cfg.media.audio.source))
        # "warnings": the English sentences (what `status --json` always carried); the details
        # (code, subsystem, severity, params) are what the page and translations render from.
        snap["warnings"] = [warnings.render(w) for w in found]
        snap["warning_details"] = [warnings.as_json(w) for w in found]
        snap["ok"] = not found
        return snap


def _ts(t: float | None) -> str | None:
    return rfc3339(t) if t else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _key_metrics(m: dict[str, Any]) -> dict[str, Any]:
    cpu, mem, host = m.get("cpu", {}), m.get("memory", {}), m.get("host", {})
    mounts = m.get("disks", {}).get("mounts", [])
    temps = [t.get("current_c") for chip in m.get("sensors", {}).get("temperatures", {}).values()
             for t in chip if t.get("current_c") is not None]
    return {
        "cpu_percent": cpu.get("percent"),
        "load": cpu.get("load"),
        "memory_percent": mem.get("percent"),
        "disks": [{"mount": d["mount"], "percent": d["percent"]} for d in mounts],
        "max_temperature_c": max(temps) if temps else None,
        "uptime_s": host.get("uptime_s"),
        "process_count": host.get("process_count"),
        "netquality": m.get("netquality", {}).get("targets", []),
    }


