"""LiveSink against real receivers: what arrives, outages, stalls, and secrets.

A real FFmpeg encodes testsrc2 + sine in real time to each sink's container (FLV for RTMP,
MPEG-TS for SRT, as the worker's encoder does) and a feeder thread hands its stdout to the
sinks (FLV cut into whole tags by the encoder's framer), timing every feed() call.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.media.flv import FlvFramer, FlvGate, FlvInit
from agent.media.sinks import KeyframeGate, LiveSink
from agent.urls import redact_url, scrub
from tests.receivers import RtmpReceiver, SrtReceiver, probe, wait_for_growth
from tests.support import free_port, wait_until

FPS = 25
KEY = "room101-secretkey"


def encoder_argv(seconds: float, container: str = "mpegts") -> list[str]:
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", f"testsrc2=s=640x360:r={FPS}",
            "-f", "lavfi", "-i", "sine=f=440:r=48000",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", str(FPS),
            "-b:v", "1000k", "-maxrate", "1000k", "-bufsize", "1000k",
            "-c:a", "aac", "-b:a", "96k", "-t", str(seconds), "-f", container, "pipe:1"]


class Feeder:
    """The worker's fan-out in miniature: one encoder per container the sinks need; each
    encoder's output is feed() to its sinks."""

    def __init__(self, sinks: list[LiveSink], seconds: float) -> None:
        self.calls: list[tuple[float, float]] = []  # (monotonic, seconds one feed() took)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.threads: list[threading.Thread] = []
        for fmt in sorted({s.container for s in sinks}):
            proc = subprocess.Popen(encoder_argv(seconds, fmt), stdout=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
            mine = [s for s in sinks if s.container == fmt]
            thread = threading.Thread(target=self._run, args=(proc, mine, fmt), daemon=True)
            thread.start()
            self.procs.append(proc)
            self.threads.append(thread)

    def _run(self, proc: subprocess.Popen[bytes], sinks: list[LiveSink], fmt: str) -> None:
        assert proc.stdout is not None
        framer = FlvFramer() if fmt == "flv" else None
        while raw := proc.stdout.read1(65536):
            chunk = framer.feed(raw) if framer else raw
            if not chunk:
                continue
            for sink in sinks:
                t0 = time.perf_counter()
                sink.feed(chunk)
                self.calls.append((time.monotonic(), time.perf_counter() - t0))

    def wait(self) -> None:
        for proc, thread in zip(self.procs, self.threads, strict=True):
            proc.wait(120)
            thread.join(10)
            assert proc.stdout is not None
            proc.stdout.close()

    def durations(self, start: float, end: float) -> list[float]:
        return [d for t, d in self.calls if start <= t <= end]


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[float, str, str, str, dict]] = []

    def __call__(self, event: str, severity: str, message: str, details: dict) -> None:
        self.items.append((time.monotonic(), event, severity, message, details))

    def named(self, event: str) -> list[tuple[float, str, str, str, dict]]:
        return [e for e in self.items if e[1] == event]


