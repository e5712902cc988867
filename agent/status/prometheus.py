"""The status snapshot as Prometheus metrics (``GET /metrics``), through ``prometheus-client``.

The agent keeps its numbers in its parts (outbox, publisher, scheduler, media worker), not in
``prometheus_client`` objects, so the by-the-book way to expose them is a custom collector: at
each scrape :class:`SnapshotCollector` reads one board snapshot and yields metric families with
HELP and TYPE; counters are ``CounterMetricFamily`` (the library adds ``_total``), and the
library escapes label values. A registry of its own per server keeps the process's default
metrics (GC, ``process_*``) out, except when asked for.

Names: one prefix, ``classroom_agent_``; units in the name (``_seconds``, ``_bytes``, ``_total``,
``_ratio``, ``_dbfs``). Labels are bounded: subsystems, severities and warning codes come from
the catalogue; collector names are the agent's own; sink names come from the config and are
clipped to :data:`MAX_LABEL` characters, at most :data:`MAX_SINKS` of them. Nothing from the
network becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.status import warnings

PREFIX = "classroom_agent_"
#: The classic text format, which every Prometheus 2.x parses (Debian 12 ships 2.42); the
#: names here are plain ASCII, so the output is the same as the library's newer 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL = 64
MAX_SINKS = 16

Snapshot = Callable[[], dict[str, Any]]


def _label(text: Any) -> str:
    """A label value from the config: printable, clipped (the library escapes it)."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s[:MAX_LABEL]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


class _Families:
    """Builds families with the prefix; skips samples whose value is unknown (None)."""

    def __init__(self) -> None:
        self.out: list[Metric] = []

    def gauge(self, name: str, doc: str, value: Any = None,
              labels: Mapping[str, list[tuple[tuple[str, ...], Any]]] | None = None) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def counter(self, name: str, doc: str, value: Any = None,
                labels: Mapping[str, list[tuple[tuple[str, ...], Any]]] | None = None) -> None:
        self._add(CounterMetricFamily, name, doc, value, labels)

    def _add(self, cls: type, name: str, doc: str, value: Any,
             labels: Mapping[str, list[tuple[tuple[str, ...], Any]]] | None) -> None:
        if labels is None:
            # An unknown value (no lesson, no sample yet) is a family without samples: HELP and
            # TYPE stay, so the page's shape does not depend on the moment.
            self.out.append(cls(PREFIX + name, doc, value=_num(value)))
            return
        ((names, samples),) = labels.items()
        fam = cls(PREFIX + name, doc, labels=list(names.split(",")))
        for values, v in samples:
            if _num(v) is not None:
                fam.add_metric(list(values), _num(v))
        self.out.append(fam)


