"""MediaSupervisor: the worker protocol, stop, crash -> report + restart, and no leaks.

Unit tests run the supervisor against a stand-in worker (a small script that speaks the
protocol, steered by the spec's lesson_id); the end-to-end test runs the real worker with
synthetic sources pushing to a real RTMP and a real SRT receiver.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.media.spec import MediaSpec, RecordingSpec, SinkSpec
from agent.media.supervisor import MediaSupervisor
from tests.receivers import RtmpReceiver, SrtReceiver, concat_frames, probe, wait_for_growth
from tests.support import REPO, free_port, wait_until

STAND_IN = r'''
import json, os, signal, sys, threading, time
from pathlib import Path

spec = json.loads(sys.stdin.readline())
mode = spec["lesson_id"]
folder = Path(spec["recording"]["dir"])
folder.mkdir(parents=True, exist_ok=True)
numbers = [int(p.stem[4:]) for p in folder.glob("seg-*.ts")]
first = max(numbers, default=-1) + 1
out = sys.stdout
lock = threading.Lock()
stop = threading.Event()
live = {s["name"]: 0.0 for s in spec["live"]}
segments = []

def emit(kind, **fields):
    with lock:
        out.write(json.dumps({"type": kind, "ts": time.time(), **fields}) + "\n")
        out.flush()

def watch_stdin():
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()

if mode == "bad-spec":
    print("unusable spec: spec.video.fps: expected int", file=sys.stderr, flush=True)
    sys.exit(2)
if mode == "ignore-stop":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
threading.Thread(target=watch_stdin, daemon=True).start()
marker = folder / "crashed-once"
print("INFO stand-in worker starting", file=sys.stderr, flush=True)
emit("started", pid=os.getpid(), ffmpeg="stand-in", first_segment=first,
     recording_dir=str(folder))
t0 = time.time()
seg_start, n = t0, first
while not stop.wait(0.1):
    for name in live:
        live[name] += 0.1
    emit("stats", sinks=[{"name": k, "url": "rtmp://h/app/***", "state": "live",
                           "bitrate_kbps": 1.0, "bytes_total": 1, "live_s": round(v, 1),
                           "reconnects": 0} for k, v in live.items()])
    path = folder / f"seg-{n:05d}.ts"
    with path.open("ab") as fh:
        fh.write(b"x" * 188)
    if time.time() - seg_start >= 0.5:
        end = time.time()
        seg = {"path": str(path), "bytes": path.stat().st_size, "sha256": "0" * 64,
               "start": seg_start, "end": end, "duration_s": end - seg_start}
        segments.append(seg)
        emit("segment", **seg)
        seg_start, n = end, n + 1
    if mode == "crash-once" and not marker.exists() and time.time() - t0 > 1.2:
        marker.touch()
        print("ERROR v4l2: driver fault, about to crash (key: secretkey123)", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
if mode == "ignore-stop":
    while True:
        time.sleep(1)
emit("stopped", summary={"live_s": {k: round(v, 1) for k, v in live.items()},
                         "recorded_s": sum(s["duration_s"] for s in segments),
                         "segments": segments, "interruptions": []})
'''


@pytest.fixture
def stand_in(tmp_path: Path) -> str:
    """An executable that the supervisor runs as `<it> -m agent.media.worker`."""
    script = tmp_path / "stand-in-worker"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    return str(script)


class Lines:
    """Collects on_line calls, thread-safe."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, line: dict) -> None:
        with self.lock:
            self.items.append(line)

    def of(self, kind: str, event: str | None = None) -> list[dict]:
        with self.lock:
            return [x for x in self.items if x.get("type") == kind
                    and (event is None or x.get("event") == event)]


def spec_for(tmp_path: Path, mode: str) -> MediaSpec:
    return MediaSpec(lesson_id=mode, recording=RecordingSpec(dir=str(tmp_path / "rec" / mode)),
                     live=(SinkSpec("platform", "rtmp://127.0.0.1:1/app/secretkey123"),))


