"""The collector's configuration: YAML into typed, frozen dataclasses.

Built on the agent's loader (agent/typedconfig.py), so errors read the same: the key path and
the line, unknown keys with a "did you mean". Where the two programs meet (``mqtt.host``,
``mqtt.port``, ``mqtt.username``, ``mqtt.password_file``, ``mqtt.tls.*``) the keys are the
agent's. A file with only ``database.url`` and ``mqtt.host``/``mqtt.port`` is a working config.
Secrets are never in the file: only paths to files holding them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config import TlsConfig
from agent.typedconfig import (
    ConfigError,
    describe_keys,
    load_file,
    load_text,
    meta,
    opt,
    opt_factory,
)

__all__ = ["CollectorConfig", "ConfigError", "describe_keys", "load", "loads"]

DEFAULT_PATH = Path("/etc/classroom-collector/collector.yaml")
#: The broker password when no ``mqtt.password_file`` is set.
MQTT_PASSWORD_ENV = "CLASSROOM_COLLECTOR_MQTT_PASSWORD"

_TOPIC_PREFIX = r"^[^#+/\s.][^#+\s.]*[^#+/\s.]$|^[^#+/\s.]$"
_PREFIX_RULE = "topic levels without '+', '#', '.', spaces or a leading/trailing '/'"
_GROUP = r"^$|^[A-Za-z0-9_-]{1,64}$"
_GROUP_RULE = "1-64 letters, digits, '_' or '-', or empty for a plain (unshared) subscription"
_CLIENT_ID = r"^$|^[A-Za-z0-9_.:-]{1,128}$"
_CLIENT_ID_RULE = "1-128 letters, digits, '_', '-', '.' or ':', or empty for the default"


def _libpq_url(value: Any) -> str | None:
    text = str(value)
    if not text.startswith(("postgresql://", "postgres://")):
        return "a libpq URL such as postgresql://collector@db.example.edu.cn/classroom"
    try:
        parts = urlsplit(text)
        has_password = parts.password is not None or "password=" in parts.query
    except ValueError as exc:
        return f"not a URL: {exc}"
    if has_password:
        return ("the URL holds a password; put it in database.password_file (or a PGPASSFILE) "
                "so that it is never in the config file, a command line or a log")
    return None


@dataclass(frozen=True)
class MqttConfig:
    host: str = opt("localhost")
    port: int = opt(1883, min=1, max=65535)
    username: str | None = opt(None)
    password_file: str | None = opt(None, file=True)
    tls: TlsConfig = opt_factory(TlsConfig)
    protocol: Literal["5", "3.1.1"] = opt(
        "5", doc="5 for shared subscriptions; 3.1.1 for brokers that speak only that")
    client_id: str = opt("", pattern=_CLIENT_ID, doc=_CLIENT_ID_RULE)
    keepalive_s: int = opt(30, min=5, max=3600)
    session_expiry_s: int = opt(86400, min=0, max=4294967295)
    receive_maximum: int = opt(1000, min=1, max=65535)
    reconnect_min_s: float = opt(1.0, min=0.05, max=3600)
    reconnect_max_s: float = opt(60.0, min=0.1, max=86400)

    def effective_client_id(self) -> str:
        """``client_id``, or ``classroom-collector-{hostname}``: stable per instance, so that the
        broker keeps its persistent session (and what it owes it) across restarts."""
        return self.client_id or f"classroom-collector-{socket.gethostname()}"[:128]


@dataclass(frozen=True)
class SubscriptionConfig:
    group: str = opt("collectors", pattern=_GROUP, doc=_GROUP_RULE)
    topic_prefix: str = opt("classroom/v1", pattern=_TOPIC_PREFIX, doc=_PREFIX_RULE)

    @property
    def topic(self) -> str:
        base = f"{self.topic_prefix}/#"
        return f"$share/{self.group}/{base}" if self.group else base


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = field(metadata=meta(check=_libpq_url, redact=True))
    password_file: str | None = opt(None, file=True)
    connect_timeout_s: float = opt(10.0, min=1, max=600)


@dataclass(frozen=True)
class IngestConfig:
    batch_max: int = opt(2000, min=1, max=100000)
    batch_max_bytes: int = opt(4 * 1024 * 1024, min=1024, max=1024 * 1024 * 1024)
    linger_ms: float = opt(2.0, min=0, max=10000)
    max_payload_bytes: int = opt(1024 * 1024, min=1024)


@dataclass(frozen=True)
class QuarantineConfig:
    max_payload_bytes: int = opt(64 * 1024, min=0)
    retention_days: float = opt(90.0, min=1)


@dataclass(frozen=True)
class GapsConfig:
    lost_after_s: float = opt(7 * 86400.0, min=1)
    sweep_interval_s: float = opt(1.0, min=0.05, max=3600)


@dataclass(frozen=True)
class MetricsConfig:
    retention_months: int = opt(13, min=1, max=1200)
    months_ahead: int = opt(2, min=1, max=24)


@dataclass(frozen=True)
class StatusConfig:
    interval_s: float = opt(30.0, min=0.1, max=86400)


def _zone(value: Any) -> str | None:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        return "an IANA time zone such as Asia/Shanghai"
    return None


def _clock(value: Any) -> str | None:
    text = str(value)
    if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit() or \
            int(text[:2]) > 23 or int(text[3:]) > 59:
        return "a time of day HH:MM, e.g. 08:00"
    return None


def _date(value: Any) -> str | None:
    try:
        date.fromisoformat(str(value))
    except ValueError:
        return "a date YYYY-MM-DD"
    return None


def _dates(value: Any) -> str | None:
    first, _, last = str(value).partition("..")
    problem = _date(first) or (_date(last) if last else None)
    if problem or (last and date.fromisoformat(last) < date.fromisoformat(first)):
        return "a date YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD (first <= last)"
    return None


@dataclass(frozen=True)
class SchoolDayConfig:
    start: str = opt("08:00", check=_clock)
    end: str = opt("17:00", check=_clock)

    def times(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)


@dataclass(frozen=True)
class CalendarConfig:
    weekdays: list[int] = opt_factory(lambda: [1, 2, 3, 4, 5], min=1, max=7)
    holidays: list[str] = opt_factory(list, check=_dates)
    make_up_days: list[str] = opt_factory(list, check=_dates)


@dataclass(frozen=True)
class SchoolReportConfig:
    timezone: str | None = opt(None, check=_zone)
    school_day: SchoolDayConfig | None = opt(None)


@dataclass(frozen=True)
class TermConfig:
    name: str
    start: str = field(metadata=meta(check=_date))
    end: str = field(metadata=meta(check=_date))
    minimum_hours: dict[str, float] = opt_factory(dict)


@dataclass(frozen=True)
class ReportsConfig:
    timezone: str = opt("Asia/Shanghai", check=_zone)
    school_day: SchoolDayConfig = opt_factory(SchoolDayConfig)
    calendar: CalendarConfig = opt_factory(CalendarConfig)
    schools: dict[str, SchoolReportConfig] = opt_factory(dict)
    online_hold_s: float = opt(180.0, min=1, max=86400)
    weight: float = opt(1.5, min=0, max=100)
    terms: list[TermConfig] = opt_factory(list)


@dataclass(frozen=True)
class CollectorConfig:
    database: DatabaseConfig
    mqtt: MqttConfig = opt_factory(MqttConfig)
    subscription: SubscriptionConfig = opt_factory(SubscriptionConfig)
    ingest: IngestConfig = opt_factory(IngestConfig)
    quarantine: QuarantineConfig = opt_factory(QuarantineConfig)
    gaps: GapsConfig = opt_factory(GapsConfig)
    metrics: MetricsConfig = opt_factory(MetricsConfig)
    status: StatusConfig = opt_factory(StatusConfig)
    reports: ReportsConfig = opt_factory(ReportsConfig)
    log_level: Literal["debug", "info", "warning", "error"] = opt("info")


def load(path: str | os.PathLike[str]) -> CollectorConfig:
    """Read and validate ``path``; raise :class:`ConfigError` naming every problem found."""
    return load_file(CollectorConfig, path)


def loads(text: str, name: str = "<config>") -> CollectorConfig:
    return load_text(CollectorConfig, text, name)


def all_keys() -> list[tuple[str, str, Any]]:
    """Every key as (path, type, default), for the example config's test."""
    return describe_keys(CollectorConfig)
