"""The H.264 encoder choice: one-frame trial encodes with the real bundled FFmpeg. This machine
has no GPU, so the hardware trials fail here for real (and libx264 is chosen); with a GPU the same
code takes the first that passes (not run here: docs/media.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.media import hwenc
from agent.media.encoder import build_argv
from agent.media.ffmpeg import locate, probe
from agent.media.spec import MediaSpec

pytestmark = pytest.mark.skipif(bool(hwenc.render_node()), reason="this machine has a GPU")


def test_trial_encodes_are_real() -> None:
    ffmpeg = locate("bundled")
    assert hwenc.trial(ffmpeg, "libx264") == ""
    # A device that is no GPU: FFmpeg itself refuses, and says why.
    why = hwenc.trial(ffmpeg, "h264_vaapi", "/dev/null")
    assert why and "vaapi" in why.lower(), why
    assert hwenc.trial(ffmpeg, "h264_nvenc"), "NVENC cannot work without an NVIDIA GPU"


def test_auto_falls_back_to_libx264_naming_each_candidate() -> None:
    ffmpeg = locate("bundled")
    choice = hwenc.choose(ffmpeg, "auto", probe("bundled").encoders)
    assert choice.codec == "libx264"
    assert [t["codec"] for t in choice.tried] == list(hwenc.HARDWARE)
    assert all(not t["ok"] and t["reason"] for t in choice.tried)
    assert "no /dev/dri render node" in choice.reason and "h264_nvenc" in choice.reason
    # Forced onto a device that is not a GPU: the trial runs, fails, libx264 takes over.
    forced = hwenc.choose(ffmpeg, "h264_vaapi", {"h264_vaapi"}, "/dev/null")
    assert forced.codec == "libx264" and "failed its trial" in forced.reason
    assert forced.tried[0]["codec"] == "h264_vaapi" and not forced.tried[0]["ok"]
    absent = hwenc.choose(ffmpeg, "h264_qsv", {"libx264"})
    assert absent.codec == "libx264" and "not in this FFmpeg" in absent.reason


def test_hardware_encoder_argv(tmp_path: Path) -> None:
    def argv(codec: str, live: list[dict]) -> list[str]:
        spec = MediaSpec.from_json(json.dumps({
            "lesson_id": "x", "recording": {"dir": str(tmp_path)}, "live": live,
            "encoder": {"codec": codec, "hw_device": "/dev/dri/renderD128"}}))
        return build_argv(spec, list_path=tmp_path / "l.csv")

    vaapi = argv("h264_vaapi", [{"name": "w", "url": "https://h/whip", "protocol": "whip"}])
    assert vaapi[vaapi.index("-init_hw_device") + 1] == "vaapi=hw:/dev/dri/renderD128"
    assert vaapi.index("-init_hw_device") < vaapi.index("-i")
    assert vaapi[vaapi.index("-vf") + 1] == "format=nv12,hwupload"
    assert vaapi[vaapi.index("-c:v") + 1] == "h264_vaapi" and "-preset" not in vaapi
    assert vaapi[vaapi.index("-profile:v") + 1] == "constrained_baseline"
    nvenc = argv("h264_nvenc", [])
    assert nvenc[nvenc.index("-c:v") + 1] == "h264_nvenc" and "-profile:v" not in nvenc
    x264 = argv("libx264", [])
    assert x264[x264.index("-c:v") + 1:x264.index("-c:v") + 5] == [
        "libx264", "-preset", "veryfast", "-tune"]
