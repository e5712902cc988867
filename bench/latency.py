"""Capture-to-receiver latency of the live stream, RTMP and SRT, on loopback.

Every synthetic frame carries its capture time (epoch ms) as a row of black/white blocks (the
time strip, agent/media/timestrip.py). The real worker runs under MediaSupervisor with both
sinks; each receiver is an FFmpeg listener that decodes (one thread, low_delay) and writes only
the strip, as grey raw video, to a pipe. Latency = the time a decoded frame arrives here minus
the time written in it: capture, pacing, encode, the sink's queue and remux, transport, receive
and decode.

Usage: python bench/latency.py [--seconds 30] [--size 1280x720] [--fps 30] [--srt-latency-ms 120]
Target: RTMP p95 <= 120 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _benchlib import ROOT, free_port, log, sigterm_as_interrupt, stop_process

from agent.media.timestrip import BITS, block_size, crop_filter, read_strip

TARGET_RTMP_P95_MS = 120.0

# --- receivers that decode --------------------------------------------------------------------

@dataclass
class StripReceiver:
    """An FFmpeg listener decoding to the strip only; a thread timestamps each frame."""

    name: str
    listen_argv: list[str]      # input options and -i URL
    width: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (arrival, capture)
    unreadable: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        b = block_size(self.width)
        crop = crop_filter(self.width)
        argv = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                "-threads", "1", "-flags", "low_delay", "-fflags", "nobuffer",
                "-analyzeduration", "500000", *self.listen_argv,
                "-an", "-vf", crop, "-fps_mode", "passthrough", "-f", "rawvideo",
                "-flush_packets", "1", "pipe:1"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        threading.Thread(target=self._read, args=(BITS * b * b, b), daemon=True).start()

    def _read(self, frame_bytes: int, b: int) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        while True:
            data = out.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            arrival = time.time()
            gray = np.frombuffer(data, np.uint8).reshape(b, BITS * b)
            captured = read_strip(gray, arrival)
            if captured is None:
                self.unreadable += 1
            else:
                self.samples.append((arrival, captured))

    def stop(self) -> None:
        stop_process(self.proc, self.name, timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def latencies_ms(self, since: float) -> list[float]:
        return [(a - c) * 1000 for a, c in list(self.samples) if a >= since]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=2500, help="video kbit/s")
    ap.add_argument("--srt-latency-ms", type=int, default=120)
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    from agent.media.spec import MediaSpec
    from agent.media.supervisor import MediaSupervisor

    width, height = (int(x) for x in args.size.split("x"))
    rtmp_port, srt_port = free_port(), free_port()
    rtmp_url = f"rtmp://127.0.0.1:{rtmp_port}/live/bench"
    receivers = [
        StripReceiver("rtmp", ["-listen", "1", "-timeout", "60", "-i", rtmp_url], width),
        StripReceiver("srt", ["-i", f"srt://127.0.0.1:{srt_port}?mode=listener&latency="
                                    f"{args.srt_latency_ms * 1000}"], width),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        spec = MediaSpec.from_json(json_spec(args, width, height, Path(tmp), [
            ("rtmp", rtmp_url),
            ("srt", f"srt://127.0.0.1:{srt_port}?latency={args.srt_latency_ms}")]))
        stats: list[dict] = []
        sup = MediaSupervisor(lambda line: stats.append(line) if line["type"] == "stats"
                              else None)
        try:
            for r in receivers:
                r.start()
            time.sleep(0.5)
            log(f"worker: synthetic {width}x{height}@{args.fps}, {args.preset}, "
                f"{args.bitrate} kbit/s; sinks rtmp and srt (latency {args.srt_latency_ms} ms)")
            sup.start(spec)
            time.sleep(args.warmup)
            since = time.time()
            log(f"measuring for {args.seconds:.0f} s")
            time.sleep(args.seconds)
            summary = sup.stop()
        finally:
            if sup.running():
                sup.stop()
            for r in receivers:
                r.stop()
    print(f"\nCapture -> receiver decode latency, {width}x{height}@{args.fps}, loopback "
          f"(ms):")
    print(f"{'sink':6} {'frames':>7} {'p50':>7} {'p95':>7} {'max':>7} {'unreadable':>10}")
    ok = True
    for r in receivers:
        lat = r.latencies_ms(since)
        if not lat:
            print(f"{r.name:6} no frames decoded (receiver failed?)")
            ok = False
            continue
        p95 = percentile(lat, 95)
        print(f"{r.name:6} {len(lat):7d} {statistics.median(lat):7.1f} {p95:7.1f} "
              f"{max(lat):7.1f} {r.unreadable:10d}")
        if r.name == "rtmp" and p95 > TARGET_RTMP_P95_MS:
            ok = False
    expected = args.seconds * args.fps
    for r in receivers:
        got = len(r.latencies_ms(since))
        if got < 0.95 * expected:
            print(f"{r.name}: only {got} of ~{expected:.0f} frames arrived")
    if summary:
        print(f"live seconds: {summary.get('live_s')}")
    print(f"target: RTMP p95 <= {TARGET_RTMP_P95_MS:.0f} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


def json_spec(args: argparse.Namespace, width: int, height: int, folder: Path,
              sinks: list[tuple[str, str]]) -> str:
    import json

    return json.dumps({
        "lesson_id": "bench",
        "video": {"source": "synthetic", "width": width, "height": height, "fps": args.fps},
        "audio": {"source": "synthetic", "rate": 48000, "channels": 2},
        "encoder": {"video_bitrate_kbps": args.bitrate, "audio_bitrate_kbps": 128,
                    "preset": args.preset, "gop_s": 2.0},
        "live": [{"name": n, "url": u} for n, u in sinks],
        "recording": {"dir": str(folder / "rec"), "segment_s": 60.0},
    })


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
