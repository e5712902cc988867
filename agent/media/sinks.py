"""Live sinks: one sending process per destination, fed the encoder's live stream.

RTMP and WHIP sinks get FLV (what RTMP carries; agent/media/flv.py), SRT sinks MPEG-TS: the
sink's sender (agent/media/senders.py) names which, and the encoder writes each container the
sinks need once. The sender also says how the process is started without a secret on its
command line.

Each sink has its own bounded queue and writer thread, so a dead or slow receiver costs that
sink its data and never the recording or the other sinks (docs/media.md). The remux process is
restarted with a short back-off (capped at 2 s) so a receiver that comes back gets the stream
again within a few seconds, starting at a key frame (with the PAT/PMT in front of it) so its
first picture decodes.

Stream keys and passwords are secrets: URLs are redacted in stats, events and logs, and FFmpeg's
own messages (which quote the URL) are scrubbed before they are logged or reported
(agent/urls.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable

from agent.backoff import Backoff
from agent.media.flv import FlvGate, FlvInit
from agent.media.senders import Launch, Refused, make_sender
from agent.urls import redact_url, scrub

log = logging.getLogger(__name__)

EventFn = Callable[[str, str, str, dict], None]

QUEUE_S = 2.0                 # queue bound, in seconds of stream at the measured input rate
QUEUE_DEFAULT_BYTES = 2_000_000  # before the rate is known (~2 s at 8 Mbit/s)
QUEUE_MIN_BYTES = 256_000
QUEUE_MAX_BYTES = 16_000_000
CONNECT_QUEUE_S = 0.75        # stream a sink gets (and may queue) before it has connected
CONNECT_MIN_BYTES = 64_000
STALL_S = 2.0                 # a live sink whose stdin has not moved for this long is stalled
CONNECT_TIMEOUT_S = 5.0       # allowance before the first output (TCP + RTMP handshake)
LIVE_AFTER_S = 1.0            # output flowing this long -> state live
STOP_DRAIN_S = 1.0            # at stop, time to hand over what is queued
STOP_GRACE_S = 2.0            # then time for FFmpeg to finish after EOF, before SIGKILL
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 2.0
STDERR_TAIL = 20
KEYFRAME_WAIT_S = 12.0        # beyond the longest GOP allowed (gop_s <= 10): start anyway

_EXITED = "exited"  # _pump's word for "the process ended by itself"


# --- MPEG-TS: where a fresh remux process may start -----------------------------------------

_TS = 188
_VIDEO_STREAM_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x24, 0x42, 0xD1})


class KeyframeGate:
    """Holds back a TS stream until a video key frame, then passes everything through.

    A remux process started mid-GOP would wait for the next key frame anyway, but FFmpeg's
    probe would read (and the receiver would get) undecodable data first. The gate starts at the
    PAT and PMT followed by the first video packet with random_access_indicator set (FFmpeg's
    mpegts muxer writes them in that order at every key frame).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, fresh: bool = True) -> None:
        """Wait for the next key frame (PAT and PMT go in front of it either way)."""
        self.open = False
        self._buf = b""
        self._pmt_pids: set[int] = set()
        self._video_pid: int | None = None
        self._pat = b""
        self._pmt = b""
        self._since = time.monotonic()

    def feed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` may be written now (all of it once open)."""
        if self.open:
            return chunk
        buf = self._buf + chunk
        start = _sync(buf)
        if start < 0:
            self._buf = buf[-(3 * _TS):]
            return b""
        pos = start
        while pos + _TS <= len(buf):
            pkt = buf[pos:pos + _TS]
            if pkt[0] != 0x47:  # lost sync (a dropped chunk): find it again
                nxt = _sync(buf[pos + 1:])
                if nxt < 0:
                    break
                pos += 1 + nxt
                continue
            if self._is_start(pkt):
                self.open = True
                out = self._pat + self._pmt + buf[pos:]
                self._buf = b""
                return out
            pos += _TS
        self._buf = buf[pos:]
        return b""

    def _is_start(self, pkt: bytes) -> bool:
        pid = ((pkt[1] & 0x1F) << 8) | pkt[2]
        pusi = bool(pkt[1] & 0x40)
        afc = (pkt[3] >> 4) & 3
        off = 4
        rai = False
        if afc & 2:
            af_len = pkt[4]
            rai = af_len > 0 and bool(pkt[5] & 0x40)
            off = 5 + af_len
        if pid == 0 and pusi:
            self._pat = pkt
            self._pmt_pids = set(_pat_pmt_pids(pkt[off:]))
        elif pid in self._pmt_pids and pusi:
            self._pmt = pkt
            self._video_pid = _pmt_video_pid(pkt[off:])
        waited = time.monotonic() - self._since
        if self._video_pid is not None:
            if pid == self._video_pid and pusi and rai:
                return True
            return waited > KEYFRAME_WAIT_S and pid == 0 and pusi
        # No video (or no PMT understood): start at a PAT rather than never.
        return waited > STALL_S and pid == 0 and pusi


def _sync(buf: bytes) -> int:
    """Offset of the first TS packet boundary confirmed by the next two sync bytes, or -1."""
    i = buf.find(b"\x47")
    while i >= 0 and i + 2 * _TS < len(buf):
        if buf[i + _TS] == 0x47 and buf[i + 2 * _TS] == 0x47:
            return i
        i = buf.find(b"\x47", i + 1)
    return -1


def _section(payload: bytes) -> bytes:
    if not payload:
        return b""
    return payload[1 + payload[0]:]


def _pat_pmt_pids(payload: bytes) -> list[int]:
    s = _section(payload)
    if len(s) < 12 or s[0] != 0x00:
        return []
    end = min(len(s), 3 + (((s[1] & 0x0F) << 8) | s[2]) - 4)
    pids = []
    for i in range(8, end - 3, 4):
        if (s[i] << 8 | s[i + 1]) != 0:
            pids.append(((s[i + 2] & 0x1F) << 8) | s[i + 3])
    return pids


def _pmt_video_pid(payload: bytes) -> int | None:
    s = _section(payload)
    if len(s) < 16 or s[0] != 0x02:
        return None
    end = min(len(s), 3 + (((s[1] & 0x0F) << 8) | s[2]) - 4)
    i = 12 + (((s[10] & 0x0F) << 8) | s[11])
    while i + 5 <= end:
        stream_type, pid = s[i], ((s[i + 1] & 0x1F) << 8) | s[i + 2]
        if stream_type in _VIDEO_STREAM_TYPES:
            return pid
        i += 5 + (((s[i + 3] & 0x0F) << 8) | s[i + 4])
    return None


# --- the sink -------------------------------------------------------------------------------

class LiveSink:
    """One live destination, fed the encoder's stream in :attr:`container` (FLV chunks cut at
    tag boundaries); passes it on with `ffmpeg -c copy`.

    ``on_event(event, severity, message, details)`` gets ``sink_down`` (warning, once per outage,
    with FFmpeg's reason) and ``sink_up`` (info, when a sink that was down is live again). It is
    called from the sink's own thread.
    """

    def __init__(self, name: str, url: str, on_event: EventFn, *,
                 max_queue_bytes: int | None = None, ffmpeg: str = "ffmpeg",
                 protocol: str = "", token_file: str = "") -> None:
        self.name = name
        self.url = url
        self.redacted = redact_url(url)
        self.sender = make_sender(url, protocol, token_file, ffmpeg)
        self.container = self.sender.container
        self._secrets: tuple[str, ...] = ()
        self._flv_init = FlvInit() if self.container == "flv" else None
        self._on_event = on_event
        self._fixed_max = max_queue_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._resync = False
        self._accepting = False          # False while down: feed() drops
        self._rate_in = 0.0              # measured input bytes/s (sizes the queue)
        self._rate_t0 = time.monotonic()
        self._rate_bytes = 0
        self._state = "connecting"
        self._bytes_total = 0
        self._dropped = 0                # bytes fed but never written (down or overflow)
        self._dropped_before = 0         # ... when the current outage began
        self._written: collections.deque[tuple[float, int]] = collections.deque()
        self._live_s = 0.0
        self._live_since: float | None = None
        self._spawns = 0
        self._out_first: float | None = None  # when FFmpeg first reported output bytes
        self._last_moved = time.monotonic()     # when FFmpeg last took data from us
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._down_since: float | None = None  # set while an outage has been reported
        self._failures = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)

    # -- API ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def feed(self, chunk: bytes) -> None:
        """Queue ``chunk``; never blocks. Dropped while down, or all queued data when full."""
        if not chunk:
            return
        now = time.monotonic()
        with self._lock:
            if self._flv_init is not None:  # even while down: a restart needs the stream's init
                self._flv_init.observe(chunk)
            self._rate_bytes += len(chunk)
            if now - self._rate_t0 >= 1.0:
                rate = self._rate_bytes / (now - self._rate_t0)
                self._rate_in = rate if not self._rate_in else 0.7 * self._rate_in + 0.3 * rate
                self._rate_t0, self._rate_bytes = now, 0
            if not self._accepting:
                self._dropped += len(chunk)
                return
            if self._out_first is None and self._spawns and self.sender.hold_while_connecting \
                    and self._queued + len(chunk) > self._connect_budget():
                # Still connecting (a WHIP handshake takes a second or more): what queues now
                # would reach the receiver late and stay late. Start at a fresh key frame.
                self._dropped += self._queued + len(chunk)
                self._queue.clear()
                self._queued = 0
                self._resync = True
                return
            if self._queued + len(chunk) > self._max_queue():
                # Full: ~2 s behind already. Keep the freshest data instead: start over at the
                # next key frame (a hole in the middle of a GOP would not decode anyway).
                self._dropped += self._queued + len(chunk)
                self._queue.clear()
                self._queued = 0
                self._resync = True
                return
            self._queue.append(chunk)
            self._queued += len(chunk)
            self._wake.notify()

    def stats(self) -> dict:
        now = time.monotonic()
        with self._lock:
            while self._written and self._written[0][0] < now - 2.0:
                self._written.popleft()
            window = sum(n for _, n in self._written)
            live_s = self._live_s + (now - self._live_since if self._live_since else 0.0)
            return {
                "name": self.name, "url": self.redacted, "state": self._state,
                "bitrate_kbps": round(window * 8 / 1000 / 2.0, 1),
                "bytes_total": self._bytes_total, "live_s": round(live_s, 1),
                "reconnects": max(0, self._spawns - 1),
                **self.sender.stats(),
            }

    def stop(self) -> None:
        """Hand over what is queued (<= 1 s), close FFmpeg's stdin, kill it if it lingers."""
        self._stopping.set()
        with self._lock:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_DRAIN_S + STOP_GRACE_S + 5.0)
            if self._thread.is_alive():
                log.error("live sink %s: writer thread did not finish; its FFmpeg may linger",
                          self.name)
            self._thread = None

    # -- internals ------------------------------------------------------------------------------

    def _connect_budget(self) -> int:
        """What a sink gets before it has produced output (~0.75 s of stream)."""
        return max(CONNECT_MIN_BYTES, int(CONNECT_QUEUE_S * (self._rate_in or
                                                             QUEUE_DEFAULT_BYTES / QUEUE_S)))

    def _max_queue(self) -> int:
        if self._fixed_max:
            return self._fixed_max
        if not self._rate_in:
            return QUEUE_DEFAULT_BYTES
        return int(min(QUEUE_MAX_BYTES, max(QUEUE_MIN_BYTES, QUEUE_S * self._rate_in)))

    def _run(self) -> None:
        try:
            self.sender.check()
        except Refused as exc:  # never spawned: the recording and other sinks go on
            self._went_down(f"refused: {exc}")
            self._stopping.wait()
        while not self._stopping.is_set():
            cause = self._one_process()
            if self._stopping.is_set():
                break
            self._went_down(cause)
            self._stopping.wait(self._backoff.next_delay())
        with self._lock:
            self._accepting = False
            self._set_state("down")
            self._queue.clear()
            self._queued = 0
        self.sender.close()

    def _one_process(self) -> str | None:
        """Run one remux process until it fails (returns why) or the sink stops (None)."""
        with self._lock:
            self._queue.clear()
            self._queued = 0
            self._resync = False
            self._out_first = None
            self._stderr_tail.clear()
            self._spawns += 1
            if self._state != "down":  # retries of a sink that is down stay "down" until live
                self._set_state("connecting")
            self._accepting = True
        try:
            launch = self.sender.launch()
        except (Refused, ValueError, OSError) as exc:
            return f"cannot start: {exc}"
        self._secrets = launch.secrets
        proc = self._spawn(launch)
        if isinstance(proc, str):
            launch.cleanup()
            return proc
        reader = threading.Thread(target=self._read_stderr, args=(proc,),
                                  name=f"sink-{self.name}-stderr", daemon=True)
        reader.start()
        cause: str | None = _EXITED
        try:
            cause = self._pump(proc)
        finally:
            with self._lock:
                self._accepting = False
            # A stalled FFmpeg is stuck in a network write: EOF would not reach it.
            self._reap(proc, reader, kill=cause not in (None, _EXITED))
            launch.cleanup()
        if cause == _EXITED:  # after _reap: the reader has FFmpeg's last words by now
            code = proc.returncode
            how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
            cause = f"ffmpeg ended ({how}){self._tail_suffix()}"
        return cause

    def _spawn(self, launch: Launch) -> subprocess.Popen[bytes] | str:
        """Start the process; its config (if any) goes down a pipe, never into its argv."""
        parent_ends = [launch.config_fd] if launch.config_fd is not None else []
        try:
            proc = subprocess.Popen(launch.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, pass_fds=launch.pass_fds)
        except OSError as exc:
            return (f"cannot start {launch.argv[0]} ({exc.strerror or exc}): check "
                    "media.ffmpeg and the agent's installation")
        finally:
            for fd in launch.pass_fds:  # the child has its copies now
                with contextlib.suppress(OSError):
                    os.close(fd)
        launch.on_started(proc.pid)
        if launch.config_fd is not None:
            try:
                os.write(launch.config_fd, launch.config or b"")
            except OSError as exc:
                log.debug("live sink %s: config pipe: %s", self.name, exc)
        for fd in parent_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        return proc

    def _pump(self, proc: subprocess.Popen[bytes]) -> str | None:
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        gate: KeyframeGate | FlvGate = (FlvGate(self._flv_init) if self._flv_init is not None
                                        else KeyframeGate())
        pending = memoryview(b"")
        since = time.monotonic()       # when the pending data last moved
        first_write: float | None = None
        drain_until: float | None = None
        before_output = 0              # bytes written before the process reported output
        while True:
            now = time.monotonic()
            if self._stopping.is_set():
                drain_until = drain_until or now + STOP_DRAIN_S
                with self._lock:
                    empty = not self._queue
                if (empty and not pending) or now > drain_until:
                    return None
            if proc.poll() is not None:
                return _EXITED
            self._check_live(now, since)
            if pending:
                limit = STALL_S if self._state == "live" else CONNECT_TIMEOUT_S
                if now - since > limit:
                    return (f"stalled: the remux process took no data for {now - since:.1f} s "
                            f"(receiver not reading){self._tail_suffix()}")
            else:
                if (first_write is not None and self._out_first is None
                        and now - first_write > 2 * CONNECT_TIMEOUT_S):
                    return (f"no output {now - first_write:.0f} s after the first data "
                            f"(cannot connect?){self._tail_suffix()}")
                if (self._out_first is None and self.sender.hold_while_connecting
                        and before_output >= self._connect_budget()):
                    # Enough to probe the stream and open the output. More now would wait
                    # inside the process while it connects (FFmpeg queues it, a WHIP handshake
                    # takes seconds) and reach the receiver that much late.
                    self._stopping.wait(0.02)
                    continue
                chunk, resync = self._take(0.1)
                if resync:
                    gate.reset(fresh=False)
                if chunk is None:
                    continue
                data = gate.feed(chunk)
                if not data:
                    continue
                pending = memoryview(data)
                since = now
            _, writable, _ = select.select([], [fd], [], 0.1)
            if not writable:
                continue
            try:
                n = os.write(fd, pending[:65536])
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: it exited
                return _EXITED
            pending = pending[n:]
            before_output += n if self._out_first is None else 0
            since = self._last_moved = time.monotonic()
            first_write = first_write or since
            with self._lock:
                self._bytes_total += n
                self._written.append((since, n))
                while self._written[0][0] < since - 2.0:  # bounded without stats() calls
                    self._written.popleft()

    def _take(self, timeout: float) -> tuple[bytes | None, bool]:
        with self._lock:
            if not self._queue and not self._stopping.is_set():
                self._wake.wait(timeout)
            resync, self._resync = self._resync, False
            if not self._queue:
                return None, resync
            chunk = self._queue.popleft()
            self._queued -= len(chunk)
            return chunk, resync

    def _check_live(self, now: float, since: float) -> None:
        if self._state == "live" or self._out_first is None:
            return
        if now - self._out_first >= LIVE_AFTER_S and now - since < 1.0:
            with self._lock:  # it has been streaming since its first output
                self._set_state("live", at=self._out_first)
            self._backoff.reset()
            self._failures = 0
            if self._down_since is not None:
                down_s = time.monotonic() - self._down_since
                self._down_since = None
                log.info("live sink %s (%s) is live again after %.1f s", self.name,
                         self.redacted, down_s)
                self._emit("sink_up", "info",
                           f"live sink {self.name} ({self.redacted}) is streaming again after "
                           f"{down_s:.1f} s down",
                           {"down_s": round(down_s, 1),
                            "dropped_bytes": self._dropped - self._dropped_before})
            else:
                log.info("live sink %s (%s) is live", self.name, self.redacted)

    def _went_down(self, cause: str | None) -> None:
        cause = scrub(cause or "the remux process ended", self.url, self._secrets)
        with self._lock:  # the stream stopped when the data stopped moving (a stall: 2 s ago)
            self._set_state("down", at=self._last_moved)
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._dropped_before = self._dropped
            log.warning("live sink %s (%s) is down: %s", self.name, self.redacted, cause)
            self._emit("sink_down", "warning",
                       f"live sink {self.name} ({self.redacted}) is down: {cause}. Retrying "
                       f"every {BACKOFF_CAP_S:.0f} s or less; if it stays down, check that the "
                       "receiver is up and the URL and stream key are right",
                       {"cause": cause})
        elif self._failures % 30 == 0:
            log.info("live sink %s (%s) still down after %d attempts: %s", self.name,
                     self.redacted, self._failures, cause)
        else:
            log.debug("live sink %s: attempt %d failed: %s", self.name, self._failures, cause)

    def _emit(self, event: str, severity: str, message: str, extra: dict) -> None:
        details = {"name": self.name, "url": self.redacted,
                   "reconnects": max(0, self._spawns - 1), **extra}
        try:
            self._on_event(event, severity, message, details)
        except Exception:  # the caller's bug must not kill the sink
            log.exception("live sink %s: on_event(%s) failed", self.name, event)

    def _set_state(self, state: str, at: float | None = None) -> None:
        """Caller holds the lock. ``at``: when it really happened (live_s counts from/to it)."""
        at = time.monotonic() if at is None else at
        if self._live_since is not None and state != "live":
            self._live_s += max(0.0, at - self._live_since)
            self._live_since = None
        if state == "live" and self._live_since is None:
            self._live_since = at
        self._state = state

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            key, eq, value = line.partition("=")
            if eq and key.isidentifier() and " " not in key:  # a -progress line
                # total_size is N/A for WHIP (RTP has no byte stream): time muxed counts too
                if key in ("total_size", "out_time_us") and value.isdigit() \
                        and int(value) > 0 and self._out_first is None:
                    self._out_first = time.monotonic()
                continue
            if line:
                line = scrub(line, self.url, self._secrets)
                self._stderr_tail.append(line)
                log.debug("live sink %s: ffmpeg: %s", self.name, line)

    def _reap(self, proc: subprocess.Popen[bytes], reader: threading.Thread,
              kill: bool = False) -> None:
        if kill:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: FFmpeg writes what it has and ends the stream properly
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.debug("live sink %s: ffmpeg %d did not exit after EOF; killing it", self.name,
                      proc.pid)
            proc.kill()
            proc.wait()
        reader.join(2.0)
        if proc.stderr is not None:
            proc.stderr.close()

    def _tail_suffix(self) -> str:
        lines = [ln for ln in list(self._stderr_tail) if "Timestamps are unset" not in ln]
        return f": {' | '.join(lines[-3:])}" if lines else ""
