"""The one catalogue of warnings: what a technician should act on, with its cause and next step.

Every warning the agent shows anywhere (``classroom-agent status``, its ``--json``, the status
page, ``doctor``) is a :class:`Warning`: a stable ``code`` from :data:`CATALOGUE`, the
``params`` that fill its templates, and nothing else. The words live only in the catalogue's
:class:`Template` entries, written in English as ``str.format`` templates with named fields, so
that a translation (gettext msgids) can reorder them freely. Two format specs keep numbers out of
the translated text: ``{x:duration}`` (``3h 12m``) and ``{x:percent}`` (``91%``).

:func:`collect` derives the warnings from a status snapshot; :func:`render` turns one into a
sentence (through a ``translate`` function, identity by default); :func:`as_json` is what the
snapshot carries (code, subsystem, severity, params and the English sentence, for scripts).
Parameters are data: they may hold text from outside (a broker's error, a path), which every
renderer prints inertly (agent/status/text.py).
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agent.records import age_s

Subsystem = Literal["agent", "broker", "outbox", "machine", "camera", "microphone", "lesson",
                    "live", "recording", "upload", "commands", "telemetry"]
#: ``warning``: the terminal works but needs attention; ``fault``: something does not work.
Severity = Literal["warning", "fault"]
Translate = Callable[[str], str]


@dataclass(frozen=True)
class Template:
    subsystem: Subsystem
    severity: Severity
    #: What is wrong, as a ``str.format`` template over the warning's params.
    cause: str
    #: What to do about it ("" when there is nothing to do but wait).
    next_step: str = ""


#: Every warning the agent can raise, by stable code. Codes never change meaning; a new
#: situation gets a new code. Keep each cause one sentence and each next step an action.
CATALOGUE: dict[str, Template] = {
    "broker_unreachable": Template(
        "broker", "fault",
        "Not connected to the broker {address}: {error}.",
        "check the network and that the broker runs and accepts this device "
        "(see `journalctl -u classroom-agent`)."),
    "broker_no_subscriber": Template(
        "broker", "warning",
        "The broker {address} has had no subscriber for this terminal's records since {since}: "
        "nobody on the platform receives them. {depth} records are kept on disk and sent "
        "again until a subscriber takes them.",
        "ask the platform's operator whether its collectors are running and subscribed to "
        "classroom/v1/#."),
    "outbox_backlog": Template(
        "outbox", "warning",
        "{depth} records waiting to be sent, the oldest for {oldest_age_s:duration}. They are "
        "kept on disk and will be sent when the broker is reachable."),
    "outbox_dropped": Template(
        "outbox", "warning",
        "{dropped_total} records were dropped because the outbox reached its bound "
        "(outbox.max_records/max_bytes/max_age_s).",
        "restore the broker connection sooner or raise the bounds."),
    "outbox_in_memory": Template(
        "outbox", "fault",
        "The outbox file is unusable; records are only in memory and will be lost on restart.",
        "check {state_dir} (space, permissions, disk errors)."),
    "outbox_quarantined": Template(
        "outbox", "warning",
        "The outbox file was corrupt and has been quarantined in {state_dir}.",
        "check the disk (dmesg, smartctl)."),
    "secret_file_exposed": Template(
        "agent", "warning",
        "The {what} file {path} is readable by group or others (mode {mode}).",
        "chmod 600 {path} (owned by the user the agent runs as), then replace the secret if "
        "others may have read it."),
    "command_key_unusable": Template(
        "commands", "fault",
        "A command public key is unusable: {problem}. Every MQTT command is refused until it "
        "is fixed.",
        "fix commands.public_keys in the agent config, then `systemctl reload "
        "classroom-agent`."),
    "commands_unsigned": Template(
        "commands", "warning",
        "MQTT commands are accepted WITHOUT a signature: whoever can publish to this terminal's "
        "command topic can start and stop its camera and microphone.",
        "install the platform's public key (commands.public_keys; scripts/install.sh "
        "--command-key) and `systemctl reload classroom-agent`."),
    "control_socket_unavailable": Template(
        "commands", "fault",
        "Local control is off: the socket {path} could not be opened ({error}), so "
        "`classroom-agent lesson` does not work on this terminal.",
        "check that its directory exists and the agent's user may write there (systemd: "
        "RuntimeDirectory=classroom-agent) and that status.socket_group names an existing "
        "group the agent belongs to; then restart the agent."),
    "collector_failing": Template(
        "telemetry", "warning",
        "Collector {name} is failing: {error}.",
        "see `journalctl -u classroom-agent` for the details; the other collectors go on."),
    "upload_failing": Template(
        "upload", "fault",
        "Recordings are not being uploaded: {error}.",
        "{next_step}."),
    "upload_failed_lessons": Template(
        "upload", "warning",
        "{count} recording(s) could not be uploaded and are kept on this terminal.",
        "see `classroom-agent status --json` (upload) and the log for the cause, fix it, then "
        "send upload_retry."),
    "upload_late": Template(
        "upload", "warning",
        "{count} recording(s) have waited for upload since {since}; they fill the disk.",
        "check the network, upload.hours and upload.max_kbps."),
    "disk_full": Template(
        "machine", "warning",
        "Disk {mount} is {percent:percent} full.",
        "free space; old recordings are the usual cause."),
    "memory_high": Template(
        "machine", "warning",
        "Memory is {percent:percent} used.",
        "find what uses it (`top`, sorted by memory) and close it or restart the PC."),
    "temperature_high": Template(
        "machine", "warning",
        "A temperature sensor reads {celsius:.0f} °C.",
        "check fans and vents."),
    # -- found by `classroom-agent doctor` (agent/doctor/) ------------------------------------
    "config_invalid": Template(
        "agent", "fault",
        "The configuration {path} has problems: {problems}",
        "fix the lines named, then `classroom-agent config check {path}`."),
    "state_dir_unwritable": Template(
        "machine", "fault",
        "The state directory {path} cannot be written: {error}.",
        "create it for the user the agent runs as: `install -d -o classroom-agent {path}`."),
    "disk_space_exhausted": Template(
        "machine", "fault",
        "Only {free_mb:.0f} MB free on the disk of {path}: the outbox and the recordings "
        "cannot grow.",
        "free space on that disk now (old recordings under media.recording.dir are the usual "
        "cause)."),
    "disk_space_low": Template(
        "machine", "warning",
        "Only {free_mb:.0f} MB free on the disk of {path}; recordings keep "
        "{reserve_mb:.0f} MB free (media.recording.min_free_mb) and will stop below it.",
        "free space, or lower media.recording.retention_days."),
    "broker_name_unresolved": Template(
        "broker", "fault",
        "The broker's name {host} does not resolve: {error}.",
        "check DNS on this PC (`resolvectl status`) and mqtt.host in the configuration."),
    "broker_port_closed": Template(
        "broker", "fault",
        "Cannot connect to the broker at {address}: {error}.",
        "check that the broker runs and that no firewall blocks port {port} from this PC."),
    "broker_tls_failed": Template(
        "broker", "fault",
        "The TLS handshake with the broker {address} failed: {error}.",
        "check mqtt.tls.ca_file (the CA that signed the broker's certificate) and mqtt.host "
        "(a name the certificate carries)."),
    "broker_cert_expiring": Template(
        "broker", "warning",
        "The broker's certificate expires in {days:.0f} days ({not_after}).",
        "ask the platform's operators to renew it before then."),
    "broker_auth_failed": Template(
        "broker", "fault",
        "The broker refused the login of {username}: {reason}.",
        "check mqtt.username and the password in mqtt.password_file against the broker's "
        "accounts."),
    "broker_no_answer": Template(
        "broker", "fault",
        "The broker {address} accepted the connection but did not answer the MQTT login: "
        "{error}.",
        "check that port {port} is the broker's MQTT port and whether it needs TLS "
        "(mqtt.tls.enabled)."),
    "clock_off": Template(
        "machine", "warning",
        "This PC's clock is {offset_s:+.1f} s off the time server {server}.",
        "turn on time synchronisation: `timedatectl set-ntp true`."),
    "clock_wrong": Template(
        "machine", "fault",
        "This PC's clock is {offset_s:+.0f} s off the time server {server}: certificates, "
        "lesson times and telemetry times are wrong.",
        "set the time (`timedatectl set-ntp true`, or the BIOS clock) and restart the agent."),
    "clock_unchecked": Template(
        "machine", "warning",
        "The time server {server} did not answer: {error}.",
        "check that UDP port 123 to it is open, or name a reachable one with `--ntp`."),
    "camera_unavailable": Template(
        "camera", "fault",
        "The camera {source} gives no picture: {error}.",
        "check the cable and `classroom-agent devices`; set media.video.source to a camera "
        "listed there."),
    "camera_black": Template(
        "camera", "warning",
        "The camera {source} gives a black picture (brightness {luma:.0f} of 255).",
        "remove the lens cap or cover and check the room's light."),
    "camera_frozen": Template(
        "camera", "warning",
        "The camera {source} gives the same picture over and over (frozen).",
        "unplug and replug the camera; close any other program that uses it."),
    "microphone_unavailable": Template(
        "microphone", "fault",
        "The microphone {source} cannot be read: {error}.",
        "check the cable and `classroom-agent devices`; set media.audio.source to a microphone "
        "listed there."),
    "microphone_dead": Template(
        "microphone", "fault",
        "The microphone {source} gives digital silence ({peak_dbfs:.0f} dBFS peak): it is "
        "muted, unplugged or the wrong input.",
        "unmute it (`pactl set-source-mute @DEFAULT_SOURCE@ 0` or its switch) and check "
        "media.audio.source."),
    "microphone_silent": Template(
        "microphone", "warning",
        "The microphone {source} hears almost nothing ({peak_dbfs:.0f} dBFS peak).",
        "speak near it and run doctor again; raise its input volume if it stays quiet."),
    "ffmpeg_missing": Template(
        "recording", "fault",
        "FFmpeg cannot be run: {error}.",
        "set media.ffmpeg to bundled (the FFmpeg the agent's Python package carries), system "
        "(install it: `apt-get install ffmpeg`) or the path of a working ffmpeg."),
    "ffmpeg_incomplete": Template(
        "recording", "fault",
        "This FFmpeg lacks {missing}, which the configuration needs.",
        "set media.ffmpeg: bundled (it has everything the agent uses); "
        "`classroom-agent devices` lists what the chosen one has."),
    "live_unreachable": Template(
        "live", "fault",
        "The live sink {name} ({url}) cannot be reached: {error}.",
        "check the URL in media.live and that the streaming server is up and reachable from "
        "this PC."),
    "service_inactive": Template(
        "agent", "fault",
        "The systemd service classroom-agent is {state}.",
        "`systemctl start classroom-agent`; `journalctl -u classroom-agent -n 50` says why it "
        "stopped."),
    "service_no_watchdog": Template(
        "agent", "warning",
        "The systemd service runs without a watchdog (WatchdogUSec={watchdog}).",
        "reinstall the unit from systemd/classroom-agent.service (scripts/install.sh)."),
    "agent_not_running": Template(
        "agent", "warning",
        "The agent is not running: nothing answers on {address}.",
        "`systemctl start classroom-agent`; `journalctl -u classroom-agent -n 50` says why it "
        "stopped."),
    "check_timed_out": Template(
        "agent", "warning",
        "The check did not finish within {limit_s:.0f} s and was abandoned.",
        "run doctor again; if it repeats, the part it checks hangs (see the log)."),
    "check_crashed": Template(
        "agent", "warning",
        "The check could not run: {error}.",
        "report it with the output of `classroom-agent doctor --json`."),
}


@dataclass(frozen=True)
class Warning:
    """One warning: a catalogue code and its parameters (plain JSON values). (The name hides
    the builtin ``Warning`` in this module only; nothing here raises Python warnings.)"""

    code: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown warning code {self.code!r}; add it to CATALOGUE")

    @property
    def template(self) -> Template:
        return CATALOGUE[self.code]


class _Formatter(string.Formatter):
    """``str.format`` plus the specs ``duration`` and ``percent``; a missing or wrong-typed
    parameter prints as ``?`` instead of failing (a warning must always render)."""

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        return kwargs.get(str(key), "?")

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "duration":
            return human_duration(value if isinstance(value, int | float) else None)
        if format_spec == "percent":
            return f"{value:.0f}%" if isinstance(value, int | float) else "?"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


_FORMAT = _Formatter()


NEXT_STEP = "{cause} Next step: {next_step}"


def _identity(text: str) -> str:
    return text


def fill(template: str, params: Mapping[str, Any], translate: Translate = _identity) -> str:
    """Any catalogue-style template (also doctor's pass lines), translated then filled."""
    return _FORMAT.format(translate(template), **params)


def cause(w: Warning, translate: Translate = _identity) -> str:
    return _FORMAT.format(translate(w.template.cause), **w.params)


def next_step(w: Warning, translate: Translate = _identity) -> str:
    step = w.template.next_step
    return _FORMAT.format(translate(step), **w.params) if step else ""


def render(w: Warning, translate: Translate = _identity) -> str:
    """The whole sentence people read: the cause, then "Next step: ..." when there is one."""
    text, step = cause(w, translate), next_step(w, translate)
    # One template, so a language can join them its own way (Chinese: no spaces).
    return translate(NEXT_STEP).format(cause=text, next_step=step) if step else text


def as_json(w: Warning) -> dict[str, Any]:
    """What the snapshot carries for scripts and the page: the code and its data, plus the
    English sentence (the page and the CLI translate from code and params, not from this)."""
    t = w.template
    return {"code": w.code, "subsystem": t.subsystem, "severity": t.severity,
            "params": dict(w.params), "text": render(w)}


def from_json(doc: Mapping[str, Any]) -> Warning | None:
    """A warning back from the snapshot's JSON (None for a code this version does not know,
    e.g. from a newer agent)."""
    code = doc.get("code")
    if not isinstance(code, str) or code not in CATALOGUE:
        return None
    params = doc.get("params")
    return Warning(code, params if isinstance(params, dict) else {})


def human_duration(s: float | None) -> str:
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


@dataclass(frozen=True)
class Context:
    """What :func:`collect` needs beyond the snapshot (from the running config)."""

    interval_s: float
    state_dir: str
    video_source: str = "camera"
    audio_source: str = "microphone"


def collect(s: Mapping[str, Any], ctx: Context) -> list[Warning]:
    """Everything a technician should act on, derived from the snapshot ``s``."""
    out: list[Warning] = []
    b, ob, km = s["broker"], s["outbox"], s["metrics"]
    grace = max(3 * ctx.interval_s, 30.0)
    if not b["connected"] and (b["connect_failures_total"] or s["agent"]["uptime_s"] > grace):
        out.append(Warning("broker_unreachable", {"address": b["address"],
                                                  "error": b["last_error"] or "connecting"}))
    nobody = b.get("no_subscriber_since")  # a collector restarting is not worth a warning yet
    if b["connected"] and isinstance(nobody, str) and age_s(_epoch(nobody)) > grace:
        out.append(Warning("broker_no_subscriber", {"address": b["address"], "depth": ob["depth"],
                                                    "since": b["no_subscriber_since"]}))
    elif ob["oldest_age_s"] and ob["oldest_age_s"] > grace:
        out.append(Warning("outbox_backlog", {"depth": ob["depth"],
                                              "oldest_age_s": ob["oldest_age_s"]}))
    if ob["dropped_total"]:
        out.append(Warning("outbox_dropped", {"dropped_total": ob["dropped_total"]}))
    if ob["in_memory"]:
        out.append(Warning("outbox_in_memory", {"state_dir": ctx.state_dir}))
    if ob["quarantined_total"]:
        out.append(Warning("outbox_quarantined", {"state_dir": ctx.state_dir}))
    sec = s.get("security") or {}
    out.extend(Warning("secret_file_exposed", f) for f in sec.get("exposed_files", []))
    out.extend(Warning("command_key_unusable", {"problem": p}) for p in sec.get("key_problems", []))
    ff = s.get("ffmpeg") or {}
    if ff.get("error") and not ff.get("version"):
        out.append(Warning("ffmpeg_missing", {"error": ff["error"]}))
    elif ff.get("missing"):
        out.append(Warning("ffmpeg_incomplete", {"missing": "; ".join(
            f"{kind} {', '.join(names)}" for kind, names in ff["missing"].items())}))
    if sec.get("signatures_required") is False:
        out.append(Warning("commands_unsigned"))
    if sec.get("control_socket_error"):
        out.append(Warning("control_socket_unavailable", {"path": sec.get("control_socket"),
                                                          "error": sec["control_socket_error"]}))
    for name, why in s["telemetry"]["failing_collectors"].items():
        out.append(Warning("collector_failing", {"name": name, "error": why}))
    out.extend(_upload(s.get("upload") or {}))
    out.extend(Warning("disk_full", {"mount": d["mount"], "percent": d["percent"]})
               for d in km["disks"] if d["percent"] is not None and d["percent"] >= 90)
    if km["memory_percent"] is not None and km["memory_percent"] >= 95:
        out.append(Warning("memory_high", {"percent": km["memory_percent"]}))
    if km["max_temperature_c"] is not None and km["max_temperature_c"] >= 90:
        out.append(Warning("temperature_high", {"celsius": km["max_temperature_c"]}))
    out.extend(_lesson_media(s.get("media"), ctx))
    return out


def _lesson_media(m: Mapping[str, Any] | None, ctx: Context) -> list[Warning]:
    """The running lesson's devices and sinks, from its media worker's last stats."""
    if not m:
        return []
    out: list[Warning] = []
    video, audio, flags = m.get("video") or {}, m.get("audio") or {}, m.get("flags") or {}
    lost = "lost during the lesson; it is reopened by itself"
    if video.get("source_state") == "lost":
        out.append(Warning("camera_unavailable", {"source": ctx.video_source, "error": lost}))
    elif flags.get("black"):
        out.append(Warning("camera_black", {"source": ctx.video_source, "luma": 0}))
    elif flags.get("frozen"):
        out.append(Warning("camera_frozen", {"source": ctx.video_source}))
    if audio.get("source_state") == "lost":
        out.append(Warning("microphone_unavailable", {"source": ctx.audio_source,
                                                      "error": lost}))
    elif flags.get("silence"):
        out.append(Warning("microphone_silent", {"source": ctx.audio_source,
                                                 "peak_dbfs": audio.get("peak_dbfs")}))
    for sink in m.get("sinks") or []:
        if isinstance(sink, dict) and sink.get("state") == "down":
            out.append(Warning("live_unreachable", {"name": sink.get("name"),
                                                    "url": sink.get("url"),
                                                    "error": sink.get("error") or "down"}))
    return out


#: Recordings waiting longer than this for upload are worth a technician's look.
UPLOAD_LATE_S = 3 * 86400.0


def _upload(u: Mapping[str, Any]) -> list[Warning]:
    if not u.get("enabled"):
        return []
    out = []
    err = u.get("last_error")
    if isinstance(err, dict):
        out.append(Warning("upload_failing", {"error": err.get("message"),
                                              "next_step": err.get("next_step")}))
    if u.get("failed_lessons"):
        out.append(Warning("upload_failed_lessons", {"count": u["failed_lessons"]}))
    oldest = u.get("oldest_queued_at")
    if isinstance(oldest, str) and age_s(_epoch(oldest)) > UPLOAD_LATE_S:
        out.append(Warning("upload_late", {"count": u.get("queued_lessons"), "since": oldest}))
    return out


def _epoch(ts: str) -> float:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
