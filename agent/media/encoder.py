"""The one FFmpeg that encodes: raw frames and samples in, MPEG-TS segments + live streams out.

Video goes in on stdin, audio on its own pipe (``pass_fds``; one writer thread per pipe, since
FFmpeg opens its inputs one after the other and a single writer deadlocks), encoder progress comes
back on another pipe. ``pass_fds`` keeps a descriptor's number in the child, so the argv names the
real numbers (``pipe:N``) instead of renumbering in a ``preexec_fn`` (unsafe with threads). The
``tee`` muxer writes the recording (``segment`` muxer) and one live stream per container the
sinks need (FLV for RTMP, MPEG-TS for SRT; :data:`LIVE_FORMATS`), each on a pipe of its own, from
one encode. Every live pipe is always drained: a full pipe would stall FFmpeg and with it the
recording. A live output that fails is dropped by the tee (``onfail=ignore``); the recording's
failure ends the encode (``onfail=abort``), since a lesson that records nothing must be noticed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.media.checksum import sha256_file
from agent.media.flv import FlvFramer
from agent.media.hwenc import hw_args
from agent.media.spec import MediaSpec, SpecError

log = logging.getLogger(__name__)

# Measured at 1280x720@30 (synthetic, libx264 veryfast, 2 cores, one core = 100%), median of
# runs: I420 worker 11% + FFmpeg 23% = 34%; BGR worker 9% + FFmpeg 28% = 37%. cv2.cvtColor in
# the worker costs less than FFmpeg's swscale of BGR, and the pipe carries half the bytes.
PIPE_PIX_FMT = "yuv420p"
#: Samples of priming FFmpeg's AAC encoder puts before the first input sample (its
#: ``initial_padding``); worker.encoder_audio_lag_ms explains why it matters.
AAC_PRIMING_SAMPLES = 1024
SEGMENT_PATTERN = "seg-%05d.ts"
_SEGMENT_RE = re.compile(r"^seg-(\d{5,})\.ts$")
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_NO_PROBE = ("-probesize", "32", "-analyzeduration", "0")
_LEVEL_RE = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug)\]")
#: Live containers the encoder can write, with the tee slave options of each.
LIVE_FORMATS: dict[str, tuple[tuple[str, str], ...]] = {
    "flv": (("f", "flv"), ("flvflags", "no_duration_filesize")),
    "mpegts": (("f", "mpegts"),),
}


def to_pipe(image: np.ndarray, pix_fmt: str = PIPE_PIX_FMT,
            src_fmt: str = "bgr24") -> np.ndarray:
    """A frame as the bytes the encoder's video pipe expects (a contiguous array): BGR is
    converted, a frame already in the pipe's format (the FFmpeg reader's I420) goes as it is."""
    if src_fmt == pix_fmt:
        return image
    if pix_fmt == "yuv420p":
        return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
    return np.ascontiguousarray(image)


def tee_escape(text: str, specials: str) -> str:
    """Backslash-escape for FFmpeg's av_get_token (backslash and quote are always special)."""
    return "".join("\\" + c if c in specials or c in "\\'" else c for c in text)


def _tee_slave(opts: list[tuple[str, str]], target: str) -> str:
    """One slave. Two levels of parsing: the tee splits slaves on ``|`` (one level of escapes),
    then a slave's ``[options]`` are parsed again (a second level); its file name only by the
    first."""
    inner = ":".join(f"{k}={tee_escape(v, ':]=|[')}" for k, v in opts)
    return tee_escape(f"[{inner}]{target}", "|")