def test_supervisor_does_not_load_media_libraries() -> None:
    code = ("import sys, agent.media.supervisor; "
            "print([m for m in ('numpy', 'cv2', 'pyaudio') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_protocol_and_graceful_stop(tmp_path: Path, stand_in: str) -> None:
    lines = Lines()
    sup = MediaSupervisor(lines, python=stand_in)
    sup.start(spec_for(tmp_path, "normal"))
    assert sup.running()
    wait_until(lambda: len(lines.of("segment")) >= 2, 10, "two segments")
    assert lines.of("started")[0]["first_segment"] == 0
    assert sup.last_stats() is not None and sup.last_stats()["type"] == "stats"
    summary = sup.stop()
    assert not sup.running()
    assert summary is not None
    assert summary["live_s"]["platform"] > 0.5
    assert len(summary["segments"]) >= 2
    assert summary["interruptions"] == []
    assert lines.of("stopped"), "the worker's stopped line is relayed too"


def test_crash_is_reported_restarted_and_accounted(tmp_path: Path, stand_in: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lines = Lines()
    sup = MediaSupervisor(lines, python=stand_in)
    sup.start(spec_for(tmp_path, "crash-once"))
    wait_until(lambda: lines.of("event", "worker_restarted"), 20, "worker_restarted")
    crash = lines.of("event", "worker_crashed")[0]
    assert crash["severity"] == "error"
    assert crash["details"]["exit"] == "SIGSEGV"
    assert "driver fault" in crash["details"]["stderr_tail"]
    assert "secretkey123" not in json.dumps(crash), "stream keys are scrubbed from the tail"
    assert "SIGSEGV" in crash["message"]
    wait_until(lambda: len(lines.of("started")) == 2 and len(lines.of("segment")) >= 5, 10,
               "segments of the second worker")
    summary = sup.stop()
    assert summary is not None
    gaps = [i for i in summary["interruptions"] if i["what"] == "worker_crashed"]
    assert len(gaps) == 1 and 0 <= gaps[0]["duration_s"] < 3.0, gaps
    started2 = lines.of("started")[1]
    assert abs(gaps[0]["end"] - started2["ts"]) < 0.01
    # Segments of both runs, including the one the crash left open, none overwritten.
    paths = [s["path"] for s in summary["segments"]]
    assert len(paths) == len(set(paths))
    assert any(s.get("partial") for s in summary["segments"])
    assert started2["first_segment"] > 0
    on_disk = sorted(str(p) for p in (tmp_path / "rec" / "crash-once").glob("seg-*.ts"))
    assert set(paths) <= set(on_disk)
    # live seconds of the crashed run (from its last stats) plus the second run's summary
    first_run_live = 1.0
    assert summary["live_s"]["platform"] > first_run_live
    assert all("secretkey123" not in r.getMessage() for r in caplog.records)


def test_rejected_spec_is_not_restarted(tmp_path: Path, stand_in: str) -> None:
    lines = Lines()
    sup = MediaSupervisor(lines, python=stand_in)
    sup.start(spec_for(tmp_path, "bad-spec"))
    wait_until(lambda: lines.of("event", "worker_crashed"), 10, "worker_crashed")
    time.sleep(1.5)
    assert len(lines.of("event", "worker_crashed")) == 1
    event = lines.of("event", "worker_crashed")[0]
    assert event["details"]["restarting"] is False and event["details"]["exit"] == 2
    assert "expected int" in event["message"]
    assert not sup.running()
    assert sup.stop() is None


def test_stop_escalates_to_sigkill(tmp_path: Path, stand_in: str) -> None:
    lines = Lines()
    sup = MediaSupervisor(lines, python=stand_in)
    sup.start(spec_for(tmp_path, "ignore-stop"))
    wait_until(lambda: lines.of("stats"), 10, "stats")
    t0 = time.monotonic()
    summary = sup.stop(timeout_s=1.0)
    took = time.monotonic() - t0
    assert took < 1.0 + 5.0 + 2.0, took  # stop timeout, SIGTERM grace, slack
    crash = lines.of("event", "worker_crashed")
    assert crash and crash[0]["details"]["exit"] == "SIGKILL"
    assert summary is not None and summary["segments"], "what the lines said is kept"
    assert not sup.running()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _zombies() -> int:
    me = str(os.getpid())
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[1] == me and fields[0] == "Z":
            count += 1
    return count


def test_twenty_cycles_leak_nothing(tmp_path: Path, stand_in: str) -> None:
    lines = Lines()
    sup = MediaSupervisor(lines, python=stand_in)
    sup.start(spec_for(tmp_path, "normal"))  # warm-up: first-use allocations
    wait_until(lambda: lines.of("started"), 10, "started")
    sup.stop()
    fds, threads = _fds(), threading.active_count()
    for i in range(20):
        sup.start(spec_for(tmp_path, f"normal-{i}"))
        wait_until(lambda n=i: len(lines.of("started")) >= n + 2, 10, "started")
        assert sup.stop() is not None
    assert _fds() == fds, os.listdir("/proc/self/fd")
    assert threading.active_count() == threads, threading.enumerate()
    assert _zombies() == 0


# --- end to end: the real worker ------------------------------------------------------------

WORKER = REPO / "agent" / "media" / "worker.py"


@pytest.mark.slow
@pytest.mark.skipif(not WORKER.exists(), reason="agent/media/worker.py is not written yet")
def test_end_to_end_real_worker_rtmp_and_srt_with_receiver_outage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fps, key = 25, "room101-secretkey"
    rtmp = RtmpReceiver(free_port(), tmp_path / "rtmp.flv", path=f"live/{key}")
    srt = SrtReceiver(free_port(), tmp_path / "srt.ts")
    rtmp.start()
    srt.start()
    spec = MediaSpec.from_json(json.dumps({
        "lesson_id": "e2e",
        "video": {"source": "synthetic", "width": 640, "height": 360, "fps": fps},
        "audio": {"source": "synthetic", "rate": 48000, "channels": 2},
        "encoder": {"video_bitrate_kbps": 800, "audio_bitrate_kbps": 96, "preset": "veryfast",
                    "gop_s": 1.0},
        "live": [{"name": "rtmp", "url": rtmp.url}, {"name": "srt", "url": srt.url}],
        "recording": {"dir": str(tmp_path / "rec"), "segment_s": 4.0},
    }))
    lines = Lines()
    sup = MediaSupervisor(lines)
    try:
        sup.start(spec)
        wait_until(lambda: lines.of("started"), 30, "the worker's started line")
        t_start = lines.of("started")[0]["ts"]

        def sink_state(name: str) -> str | None:
            stats = sup.last_stats() or {}
            return next((s["state"] for s in stats.get("sinks", []) if s["name"] == name), None)

        wait_until(lambda: sink_state("rtmp") == "live" and sink_state("srt") == "live", 20,
                   "both sinks live")
        time.sleep(3)
        rtmp.kill()
        wait_until(lambda: lines.of("event", "sink_down"), 10, "sink_down")
        wait_until(lambda: sink_state("rtmp") == "down", 5, "rtmp state down")
        time.sleep(10)
        rtmp.start()
        back = time.monotonic()
        resumed = wait_for_growth(rtmp, 20_000, 10)
        wait_until(lambda: lines.of("event", "sink_up"), 10, "sink_up")
        time.sleep(3)
        t_stop = time.time()
        summary = sup.stop()
    finally:
        if sup.running():
            sup.stop()
        rtmp.stop(10)
        srt.stop(10)
    print(f"\nrtmp resumed {resumed:.2f} s after the receiver came back "
          f"({time.monotonic() - back:.1f} s ago)")
    assert resumed < 5.0
    assert summary is not None
    assert not lines.of("event", "worker_crashed")
    segments = [Path(s["path"]) for s in summary["segments"]]
    assert segments
    frames = concat_frames(segments)
    # From the worker's `started` to the stop request, by the wall clock: a gap in the
    # recording (or frames lost around the receiver's death) would show as missing frames.
    expected = (t_stop - t_start) * fps
    print(f"recording: {len(segments)} segments, {frames} frames for {t_stop - t_start:.2f} s "
          f"(expected {expected:.0f}), recorded_s {summary['recorded_s']:.2f}")
    assert abs(frames - expected) <= 0.02 * expected, (frames, expected)
    assert abs(summary["recorded_s"] - frames / fps) <= 0.5
    assert summary["live_s"]["srt"] > summary["live_s"]["rtmp"] > 3.0
    assert any(i["what"] == "sink:rtmp" and 8.0 < i["duration_s"] < 16.0
               for i in summary["interruptions"]), summary["interruptions"]
    for f in rtmp.files:
        p = probe(f)
        assert (p.video_codec, p.audio_codec, p.width) == ("h264", "aac", 640), (f, p)
    assert all(key not in r.getMessage() for r in caplog.records)
    assert key not in json.dumps(lines.items)
