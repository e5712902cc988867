"""Telemetry collectors against the real machine (and a fake sysfs/procfs for peripherals)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import agent
from agent.records import rfc3339
from agent.telemetry.inventory import collect_inventory, parse_os_release
from agent.telemetry.netquality import NetworkQualityCollector
from agent.telemetry.peripherals import PeripheralWatch
from agent.telemetry.procs import EXEC_BATCH_S, Catalog, open_connector
from agent.telemetry.system import (
    CpuCollector,
    DiskCollector,
    HostCollector,
    MemoryCollector,
    NetworkCollector,
    ProcessCounter,
    SensorsCollector,
    system_collectors,
)
from agent.telemetry.usage import STATE_FILE, UsageTracker

SCHEMA_DIR = Path(agent.__file__).parent / "schemas"
BASE_ID = "https://classroom-agent.dev/schemas/v1/"


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Acc:
    """Accumulator test double: keeps what collectors report."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        assert section not in self.metrics, f"section {section} reported twice"
        self.metrics[section] = values

    def add_event(self, type_: str, severity: str, message: str, **details: Any) -> None:
        self.events.append(
            {"type": type_, "severity": severity, "message": message, "details": details}
        )


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())


_REGISTRY: Registry = Registry().with_resources(
    (BASE_ID + n, DRAFT202012.create_resource(_schema(n)))
    for n in ("metrics-data.json", "usage-data.json", "inventory-data.json")
)


def validator(ref: str) -> Draft202012Validator:
    """A validator for ``ref`` (e.g. ``metrics-data.json#/$defs/cpu``)."""
    return Draft202012Validator(
        {"$ref": BASE_ID + ref},
        registry=_REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def assert_valid(ref: str, instance: Any) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(ref).iter_errors(instance)
    ]
    assert not errors, errors


def test_schemas_are_valid_2020_12() -> None:
    for name in ("metrics-data.json", "usage-data.json", "inventory-data.json"):
        schema = _schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == BASE_ID + name
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_rejects_wrong_shapes() -> None:
    """The sub-schemas are precise: a typo'd key or a wrong type fails."""
    bad = {"percent": 1.0, "per_core": [1.0], "load": [0, 0, 0], "count": 1, "extra": 1}
    assert list(validator("metrics-data.json#/$defs/cpu").iter_errors(bad))
    bad_net = {"eth0": {"rx_bps": "fast"}}
    assert list(validator("metrics-data.json#/$defs/network").iter_errors(bad_net))
    assert list(validator("usage-data.json").iter_errors({"period": {}}))


# --- system collectors ------------------------------------------------------------------------

EXPECTED_SECTIONS = {
    "cpu": ["cpu"],
    "memory": ["memory", "swap"],
    "disks": ["disks"],
    "network": ["network"],
    "sensors": ["sensors"],
    "host": ["host"],
}


def test_system_collectors_sections_validate() -> None:
    collectors = system_collectors()
    assert [c.name for c in collectors] == list(EXPECTED_SECTIONS)
    for c in collectors:
        for _ in range(2):  # first call (no rates) and second call (rates) both validate
            acc = Acc()
            c.gather(acc)
            assert sorted(acc.metrics) == sorted(EXPECTED_SECTIONS[c.name]), c.name
            assert acc.events == []
            for section, values in acc.metrics.items():
                assert_valid(f"metrics-data.json#/$defs/{section}", values)
            time.sleep(0.05)


def test_cpu_reports_busy_core() -> None:
    cpu = CpuCollector()
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:  # burn CPU so the sample cannot be all idle
        pass
    acc = Acc()
    cpu.gather(acc)
    s = acc.metrics["cpu"]
    assert s["count"] == psutil.cpu_count()
    assert len(s["per_core"]) == len(psutil.cpu_times(percpu=True))
    assert s["percent"] > 0
    assert max(s["per_core"]) > 0
    assert len(s["load"]) == 3


