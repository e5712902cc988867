"""Network cameras read by a child FFmpeg into I420 (agent/media/netsource.py), against real
FFmpeg senders: MPEG-TS over UDP and over HTTP, which die and come back. Both FFmpegs the agent
can choose (bundled 9, Debian's 5.1) read them.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from agent.media.encoder import to_pipe
from agent.media.ffmpeg import locate
from agent.media.health import thumbnail
from agent.media.netsource import FfmpegReader, concat_script, is_network, reader_argv
from agent.media.sources import VideoSource
from agent.media.spec import VideoSpec
from tests.media_support import UdpVideoSource, _stop
from tests.support import free_port, wait_until

W, H, FPS = 320, 180, 25
USER, PASSWORD, TOKEN = "teacher", "Pa55word-s3cret", "tok3n-abcdef"


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def __call__(self, *event: Any) -> None:
        with self._lock:
            self.items.append(event)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [e for e in self.items if e[0] == name]


class HttpCamera:
    """FFmpeg serving a red picture as MPEG-TS over HTTP (one client; ``stop`` kills it)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, userinfo: str = "", query: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/cam{query}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                 "-f", "lavfi", "-i", f"color=c=red:s=640x360:r={FPS}",
                 "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                 "-g", str(FPS), "-pix_fmt", "yuv420p", "-f", "mpegts",
                 "-listen", "1", self.url()], stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@pytest.fixture
def http_camera(tmp_path: Path) -> Iterator[HttpCamera]:
    cam = HttpCamera(tmp_path / "camera.log")
    yield cam
    cam.stop()


@pytest.fixture
def udp_camera(tmp_path: Path) -> Iterator[UdpVideoSource]:
    cam = UdpVideoSource(640, 360, FPS, log=tmp_path / "camera.log")
    cam.start()
    yield cam
    cam.stop()


@contextlib.contextmanager
def running(src: VideoSource) -> Iterator[VideoSource]:
    src.start()
    try:
        yield src
    finally:
        src.stop()


def test_network_urls_go_to_ffmpeg_and_others_stay_with_opencv() -> None:
    for url in ("rtsp://cam/stream", "udp://127.0.0.1:5600", "srt://h:1", "http://h/x.ts",
                "HTTPS://h/x"):
        assert is_network(url), url
    for other in ("synthetic", "0", "/dev/video0", "/srv/clip.mp4", "file:///srv/clip.mp4"):
        assert not is_network(other), other
    assert isinstance(VideoSource(VideoSpec(source="udp://127.0.0.1:9"), Events()).reader,
                      FfmpegReader)
    assert not isinstance(VideoSource(VideoSpec(source="/dev/video97"), Events()).reader,
                          FfmpegReader)


def test_the_url_is_only_in_the_script_never_on_the_argv() -> None:
    url = f"rtsp://{USER}:{PASSWORD}@cam/it's?token={TOKEN}"
    script = concat_script(url)
    assert script.decode().splitlines()[1] == f"file 'rtsp://{USER}:{PASSWORD}@cam/it'\\''s" \
                                              f"?token={TOKEN}'"
    argv = reader_argv("ffmpeg", VideoSpec(source=url, width=W, height=H, fps=FPS), 7)
    assert "pipe:7" in argv and not any(s in " ".join(argv) for s in (PASSWORD, TOKEN, "cam"))
    with pytest.raises(ValueError, match="line break"):
        concat_script("udp://h:1\nfile '/etc/shadow'")


