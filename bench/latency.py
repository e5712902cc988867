"""Capture-to-receiver latency of the live stream (RTMP, SRT, WHIP) on loopback, the agent
against a bare FFmpeg in the same run.

Every synthetic frame carries its capture time (epoch ms) as a row of black/white blocks (the
time strip, agent/media/timestrip.py). Receivers: FFmpeg listeners for RTMP and SRT that decode
(one thread, low_delay) and write only the strip to a pipe; for WHIP a real WebRTC peer, aiortc
behind an aiohttp WHIP endpoint (tests/whip_endpoint.py), which decodes the video and the Opus
sound. Latency = the time a decoded frame arrives here minus the time written in it.

Two runs, one after the other, to the same receivers:
- ``agent``: the real worker under MediaSupervisor with an RTMP, an SRT and a WHIP sink;
- ``bare-rtmp``, ``bare-whip``: a Python feeder writing the same synthetic frames and sound
  (paced by the clock) into one FFmpeg with the same encoder settings that pushes straight to
  the RTMP or the WHIP receiver (one at a time, so each encodes once, as the agent does): the
  agent's own cost is the difference.

WHIP also reports the A/V offset at the receiver (each beep against the picture of its second,
both on the receiver's clock) and what the receiver adds: from the first RTP packet of a frame to
its decoded picture (aiortc's jitter buffer and decoder).

``agent-whip-impaired`` and ``bare-whip-impaired`` put a lossy, slow, jittery UDP relay of our own
(tests/netimpair.py; ``--impair LOSS,RTT_MS,JITTER_MS``, default 2 % loss, 80 ms RTT, +-20 ms
jitter each way) between FFmpeg's WHIP muxer and aiortc, for ICE, DTLS and SRTP alike. They
report frames decoded, freezes (gaps between decoded pictures longer than ``--freeze-ms``) and
what the relay did; the agent's run also checks its recording on disk: every frame there, every
time strip readable, none repeated or dropped (the network must not touch it).

Usage: python bench/latency.py [--seconds 30] [--size 1280x720] [--fps 30] [--ffmpeg bundled]
Targets: RTMP p95 <= 120 ms with A/V in sync; WHIP p95 <= 200 ms, A/V within +-40 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _benchlib import (
    ROOT,
    add_ffmpeg_arg,
    ffmpeg_path,
    free_port,
    log,
    machine_line,
    sigterm_as_interrupt,
    stop_process,
)

from agent.media.timestrip import BITS, block_size, crop_filter, read_strip
from tests.media_support import concat_segments, frame_steps, video_captures
from tests.netimpair import Impairment

if TYPE_CHECKING:
    from tests.whip_endpoint import Session

TARGET_RTMP_P95_MS = 120.0
TARGET_WHIP_P95_MS = 200.0
TARGET_WHIP_AV_MS = 40.0
TOKEN = "bench-token"

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
        self.samples, self.unreadable = [], 0
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


def row(name: str, lat: list[float], expected: float, extra: str = "") -> str:
    if not lat:
        return f"{name:14} no frames decoded (receiver or sender failed?)"
    return (f"{name:14} {len(lat):6d}/{expected:<5.0f} {statistics.median(lat):7.1f} "
            f"{percentile(lat, 95):7.1f} {max(lat):7.1f}  {extra}")


# --- the bare FFmpeg ----------------------------------------------------------------------------


class BareSender:
    """The same synthetic frames and sound, paced by the clock, into one FFmpeg with the
    worker's encoder settings, pushing straight to ``outputs`` (a list of argv tails)."""

    def __init__(self, exe: str, args: argparse.Namespace, width: int, height: int,
                 output: list[str], whip: bool, audio: bool = True) -> None:
        from agent.media.synthetic import SyntheticAudio, SyntheticVideo

        self.video = SyntheticVideo(width, height, args.fps)
        self.audio = SyntheticAudio(48000, 2)
        self.fps, self.width, self.height = args.fps, width, height
        gop = round(args.fps * 2.0)
        kbps = args.bitrate
        audio_r, self.audio_w = os.pipe()
        acodec = ["-c:a", "libopus", "-b:a", "96k"] if whip else ["-c:a", "aac", "-b:a", "128k"]
        profile = ["-profile:v", "baseline"] if whip else []
        argv = [exe, "-hide_banner", "-nostdin", "-loglevel", "error",
                "-probesize", "32", "-analyzeduration", "0", "-f", "rawvideo",
                "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-framerate", str(args.fps),
                "-thread_queue_size", "16", "-i", "pipe:0",
                *(["-probesize", "32", "-analyzeduration", "0", "-f", "s16le", "-ar", "48000",
                   "-ch_layout", "stereo", "-thread_queue_size", "64", "-i", f"pipe:{audio_r}"]
                  if audio else []),
                "-c:v", "libx264", "-preset", args.preset, "-tune", "zerolatency", *profile,
                "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
                "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps}k",
                *(acodec if audio else []),
                *args.bare_output_args.split(), *output]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=(audio_r,))
        os.close(audio_r)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._video, daemon=True)]
        if audio:
            self._threads.append(threading.Thread(target=self._audio, daemon=True))
        else:
            os.close(self.audio_w)
        self.t0 = time.monotonic() + 0.1
        for t in self._threads:
            t.start()

    def _video(self) -> None:
        import cv2

        n = 0
        assert self.proc.stdin is not None
        while not self._stop.is_set():
            due = self.t0 + n / self.fps
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            frame = cv2.cvtColor(self.video.frame(n), cv2.COLOR_BGR2YUV_I420)
            try:
                self.proc.stdin.write(frame.tobytes())
            except (BrokenPipeError, ValueError):
                return
            n += 1

    def _audio(self) -> None:
        n, chunk = 0, 480  # 10 ms, as the worker
        # 1024 samples early, as the worker (the AAC encoder's priming)
        early = 1024 / 48000
        with os.fdopen(self.audio_w, "wb") as out:
            while not self._stop.is_set():
                due = self.t0 + (n + chunk) / 48000 - early
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    out.write(self.audio.chunk(chunk, time.time() - chunk / 48000 + early))
                    out.flush()
                except (BrokenPipeError, ValueError):
                    return
                n += chunk

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        stop_process(self.proc, "bare ffmpeg", timeout=10)