def families(s: dict[str, Any]) -> list[Metric]:
    """Every metric family of one snapshot."""
    f = _Families()
    a, d, b, ob = s["agent"], s["device"], s["broker"], s["outbox"]
    info = InfoMetricFamily(PREFIX + "build", "The agent's version, contract and identity.")
    info.add_metric([], {"version": _label(a["version"]), "contract": _label(a["contract"]),
                         "device": _label(d["id"]), "school": _label(d["school"])})
    f.out.append(info)
    f.gauge("uptime_seconds", "Seconds since the agent started (monotonic clock).",
            a["uptime_s"])
    f.gauge("ok", "1 when the agent has no warning, else 0.", int(bool(s.get("ok"))))
    details = s.get("warning_details") or []
    active = {(w["subsystem"], w["severity"]): 0 for w in details}
    for w in details:
        active[(w["subsystem"], w["severity"])] += 1
    f.gauge("warnings", "Warnings raised now, by subsystem and severity (fault or warning).",
            labels={"subsystem,severity": [(k, v) for k, v in sorted(active.items())]})
    codes = sorted({w["code"] for w in details if w.get("code") in warnings.CATALOGUE})
    f.gauge("warning_active", "1 for each warning code raised now (codes: "
            "agent/status/warnings.py).", labels={"code": [((c,), 1) for c in codes]})

    # -- broker link
    f.gauge("broker_connected", "1 while connected to the MQTT broker.", int(b["connected"]))
    f.gauge("broker_session", "Connection counter carried in the retained state message.",
            b.get("session"))
    f.counter("broker_reconnects", "Connections made to the broker after the first.",
              b["reconnects_total"])
    f.counter("broker_connect_failures", "Connection attempts that failed.",
              b["connect_failures_total"])
    f.counter("broker_publish_failures", "Publishes the client refused or that failed.",
              b["publish_failures_total"])
    f.gauge("broker_inflight_messages", "Messages sent and not yet acknowledged (PUBACK).",
            b.get("inflight"))

    # -- outbox
    f.gauge("outbox_records", "Records waiting in the outbox for the broker's acknowledgement.",
            ob["depth"])
    f.gauge("outbox_bytes", "Size of the records waiting in the outbox.", ob["bytes"])
    f.gauge("outbox_oldest_age_seconds", "Age of the oldest record waiting (0 when empty).",
            ob["oldest_age_s"] or 0)
    f.counter("outbox_dropped_records", "Records dropped at the outbox bounds (never sent).",
              ob["dropped_total"])
    f.counter("outbox_quarantined_files", "Corrupt outbox files moved aside.",
              ob["quarantined_total"])
    f.gauge("outbox_last_sequence", "Sequence number of the last record appended.",
            ob["last_seq"])
    f.gauge("outbox_in_memory", "1 when the outbox file is unusable and records are in memory "
            "only.", int(bool(ob["in_memory"])))

    # -- collectors
    tel = s["telemetry"]
    errors = tel.get("collector_errors_total") or {}
    f.counter("collector_errors", "Times a telemetry collector raised an error, by collector.",
              labels={"collector": [((_label(k),), v) for k, v in sorted(errors.items())]})
    failing = tel.get("failing_collectors") or {}
    f.gauge("collector_failing", "1 while a collector's last run failed, by collector.",
            labels={"collector": [((_label(k),), 1) for k in sorted(failing)]})

    # -- machine (the few the warnings use; node_exporter is the place for the rest)
    km = s["metrics"]
    f.gauge("cpu_usage_ratio", "CPU busy share of the last telemetry interval (0-1).",
            None if km.get("cpu_percent") is None else km["cpu_percent"] / 100)
    f.gauge("memory_usage_ratio", "Memory in use (0-1).",
            None if km.get("memory_percent") is None else km["memory_percent"] / 100)
    f.gauge("disk_usage_ratio", "Share of each mounted disk in use (0-1), by mount point.",
            labels={"mount": [((_label(x["mount"]),), None if x["percent"] is None
                               else x["percent"] / 100) for x in km.get("disks", [])[:MAX_SINKS]]})

    _lessons(f, s.get("lessons") or {}, s.get("lesson_counts") or {})
    _media(f, s.get("media") or {})
    _upload(f, s.get("upload") or {})
    sec = s.get("security") or {}
    f.counter("commands_rejected", "MQTT commands refused (bad signature, replay, unknown...).",
              sec.get("commands_rejected_total"))
    return f.out


def _lessons(f: _Families, ls: dict[str, Any], counts: dict[str, Any]) -> None:
    f.gauge("lesson_running", "1 while a lesson runs.", int(bool(ls.get("current"))))
    f.counter("lessons_ended", "Lessons that ended since the agent started (their evidence "
              "was recorded).", counts.get("ended", 0))
    f.counter("lesson_interruptions", "Interruptions in the lessons that ended (media restarts, "
              "recording stopped, ...).", counts.get("interruptions", 0))


