"""CPU of the whole media pipeline against a bare FFmpeg doing the same encode.

Pipeline: the real worker (``python -m agent.media.worker`` under MediaSupervisor), counted with
every FFmpeg it starts (utime+stime of the tree, from /proc, including reaped children).
Bare: one ``ffmpeg`` with the same size, fps, preset, bit rates, GOP and outputs (MPEG-TS
segments, and with ``--sink`` FLV to the same RTMP receiver), fed the same kind of source: for
``synthetic``, FFmpeg's own testsrc2 + sine (``-re``); for ``udp``, the same UDP MPEG-TS stream
the worker reads (sent by a third FFmpeg that neither side is charged for). Both run alone, one
after the other, and are measured for ``--seconds`` after ``--warmup``.

Usage: python bench/media_cpu.py [--seconds 20] [--sizes 1280x720,1920x1080] [--fps 30]
       [--sources synthetic,udp] [--sink]
Target: pipeline / bare <= 1.25.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _benchlib import (
    ROOT,
    add_ffmpeg_arg,
    cpu_seconds,
    ffmpeg_path,
    free_port,
    log,
    machine_line,
    memory,
    sigterm_as_interrupt,
    stop_process,
)

TARGET_RATIO = 1.25


@dataclass
class Figure:
    cpu_pct: float   # % of one core
    rss_mb: float


def measure(pid: int, warmup: float, seconds: float) -> Figure:
    time.sleep(warmup)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return Figure(100 * (c1 - c0) / (t1 - t0), memory(pid).rss_kb / 1024)


@contextlib.contextmanager
def udp_sender(width: int, height: int, fps: int) -> Iterator[str]:
    """A camera stand-in: H.264 MPEG-TS over UDP in real time (MEDIA-NOTES)."""
    port = free_port()
    proc = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", f"testsrc2=s={width}x{height}:r={fps}", "-c:v", "libx264", "-preset",
         "ultrafast", "-tune", "zerolatency", "-g", str(fps), "-f", "mpegts",
         f"udp://127.0.0.1:{port}?pkt_size=1316"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        yield f"udp://127.0.0.1:{port}"
    finally:
        stop_process(proc, "udp sender", timeout=5)


def run_pipeline(args: argparse.Namespace, width: int, height: int, source: str,
                 folder: Path, sink_url: str | None) -> Figure:
    from agent.media.spec import MediaSpec
    from agent.media.supervisor import MediaSupervisor

    spec = MediaSpec.from_json(json.dumps({
        "lesson_id": "bench",
        "video": {"source": source, "width": width, "height": height, "fps": args.fps},
        "audio": {"source": "synthetic", "rate": 48000, "channels": 2},
        "encoder": {"video_bitrate_kbps": args.bitrate, "audio_bitrate_kbps": 128,
                    "preset": args.preset, "gop_s": 2.0},
        "live": [{"name": "rtmp", "url": sink_url}] if sink_url else [],
        "recording": {"dir": str(folder / "pipeline"), "segment_s": 60.0},
        "ffmpeg": ffmpeg_path(args.ffmpeg),
    }))
    started: list[dict] = []
    sup = MediaSupervisor(lambda line: started.append(line) if line["type"] == "started"
                          else None)
    sup.start(spec)
    try:
        deadline = time.monotonic() + 30
        while not started:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start within 30 s; see the log above")
            time.sleep(0.1)
        return measure(int(started[0]["pid"]), args.warmup, args.seconds)
    finally:
        sup.stop()


def bare_argv(args: argparse.Namespace, width: int, height: int, source: str,
              folder: Path, sink_url: str | None) -> list[str]:
    gop = round(args.fps * 2.0)
    kbps = args.bitrate
    if source == "synthetic":
        video = ["-re", "-f", "lavfi", "-i", f"testsrc2=s={width}x{height}:r={args.fps}"]
    else:
        video = ["-i", f"{source}?overrun_nonfatal=1&fifo_size=5000000"]
    outputs = [f"[f=segment:segment_time=60:segment_format=mpegts]{folder}/bare-%05d.ts"]
    if sink_url:
        outputs.append(f"[f=flv]{sink_url}")
    return [ffmpeg_path(args.ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            *video,
            "-re", "-f", "lavfi", "-i", "sine=f=440:r=48000", "-map", "0:v:0", "-map", "1:a:0",
            "-c:v", "libx264", "-preset", args.preset, "-tune", "zerolatency",
            "-pix_fmt", "yuv420p", "-r", str(args.fps), "-g", str(gop), "-keyint_min", str(gop),
            "-sc_threshold", "0", "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k",
            "-bufsize", f"{kbps}k", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
            "-f", "tee", "|".join(outputs)]


def run_bare(args: argparse.Namespace, width: int, height: int, source: str,
             folder: Path, sink_url: str | None) -> Figure:
    proc = subprocess.Popen(bare_argv(args, width, height, source, folder, sink_url),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        return measure(proc.pid, args.warmup, args.seconds)
    finally:
        stop_process(proc, "bare ffmpeg", timeout=10)


@contextlib.contextmanager
def rtmp_receiver(folder: Path, name: str) -> Iterator[str]:
    """An FFmpeg RTMP listener (not measured) so the sink has somewhere to push."""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/bench"
    proc = subprocess.Popen(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                             "-listen", "1", "-timeout", "60", "-i", url, "-c", "copy",
                             "-f", "flv", str(folder / f"{name}.flv")], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, "rtmp receiver", timeout=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--sources", default="synthetic,udp")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=2500, help="video kbit/s")
    add_ffmpeg_arg(ap)
    ap.add_argument("--sink", action="store_true",
                    help="also push one RTMP live sink (worker: its FLV output and remux "
                         "process; bare: a second tee output)")
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-media-cpu-") as tmp:
        folder = Path(tmp)
        for size in args.sizes.split(","):
            width, height = (int(x) for x in size.split("x"))
            for kind in args.sources.split(","):
                with contextlib.ExitStack() as stack:
                    source = kind if kind == "synthetic" else stack.enter_context(
                        udp_sender(width, height, args.fps))
                    label = f"{size}@{args.fps} {kind}"
                    url = stack.enter_context(rtmp_receiver(folder, "p")) if args.sink else None
                    log(f"{label}: pipeline (worker + FFmpeg children)")
                    pipe = run_pipeline(args, width, height, source, folder, url)
                    url = stack.enter_context(rtmp_receiver(folder, "b")) if args.sink else None
                    log(f"{label}: bare ffmpeg")
                    bare = run_bare(args, width, height, source, folder, url)
                rows.append((label, pipe, bare))
                log(f"{label}: pipeline {pipe.cpu_pct:.1f}% vs bare {bare.cpu_pct:.1f}%; "
                    f"{machine_line()}")
    print(f"\nCPU, % of one core ({args.preset}, {args.bitrate} kbit/s, "
          f"{args.seconds:.0f} s{', one RTMP sink' if args.sink else ''}, FFmpeg "
          f"{args.ffmpeg}); {machine_line()}:")
    print(f"{'config':28} {'pipeline':>9} {'bare':>7} {'ratio':>6} {'RSS MB':>14}")
    ok = True
    for label, pipe, bare in rows:
        ratio = pipe.cpu_pct / bare.cpu_pct if bare.cpu_pct else float("inf")
        ok &= ratio <= TARGET_RATIO
        print(f"{label:28} {pipe.cpu_pct:8.1f}% {bare.cpu_pct:6.1f}% {ratio:6.2f} "
              f"{pipe.rss_mb:6.0f} / {bare.rss_mb:4.0f}")
    print(f"target: ratio <= {TARGET_RATIO}: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
