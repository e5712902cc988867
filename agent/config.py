"""Configuration: YAML into typed, frozen dataclasses.

Every key is declared once, here, as a dataclass field: its type, its default and its bounds.
The loader (agent/typedconfig.py, shared with the collector) walks the YAML node tree so that
every error names the key path and the line it stands on. Unknown keys are errors (a typo must
never silently fall back to a default). Secrets are never in this file: only paths to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent import typedconfig
from agent.typedconfig import ConfigError, load_file, load_text, read_secret
from agent.urls import SINK_RULE, SINK_URL, protocol_of

__all__ = ["Config", "ConfigError", "describe_keys", "load", "loads", "read_secret"]

DEFAULT_PATH = Path("/etc/classroom-agent/agent.yaml")

# No '.' in anything that becomes a topic level: NATS refuses topics with '.' or ' ' and RabbitMQ
# turns '.' into a level separator (docs/contract.md, "Brokers").
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_TOPIC_PREFIX = r"^[^#+/\s.][^#+\s.]*[^#+/\s.]$|^[^#+/\s.]$"
_HOSTPORT = r"^\[?[A-Za-z0-9_.:-]+\]?:[0-9]{1,5}$"
_NAME_RULE = ("1-64 letters, digits, '_' or '-' (it becomes an MQTT topic level; '.' breaks "
              "NATS and RabbitMQ)")
_PREFIX_RULE = "topic levels without '+', '#', '.', spaces or a leading/trailing '/'"
_HOSTPORT_RULE = "write it as HOST:PORT, e.g. 127.0.0.1:8765"


def _port_in_range(value: Any) -> str | None:
    return None if 1 <= int(str(value).rpartition(":")[2]) <= 65535 else "the port must be 1-65535"


def _meta(
    *, min: float | None = None, max: float | None = None, pattern: str | None = None,
    file: bool = False, doc: str = "",
) -> dict[str, Any]:
    return typedconfig.meta(min=min, max=max, pattern=pattern, file=file, doc=doc,
                            check=_port_in_range if pattern == _HOSTPORT else None)


def _opt(default: Any, **meta: Any) -> Any:
    return field(default=default, metadata=_meta(**meta))


def _opt_factory(factory: Any, **meta: Any) -> Any:
    return field(default_factory=factory, metadata=_meta(**meta))


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(metadata=_meta(pattern=_NAME, doc=_NAME_RULE))
    school: str = field(metadata=_meta(pattern=_NAME, doc=_NAME_RULE))
    name: str = _opt("", doc="human name of the room or terminal")


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = _opt(False)
    ca_file: str | None = _opt(None, file=True)
    cert_file: str | None = _opt(None, file=True)
    key_file: str | None = _opt(None, file=True)

    @property
    def active(self) -> bool:
        return self.enabled or any((self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True)
class MqttConfig:
    host: str = _opt("localhost")
    port: int = _opt(1883, min=1, max=65535)
    topic_prefix: str = _opt("classroom/v1", pattern=_TOPIC_PREFIX, doc=_PREFIX_RULE)
    username: str | None = _opt(None)
    password_file: str | None = _opt(None, file=True)
    tls: TlsConfig = _opt_factory(TlsConfig)
    keepalive_s: int = _opt(30, min=5, max=3600)
    protocol: Literal["auto", "5", "3.1.1"] = _opt("auto")
    max_inflight: int = _opt(20, min=1, max=1000)
    batch_records: int = _opt(50, min=1, max=500, doc="consecutive backlog records sent in one "
                              "batch message (docs/contract.md); 1 sends every record alone")
    reconnect_min_s: float = _opt(1.0, min=0.05, max=3600)
    reconnect_max_s: float = _opt(120.0, min=0.1, max=86400)
    flush_on_exit_s: float = _opt(5.0, min=0, max=60)
    state_refresh_s: float = _opt(3600.0, min=1, max=86400, doc="the retained online state is "
                                  "published again this often while connected")


@dataclass(frozen=True)
class OutboxConfig:
    max_records: int = _opt(500_000, min=10)
    max_bytes: int = _opt(256 * 1024 * 1024, min=10_000)
    max_age_s: float = _opt(30 * 86400.0, min=60)


DEFAULT_APPS: dict[str, list[str]] = {
    "whiteboard": ["easinote*", "seewo*", "hitevision*", "openboard*"],
    "office_wps": ["wps", "wpp", "et", "wpspdf"],
    "office_libreoffice": ["soffice*", "libreoffice*"],
    "browser": ["chrome", "chromium*", "firefox*", "firefox-esr", "msedge"],
    "media_player": ["vlc", "mpv", "totem"],
    "classroom_live": ["classin*", "dingtalk*", "tencent-meeting*", "wemeetapp*"],
}


@dataclass(frozen=True)
class TelemetryClasses:
    """Which classes of telemetry are collected at all (docs/privacy.md lists their fields).

    A class that is off is not read from the machine and never reaches the wire. What the agent
    needs to work (``state``, events about the agent itself, the ``agent`` metrics section and
    the lesson evidence) belongs to no class and is always on.
    """

    system: bool = _opt(True, doc="metrics sections cpu, memory, swap, disks, network, sensors, "
                                  "host")
    usage: bool = _opt(True, doc="usage records: power-on intervals, session counts, app seconds")
    peripherals: bool = _opt(True, doc="metrics section peripherals, peripheral and display "
                                       "events, the peripherals of the inventory")
    netquality: bool = _opt(True, doc="metrics section netquality: TCP connect probes")
    inventory: bool = _opt(True, doc="inventory records: hardware, OS, network cards")
    media: bool = _opt(True, doc="metrics section media: the lesson pipeline's health")


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = _opt(60.0, min=0.05, max=86400)
    usage_interval_s: float = _opt(900.0, min=0.05, max=86400)
    usage_sample_s: float = _opt(60.0, min=0.05, max=3600)
    inventory_check_s: float = _opt(3600.0, min=0.05, max=86400)
    inventory_refresh_s: float = _opt(86400.0, min=1, max=7 * 86400, doc="the inventory is sent "
                                      "again this often even when unchanged (brokers that keep "
                                      "retained messages from wildcard subscribers)")
    probes: list[str] = _opt_factory(list, pattern=_HOSTPORT, doc=_HOSTPORT_RULE)
    probe_interval_s: float = _opt(60.0, min=0.05, max=86400)
    apps: dict[str, list[str]] = _opt_factory(lambda: {k: [*v] for k, v in DEFAULT_APPS.items()})
    classes: TelemetryClasses = _opt_factory(TelemetryClasses)




@dataclass(frozen=True)
class VideoConfig:
    source: str = _opt("synthetic", doc="synthetic, a device index, a device path, a file or a URL")
    width: int = _opt(1280, min=160, max=3840)
    height: int = _opt(720, min=120, max=2160)
    fps: int = _opt(30, min=1, max=60)


@dataclass(frozen=True)
class AudioConfig:
    source: str = _opt("synthetic", doc="synthetic, default, a device index or a device name")
    rate: int = _opt(48000, min=8000, max=96000)
    channels: int = _opt(2, min=1, max=2)
    delay_ms: int = _opt(0, min=-2000, max=2000)


@dataclass(frozen=True)
class EncoderConfig:
    video_bitrate_kbps: int = _opt(2500, min=100, max=50000)
    audio_bitrate_kbps: int = _opt(128, min=32, max=512)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = _opt(
        "veryfast")
    gop_s: float = _opt(2.0, min=0.5, max=10)
    #: auto: the first hardware H.264 encoder that passes a one-frame trial at start (VAAPI,
    #: QSV, NVENC), else libx264 (agent/media/hwenc.py)
    codec: Literal["auto", "libx264", "h264_vaapi", "h264_qsv", "h264_nvenc"] = _opt("auto")
    hw_device: str = _opt("", doc="DRM render node for VAAPI/QSV; \"\" = the first "
                          "/dev/dri/renderD*")


@dataclass(frozen=True)
class LiveSinkConfig:
    url: str = field(metadata=_meta(pattern=SINK_URL, doc=SINK_RULE))
    name: str = _opt("")
    #: None: from the URL's scheme (rtmp, rtmps, srt); "whip" for an http(s) WHIP endpoint
    protocol: Literal["rtmp", "srt", "whip"] | None = _opt(None)
    token_file: str | None = _opt(None, file=True, doc="WHIP: file holding the bearer token")


@dataclass(frozen=True)
class RecordingConfig:
    dir: str = _opt("", doc="default: {state_dir}/recordings")
    segment_s: float = _opt(60.0, min=2, max=3600)
    retention_days: float = _opt(30.0, min=0.01, max=3650)
    min_free_mb: int = _opt(2048, min=0, doc="free-space reserve on the recording disk: "
                            "below it, old recordings are removed, then the recording stops")
    resume_margin_mb: int = _opt(512, min=0, doc="a stopped recording resumes once free space "
                                 "is back above min_free_mb + this")
    check_s: float = _opt(5.0, min=0.2, max=600, doc="how often free space is checked during "
                          "a lesson")


@dataclass(frozen=True)
class MediaConfig:
    ffmpeg: str = _opt("bundled", doc="bundled (imageio-ffmpeg's FFmpeg 9), system (ffmpeg on "
                       "PATH) or the path of an ffmpeg executable")
    video: VideoConfig = _opt_factory(VideoConfig)
    audio: AudioConfig = _opt_factory(AudioConfig)
    encoder: EncoderConfig = _opt_factory(EncoderConfig)
    live: list[LiveSinkConfig] = _opt_factory(list)
    recording: RecordingConfig = _opt_factory(RecordingConfig)


@dataclass(frozen=True)
class LessonsConfig:
    timetable: str | None = _opt(None, file=True)
    timezone: str = _opt("Asia/Shanghai")
    manual_duration_s: float = _opt(2700.0, min=10, max=86400)
    schedule_days: int = _opt(14, min=1, max=31, doc="local dates the published schedule covers, "
                              "today included")
    missed_lookback_days: float = _opt(14.0, min=0, max=62, doc="how far back a start looks for "
                                       "lessons missed while the agent was away; 0: never")


@dataclass(frozen=True)
class StatusConfig:
    listen: str = _opt("127.0.0.1:8765", pattern=_HOSTPORT, doc=_HOSTPORT_RULE)
    #: Local control (``classroom-agent lesson ...``): a Unix socket whose group decides who may
    #: use it (docs/security.md, "Local control"). The TCP address above serves status only.
    socket: str = _opt("/run/classroom-agent/control.sock", pattern=r"^/[^\x00]{0,106}$",
                       doc="an absolute path of at most 107 characters")
    socket_group: str = _opt("", pattern=r"^$|^[A-Za-z_][A-Za-z0-9_.-]{0,31}$",
                             doc="a group name (empty: the agent's own group)")

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class CommandsConfig:
    """Who may command this terminal over MQTT (docs/security.md, "Signed commands")."""

    public_keys: list[str] = _opt_factory(
        list, file=True, doc="PEM files of the platform's Ed25519 public keys")
    #: None: signatures are required exactly when public_keys lists a key. True without keys
    #: refuses every MQTT command (local control still works).
    require_signature: bool | None = _opt(None)
    max_age_s: float = _opt(300.0, min=10, max=86400)

    @property
    def signatures_required(self) -> bool:
        if self.require_signature is None:
            return bool(self.public_keys)
        return self.require_signature


_ENDPOINT = r"^https?://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"
_ENDPOINT_RULE = "an http:// or https:// URL of the store: scheme, host and port only, no path"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_BUCKET_RULE = "an S3 bucket name: 3-63 lower-case letters, digits, '.' or '-'"
_HOURS = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
_HOURS_RULE = "a local time window HH:MM-HH:MM (it may pass midnight, e.g. 18:00-07:30)"
_KEY_PREFIX = r"^[A-Za-z0-9_{}/.-]*$"


@dataclass(frozen=True)
class UploadTlsConfig:
    ca_file: str | None = _opt(None, file=True)
    verify: bool = _opt(True, doc="false accepts any certificate: only for a test store")


@dataclass(frozen=True)
class UploadConfig:
    """Lesson recordings to S3-compatible object storage (docs/upload.md)."""

    enabled: bool = _opt(False)
    endpoint: str = _opt("", pattern=r"^$|" + _ENDPOINT, doc=_ENDPOINT_RULE)
    bucket: str = _opt("", pattern=r"^$|" + _BUCKET, doc=_BUCKET_RULE)
    region: str = _opt("us-east-1", pattern=r"^[a-z0-9-]{1,32}$", doc="e.g. us-east-1")
    access_key_file: str | None = _opt(None, file=True)
    secret_key_file: str | None = _opt(None, file=True)
    tls: UploadTlsConfig = _opt_factory(UploadTlsConfig)
    key_prefix: str = _opt("{school}/{device}", pattern=_KEY_PREFIX,
                           doc="letters, digits, '_', '-', '.', '/' and {school}, {device}")
    part_size_mb: int = _opt(8, min=5, max=512)
    max_kbps: int = _opt(2000, min=0, max=10_000_000)
    during_lessons: bool = _opt(False)
    hours: list[str] = _opt_factory(list, pattern=_HOURS, doc=_HOURS_RULE)
    retry_min_s: float = _opt(10.0, min=0.1, max=86400)
    retry_max_s: float = _opt(900.0, min=1, max=86400)
    timeout_s: float = _opt(30.0, min=1, max=600)

    @property
    def ready(self) -> bool:
        return self.enabled and bool(self.endpoint and self.bucket)


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    mqtt: MqttConfig = _opt_factory(MqttConfig)
    state_dir: str = _opt("/var/lib/classroom-agent")
    telemetry: TelemetryConfig = _opt_factory(TelemetryConfig)
    outbox: OutboxConfig = _opt_factory(OutboxConfig)
    status: StatusConfig = _opt_factory(StatusConfig)
    media: MediaConfig = _opt_factory(MediaConfig)
    lessons: LessonsConfig = _opt_factory(LessonsConfig)
    commands: CommandsConfig = _opt_factory(CommandsConfig)
    upload: UploadConfig = _opt_factory(UploadConfig)
    log_level: Literal["debug", "info", "warning", "error"] = _opt("info")

    @property
    def hash(self) -> str:
        """Short digest of the effective config, so the platform can see which one runs."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def recording_path(self) -> Path:
        return Path(self.media.recording.dir or self.state_path / "recordings")


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming every problem found."""
    return _checked(load_file(Config, path), str(path))


def loads(text: str, name: str = "<config>") -> Config:
    return _checked(load_text(Config, text, name), name)


def _checked(cfg: Config, name: str) -> Config:
    """What a key-by-key check cannot see: a live sink's URL and protocol must fit together;
    upload's keys that belong together."""
    problems = []
    for i, sink in enumerate(cfg.media.live):
        try:
            kind = protocol_of(sink.url, sink.protocol)
        except ValueError as exc:
            problems.append(f"{name}: media.live[{i}]: {exc}")
            continue
        if sink.token_file and kind != "whip":
            problems.append(f"{name}: media.live[{i}].token_file: only WHIP sinks take a token "
                            "file (RTMP keys and SRT passphrases are part of their URL)")
    up = cfg.upload
    if up.enabled:
        problems += [f"{name}: upload.{k}: required when upload.enabled is true"
                     for k in ("endpoint", "bucket", "access_key_file", "secret_key_file")
                     if not getattr(up, k)]
    missing = [p for p in ("{school}", "{device}") if p not in up.key_prefix]
    if missing:
        problems.append(f"{name}: upload.key_prefix: must contain {' and '.join(missing)} "
                        "(each terminal uploads under its own prefix)")
    if up.retry_max_s < up.retry_min_s:
        problems.append(f"{name}: upload.retry_max_s: must be at least upload.retry_min_s "
                        f"({up.retry_min_s:g}), got {up.retry_max_s:g}")
    if problems:
        raise ConfigError(problems)
    return cfg


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every key as (path, type, default): keeps docs and the example config honest in tests."""
    return typedconfig.describe_keys(cls, prefix)
