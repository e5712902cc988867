"""``/metrics`` by the book: checked by ``promtool`` and scraped by a real Prometheus server.

The agent runs as a process against a real Mosquitto and runs a short synthetic lesson, so the
media, lesson and broker families carry real values; Prometheus (Debian's ``prometheus``) is
started on a free port with a one-second scrape and asked for them back over its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.status import prometheus
from tests.support import AgentProcess, Broker, accepting, free_port, wait_until

SMALL_MEDIA = {"video": {"width": 320, "height": 180, "fps": 10},
               "encoder": {"preset": "ultrafast", "video_bitrate_kbps": 300}}


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


class Prometheus:
    """A Prometheus server of the test's own, scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = workdir / "prometheus.yml"
        conf.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: classroom-agent\n"
            "    scrape_interval: 1s\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={conf}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir)
        wait_until(lambda: accepting(self.port) or self.proc.poll() is not None, 30,
                   "Prometheus to listen")
        assert self.proc.poll() is None, self.log.read_text()

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        doc = json.loads(_get(url)[1])
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prom(tmp_path: Path) -> Iterator[list[Prometheus]]:
    started: list[Prometheus] = []
    yield started
    for p in started:
        p.stop()


def test_metrics_pass_promtool_and_reach_a_real_prometheus(
        broker: Broker, agent_factory, prom: list[Prometheus], tmp_path: Path) -> None:
    assert shutil.which("promtool") and shutil.which("prometheus"), \
        "Debian's prometheus package is missing: run scripts/deps.sh"
    agent: AgentProcess = agent_factory(media=SMALL_MEDIA).start()
    base = f"http://127.0.0.1:{agent.status_port}"
    wait_until(lambda: (s := agent.status()) and s["broker"]["connected"]
               and s["telemetry"]["last_sample"], 30, "a connected agent")
    server = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{agent.status_port}")
    prom.append(server)

    res = agent.cli("lesson", "start", "--config", str(agent.config_path), "--course", "数学",
                    "--duration", "60")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: (s := agent.status()) and (s.get("media") or {}).get("video", {})
               .get("encoded", 0) > 10, 40, "the lesson's media worker to encode frames")

    ctype, text = _get(f"{base}/metrics")
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    check = promtool_check(text)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    # Every family has HELP and TYPE; counters are counters and end in _total.
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 40
    for fam in families:
        assert fam.name.startswith("classroom_agent_"), fam.name
        shown = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"# HELP {shown} " in text and f"# TYPE {shown} {fam.type}\n" in text
    types = {f.name: f.type for f in families}
    for name in ("broker_reconnects", "outbox_dropped_records", "lessons_ended",
                 "media_frames_captured", "collector_errors", "commands_rejected"):
        assert types[f"classroom_agent_{name}"] == "counter", name
    samples = _samples(text)
    assert samples["classroom_agent_lesson_running"][0].value == 1
    assert samples["classroom_agent_media_frames_encoded_total"][0].value > 10
    assert samples["classroom_agent_media_encoder_output_bytes_per_second"]
    info = samples["classroom_agent_build_info"][0].labels
    assert info["device"] == "room-101" and info["school"] == "school-a"

    # Prometheus scraped it: the target is up and values come back.
    wait_until(lambda: server.value('up{job="classroom-agent"}') == 1, 30,
               "Prometheus to scrape the agent")
    assert server.value("classroom_agent_broker_connected") == 1
    wait_until(lambda: (server.value("classroom_agent_media_frames_encoded_total") or 0) > 10,
               20, "media frames in Prometheus")

    res = agent.cli("lesson", "stop", "--config", str(agent.config_path))
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: server.value("classroom_agent_lessons_ended_total") == 1, 30,
               "lessons_ended_total == 1 in Prometheus")
    assert server.value("classroom_agent_lesson_running") == 0
    seq = server.value("classroom_agent_outbox_last_sequence")
    assert seq is not None and seq > 0


