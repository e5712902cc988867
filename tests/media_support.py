"""Real media parts for tests: a microphone without a sound card, a camera without a camera,
the media worker as a process, and FFprobe/FFmpeg measurements of what it recorded.

Everything runs in the test's own temporary directory and is stopped by PID (MEDIA-NOTES).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import REPO, wait_until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class VirtualMicrophone:
    """A user-space PulseAudio with a null sink whose monitor is the default source ``vmic``.

    Whatever ``play_tone`` plays into ``vmic_sink`` is what a program recording from ALSA
    ``default``/``pulse`` (PortAudio) hears. ``env`` is what a child process needs to find it.
    """

    def __init__(self, workdir: Path, rate: int = 48000, channels: int = 2) -> None:
        self.workdir, self.rate, self.channels = workdir, rate, channels
        self.runtime = workdir / "xdg-runtime"
        self.proc: subprocess.Popen[bytes] | None = None
        self.players: list[subprocess.Popen[bytes]] = []
        self.log = workdir / "pulseaudio.log"

    @property
    def socket(self) -> Path:
        return self.runtime / "pulse" / "native"

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": str(self.runtime), "PULSE_SERVER": f"unix:{self.socket}"}

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        sink = f"module-null-sink sink_name=vmic_sink rate={self.rate} channels={self.channels}"
        argv = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "--use-pid-file=no", "--log-target=stderr",
                "--load=module-native-protocol-unix", f"--load={sink}",
                "--load=module-always-sink"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env={**os.environ, "XDG_RUNTIME_DIR":
                                                    str(self.runtime)},
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, 15,
                   "PulseAudio's socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"PulseAudio exited ({self.proc.returncode}); see {self.log}")
        self.pactl("load-module", "module-remap-source", "master=vmic_sink.monitor",
                   "source_name=vmic")
        self.pactl("set-default-source", "vmic")

    def pactl(self, *args: str) -> str:
        out = subprocess.run(["pactl", *args], env=self._env(), capture_output=True, text=True,
                             timeout=15)
        if out.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def tone_file(self, freq: float, seconds: float, volume: float = 0.5) -> Path:
        path = self.workdir / f"tone-{freq:g}-{seconds:g}-{volume:g}.wav"
        if not path.exists():
            subprocess.run(["sox", "-n", "-r", str(self.rate), "-c", str(self.channels), "-b",
                            "16", str(path), "synth", f"{seconds:g}", "sine", f"{freq:g}",
                            "vol", f"{volume:g}"], check=True, capture_output=True, timeout=60)
        return path

    def play_tone(self, freq: float = 440.0, seconds: float = 10.0,
                  volume: float = 0.5) -> subprocess.Popen[bytes]:
        """Start playing into the microphone; returns the player (it ends by itself)."""
        wav = self.tone_file(freq, seconds, volume)
        p = subprocess.Popen(["paplay", "--device=vmic_sink", str(wav)], env=self._env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.players.append(p)
        return p

    def stop(self) -> None:
        for p in self.players:
            _stop(p)
        _stop(self.proc)


class UdpVideoSource:
    """A live camera stand-in: FFmpeg sends testsrc2 as H.264 in MPEG-TS over UDP, in real time.

    ``stop()`` makes the camera disappear; ``start()`` brings it back on the same port.
    """

    def __init__(self, width: int = 640, height: int = 360, fps: int = 25,
                 port: int | None = None, log: Path | None = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.port = port or free_udp_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                "-f", "lavfi", "-i", f"testsrc2=s={self.width}x{self.height}:r={self.fps}",
                "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                "-g", str(self.fps), "-pix_fmt", "yuv420p",
                "-f", "mpegts", f"{self.url}?pkt_size=1316"]
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class WorkerProcess:
    """``python -m agent.media.worker`` with a spec on stdin; its JSON lines are collected."""

    def __init__(self, spec: dict[str, Any], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.spec, self.workdir, self.extra_env = spec, workdir, env or {}
        self.log = workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.bad_lines: list[bytes] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent.media.worker"],
                                         cwd=REPO, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.spec).encode() + b"\n")
        self.proc.stdin.flush()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                self.bad_lines.append(raw)
                continue
            with self._lock:
                self.lines.append(msg)

    def of(self, type_: str, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.lines if m.get("type") == type_
                    and (event is None or m.get("event") == event)]

    def wait_for(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            value = pred()
            if not value and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) while waiting for "
                                     f"{what}; log:\n{self.log_tail()}")
            return value
        return wait_until(check, timeout, what)

    def wait(self, timeout: float) -> int:
        """The exit code, once every line the worker wrote has been read."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, how: str = "line", timeout: float = 30.0) -> int:
        """Graceful stop by the ``stop`` line, SIGTERM or closing stdin; returns the exit code."""
        assert self.proc is not None and self.proc.stdin is not None
        if how == "line":
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()
        elif how == "sigterm":
            self.proc.send_signal(signal.SIGTERM)
        elif how == "eof":
            self.proc.stdin.close()
        else:
            raise ValueError(how)
        code = self.wait(timeout)
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def ffprobe_streams(path_or_url: str | Path) -> list[dict[str, Any]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json",
                          str(path_or_url)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"ffprobe {path_or_url} failed: {out.stderr.strip()}")
    return list(json.loads(out.stdout).get("streams", []))