def test_memory_matches_psutil() -> None:
    acc = Acc()
    MemoryCollector().gather(acc)
    assert acc.metrics["memory"]["total"] == psutil.virtual_memory().total
    assert acc.metrics["swap"]["total"] == psutil.swap_memory().total


def test_disk_mounts_are_physical_and_rates_come_second() -> None:
    disks = DiskCollector()
    first = Acc()
    disks.gather(first)
    mounts = first.metrics["disks"]["mounts"]
    assert mounts, "the root file system should be reported"
    for m in mounts:
        assert m["fstype"] not in {"squashfs", "overlay", "tmpfs"}
        assert not m["mount"].startswith("/snap/")
    assert len({m["mount"] for m in mounts}) == len(mounts)
    io1 = first.metrics["disks"]["io"]
    if not io1:
        pytest.skip("no whole physical disk visible for I/O counters")
    assert not any(dev.startswith(("loop", "ram", "zram")) for dev in io1)
    assert all(v is None for rates in io1.values() for v in rates.values())
    time.sleep(0.2)
    second = Acc()
    disks.gather(second)
    io2 = second.metrics["disks"]["io"]
    assert all(isinstance(v, float) and v >= 0 for rates in io2.values() for v in rates.values()), (
        io2
    )


def test_network_rates_come_second_and_lo_is_skipped() -> None:
    net = NetworkCollector()
    first = Acc()
    net.gather(first)
    ifaces = first.metrics["network"]
    assert "lo" not in ifaces
    if not ifaces:
        pytest.skip("no network interface besides lo")
    assert all(i["rx_bps"] is None and i["tx_pps"] is None for i in ifaces.values())
    time.sleep(0.2)
    second = Acc()
    net.gather(second)
    for i in second.metrics["network"].values():
        for k in ("rx_bps", "tx_bps", "rx_pps", "tx_pps"):
            assert isinstance(i[k], float) and i[k] >= 0
        assert isinstance(i["up"], bool)
    stats = psutil.net_if_stats()
    assert {n: i["up"] for n, i in second.metrics["network"].items()} == {
        n: stats[n].isup for n in second.metrics["network"]
    }


def test_sensors_section_even_without_hardware() -> None:
    acc = Acc()
    SensorsCollector().gather(acc)
    s = acc.metrics["sensors"]
    assert set(s) == {"temperatures", "fans", "battery"}
    assert (s["battery"] is None) == (psutil.sensors_battery() is None)


def test_host_uptime_and_boot_time() -> None:
    acc = Acc()
    HostCollector().gather(acc)
    h = acc.metrics["host"]
    assert h["boot_time"] == rfc3339(psutil.boot_time())
    boot = datetime.fromisoformat(h["boot_time"].replace("Z", "+00:00")).timestamp()
    assert abs((time.time() - boot) - h["uptime_s"]) < 5
    assert h["process_count"] > 1
    assert h["users"] == len(psutil.users())


# --- whole metrics record ---------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[:2]
    finally:
        srv.close()


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_whole_metrics_data_validates(listener: tuple[str, int]) -> None:
    collectors = [
        *system_collectors(),
        PeripheralWatch(),
        NetworkQualityCollector([listener], timeout_s=1.0),
    ]
    acc = Acc()
    for c in collectors:
        c.gather(acc)
    acc.metrics["future_section"] = {"anything": 1}  # top level stays open for new sections
    assert set(acc.metrics) == {
        "cpu", "memory", "swap", "disks", "network", "sensors", "host",
        "peripherals", "netquality", "future_section",
    }  # fmt: skip
    assert_valid("metrics-data.json", acc.metrics)
    acc.metrics["cpu"] = {"percent": "high"}
    assert list(validator("metrics-data.json").iter_errors(acc.metrics))


