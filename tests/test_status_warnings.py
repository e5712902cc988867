"""The warnings catalogue (agent/status/warnings.py): one source for every warning's words."""

from __future__ import annotations

import string
import time

import pytest

from agent.records import rfc3339
from agent.status import warnings
from agent.status.text import warning_lines
from agent.status.warnings import CATALOGUE, Warning, as_json, from_json, render

#: Plausible parameters for every code (a new code without an entry here fails the test below).
PARAMS = {
    "broker_unreachable": {"address": "mqtt.example:8883", "error": "connection refused"},
    "broker_no_subscriber": {"address": "mqtt.example:8883", "depth": 40,
                             "since": "2026-11-30T04:00:00Z"},
    "outbox_backlog": {"depth": 12, "oldest_age_s": 3725.0},
    "outbox_dropped": {"dropped_total": 3},
    "outbox_in_memory": {"state_dir": "/var/lib/classroom-agent"},
    "outbox_quarantined": {"state_dir": "/var/lib/classroom-agent"},
    "secret_file_exposed": {"what": "MQTT password", "path": "/etc/x/pw", "mode": "0644"},
    "command_key_unusable": {"problem": "/etc/x/key.pem is not a PEM public key"},
    "commands_unsigned": {},
    "control_socket_unavailable": {"path": "/run/classroom-agent/control.sock",
                                   "error": "Permission denied"},
    "collector_failing": {"name": "sensors", "error": "OSError: boom"},
    "disk_full": {"mount": "/", "percent": 93.4},
    "memory_high": {"percent": 96.0},
    "temperature_high": {"celsius": 91.2},
    # doctor's (agent/doctor/)
    "config_invalid": {"path": "/etc/x/agent.yaml", "problems": "/etc/x/agent.yaml:3: mqtt.prot: "
                       "unknown key"},
    "state_dir_unwritable": {"path": "/var/lib/x", "error": "Permission denied"},
    "disk_space_exhausted": {"path": "/var/lib/x", "free_mb": 12.5},
    "disk_space_low": {"path": "/var/lib/x", "free_mb": 900.0, "reserve_mb": 2048.0},
    "broker_name_unresolved": {"host": "mqtt.example", "error": "Name or service not known"},
    "broker_port_closed": {"address": "mqtt.example:8883", "port": 8883,
                           "error": "connection refused"},
    "broker_tls_failed": {"address": "mqtt.example:8883", "error": "certificate rejected"},
    "broker_cert_expiring": {"days": 3.2, "not_after": "2026-12-03"},
    "broker_auth_failed": {"username": "room-101", "reason": "Bad user name or password"},
    "broker_no_answer": {"address": "mqtt.example:8883", "port": 8883, "error": "no CONNACK"},
    "clock_off": {"offset_s": 4.2, "server": "ntp.example"},
    "clock_wrong": {"offset_s": -300.0, "server": "ntp.example"},
    "clock_unchecked": {"server": "ntp.example", "error": "timed out"},
    "camera_unavailable": {"source": "/dev/video0", "error": "cannot open"},
    "camera_black": {"source": "/dev/video0", "luma": 3.0},
    "camera_frozen": {"source": "/dev/video0"},
    "microphone_unavailable": {"source": "default", "error": "no device"},
    "microphone_dead": {"source": "default", "peak_dbfs": -120.0},
    "microphone_silent": {"source": "default", "peak_dbfs": -72.0},
    "ffmpeg_missing": {"error": "ffmpeg is not on PATH"},
    "ffmpeg_incomplete": {"missing": "libx264"},
    "live_unreachable": {"name": "main", "url": "rtmp://live.example/...", "error": "refused"},
    "service_inactive": {"state": "failed (failed)"},
    "service_no_watchdog": {"watchdog": "0"},
    "agent_not_running": {"address": "127.0.0.1:8765"},
    "check_timed_out": {"limit_s": 5.0},
    "check_crashed": {"error": "RuntimeError: x"},
    "upload_failing": {"error": "cannot reach https://s3.example:9000: timeout",
                       "next_step": "check the network and that the store runs"},
    "upload_failed_lessons": {"count": 2},
    "upload_late": {"count": 5, "since": "2026-11-20T08:00:00.000Z"},
}


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_code_renders_a_cause_and_uses_only_its_params(code: str) -> None:
    assert code in PARAMS, f"add sample params for {code} to PARAMS"
    t = CATALOGUE[code]
    fields = {f for text in (t.cause, t.next_step)
              for _lit, f, _spec, _conv in string.Formatter().parse(text) if f}
    assert fields == set(PARAMS[code]) or fields <= set(PARAMS[code]), (code, fields)
    text = render(Warning(code, PARAMS[code]))
    assert "?" not in text.replace("?)", ""), text  # every field was filled
    assert text.endswith("."), text
    if t.next_step:
        assert " Next step: " in text
    assert t.subsystem and t.severity in ("warning", "fault")


