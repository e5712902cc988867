"""Shell scripts: every one parses (`bash -n`) and, where shellcheck is installed, lints clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shell_scripts() -> list[Path]:
    found = [ROOT / ".ci" / "run"]
    scripts_dir = ROOT / "scripts"
    if scripts_dir.is_dir():
        for path in sorted(scripts_dir.iterdir()):
            if not path.is_file():
                continue
            with path.open("rb") as f:
                first = f.readline()
            if path.suffix == ".sh" or (first.startswith(b"#!") and b"sh" in first):
                found.append(path)
    return [p for p in found if p.exists()]


SCRIPTS = shell_scripts()
IDS = [str(p.relative_to(ROOT)) for p in SCRIPTS]


def test_the_expected_scripts_exist() -> None:
    names = set(IDS)
    for expected in [
        ".ci/run",
        "scripts/deps.sh",
        "scripts/venv.sh",
        "scripts/test.sh",
        "scripts/demo.sh",
        "scripts/install.sh",
    ]:
        assert expected in names


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_executable_with_shebang(script: Path) -> None:
    assert script.read_bytes().startswith(b"#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_shellcheck(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
