"""A short look at the camera and a listen to the microphone, in a child process of its own.

``classroom-agent doctor`` and the status page's snapshot and level meter need the devices
outside a lesson. Opening a camera can crash or hang in a driver, so it never happens in the
daemon or the CLI: they run ``python -m agent.media.probe`` (agent/media/peek.py does that, with
a deadline) and read JSON lines from it. The capture is the lesson's own
(:mod:`agent.media.sources`: the same synthetic, V4L2, URL and PortAudio readers), so what the
probe sees is what a lesson would get.

Protocol: one JSON line on stdin, ``{"video": VideoSpec|null, "audio": AudioSpec|null,
"seconds": float, "jpeg_width": int, "level_every_s": float}``. Output lines:

- ``{"type": "ready"}`` once its libraries are loaded, before any device is opened (the
  caller's deadline for the devices starts there);
- ``{"type": "level", "rms_dbfs", "peak_dbfs"}`` every ``level_every_s`` while listening;
- one last ``{"type": "result", "video": {...}|null, "audio": {...}|null}``: frames, luma,
  black/frozen, a JPEG (base64, only if ``jpeg_width``) for video; chunks, levels and silence
  for audio; ``error`` when the device gave nothing.

Nothing is stored: the picture and the levels exist only in this process's memory and on the
pipe to the caller (docs/privacy.md).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np

from agent.media import health
from agent.media.ffmpeg import FFmpegError, locate
from agent.media.sources import AudioSource, VideoSource
from agent.media.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0
#: How long a device may take to give its first frame or sound (PortAudio and a V4L2 camera
#: can take seconds to open on a busy PC); the look or listen starts with the first data.
OPEN_S = 5.0
#: Below this the microphone gives digital silence: muted, unplugged or a dead source.
DEAD_DBFS = -90.0


def _emit(out: Any, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


def _events(found: list[str]) -> Any:
    def on_event(event: str, _severity: str, message: str, details: dict[str, Any]) -> None:
        if event.endswith("_lost"):
            found.append(str(details.get("reason") or message))
    return on_event


def _failed_to_open(src: Any) -> bool:
    """The device refused to open (absent, busy, no permission): no use waiting for data. A
    device that is only slow to open (PortAudio on a busy PC) is waited for up to OPEN_S."""
    src.check()
    return src.watch.reason.startswith("cannot open")


def look(spec: VideoSpec, seconds: float, jpeg_width: int,
         ffmpeg: str = "ffmpeg") -> dict[str, Any]:
    """Read frames for ``seconds``: how many, how bright, whether they move; one JPEG."""
    problems: list[str] = []
    src = VideoSource(spec, _events(problems), ffmpeg=ffmpeg)
    meter = health.VideoHealth(max_per_s=10.0, hold_s=min(1.0, seconds / 2))
    src.start()
    deadline = time.monotonic() + OPEN_S + seconds
    seq, first, last = 0, None, None
    diffs: list[float] = []
    prev = None
    try:
        while time.monotonic() < deadline:
            frame = src.wait_newer(seq, max(0.0, min(0.5, deadline - time.monotonic())))
            if frame is None or frame.seq == seq:
                if first is None and _failed_to_open(src):
                    break
                continue
            seq = frame.seq
            if first is None:
                first = frame
                deadline = min(deadline, time.monotonic() + seconds)
            last = frame
            thumb = health.thumbnail(frame.image, frame.pix_fmt)
            if prev is not None:
                diffs.append(float(cv2.absdiff(thumb, prev).mean()))
            prev = thumb
            meter.frame(time.monotonic(), frame.image, frame.pix_fmt)
    finally:
        src.stop(timeout=2.0)
    if last is None:
        why = src.watch.reason or (problems[-1] if problems else "no frames")
        return {"ok": False, "frames": 0, "error": why}
    luma = float(health.thumbnail(last.image, last.pix_fmt).mean())
    width, height = last.size
    out: dict[str, Any] = {
        "ok": True, "frames": seq - first.seq + 1 if first else 0,
        "fps": round((seq - first.seq) / max(1e-3, last.t - first.t), 1) if first else 0.0,
        "width": width, "height": height,
        "luma": round(luma, 1), "black": luma < health.BLACK_LUMA,
        "motion": round(max(diffs), 2) if diffs else None,
        "frozen": bool(diffs) and max(diffs) < health.FROZEN_DIFF,
    }
    if jpeg_width:
        w, h = last.size
        width = min(w, jpeg_width)
        small = cv2.resize(last.bgr(), (width, max(1, h * width // w)),
                           interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            out["jpeg"] = base64.b64encode(buf.tobytes()).decode()
    return out


def listen(spec: AudioSpec, seconds: float, every_s: float, out: Any) -> dict[str, Any]:
    """Read the microphone for ``seconds``; a level line every ``every_s``; the overall level."""
    problems: list[str] = []
    src = AudioSource(spec, _events(problems))
    src.start()
    deadline = time.monotonic() + OPEN_S + seconds
    total_sq, total_n, peak, chunks = 0.0, 0, 0.0, 0
    win_sq, win_n, win_peak, win_start = 0.0, 0, 0.0, time.monotonic()
    try:
        while time.monotonic() < deadline:
            chunk = src.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            now = time.monotonic()
            if chunk is None and not chunks and _failed_to_open(src):
                break
            if chunk is not None:
                if not chunks:
                    deadline = min(deadline, now + seconds)
                    win_start = now
                a = np.frombuffer(chunk.data, dtype=np.int16).astype(np.float32)
                sq, pk = float(np.dot(a, a)), float(np.max(np.abs(a))) if a.size else 0.0
                total_sq, total_n, peak, chunks = total_sq + sq, total_n + a.size, max(peak, pk), \
                    chunks + 1
                win_sq, win_n, win_peak = win_sq + sq, win_n + a.size, max(win_peak, pk)
            if every_s and now - win_start >= every_s:
                if win_n:
                    _emit(out, {"type": "level",
                                "rms_dbfs": round(health.dbfs(math.sqrt(win_sq / win_n)), 1),
                                "peak_dbfs": round(health.dbfs(win_peak), 1)})
                win_sq, win_n, win_peak, win_start = 0.0, 0, 0.0, now
    finally:
        src.stop(timeout=2.0)
    if not chunks:
        why = src.watch.reason or (problems[-1] if problems else "no sound data")
        return {"ok": False, "chunks": 0, "error": why}
    rms = health.dbfs(math.sqrt(total_sq / total_n)) if total_n else health.FLOOR_DBFS
    return {"ok": True, "chunks": chunks, "rms_dbfs": round(rms, 1),
            "peak_dbfs": round(health.dbfs(peak), 1),
            "silence": health.dbfs(peak) < health.SILENCE_DBFS,
            "dead": health.dbfs(peak) < DEAD_DBFS}


def _ffmpeg(choice: str) -> str:
    """The executable media.ffmpeg names (a network camera is read by it); the one on PATH if
    that cannot be found (the camera's finding then says what failed)."""
    try:
        return locate(choice)
    except FFmpegError:
        return "ffmpeg"


def run(request: dict[str, Any], out: Any) -> dict[str, Any]:
    seconds = min(MAX_SECONDS, max(0.2, float(request.get("seconds", 1.5))))
    video = request.get("video")
    audio = request.get("audio")
    result: dict[str, Any] = {"type": "result", "video": None, "audio": None}
    heard: dict[str, Any] = {}
    listener = None
    if audio is not None:
        spec = AudioSpec(**audio)
        every = float(request.get("level_every_s", 0.0))
        listener = threading.Thread(
            target=lambda: heard.update(listen(spec, seconds, every, out)),
            name="probe-audio", daemon=True)
        listener.start()
    if video is not None:
        result["video"] = look(VideoSpec(**video), seconds, int(request.get("jpeg_width", 0)),
                               _ffmpeg(str(request.get("ffmpeg") or "system")))
    if listener is not None:
        listener.join(seconds + 5.0)
        result["audio"] = heard or {"ok": False, "chunks": 0, "error": "no answer from the "
                                    "microphone thread"}
    return result


def main() -> None:
    logging.basicConfig(level=os.environ.get("CLASSROOM_AGENT_MEDIA_LOG", "WARNING").upper(),
                        stream=sys.stderr, format="probe[%(process)d] %(levelname)s: %(message)s")
    # The protocol gets a private copy of stdout; C libraries that print go to the log.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _emit(out, {"type": "ready"})
    try:
        request = json.loads(sys.stdin.readline() or "{}")
        result = run(request, out)
    except Exception as exc:  # the caller reports it; a probe must end with a result line
        log.exception("probe failed")
        result = {"type": "result", "error": f"{type(exc).__name__}: {exc}"}
    _emit(out, result)
    sys.stderr.flush()
    os._exit(0)  # capture threads may sit in a driver call: do not wait for them


if __name__ == "__main__":
    main()