@pytest.mark.parametrize("choice", ["bundled", "system"])
def test_udp_camera_frames_are_i420_of_the_lesson_size_lost_and_restored(
        choice: str, udp_camera: UdpVideoSource) -> None:
    events = Events()
    src = VideoSource(VideoSpec(source=udp_camera.url, width=W, height=H, fps=FPS), events,
                      ffmpeg=locate(choice))
    with running(src):
        wait_until(lambda: src.captured >= FPS, 15, "the camera's first second")
        first, t0 = src.captured, time.monotonic()
        time.sleep(2.0)
        rate = (src.captured - first) / (time.monotonic() - t0)
        frame = src.latest()
        assert frame is not None and frame.pix_fmt == "yuv420p"
        assert frame.image.shape == (H * 3 // 2, W) and frame.size == (W, H)
        assert to_pipe(frame.image, src_fmt=frame.pix_fmt) is frame.image  # no conversion
        assert rate == pytest.approx(FPS, rel=0.2), rate
        assert float(thumbnail(frame.image, "yuv420p").std()) > 20  # testsrc2, not a blank
        assert src.state == "ok" and not events.items

        udp_camera.stop()
        gone = time.monotonic()
        wait_until(lambda: events.named("camera_lost"), 5, "camera_lost")
        assert time.monotonic() - gone <= 3.5 and src.state == "lost"
        lost_at = src.captured
        time.sleep(1.0)
        udp_camera.start()
        wait_until(lambda: events.named("camera_restored"), 20, "camera_restored")
        wait_until(lambda: src.captured > lost_at + FPS, 5, "frames again")
    assert not src._thread.is_alive()
    assert src.reader.proc is None  # the child FFmpeg is gone with the source


def test_http_camera_with_a_password_secrets_stay_off_argv_events_and_logs(
        http_camera: HttpCamera, caplog: pytest.LogCaptureFixture) -> None:
    """A camera URL with user:password and a token: frames flow, and no process's command line,
    no event and no log line ever shows them; the camera dies (FFmpeg's reason is reported,
    scrubbed) and comes back."""
    caplog.set_level("DEBUG")
    url = http_camera.url(f"{USER}:{PASSWORD}@", f"?token={TOKEN}")
    http_camera.start()
    events = Events()
    src = VideoSource(VideoSpec(source=url, width=W, height=H, fps=FPS), events,
                      ffmpeg=locate("bundled"))
    seen: list[str] = []
    watching = threading.Event()

    def watch_cmdlines() -> None:
        while not watching.is_set():
            for p in psutil.process_iter(["cmdline"]):
                seen.append(" ".join(p.info["cmdline"] or []))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_cmdlines, daemon=True)
    watcher.start()
    try:
        with running(src):
            wait_until(lambda: src.captured >= 10, 15, "frames from the HTTP camera")
            frame = src.latest()
            assert frame is not None
            y, u, v = (frame.image[:H].mean(), frame.image[H:H + H // 4].mean(),
                       frame.image[H + H // 4:].mean())
            # red in BT.601 limited range: Y 81, Cb 90, Cr 240 (planes in I420 order)
            assert (y, u, v) == (pytest.approx(81, abs=4), pytest.approx(90, abs=4),
                                 pytest.approx(240, abs=4))

            http_camera.stop()  # the server goes: FFmpeg's reader sees the end of the stream
            wait_until(lambda: events.named("camera_lost"), 8, "camera_lost")
            wait_until(lambda: src.reader.problem, 8, "FFmpeg's reason")
            time.sleep(2.0)  # refused reconnections meanwhile, with back-off
            http_camera.start()
            wait_until(lambda: events.named("camera_restored"), 20, "camera_restored")
    finally:
        watching.set()
        watcher.join(5)
    ffmpeg_lines = [c for c in seen if "concat" in c and "pipe:" in c]
    assert ffmpeg_lines, "the reader's FFmpeg was never seen"
    reported = [*seen, *(repr(e) for e in events.items), src.reader.problem,
                *(r.getMessage() for r in caplog.records)]
    for secret in (PASSWORD, TOKEN, f"{USER}:"):
        assert not [r for r in reported if secret in r], secret
    lost = events.named("camera_lost")[-1]  # (a slow start may have made one before)
    assert "127.0.0.1" in lost[2] and "***" in lost[2]
    assert "FFmpeg" in lost[3]["reason"] or "no frames" in lost[3]["reason"]


def test_a_camera_that_never_answers_is_lost_not_fatal_and_backs_off() -> None:
    port = free_port()  # nobody listens: every FFmpeg started is refused at once
    events = Events()
    src = VideoSource(VideoSpec(source=f"http://127.0.0.1:{port}/cam", width=W, height=H,
                                fps=FPS), events, ffmpeg=locate("bundled"))
    starts: list[int] = []
    real_open = src.reader.open

    def counting_open() -> None:
        starts.append(1)
        real_open()

    src.reader.open = counting_open  # type: ignore[method-assign]
    with running(src):
        wait_until(lambda: events.named("camera_lost"), 6, "camera_lost")
        time.sleep(6.0)
    (lost,) = events.named("camera_lost")
    assert "Connection refused" in lost[3]["reason"] or "FFmpeg" in lost[3]["reason"], lost
    # back-off 0.5, 1, 2, 4, 5 s: not one FFmpeg every half second for a dead camera
    assert 3 <= len(starts) <= 7, len(starts)
    assert src.captured == 0 and src.state == "lost"


def test_i420_thumbnail_matches_the_bgr_one() -> None:
    import cv2

    rng = np.random.default_rng(1)
    bgr = cv2.resize(rng.integers(0, 255, (36, 64, 3), np.uint8), (640, 360))
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    diff = np.abs(thumbnail(i420, "yuv420p").astype(int) - thumbnail(bgr).astype(int))
    assert diff.mean() < 3
    black = cv2.cvtColor(np.zeros((360, 640, 3), np.uint8), cv2.COLOR_BGR2YUV_I420)
    assert thumbnail(black, "yuv420p").mean() < 1


def test_doctor_probe_looks_at_a_network_camera(udp_camera: UdpVideoSource) -> None:
    """The device probe (doctor, status snapshot) reads the camera with media.ffmpeg's FFmpeg
    and makes its snapshot from the I420 frames."""
    import base64

    import cv2

    from agent.media import peek

    res = peek.probe(VideoSpec(source=udp_camera.url, width=W, height=H, fps=FPS), None, 1.5,
                     jpeg_width=160, ffmpeg="bundled")
    video = res["video"]
    assert video["ok"], res
    assert (video["width"], video["height"]) == (W, H) and video["frames"] >= FPS // 2
    assert not video["black"] and not video["frozen"]
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(video["jpeg"]), np.uint8),
                        cv2.IMREAD_COLOR)
    assert jpeg.shape == (90, 160, 3)


def test_sources_are_shown_without_their_secrets() -> None:
    """What status warnings, doctor findings, events and the worker's log call the camera."""
    from agent.urls import shown_source

    shown = shown_source(f"rtsp://{USER}:{PASSWORD}@cam:554/live?token={TOKEN}&latency=80")
    assert shown == "rtsp://***@cam:554/live?token=***&latency=80"
    for plain in ("synthetic", "0", "/dev/video0", "/srv/clip.mp4"):
        assert shown_source(plain) == plain
