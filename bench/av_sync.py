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

Usage: python bench/av_sync.py [--minutes 5] [--size 1920x1080] [--fps 30]
Targets: median offset within EBU R37's -40 ms (sound early) .. +60 ms (sound late), spread
(p95 - p5) <= 40 ms, drift <= 10 ms over the run, <= 0.1% frames dropped. The detector itself
was checked on FFmpeg-made beeps (aevalsrc -> AAC -> MPEG-TS): onsets within 0.5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _benchlib import ROOT, log, sigterm_as_interrupt
from latency import BITS, block_size, percentile, read_strip, worker_wrapper

RATE = 48000
BEEP_HZ = 1000.0
AVERAGE = 600  # samples: multiple of 48000/560 and 48000/1440 (440 Hz after demodulation)
TARGET_EARLY_MS, TARGET_LATE_MS = -40.0, 60.0  # EBU R37
TARGET_SPREAD_MS, TARGET_DRIFT_MS, TARGET_DROPPED = 40.0, 10.0, 0.001


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
    }))
    sup = MediaSupervisor(lines.append, python=worker_wrapper(folder))
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


def video_frames(path: Path, width: int) -> list[tuple[float, float | None]]:
    """(PTS, capture time or None) of every frame, in order (decoded as a stream: 1 MB/s)."""
    b = block_size(width)
    size = BITS * b * b
    captures: list[float | None] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts", "-i",
             str(path), "-an", "-vf", f"crop={BITS * b}:{b}:0:0,format=gray,showinfo",
             "-fps_mode", "passthrough", "-f", "rawvideo", "pipe:1"],
            stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        while len(data := proc.stdout.read(size)) == size:
            captures.append(read_strip(np.frombuffer(data, np.uint8).reshape(b, BITS * b)))
        proc.wait()
        err.seek(0)
        pts = [float(tok.split(":", 1)[1])
               for line in err.read().decode(errors="replace").splitlines()
               if "Parsed_showinfo" in line and " pts_time:" in line
               for tok in line.split() if tok.startswith("pts_time:")]
    if len(captures) != len(pts):
        raise SystemExit(f"decoded {len(captures)} frames but showinfo listed {len(pts)}")
    return list(zip(pts, captures, strict=True))


def audio_onsets(path: Path) -> list[float]:
    """PTS of every beep onset."""
    start = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "frame=pts_time",
         "-read_intervals", "%+#1", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True).stdout.split()[0]
    pcm = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map",
         "0:a:0", "-ac", "1", "-ar", str(RATE), "-f", "s16le", "pipe:1"],
        capture_output=True, check=True).stdout
    x = np.frombuffer(pcm, np.int16).astype(np.float64) / 32768
    n = np.arange(len(x))
    base = x * np.exp(-2j * np.pi * BEEP_HZ * n / RATE)
    csum = np.concatenate(([0], np.cumsum(base)))
    level = np.abs(csum[AVERAGE:] - csum[:-AVERAGE]) / AVERAGE  # centred at i + AVERAGE/2
    half = level.max() / 2
    above = level > half
    rises = np.flatnonzero(~above[:-1] & above[1:])
    onsets = []
    last = -1
    for i in rises:
        # hysteresis: a new beep only after the level fell below a quarter since the last one
        if last >= 0 and level[last:i].min() > half / 2:
            continue
        last = i
        frac = (half - level[i]) / (level[i + 1] - level[i])
        onsets.append(float(start) + (i + frac + AVERAGE / 2) / RATE)
    return onsets


def offsets(frames: list[tuple[float, float | None]], onsets: list[float]) -> list[float]:
    """Audio beep PTS minus video PTS at the same capture second, in ms."""
    known = [(p, c) for p, c in frames if c is not None]
    crossings: dict[int, float] = {}
    for (p0, c0), (p1, c1) in itertools.pairwise(known):
        second = int(c1)
        if int(c0) < second and c1 > c0:
            crossings[second] = p0 + (second - c0) / (c1 - c0) * (p1 - p0)
    if not crossings:
        return []
    first_second, first_pts = min(crossings.items())
    result = []
    for onset in onsets:
        # the second this beep belongs to, from the video's mapping of PTS to capture time
        second = first_second + round(onset - first_pts)
        if second in crossings:
            result.append((onset - crossings[second]) * 1000)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=4000, help="video kbit/s")
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    width, height = (int(x) for x in args.size.split("x"))
    lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-av-sync-") as tmp:
        folder = Path(tmp)
        log(f"recording {args.minutes:g} min of synthetic {args.size}@{args.fps} "
            f"({args.preset}, {args.bitrate} kbit/s)")
        summary = record(args, width, height, folder, lines)
        if not summary or not summary["segments"]:
            raise SystemExit("no segments recorded; see the worker's log above")
        joined = folder / "joined.ts"
        with joined.open("wb") as out:
            for seg in summary["segments"]:
                out.write(Path(seg["path"]).read_bytes())
        log(f"analysing {len(summary['segments'])} segments ({joined.stat().st_size >> 20} MB)")
        frames = video_frames(joined, width)
        onsets = audio_onsets(joined)
    caps = [c for _, c in frames if c is not None]
    steps = np.diff(np.array(caps)) * args.fps
    repeated = int(np.sum(steps < 0.5))
    dropped = int(sum(round(s) - 1 for s in steps if s > 1.5))
    stats = next((x for x in reversed(lines) if x.get("type") == "stats"), {})
    off = offsets(frames, onsets)
    print(f"\nA/V sync, {args.size}@{args.fps}, {args.minutes:g} min, recorded "
          f"{summary['recorded_s']:.1f} s in {len(summary['segments'])} segments:")
    print(f"  video: {len(frames)} frames ({len(frames) / max(1e-9, summary['recorded_s']):.2f}"
          f" fps), {len(frames) - len(caps)} with an unreadable strip; from capture times: "
          f"{repeated} repeated, {dropped} dropped")
    print(f"  worker counters: {stats.get('video')}")
    ok = dropped <= TARGET_DROPPED * len(frames)
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
    ok &= TARGET_EARLY_MS <= statistics.median(off) <= TARGET_LATE_MS
    ok &= spread <= TARGET_SPREAD_MS
    ok &= abs(drift) <= TARGET_DRIFT_MS
    print(f"targets (median {TARGET_EARLY_MS:+.0f}..{TARGET_LATE_MS:+.0f} ms, "
          f"p95-p5 <= {TARGET_SPREAD_MS:.0f} ms,"
          f" |drift| <= {TARGET_DRIFT_MS:.0f} ms, dropped <= {TARGET_DROPPED:.1%}): "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
