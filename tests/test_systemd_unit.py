"""The systemd unit: systemd itself accepts it, and it keeps the settings the agent relies on.

`systemd-analyze verify` works without systemd as PID 1 (as on the CI machines). It checks the
syntax, every key and value, and that ExecStart= is an executable; it does not check that
User=/Group= exist. The unit is copied with ExecStart= pointing at an executable that exists here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "classroom-agent.service"
INSTALLED_EXE = "/opt/classroom-agent/venv/bin/classroom-agent"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as lists of (key, value); keys may repeat (DeviceAllow=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= should be set exactly once, found {found}"
    return found[0]


def stand_in_executable() -> str:
    """An executable that exists here, to stand in for the installed agent in ExecStart=."""
    candidate = Path(sys.executable).parent / "classroom-agent"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("classroom-agent")
    return found or sys.executable


def copy_for_verify(tmp_path: Path, text: str) -> Path:
    assert INSTALLED_EXE in text
    copy = tmp_path / UNIT.name  # same name: verify reports it as classroom-agent.service
    copy.write_text(text.replace(INSTALLED_EXE, stand_in_executable()))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C")
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
        env=env,
    )


def lines_about(unit: Path, output: str) -> list[str]:
    return [ln for ln in output.splitlines() if str(unit) in ln or unit.name in ln]


@needs_analyze
def test_systemd_analyze_verify_accepts_unit(tmp_path: Path) -> None:
    copy = copy_for_verify(tmp_path, UNIT.read_text())
    result = verify(copy)
    complaints = lines_about(copy, result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr
    assert complaints == [], "\n".join(complaints)


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """Guard against a vacuous check: a typo'd key and a bad value must be reported."""
    text = UNIT.read_text().replace("Type=notify", "Typ=notify")
    text = text.replace("ProtectClock=yes", "ProtectClock=maybe")
    copy = copy_for_verify(tmp_path, text)
    result = verify(copy)
    complaints = lines_about(copy, result.stdout + result.stderr)
    assert any("Typ" in ln for ln in complaints), result.stderr
    assert any("maybe" in ln for ln in complaints), result.stderr


def test_unit_keeps_what_the_agent_relies_on() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecStart").split() == [
        INSTALLED_EXE,  # where scripts/install.sh puts it
        "run",
        "--config",
        "/etc/classroom-agent/agent.yaml",
    ]
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "Restart") == "always"
    assert int(one(service, "WatchdogSec")) > 0
    assert int(one(service, "RestartSec")) > 0
    assert one(service, "User") == "classroom-agent"
    assert one(service, "Group") == "classroom-agent"
    groups = " ".join(values(service, "SupplementaryGroups")).split()
    assert {"video", "audio"} <= set(groups)
    assert one(service, "StateDirectory") == "classroom-agent"
    assert one(service, "ConfigurationDirectory") == "classroom-agent"

    # Hardening that must not quietly disappear.
    for key, expected in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("RestrictRealtime", "yes"),
        ("SystemCallErrorNumber", "EPERM"),
        ("RuntimeDirectory", "classroom-agent"),  # the control socket's directory
        ("RuntimeDirectoryMode", "0750"),
    ]:
        assert one(service, key) == expected, key
    assert values(service, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert int(one(service, "LimitNOFILE")) >= 1024 and int(one(service, "TasksMax")) >= 256
    assert one(service, "MemoryMax").endswith(("M", "G"))
    # The agent needs the real cameras and sound cards.
    assert values(service, "PrivateDevices") in ([], ["no"])
    allowed = {v.split()[0] for v in values(service, "DeviceAllow")}
    assert {"char-video4linux", "char-alsa"} <= allowed

    assert "network-online.target" in " ".join(values(unit["Unit"], "Wants"))
    assert "network-online.target" in " ".join(values(unit["Unit"], "After"))
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def exposure(unit: Path) -> float:
    """``systemd-analyze security --offline``'s overall exposure of ``unit`` (0 best, 10 worst)."""
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C")
    res = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
                          str(unit)], capture_output=True, text=True, timeout=60, env=env,
                         cwd=unit.parent)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", res.stdout)
    assert found, res.stdout[-2000:] + res.stderr
    return float(found.group(1))


@needs_analyze
def test_exposure_is_at_most_2(tmp_path: Path) -> None:
    """Issue 9: the unit scored 3.6. What is left (network, devices, /proc, ...) is explained in
    docs/security.md, "The systemd unit"; a guard shows the measure is not vacuous."""
    assert exposure(copy_for_verify(tmp_path, UNIT.read_text())) <= 2.0
    looser = "\n".join(ln for ln in UNIT.read_text().splitlines()
                       if not ln.startswith(("SystemCallFilter=", "RestrictRealtime=")))
    (tmp_path / "looser").mkdir()
    assert exposure(copy_for_verify(tmp_path / "looser", looser)) > 2.0