def test_rtmp_and_srt_receive_the_whole_stream(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seconds = 8
    rtmp = RtmpReceiver(free_port(), tmp_path / "rtmp.flv", path=f"live/{KEY}")
    srt = SrtReceiver(free_port(), tmp_path / "srt.ts")
    rtmp.start()
    srt.start()
    events = Events()
    sinks = [LiveSink("rtmp", rtmp.url, events), LiveSink("srt", f"{srt.url}?latency=120",
                                                           events)]
    for s in sinks:
        s.start()
    feeder = Feeder(sinks, seconds)
    wait_until(lambda: all(s.stats()["state"] == "live" for s in sinks), 10, "both live")
    mid = [s.stats() for s in sinks]
    feeder.wait()
    final = [s.stats() for s in sinks]
    for s in sinks:
        s.stop()
    assert rtmp.stop(15) == 0, rtmp.log_text()
    assert srt.stop(15) is not None
    for stats in mid:
        assert stats["bitrate_kbps"] > 500, stats
    for stats in final:
        assert stats["reconnects"] == 0 and stats["bytes_total"] > 900_000, stats
        assert seconds - 1.5 <= stats["live_s"] <= seconds + 0.5, stats
    assert final[0]["url"] == f"rtmp://127.0.0.1:{rtmp.port}/live/***"
    assert not events.items, events.items
    for path in (rtmp.files[0], srt.files[0]):
        p = probe(path)
        print(f"\n{path.name}: {p}")
        assert (p.video_codec, p.audio_codec, p.width, p.height) == ("h264", "aac", 640, 360)
        assert abs(p.video_frames - seconds * FPS) <= 0.03 * seconds * FPS, p
        assert p.audio_frames > 0.9 * seconds * 48000 / 1024, p
    assert all(KEY not in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_receiver_outage_down_up_and_feed_never_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rtmp = RtmpReceiver(free_port(), tmp_path / "rtmp.flv", path=f"live/{KEY}")
    rtmp.start()
    events = Events()
    sink = LiveSink("platform", rtmp.url, events)
    sink.start()
    feeder = Feeder([sink], 26)
    try:
        wait_until(lambda: sink.stats()["state"] == "live", 10, "live")
        time.sleep(3)
        rtmp.kill()
        killed = time.monotonic()
        wait_until(lambda: events.named("sink_down"), 5, "sink_down")
        down = events.named("sink_down")[0]
        # The receiver's death as the socket saw it: a write into the closed connection (EPIPE)
        # or its reset arriving first (ECONNRESET), depending on timing.
        assert down[2] == "warning", down
        assert "Broken pipe" in down[3] or "Connection reset by peer" in down[3], down
        wait_until(lambda: sink.stats()["state"] == "down", 3, "state down")
        time.sleep(max(0.0, killed + 10 - time.monotonic()))
        dead = feeder.durations(killed, time.monotonic())
        assert sink.stats()["state"] == "down"
        assert len(events.named("sink_down")) == 1, "sink_down once per outage"
        rtmp.start()
        back = time.monotonic()
        flowing = wait_for_growth(rtmp, 50_000, 10)
        wait_until(lambda: events.named("sink_up"), 5, "sink_up")
        up_after = events.named("sink_up")[0][0] - back
        stats = sink.stats()
    finally:
        feeder.wait()
        sink.stop()
        rtmp.stop(15)
    print(f"\nfeed() while the receiver was dead: {len(dead)} calls, "
          f"median {statistics.median(dead) * 1e6:.0f} us, max {max(dead) * 1e3:.2f} ms; "
          f"data flowing {flowing:.2f} s and sink_up {up_after:.2f} s after the receiver's "
          f"return; {stats}")
    assert flowing < 5.0
    assert up_after < 5.0
    assert statistics.median(dead) < 0.0002
    # Never blocks: a blocked write would take seconds. The bound leaves room for the GIL's
    # 5 ms switch interval and the encoder's threads on two cores.
    assert max(dead) < 0.02
    assert stats["state"] == "live" and stats["reconnects"] >= 1
    up = events.named("sink_up")[0]
    assert up[2] == "info" and 9.0 < up[4]["down_s"] < 16.0, up
    p = probe(rtmp.files[1])
    assert (p.video_codec, p.audio_codec) == ("h264", "aac") and p.video_frames > 5 * FPS, p
    key_frames = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=flags",
         "-of", "csv=p=0", "-read_intervals", "%+#1", str(rtmp.files[1])],
        capture_output=True, text=True, check=True).stdout
    assert key_frames.startswith("K"), "the new connection starts at a key frame"
    texts = [r.getMessage() for r in caplog.records] + [e[3] for e in events.items]
    assert all(KEY not in t for t in texts)
    assert all(KEY not in str(e[4]) for e in events.items)


STALLER = r'''
import sys, time
sys.stdin.buffer.read(100_000)
for i in range(6):
    print(f"total_size={1000 * (i + 1)}", file=sys.stderr, flush=True)
    sys.stdin.buffer.read(100_000)
    time.sleep(0.25)
print("[tcp] network went silent", file=sys.stderr, flush=True)
time.sleep(3600)
'''


def test_stalled_remux_process_is_detected_and_killed(tmp_path: Path) -> None:
    """A receiver that stops reading without a reset: stdin blocked > 2 s -> down, restart."""
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!{sys.executable}\n{STALLER}")
    fake.chmod(0o755)
    events = Events()
    sink = LiveSink("stuck", "srt://h:9000?latency=120", events, ffmpeg=str(fake),
                    max_queue_bytes=400_000)
    sink.start()
    stop = threading.Event()
    raw = _ts_stream()
    chunks = [raw[i:i + 18800] for i in range(0, len(raw), 18800)]
    longest = 0.0

    def feed() -> None:
        nonlocal longest
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            sink.feed(chunks[i])
            longest = max(longest, time.perf_counter() - t0)
            i = (i + 1) % len(chunks)
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: sink.stats()["state"] == "live", 10, "live")
        wait_until(lambda: events.named("sink_down"), 10, "sink_down")
        message = events.named("sink_down")[0][3]
        assert "stalled" in message and "network went silent" in message, message
        wait_until(lambda: sink.stats()["reconnects"] >= 1, 5, "a new process")
    finally:
        stop.set()
        feeder.join(5)
        t0 = time.monotonic()
        sink.stop()
    assert time.monotonic() - t0 < 6.0, "stop() is bounded even with a stuck process"
    assert longest < 0.02