def _media(f: _Families, m: dict[str, Any]) -> None:
    """The running lesson's media worker (absent outside lessons: no samples then)."""
    v, au, enc = m.get("video") or {}, m.get("audio") or {}, m.get("encoder") or {}
    fl, rec = m.get("flags") or {}, m.get("recording") or {}
    f.gauge("media_active", "1 while a lesson's media worker reports.", int(bool(m)))
    for key, doc in (("captured", "Frames read from the camera"),
                     ("encoded", "Frames given to the encoder"),
                     ("duplicated", "Frames repeated to keep the frame rate"),
                     ("dropped", "Frames dropped because the encoder lagged")):
        f.counter(f"media_frames_{key}", f"{doc}, in this lesson's worker.", v.get(key))
    f.counter("media_audio_chunks", "Audio chunks read from the microphone, in this lesson's "
              "worker.", au.get("chunks"))
    f.gauge("media_audio_rms_dbfs", "Microphone level over the last stats window (dBFS).",
            au.get("rms_dbfs"))
    f.gauge("media_audio_peak_dbfs", "Microphone peak over the last stats window (dBFS).",
            au.get("peak_dbfs"))
    for key, doc in (("black", "1 while the picture is black"),
                     ("frozen", "1 while the picture is frozen"),
                     ("silence", "1 while the microphone is silent")):
        if key in fl:
            f.gauge(f"media_{key}", f"{doc}.", int(bool(fl[key])))
    f.gauge("media_encoder_frames_per_second", "Frames the encoder produces per second.",
            enc.get("fps"))
    f.gauge("media_encoder_speed_ratio", "Encoder speed against real time (1 = keeps up).",
            enc.get("speed"))
    f.gauge("media_encoder_output_bytes_per_second", "Encoder output rate (bit rate / 8).",
            _bytes_per_s(enc.get("bitrate_kbps")))
    sinks = [x for x in m.get("sinks") or [] if isinstance(x, dict)][:MAX_SINKS]
    f.gauge("media_sink_sent_bytes_per_second", "Rate sent to each live sink (bit rate / 8).",
            labels={"sink": [((_label(x.get("name")),), _bytes_per_s(x.get("bitrate_kbps")))
                             for x in sinks]})
    f.gauge("media_sink_up", "1 while a live sink is streaming, by sink.",
            labels={"sink": [((_label(x.get("name")),), int(x.get("state") == "live"))
                             for x in sinks]})
    f.gauge("media_recording_seconds", "Seconds recorded by this lesson's worker.",
            rec.get("seconds"))
    f.gauge("media_recording_bytes", "Bytes recorded by this lesson's worker.", rec.get("bytes"))


def _upload(f: _Families, u: dict[str, Any]) -> None:
    """The upload of recordings to object storage (no samples while upload is off)."""
    on = bool(u.get("enabled")) and "queued_lessons" in u
    f.gauge("upload_queued_lessons", "Lessons whose recording waits for upload.",
            u.get("queued_lessons") if on else None)
    f.gauge("upload_queued_bytes", "Bytes of recordings still to upload.",
            u.get("queued_bytes") if on else None)
    f.gauge("upload_uploaded_lessons", "Lessons uploaded and verified (the queue's history).",
            u.get("uploaded_lessons") if on else None)
    f.gauge("upload_failed_lessons", "Lessons set aside: retrying cannot help (upload_retry).",
            u.get("failed_lessons") if on else None)
    f.gauge("upload_lost_lessons", "Recordings deleted on the terminal before upload.",
            u.get("lost_lessons") if on else None)
    f.counter("upload_sent_bytes", "Bytes sent to the object store since the agent started.",
              u.get("bytes_sent_total") if on else None)
    f.counter("upload_failures", "Upload attempts that failed since the agent started.",
              u.get("failures_total") if on else None)
    f.gauge("upload_paused", "1 while uploading waits (a lesson runs, outside upload.hours).",
            int(u.get("state") == "paused") if on else None)


def _bytes_per_s(kbps: Any) -> float | None:
    """Prometheus' base unit is bytes (promtool refuses ``bits``): kbit/s -> bytes/s."""
    v = _num(kbps)
    return None if v is None else v * 1000 / 8


class SnapshotCollector(Collector):
    """A ``prometheus_client`` collector over the board: one snapshot per scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def registry(snapshot: Snapshot) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))
    return reg


def render_prometheus(reg: CollectorRegistry) -> bytes:
    """The text exposition format (``text/plain; version=0.0.4``)."""
    return generate_latest(reg)
