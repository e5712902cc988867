"""CPU of the whole media pipeline against a bare FFmpeg doing the same encode.

Pipeline: the real worker (``python -m agent.media.worker`` under MediaSupervisor), counted with
every FFmpeg it starts (utime+stime of the tree, from /proc, including reaped children).
Bare: one ``ffmpeg`` with the same size, fps, preset, bit rates, GOP and outputs (MPEG-TS
segments, and with ``--sink`` FLV to the same RTMP receiver), fed the same kind of source: for
``synthetic``, FFmpeg's own testsrc2 + sine (``-re``); for ``udp``, the same UDP MPEG-TS stream
the worker reads (sent by a third FFmpeg that neither side is charged for). Both run alone, one
after the other, and are measured for ``--seconds`` after ``--warmup``. The pipeline's CPU is also
given per part: the worker (Python), the encoding FFmpeg, the FFmpeg reading a network camera
(agent/media/netsource.py), live sinks.

``--worker-root DIR`` runs the worker from another checkout of the repository (e.g. a
``git worktree add --detach DIR COMMIT`` of the commit before a change), so that two code paths
are measured by the same bench on the same machine, one after the other.

``--conversions`` measures instead what a local camera's frames cost to turn into the encoder's
I420, per frame (CPU time of all threads, OpenCV's included) on synthetic frames made by FFmpeg,
since these machines have no camera and cannot load v4l2loopback: YUYV through BGR (what OpenCV
gives with CAP_PROP_CONVERT_RGB on, then the worker's cvtColor) against YUYV straight to I420 (the
camera's own format kept, NumPy slicing); MJPEG decoded by OpenCV to BGR then cvtColor against
MJPEG decoded by libavcodec (PyAV) to yuvj422p and scaled to yuv420p.

Usage: python bench/media_cpu.py [--seconds 20] [--warmup 10] [--sizes 1280x720,1920x1080]
       [--fps 30] [--sources synthetic,udp] [--sink] [--ffmpeg bundled|system|PATH]
       [--worker-root DIR]
       python bench/media_cpu.py --conversions [--sizes ...] [--fps 30]
Target: pipeline / bare <= 1.25.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _benchlib import (
    ROOT,
    add_ffmpeg_arg,
    cpu_by_pid,
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
    parts: dict[str, float]  # % of one core per part of the pipeline


def role(pid: int) -> str:
    """What a process of the pipeline is, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "gone"
    if b"agent.media.worker" in argv:
        return "worker (Python)"
    if b"agent.media.pusher" in argv:
        return "live sink"
    if b"concat" in argv and b"rawvideo" in argv:
        return "camera reader (FFmpeg)"
    if b"tee" in argv:
        return "encoder (FFmpeg)"
    return "other"


