"""Frames dropped and A/V offset of a recorded lesson over N minutes (default 1080p30).

The real worker records synthetic sources: every frame carries its capture time in the time
strip (bench/latency.py) and the audio beeps (1 kHz) at each wall-clock second. Afterwards the
segments are concatenated and analysed:

* video: every frame's PTS and capture time (FFmpeg decodes the strip only, with -copyts so
  PTS are the file's). A capture-time step of 0 is a repeated frame, a step of k/fps (k > 1)
  means k-1 frames dropped; the worker's own counters (last stats line) are printed beside.
* audio: the 1 kHz component is demodulated and averaged over 600 samples (12.5 ms: that nulls
  the 440 Hz tone), so a beep's onset is where its level crosses half the beep level.
* offset: for each second S, the audio PTS of the beep at S minus the video PTS at which the
  capture time passes S (interpolated between the two frames around it). Positive = sound late.

The analysis is tests/media_support.py's (the worker test uses the same on a short lesson).

Usage: python bench/av_sync.py [--minutes 10] [--size 1920x1080] [--fps 30]
Targets (issue 3): 0 frames dropped; every beep within +-40 ms of its picture. The detector
itself was checked on FFmpeg-made beeps (aevalsrc -> AAC -> MPEG-TS): onsets within 0.5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _benchlib import (
    ROOT,
    add_ffmpeg_arg,
    ffmpeg_path,
    log,
    machine_line,
    sigterm_as_interrupt,
)
from latency import percentile

from tests.media_support import av_offsets_from, beep_onsets, frame_steps, video_captures

RATE = 48000
TARGET_OFFSET_MS = 40.0   # every beep within +-40 ms of its picture
TARGET_DROPPED = 0
TARGET_REPEATED = 0


def record(args: argparse.Namespace, width: int, height: int, folder: Path,
           lines: list[dict]) -> dict | None:
    from agent.media.spec import MediaSpec
    from agent.media.supervisor import MediaSupervisor

    spec = MediaSpec.from_json(json.dumps({
        "lesson_id": "bench-av-sync",
        "video": {"source": "synthetic", "width": width, "height": height, "fps": args.fps},
        "audio": {"source": "synthetic", "rate": RATE, "channels": 2},
        "encoder": {"video_bitrate_kbps": args.bitrate, "audio_bitrate_kbps": 128,
                    "preset": args.preset, "gop_s": 2.0},
        "recording": {"dir": str(folder / "rec"), "segment_s": 60.0},
        "ffmpeg": ffmpeg_path(args.ffmpeg),
    }))
    sup = MediaSupervisor(lines.append)
    sup.start(spec)
    try:
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            stats = sup.last_stats() or {}
            log(f"recording: {stats.get('video', {})}")
    finally:
        summary = sup.stop()
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=4000, help="video kbit/s")
    add_ffmpeg_arg(ap)
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    width, height = (int(x) for x in args.size.split("x"))
    lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-av-sync-") as tmp:
        folder = Path(tmp)
        log(f"recording {args.minutes:g} min of synthetic {args.size}@{args.fps} "
            f"({args.preset}, {args.bitrate} kbit/s), FFmpeg {args.ffmpeg}; {machine_line()}")
        summary = record(args, width, height, folder, lines)
        if not summary or not summary["segments"]:
            raise SystemExit("no segments recorded; see the worker's log above")
        joined = folder / "joined.ts"
        with joined.open("wb") as out:
            for seg in summary["segments"]:
                out.write(Path(seg["path"]).read_bytes())
        log(f"analysing {len(summary['segments'])} segments ({joined.stat().st_size >> 20} MB)")
        frames = video_captures(joined, width)
        onsets = beep_onsets(joined, RATE)
    judged = frame_steps(frames, args.fps)
    repeated, dropped, where = judged.repeated, judged.dropped, judged.where
    stats = next((x for x in reversed(lines) if x.get("type") == "stats"), {})
    off = av_offsets_from(frames, onsets)
    print(f"\nA/V sync, {args.size}@{args.fps}, {args.minutes:g} min, recorded "
          f"{summary['recorded_s']:.1f} s in {len(summary['segments'])} segments:")
    print(f"  video: {len(frames)} frames ({len(frames) / max(1e-9, summary['recorded_s']):.2f}"
          f" fps), {judged.unreadable} with an unreadable strip; from capture times: "
          f"{repeated} repeated, {dropped} dropped {where[:10]}")
    print(f"  worker counters: {stats.get('video')}")
    print(f"  {machine_line()} (at the end)")
    ok = dropped <= TARGET_DROPPED and repeated <= TARGET_REPEATED
    if len(off) < 3:
        print(f"  audio: {len(onsets)} beep onsets, {len(off)} matched: cannot measure")
        return 1
    minutes = np.arange(len(off)) / 60
    slope = float(np.polyfit(minutes, off, 1)[0]) if len(off) > 10 else 0.0
    spread = percentile(off, 95) - percentile(off, 5)
    drift = slope * len(off) / 60
    print(f"  audio: {len(onsets)} beeps; offset (audio - video), ms: median "
          f"{statistics.median(off):+.1f}, p5 {percentile(off, 5):+.1f}, "
          f"p95 {percentile(off, 95):+.1f}, min {min(off):+.1f}, max {max(off):+.1f}; "
          f"drift {drift:+.1f} ms over the run")
    ok &= max(abs(x) for x in off) <= TARGET_OFFSET_MS
    print(f"  spread p95 - p5 {spread:.1f} ms")
    print(f"targets (every beep within +-{TARGET_OFFSET_MS:.0f} ms of its picture, "
          f"{TARGET_DROPPED} frames dropped, {TARGET_REPEATED} repeated): "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