def tee_target(record_dir: Path, list_path: Path, segment_s: float, start_number: int,
               live: Mapping[str, int] | None = None, record: bool = True) -> str:
    """The ``-f tee`` output: segments on disk (unless ``record`` is off: the disk guard stopped
    the recording, docs/media.md), and each live container to its pipe (fd)."""
    recording = [("f", "segment"), ("segment_time", f"{segment_s:g}"),
                 ("segment_format", "mpegts"), ("reset_timestamps", "0"),
                 ("segment_start_number", str(start_number)),
                 ("segment_list", str(list_path)), ("segment_list_type", "csv"),
                 ("onfail", "abort")]
    slaves = [_tee_slave(recording, str(record_dir / SEGMENT_PATTERN))] if record else []
    for fmt, fd in (live or {}).items():
        slaves.append(_tee_slave([*LIVE_FORMATS[fmt], ("onfail", "ignore")], f"pipe:{fd}"))
    return "|".join(slaves) or _tee_slave([("f", "null")], "-")  # encode, keep nothing


def next_segment_number(record_dir: Path) -> int:
    """Continue after the segments already there (a restarted worker must not overwrite)."""
    numbers = [int(m.group(1)) for p in record_dir.glob("seg-*.ts")
               if (m := _SEGMENT_RE.match(p.name))]
    return max(numbers, default=-1) + 1


def build_argv(spec: MediaSpec, *, list_path: Path, start_number: int = 0,
               audio_fd: int = 3, progress_fd: int = 4, live: Mapping[str, int] | None = None,
               pix_fmt: str = PIPE_PIX_FMT, ffmpeg: str = "ffmpeg") -> list[str]:
    """The encoder's argv (a list: no shell ever sees it)."""
    v, a, e = spec.video, spec.audio, spec.encoder
    if v.width % 2 or v.height % 2:
        raise SpecError(f"video size {v.width}x{v.height}: H.264 4:2:0 needs even width and "
                        "height; set media.video.width/height to even numbers")
    gop = max(1, round(v.fps * e.gop_s))
    kbps = e.video_bitrate_kbps
    # WebRTC receivers are only sure to decode constrained baseline (aiortc decoded half the
    # frames of a High-profile stream here); x264's "baseline" is that. Only with a WHIP sink:
    # it costs the recording CABAC and 8x8 transforms (~10-15 % more bits for the same quality).
    profile = []
    if _has_whip(spec):
        profile = ["-profile:v", "constrained_baseline" if e.codec == "h264_vaapi"
                   else "baseline"]
    pre, codec_args = hw_args(e.codec, e.hw_device)
    if e.codec == "libx264":
        codec_args = ["-c:v", "libx264", "-preset", e.preset, "-tune", "zerolatency",
                      "-pix_fmt", "yuv420p"]
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "level+warning", "-nostats", *pre,
        "-progress", f"pipe:{progress_fd}", "-stats_period", "1",
        # Raw inputs need no probing; without these FFmpeg sits ~1 s on the first frames.
        *_NO_PROBE, "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{v.width}x{v.height}",
        "-framerate", str(v.fps), "-thread_queue_size", "16", "-i", "pipe:0",
        *_NO_PROBE, "-f", "s16le", "-ar", str(a.rate),
        "-ch_layout", "mono" if a.channels == 1 else "stereo",
        "-thread_queue_size", "64", "-i", f"pipe:{audio_fd}",
        "-map", "0:v:0", "-map", "1:a:0",
        *codec_args, *profile,
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps}k",
        "-c:a", "aac", "-b:a", f"{e.audio_bitrate_kbps}k",
        "-max_muxing_queue_size", "1024",
        "-f", "tee", tee_target(Path(spec.recording.dir), list_path, spec.recording.segment_s,
                                start_number, live, record=spec.recording.enabled),
    ]


def _has_whip(spec: MediaSpec) -> bool:
    from agent.urls import live_kinds

    return "whip" in live_kinds(spec.live)


def ffmpeg_version(ffmpeg: str = "ffmpeg") -> str:
    try:
        out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.match(r"ffmpeg version (\S+)", out.stdout)
    return m.group(1) if m else "unknown"


@dataclass
class Progress:
    frames: int = 0
    fps: float = 0.0
    speed: float = 0.0
    bitrate_kbps: float = 0.0
    out_time_s: float = 0.0
    dup: int = 0
    drop: int = 0