def count_frames(path: str | Path) -> int:
    """Decoded video frames (``-count_frames``), not the container's claim."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"ffprobe -count_frames {path} failed: {out.stderr.strip()}")
    return int(out.stdout.split()[0])  # MPEG-TS lists the stream under its program too


def decoded_frames(path: str | Path) -> int:
    """The video frames that decode, as ``ffprobe -count_frames`` counts them (a damaged packet
    is skipped, not fatal), by FFmpeg's libraries in this process (PyAV): a check over dozens of
    short segments spent most of its time starting one ffprobe per file on a loaded machine."""
    import av

    frames = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            try:
                frames += len(packet.decode())
            except av.error.FFmpegError:
                continue
    return frames


def duration_s(path: str | Path, stream: str = "v:0") -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries",
                          "packet=pts_time,duration_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=120)
    times = [float(r.split(",")[0]) for r in out.stdout.split() if r and r[0].isdigit()]
    return max(times) - min(times) if times else 0.0


def mean_volume_db(path: str | Path, start_s: float = 0.0,
                   seconds: float | None = None) -> float:
    """FFmpeg ``volumedetect`` mean volume of the first audio stream (dB; -91 is digital 0)."""
    window = ["-t", f"{seconds:g}"] if seconds else []
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-ss", f"{start_s:g}", *window,
                          "-i", str(path), "-map", "0:a:0", "-af", "volumedetect", "-f", "null",
                          "-"], capture_output=True, text=True, timeout=120)
    m = re.search(r"mean_volume: (-?[\d.]+|-inf) dB", out.stderr)
    if not m:
        raise AssertionError(f"volumedetect found no audio in {path}: {out.stderr[-500:]}")
    return -200.0 if m.group(1) == "-inf" else float(m.group(1))


def concat_segments(segments: list[str | Path], out: Path) -> Path:
    """MPEG-TS segments join by plain concatenation (that is why the recording uses TS)."""
    with out.open("wb") as dst:
        for seg in segments:
            with open(seg, "rb") as src:
                shutil.copyfileobj(src, dst)
    return out


def fd_dir_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}/fd").exists()


BEEP_HZ = 1000.0
#: Demodulated 1 kHz level is averaged over this many samples at 48 kHz (12.5 ms): a multiple
#: of 48000/560 and 48000/1440, so the 440 Hz tone (at 560 and 1440 Hz after demodulation) nulls.
BEEP_AVERAGE = 600


def video_captures(path: str | Path, width: int) -> list[tuple[float, float | None]]:
    """(PTS, capture time from the time strip, or None) of every frame of a synthetic recording,
    in order; decoded as a stream (about 1 MB/s of memory whatever the length)."""
    import tempfile

    import numpy as np

    from agent.media.timestrip import BITS, block_size, crop_filter, read_strip

    b = block_size(width)
    size = BITS * b * b
    captures: list[float | None] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts", "-i",
             str(path), "-an", "-vf", f"{crop_filter(width)},showinfo", "-fps_mode",
             "passthrough", "-f", "rawvideo", "pipe:1"], stdout=subprocess.PIPE, stderr=err)
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
        raise AssertionError(f"{path}: decoded {len(captures)} frames but showinfo listed "
                             f"{len(pts)}")
    return list(zip(pts, captures, strict=True))


@dataclass
class FrameSteps:
    """A recording's frames judged by their capture times (the time strip)."""

    frames: int
    unreadable: int
    repeated: int  # a capture-time step of 0
    dropped: int   # a step of k slots counts k - 1
    where: list[str]


