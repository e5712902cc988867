"""Configuration: YAML into typed, frozen dataclasses.

Every key is declared once, here, as a dataclass field: its type, its default and its bounds.
The loader walks the YAML node tree (not the parsed dict) so that every error names the key path
and the line it stands on, like Telegraf's fail-fast check. Unknown keys are errors (a typo must
never silently fall back to a default). Secrets are never in this file: only paths to them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.yamlsource import compose

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


def _meta(
    *, min: float | None = None, max: float | None = None, pattern: str | None = None,
    file: bool = False, doc: str = "",
) -> dict[str, Any]:
    return {"min": min, "max": max, "pattern": pattern, "file": file, "doc": doc}


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
    reconnect_min_s: float = _opt(1.0, min=0.05, max=3600)
    reconnect_max_s: float = _opt(120.0, min=0.1, max=86400)
    flush_on_exit_s: float = _opt(5.0, min=0, max=60)


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
    probes: list[str] = _opt_factory(list, pattern=_HOSTPORT, doc=_HOSTPORT_RULE)
    probe_interval_s: float = _opt(60.0, min=0.05, max=86400)
    apps: dict[str, list[str]] = _opt_factory(lambda: {k: [*v] for k, v in DEFAULT_APPS.items()})
    classes: TelemetryClasses = _opt_factory(TelemetryClasses)


_SINK_URL = r"^(rtmps?|srt)://[^\s]+$"
_SINK_RULE = "an rtmp://, rtmps:// or srt:// URL without spaces"


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


@dataclass(frozen=True)
class LiveSinkConfig:
    url: str = field(metadata=_meta(pattern=_SINK_URL, doc=_SINK_RULE))
    name: str = _opt("")


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


@dataclass(frozen=True)
class StatusConfig:
    listen: str = _opt("127.0.0.1:8765", pattern=_HOSTPORT, doc=_HOSTPORT_RULE)

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


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` lists each with its key path and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return loads(text, name=str(path))


def loads(text: str, name: str = "<config>") -> Config:
    root = compose(text, name, "a config file", ConfigError)
    loader = _Loader(name)
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    cfg = loader.build(Config, root, "")
    if loader.problems:
        raise ConfigError(loader.problems)
    return cfg


class _Loader:
    """Walks YAML nodes against dataclass fields, collecting every problem it meets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def _err(self, node: yaml.Node | None, key: str, msg: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        self.problems.append(f"{self.name}{line}: {key or '(top level)'}: {msg}")

    def build(self, cls: type, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self._err(node, path, f"expected a mapping of keys, got {_describe(node)}")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            kpath = f"{path}.{key}" if path else str(key)
            if key not in fields:
                hint = difflib.get_close_matches(str(key), fields, n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                known = ", ".join(sorted(fields))
                self._err(knode, kpath, f"unknown key{extra}; known keys here: {known}")
            elif key in given:
                self._err(knode, kpath, "duplicate key")
            else:
                given[key] = (knode, vnode)
        values: dict[str, Any] = {}
        for fname, f in fields.items():
            fpath = f"{path}.{fname}" if path else fname
            if fname not in given:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self._err(node if node.value else None, fpath, "required key is missing")
                continue
            value = self._value(hints[fname], given[fname][1], fpath, f.metadata)
            if value is not _INVALID:
                values[fname] = value
        try:
            return cls(**values)
        except TypeError:  # a required value was missing or invalid: already reported
            return None

    def _value(self, tp: Any, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            built = self.build(tp, node, path)  # type: ignore[arg-type]
            return _INVALID if built is None else built
        if origin in (types.UnionType, typing.Union):
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self._value(inner, node, path, meta)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self._err(node, path, f"expected a list, got {_describe(node)}")
                return _INVALID
            items = [
                self._value(args[0], n, f"{path}[{i}]", meta) for i, n in enumerate(node.value)
            ]
            return _INVALID if _INVALID in items else items
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self._err(node, path, f"expected a mapping, got {_describe(node)}")
                return _INVALID
            out = {}
            for knode, vnode in node.value:
                key = self._value(args[0], knode, path, {})
                val = self._value(args[1], vnode, f"{path}.{key}", {})
                if key is _INVALID or val is _INVALID:
                    return _INVALID
                out[key] = val
            return out
        if not isinstance(node, yaml.ScalarNode):
            self._err(node, path, f"expected {_type_name(tp)}, got {_describe(node)}")
            return _INVALID
        try:
            raw = self._scalars.construct_object(node)
        except Exception as exc:  # a bad explicit tag: !!int abc, !!timestamp x, !python/...
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self._err(node, path, f"cannot read {node.value!r} as {node.tag}: {problem}")
            return _INVALID
        value = self._coerce(tp, raw, node, path)
        if value is not _INVALID:
            self._check(value, node, path, meta)
        return value

    def _coerce(self, tp: Any, raw: Any, node: yaml.Node, path: str) -> Any:
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if str(raw) in choices and raw is not None:
                return str(raw)
            listed = ", ".join(repr(c) for c in choices)
            self._err(node, path, f"must be one of {listed}, got {raw!r}")
            return _INVALID
        ok = (
            (tp is bool and isinstance(raw, bool))
            or (tp is int and isinstance(raw, int) and not isinstance(raw, bool))
            or (tp is float and isinstance(raw, int | float) and not isinstance(raw, bool))
            or (tp is str and isinstance(raw, str | int | float) and not isinstance(raw, bool))
        )
        if not ok:
            self._err(node, path, f"expected {_type_name(tp)}, got {raw!r}")
            return _INVALID
        return tp(raw)

    def _check(self, value: Any, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> None:
        lo, hi, pattern = meta.get("min"), meta.get("max"), meta.get("pattern")
        if isinstance(value, float) and math.isnan(value):
            self._err(node, path, "must be a number, got .nan")
            return
        if lo is not None and value < lo:
            self._err(node, path, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            self._err(node, path, f"must be at most {hi}, got {value}")
        if pattern and isinstance(value, str) and not re.match(pattern, value):
            rule = meta.get("doc") or f"must match {pattern}"
            self._err(node, path, f"invalid value {value!r}: {rule}")
        elif pattern == _HOSTPORT and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            self._err(node, path, f"invalid value {value!r}: the port must be 1-65535")
        if meta.get("file") and isinstance(value, str):
            self._check_file(value, node, path)

    def _check_file(self, value: str, node: yaml.Node, path: str) -> None:
        p = Path(value)
        try:  # a name too long for the file system, a NUL byte, ... are the file's problems
            is_file = p.is_file()
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self._err(node, path, f"file {_clip(value)!r} cannot be used: {why}")
            return
        if not is_file:
            self._err(node, path, f"file {value} does not exist or is not a regular file")
        elif not os.access(p, os.R_OK):
            self._err(node, path, f"file {value} is not readable by this user")


_INVALID = object()


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def read_secret(path: str | None, env: str) -> str | None:
    """A secret from its file (trailing newline stripped) or, failing that, the environment."""
    if path:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    return os.environ.get(env) or None


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every key as (path, type, default): keeps docs and the example config honest in tests."""
    out: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(describe_keys(tp, path + "."))  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((path, str(tp), default))
    return out