def parse_progress(block: dict[str, str]) -> Progress:
    """One ``-progress`` block (key=value lines); N/A values read as 0."""
    def num(key: str, unit: str = "") -> float:
        raw = block.get(key, "").strip().removesuffix(unit)
        try:
            return float(raw)
        except ValueError:
            return 0.0
    return Progress(frames=int(num("frame")), fps=num("fps"), speed=num("speed", "x"),
                    bitrate_kbps=num("bitrate", "kbits/s"),
                    out_time_s=num("out_time_us") / 1e6,
                    dup=int(num("dup_frames")), drop=int(num("drop_frames")))


class Encoder:
    """Runs FFmpeg with two pipes in and one per live container out; callers write video and
    audio from one thread each. ``on_live(container, chunk)`` gets every live chunk (FLV cut at
    tag boundaries)."""

    def __init__(self, spec: MediaSpec, on_live: Callable[[str, bytes], None],
                 live_formats: Collection[str] = (), ffmpeg: str = "ffmpeg",
                 pix_fmt: str = PIPE_PIX_FMT) -> None:
        unknown = set(live_formats) - set(LIVE_FORMATS)
        if unknown:
            raise ValueError(f"live container(s) {sorted(unknown)} unknown: use "
                             f"{sorted(LIVE_FORMATS)}")
        self.spec, self.on_live, self.pix_fmt = spec, on_live, pix_fmt
        self.live_formats = sorted(set(live_formats))
        self.ffmpeg = shutil.which(ffmpeg) or ffmpeg
        self.record_dir = Path(spec.recording.dir)
        self.start_number = 0
        self.list_path = self.record_dir / "segments.csv"
        self.proc: subprocess.Popen[bytes] | None = None
        self.errors: deque[str] = deque(maxlen=20)
        self._audio: Any = None
        self._progress = Progress()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.spec.recording.enabled:
            self._prepare_recording()
        audio_r, audio_w = os.pipe()
        prog_r, prog_w = os.pipe()
        live = {fmt: os.pipe() for fmt in self.live_formats}  # container -> (read, write)
        child_fds = (audio_r, prog_w, *(w for _r, w in live.values()))
        argv = build_argv(self.spec, list_path=self.list_path, start_number=self.start_number,
                          audio_fd=audio_r, progress_fd=prog_w,
                          live={fmt: w for fmt, (_r, w) in live.items()}, pix_fmt=self.pix_fmt,
                          ffmpeg=self.ffmpeg)
        log.info("encoder: %s", " ".join(argv))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, pass_fds=child_fds)
        except OSError as exc:
            for fd in (audio_w, prog_r, *child_fds, *(r for r, _w in live.values())):
                os.close(fd)
            raise OSError(f"cannot start {self.ffmpeg}: {exc}; install FFmpeg "
                          "(scripts/deps.sh)") from None
        for fd in child_fds:
            os.close(fd)
        assert self.proc.stdin and self.proc.stderr
        for fd in (self.proc.stdin.fileno(), audio_w):
            with contextlib.suppress(OSError):  # bigger pipes: fewer wake-ups per frame
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._audio = open(audio_w, "wb")  # noqa: SIM115 (closed in close_inputs)
        for fmt, (r, _w) in live.items():
            self._spawn(lambda fd, fmt=fmt: self._read_live(fmt, fd), r, f"encoder-{fmt}")
        self._spawn(self._read_progress, open(prog_r, "rb"), "encoder-progress")  # noqa: SIM115
        self._spawn(self._read_stderr, self.proc.stderr, "encoder-stderr")

    def _prepare_recording(self) -> None:
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the recording directory {self.record_dir}: {exc}; "
                          "check media.recording.dir and its permissions") from None
        self.start_number = next_segment_number(self.record_dir)
        self.list_path = self.record_dir / f"segments-{self.start_number:05d}.csv"

    def _spawn(self, fn: Callable[[Any], None], stream: Any, name: str) -> None:
        t = threading.Thread(target=fn, args=(stream,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def write_video(self, data: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)

    def write_audio(self, data: bytes) -> None:
        self._audio.write(data)

    @property
    def progress(self) -> Progress:
        with self._lock:
            return Progress(**asdict(self._progress))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close_inputs(self) -> None:
        """EOF on both inputs: FFmpeg flushes, closes the open segment and exits."""
        assert self.proc is not None
        for f in (self.proc.stdin, self._audio):
            try:
                if f is not None:
                    f.close()
            except OSError as exc:  # the encoder is already gone: nothing left to flush
                log.debug("closing an encoder input: %s", exc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float) -> int:
        """Exit code; kills FFmpeg if it has not finished within ``timeout``."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("encoder did not finish within %.0f s; killing it (the open segment may "
                        "be cut short)", timeout)
            self.proc.kill()
            code = self.proc.wait()
        for t in self._threads:
            t.join(2.0)
        return code

    def _read_live(self, fmt: str, fd: int) -> None:
        """Drain one live pipe to EOF, whatever happens downstream (the recording needs it)."""
        framer = FlvFramer() if fmt == "flv" else None
        fanning = True
        try:
            while chunk := os.read(fd, 65536):
                if not fanning:
                    continue
                try:
                    out = framer.feed(chunk) if framer else chunk
                    if out:
                        self.on_live(fmt, out)
                except Exception:  # a sink's or the framer's bug must not stop the drain
                    log.exception("fan-out of the %s live stream failed; its live sinks get "
                                  "nothing more this lesson (the recording goes on)", fmt)
                    fanning = False
        except OSError as exc:
            log.warning("reading the encoder's %s live output failed: %s", fmt, exc)
        finally:
            os.close(fd)

    def _read_progress(self, stream: Any) -> None:
        block: dict[str, str] = {}
        with stream:
            for raw in stream:
                key, _, value = raw.decode("ascii", "replace").strip().partition("=")
                block[key] = value
                if key == "progress":
                    with self._lock:
                        self._progress = parse_progress(block)
                    block = {}

    def _read_stderr(self, stream: Any) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                m = _LEVEL_RE.search(line)
                level = m.group(1) if m else "info"
                if level in ("panic", "fatal", "error"):
                    self.errors.append(line)
                    log.warning("ffmpeg: %s", line)
                else:
                    log.info("ffmpeg: %s", line)


@dataclass(frozen=True)
class Segment:
    path: str
    bytes: int
    sha256: str
    start: float
    end: float
    duration_s: float


class SegmentWatcher:
    """Reads the segment muxer's CSV list; each new complete row is a closed segment."""

    def __init__(self, list_path: Path, record_dir: Path, wall0: float) -> None:
        self.list_path, self.record_dir, self.wall0 = list_path, record_dir, wall0
        self.seen = 0
        self.segments: list[Segment] = []

    def poll(self) -> list[Segment]:
        try:
            text = self.list_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        rows = [r for r in csv.reader(complete.splitlines()) if len(r) >= 3]
        new: list[Segment] = []
        for row in rows[self.seen:]:
            path = self.record_dir / row[0]
            try:
                start, end = float(row[1]), float(row[2])
                size = path.stat().st_size
                digest = sha256_file(path)
            except (ValueError, OSError) as exc:
                log.warning("segment list row %r unusable: %s", row, exc)
                continue
            finally:
                self.seen += 1
            new.append(Segment(str(path), size, digest, round(self.wall0 + start, 3),
                               round(self.wall0 + end, 3), round(end - start, 3)))
        self.segments.extend(new)
        return new

    def recorded_bytes(self) -> int:
        """Closed segments plus the one being written."""
        total = sum(s.bytes for s in self.segments)
        opened = self.record_dir / (SEGMENT_PATTERN % (self._first_number() + len(self.segments)))
        with contextlib.suppress(OSError):
            total += opened.stat().st_size
        return total

    def _first_number(self) -> int:
        m = re.search(r"segments-(\d+)\.csv$", self.list_path.name)
        return int(m.group(1)) if m else 0
