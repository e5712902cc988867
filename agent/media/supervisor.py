"""The daemon's side of the media worker: start it, relay its lines, restart it when it crashes.

A crash in a camera driver, OpenCV, PortAudio or a codec kills the worker process, never the
daemon (docs/media.md). The supervisor reports why (exit code or signal, the worker's last log
lines), starts a new worker for the rest of the lesson with back-off, and records the gap as an
interruption. This module runs in the daemon, so it must not import NumPy, OpenCV or PyAudio.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.backoff import Backoff
from agent.media.checksum import sha256_file
from agent.media.senders import remove_secret_dirs
from agent.urls import scrub

if TYPE_CHECKING:
    from agent.media.spec import MediaSpec

log = logging.getLogger(__name__)
worker_log = logging.getLogger("agent.media.worker")

LineFn = Callable[[dict], None]

SPEC_REJECTED_EXIT = 2        # the worker's exit code for an unusable spec: restarting won't help
TERM_GRACE_S = 5.0            # after SIGTERM, before SIGKILL
ORPHAN_GRACE_S = 5.0          # a crashed worker's FFmpeg children finish their segment on EOF
HEALTHY_RUN_S = 60.0          # a worker that ran this long resets the back-off
STDERR_TAIL = 20
_LEVEL_RE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


@dataclass
class _Run:
    """One worker process and what it said."""

    proc: subprocess.Popen[bytes]
    spawned: float                       # wall clock
    started: dict | None = None          # its `started` line
    summary: dict | None = None          # from its `stopped` line
    segments: list[dict] = field(default_factory=list)
    last_stats: dict | None = None
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL))
    stderr_thread: threading.Thread | None = None


class MediaSupervisor:
    """Runs one lesson's worker (``python -m agent.media.worker``) and keeps it running.

    ``on_line`` gets every JSON line of the worker, plus the supervisor's own ``worker_crashed``
    and ``worker_restarted`` events; it is called from the supervisor's thread.
    """

    def __init__(self, on_line: LineFn, python: str = sys.executable) -> None:
        self._on_line = on_line
        self._python = python
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._run: _Run | None = None
        self._runs: list[_Run] = []
        self._interruptions: list[dict] = []
        self._open_gap: dict | None = None
        self._last_stats: dict | None = None
        self._spec_line = ""
        self._urls: list[str] = []
        self._recording_dir: Path | None = None
        self._backoff = Backoff(1, 30)

    # -- API ------------------------------------------------------------------------------------

    def start(self, spec: MediaSpec) -> None:
        """Start the lesson's worker and return at once (it reports `started` when it runs)."""
        if self.running():
            raise RuntimeError("a lesson's media worker is already running; stop() it first")
        self._spec_line = spec.to_json()
        data = json.loads(self._spec_line)
        self._urls = [str(s.get("url", "")) for s in data.get("live", [])]
        folder = data.get("recording", {}).get("dir")
        self._recording_dir = Path(folder) if folder else None
        self._stopping.clear()
        self._runs, self._interruptions, self._open_gap = [], [], None
        self._last_stats = None
        self._backoff.reset()
        run = self._spawn()  # here, not in the thread: "python not found" reaches the caller
        self._thread = threading.Thread(target=self._lesson, args=(run,),
                                        name="media-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 20.0) -> dict | None:
        """Ask the worker to stop; SIGTERM then SIGKILL if it overruns ``timeout_s``.

        Returns the lesson summary: the worker's, plus segments and live seconds of the runs
        that crashed, plus the supervisor's ``worker_crashed`` interruptions. None if no worker
        ever started.
        """
        thread = self._thread
        if thread is None:
            return None
        with self._lock:
            self._stopping.set()
            run = self._run
        if run is not None:
            self._send(run, b"stop\n")
        thread.join(timeout_s)
        if thread.is_alive() and run is not None:
            self._signal(run, signal.SIGTERM,
                         f"did not stop within {timeout_s:.0f} s of the stop request")
            thread.join(TERM_GRACE_S)
            if thread.is_alive():
                self._signal(run, signal.SIGKILL, f"ignored SIGTERM for {TERM_GRACE_S:.0f} s")
                thread.join(TERM_GRACE_S + ORPHAN_GRACE_S + 5.0)
        if thread.is_alive():
            log.error("media supervisor thread did not finish; a worker may linger")
        self._thread = None
        return self._summary()

    def running(self) -> bool:
        """True from start() until stop(), including while a crashed worker is being restarted."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping.is_set()

    def last_stats(self) -> dict | None:
        return self._last_stats

    # -- the lesson thread ----------------------------------------------------------------------

    def _lesson(self, run: _Run | None) -> None:
        while run is not None:
            self._watch(run)
            code = run.proc.returncode
            if run.summary is not None and (code == 0 or self._stopping.is_set()):
                if not self._stopping.is_set():
                    log.warning("media worker %d stopped by itself (not asked to: someone "
                                "signalled it?); the lesson's media is over", run.proc.pid)
                break
            if self._stopping.is_set():
                self._crashed(run, code, restarting=False)
                break
            rejected = code == SPEC_REJECTED_EXIT and run.started is None
            self._crashed(run, code, restarting=not rejected)
            if rejected:  # the same spec would be rejected again
                break
            if time.time() - run.spawned > HEALTHY_RUN_S:
                self._backoff.reset()
            run = self._respawn()
        if self._open_gap is not None:
            self._close_gap(time.time())

    def _respawn(self) -> _Run | None:
        """A new worker after a back-off, or None when the lesson is stopped meanwhile."""
        while not self._stopping.wait(self._backoff.next_delay()):
            with self._lock:
                if self._stopping.is_set():
                    return None
                try:
                    return self._spawn()
                except OSError as exc:
                    log.error("%s; retrying with back-off", exc)
        return None

    def _spawn(self) -> _Run:
        argv = [self._python, "-m", "agent.media.worker"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise OSError(f"cannot start the media worker ({self._python}: "
                          f"{exc.strerror or exc}); check the agent's Python") from None
        run = _Run(proc=proc, spawned=time.time())
        run.stderr_thread = threading.Thread(target=self._forward_stderr, args=(run,),
                                             name=f"media-worker-{proc.pid}-stderr", daemon=True)
        run.stderr_thread.start()
        self._send(run, self._spec_line.encode() + b"\n")
        self._run = run
        self._runs.append(run)
        log.info("media worker %d started for the lesson", proc.pid)
        return run

    def _watch(self, run: _Run) -> None:
        """Relay its stdout lines until EOF; then reap it, its stderr thread and its pipes."""
        assert run.proc.stdout is not None
        for raw in run.proc.stdout:
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                line = json.loads(text)
                if not isinstance(line, dict):
                    raise ValueError("not an object")
            except ValueError:
                log.warning("media worker %d wrote a non-protocol line on stdout: %s",
                            run.proc.pid, self._scrub(text)[:200])
                continue
            self._note(run, line)
            self._deliver(line)
        try:
            run.proc.wait(TERM_GRACE_S)
        except subprocess.TimeoutExpired:  # stdout closed but alive: it is broken, end it
            log.warning("media worker %d closed stdout but did not exit; killing it",
                        run.proc.pid)
            run.proc.kill()
            run.proc.wait()
        if run.stderr_thread is not None:
            run.stderr_thread.join(5.0)
        for pipe in (run.proc.stdin, run.proc.stdout, run.proc.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        if run.proc.returncode != 0:
            self._reap_group(run.proc.pid)
            if remove_secret_dirs(run.proc.pid):  # its SRT preset files (sinks never closed)
                log.info("removed the secret files media worker %d left", run.proc.pid)

    def _note(self, run: _Run, line: dict) -> None:
        kind = line.get("type")
        if kind == "stats":
            run.last_stats = line
            self._last_stats = line
        elif kind == "segment":
            run.segments.append({k: v for k, v in line.items() if k not in ("type", "ts")})
        elif kind == "stopped":
            summary = line.get("summary")
            run.summary = summary if isinstance(summary, dict) else {}
        elif kind == "started":
            run.started = line
            if self._open_gap is not None:
                end = float(line.get("ts") or time.time())
                gap = self._close_gap(end)
                self._deliver(self._event(
                    "worker_restarted", "info",
                    f"media worker restarted (pid {line.get('pid', run.proc.pid)}) after "
                    f"{gap['duration_s']:.1f} s; the lesson goes on",
                    {"pid": line.get("pid", run.proc.pid), "interruption_s": gap["duration_s"],
                     "restarts": len(self._runs) - 1}))

    def _crashed(self, run: _Run, code: int | None, restarting: bool) -> None:
        now = time.time()
        exit_desc: int | str = code if code is None or code >= 0 else _signal_name(-code)
        tail = [self._scrub(x) for x in run.stderr_tail]
        last = tail[-1] if tail else "no log output"
        for orphan in self._orphan_segments(run, now):
            run.segments.append(orphan)
            self._deliver({"type": "segment", "ts": round(now, 3), **orphan})
        if self._stopping.is_set():
            message = (f"media worker ended without its summary while stopping (exit "
                       f"{exit_desc}): {last}; the recording's last segment may be cut short")
        elif not restarting:
            message = (f"media worker rejected the lesson spec (exit {exit_desc}): {last}; not "
                       "restarting it. Fix the media configuration (classroom-agent config "
                       "check)")
        else:
            message = (f"media worker crashed (exit {exit_desc}): {last}; restarting it with "
                       "back-off. If this repeats, check the camera/microphone drivers and the "
                       "log (journalctl -u classroom-agent)")
            if self._open_gap is None:
                self._open_gap = {"what": "worker_crashed", "start": round(now, 3)}
        log.error("%s", message)
        self._deliver(self._event("worker_crashed", "error", message, {
            "exit": exit_desc, "stderr_tail": "\n".join(tail[-10:]), "pid": run.proc.pid,
            "restarting": restarting}))

    def _close_gap(self, end: float) -> dict:
        assert self._open_gap is not None
        gap = {**self._open_gap, "end": round(end, 3)}
        gap["duration_s"] = round(max(0.0, gap["end"] - gap["start"]), 3)
        self._interruptions.append(gap)
        self._open_gap = None
        return gap

    def _orphan_segments(self, run: _Run, now: float) -> list[dict]:
        """Segments a crashed worker left unreported (the open one): on disk, so reported.

        The worker numbers segments ``seg-NNNNN.ts`` from its ``first_segment`` and a new worker
        continues after the highest number on disk, so nothing here is overwritten later.
        """
        if run.started is None or not isinstance(run.started.get("first_segment"), int):
            return []
        folder = Path(str(run.started.get("recording_dir") or self._recording_dir or ""))
        if not str(folder) or not folder.is_dir():
            return []
        first = int(run.started["first_segment"]) + len(run.segments)
        start = max([float(s.get("end", 0)) for s in run.segments]
                    + [float(run.started.get("ts") or run.spawned)])
        found = []
        for path in sorted(folder.glob("seg-*.ts")):
            number = path.stem.removeprefix("seg-")
            if not number.isdigit() or int(number) < first:
                continue
            try:
                size, mtime = path.stat().st_size, path.stat().st_mtime
                digest = sha256_file(path)
            except OSError:
                continue
            if size == 0:
                continue
            end = max(start, min(now, mtime))
            found.append({"path": str(path), "bytes": size, "sha256": digest,
                          "start": round(start, 3), "end": round(end, 3),
                          "duration_s": round(end - start, 3), "partial": True})
            start = end
        return found

    # -- helpers --------------------------------------------------------------------------------

    def _summary(self) -> dict | None:
        if not any(r.started or r.summary is not None for r in self._runs):
            return None
        live: dict[str, float] = collections.defaultdict(float)
        segments: list[dict] = []
        recorded = 0.0
        interruptions: list[dict] = list(self._interruptions)
        for run in self._runs:
            if run.summary is not None:
                s = run.summary
                for name, sec in (s.get("live_s") or {}).items():
                    live[name] += float(sec)
                run_segments = s.get("segments") or run.segments
                segments += run_segments
                recorded += float(s.get("recorded_s") or
                                  sum(float(x.get("duration_s", 0)) for x in run_segments))
                interruptions += s.get("interruptions") or []
            else:  # crashed: what its lines said
                for sink in ((run.last_stats or {}).get("sinks") or []):
                    live[str(sink.get("name"))] += float(sink.get("live_s") or 0)
                segments += run.segments
                recorded += sum(float(x.get("duration_s", 0)) for x in run.segments)
        return {"live_s": {k: round(v, 1) for k, v in live.items()},
                "recorded_s": round(recorded, 3), "segments": segments,
                "interruptions": sorted(interruptions, key=lambda i: i.get("start", 0))}

    def _deliver(self, line: dict) -> None:
        try:
            self._on_line(line)
        except Exception:  # the caller's bug must not stop the relay
            log.exception("media supervisor: on_line failed for a %s line", line.get("type"))

    def _event(self, event: str, severity: str, message: str, details: dict) -> dict:
        return {"type": "event", "ts": round(time.time(), 3), "event": event,
                "severity": severity, "message": message, "details": details}

    def _send(self, run: _Run, data: bytes) -> None:
        try:
            assert run.proc.stdin is not None
            run.proc.stdin.write(data)
            run.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # it died (EPIPE) or its pipe is closed
            log.debug("media worker %d: cannot write to its stdin: %s", run.proc.pid, exc)

    def _signal(self, run: _Run, sig: signal.Signals, why: str) -> None:
        if run.proc.poll() is not None:
            return
        log.warning("media worker %d %s; sending %s", run.proc.pid, why, sig.name)
        with contextlib.suppress(OSError):
            run.proc.send_signal(sig)

    def _reap_group(self, pgid: int) -> None:
        """A crashed or killed worker's FFmpeg children: give them time to finish, then kill."""
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)
        log.warning("media worker group %d: processes left %.0f s after the worker ended; "
                    "killing them", pgid, ORPHAN_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _forward_stderr(self, run: _Run) -> None:
        assert run.proc.stderr is not None
        pid = run.proc.pid
        for raw in run.proc.stderr:
            line = self._scrub(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            run.stderr_tail.append(line)
            m = _LEVEL_RE.search(line)
            level = logging.getLevelName(m.group(1)) if m else logging.INFO
            worker_log.log(level, "[%d] %s", pid, line)

    def _scrub(self, text: str) -> str:
        for url in self._urls:
            text = scrub(text, url)
        return text


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
