"""systemd/classroom-collector.service: systemd accepts it and it keeps what the collector
relies on (migrate before start, restart with the same identity, no privileges)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support import REPO
from tests.test_systemd_unit import lines_about, needs_analyze, one, parse_unit, values, verify

UNIT = REPO / "systemd" / "classroom-collector.service"
INSTALLED_EXE = "/opt/classroom-collector/venv/bin/classroom-collector"


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED_EXE in text
    stand_in = Path(sys.executable).parent / "classroom-collector"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_EXE, str(stand_in if stand_in.exists()
                                                        else sys.executable)))
    result = verify(copy)
    assert result.returncode == 0, result.stderr
    assert lines_about(copy, result.stdout + result.stderr) == []


def test_unit_migrates_then_runs_and_restarts() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    config = "/etc/classroom-collector/collector.yaml"
    assert one(service, "ExecStartPre").split() == [INSTALLED_EXE, "migrate", "--config", config]
    assert one(service, "ExecStart").split() == [INSTALLED_EXE, "run", "--config", config]
    assert one(service, "Restart") == "always"
    assert one(service, "User") == "classroom-collector"
    for key, expected in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                          ("CapabilityBoundingSet", ""), ("UMask", "0027")]:
        assert one(service, key) == expected, key
    assert "network-online.target" in " ".join(values(unit["Unit"], "After"))