def test_collectors_are_cheap_and_lean() -> None:
    """A budget well under Glances: one interval of all collectors costs a few ms of CPU, and a
    fresh interpreter running them stays far below 35 MB RSS without numpy."""
    code = (
        "import sys, time, tempfile, psutil\n"
        "from pathlib import Path\n"
        "from agent.telemetry.system import system_collectors\n"
        "from agent.telemetry.peripherals import PeripheralWatch\n"
        "from agent.telemetry.usage import UsageTracker\n"
        "class A:\n"
        "    def add_metrics(self, s, v): pass\n"
        "    def add_event(self, *a, **k): pass\n"
        "cs = [*system_collectors(), PeripheralWatch()]\n"
        "u = UsageTracker(Path(tempfile.mkdtemp()), {'x': ['firefox*', 'chrom*']})\n"
        "for c in cs: c.gather(A())\n"
        "u.sample()\n"
        "t = time.process_time()\n"
        "for _ in range(10):\n"
        "    for c in cs: c.gather(A())\n"
        "    u.sample()\n"
        "cpu = (time.process_time() - t) / 10\n"
        "print(cpu, psutil.Process().memory_info().rss, 'numpy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    cpu_s, rss, numpy = float(out[0]), int(out[1]), out[2]
    assert numpy == "False"
    assert cpu_s < 0.1, f"{cpu_s * 1000:.1f} ms CPU per interval"  # 1 % of a core at 10 s
    assert rss < 35 * 1024 * 1024, rss


# --- usage ------------------------------------------------------------------------------------

BUSY_CHILD = (
    "import ctypes\n"
    "ctypes.CDLL(None).prctl(15, b'cabusy', 0, 0, 0)\n"  # PR_SET_NAME: a name we can catalog
    "while True: pass\n"
)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


def _wait_for_name(pid: int, name: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if psutil.Process(pid).name() == name:
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never became {name}")


def test_usage_counts_running_and_active(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    # A uniquely named copy of sleep: other `sleep` processes on the machine must not count.
    sleeper = tmp_path / "casleeper"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleeper)
    children.append(subprocess.Popen([str(sleeper), "30"]))
    children.append(subprocess.Popen([sys.executable, "-c", BUSY_CHILD]))
    _wait_for_name(children[1].pid, "cabusy")
    catalog = {"sleeper": ["CASLEE?ER"], "busy": ["cabusy"], "absent": ["no-such-app-*"]}
    tracker = UsageTracker(tmp_path, catalog)
    tracker.sample()  # baseline only
    time.sleep(1.0)
    tracker.sample()
    data = tracker.take()
    assert_valid("usage-data.json", data)
    apps = data["apps"]
    assert set(apps) == set(catalog)
    assert 0.8 <= apps["sleeper"]["running_s"] <= 2.0, apps
    assert apps["sleeper"]["active_s"] == 0.0, "an idle process is running, not active"
    assert 0.8 <= apps["busy"]["running_s"] <= 2.0, apps
    assert apps["busy"]["active_s"] == apps["busy"]["running_s"]
    assert apps["absent"] == {"running_s": 0.0, "active_s": 0.0}
    # take() resets; after the sleeper dies it no longer earns time
    children[0].kill()
    children[0].wait(5)
    tracker.sample()
    again = tracker.take()
    assert again["apps"]["sleeper"]["running_s"] == 0.0
    assert again["apps"]["busy"]["running_s"] > 0
    assert again["period"]["start"] == data["period"]["end"]


def test_usage_counts_an_app_that_runs_between_two_samples(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 12: a program that starts and ends between two samples counts for the time it ran
    (start from the kernel's creation time, end from its pidfd), not zero as a sampling scan
    gave, as long as it runs for at least EXEC_BATCH_S (the events are read in bursts at most
    that often). Two runs that overlap count once."""
    sock, why = open_connector()
    if sock is None:
        pytest.skip(f"this kernel does not report process starts to us: {why}")
    sock.close()
    short = tmp_path / "cashort"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", short)
    tracker = UsageTracker(tmp_path, {"short": ["cashort"], "absent": ["no-such-app-*"]})
    tracker.start()
    try:
        assert tracker.source.startswith("process connector"), tracker.source
        tracker.sample()  # baseline
        t0 = time.monotonic()
        life = EXEC_BATCH_S + 0.5
        first = subprocess.Popen([str(short), f"{life:.1f}"])
        second = subprocess.Popen([str(short), f"{life - 0.3:.1f}"])  # overlaps: counted once
        assert first.wait(10) == 0 and second.wait(10) == 0
        ran = time.monotonic() - t0
        tracker.sample()
        apps = tracker.take()["apps"]
    finally:
        tracker.stop()
    assert life - 0.1 <= apps["short"]["running_s"] <= ran + 0.05, (apps, ran)
    assert apps["short"]["active_s"] == 0.0, "sleep uses no CPU: running, not active"
    assert apps["absent"]["running_s"] == 0.0


def test_process_events_need_no_privilege() -> None:
    """The systemd unit grants no capability (CapabilityBoundingSet= empty): on Linux >= 6.6 an
    unprivileged user can still follow program starts (AF_NETLINK stays allowed in the unit)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    code = ("from agent.telemetry.procs import open_connector\n"
            "s, why = open_connector()\nprint(why)\n")
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, cwd=Path(agent.__file__).parents[1],
        check=False)
    kernel = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if kernel < (6, 6):
        assert "CAP_NET_ADMIN" in out.stdout, out
    else:
        assert out.stdout.startswith("process connector"), (out.stdout, out.stderr)


def test_process_count_from_the_link_count_of_proc() -> None:
    """The host section's process count reads one stat() per tick, calibrated by a listing."""
    counter = ProcessCounter(calibrate_s=3600)
    first = counter.count()  # a listing
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
    try:
        listed = sum(1 for n in os.listdir("/proc") if n.isdigit())
        assert abs(counter.count() - listed) <= 3, "other processes come and go meanwhile"
        assert counter.count() >= first + 5 - 3
    finally:
        for c in children:
            c.kill()
            c.wait(5)


def test_catalog_matches_names_cut_by_the_kernel() -> None:
    cat = Catalog({"meet": ["tencent-meeting-app*"], "wps": ["wps"]})
    assert cat.match("tencent-meetin", lambda: None) == ()  # 14 characters: not cut, no match
    assert cat.match("tencent-meeting", lambda: None) == ("meet",)  # 15: maybe cut
    assert cat.match("WPS", lambda: None) == ("wps",)
    assert cat.match("sh", lambda: "wps") == ("wps",)  # the executable's basename


def test_usage_first_sample_is_only_a_baseline(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    children.append(subprocess.Popen(["sleep", "30"]))
    tracker = UsageTracker(tmp_path, {"sleeper": ["sleep"]})
    tracker.sample()
    assert tracker.take()["apps"]["sleeper"] == {"running_s": 0.0, "active_s": 0.0}


def test_usage_never_reads_cmdline(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """A pattern that only the command line could match must not match."""
    children.append(subprocess.Popen(["sleep", "31"]))
    tracker = UsageTracker(tmp_path, {"by_arg": ["*31*"]})
    tracker.sample()
    time.sleep(0.2)
    tracker.sample()
    assert tracker.take()["apps"]["by_arg"]["running_s"] == 0.0


FakeUser = namedtuple("FakeUser", "name terminal host started pid")


def test_usage_sessions_counted_not_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = [
        FakeUser("alice", "tty7", None, 0.0, 1),
        FakeUser("alice", "pts/0", ":0", 0.0, 2),
        FakeUser("bob", "pts/1", "10.1.2.3", 0.0, 3),
    ]
    monkeypatch.setattr(psutil, "users", lambda: users)
    tracker = UsageTracker(tmp_path, {})
    tracker.sample()
    users = users[:1]  # fewer later: the period keeps the maximum
    tracker.sample()
    data = tracker.take()
    assert data["sessions"] == {"count": 3, "local": 2, "remote": 1}
    text = json.dumps(data) + (tmp_path / STATE_FILE).read_text()
    assert "alice" not in text and "bob" not in text and "10.1.2.3" not in text


def _state(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / STATE_FILE).read_text())


def test_power_on_current_boot(tmp_path: Path) -> None:
    tracker = UsageTracker(tmp_path, {})
    tracker.sample()
    state = _state(tmp_path)
    assert state["boot_time"] == psutil.boot_time()
    assert abs(state["last_seen"] - time.time()) < 5
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file is renamed away"
    power_on = tracker.take()["power_on"]
    assert len(power_on) == 1
    assert power_on[0]["start"] == rfc3339(psutil.boot_time())
    assert power_on[0]["ongoing"] is True


@pytest.mark.parametrize("with_boot_id", [True, False])
def test_power_on_previous_boot_reported_after_restart(tmp_path: Path, with_boot_id: bool) -> None:
    old_boot, old_seen = psutil.boot_time() - 86400, psutil.boot_time() - 80000
    UsageTracker(tmp_path, {}).sample()
    state = _state(tmp_path)
    state.update(boot_time=old_boot, last_seen=old_seen)
    if with_boot_id:
        state["boot_id"] = "00000000-0000-0000-0000-000000000000"
    else:
        state.pop("boot_id")
    (tmp_path / STATE_FILE).write_text(json.dumps(state))

    second = UsageTracker(tmp_path, {})  # the agent after a reboot
    data = second.take()
    assert_valid("usage-data.json", data)
    assert data["power_on"][0] == {
        "start": rfc3339(old_boot),
        "end": rfc3339(old_seen),
        "ongoing": False,
    }
    assert data["power_on"][1]["ongoing"] is True
    assert len(data["power_on"]) == 2
    assert second.take()["power_on"][0]["ongoing"] is True  # reported once per instance

    # At-least-once: not yet persisted as reported, so a crash now repeats it once ...
    assert len(UsageTracker(tmp_path, {}).take()["power_on"]) == 2
    # ... and once a sample() has persisted the take, a restart does not repeat it.
    third = UsageTracker(tmp_path, {})
    third.take()
    third.sample()
    assert len(UsageTracker(tmp_path, {}).take()["power_on"]) == 1


def test_power_on_same_boot_within_tolerance(tmp_path: Path) -> None:
    """Without a boot id, a boot time that wobbled by a second is still the same boot."""
    (tmp_path / STATE_FILE).write_text(
        json.dumps({"boot_time": psutil.boot_time() + 1.0, "last_seen": time.time()})
    )
    assert len(UsageTracker(tmp_path, {}).take()["power_on"]) == 1


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"boot_time": "yesterday", "last_seen": 1}', "", "null"]
)
def test_corrupt_usage_state_starts_fresh(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    with caplog.at_level(logging.WARNING, logger="agent.telemetry.usage"):
        tracker = UsageTracker(tmp_path, {"x": ["x"]})
    assert any("starting fresh" in r.getMessage() for r in caplog.records)
    tracker.sample()
    assert _state(tmp_path)["boot_time"] == psutil.boot_time()  # rewritten whole
    assert len(tracker.take()["power_on"]) == 1


# --- peripherals ------------------------------------------------------------------------------

CARDS = """\
 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 32
 1 [C920           ]: USB-Audio - HD Pro Webcam C920
                      HD Pro Webcam C920 at usb-0000:00:14.0-1, high speed
"""
PCM_PLAYBACK = "00-00: ALC887-VD Analog : ALC887-VD Analog : playback 1 : capture 1\n"
PCM_HDMI = "00-03: HDMI 0 : HDMI 0 : playback 1\n"
PCM_WEBCAM = "01-00: USB Audio : USB Audio : capture 1\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    _write(sysfs / "class/video4linux/video0/name", "HD Pro Webcam C920")
    _write(sysfs / "class/drm/card0-HDMI-A-1/status", "connected")
    _write(sysfs / "class/drm/card0-eDP-1/status", "disconnected")
    (sysfs / "class/drm/card0").mkdir()  # the card itself has no status
    _write(sysfs / "bus/usb/devices/usb1/idVendor", "1d6b")  # root hub: left out
    _write(sysfs / "bus/usb/devices/1-1:1.0/idVendor", "046d")  # interface: left out
    usb = sysfs / "bus/usb/devices/1-1"
    for attr, value in (
        ("idVendor", "046d"),
        ("idProduct", "082d"),
        ("manufacturer", "Logitech"),
        ("product", "HD Pro Webcam C920"),
    ):
        _write(usb / attr, value)
    _write(sysfs / "bus/usb/devices/1-2/idVendor", "0781")  # no strings: nulls
    _write(procfs / "asound/cards", CARDS)
    _write(procfs / "asound/pcm", PCM_PLAYBACK + PCM_HDMI + PCM_WEBCAM)
    return sysfs, procfs


def test_peripheral_snapshot(fake_tree: tuple[Path, Path]) -> None:
    snap = PeripheralWatch(*fake_tree).snapshot()
    assert snap == {
        "video": [{"id": "video0", "name": "HD Pro Webcam C920"}],
        "audio_inputs": [
            {"id": "card0-pcm0c", "name": "ALC887-VD Analog", "card": "HDA Intel PCH"},
            {"id": "card1-pcm0c", "name": "USB Audio", "card": "HD Pro Webcam C920"},
        ],
        "displays": [
            {"id": "card0-HDMI-A-1", "status": "connected"},
            {"id": "card0-eDP-1", "status": "disconnected"},
        ],
        "usb": [
            {
                "id": "1-1",
                "vendor_id": "046d",
                "product_id": "082d",
                "manufacturer": "Logitech",
                "product": "HD Pro Webcam C920",
            },
            {
                "id": "1-2",
                "vendor_id": "0781",
                "product_id": None,
                "manufacturer": None,
                "product": None,
            },
        ],
    }
    assert_valid("inventory-data.json#/$defs/peripherals", snap)


def test_peripheral_snapshot_sorts_naturally(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        _write(tmp_path / f"class/video4linux/video{n}/name", f"cam {n}")
    snap = PeripheralWatch(tmp_path, tmp_path / "proc").snapshot()
    assert [d["id"] for d in snap["video"]] == ["video1", "video2", "video10"]


def test_peripherals_missing_dirs(tmp_path: Path) -> None:
    watch = PeripheralWatch(tmp_path / "nosys", tmp_path / "noproc")
    assert watch.snapshot() == {"video": [], "audio_inputs": [], "displays": [], "usb": []}
    acc = Acc()
    watch.gather(acc)
    watch.gather(acc2 := Acc())
    assert acc.metrics["peripherals"] == {
        "video": 0,
        "audio_inputs": 0,
        "displays_connected": 0,
        "usb": 0,
    }
    assert acc.events == acc2.events == []


def _events(watch: PeripheralWatch) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    acc = Acc()
    watch.gather(acc)
    assert_valid("metrics-data.json#/$defs/peripherals", acc.metrics["peripherals"])
    return acc.metrics["peripherals"], acc.events


def test_peripheral_events(fake_tree: tuple[Path, Path]) -> None:
    sysfs, procfs = fake_tree
    watch = PeripheralWatch(sysfs, procfs)
    counts, events = _events(watch)
    assert counts == {"video": 1, "audio_inputs": 2, "displays_connected": 1, "usb": 2}
    assert events == [], "the first gather only sets the baseline"
    assert watch.last is not None and watch.last["video"][0]["id"] == "video0"

    _write(sysfs / "class/video4linux/video1/name", "Document Camera")
    counts, events = _events(watch)
    assert counts["video"] == 2
    assert [(e["type"], e["severity"]) for e in events] == [("peripheral_added", "info")]
    assert events[0]["details"] == {
        "class": "video",
        "device": {"id": "video1", "name": "Document Camera"},
    }

    assert _events(watch)[1] == [], "no change, no event"

    (sysfs / "class/video4linux/video0/name").unlink()
    (sysfs / "class/video4linux/video0").rmdir()
    _, events = _events(watch)
    assert [(e["type"], e["severity"]) for e in events] == [("peripheral_removed", "warning")]
    assert events[0]["details"]["device"] == {"id": "video0", "name": "HD Pro Webcam C920"}

    _write(procfs / "asound/pcm", PCM_PLAYBACK + PCM_HDMI)  # webcam microphone gone
    _, events = _events(watch)
    assert [(e["type"], e["severity"], e["details"]["class"]) for e in events] == [
        ("peripheral_removed", "warning", "audio_inputs")
    ]

    for attr in ("idVendor",):
        (sysfs / "bus/usb/devices/1-2" / attr).unlink()
    _, events = _events(watch)
    assert [(e["type"], e["severity"], e["details"]["device"]["id"]) for e in events] == [
        ("peripheral_removed", "info", "1-2")
    ]


def test_display_events(fake_tree: tuple[Path, Path]) -> None:
    sysfs, procfs = fake_tree
    watch = PeripheralWatch(sysfs, procfs)
    _events(watch)
    _write(sysfs / "class/drm/card0-HDMI-A-1/status", "disconnected")
    counts, events = _events(watch)
    assert counts["displays_connected"] == 0
    assert [(e["type"], e["severity"]) for e in events] == [("display_disconnected", "warning")]
    assert events[0]["details"] == {
        "class": "displays",
        "device": {"id": "card0-HDMI-A-1", "status": "disconnected"},
    }
    _write(sysfs / "class/drm/card0-HDMI-A-1/status", "connected")
    _write(sysfs / "class/drm/card0-eDP-1/status", "connected")
    _, events = _events(watch)
    assert sorted((e["type"], e["details"]["device"]["id"]) for e in events) == [
        ("display_connected", "card0-HDMI-A-1"),
        ("display_connected", "card0-eDP-1"),
    ]


# --- network quality --------------------------------------------------------------------------


def test_netquality_reachable(listener: tuple[str, int]) -> None:
    host, port = listener
    nq = NetworkQualityCollector([(host, port)], timeout_s=2.0)
    acc = Acc()
    nq.gather(acc)
    assert_valid("metrics-data.json#/$defs/netquality", acc.metrics["netquality"])
    (t,) = acc.metrics["netquality"]["targets"]
    assert t["target"] == f"127.0.0.1:{port}"
    assert t["ok"] is True and t["error"] is None and t["failures_total"] == 0
    assert isinstance(t["rtt_ms"], float) and 0 <= t["rtt_ms"] < 2000


def test_netquality_failures_are_counted(listener: tuple[str, int], closed_port: int) -> None:
    nq = NetworkQualityCollector(
        [("127.0.0.1", closed_port), listener, ("no-such-host.invalid", 80)], timeout_s=2.0
    )
    for expected in (1, 2):
        acc = Acc()
        nq.gather(acc)
        assert_valid("metrics-data.json#/$defs/netquality", acc.metrics["netquality"])
        closed, ok, unresolved = acc.metrics["netquality"]["targets"]
        assert closed["ok"] is False and closed["rtt_ms"] is None
        assert closed["failures_total"] == expected
        assert "ConnectionRefused" in closed["error"]
        assert ok["ok"] is True and ok["failures_total"] == 0
        assert unresolved["ok"] is False and unresolved["failures_total"] == expected
        assert unresolved["error"].startswith("name resolution failed")


# --- inventory --------------------------------------------------------------------------------


def test_inventory_validates_and_is_deterministic(fake_tree: tuple[Path, Path]) -> None:
    periph = PeripheralWatch(*fake_tree).snapshot()
    inv = collect_inventory("0.1.0", "sha256:abc", periph)
    assert_valid("inventory-data.json", inv)
    again = collect_inventory("0.1.0", "sha256:abc", PeripheralWatch(*fake_tree).snapshot())
    assert json.dumps(inv, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert inv["kernel"] == platform.release()
    assert inv["cpu"]["cores_logical"] == psutil.cpu_count()
    assert inv["memory_bytes"] == psutil.virtual_memory().total
    assert inv["agent"] == {"version": "0.1.0", "config_hash": "sha256:abc"}
    assert inv["peripherals"] == periph
    assert inv["host"]["hostname"] == socket.gethostname()
    mid = Path("/etc/machine-id")
    if mid.is_file() and mid.read_text().strip():
        assert inv["host"]["machine_id"] == mid.read_text().strip()
    names = [n["name"] for n in inv["nics"]]
    assert names == sorted(names) and "lo" not in names
    for n in inv["nics"]:
        assert n["ipv4"] == sorted(n["ipv4"]) and n["ipv6"] == sorted(n["ipv6"])
        assert all("%" not in a for a in n["ipv6"])
    assert [d["mount"] for d in inv["disks"]] == sorted(d["mount"] for d in inv["disks"])
    if Path("/etc/os-release").is_file():
        pretty = parse_os_release(Path("/etc/os-release").read_text()).get("PRETTY_NAME")
        assert inv["os"]["name"] == pretty


def test_parse_os_release() -> None:
    text = '# comment\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nPRETTY_NAME=\'Ubuntu 22.04\'\n'
    assert parse_os_release(text) == {
        "NAME": "Ubuntu",
        "VERSION_ID": "22.04",
        "ID": "ubuntu",
        "PRETTY_NAME": "Ubuntu 22.04",
    }


def test_an_unchanged_inventory_is_sent_again_every_inventory_refresh_s(tmp_path: Path) -> None:
    """Checked every 0.05 s but unchanged: sent at start, then once per refresh interval (a
    broker that keeps retained messages from wildcard subscribers needs the fresh copy)."""
    from agent.config import TelemetryClasses, TelemetryConfig
    from agent.telemetry.scheduler import Scheduler

    off = TelemetryClasses(system=False, usage=False, peripherals=False, netquality=False,
                           media=False)
    cfg = TelemetryConfig(interval_s=0.05, inventory_check_s=0.05, inventory_refresh_s=1.0,
                          classes=off)
    got: list[Any] = []
    sched = Scheduler(cfg, [], UsageTracker(tmp_path, {}), PeripheralWatch(),
                      lambda _p: {"host": {"hostname": "room-101"}}, got.extend)
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while sum(r.kind == "inventory" for r in got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sched.stop()
    inv = [r for r in got if r.kind == "inventory"]
    assert len(inv) >= 2 and inv[0].data == inv[1].data
    assert inv[1].ts - inv[0].ts >= 0.95, "not on every check, only when due"


def test_ticks_from_report_now_and_the_telemetry_thread_never_overlap(tmp_path: Path) -> None:
    """Collectors keep the previous sample to compute rates: a report_now tick (command
    thread) running inside the telemetry thread's tick would corrupt them. A collector that
    notes every overlap proves tick() runs one at a time."""

    class Probe:
        name = "cpu"  # a stand-in for the CPU collector, which keeps its previous sample

        def __init__(self) -> None:
            self.inside = 0
            self.overlaps = 0
            self.calls = 0
            self._lock = threading.Lock()

        def gather(self, acc: Any) -> None:
            with self._lock:
                self.inside += 1
                self.overlaps += self.inside > 1
                self.calls += 1
            time.sleep(0.01)
            with self._lock:
                self.inside -= 1
            acc.add_metrics("probe", {"n": self.calls})

    from agent.config import TelemetryClasses, TelemetryConfig
    from agent.telemetry.scheduler import Scheduler

    probe = Probe()
    cfg = TelemetryConfig(interval_s=0.02, classes=TelemetryClasses(usage=False,
                                                                    inventory=False))
    sched = Scheduler(cfg, [probe], UsageTracker(tmp_path, {}), PeripheralWatch(),
                      lambda _p: {}, lambda _r: None)
    sched.start()
    try:
        threads = [threading.Thread(target=lambda: [sched.tick() for _ in range(10)])
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sched.stop()
    assert probe.calls >= 30 and probe.overlaps == 0, (probe.calls, probe.overlaps)