def measure(pid: int, warmup: float, seconds: float) -> Figure:
    time.sleep(warmup)
    c0, t0 = cpu_by_pid(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_by_pid(pid), time.monotonic()
    parts: dict[str, float] = {}
    for p, c in c1.items():  # a process started in the window counts from 0
        name = role(p)
        parts[name] = parts.get(name, 0.0) + 100 * (c - c0.get(p, 0.0)) / (t1 - t0)
    return Figure(sum(parts.values()), memory(pid).rss_kb / 1024, parts)


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
    here = Path.cwd()
    if args.worker_root:  # `python -m agent.media.worker` imports from its working directory
        os.chdir(args.worker_root)
    try:
        sup.start(spec)
        deadline = time.monotonic() + 30
        while not started:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start within 30 s; see the log above")
            time.sleep(0.1)
    finally:
        os.chdir(here)
    try:
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


def yuyv_to_i420(yuyv: Any, out: Any) -> Any:
    """YUYV (h, w, 2) -> I420 (h*3/2, w): luma copied, chroma of the even rows (4:2:2 -> 4:2:0
    by dropping the odd rows' chroma, as cheap as it gets)."""
    h, w = yuyv.shape[:2]
    out[:h] = yuyv[:, :, 0]
    chroma = yuyv[0::2, :, 1]  # U V U V ... on the even rows
    out[h:h + h // 4].reshape(h // 2, w // 2)[:] = chroma[:, 0::2]
    out[h + h // 4:].reshape(h // 2, w // 2)[:] = chroma[:, 1::2]
    return out


def cpu_ms(fn: Callable[[], Any], frames: int) -> float:
    """CPU milliseconds per call (all threads of this process), after one warm-up call."""
    fn()
    c0 = time.process_time()
    for _ in range(frames):
        fn()
    return (time.process_time() - c0) * 1000 / frames


def conversions(sizes: list[tuple[int, int]], fps: int, frames: int = 150) -> None:
    print(f"\nLocal camera frames -> the encoder's I420, CPU ms per frame (% of one core at "
          f"{fps} fps); {machine_line()}:")
    for width, height in sizes:
        for name, fn in conversion_paths(width, height).items():
            ms = cpu_ms(fn, frames)
            print(f"  {width}x{height} {name:30} {ms:6.2f} ms  {ms * fps / 10:5.1f} %")


def conversion_paths(width: int, height: int) -> dict[str, Callable[[], Any]]:
    """Each way from a camera format to I420, as a call on one synthetic frame."""
    import av
    import cv2
    import numpy as np

    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s={width}x{height}",
         "-frames:v", "1", "-pix_fmt", "yuyv422", "-f", "rawvideo", "-"],
        capture_output=True, check=True).stdout
    yuyv = np.frombuffer(raw, np.uint8).reshape(height, width, 2)
    bgr = cv2.cvtColor(yuyv, cv2.COLOR_YUV2BGR_YUYV)
    ok, jpeg = cv2.imencode(".jpg", bgr, [
        cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422])  # webcams send 4:2:2 MJPEG
    assert ok
    packet = jpeg.tobytes()
    decoder = av.CodecContext.create("mjpeg", "r")
    out = np.empty((height * 3 // 2, width), np.uint8)

    def mjpeg_pyav() -> Any:
        (frame,) = decoder.decode(av.Packet(packet))
        return frame.reformat(format="yuv420p").to_ndarray()

    rows = {
        "YUYV -> BGR -> I420 (today)": lambda: cv2.cvtColor(
            cv2.cvtColor(yuyv, cv2.COLOR_YUV2BGR_YUYV), cv2.COLOR_BGR2YUV_I420),
        "YUYV -> I420 (own format)": lambda: yuyv_to_i420(yuyv, out),
        "MJPEG -> BGR -> I420 (today)": lambda: cv2.cvtColor(
            cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2YUV_I420),
        "MJPEG -> yuv420p (PyAV)": mjpeg_pyav,
    }
    return rows


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
    # 10 s: a bare FFmpeg reading UDP probes the stream for 5-6 s before it encodes (measured),
    # so a 5 s warm-up started its window before its work and understated the bare figure
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--sources", default="synthetic,udp")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=2500, help="video kbit/s")
    add_ffmpeg_arg(ap)
    ap.add_argument("--sink", action="store_true",
                    help="also push one RTMP live sink (worker: its FLV output and remux "
                         "process; bare: a second tee output)")
    ap.add_argument("--worker-root", default="",
                    help="run the worker from this checkout (another commit's code path)")
    ap.add_argument("--conversions", action="store_true",
                    help="measure local-camera frame conversions instead (no pipeline)")
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    if args.conversions:
        conversions([tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")],
                    args.fps)
        return 0
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
          f"{args.ffmpeg}, worker from {args.worker_root or ROOT}); {machine_line()}:")
    print(f"{'config':28} {'pipeline':>9} {'bare':>7} {'ratio':>6} {'RSS MB':>14}")
    ok = True
    for label, pipe, bare in rows:
        ratio = pipe.cpu_pct / bare.cpu_pct if bare.cpu_pct else float("inf")
        ok &= ratio <= TARGET_RATIO
        print(f"{label:28} {pipe.cpu_pct:8.1f}% {bare.cpu_pct:6.1f}% {ratio:6.2f} "
              f"{pipe.rss_mb:6.0f} / {bare.rss_mb:4.0f}")
        print("    pipeline parts: " + ", ".join(
            f"{name} {pct:.1f}%" for name, pct in sorted(pipe.parts.items(),
                                                          key=lambda kv: -kv[1])))
    print(f"target: ratio <= {TARGET_RATIO}: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