# --- one run ------------------------------------------------------------------------------------


def json_spec(args: argparse.Namespace, width: int, height: int, folder: Path,
              sinks: list[dict], exe: str) -> str:
    return json.dumps({
        "lesson_id": "bench",
        "video": {"source": "synthetic", "width": width, "height": height, "fps": args.fps},
        "audio": {"source": "synthetic", "rate": 48000, "channels": 2},
        "encoder": {"video_bitrate_kbps": args.bitrate, "audio_bitrate_kbps": 128,
                    "preset": args.preset, "gop_s": 2.0},
        "live": sinks,
        "recording": {"dir": str(folder / "rec"), "segment_s": 60.0},
        "ffmpeg": exe,
    })


def run(kind: str, args: argparse.Namespace, width: int, height: int, exe: str,
        tmp: Path) -> dict:
    from agent.media.spec import MediaSpec
    from agent.media.supervisor import MediaSupervisor
    from tests.whip_endpoint import WhipEndpoint

    impaired = kind.endswith("-impaired")
    kind = kind.removesuffix("-impaired")
    rtmp_port, srt_port = free_port(), free_port()
    rtmp_url = f"rtmp://127.0.0.1:{rtmp_port}/live/bench"
    rtmp = StripReceiver("rtmp", ["-listen", "1", "-timeout", "60", "-i", rtmp_url], width)
    srt = StripReceiver("srt", ["-i", f"srt://127.0.0.1:{srt_port}?mode=listener&latency="
                                      f"{args.srt_latency_ms * 1000}"], width)
    whip = WhipEndpoint(token=TOKEN, strip_width=width,
                        impairment=args.impairment if impaired else None, seed=1)
    whip.start()
    receivers = {"agent": [rtmp, srt], "bare-rtmp": [rtmp], "agent-rtmp": [rtmp],
                 "bare-rtmp-video": [rtmp]}.get(kind, [])
    for r in receivers:
        r.start()
    time.sleep(0.5)
    senders: list = []
    sup = None
    summary = None
    try:
        if kind.startswith("agent"):
            token = tmp / "token"
            token.write_text(TOKEN)
            token.chmod(0o600)
            sinks = [{"name": "rtmp", "url": rtmp_url},
                     {"name": "srt", "url": f"srt://127.0.0.1:{srt_port}?latency="
                                            f"{args.srt_latency_ms}"},
                     {"name": "whip", "url": whip.url, "protocol": "whip",
                      "token_file": str(token)}]
            if kind != "agent":  # one sink, as a bare FFmpeg pushes to one receiver
                sinks = [s for s in sinks if s["name"] == kind.split("-")[1]]
            sup = MediaSupervisor(lambda _line: None)
            sup.start(MediaSpec.from_json(json_spec(args, width, height, tmp / kind, sinks, exe)))
        elif kind in ("bare-rtmp", "bare-rtmp-video"):
            senders = [BareSender(exe, args, width, height, ["-f", "flv", rtmp_url], False,
                                  audio=kind == "bare-rtmp")]
        else:
            senders = [BareSender(exe, args, width, height, ["-authorization", TOKEN, "-f",
                                                              "whip", whip.url], True)]
        log(f"{kind}: warming up {args.warmup:g} s; {machine_line()}")
        time.sleep(args.warmup)
        since = time.time()
        log(f"{kind}: measuring {args.seconds:g} s")
        time.sleep(args.seconds)
        until = time.time()
        load = machine_line()
    finally:
        if sup is not None:
            summary = sup.stop()
        for s in senders:
            s.stop()
        for r in receivers:
            r.stop()
        whip.stop()
    session = whip.sessions[-1] if whip.sessions else None
    return {"rtmp": rtmp.latencies_ms(since) if rtmp in receivers else [],
            "srt": srt.latencies_ms(since) if srt in receivers else [],
            "session": session if kind in ("agent", "agent-whip", "bare-whip") else None,
            "since": since, "until": until, "load": load, "summary": summary, "impaired": impaired}