def _snapshot(**over: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "agent": {"version": "0.1.0", "contract": "v1", "uptime_s": 12.5},
        "device": {"id": "room-101", "school": "school-a"},
        "broker": {"connected": False, "session": 3, "reconnects_total": 2,
                   "connect_failures_total": 5, "publish_failures_total": 0, "inflight": 0},
        "outbox": {"depth": 7, "bytes": 900, "oldest_age_s": 65.0, "dropped_total": 1,
                   "quarantined_total": 0, "last_seq": 42, "in_memory": False},
        "telemetry": {"failing_collectors": {"system": "OSError: x"},
                      "collector_errors_total": {"system": 3}},
        "metrics": {"cpu_percent": 12.0, "memory_percent": 40.0,
                    "disks": [{"mount": '/mnt/we"ird\\dir\nx', "percent": 91.0}]},
        "lessons": {"current": {"lesson_id": "x"}},
        "lesson_counts": {"ended": 4, "interruptions": 2},
        "media": {"video": {"captured": 100, "encoded": 99, "duplicated": 1, "dropped": 0},
                  "audio": {"chunks": 300, "rms_dbfs": -20.5, "peak_dbfs": -12.0},
                  "flags": {"black": False, "frozen": False, "silence": False},
                  "encoder": {"fps": 10.0, "speed": 1.01, "bitrate_kbps": 310.0},
                  "sinks": [{"name": 'live "main"\\\n', "state": "live", "bitrate_kbps": 300.0},
                            {"name": "x" * 500, "state": "down", "bitrate_kbps": 0.0}],
                  "recording": {"seconds": 10.0, "bytes": 400000}},
        "security": {"commands_rejected_total": 1},
        "ok": False,
        "warning_details": [{"code": "disk_full", "subsystem": "machine", "severity": "warning"},
                            {"code": "broker_unreachable", "subsystem": "broker",
                             "severity": "fault"}],
    }
    snap.update(over)
    return snap


def test_hostile_label_values_are_escaped_and_bounded() -> None:
    """Sink names and mount points come from the config and the machine: quotes, backslashes
    and newlines are escaped by the library, lengths clipped; promtool accepts the page and the
    values parse back."""
    reg: CollectorRegistry = prometheus.registry(lambda: _snapshot())
    text = prometheus.render_prometheus(reg).decode()
    check = promtool_check(text)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    samples = _samples(text)
    sinks = {s.labels["sink"]: s.value
             for s in samples["classroom_agent_media_sink_sent_bytes_per_second"]}
    assert sinks['live "main"\\?'] == 300000.0 / 8  # the newline is not printable: '?'
    assert "x" * prometheus.MAX_LABEL in sinks and "x" * (prometheus.MAX_LABEL + 1) not in sinks
    assert all("\n" not in line or line.startswith("#") for line in text.splitlines())
    assert samples["classroom_agent_disk_usage_ratio"][0].value == pytest.approx(0.91)
    assert samples["classroom_agent_lessons_ended_total"][0].value == 4
    assert samples["classroom_agent_collector_errors_total"][0].labels == {"collector": "system"}
    warn = {(s.labels["subsystem"], s.labels["severity"]): s.value
            for s in samples["classroom_agent_warnings"]}
    assert warn == {("machine", "warning"): 1, ("broker", "fault"): 1}


def test_idle_agent_page_keeps_every_family() -> None:
    """No lesson, no sample yet: the families are still there (HELP/TYPE), without samples."""
    snap = _snapshot(media=None, lessons={"current": None}, metrics={"cpu_percent": None,
                                                                      "memory_percent": None})
    text = prometheus.render_prometheus(prometheus.registry(lambda: snap)).decode()
    assert promtool_check(text).returncode == 0
    assert "# TYPE classroom_agent_media_frames_captured_total counter" in text
    assert "\nclassroom_agent_media_frames_captured_total " not in text
    samples = _samples(text)
    assert samples["classroom_agent_media_active"][0].value == 0
    assert "classroom_agent_cpu_usage_ratio" not in samples
