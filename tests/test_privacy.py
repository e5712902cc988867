"""Privacy: each class of telemetry can be turned off, and then none of it reaches the wire;
nothing the agent sends carries command lines, window titles or document names.

Against the real agent process and a real Mosquitto: every assertion is on the MQTT messages a
subscriber received (docs/privacy.md is the human side of the same table).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import TelemetryClasses
from agent.telemetry.classes import ALWAYS_ON_COLLECTORS, CLASSES, collector_allowed
from agent.telemetry.system import system_collectors
from tests.support import (
    REPO,
    SCHEMAS,
    AgentProcess,
    Broker,
    CountingListener,
    Message,
    Subscriber,
    assert_no_loss,
    retained,
    schema_errors,
)

PREFIX = "classroom/v1/school-a/room-101"
#: Every cadence short, so "several intervals" of each kind pass in a few seconds.
FAST = {"interval_s": 0.5, "usage_interval_s": 1.0, "usage_sample_s": 0.5,
        "inventory_check_s": 1.0, "probe_interval_s": 0.5}
ALL_OFF = {name: False for name in CLASSES}
ALL_ON = {name: True for name in CLASSES}


@pytest.fixture
def probe() -> Iterator[CountingListener]:
    p = CountingListener()
    yield p
    p.close()


def _kind(m: Message) -> str:
    return m.topic.rsplit("/", 1)[-1]


def _footprint(msgs: list[Message]) -> dict[str, bool]:
    """Per class: did anything of it appear in ``msgs``? (An empty payload is the agent clearing
    a retained topic, not data.)"""
    msgs = [m for m in msgs if m.raw]
    sections = {k for m in msgs if _kind(m) == "metrics" for k in m.payload["data"]}
    kinds = {_kind(m) for m in msgs}
    events = {m.payload["data"]["type"] for m in msgs if _kind(m) == "event"}
    inventory_keys = {k for m in msgs if _kind(m) == "inventory" for k in m.payload["data"]}
    seen = {name: bool(set(c.sections) & sections or set(c.kinds) & kinds
                       or set(c.events) & events) for name, c in CLASSES.items()}
    seen["peripherals"] |= "peripherals" in inventory_keys
    return seen


def _expected_sections(on: dict[str, bool]) -> set[str]:
    return {"agent"} | {s for name, c in CLASSES.items() if on[name] for s in c.sections}


def _enough(msgs: list[Message], on: dict[str, bool], metrics: int = 6) -> bool:
    """Several intervals of every kind that is on have passed."""
    count = {k: sum(_kind(m) == k for m in msgs) for k in ("metrics", "usage", "inventory")}
    return (count["metrics"] >= metrics and (count["usage"] >= 3 or not on["usage"])
            and (count["inventory"] >= 1 or not on["inventory"]))


# -- the table agrees with the schemas, the collectors, the config and the docs ---------------


def test_every_metrics_section_and_collector_has_exactly_one_class() -> None:
    doc = json.loads((SCHEMAS / "metrics-data.json").read_text())
    owners = {s: [n for n, c in CLASSES.items() if s in c.sections] for s in doc["properties"]}
    owners["agent"] = owners["agent"] + ["(always on)"]
    assert {s: o for s, o in owners.items() if len(o) != 1} == {}
    assert [f.name for f in dataclasses.fields(TelemetryClasses)] == list(CLASSES)
    names = [c.name for c in system_collectors()] + ["peripherals", "netquality", "media",
                                                     *ALWAYS_ON_COLLECTORS]
    all_off = TelemetryClasses(**ALL_OFF)
    assert [n for n in names if collector_allowed(all_off, n)] == list(ALWAYS_ON_COLLECTORS)
    with pytest.raises(ValueError, match="belongs to no telemetry class"):
        collector_allowed(all_off, "keylogger")
    events = json.loads((SCHEMAS / "event.json").read_text())
    types = events["properties"]["data"]["properties"]["type"]["enum"]
    assert {e for c in CLASSES.values() for e in c.events} <= set(types)


def test_privacy_doc_names_every_class_section_and_field_group() -> None:
    doc = (REPO / "docs" / "privacy.md").read_text(encoding="utf-8")
    for name, c in CLASSES.items():
        assert f"`telemetry.classes.{name}`" in doc, name
        for s in (*c.sections, *c.kinds, *c.events):
            assert f"`{s}`" in doc, (name, s)
    usage = json.loads((SCHEMAS / "usage-data.json").read_text())["properties"]
    inventory = json.loads((SCHEMAS / "inventory-data.json").read_text())["properties"]
    for field in (*usage, *inventory):
        assert f"`{field}`" in doc, field


# -- on the wire --------------------------------------------------------------------------------


@pytest.mark.parametrize("off", list(CLASSES))
def test_a_class_turned_off_never_reaches_the_wire(off: str, broker: Broker,
                                                   subscriber: Subscriber, agent_factory,
                                                   probe: CountingListener) -> None:
    on = {**ALL_ON, off: False}
    agent: AgentProcess = agent_factory(telemetry={
        **FAST, "probes": [f"127.0.0.1:{probe.port}"], "classes": {off: False}})
    agent.start()
    assert agent.status()["telemetry"]["classes_off"] == [off]
    subscriber.wait_for(lambda ms: _enough(ms, on), 40, f"several intervals with {off} off")
    assert agent.stop() == 0
    msgs = subscriber.snapshot()

    seen = _footprint(msgs)
    assert not seen[off], f"{off} is off but appeared on the wire"
    assert all(seen[c] for c in CLASSES if c != off), seen
    expected = _expected_sections(on)
    metrics = [m.payload["data"] for m in subscriber.snapshot("metrics")]
    assert all(set(d) <= expected for d in metrics), [set(d) - expected for d in metrics]
    assert {k for d in metrics for k in d} == expected
    # Not merely unsent: not even collected.
    assert (probe.accepted == 0) == (off == "netquality"), probe.accepted
    assert (agent.workdir / "state" / "usage.json").exists() == (off != "usage")
    clears = [m for m in msgs if not m.raw]  # the retained inventory is deleted, nothing else
    assert [m.topic for m in clears] == ([f"{PREFIX}/inventory"] if off == "inventory" else [])
    assert not [e for m in msgs if m.raw for e in schema_errors(m)]
    assert_no_loss(subscriber.seqs())


def _events(subscriber: Subscriber, type_: str) -> list[Message]:
    return [m for m in subscriber.snapshot("event") if m.payload["data"]["type"] == type_]


def _after(subscriber: Subscriber, seq: int) -> list[Message]:
    return [m for m in subscriber.snapshot() if m.payload.get("seq", 0) > seq]


def _reload(agent: AgentProcess, subscriber: Subscriber, classes: dict[str, bool]) -> int:
    """Apply ``classes`` with SIGHUP; the seq of its config_reloaded event."""
    before = len(_events(subscriber, "config_reloaded"))
    agent.config["telemetry"]["classes"] = classes
    agent.write_config()
    agent.signal(signal.SIGHUP)
    subscriber.wait_for(lambda ms: len(_events(subscriber, "config_reloaded")) > before, 20,
                        "config_reloaded event")
    return int(_events(subscriber, "config_reloaded")[-1].payload["seq"])


def test_sighup_turns_classes_off_and_on_again(broker: Broker, subscriber: Subscriber,
                                               agent_factory) -> None:
    inventory_topic = f"{PREFIX}/inventory"
    agent: AgentProcess = agent_factory(telemetry={**FAST, "classes": ALL_ON})
    agent.start()
    subscriber.wait_for(lambda ms: _enough(ms, ALL_ON, metrics=3), 40, "everything on")
    assert all(_footprint(subscriber.snapshot()).values())
    assert retained(broker.port, inventory_topic) is not None

    off_at = _reload(agent, subscriber, ALL_OFF)
    subscriber.wait_for(lambda ms: _enough(_after(subscriber, off_at), ALL_OFF), 30,
                        "several intervals with everything off")
    quiet = _after(subscriber, off_at)
    assert not any(_footprint(quiet).values()), _footprint(quiet)
    assert {k for m in quiet if _kind(m) == "metrics" for k in m.payload["data"]} == {"agent"}
    # The broker forgets the inventory it retained while the class was on.
    assert retained(broker.port, inventory_topic) is None
    assert agent.status()["telemetry"]["classes_off"] == list(CLASSES)

    on_at = _reload(agent, subscriber, ALL_ON)
    subscriber.wait_for(lambda ms: _enough(_after(subscriber, on_at), ALL_ON, metrics=3), 30,
                        "everything on again")
    assert all(_footprint(_after(subscriber, on_at)).values())
    assert retained(broker.port, inventory_topic) is not None
    assert agent.stop() == 0
    assert_no_loss(subscriber.seqs())


# -- what is never sent -------------------------------------------------------------------------

ARGV_MARKER = "ARGV-MARKER-7c1e-jiaoan"
TITLE_MARKER = "WINDOW-TITLE-MARKER-3b9f Zhang San grades.xlsx"
DOC_MARKER = "DOC-MARKER-5d2a-kaoshi.docx"
PROC_NAME = "classpadx-n4"  # matched by the app catalogue, yet only the catalogue key is sent


def test_no_command_line_window_title_or_document_name_on_the_wire(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    doc = tmp_path / DOC_MARKER
    doc.write_text("lesson plan\n")
    exe = tmp_path / PROC_NAME
    exe.symlink_to(os.path.realpath(sys.executable))  # comm = the link's name, exe = python
    code = "import sys, time; f = open(sys.argv[1]); time.sleep(120)"
    env = dict(os.environ, WINDOW_TITLE=TITLE_MARKER, _NET_WM_NAME=TITLE_MARKER,
               PYTHONHOME=sys.base_prefix)
    marker = subprocess.Popen([str(exe), "-c", code, str(doc), ARGV_MARKER], env=env)
    try:
        agent: AgentProcess = agent_factory(telemetry={**FAST, "apps": {"marker_app": [
            "classpadx*"]}})
        agent.start()

        def ran(ms: list[Message]) -> bool:
            return any(m.payload["data"]["apps"]["marker_app"]["running_s"] > 0
                       for m in ms if _kind(m) == "usage")

        subscriber.wait_for(ran, 40, "a usage record that saw the marker process run")
        subscriber.wait_for(lambda ms: _enough(ms, ALL_ON), 40, "several intervals")
        assert agent.stop() == 0
    finally:
        marker.kill()
        marker.wait(10)
    msgs = subscriber.snapshot()
    assert {_kind(m) for m in msgs} >= {"state", "metrics", "usage", "inventory", "event"}
    for needle in (ARGV_MARKER, TITLE_MARKER, "WINDOW-TITLE-MARKER", DOC_MARKER, PROC_NAME,
                   "time.sleep", str(tmp_path)):
        leaks = [m.topic for m in msgs if needle.encode() in m.raw]
        assert not leaks, f"{needle!r} was sent in {leaks[:5]}"



def test_privacy_doc_names_every_event_type() -> None:
    doc = (REPO / "docs" / "privacy.md").read_text(encoding="utf-8")
    events = json.loads((SCHEMAS / "event.json").read_text())
    types = events["properties"]["data"]["properties"]["type"]["enum"]
    assert [t for t in types if f"`{t}`" not in doc] == []
