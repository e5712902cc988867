"""Which parts a reload rebuilds (agent/reloadplan.py), decided from two real configurations.

The daemon applies the plan as it is; tests/test_daemon.py proves a real reload end to end.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agent import config
from agent.reloadplan import plan_reload

BASE = config.loads("""
device: {id: room-101, school: school-a}
mqtt: {host: 127.0.0.1, port: 1883}
state_dir: /var/lib/classroom-agent
""")

PARTS = ("lessons", "commands", "uploader", "scheduler", "publisher")


def rebuilt(plan) -> set[str]:
    return {p for p in PARTS if getattr(plan, p)}


def test_the_same_configuration_rebuilds_nothing() -> None:
    plan = plan_reload(BASE, BASE)
    assert not plan.changed and plan.config == BASE


def test_an_edited_timetable_file_reloads_the_lessons_only() -> None:
    assert rebuilt(plan_reload(BASE, BASE, timetable_file_changed=True)) == {"lessons"}


@pytest.mark.parametrize(("change", "parts"), [
    ({"telemetry": {"interval_s": 30}}, {"scheduler"}),
    ({"telemetry": {"classes": {"usage": False}}}, {"scheduler"}),
    # a retained kind turned off: the publisher empties it on the broker
    ({"telemetry": {"classes": {"inventory": False}}}, {"scheduler", "publisher"}),
    ({"mqtt": {"host": "mqtt.example", "port": 1883}}, {"scheduler", "publisher"}),
    ({"commands": {"require_signature": True}}, {"commands"}),
    ({"lessons": {"manual_duration_s": 1800}}, {"lessons"}),
    ({"media": {"recording": {"dir": "/srv/recordings"}}}, {"lessons", "uploader"}),
    ({"outbox": {"max_records": 5000}}, set()),
    ({"log_level": "debug"}, set()),
])
def test_each_section_rebuilds_the_parts_that_read_it(change: dict, parts: set[str]) -> None:
    doc = {"device": {"id": "room-101", "school": "school-a"},
           "mqtt": {"host": "127.0.0.1", "port": 1883}, "state_dir": "/var/lib/classroom-agent"}
    doc.update(change)
    new = config.loads(_yaml(doc))
    assert new != BASE, change
    plan = plan_reload(BASE, new)
    assert rebuilt(plan) == parts, change
    assert plan.config == new and plan.needs_restart == ()


def test_identity_files_and_sockets_are_kept_until_a_restart() -> None:
    new = replace(BASE, state_dir="/srv/agent", device=replace(BASE.device, id="room-102"),
                  telemetry=replace(BASE.telemetry, interval_s=30))
    plan = plan_reload(BASE, new)
    assert plan.needs_restart == ("device", "state_dir")
    # the running values stay; the rest of the change is applied
    assert plan.config.device == BASE.device and plan.config.state_dir == BASE.state_dir
    assert plan.config.telemetry.interval_s == 30
    assert rebuilt(plan) == {"scheduler"}
    # the recordings folder derives from state_dir: kept too, so the uploader is left alone
    assert plan.config.recording_path == BASE.recording_path


def _yaml(doc: dict) -> str:
    return json.dumps(doc)  # JSON is YAML
