"""Cameras and microphones on this PC, as plain dicts (for the CLI), and quiet PyAudio start-up.

``PyAudio()`` makes PortAudio probe every ALSA card it knows of and ALSA prints ~65 harmless
"ALSA lib ..." lines on stderr; they would bury the worker's real log, so fd 2 is pointed at
/dev/null for the duration of that call only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

V4L_ROOT = Path("/sys/class/video4linux")
PROBE_RATES = (16000, 44100, 48000)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C libraries write there directly); other threads' log lines are lost too."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_pyaudio() -> Any:
    """A ``pyaudio.PyAudio`` without ALSA's start-up noise; the caller must ``terminate()`` it."""
    import pyaudio

    with quiet_stderr():
        return pyaudio.PyAudio()


def list_cameras(root: Path = V4L_ROOT) -> list[dict[str, Any]]:
    """V4L2 capture nodes: name and path; ``modes`` from v4l2-ctl when it is installed."""
    if not root.is_dir():
        return []
    tool = shutil.which("v4l2-ctl")
    cameras: list[dict[str, Any]] = []
    for node in sorted(root.iterdir(), key=lambda p: _natural(p.name)):
        try:
            name = (node / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = ""
        path = f"/dev/{node.name}"
        cam: dict[str, Any] = {"name": name, "path": path, "modes": None}
        if tool is None:
            cam["note"] = "install v4l-utils (v4l2-ctl) to list the formats and sizes"
        else:
            cam["modes"], note = _v4l2_modes(tool, path)
            if note:
                cam["note"] = note
        cameras.append(cam)
    return cameras


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _v4l2_modes(tool: str, path: str) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        out = subprocess.run([tool, "--list-formats-ext", "-d", path], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"v4l2-ctl failed on {path}: {exc}"
    if out.returncode != 0:
        return None, f"v4l2-ctl failed on {path}: {out.stderr.strip()[:200]}"
    return parse_v4l2_formats(out.stdout), ""


def parse_v4l2_formats(text: str) -> list[dict[str, Any]]:
    """``v4l2-ctl --list-formats-ext`` output -> [{format, width, height, fps: [..]}]."""
    modes: list[dict[str, Any]] = []
    fmt = ""
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if m := re.search(r"\[\d+\]: '(\w+)'", line):
            fmt = m.group(1)
        elif m := re.search(r"Size: \w+ (\d+)x(\d+)", line):
            current = {"format": fmt, "width": int(m.group(1)), "height": int(m.group(2)),
                       "fps": []}
            modes.append(current)
        elif (m := re.search(r"\(([\d.]+) fps\)", line)) and current is not None:
            current["fps"].append(float(m.group(1)))
    return modes


def list_microphones() -> list[dict[str, Any]]:
    """PortAudio input devices with the usual rates each one accepts (mono, 16-bit)."""
    try:
        pa = open_pyaudio()
    except Exception as exc:  # PortAudio missing or broken: say so instead of failing the CLI
        return [{"error": f"PortAudio could not start ({exc}); check that PyAudio and "
                          "libportaudio2 are installed (scripts/deps.sh)"}]
    import pyaudio

    mics: list[dict[str, Any]] = []
    try:
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            channels = int(info.get("maxInputChannels", 0))
            if channels <= 0:
                continue
            api = pa.get_host_api_info_by_index(int(info["hostApi"]))["name"]
            rates = [r for r in PROBE_RATES if _supports(pa, pyaudio, i, r)]
            mics.append({"index": i, "name": info["name"], "host_api": api,
                         "max_input_channels": channels,
                         "default_rate": float(info["defaultSampleRate"]),
                         "rates": rates})
    finally:
        pa.terminate()
    return mics


def _supports(pa: Any, pyaudio: Any, index: int, rate: int) -> bool:
    try:
        with quiet_stderr():
            return bool(pa.is_format_supported(rate, input_device=index, input_channels=1,
                                               input_format=pyaudio.paInt16))
    except ValueError:
        return False