# --- the impaired runs -------------------------------------------------------------------------


def check_recording(summary: dict, width: int, fps: int, folder: Path) -> dict:
    """The agent's recording of an impaired run: frames against its length, strips readable,
    capture-time steps (a repeat or a drop there would be the network reaching the recording)."""
    segments = [seg["path"] for seg in summary.get("segments", [])]
    if not segments:
        return {"error": "no segments recorded"}
    judged = frame_steps(video_captures(concat_segments(segments, folder / "joined.ts"), width),
                         fps)
    return {"segments": len(segments), "recorded_s": summary.get("recorded_s", 0.0),
            "expected": round(summary.get("recorded_s", 0.0) * fps), **vars(judged)}


def impairment_lines(args: argparse.Namespace, s: Session | None, r: dict) -> str:
    relay = s.relay if s is not None else None
    out = [f"  path: {args.impairment.describe()}"]
    if relay is not None:
        out.append(f"  relay: to receiver {relay.up.received} datagrams, {relay.up.dropped} "
                   f"dropped; back {relay.down.received}, {relay.down.dropped} dropped")
    if s is not None:
        gaps = s.freezes(r["since"], r["until"], args.freeze_ms / 1000)
        decoded = sum(1 for a, _c in s.video if r["since"] <= a <= r["until"])
        out.append(f"  decoded {decoded} pictures; freezes (> {args.freeze_ms:g} ms): "
                   f"{len(gaps)}, longest {max(gaps, default=0) * 1000:.0f} ms, total "
                   f"{sum(gaps):.2f} s")
    rec = r.get("recording")
    if rec:
        out.append(f"  recording: {rec}" if "error" in rec else
                   f"  recording: {rec['frames']} frames in {rec['segments']} segments "
                   f"({rec['recorded_s']:.1f} s, {rec['expected']} expected), "
                   f"{rec['unreadable']} unreadable, {rec['repeated']} repeated, "
                   f"{rec['dropped']} dropped {rec['where'][:5]}")
    return "\n".join(out)


