"""Media worker parts without devices: spec, pacer, aligner, health, argv, synthetic sources.

The decision logic takes the time as an argument, so a fake clock drives it; the few tests that
touch FFmpeg or OpenCV use real ones on small inputs (a second or two each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import LiveSinkConfig, MediaConfig
from agent.media import devices
from agent.media import encoder as enc
from agent.media.health import AudioMeter, VideoHealth, dbfs, levels, thumbnail
from agent.media.pacer import AudioAligner, FrameKind, VideoPacer
from agent.media.sources import (
    AudioSource,
    LossWatch,
    ReopenDelay,
    VideoSource,
    classify,
    with_udp_options,
)
from agent.media.spec import AudioSpec, MediaSpec, RecordingSpec, SinkSpec, SpecError, VideoSpec
from agent.media.synthetic import SyntheticAudio, SyntheticVideo
from agent.media.worker import Interruptions
from tests.media_support import count_frames, ffprobe_streams
from tests.support import REPO

DOC_EXAMPLE = """{"lesson_id": "2026-11-23-p1",
 "video": {"source": "synthetic", "width": 1280, "height": 720, "fps": 30},
 "audio": {"source": "synthetic", "rate": 48000, "channels": 2, "delay_ms": 0},
 "encoder": {"video_bitrate_kbps": 2500, "audio_bitrate_kbps": 128, "preset": "veryfast",
             "gop_s": 2.0},
 "live": [{"name": "platform", "url": "rtmp://host/app/key"}],
 "recording": {"dir": "/var/lib/classroom-agent/recordings/2026-11-23-p1", "segment_s": 60.0}}"""


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spec(tmp: Path, **video: Any) -> MediaSpec:
    return MediaSpec(lesson_id="unit", video=VideoSpec(**{"width": 320, "height": 240,
                                                          "fps": 25, **video}),
                     recording=RecordingSpec(dir=str(tmp), segment_s=1.0))


# ------------------------------------------------------------------------------------ spec


def test_spec_round_trip_and_docs_example() -> None:
    s = MediaSpec.from_json(DOC_EXAMPLE)
    assert s.live == (SinkSpec("platform", "rtmp://host/app/key"),)
    assert s.video.fps == 30 and s.encoder.gop_s == 2.0 and s.recording.segment_s == 60.0
    line = s.to_json()
    assert "\n" not in line
    assert MediaSpec.from_json(line) == s
    assert json.loads(line)["live"] == [{"name": "platform", "url": "rtmp://host/app/key",
                                         "protocol": "", "token_file": ""}]


@pytest.mark.parametrize(("text", "names"), [
    ('{"recording": {"dir": "/r"}}', "spec.lesson_id: required"),
    ('{"lesson_id": "x", "recording": {"dir": "/r"}, "video": {"fps": "30"}}', "spec.video.fps"),
    ('{"lesson_id": "x", "recording": {"dir": "/r"}, "vidoe": {}}', "vidoe"),
    ('{"lesson_id": "x", "recording": {"dir": "/r"}, "live": [{"url": "srt://h:1"}]}',
     "spec.live[0].name"),
    ("not json", "not JSON"),
])
def test_spec_errors_name_the_key(text: str, names: str) -> None:
    with pytest.raises(SpecError, match=names.replace("[", r"\[").replace("]", r"\]")):
        MediaSpec.from_json(text)


def test_spec_from_config_names_sinks(tmp_path: Path) -> None:
    media = MediaConfig(live=[LiveSinkConfig(url="rtmp://a/live/k"),
                              LiveSinkConfig(url="srt://b:9000", name="backup"),
                              LiveSinkConfig(url="rtmp://c/live/k")])
    s = MediaSpec.from_config(media, "L1", tmp_path / "L1")
    assert [x.name for x in s.live] == ["sink1", "backup", "sink3"]
    assert s.recording == RecordingSpec(dir=str(tmp_path / "L1"), segment_s=60.0)
    assert s.video == VideoSpec() and s.audio == AudioSpec()
    only = MediaSpec.from_config(media, "L1", tmp_path, live=[LiveSinkConfig(url="srt://x:1")])
    assert only.live == (SinkSpec("sink1", "srt://x:1"),)
    assert MediaSpec.from_json(s.to_json()) == s


def test_spec_module_stays_light() -> None:
    """The daemon imports the spec: it must not drag NumPy, OpenCV or PyAudio in."""
    code = ("import sys, agent.media.spec\n"
            "heavy = {'numpy', 'cv2', 'pyaudio'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)


def test_bundled_ffmpeg_is_the_one_imageio_ffmpeg_gives_without_importing_it() -> None:
    """media.ffmpeg: bundled is found in the wheel's binaries folder by path (importing
    imageio-ffmpeg costs the daemon ~1 MB); it must be the very file imageio-ffmpeg names."""
    code = ("import json, sys\n"
            "from agent.media.ffmpeg import locate\n"
            "found = locate('bundled')\n"
            "loaded = 'imageio_ffmpeg' in sys.modules\n"
            "import imageio_ffmpeg\n"
            "print(json.dumps([found, imageio_ffmpeg.get_ffmpeg_exe(), loaded]))")
    env = {k: v for k, v in os.environ.items() if k != "IMAGEIO_FFMPEG_EXE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60,
                         capture_output=True, text=True, env=env)
    found, theirs, loaded = json.loads(out.stdout)
    assert Path(found).resolve() == Path(theirs).resolve()
    assert not loaded, "locate('bundled') imported imageio_ffmpeg"


# ----------------------------------------------------------------------------------- pacer


class _StillSource:
    """A camera whose latest frame is always new (seq grows on every look)."""

    def __init__(self) -> None:
        self.seq = 0
        self.looked = 0

    def check(self) -> bool:
        return False

    def latest(self) -> Any:
        from agent.media.sources import Frame

        self.seq += 1
        self.looked += 1
        return Frame(np.zeros((4, 4, 3), np.uint8), 0.0, self.seq)

    def recent(self) -> tuple[Any, ...]:
        return (self.latest(),)

    def wait_newer(self, seq: int, timeout: float) -> Any:
        return self.latest()


def test_pump_behind_its_slots_repeats_instead_of_putting_new_pictures_in_old_slots() -> None:
    """A starved pump catches up with repeats: no picture lands in a slot before its capture."""
    from agent.media.pacer import MAX_LAG_FRAMES, Slate, VideoPump

    now = [0.0]
    source = _StillSource()
    pump = VideoPump(source, 30, 0.0, lambda data: None, lambda img, **_: img,
                     Slate(4, 4, lambda img: img), clock=lambda: now[0])
    pump._next_frame()                       # slot 0 on time: a new picture
    assert source.looked == 1
    now[0] = 1.0                              # starved for a second: 30 slots behind
    behind = 30 - MAX_LAG_FRAMES - 1           # slots 1..27 are more than 2 slots late at 1.0 s
    for _ in range(behind):
        pump._next_frame()
    assert source.looked == 1, "catching up must not take new pictures"
    assert pump.pacer.counters.duplicated == behind
    pump._next_frame()                        # within the bound again: new pictures resume
    assert source.looked == 2


def test_pump_woken_late_takes_its_own_slots_frame_not_the_next_ones() -> None:
    """A camera whose frames arrive 9 ms before the slots, and a pump woken 30 ms late for one
    slot (another process ran): the camera thread has stored the next slot's frame by then. The
    pump must take the frame captured nearest its slot, not the newest: taking the newest drops
    one picture and repeats the next (the pairs of the 1080p30 av_sync run)."""
    from agent.media.pacer import Slate, VideoPump

    fps, phase, late_slot, lateness = 30, -0.009, 10, 0.030
    now = [0.0]
    source = VideoSource(VideoSpec(source="synthetic", width=4, height=4, fps=fps),
                         lambda *a: None, clock=lambda: now[0])
    written: list[int] = []
    pump = VideoPump(source, fps, 0.0, lambda data: None, lambda img, **_: img,
                     Slate(4, 4, lambda img: img), clock=lambda: now[0])
    captured = 0
    for n in range(20):
        wake = n / fps + (lateness if n == late_slot else 0.0)
        while (captured + 1) / fps + phase <= wake:  # the camera thread runs meanwhile
            captured += 1
            now[0] = captured / fps + phase
            source._store(np.full((4, 4, 3), captured, np.uint8), "bgr24")
        now[0] = wake
        written.append(int(pump._next_frame()[0, 0, 0]))
    c = pump.pacer.counters
    assert written[late_slot:late_slot + 2] == [late_slot, late_slot + 1]
    assert (c.dropped, c.duplicated) == (0, 0), written


def test_nearest_frame_is_the_newest_for_a_pump_on_time() -> None:
    """On time, every stored frame was captured before the slot: the newest is taken (a fast
    camera's extra frames are dropped as before); a written frame is never chosen again."""
    from agent.media.pacer import nearest_frame
    from agent.media.sources import Frame

    img = np.zeros((4, 4, 3), np.uint8)
    older, newer = Frame(img, 0.980, 7), Frame(img, 0.995, 8)
    assert nearest_frame((older, newer), 1.0, 6) is newer
    assert nearest_frame((older, newer), 1.0, 8) is newer  # nothing unwritten: a repeat
    late = Frame(img, 1.024, 9)
    assert nearest_frame((newer, late), 1.0, 7) is newer  # woken late: its own slot's frame
    assert nearest_frame((newer, late), 1.0, 8) is late
    assert nearest_frame((), 1.0, 0) is None


def run_pacer(fps: int, camera_fps: float, seconds: float,
              lost: tuple[float, float] | None = None) -> VideoPacer:
    """Simulate a camera at ``camera_fps`` against the pacer's slots (fake time)."""
    pacer = VideoPacer(fps, start=0.0)
    while pacer.due() < seconds:
        t = pacer.due()
        seq = int(t * camera_fps + 1e-6) + 1  # frames captured by time t (one before 0)
        is_lost = lost is not None and lost[0] <= t < lost[1]
        pacer.decide(seq, is_lost)
    return pacer


def test_pacer_writes_exactly_fps_per_second() -> None:
    c = run_pacer(25, 25, 10).counters
    assert c.encoded == 250 and c.duplicated == 0 and c.dropped == 0


def test_pacer_duplicates_for_a_slow_camera() -> None:
    c = run_pacer(30, 15, 10).counters
    assert c.encoded == 300
    assert c.duplicated == pytest.approx(150, abs=2)
    assert c.dropped == 0


def test_pacer_drops_for_a_fast_camera() -> None:
    c = run_pacer(25, 50, 10).counters
    assert c.encoded == 250
    assert c.dropped == pytest.approx(250, abs=2)
    assert c.duplicated == 0


def test_pacer_slate_while_lost_and_before_the_first_frame() -> None:
    pacer = VideoPacer(10, start=0.0)
    assert pacer.decide(None, False) is FrameKind.SLATE
    assert pacer.decide(1, False) is FrameKind.NEW
    assert pacer.decide(1, False) is FrameKind.REPEAT
    assert pacer.decide(1, True) is FrameKind.SLATE
    assert pacer.decide(5, False) is FrameKind.NEW
    c = pacer.counters
    assert (c.encoded, c.slate, c.duplicated, c.dropped) == (5, 2, 1, 3)
    c = run_pacer(25, 25, 10, lost=(3.0, 6.0)).counters
    assert c.encoded == 250 and c.slate == 75


# --------------------------------------------------------------------------------- aligner

RATE, CH = 48000, 2
CHUNK = 960  # 20 ms


def chunk(frames: int = CHUNK, value: int = 1000) -> bytes:
    return np.full(frames * CH, value, np.int16).tobytes()


def frames_of(data: bytes) -> int:
    return len(data) // (2 * CH)


def test_aligner_passes_a_steady_microphone_through() -> None:
    al = AudioAligner(RATE, CH, start=0.0)
    out = b"".join(al.feed((i + 1) * 0.02, chunk()) for i in range(500))
    assert frames_of(out) == 500 * CHUNK
    assert al.counters.inserted_frames == 0 and al.counters.dropped_frames == 0


def test_aligner_ignores_arrival_jitter() -> None:
    rng = np.random.default_rng(1)
    al = AudioAligner(RATE, CH, start=0.0)
    for i in range(1000):  # up to 15 ms late, never early
        al.feed((i + 1) * 0.02 + float(rng.uniform(0, 0.015)), chunk())
    assert al.counters.inserted_frames + al.counters.dropped_frames <= 0.02 * RATE


@pytest.mark.parametrize("ppm", [+5000, -5000])
def test_aligner_corrects_clock_drift(ppm: int) -> None:
    """A microphone 0.5% fast or slow stays within 20 ms (+ one chunk) of the clock."""
    frames = round(CHUNK * (1 + ppm / 1e6))
    al = AudioAligner(RATE, CH, start=0.0)
    worst = 0
    for i in range(3000):  # 60 s
        now = (i + 1) * 0.02
        al.feed(now, chunk(frames))
        worst = max(worst, abs(al.written - al.due(now)))
    assert worst <= 0.02 * RATE + 2 * CHUNK
    drift = abs(ppm) / 1e6 * 60 * RATE
    fixed = al.counters.dropped_frames if ppm > 0 else al.counters.inserted_frames
    assert fixed == pytest.approx(drift, rel=0.35)


def test_aligner_fills_silence_when_the_microphone_is_gone() -> None:
    al = AudioAligner(RATE, CH, start=0.0)
    for i in range(50):
        al.feed((i + 1) * 0.02, chunk())
    assert al.fill(1.1) == b""  # 100 ms late: maybe just jitter
    out = al.fill(1.5)
    assert frames_of(out) == round(0.5 * RATE) and set(out) == {0}
    assert al.written == al.due(1.5)
    out = al.feed(1.52, chunk())  # back: timeline continuous, nothing doubled
    assert abs(al.written - al.due(1.52)) <= 0.02 * RATE


@pytest.mark.parametrize("delay_ms", [200, -200])
def test_aligner_applies_delay(delay_ms: int) -> None:
    al = AudioAligner(RATE, CH, start=0.0, delay_ms=delay_ms)
    out = b"".join(al.feed((i + 1) * 0.02, chunk()) for i in range(50))
    shift = round(abs(delay_ms) / 1000 * RATE)
    samples = np.frombuffer(out, np.int16)
    if delay_ms > 0:
        assert frames_of(out) == 50 * CHUNK + shift
        assert not samples[: shift * CH].any() and samples[shift * CH:].all()
    else:
        assert frames_of(out) == 50 * CHUNK - shift
        assert al.counters.dropped_frames == shift


# ---------------------------------------------------------------------------------- health


def sine(amplitude: float, seconds: float = 0.02, freq: float = 440.0) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()


def test_audio_levels() -> None:
    rms, peak = levels(sine(1.0, 0.1))
    assert peak == pytest.approx(0.0, abs=0.1) and rms == pytest.approx(-3.01, abs=0.1)
    rms, peak = levels(sine(0.1, 0.1))
    assert peak == pytest.approx(-20.0, abs=0.1) and rms == pytest.approx(-23.0, abs=0.1)
    assert levels(bytes(1920)) == (-120.0, -120.0)
    assert dbfs(0) == -120.0


def test_silence_flag_needs_two_seconds() -> None:
    m = AudioMeter()
    quiet = np.full(1920, 10, np.int16).tobytes()  # -70 dBFS: below -60
    for i in range(99):
        m.add(i * 0.02, quiet)
    assert not m.silence  # 1.96 s
    m.add(2.0, quiet)
    assert m.silence and m.take().silence
    m.add(2.02, sine(0.1))
    assert not m.silence
    lv = m.take()
    assert lv.peak_dbfs == pytest.approx(-20.0, abs=0.2) and not lv.silence
    assert m.take().rms_dbfs == -120.0  # a new window


def test_black_and_frozen_flags() -> None:
    h = VideoHealth(max_per_s=4)
    black = np.full((360, 640, 3), 8, np.uint8)
    h.frame(0.0, black)
    assert h.black and not h.frozen
    still = np.random.default_rng(2).integers(0, 255, (360, 640, 3), np.uint8)
    for i in range(10):  # 0.25 s apart: 2 s of identical frames after the first
        h.frame(1.0 + i * 0.25, still)
    assert h.frozen and not h.black
    moving = still.copy()
    moving[:, :100] = 255 - moving[:, :100]
    h.frame(4.0, moving)
    assert not h.frozen
    h.frame(4.05, still)  # rate limit: ignored
    assert h.luma == pytest.approx(float(thumbnail(moving).mean()))


# ------------------------------------------------------------------------------- synthetic


def test_synthetic_video_moves_and_shows_the_clock() -> None:
    gen = SyntheticVideo(640, 360, 25)
    a, b = gen.frame(1, 1000.0), gen.frame(2, 1000.04)
    assert a.shape == (360, 640, 3) and a.dtype == np.uint8
    assert (a != b).any()
    assert gen.frame(1, 1000.0).tobytes() == a.tobytes()  # pure function of (n, wall)


def test_synthetic_audio_tone_and_beep() -> None:
    gen = SyntheticAudio(RATE, CH)
    data = gen.chunk(RATE, wall=100.5)  # 100.5 .. 101.5: the beep is at 101.0 .. 101.1
    pcm = np.frombuffer(data, np.int16).reshape(-1, CH)
    assert pcm.shape == (RATE, CH)
    half = RATE // 2
    tone = pcm[: half, 0].tobytes()
    beep = pcm[half + 100: half + RATE // 10 - 100, 0].tobytes()
    assert levels(tone)[1] == pytest.approx(-20.0, abs=0.5)
    assert levels(beep)[1] == pytest.approx(-12.0, abs=0.5)
    spectrum = np.abs(np.fft.rfft(np.frombuffer(beep, np.int16)))
    freq = np.argmax(spectrum) * RATE / (len(beep) // 2)
    assert freq == pytest.approx(1000, abs=15)


# --------------------------------------------------------------------------------- sources


def test_source_kinds() -> None:
    assert classify("synthetic") == ("synthetic", "synthetic")
    assert classify("0") == ("index", 0)
    assert classify("/dev/video2") == ("device", "/dev/video2")
    assert classify("rtsp://cam/stream") == ("url", "rtsp://cam/stream")
    assert classify("/srv/lesson.mp4") == ("file", "/srv/lesson.mp4")
    assert with_udp_options("udp://127.0.0.1:5600") == (
        "udp://127.0.0.1:5600?overrun_nonfatal=1&fifo_size=5000000")
    assert with_udp_options("udp://h:1?pkt_size=1316").endswith("?pkt_size=1316&overrun_"
                                                                "nonfatal=1&fifo_size=5000000")
    assert with_udp_options("udp://h:1?overrun_nonfatal=1") == "udp://h:1?overrun_nonfatal=1"


def test_reopen_delay_backs_off() -> None:
    d = ReopenDelay()
    assert [d.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    d.reset()
    assert d.next() == 0.5


def test_loss_watch_events() -> None:
    clock, events = FakeClock(), []
    w = LossWatch("camera", "/dev/video0", lambda *a: events.append(a), clock)
    clock.t += 1.9
    assert not w.check()
    clock.t += 0.2
    assert w.check() and w.check()
    assert [e[0] for e in events] == ["camera_lost"]
    assert events[0][1] == "warning" and "reopened automatically" in events[0][2]
    w.data()
    w.data()
    assert [e[0] for e in events] == ["camera_lost", "camera_restored"] and w.state == "ok"


def test_interruptions_pair_lost_and_restored() -> None:
    clock = FakeClock(100.0)
    it = Interruptions(clock)
    it.note("camera_lost")
    it.note("camera_lost")
    clock.t = 103.5
    it.note("camera_restored")
    it.note("sink_down", "platform")
    clock.t = 104.0
    assert it.summary() == [
        {"what": "camera", "start": 100.0, "end": 103.5, "duration_s": 3.5},
        {"what": "sink:platform", "start": 103.5, "end": 104.0, "duration_s": 0.5},
    ]


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=320x240:r=25", "-t", "1", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)
    return clip


def test_file_source_is_paced_looped_and_resized(short_clip: Path) -> None:
    events: list[tuple[Any, ...]] = []
    src = VideoSource(VideoSpec(source=str(short_clip), width=640, height=360, fps=25),
                      lambda *a: events.append(a))
    src.start()
    try:
        time.sleep(2.5)
        captured = src.captured
        frame = src.latest()
    finally:
        src.stop()
    assert 45 <= captured <= 70, captured  # real time (OpenCV alone would read 600+ fps)
    assert frame is not None and frame.image.shape == (360, 640, 3)
    assert not events


def test_missing_devices_are_reported_not_fatal() -> None:
    events: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    def on_event(*a: Any) -> None:
        with lock:
            events.append(a)

    video = VideoSource(VideoSpec(source="/dev/video97"), on_event)
    audio = AudioSource(AudioSpec(source="no-such-microphone"), on_event)
    video.start()
    audio.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(events) < 2:
            video.check()
            time.sleep(0.05)
    finally:
        video.stop()
        audio.stop()
    names = sorted(e[0] for e in events)
    assert names == ["camera_lost", "microphone_lost"], events
    assert video.state == "lost" and audio.state == "lost"
    mic = next(e for e in events if e[0] == "microphone_lost")
    assert "no-such-microphone" in mic[2]


# --------------------------------------------------------------------------------- encoder


def test_argv_is_a_list_with_the_expected_options(tmp_path: Path) -> None:
    s = MediaSpec.from_json(DOC_EXAMPLE)
    argv = enc.build_argv(s, list_path=tmp_path / "l.csv", audio_fd=7, progress_fd=9,
                          live={"flv": 11, "mpegts": 12})
    assert all(isinstance(a, str) for a in argv) and argv[0] == "ffmpeg"

    def opt(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert opt("-tune") == "zerolatency" and opt("-preset") == "veryfast"
    assert opt("-g") == "60" and opt("-keyint_min") == "60"
    assert opt("-b:v") == opt("-maxrate") == opt("-bufsize") == "2500k"
    assert opt("-c:v") == "libx264" and opt("-c:a") == "aac" and opt("-b:a") == "128k"
    assert opt("-progress") == "pipe:9" and opt("-s") == "1280x720"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-i"] == ["pipe:0", "pipe:7"]
    assert opt("-thread_queue_size") and opt("-pix_fmt") == enc.PIPE_PIX_FMT
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-map"] == ["0:v:0", "1:a:0"]
    tee = opt("-f") if argv.count("-f") == 1 else argv[-1]
    assert tee.startswith("[f=segment:segment_time=60:segment_format=mpegts:")
    assert "segment_list_type=csv" in tee and "onfail=abort]" in tee.split("|")[0]
    assert tee.split("|")[1:] == [
        "[f=flv:flvflags=no_duration_filesize:onfail=ignore]pipe:11",
        "[f=mpegts:onfail=ignore]pipe:12"]
    no_live = enc.build_argv(s, list_path=tmp_path / "l.csv")[-1]
    assert no_live.startswith("[f=segment:") and "|" not in no_live.replace("\\|", "")
    with pytest.raises(SpecError, match="even"):
        enc.build_argv(spec(tmp_path, width=321), list_path=tmp_path / "l.csv")


def test_argv_live_only_when_the_disk_guard_stopped_the_recording(tmp_path: Path) -> None:
    s = MediaSpec.from_json(DOC_EXAMPLE)
    off = replace(s, recording=replace(s.recording, enabled=False))
    assert MediaSpec.from_json(off.to_json()) == off
    tee = enc.build_argv(off, list_path=tmp_path / "l.csv", live={"flv": 11})[-1]
    assert tee == "[f=flv:flvflags=no_duration_filesize:onfail=ignore]pipe:11"
    assert enc.build_argv(off, list_path=tmp_path / "l.csv")[-1] == "[f=null]-"


def test_progress_parsing() -> None:
    block = {"frame": "250", "fps": "25.01", "bitrate": "2488.3kbits/s", "speed": "1.01x",
             "out_time_us": "10000000", "dup_frames": "0", "drop_frames": "2",
             "progress": "continue"}
    p = enc.parse_progress(block)
    assert (p.frames, p.fps, p.bitrate_kbps, p.speed, p.out_time_s, p.drop) == (
        250, 25.01, 2488.3, 1.01, 10.0, 2)
    assert enc.parse_progress({"bitrate": "N/A", "speed": "N/A"}).bitrate_kbps == 0.0


def test_segment_numbering_continues(tmp_path: Path) -> None:
    assert enc.next_segment_number(tmp_path) == 0
    for n in (0, 1, 7):
        (tmp_path / f"seg-{n:05d}.ts").write_bytes(b"x")
    (tmp_path / "seg-x.ts").write_bytes(b"x")
    assert enc.next_segment_number(tmp_path) == 8


def test_encoder_records_into_an_awkward_directory(tmp_path: Path) -> None:
    """Tee escaping for real: ':', '|', quotes, brackets and spaces in the recording path."""
    rec = tmp_path / "a:b|c d'e[1]"
    s = spec(rec)
    live: dict[str, list[bytes]] = {"flv": [], "mpegts": []}
    e = enc.Encoder(s, lambda fmt, chunk: live[fmt].append(chunk),
                    live_formats=("flv", "mpegts"))
    e.start()
    frame = enc.to_pipe(SyntheticVideo(320, 240, 25).frame(1))
    audio = SyntheticAudio(48000, 2)

    def feed_audio() -> None:
        for _ in range(125):  # 2.5 s
            e.write_audio(audio.chunk(960))

    t = threading.Thread(target=feed_audio)
    t.start()
    for _ in range(62):
        e.write_video(frame)
    t.join()
    e.close_inputs()
    assert e.wait(20) == 0, list(e.errors)
    watcher = enc.SegmentWatcher(e.list_path, rec, wall0=1000.0)
    segs = watcher.poll()
    assert len(segs) >= 2 and all(Path(x.path).parent == rec for x in segs)
    assert segs[0].start == 1000.0 and segs[0].sha256 == enc.sha256_file(Path(segs[0].path))
    for fmt, chunks in live.items():  # both live containers carry the whole encode too
        path = tmp_path / f"live.{fmt}"
        path.write_bytes(b"".join(chunks))
        assert count_frames(path) == 62, fmt
    streams = ffprobe_streams(segs[0].path)
    assert {x["codec_name"] for x in streams} == {"h264", "aac"}
    assert sum(count_frames(x.path) for x in segs) == 62
    assert e.progress.frames > 0


# --------------------------------------------------------------------------------- devices

V4L2_OUTPUT = """ioctl: VIDIOC_ENUM_FMT
\tType: Video Capture

\t[0]: 'MJPG' (Motion-JPEG, compressed)
\t\tSize: Discrete 1280x720
\t\t\tInterval: Discrete 0.033s (30.000 fps)
\t\t\tInterval: Discrete 0.067s (15.000 fps)
\t\tSize: Discrete 640x480
\t\t\tInterval: Discrete 0.033s (30.000 fps)
\t[1]: 'YUYV' (YUYV 4:2:2)
\t\tSize: Discrete 640x480
\t\t\tInterval: Discrete 0.033s (30.000 fps)
"""


def test_v4l2_modes_are_parsed() -> None:
    assert devices.parse_v4l2_formats(V4L2_OUTPUT) == [
        {"format": "MJPG", "width": 1280, "height": 720, "fps": [30.0, 15.0]},
        {"format": "MJPG", "width": 640, "height": 480, "fps": [30.0]},
        {"format": "YUYV", "width": 640, "height": 480, "fps": [30.0]},
    ]


def test_cameras_are_listed_from_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for node, name in (("video10", "Cam B"), ("video2", "HD Webcam C270")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "name").write_text(name + "\n")
    monkeypatch.setattr(devices.shutil, "which", lambda _tool: None)
    cams = devices.list_cameras(tmp_path)
    assert [(c["name"], c["path"], c["modes"]) for c in cams] == [
        ("HD Webcam C270", "/dev/video2", None), ("Cam B", "/dev/video10", None)]
    assert "v4l2-ctl" in cams[0]["note"]
    assert devices.list_cameras(tmp_path / "absent") == []
