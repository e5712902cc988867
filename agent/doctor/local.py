"""Checks of this PC: configuration, state directory and disk, secrets, FFmpeg, the service."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent import config
from agent.doctor.report import Finding, passed, problem, skipped
from agent.doctor.runner import Context
from agent.i18n import N_
from agent.secretfiles import exposed, secret_files
from agent.status.warnings import from_json, human_duration

#: Below this the outbox cannot take a day of telemetry: a failure, not a warning.
HARD_FREE_MB = 64.0
SERVICE = "classroom-agent"
MAX_PROBLEMS = 5

T_CONFIG = N_("Configuration")
T_STATE = N_("State directory")
T_DISK = N_("Free disk space")
T_SECRETS = N_("Secret files")
T_FFMPEG = N_("FFmpeg")
T_SERVICE = N_("systemd service")
T_AGENT = N_("Running agent")


def load_config(path: str) -> tuple[config.Config | None, list[Finding]]:
    """The config, and the finding about it (the other checks need the config)."""
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        shown = exc.problems[:MAX_PROBLEMS]
        more = len(exc.problems) - len(shown)
        text = "; ".join(shown) + (f" (+{more})" if more > 0 else "")
        return None, [problem("config", T_CONFIG, "config_invalid", path=path, problems=text)]
    return cfg, [passed("config", T_CONFIG, N_("{path} is valid: device {device}, school "
                                               "{school}, config hash {hash}."),
                        path=path, device=cfg.device.id, school=cfg.device.school,
                        hash=cfg.hash)]


def state_dir(ctx: Context) -> list[Finding]:
    assert ctx.cfg is not None
    path = ctx.cfg.state_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return [problem("state_dir", T_STATE, "state_dir_unwritable", path=str(path),
                        error=exc.strerror or str(exc))]
    return [passed("state_dir", T_STATE, N_("{path} can be written."), path=str(path))]


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk(ctx: Context) -> list[Finding]:
    """Free space where the outbox and the recordings live (one finding per filesystem)."""
    assert ctx.cfg is not None
    reserve = float(ctx.cfg.media.recording.min_free_mb)
    out: list[Finding] = []
    seen: set[int] = set()
    for path in (ctx.cfg.state_path, ctx.cfg.recording_path):
        where = _existing(path)
        try:
            dev = where.stat().st_dev
            usage = shutil.disk_usage(where)
        except OSError as exc:
            out.append(problem("disk", T_DISK, "state_dir_unwritable", path=str(path),
                               error=exc.strerror or str(exc)))
            continue
        if dev in seen:
            continue
        seen.add(dev)
        free_mb = usage.free / 1e6
        if free_mb < HARD_FREE_MB:
            out.append(problem("disk", T_DISK, "disk_space_exhausted", path=str(path),
                               free_mb=free_mb))
        elif free_mb < reserve:
            out.append(problem("disk", T_DISK, "disk_space_low", path=str(path),
                               free_mb=free_mb, reserve_mb=reserve))
        else:
            out.append(passed("disk", T_DISK, N_("{free_mb:.0f} MB free on the disk of {path}."),
                              path=str(path), free_mb=free_mb))
    return out


def secrets(ctx: Context) -> list[Finding]:
    assert ctx.cfg is not None
    files = secret_files(ctx.cfg)
    if not files:
        return [skipped("secrets", T_SECRETS, N_("No secret file is configured."))]
    found = exposed(ctx.cfg)
    if found:
        return [problem("secrets", T_SECRETS, "secret_file_exposed", **e.params) for e in found]
    return [passed("secrets", T_SECRETS, N_("{count} secret file(s), readable by their owner "
                                            "only."), count=len(files))]


def ffmpeg(ctx: Context) -> list[Finding]:
    """The FFmpeg media.ffmpeg chooses, and what this configuration needs of it (one probe,
    agent/media/ffmpeg.py, shared with `devices` and the status)."""
    from agent.media.ffmpeg import report
    from agent.urls import live_kinds

    assert ctx.cfg is not None
    ff = report(ctx.cfg.media.ffmpeg, live_kinds(ctx.cfg.media.live))
    if not ff.get("version"):
        return [problem("ffmpeg", T_FFMPEG, "ffmpeg_missing", error=ff.get("error", "?"))]
    if ff.get("missing"):
        return [problem("ffmpeg", T_FFMPEG, "ffmpeg_incomplete", missing="; ".join(
            f"{kind} {', '.join(names)}" for kind, names in ff["missing"].items()))]
    needs = ff.get("needs") or {}
    return [passed("ffmpeg", T_FFMPEG, N_("{path} {version}: {needs}."), path=ff["path"],
                   version=ff["version"],
                   needs=", ".join(n for names in needs.values() for n in names))]


def service(ctx: Context) -> list[Finding]:
    """The systemd unit's state and watchdog (skipped where systemd does not run)."""
    exe = shutil.which("systemctl")
    if exe is None or not Path("/run/systemd/system").is_dir():
        return [skipped("service", T_SERVICE, N_("systemd is not running on this machine."))]
    try:
        out = subprocess.run([exe, "show", SERVICE, "--property=LoadState,ActiveState,SubState,"
                              "WatchdogUSec,NRestarts"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [skipped("service", T_SERVICE, N_("systemctl did not answer: {error}."),
                        error=str(exc))]
    props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return [problem("service", T_SERVICE, "service_inactive",
                        state=props.get("LoadState", "unknown"))]
    if props.get("ActiveState") != "active":
        return [problem("service", T_SERVICE, "service_inactive",
                        state=f"{props.get('ActiveState')} ({props.get('SubState')})")]
    if props.get("WatchdogUSec", "0") in ("0", "infinity", ""):
        return [problem("service", T_SERVICE, "service_no_watchdog",
                        watchdog=props.get("WatchdogUSec", "0"))]
    return [passed("service", T_SERVICE, N_("active ({sub}), watchdog {watchdog}, {restarts} "
                                            "restart(s)."),
                   sub=props.get("SubState", "?"), watchdog=props.get("WatchdogUSec"),
                   restarts=props.get("NRestarts", "?"))]


def agent(ctx: Context) -> list[Finding]:
    """The running agent (from its status), and the warnings it raises now."""
    assert ctx.cfg is not None
    s = ctx.status
    if s is None:
        host, port = ctx.cfg.status.address
        return [problem("agent", T_AGENT, "agent_not_running", address=f"{host}:{port}")]
    a = s.get("agent") or {}
    out = [passed("agent", T_AGENT, N_("running, pid {pid}, up {uptime}, version {version}."),
                  pid=a.get("pid"), uptime=human_duration(a.get("uptime_s")),
                  version=a.get("version"))]
    for doc in s.get("warning_details") or []:
        w = from_json(doc) if isinstance(doc, dict) else None
        if w is not None:
            out.append(problem("agent.warning", T_AGENT, w.code, **w.params))
    return out