def impaired_ok(s: Session | None, r: dict) -> bool:
    """The recording must be whole; the live path is reported, not judged (no target yet)."""
    rec = r.get("recording")
    if rec is None:
        return s is not None
    return ("error" not in rec and rec["unreadable"] == 0 and rec["dropped"] == 0
            and abs(rec["frames"] - rec["expected"]) <= 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--bitrate", type=int, default=2500, help="video kbit/s")
    ap.add_argument("--srt-latency-ms", type=int, default=120)
    ap.add_argument("--impair", default="0.02,80,20",
                    help="the *-impaired runs' path: loss (0..1), RTT ms, jitter ms each way")
    ap.add_argument("--bare-output-args", default="",
                    help="extra output options for the bare FFmpeg runs, e.g. "
                         "'-max_interleave_delta 1' (what its muxer's interleaving costs)")
    ap.add_argument("--freeze-ms", type=float, default=200.0,
                    help="a gap between decoded pictures longer than this is a freeze")
    ap.add_argument("--runs", default="agent-rtmp,bare-rtmp,agent-whip,bare-whip",
                    help="any of agent (all three sinks), agent-rtmp, agent-whip, bare-rtmp, "
                         "bare-whip, bare-rtmp-video (no sound: what waiting for it costs), "
                         "agent-whip-impaired, bare-whip-impaired (through --impair)")
    add_ffmpeg_arg(ap)
    args = ap.parse_args()
    sigterm_as_interrupt()
    sys.path.insert(0, str(ROOT))
    loss, rtt, jitter = (float(x) for x in args.impair.split(","))
    args.impairment = Impairment(loss=loss, delay_ms=rtt / 2, jitter_ms=jitter)
    exe = ffmpeg_path(args.ffmpeg)
    width, height = (int(x) for x in args.size.split("x"))
    results: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for i, kind in enumerate(args.runs.split(",")):
            folder = Path(tmp) / f"{i}-{kind}"
            folder.mkdir()
            r = run(kind, args, width, height, exe, folder)
            if r["impaired"] and r["summary"]:
                r["recording"] = check_recording(r["summary"], width, args.fps, folder)
            results.append((kind.removesuffix("-impaired"), r))
    expected = args.seconds * args.fps
    print(f"\nCapture -> decoded frame at the receiver, {width}x{height}@{args.fps}, "
          f"{args.preset}, {args.bitrate} kbit/s, loopback, FFmpeg {args.ffmpeg} ({exe}):")
    if args.bare_output_args:
        print(f"bare FFmpeg runs with the extra output options: {args.bare_output_args}")
    print(f"{'run / sink':14} {'frames':>12} {'p50':>7} {'p95':>7} {'max':>7}  (ms)")
    ok = True
    for kind, r in results:
        print(f"[{kind}{' impaired' if r['impaired'] else ''}] {r['load']}")
        if kind in ("agent", "agent-rtmp", "bare-rtmp", "bare-rtmp-video"):
            print(row(f"{kind} rtmp", r["rtmp"], expected))
        if r["srt"]:
            print(row(f"{kind} srt", r["srt"], expected, f"(SRT latency {args.srt_latency_ms} ms)"))
        s = r["session"]
        whip_lat = s.latencies_ms(r["since"]) if s else []
        av = s.av_offsets_ms() if s else []
        recv = s.receiver_ms(r["since"]) if s else []
        extra = ""
        if av:
            extra += (f"A/V median {statistics.median(av):+.0f} ms, range {min(av):+.0f}.."
                      f"{max(av):+.0f}; ")
        if recv:
            extra += (f"receiver (first RTP packet -> decoded) p50 {statistics.median(recv):.0f}"
                      f" p95 {percentile(recv, 95):.0f} ms")
        if kind in ("agent", "agent-whip", "bare-whip"):
            print(row(f"{kind} whip", whip_lat, expected, extra))
        if kind.startswith("agent") and r["summary"]:
            print(f"  live seconds: {r['summary'].get('live_s')}")
        if r["impaired"]:
            print(impairment_lines(args, s, r))
            ok &= impaired_ok(s, r)
            continue
        if kind in ("agent", "agent-rtmp") and (
                not r["rtmp"] or percentile(r["rtmp"], 95) > TARGET_RTMP_P95_MS):
            ok = False
        if kind in ("agent", "agent-whip") and (
                not whip_lat or percentile(whip_lat, 95) > TARGET_WHIP_P95_MS or not av
                or max(abs(x) for x in av) > TARGET_WHIP_AV_MS):
            ok = False
    print(f"targets: RTMP p95 <= {TARGET_RTMP_P95_MS:.0f} ms; WHIP p95 <= "
          f"{TARGET_WHIP_P95_MS:.0f} ms with A/V within +-{TARGET_WHIP_AV_MS:.0f} ms: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
