"""What a technician sees: one status snapshot, served on 127.0.0.1 and rendered for people.

The daemon keeps a :class:`StatusBoard`; a small HTTP server serves it as JSON
(``/status.json``), as a plain page (``/``) and as Prometheus text (``/metrics``). The CLI's
``status`` command fetches the JSON and renders it with :func:`render_text`, so what people read
and what scripts parse are the same data. Warnings are worded as cause plus next step.

With a ``router`` the same server takes ``POST /command/{name}`` (local control, agent/control.py),
so a technician can act on the terminal when the broker is out of reach.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent import CONTRACT_VERSION, __version__, control
from agent.config import Config
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.records import Record, age_s, rfc3339
from agent.telemetry import classes as telemetry_classes

log = logging.getLogger(__name__)


class StatusBoard:
    def __init__(
        self,
        cfg: Config,
        config_path: str,
        started_at: float,
        outbox: Outbox,
        publisher: Callable[[], Publisher],
        failing: Callable[[], dict[str, str]],
        lessons: Callable[[], dict[str, Any]] | None = None,
        media: Callable[[], dict[str, Any] | None] | None = None,
        security: Callable[[], dict[str, Any]] | None = None,
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
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        self._metrics_ts: float | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=20)

    def on_tick(self, metrics: dict[str, Any], events: list[Record]) -> None:
        with self._lock:
            self._metrics = metrics
            self._metrics_ts = time.time()
        self.note_events(events)

    def note_events(self, events: list[Record]) -> None:
        with self._lock:
            for ev in events:
                if ev.kind == "event":
                    self._events.append({"ts": rfc3339(ev.ts), **ev.data})

    def _lessons(self) -> dict[str, Any]:
        if self.lessons is None:
            return {"state": "idle", "current": None, "next": None}
        try:
            return self.lessons()
        except Exception:  # a status page must never fail because of one part
            log.exception("status: lessons snapshot failed")
            return {"state": "unknown", "current": None, "next": None}

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        ob = self.outbox.stats()
        pub = self.publisher().stats
        with self._lock:
            metrics = dict(self._metrics)
            metrics_ts = self._metrics_ts
            events = list(self._events)
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
                "classes_off": telemetry_classes.off(self.cfg.telemetry.classes),
            },
            "metrics": _key_metrics(metrics),
            "peripherals": metrics.get("peripherals", {}),
            "recent_events": events,
            "lessons": self._lessons(),
            "media": self.media() if self.media else None,
            "security": self.security() if self.security else {"warnings": []},
        }
        snap["warnings"] = warnings(snap, self.cfg)
        snap["ok"] = not snap["warnings"]
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


def warnings(s: dict[str, Any], cfg: Config) -> list[str]:
    """Everything a technician should act on, each with its cause and a next step."""
    out: list[str] = []
    b, ob, km = s["broker"], s["outbox"], s["metrics"]
    grace = max(3 * cfg.telemetry.interval_s, 30.0)
    if not b["connected"] and (b["connect_failures_total"] or s["agent"]["uptime_s"] > grace):
        out.append(f"Not connected to the broker {b['address']}: {b['last_error'] or 'connecting'}."
                   " Next step: check the network and that the broker runs and accepts this"
                   " device (see `journalctl -u classroom-agent`).")
    if ob["oldest_age_s"] and ob["oldest_age_s"] > grace:
        out.append(f"{ob['depth']} records waiting to be sent, the oldest for "
                   f"{_human_s(ob['oldest_age_s'])}. They are kept on disk and will be sent "
                   "when the broker is reachable.")
    if ob["dropped_total"]:
        out.append(f"{ob['dropped_total']} records were dropped because the outbox reached its "
                   "bound (outbox.max_records/max_bytes/max_age_s). Next step: restore the "
                   "broker connection sooner or raise the bounds.")
    if ob["in_memory"]:
        out.append("The outbox file is unusable; records are only in memory and will be lost on "
                   f"restart. Next step: check {cfg.state_dir} (space, permissions, disk errors).")
    if ob["quarantined_total"]:
        out.append(f"The outbox file was corrupt and has been quarantined in {cfg.state_dir}. "
                   "Next step: check the disk (dmesg, smartctl).")
    out.extend(s["security"]["warnings"])
    for name, why in s["telemetry"]["failing_collectors"].items():
        out.append(f"Collector {name} is failing: {why}.")
    out.extend(
        f"Disk {d['mount']} is {d['percent']:.0f}% full. Next step: free space; old recordings "
        "are the usual cause."
        for d in km["disks"] if d["percent"] is not None and d["percent"] >= 90
    )
    if km["memory_percent"] is not None and km["memory_percent"] >= 95:
        out.append(f"Memory is {km['memory_percent']:.0f}% used.")
    if km["max_temperature_c"] is not None and km["max_temperature_c"] >= 90:
        out.append(f"A temperature sensor reads {km['max_temperature_c']:.0f} °C. Next step: "
                   "check fans and vents.")
    return out


def _human_s(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def render_text(s: dict[str, Any]) -> str:
    """The snapshot for people: one line per concern, warnings last."""
    a, d, b, ob, km = s["agent"], s["device"], s["broker"], s["outbox"], s["metrics"]
    name = f" ({d['name']})" if d.get("name") else ""
    lines = [
        f"classroom-agent {a['version']}: device {d['id']}{name}, school {d['school']}",
        f"  Agent       running, pid {a['pid']}, up {_human_s(a['uptime_s'])}, config "
        f"{a['config_path']} ({a['config_hash']})",
    ]
    tls = ", TLS" if b["tls"] else ""
    if b["connected"]:
        last = f", last delivery {b['last_puback']}" if b["last_puback"] else ""
        lines.append(f"  Broker      connected to {b['address']} (MQTT {b['protocol']}{tls}) since "
                     f"{b['connected_since']}{last}")
    else:
        retry = (f"; retrying in {b['next_attempt_in_s']:.0f}s"
                 if b["next_attempt_in_s"] is not None else "")
        lines.append(f"  Broker      NOT connected to {b['address']}{tls}: "
                     f"{b['last_error'] or 'connecting'}{retry}")
    oldest = f", oldest {_human_s(ob['oldest_age_s'])}" if ob["oldest_age_s"] else ""
    lines.append(f"  Outbox      {ob['depth']} waiting ({ob['bytes']} bytes){oldest}, "
                 f"{ob['dropped_total']} dropped, last seq {ob['last_seq']}")
    disks = ", ".join(f"{x['mount']} {x['percent']:.0f}%" for x in km["disks"]) or "-"
    cpu = f"{km['cpu_percent']:.0f}%" if km["cpu_percent"] is not None else "-"
    mem = f"{km['memory_percent']:.0f}%" if km["memory_percent"] is not None else "-"
    lines.append(f"  Machine     CPU {cpu}, memory {mem}, disks {disks}, "
                 f"up {_human_s(km['uptime_s'])}")
    off = s["telemetry"].get("classes_off") or []
    if off:
        lines.append(f"  Telemetry   turned off (telemetry.classes): {', '.join(off)}")
    p = s.get("peripherals") or {}
    if p:
        lines.append(f"  Peripherals {p.get('video', 0)} camera(s), {p.get('audio_inputs', 0)} "
                     f"microphone(s), {p.get('displays_connected', 0)} display(s), "
                     f"{p.get('usb', 0)} USB device(s)")
    lines.extend(_lesson_lines(s.get("lessons") or {}, s.get("media") or {}))
    sec = s.get("security") or {}
    if "signatures_required" in sec:
        mode = (f"signed only ({sec['public_keys']} public key(s))" if sec["signatures_required"]
                else "UNSIGNED accepted (commands.public_keys not set)")
        lines.append(f"  Commands    MQTT: {mode}, {sec['commands_rejected_total']} rejected")
    for t in km["netquality"]:
        state = f"{t['rtt_ms']:.1f} ms" if t.get("ok") else f"FAILED ({t.get('error')})"
        lines.append(f"  Network     {t['target']}: {state}")
    if s["warnings"]:
        lines.append("Warnings:")
        lines.extend(f"  ! {w}" for w in s["warnings"])
    else:
        lines.append("No warnings: this terminal looks healthy.")
    return "\n".join(lines)


def _lesson_lines(ls: dict[str, Any], media: dict[str, Any]) -> list[str]:
    out = []
    cur, nxt = ls.get("current"), ls.get("next")
    if cur:
        who = ", ".join(x for x in (cur.get("course"), cur.get("teacher")) if x) or "no course"
        out.append(f"  Lesson      {cur.get('lesson_id')} ({who}, {cur.get('role')}) "
                   f"{cur.get('state')} for {_human_s(cur.get('elapsed_s'))}, "
                   f"{_human_s(cur.get('remaining_s'))} left")
        rec = media.get("recording") or {}
        if rec:
            out.append(f"  Recording   {rec.get('state')}, {_human_s(rec.get('seconds'))} "
                       f"({rec.get('bytes', 0)} bytes)")
        for sink in media.get("sinks") or []:
            out.append(f"  Live        {sink.get('name')}: {sink.get('state')} "
                       f"({sink.get('bitrate_kbps') or 0:.0f} kbit/s)")
    else:
        out.append("  Lesson      none running")
    if nxt:
        out.append(f"  Next        {nxt.get('lesson_id')} ({nxt.get('course')}) at "
                   f"{nxt.get('start')}")
    return out


def render_prometheus(s: dict[str, Any]) -> str:
    b, ob = s["broker"], s["outbox"]
    labels = f'device="{s["device"]["id"]}",school="{s["device"]["school"]}"'
    values = {
        "classroom_agent_up": 1,
        "classroom_agent_broker_connected": int(b["connected"]),
        "classroom_agent_reconnects_total": b["reconnects_total"],
        "classroom_agent_publish_failures_total": b["publish_failures_total"],
        "classroom_agent_outbox_depth": ob["depth"],
        "classroom_agent_outbox_bytes": ob["bytes"],
        "classroom_agent_outbox_oldest_age_seconds": ob["oldest_age_s"] or 0,
        "classroom_agent_outbox_dropped_total": ob["dropped_total"],
        "classroom_agent_warnings": len(s["warnings"]),
    }
    return "".join(f"{k}{{{labels}}} {v}\n" for k, v in values.items())


class StatusServer:
    """Serves the board on ``address`` (127.0.0.1 by default) from a daemon thread.

    ``router`` (the command worker, see agent/control.py) enables ``POST /command/{name}``.
    """

    def __init__(self, board: StatusBoard, address: tuple[str, int],
                 router: control.Dispatch | None = None) -> None:
        self.board = board
        handler = _handler_for(board, router)
        self._server = ThreadingHTTPServer(address, handler)
        self._server.daemon_threads = True
        # serve_forever wakes every poll interval just to check for shutdown: 2 s keeps the
        # idle agent cheap and still stops promptly.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(2.0,),
                                        name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(board: StatusBoard,
                 router: control.Dispatch | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"classroom-agent/{__version__}"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                snap = board.snapshot()
            except Exception:
                log.exception("status: snapshot failed")
                self._send(500, "text/plain", b"status snapshot failed; see the agent log\n")
                return
            if path == "/status.json":
                body = json.dumps(snap, indent=2).encode()
                self._send(200, "application/json", body)
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", render_prometheus(snap).encode())
            elif path == "/":
                page = (f"<!doctype html><meta charset=utf-8><title>classroom-agent</title>"
                        f"<meta http-equiv=refresh content=5>"
                        f"<pre>{html.escape(render_text(snap))}</pre>")
                self._send(200, "text/html; charset=utf-8", page.encode())
            else:
                self._send(404, "text/plain", b"not found: try /, /status.json or /metrics\n")

        def do_POST(self) -> None:
            try:
                code, reply = control.handle_post(router, self.path, self.headers, self.rfile,
                                                  peer=self.client_address[0])
            except Exception:
                log.exception("status: command request failed")
                code, reply = 500, {"id": None, "ok": False, "error": {
                    "code": "internal_error", "message": "the agent failed; see its log"}}
            self._send(code, "application/json", json.dumps(reply).encode())

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status: " + format, *args)

    return Handler
