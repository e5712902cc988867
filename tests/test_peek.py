"""The device probe's deadlines (agent/media/peek.py): the child's start-up is timed apart from
the devices, so a busy PC is never reported as a microphone or camera that did not answer.

A stand-in child (a Python script in the place of the interpreter) speaks the probe's protocol
with chosen delays; the real probe is run by tests/test_doctor.py and tests/test_status_page.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.media import peek
from agent.media.spec import AudioSpec

AUDIO = AudioSpec(source="default", rate=48000, channels=2)
RESULT = '{"type": "result", "video": null, "audio": {"ok": true, "chunks": 3}}'


def stand_in(tmp_path: Path, start_s: float, ready: bool, answer_s: float | None) -> str:
    """A probe child that loads for ``start_s``, says ready (or not), then answers after
    ``answer_s`` (None: never)."""
    script = tmp_path / "probe-child"
    lines = ["import sys, time", "sys.stdin.readline()", f"time.sleep({start_s})"]
    if ready:
        lines.append("print('{\"type\": \"ready\"}', flush=True)")
    if answer_s is None:
        lines.append("time.sleep(3600)")
    else:
        lines += [f"time.sleep({answer_s})", f"print({RESULT!r}, flush=True)"]
    script.write_text(f"#!{sys.executable}\n" + "\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peek, "READY_S", 3.0)
    monkeypatch.setattr(peek, "DEVICE_S", 0.5)


def test_a_slow_start_does_not_count_against_the_device(tmp_path: Path, short: None) -> None:
    """Start-up 1.5 s, then the devices' time: longer in all than seconds + DEVICE_S."""
    python = stand_in(tmp_path, start_s=1.5, ready=True, answer_s=0.3)
    res = peek.probe(None, AUDIO, 0.2, python=python)
    assert res.get("audio") == {"ok": True, "chunks": 3}, res


def test_a_device_that_never_answers_is_named(tmp_path: Path, short: None) -> None:
    python = stand_in(tmp_path, start_s=0.0, ready=True, answer_s=None)
    began = time.monotonic()
    res = peek.probe(None, AUDIO, 0.2, python=python)
    assert res == {"error": "the device did not answer within 1 s (the probe was stopped)"}
    assert time.monotonic() - began < 3.0  # from ready, not from READY_S


def test_a_probe_that_never_starts_says_the_pc_is_busy(tmp_path: Path, short: None) -> None:
    python = stand_in(tmp_path, start_s=3600, ready=False, answer_s=None)
    res = peek.probe(None, AUDIO, 0.2, python=python)
    assert res["error"].startswith("the probe did not start within 3 s: this PC is too busy "
                                   "(load "), res