def _ts_stream() -> bytes:
    """A few seconds of real MPEG-TS (key frame every second) to loop over."""
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=s=320x180:r=25", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
         "-t", "4", "-f", "mpegts", "pipe:1"], capture_output=True, check=True).stdout


def test_keyframe_gate_starts_at_pat_pmt_and_a_key_frame() -> None:
    ts = _ts_stream()
    gate = KeyframeGate()
    out = b""
    # Join mid-stream, in odd-sized chunks that split packets.
    for i in range(100_000 + 77, len(ts), 4999):
        out += gate.feed(ts[i:i + 4999])
    assert gate.open
    assert out[0] == 0x47 and (((out[1] & 0x1F) << 8) | out[2]) == 0, "starts with the PAT"
    assert out[188] == 0x47 and out[376] == 0x47
    pmt_pid = ((out[188 + 1] & 0x1F) << 8) | out[188 + 2]
    assert pmt_pid != 0
    first = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=flags",
         "-of", "csv=p=0", "-i", "pipe:0"], input=out, capture_output=True, check=True).stdout
    flags = first.decode().split()
    assert flags[0].startswith("K"), flags[:3]
    assert len(flags) >= 25


@pytest.mark.parametrize(("url", "redacted", "secrets"), [
    ("rtmp://live.example.edu.cn/class/room-101-key", "rtmp://live.example.edu.cn/class/***",
     ["room-101-key"]),
    ("rtmps://user:pa55word@h:443/app/streamkey?token=abcd1234",
     "rtmps://***@h:443/app/***?token=***", ["pa55word", "streamkey", "abcd1234"]),
    ("srt://h:9000?streamid=publish/room101&passphrase=verysecret&latency=120",
     "srt://h:9000?streamid=***&passphrase=***&latency=120", ["verysecret", "publish/room101"]),
    ("srt://h:9000", "srt://h:9000", []),
])
def test_redaction(url: str, redacted: str, secrets: list[str]) -> None:
    assert redact_url(url) == redacted
    message = scrub(f"[rtmp] {url}: Connection refused; " + " ".join(secrets), url)
    for secret in secrets:
        assert secret not in message


def _flv_stream() -> bytes:
    """A few seconds of real FLV (key frame every second), as FFmpeg writes it."""
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=s=320x180:r=25", "-f", "lavfi", "-i", "sine=f=440:r=48000",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-t", "4",
         "-f", "flv", "-flvflags", "no_duration_filesize", "pipe:1"],
        capture_output=True, check=True).stdout


def test_flv_framer_init_and_gate_start_a_decodable_stream_mid_way() -> None:
    raw = _flv_stream()
    framer = FlvFramer()
    chunks = [c for i in range(0, len(raw), 3001) if (c := framer.feed(raw[i:i + 3001]))]
    assert b"".join(chunks) == raw, "the framer loses and adds nothing"
    init = FlvInit()
    for c in chunks:
        init.observe(c)
    gate = FlvGate(init)
    out = b"".join(gate.feed(c) for c in chunks[len(chunks) // 2:])
    assert gate.open and out.startswith(b"FLV")
    packets = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=codec_type,flags,pts_time",
         "-of", "csv=p=0", "-f", "flv", "-i", "pipe:0"], input=out, capture_output=True,
        check=True).stdout.decode().split()
    video = [p for p in packets if p.startswith("video")]
    assert video[0].endswith("K_"), video[:3]
    assert {p.split(",")[0] for p in packets} == {"video", "audio"}
    assert 25 <= len(video) <= 60, len(video)
    with pytest.raises(ValueError, match="not FLV"):
        FlvFramer().feed(b"\x47" * 200)


READER = r'''
import sys
print("total_size=1000", file=sys.stderr, flush=True)
while sys.stdin.buffer.read(65536):
    pass
'''


def test_start_stop_cycles_leak_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!{sys.executable}\n{READER}")
    fake.chmod(0o755)
    ts = _ts_stream()[:200_000]

    def cycle() -> None:
        sink = LiveSink("x", "srt://h:9000", Events(), ffmpeg=str(fake))
        sink.start()
        wait_until(lambda: sink.stats()["reconnects"] == 0 and sink._accepting, 5, "accepting")
        sink.feed(ts)
        sink.stop()
        assert sink.stats()["state"] == "down"

    cycle()
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(10):
        cycle()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
