"""Network cameras read by a child FFmpeg, straight into the encoder's I420 (issue 10).

OpenCV hands over BGR only, so a network camera read through it cost a decode to BGR, a
conversion back to I420 in Python, and twice the pipe bytes: 1.40-1.52x a bare FFmpeg's CPU
(docs/benchmarks.md). Here one FFmpeg decodes the URL and writes raw ``yuv420p`` frames of the
lesson's size on a pipe; the worker hands them to the encoder as they are.

The URL may hold a password (``rtsp://user:pass@cam/...``) or a token in its query, and every
local user can read every command line. So the URL never is on FFmpeg's argv: FFmpeg reads a
one-entry ``ffconcat`` script from an inherited pipe (``-f concat -i pipe:N``), as the RTMP
pusher gets its URL (agent/media/senders.py); FFmpeg's messages are scrubbed of the URL's secrets
before they are logged or reported.

The reader has the OpenCV reader's shape (open / read / release) and lives inside
:class:`agent.media.sources.VideoSource`, which does the reopening with back-off, the loss
events and the frame times. ``read`` waits at most ``READ_SLICE_S`` so a stop is never held up;
``warming`` tells the source that a freshly started FFmpeg is still probing the stream (up to
``FIRST_FRAME_S``: a camera's first key frame may be seconds away).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

import numpy as np

from agent.media.spec import VideoSpec
from agent.urls import redact_url, scrub, url_secrets

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: URL schemes FFmpeg reads as a live network source (OpenCV keeps devices and files).
NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "udp", "rtp", "srt", "http", "https", "tcp",
                             "rtmp", "rtmps"})
#: The protocols the child may use: the script's pipe and the network ones (no ``file``: a
#: URL cannot make FFmpeg read local files).
PROTOCOL_WHITELIST = "pipe,udp,rtp,tcp,tls,http,https,httpproxy,srt,rtmp,rtmps,crypto"
PIX_FMT = "yuv420p"
FIRST_FRAME_S = 10.0   # started -> first frame (probe, first key frame, a slow RTSP answer)
READ_SLICE_S = 0.5     # the longest one read() call waits for a frame to begin
FRAME_REST_S = 2.0     # a frame begun must be complete within this
STOP_S = 0.3        # a reader has nothing to finish: SIGTERM, then SIGKILL after this
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: FFmpeg's decoder chatter until a stream's first key frame: not a problem worth reporting.
_CHATTER = re.compile(r"non-existing PPS|no frame!|Last message repeated|decode_slice_header|"
                      r"concealing|error while decoding MB|co located POCs|mmco: unref|"
                      r"Packet corrupt|Invalid NAL unit size|missing picture in access unit")
_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")  # "[in#0/concat @ 0x55f0] [error] "


def is_network(source: str) -> bool:
    """Whether ``source`` is a URL the FFmpeg reader takes."""
    scheme, sep, _ = source.strip().partition("://")
    return bool(sep) and scheme.lower() in NETWORK_SCHEMES


def concat_script(url: str) -> bytes:
    """The ffconcat script naming ``url`` (quoted for FFmpeg's tokenizer); ValueError for a URL
    that no script line could hold."""
    if any(c in url for c in "\r\n\0"):
        raise ValueError("the camera URL contains a line break or NUL")
    quoted = "'" + url.replace("'", "'\\''") + "'"
    # No "fflags nobuffer": it held the first frame back by a second here (2.0 s vs 1.0 s to
    # the first frame of a 1 s GOP stream, both FFmpegs).
    return f"ffconcat version 1.0\nfile {quoted}\n".encode()


def reader_argv(ffmpeg: str, spec: VideoSpec, script_fd: int) -> list[str]:
    """FFmpeg: the script's URL -> raw I420 of the lesson's size on stdout, at most one frame per
    slot of ``spec.fps`` (frames are dropped by their timestamps, never repeated: the pacer
    repeats, and counts it)."""
    fps = spec.fps
    one_per_slot = (f"select='isnan(prev_selected_t)+gt(floor(t*{fps}+0.5),"
                    f"floor(prev_selected_t*{fps}+0.5))'")
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "level+error",
            "-f", "concat", "-safe", "0", "-protocol_whitelist", PROTOCOL_WHITELIST,
            "-i", f"pipe:{script_fd}",
            "-map", "0:v:0", "-an", "-sn", "-dn",
            "-vf", f"{one_per_slot},scale={spec.width}:{spec.height},format={PIX_FMT}",
            "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", PIX_FMT, "pipe:1"]


class FfmpegReader:
    """One network camera through a child FFmpeg: frames are ``(h*3/2, w)`` I420 arrays."""

    pix_fmt = PIX_FMT

    def __init__(self, url: str, spec: VideoSpec, ffmpeg: str = "ffmpeg",
                 clock: Clock = time.monotonic) -> None:
        self.url, self.spec, self.ffmpeg, self.clock = url, spec, ffmpeg, clock
        self.frame_bytes = spec.width * spec.height * 3 // 2
        self.proc: subprocess.Popen[bytes] | None = None
        self.problem = ""      # the last thing FFmpeg said went wrong (scrubbed)
        self.frames = 0        # since the last open
        self._opened_at = 0.0
        self._broken = False
        self._errors: deque[str] = deque(maxlen=5)
        self._stderr: threading.Thread | None = None

    def open(self) -> None:
        script = concat_script(self.url)
        read_end, write_end = os.pipe()
        argv = reader_argv(self.ffmpeg, self.spec, read_end)
        if any(s in "\0".join(argv) for s in (*url_secrets(self.url), self.url)):
            os.close(read_end)
            os.close(write_end)
            raise OSError("refused: the camera URL would be on FFmpeg's command line")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, pass_fds=(read_end,))
        except OSError as exc:
            os.close(write_end)
            raise OSError(f"cannot start {self.ffmpeg}: {exc.strerror or exc}; check "
                          "media.ffmpeg") from None
        finally:
            os.close(read_end)
        try:
            os.write(write_end, script)  # a few hundred bytes: the pipe takes them at once
        except OSError:
            pass  # FFmpeg died at once: its stderr says why
        finally:
            os.close(write_end)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with contextlib.suppress(OSError):  # a frame or more per wake-up
            fcntl.fcntl(self.proc.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        self.frames, self._broken, self._opened_at = 0, False, self.clock()
        self._errors.clear()
        self._stderr = threading.Thread(target=self._read_stderr, args=(self.proc.stderr,),
                                        name="camera-ffmpeg-stderr", daemon=True)
        self._stderr.start()

    def warming(self) -> bool:
        """Started, alive, no frame yet, and still within ``FIRST_FRAME_S``: wait, don't reopen."""
        return (self.proc is not None and self.proc.poll() is None and not self._broken
                and self.frames == 0 and self.clock() - self._opened_at < FIRST_FRAME_S)

    def read(self) -> np.ndarray | None:
        """The next frame, or None when none began within ``READ_SLICE_S`` or FFmpeg is gone."""
        if self.proc is None or self._broken:
            return None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        frame = np.empty((self.spec.height * 3 // 2, self.spec.width), np.uint8)
        view = memoryview(frame).cast("B")
        got = 0
        deadline = self.clock() + READ_SLICE_S
        while got < self.frame_bytes:
            wait = deadline - self.clock()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                if got:
                    self._fail(f"a frame stopped half-way ({got} of {self.frame_bytes} bytes)")
                return None
            n = os.readv(fd, [view[got:]])
            if n == 0:  # FFmpeg exited: the stream ended or could not be opened
                self._fail(self._exit_reason())
                return None
            if not got:
                deadline = self.clock() + FRAME_REST_S
            got += n
        self.frames += 1
        self.problem = ""
        return frame

    def release(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.join(1.0)

    def _fail(self, why: str) -> None:
        self._broken = True
        self.problem = why
        log.info("camera %s: %s", redact_url(self.url), why)

    def _exit_reason(self) -> str:
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        if self._stderr is not None:
            self._stderr.join(1.0)  # its last words first
        said = self._errors[-1] if self._errors else "no message"
        code = self.proc.returncode
        return f"FFmpeg stopped reading the camera (exit {code}: {said})"

    def _read_stderr(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                text = raw.decode("utf-8", "replace").strip()
                if not text or _CHATTER.search(text):
                    continue
                text = scrub(_PREFIX.sub("", text), self.url)[:300]
                self._errors.append(text)
                log.debug("camera FFmpeg: %s", text)
        with contextlib.suppress(OSError):
            stream.close()
