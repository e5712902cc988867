"""The daemon: wires the parts together and turns signals into start, reload and stop.

Data flows one way: collectors -> scheduler -> outbox -> publisher -> broker. This module builds
those parts from the config and owns no logic of its own beyond their life cycle.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__, config, filemodes
from agent.commands import (
    REPORT_NOW_BURST,
    REPORT_NOW_PER_S,
    CommandError,
    CommandRouter,
    CommandWorker,
    Handler,
    report_now,
)
from agent.lessons import TimetableError, load_schedule
from agent.lessons.manager import LessonError, LessonManager
from agent.lessons.planner import Planner, PlanSettings
from agent.localhttp import new_page_key, page_url, socket_routes, tcp_routes
from agent.media.adapter import LessonMedia
from agent.media.peek import Peeker
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.records import Envelope, Record, event
from agent.reloadplan import ReloadPlan, plan_reload
from agent.sdnotify import notify, under_systemd, watchdog_period
from agent.secretfiles import exposed
from agent.signing import CommandGuard, SeenIds, make_guard
from agent.status import warnings
from agent.status.board import StatusBoard
from agent.status.http import HttpServer, Limits, TcpListener, UnixListener
from agent.telemetry.agent_self import AgentCollector
from agent.telemetry.classes import retained_to_clear
from agent.telemetry.inventory import collect_inventory
from agent.telemetry.media_health import MediaHealthCollector
from agent.telemetry.netquality import NetworkQualityCollector
from agent.telemetry.peripherals import PeripheralWatch
from agent.telemetry.scheduler import Scheduler
from agent.telemetry.system import system_collectors
from agent.telemetry.usage import UsageTracker
from agent.threadnames import name_native_threads
from agent.throttle import TokenBucket
from agent.upload.off import UploadsOff

if TYPE_CHECKING:
    from agent.upload.uploader import Uploader

log = logging.getLogger(__name__)

#: How often the main loop refreshes systemd's STATUS= line when no watchdog asks for more.
STATUS_EVERY_S = 30.0


class Agent:
    def __init__(self, cfg: config.Config, config_path: str) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.started_at = time.time()
        state = cfg.state_path
        state.mkdir(parents=True, exist_ok=True)
        self._running_marker = state / "running"
        self.outbox = Outbox(state, cfg.outbox, Envelope(cfg.device.id, cfg.device.school))
        self._held_at_build: list[Record] = []  # events the outbox refused before the scheduler
        self.board = StatusBoard(cfg, config_path, self.started_at, self.outbox,
                                 lambda: self.publisher, lambda: self.scheduler.failing,
                                 lessons=lambda: self.lessons.snapshot(),
                                 media=lambda: self.media.stats(),
                                 security=self._security,
                                 collector_errors=lambda: self.scheduler.errors_total,
                                 ffmpeg=lambda: self.media.ffmpeg_report(),
                                 upload=lambda: self.uploads.snapshot())
        self.seen_ids = SeenIds(state / "commands-seen.json")
        # One budget for report_now from MQTT and local control alike.
        self._report_now = report_now(lambda: self.scheduler.tick(), self.commit,
                                      TokenBucket(REPORT_NOW_PER_S, REPORT_NOW_BURST))
        self.guard = self._make_guard(cfg)
        self.exposed_files: list[dict[str, str]] = []
        self.media = LessonMedia(cfg.media, cfg.recording_path, self.raise_event)
        self._timetable_at_start = self._load_timetable(cfg)
        self.uploads = self._make_uploader(cfg)  # before lessons: it queues their evidence
        self.lessons = LessonManager(
            timetable=self._timetable_at_start, device_id=cfg.device.id,
            default_live=_default_live(cfg), manual_duration_s=cfg.lessons.manual_duration_s,
            media=self.media, emit=self.raise_event, state_path=state / "lesson.json",
            tz=cfg.lessons.timezone)
        self.planner = Planner(state_dir=state, settings=_plan_settings(cfg),
                               sink_names=self.lessons.sink_names, started=self.lessons.known,
                               emit=self.raise_event)
        self._set_timetable(cfg, self._timetable_at_start)
        # Commands from the platform (MQTT) start lessons as "command"; a technician's local
        # request (CLI -> 127.0.0.1) as "manual". Both share one set of handlers.
        # Only MQTT commands are signed: local control is the technician at the terminal
        # (loopback only, docs/security.md).
        self.commands = CommandWorker(CommandRouter(self._handlers("command")),
                                      self.outbox.envelope,
                                      lambda p, t, c: self.publisher.reply(p, t, c),
                                      guard=lambda: self.guard)
        self.local_commands = CommandWorker(CommandRouter(self._handlers("manual")),
                                            self.outbox.envelope, lambda p, t, c: None,
                                            name="local-commands")
        self.publisher = self._make_publisher(cfg)
        self.scheduler = self._make_scheduler(cfg)
        self.scheduler.hold(self._held_at_build)
        # The page's camera snapshot and microphone level, in child processes on request.
        self.peeker = Peeker(lambda: self.cfg.media, self.media.stats)
        # Their key: made at each start, kept in memory, given only on the control socket.
        self._page_key = new_page_key()
        host, port = cfg.status.address
        # TCP: read-only status for anyone on the PC; control: the Unix socket, for its group.
        self.status_server = HttpServer(
            tcp_routes(self.board.snapshot, self.peeker, cfg.status.socket, self._page_key),
            TcpListener(host, port))
        self.control_error: str | None = None
        self.control_server = self._make_control_server(cfg)

    # -- building parts ------------------------------------------------------------------------

    def _make_publisher(self, cfg: config.Config) -> Publisher:
        return Publisher(cfg.mqtt, self.outbox.envelope, self.outbox, cfg.state_path,
                         historical_after_s=max(2 * cfg.telemetry.interval_s, 1.0),
                         started_at=self.started_at, command_sink=self.commands.submit,
                         clear_retained=retained_to_clear(cfg.telemetry.classes))

    def _make_scheduler(self, cfg: config.Config) -> Scheduler:
        probes = [(cfg.mqtt.host, cfg.mqtt.port)] + [_hostport(p) for p in cfg.telemetry.probes]
        collectors = [
            *system_collectors(),
            NetworkQualityCollector(probes, every_s=cfg.telemetry.probe_interval_s),
            AgentCollector(self.outbox, lambda: self.publisher, lambda: self.scheduler.held),
            MediaHealthCollector(self.media.stats, self._current_lesson_id),
        ]
        return Scheduler(
            cfg.telemetry,
            collectors,
            UsageTracker(cfg.state_path, cfg.telemetry.apps),
            PeripheralWatch(),
            lambda peripherals: collect_inventory(__version__, cfg.hash, peripherals),
            self.commit,
            on_tick=lambda m, e: self.board.on_tick(m, e),
        )

    def _make_uploader(self, cfg: config.Config) -> Uploader | UploadsOff:
        if not cfg.upload.ready:
            self.media.ledger = None
            return UploadsOff()
        from agent.upload.uploader import Uploader  # only a daemon that uploads holds it

        up = Uploader(cfg.upload, cfg.device, cfg.state_path, cfg.recording_path,
                      self.raise_event, self.media, tz=cfg.lessons.timezone,
                      segment_s=cfg.media.recording.segment_s)
        self.media.ledger = up if up.enabled else None
        return up

    def _make_control_server(self, cfg: config.Config) -> HttpServer | None:
        """Local control on ``status.socket``. A socket that cannot be made is reported (log,
        status warning) and leaves telemetry, lessons and MQTT commands running."""
        path = Path(cfg.status.socket)
        try:
            if not path.parent.is_dir():  # systemd makes it (RuntimeDirectory=); by hand, we do
                path.parent.mkdir(parents=True)
                path.parent.chmod(0o755)  # the socket's own mode (0660) decides who gets in
            return HttpServer(
                socket_routes(self.local_commands, self.board.snapshot,
                              lambda: page_url(self.status_server.address, self._page_key)),
                UnixListener(str(path), 0o660, cfg.status.socket_group or None),
                Limits(max_connections=16, max_pending=4), name="control")
        except OSError as exc:
            self.control_error = exc.strerror or str(exc)
            log.error("%s", warnings.render(warnings.Warning(
                "control_socket_unavailable", {"path": str(path), "error": self.control_error})))
            return None

    def _make_guard(self, cfg: config.Config) -> CommandGuard:
        c = cfg.commands
        return make_guard(c.public_keys, c.signatures_required, c.max_age_s, cfg.device.school,
                          cfg.device.id, self.seen_ids, self.raise_event)

    def _check_secret_files(self, cfg: config.Config) -> None:
        """Warn (log, status, event) about secret files others can read."""
        found = exposed(cfg)
        self.exposed_files = [e.params for e in found]
        for e in found:
            log.warning("%s", warnings.render(warnings.Warning("secret_file_exposed", e.params)))
            self.raise_event(event("secret_file_exposed", "warning",
                                   f"the {e.what} file is readable by group or others",
                                   path=e.path, mode=f"{e.mode:04o}"))

    def _security(self) -> dict[str, Any]:
        g = self.guard
        return {"signatures_required": g.required, "public_keys": len(g.keys),
                "commands_rejected_total": g.rejected_total,
                "exposed_files": list(self.exposed_files), "key_problems": list(g.problems),
                "control_socket": self.cfg.status.socket,
                "control_socket_error": self.control_error}

    def _handlers(self, trigger: str) -> dict[str, Handler]:
        def lesson_start(args: dict[str, Any]) -> dict[str, Any]:
            try:
                return self.lessons.start_manual(
                    args.get("course"), args.get("teacher"), args.get("role"),
                    args.get("duration_s"), trigger=trigger)
            except LessonError as exc:
                raise CommandError("conflict", str(exc)) from None

        def lesson_stop(_args: dict[str, Any]) -> dict[str, Any]:
            try:
                return self.lessons.stop_current(trigger)
            except LessonError as exc:
                raise CommandError("conflict", str(exc)) from None

        def upload_retry(args: dict[str, Any]) -> dict[str, Any]:
            if not self.uploads.enabled:
                raise CommandError("upload_disabled", "upload is off on this terminal "
                                   "(upload.enabled in its config)")
            try:
                return self.uploads.retry(args.get("lesson_id"))
            except LookupError as exc:
                raise CommandError("not_found", str(exc)) from None

        def upload_status(args: dict[str, Any]) -> dict[str, Any]:
            try:
                return self.uploads.report(args.get("lesson_id"))
            except LookupError as exc:
                raise CommandError("not_found", str(exc)) from None

        return {"lesson_start": lesson_start, "lesson_stop": lesson_stop,
                "report_now": self._report_now,
                "upload_retry": upload_retry, "upload_status": upload_status}

    def _current_lesson_id(self) -> str | None:
        current = self.lessons.snapshot()["current"]
        return current["lesson_id"] if current else None

    def _load_timetable(self, cfg: config.Config) -> Any:
        """The timetable, or None. A bad file at start does not stop telemetry: it is reported
        (log, event, status warning) and lessons run only on command until it is fixed."""
        if not cfg.lessons.timetable:
            return None
        try:
            return load_schedule(cfg.lessons.timetable, cfg.lessons.timezone)
        except TimetableError as exc:
            log.error("timetable %s is invalid; lessons only on command until it is fixed:\n%s",
                      cfg.lessons.timetable, exc)
            self.raise_event(event("timetable_invalid", "error",
                                   "timetable is invalid; scheduled lessons will not start",
                                   problems=exc.problems))
            return None

    def _set_timetable(self, cfg: config.Config, timetable: Any) -> None:
        """The planner learns which timetable runs; None with a file configured means the file
        could not be read (no schedule is published then: the broker keeps the last good one)."""
        self.planner.set_timetable(timetable, broken=timetable is None
                                   and bool(cfg.lessons.timetable))

    def _timetable_file_changed(self, cfg: config.Config) -> bool:
        """Whether the timetable file differs from the one loaded (a reload with the same config
        still picks up an edited timetable)."""
        path = cfg.lessons.timetable
        if not path:
            return False
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return True  # let the loader say what is wrong
        return digest != getattr(self.lessons.timetable, "sha256", None)

    # -- the one way in for records ------------------------------------------------------------

    def commit(self, records: list[Record]) -> list[int]:
        """Commit records to the outbox (durably), then wake the publisher; returns their seqs.
        While the agent is being built there is no publisher yet: it starts from the outbox."""
        seqs = self.outbox.append(records)
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.notify()
        return seqs

    def raise_event(self, record: Record) -> None:
        self.board.note_events([record])
        uploads = getattr(self, "uploads", None)  # None while the agent is being built
        if uploads is not None:
            uploads.note(record)
        try:
            self.commit([record])
        except Exception as exc:  # disk full, I/O error: hold it with the telemetry
            scheduler = getattr(self, "scheduler", None)
            if scheduler is None:  # being built: handed to the scheduler once it exists
                self._held_at_build.append(record)
            else:
                scheduler.hold([record])
            log.error("could not commit event %s: %s; held in memory until the outbox "
                      "works again", record.data.get("type"), exc)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        unclean = self._running_marker.exists()
        self._running_marker.write_text(f"{time.time()}\n")
        self._check_secret_files(self.cfg)
        startup = self.outbox.take_startup_event()
        if startup is not None:
            self.raise_event(startup)
        self.raise_event(event(
            "agent_started", "warning" if unclean else "info",
            "agent started" + (" after an unclean stop (crash, kill or power loss)"
                               if unclean else ""),
            version=__version__, config_hash=self.cfg.hash,
            previous_stop="unclean" if unclean else "clean",
        ))
        self.status_server.start()
        if self.control_server is not None:
            self.control_server.start()
        self.commands.start()
        self.local_commands.start()
        self.publisher.start()
        self.scheduler.start()
        self.planner.start()  # before the lesson manager ticks (see Planner.start)
        self.uploads.start()  # lists recordings left behind before a lesson can start
        self.lessons.start()
        name_native_threads()
        log.info("agent %s started: device %s, school %s, broker %s:%d, status on %s",
                 __version__, self.cfg.device.id, self.cfg.device.school, self.cfg.mqtt.host,
                 self.cfg.mqtt.port, self.cfg.status.listen)

    def healthy(self) -> bool:
        return self.scheduler.alive() and self.publisher.alive()

    def reload(self) -> None:
        """Re-read the config; a bad file keeps the running one and raises an event."""
        try:
            new = config.load(self.config_path)
        except config.ConfigError as exc:
            log.error("reload: keeping the running configuration; %s has problems:\n%s",
                      self.config_path, exc)
            self.raise_event(event("config_reload_failed", "warning",
                                   "configuration reload failed; running configuration kept",
                                   problems=exc.problems))
            return
        self._check_secret_files(new)  # a chmod is a reason to reload even with the same file
        if new == self.cfg:
            if self._timetable_file_changed(new):
                log.info("reload: configuration unchanged; the timetable file changed")
                self._reload_lessons(new)
            else:
                log.info("reload: configuration unchanged")
            return
        plan = plan_reload(self.cfg, new, self._timetable_file_changed(new))
        if plan.needs_restart:
            self.raise_event(event(
                "config_reload_partial", "warning",
                f"changes to {', '.join(plan.needs_restart)} take effect after a restart",
                keys=list(plan.needs_restart)))
        self._apply(plan)
        self.raise_event(event("config_reloaded", "info", "configuration reloaded",
                               config_hash=plan.config.hash))
        log.info("reload: configuration %s applied", plan.config.hash)

    def _apply(self, plan: ReloadPlan) -> None:
        """Rebuild what the plan names, in its order (agent/reloadplan.py)."""
        new = self.cfg = plan.config
        logging.getLogger().setLevel(new.log_level.upper())
        self.outbox.limits = new.outbox
        if plan.lessons:
            self._reload_lessons(new)
        if plan.commands:
            self.guard.flush()
            self.guard = self._make_guard(new)
        if plan.uploader:
            self.uploads.stop()  # it follows the recordings to their new folder
            self.uploads = self._make_uploader(new)
            self.uploads.start()
        if plan.scheduler:
            self.scheduler.stop()
        if plan.publisher:
            self.publisher.stop(flush_s=0)
            self.publisher = self._make_publisher(new)
            self.publisher.start()
        if plan.scheduler:
            self.scheduler = self._make_scheduler(new)
            self.scheduler.start()
        name_native_threads()
        self.board.cfg = new

    def _reload_lessons(self, new: config.Config) -> None:
        self.media.media = new.media  # the next lesson uses it; a running one keeps its spec
        if new.recording_path != self.media.root:
            filemodes.make_private(new.recording_path)
            self.media.set_root(new.recording_path)
            log.info("reload: lessons started from now on record to %s", new.recording_path)
        self.lessons.set_defaults(_default_live(new), new.lessons.manual_duration_s)
        self.planner.configure(_plan_settings(new))
        if not new.lessons.timetable:
            self.lessons.set_timetable(None)
            self._set_timetable(new, None)
            return
        try:
            timetable = load_schedule(new.lessons.timetable, new.lessons.timezone)
            self.lessons.set_timetable(timetable)
            self._set_timetable(new, timetable)
        except TimetableError as exc:
            self.raise_event(event("config_reload_failed", "warning",
                                   "timetable reload failed; the running timetable is kept",
                                   problems=exc.problems))

    def stop(self) -> None:
        log.info("stopping: flushing the outbox for up to %.0f s", self.cfg.mqtt.flush_on_exit_s)
        self.lessons.stop()  # ends a running lesson cleanly: its evidence goes out with the flush
        self.planner.stop()
        self.uploads.stop()  # a part in flight is dropped; the next start resumes the upload
        self.scheduler.stop()
        self.local_commands.stop()
        self.commands.stop()  # before the publisher, so the last replies are flushed with it
        self.guard.flush()  # rejections counted but not yet reported go out with the flush
        self.publisher.stop(flush_s=self.cfg.mqtt.flush_on_exit_s)
        self.status_server.stop()
        self.peeker.stop()
        if self.control_server is not None:
            self.control_server.stop()
        self.outbox.close()
        self._running_marker.unlink(missing_ok=True)
        log.info("stopped")


def _default_live(cfg: config.Config) -> list[tuple[str, str]]:
    """(name, url) of the configured sinks, named as the media spec names them."""
    return [(s.name or f"sink{i}", s.url) for i, s in enumerate(cfg.media.live, 1)]


def _plan_settings(cfg: config.Config) -> PlanSettings:
    return PlanSettings(cfg.lessons.timezone, cfg.lessons.schedule_days,
                        cfg.lessons.missed_lookback_days)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def run(cfg: config.Config, config_path: str) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit code."""
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: Any) -> None:
        signals.put(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    filemodes.make_private(cfg.state_path, cfg.recording_path)  # before anything is written
    agent = Agent(cfg, config_path)
    agent.start()
    notify(f"READY=1\nSTATUS=publishing to {cfg.mqtt.host}:{cfg.mqtt.port}")
    period = watchdog_period()
    # Wake only for what is due: the watchdog ping (half of WatchdogSec) and, under systemd, the
    # STATUS= line; outside systemd, nothing but signals (issue 12: a 5 s tick for nothing).
    tick = min(period or STATUS_EVERY_S, STATUS_EVERY_S) if under_systemd() else None
    while True:
        try:
            signum = signals.get(timeout=tick)
        except queue.Empty:
            signum = None
        if signum in (signal.SIGTERM, signal.SIGINT):
            notify("STOPPING=1")
            break
        if signum == signal.SIGHUP:
            # systemd >= 253 pairs RELOADING=1 with the time it was sent; without it a reload
            # can be ignored and `systemctl reload` waits for its timeout.
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            agent.reload()
            notify("READY=1")
        if period and agent.healthy():
            notify("WATCHDOG=1")
        ob = agent.outbox.stats()
        pub = agent.publisher.stats
        notify(f"STATUS={'connected' if pub.connected else 'NOT connected'} to {pub.broker}, "
               f"{ob.depth} waiting, {ob.dropped_total} dropped")
    agent.stop()
    return 0

