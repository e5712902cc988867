"""Which H.264 encoder a lesson uses: ``media.encoder.codec: auto`` prefers working hardware.

Classroom PCs are Celerons and i3s with an Intel GPU: x264 at 1080p30 takes a large share of
their CPU, the GPU's encoder almost none. Whether a hardware encoder *works* (driver installed,
device node readable by the agent's user, the codec enabled) cannot be read from a list, so
``auto`` tries each candidate FFmpeg has (VAAPI, then QSV, then NVENC) with a one-frame encode,
once at start, and takes the first that succeeds; libx264 otherwise. The choice and the reason
(with each candidate's own failure) go into the status and the lesson evidence. Runs in the
daemon: subprocesses only.
"""

from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

HARDWARE = ("h264_vaapi", "h264_qsv", "h264_nvenc")
TRIAL_TIMEOUT_S = 15.0
_TRIAL_SOURCE = ["-f", "lavfi", "-i", "color=c=gray:s=256x144:r=30:d=0.1", "-frames:v", "1"]


@dataclass(frozen=True)
class Choice:
    codec: str
    reason: str
    device: str = ""
    tried: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"codec": self.codec, "reason": self.reason, "device": self.device,
                "tried": list(self.tried)}


def render_node(configured: str = "") -> str:
    """The DRM render node for VAAPI/QSV: the configured one, else the first found, else ""."""
    if configured:
        return configured
    nodes = sorted(glob.glob("/dev/dri/renderD*"))
    return nodes[0] if nodes else ""


def hw_args(codec: str, device: str) -> tuple[list[str], list[str]]:
    """(global options before the inputs, video options after them) to encode with ``codec``:
    device set-up and the upload of the frames into GPU memory where the encoder needs it."""
    if codec == "h264_vaapi":
        return (["-init_hw_device", f"vaapi=hw:{device}", "-filter_hw_device", "hw"],
                ["-vf", "format=nv12,hwupload", "-c:v", codec, "-bf", "0"])
    if codec == "h264_qsv":
        return (["-init_hw_device", f"vaapi=va:{device}", "-init_hw_device", "qsv=hw@va",
                 "-filter_hw_device", "hw"],
                ["-vf", "format=nv12,hwupload=extra_hw_frames=16", "-c:v", codec, "-bf", "0",
                 "-low_power", "1"])
    if codec == "h264_nvenc":
        return [], ["-c:v", codec, "-preset", "p1", "-tune", "ll", "-zerolatency", "1",
                    "-bf", "0"]
    return [], ["-c:v", codec]


def trial(ffmpeg: str, codec: str, device: str = "") -> str:
    """Encode one frame with ``codec``; "" when it worked, else FFmpeg's reason."""
    pre, post = hw_args(codec, device)
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", *pre, *_TRIAL_SOURCE,
            *post, "-f", "null", "-"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no answer within {TRIAL_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return f"cannot run {ffmpeg}: {exc}"
    if out.returncode == 0:
        return ""
    lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
    return "; ".join(lines[-2:])[:300] or f"exit code {out.returncode}"


def _precondition(codec: str, device: str) -> str:
    """Why a trial cannot succeed without running it (no device node), or ""."""
    if codec in ("h264_vaapi", "h264_qsv"):
        if not device:
            return "no /dev/dri render node (no GPU driver loaded)"
        if not os.access(device, os.R_OK | os.W_OK):
            return f"{device} is not readable and writable by this user (add it to group render)"
    if codec == "h264_nvenc" and not os.path.exists("/dev/nvidiactl"):
        return "no /dev/nvidiactl (no NVIDIA driver)"
    return ""


def choose(ffmpeg: str, wanted: str, encoders: frozenset[str] | set[str],
           device: str = "") -> Choice:
    """The encoder for ``media.encoder.codec`` (``auto`` or a name) on this machine."""
    node = render_node(device)
    if wanted != "auto":
        if wanted not in encoders:
            return Choice("libx264", f"{wanted} is not in this FFmpeg; using libx264")
        why = _precondition(wanted, node) or trial(ffmpeg, wanted, node)
        if why:
            return Choice("libx264", f"{wanted} failed its trial ({why}); using libx264",
                          tried=({"codec": wanted, "ok": False, "reason": why},))
        return Choice(wanted, "configured, trial encode ok", node,
                      ({"codec": wanted, "ok": True, "reason": ""},))
    tried = []
    for codec in HARDWARE:
        if codec not in encoders:
            tried.append({"codec": codec, "ok": False, "reason": "not in this FFmpeg"})
            continue
        why = _precondition(codec, node) or trial(ffmpeg, codec, node)
        tried.append({"codec": codec, "ok": not why, "reason": why})
        if not why:
            return Choice(codec, "auto: hardware trial encode ok", node, tuple(tried))
    summary = "; ".join(f"{t['codec']}: {t['reason']}" for t in tried)
    return Choice("libx264", f"auto: no working hardware encoder ({summary})", tried=tuple(tried))