def frame_steps(frames: list[tuple[float, float | None]], fps: int) -> FrameSteps:
    """Repeats and drops in ``video_captures``'s output, with where the first ones are."""
    caps = [c for _, c in frames if c is not None]
    steps = [(b - a) * fps for a, b in itertools.pairwise(caps)]
    return FrameSteps(
        frames=len(frames), unreadable=len(frames) - len(caps),
        repeated=sum(1 for s in steps if s < 0.5),
        dropped=sum(round(s) - 1 for s in steps if s > 1.5),
        where=[f"{'repeat' if s < 0.5 else 'drop'} at {i / fps:.1f} s"
               for i, s in enumerate(steps) if s < 0.5 or s > 1.5])


def beep_onsets(path: str | Path, rate: int = 48000) -> list[float]:
    """PTS of every synthetic beep's onset: where the demodulated 1 kHz level crosses half the
    beep's level (checked on FFmpeg-made beeps: within 0.5 ms)."""
    import numpy as np

    start = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "frame=pts_time",
         "-read_intervals", "%+#1", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True, timeout=60).stdout.split()[0]
    pcm = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map",
         "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "s16le", "pipe:1"],
        capture_output=True, check=True, timeout=600).stdout
    return onsets_in(np.frombuffer(pcm, np.int16), float(start), rate)


def onsets_in(pcm: Any, start: float, rate: int = 48000) -> list[float]:
    """Beep onsets (seconds) in mono int16 samples whose first sample is at ``start``."""
    import numpy as np

    x = np.frombuffer(pcm, np.int16).astype(np.float64) / 32768
    base = x * np.exp(-2j * np.pi * BEEP_HZ * np.arange(len(x)) / rate)
    csum = np.concatenate(([0], np.cumsum(base)))
    level = np.abs(csum[BEEP_AVERAGE:] - csum[:-BEEP_AVERAGE]) / BEEP_AVERAGE
    half = level.max() / 2
    above = level > half
    onsets: list[float] = []
    last = -1
    for i in np.flatnonzero(~above[:-1] & above[1:]):
        # hysteresis: a new beep only after the level fell below a quarter since the last one
        if last >= 0 and level[last:i].min() > half / 2:
            continue
        last = i
        frac = (half - level[i]) / (level[i + 1] - level[i])
        onsets.append(start + (i + frac + BEEP_AVERAGE / 2) / rate)  # window centre
    return onsets


def av_offsets_from(frames: list[tuple[float, float | None]],
                    onsets: list[float]) -> list[float]:
    """For each beep: its PTS minus the video PTS at which the capture time passes the same
    wall-clock second (interpolated between the frames around it), in ms; + = sound late."""
    import itertools

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
        second = first_second + round(onset - first_pts)
        if second in crossings:
            result.append(round((onset - crossings[second]) * 1000, 1))
    return result


def av_offsets_ms(path: str | Path, width: int) -> list[float]:
    """A/V offset of each beep of a synthetic recording (see :func:`av_offsets_from`)."""
    return av_offsets_from(video_captures(path, width), beep_onsets(path))
