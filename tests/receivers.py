"""Real live receivers for the media tests: FFmpeg listening for RTMP or SRT, writing to files.

Each `start()` writes a new numbered file (``out-0.flv``, ``out-1.flv``, ...), so a test can
kill a receiver, bring it back, and inspect what arrived in each of its lives. ffprobe helpers
say what a file holds. Listening is detected from /proc/net (a probe connection would be taken
for the publisher: an FFmpeg listener accepts exactly one).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RECEIVER_TIMEOUT_S = 60  # how long an RTMP listener waits for its publisher


def _listening(port: int, proto: str) -> bool:
    """Whether a socket is bound to ``port``: TCP in LISTEN state, or any UDP socket."""
    hexport = f":{port:04X}"
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[1].endswith(hexport) and (proto == "udp" or cols[3] == "0A"):
                    return True
    return False


@dataclass
class Receiver:
    """One FFmpeg listener; subclasses give its argv."""

    port: int
    out_path: Path
    files: list[Path] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)  # time.monotonic() of each start
    proc: subprocess.Popen[bytes] | None = None
    _log: object = None

    proto = "tcp"

    def argv(self, out: Path) -> list[str]:
        raise NotImplementedError

    def start(self, wait_s: float = 10.0) -> None:
        """Start a new life writing the next numbered file; return once it listens."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        stem, suffix = self.out_path.stem, self.out_path.suffix
        out = self.out_path.with_name(f"{stem}-{len(self.files)}{suffix}")
        self.files.append(out)
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115  closed in _close_log
        self._close_log()
        self._log = log
        self.proc = subprocess.Popen(self.argv(out), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        self.started_at.append(time.monotonic())
        deadline = time.monotonic() + wait_s
        while not _listening(self.port, self.proto):
            if self.proc.poll() is not None:
                raise AssertionError(f"receiver exited with {self.proc.returncode}: "
                                     f"{self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver not listening on {self.port} after {wait_s} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, like a crashed server: the publisher sees a reset, not a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 15.0) -> int | None:
        """Wait for the listener to end by itself (its publisher left), else kill it."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_log()
        return self.proc.returncode

    def restart(self) -> None:
        self.kill()
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def current(self) -> Path:
        return self.files[-1]

    def size(self, index: int = -1) -> int:
        try:
            return self.files[index].stat().st_size
        except (OSError, IndexError):
            return 0

    def log_text(self) -> str:
        if not self.files:
            return ""
        with contextlib.suppress(OSError):
            return self.files[-1].with_suffix(".log").read_text(errors="replace")
        return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None


@dataclass
class RtmpReceiver(Receiver):
    """`ffmpeg -listen 1 -i rtmp://127.0.0.1:PORT/APP/KEY -c copy out-N.flv`: one publisher."""

    path: str = "live/x"

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.path}"

    def argv(self, out: Path) -> list[str]:
        return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-y",
                "-listen", "1", "-timeout", str(RECEIVER_TIMEOUT_S),
                "-analyzeduration", "500000", "-i", self.url,
                "-c", "copy", "-flush_packets", "1", "-f", "flv", str(out)]


@dataclass
class SrtReceiver(Receiver):
    """`ffmpeg -i srt://127.0.0.1:PORT?mode=listener&latency=... -c copy out-N.ts`."""

    latency_us: int = 120_000
    passphrase: str = ""
    proto = "udp"

    @property
    def url(self) -> str:
        """What a sender (caller) uses."""
        return f"srt://127.0.0.1:{self.port}"

    def argv(self, out: Path) -> list[str]:
        listen = f"srt://127.0.0.1:{self.port}?mode=listener&latency={self.latency_us}"
        if self.passphrase:
            listen += f"&passphrase={self.passphrase}"
        return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-y",
                "-analyzeduration", "500000", "-i", listen,
                "-c", "copy", "-flush_packets", "1", "-f", "mpegts", str(out)]


# --- what arrived ---------------------------------------------------------------------------

@dataclass
class Probe:
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    video_frames: int
    audio_frames: int
    duration_s: float


def probe(path: Path) -> Probe:
    """Codecs, size, decoded frame counts and duration of a media file (ffprobe -count_frames)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,codec_name,width,height,nb_read_frames:format=duration",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise AssertionError(f"ffprobe {path} failed: {out.stderr.strip()[-500:]}")
    data = json.loads(out.stdout or "{}")
    video = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"), {})
    audio = next((s for s in data.get("streams", []) if s.get("codec_type") == "audio"), {})
    return Probe(
        video_codec=video.get("codec_name"), audio_codec=audio.get("codec_name"),
        width=video.get("width"), height=video.get("height"),
        video_frames=int(video.get("nb_read_frames") or 0),
        audio_frames=int(audio.get("nb_read_frames") or 0),
        duration_s=float(data.get("format", {}).get("duration") or 0.0),
    )


def concat_frames(paths: list[Path]) -> int:
    """Video frames in the concatenation of ``paths`` (MPEG-TS segments concatenate as bytes)."""
    if not paths:
        return 0
    joined = paths[0].with_name(f".concat-{len(paths)}-{paths[0].name}")
    try:
        with open(joined, "wb") as out:
            for p in paths:
                with open(p, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        return probe(joined).video_frames
    finally:
        joined.unlink(missing_ok=True)


def wait_for_growth(receiver: Receiver, min_bytes: int, timeout: float) -> float:
    """Seconds until the receiver's current file holds ``min_bytes``; raises after ``timeout``."""
    t0 = time.monotonic()
    while receiver.size() < min_bytes:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{receiver.current()} has {receiver.size()} bytes after "
                                 f"{timeout:.0f} s (wanted {min_bytes}); log: "
                                 f"{receiver.log_text()[-1000:]}")
        time.sleep(0.02)
    return time.monotonic() - t0