def test_the_format_specs_and_a_missing_param() -> None:
    assert render(Warning("outbox_backlog", {"depth": 5, "oldest_age_s": 3725})).startswith(
        "5 records waiting to be sent, the oldest for 1h 2m.")
    assert "Disk / is 93% full." in render(Warning("disk_full", {"mount": "/", "percent": 93.4}))
    # A missing or wrong-typed parameter never stops a warning from rendering.
    assert render(Warning("disk_full", {"percent": "lots"})).startswith("Disk ? is ? full.")


def test_a_translation_goes_through_the_templates() -> None:
    zh = {CATALOGUE["disk_full"].cause: "磁盘 {mount} 已用 {percent:percent}。",
          CATALOGUE["disk_full"].next_step: "清理空间。",
          warnings.NEXT_STEP: "{cause}下一步：{next_step}"}
    text = render(Warning("disk_full", {"mount": "/", "percent": 91}), lambda s: zh.get(s, s))
    assert text == "磁盘 / 已用 91%。下一步：清理空间。"


def test_json_round_trip_and_unknown_codes() -> None:
    w = Warning("broker_unreachable", PARAMS["broker_unreachable"])
    doc = as_json(w)
    assert doc["code"] == "broker_unreachable" and doc["subsystem"] == "broker"
    assert doc["severity"] == "fault" and doc["text"] == render(w)
    assert from_json(doc) == w
    assert from_json({"code": "from_a_newer_agent", "text": "x"}) is None
    with pytest.raises(ValueError, match="unknown warning code"):
        Warning("no_such_code")
    # The CLI prints what it knows from the code and falls back to the daemon's text.
    snap = {"warning_details": [doc, {"code": "from_a_newer_agent", "text": "New words."}]}
    assert warning_lines(snap) == [render(w), "New words."]
    assert warning_lines({"warnings": ["Old words."]}) == ["Old words."]


def test_collect_turns_a_snapshot_into_catalogue_warnings() -> None:
    snap = {
        "agent": {"uptime_s": 100.0},
        "broker": {"connected": False, "connect_failures_total": 2, "address": "b:1883",
                   "last_error": "connection refused"},
        "outbox": {"depth": 4, "oldest_age_s": 600.0, "dropped_total": 0, "in_memory": False,
                   "quarantined_total": 0},
        "security": {"exposed_files": [PARAMS["secret_file_exposed"]], "key_problems": []},
        "telemetry": {"failing_collectors": {"sensors": "OSError: boom"}},
        "metrics": {"disks": [{"mount": "/", "percent": 95.0}], "memory_percent": 10.0,
                    "max_temperature_c": None},
    }
    found = warnings.collect(snap, warnings.Context(interval_s=60, state_dir="/s"))
    assert [w.code for w in found] == ["broker_unreachable", "outbox_backlog",
                                       "secret_file_exposed", "collector_failing", "disk_full"]

    # Connected, but the broker has nobody to give our records to: that, not a backlog "until
    # the broker is reachable", is what the technician must read.
    snap["broker"] = {"connected": True, "connect_failures_total": 0, "address": "b:1883",
                      "last_error": None, "no_subscriber_since": "2026-11-30T04:00:00Z"}
    # ... for longer than the grace (3 intervals, at least 30 s): a restarting collector is not
    # worth a warning.
    now = time.time()
    snap["broker"]["no_subscriber_since"] = rfc3339(now - 20)
    found = warnings.collect(snap, warnings.Context(interval_s=5, state_dir="/s"))
    assert "broker_no_subscriber" not in [w.code for w in found]
    snap["broker"]["no_subscriber_since"] = rfc3339(now - 40)
    found = warnings.collect(snap, warnings.Context(interval_s=5, state_dir="/s"))
    assert [w.code for w in found][:2] == ["broker_no_subscriber", "secret_file_exposed"]
    assert "4 records are kept" in render(found[0])
