"""The media worker process: ``python -m agent.media.worker`` (protocol in docs/media.md).

Reads one spec line on stdin, then runs sources -> pumps -> encoder -> live sinks and reports JSON
lines on stdout. ``stop`` on stdin, SIGTERM, SIGINT or stdin EOF stop it gracefully: the encoder's
inputs are closed so FFmpeg finishes the open segment, then ``stopped`` and exit 0.

Exit codes: 0 after ``stopped``; 2 unusable spec; 3 the recording failed (FFmpeg died: a
``recording_failed`` event names why; no ``stopped``, so the supervisor starts a new worker
which continues the segment numbering instead of overwriting).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from agent.media.encoder import (
    AAC_PRIMING_SAMPLES,
    Encoder,
    SegmentWatcher,
    ffmpeg_version,
    to_pipe,
)
from agent.media.health import AudioMeter, VideoHealth
from agent.media.pacer import AudioAligner, AudioPump, Slate, VideoPump
from agent.media.sources import AudioSource, VideoSource
from agent.media.spec import MediaSpec, SpecError
from agent.safetext import InertFormatter
from agent.urls import redact_url, shown_source

log = logging.getLogger("agent.media.worker")

ENCODER_FINISH_S = 15.0
START_DELAY_S = 0.1


def encoder_audio_lag_ms(rate: int) -> float:
    """How much later than its timestamps the encoded sound plays: the AAC encoder's priming.

    FFmpeg's AAC encoder emits 1024 samples of priming before the first input sample, and
    MPEG-TS and FLV carry no edit list to skip them, so decoders play every sample 1024/rate
    late (measured: 21-22 ms at 48 kHz with bench/av_sync's analysis). The aligner writes the
    sound that much earlier. The picture needs no such term: the pacer writes each frame within
    half a slot of its capture, on average at it. Camera and microphone latency beyond that is
    what ``media.audio.delay_ms`` is for.
    """
    return AAC_PRIMING_SAMPLES * 1000 / rate


class Emitter:
    """The only writer of protocol lines: one lock, one line per message, flushed at once."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def emit(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, "ts": round(time.time(), 3), **fields},
                          separators=(",", ":"), default=str)
        with self._lock:
            try:
                self.out.write(line.encode() + b"\n")
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):  # the supervisor is gone
                pass


@dataclass
class Interruption:
    what: str
    start: float
    end: float | None = None

    def as_dict(self, end_default: float) -> dict[str, Any]:
        end = self.end if self.end is not None else end_default
        return {"what": self.what, "start": round(self.start, 3), "end": round(end, 3),
                "duration_s": round(end - self.start, 3)}


class Interruptions:
    """lost -> restored (or down -> up) pairs with wall-clock start and end."""

    _OPEN = {"camera_lost": "camera", "microphone_lost": "microphone", "sink_down": "sink"}
    _CLOSE = {"camera_restored": "camera", "microphone_restored": "microphone",
              "sink_up": "sink"}

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.items: list[Interruption] = []
        self._open: dict[str, Interruption] = {}
        self._lock = threading.Lock()

    def note(self, event: str, sink: str | None = None) -> None:
        kind = self._OPEN.get(event) or self._CLOSE.get(event)
        if kind is None:
            return
        what = f"sink:{sink}" if kind == "sink" else kind
        now = self.wall()
        with self._lock:
            if event in self._OPEN and what not in self._open:
                self._open[what] = Interruption(what, now)
                self.items.append(self._open[what])
            elif event in self._CLOSE and what in self._open:
                self._open.pop(what).end = now

    def summary(self) -> list[dict[str, Any]]:
        now = self.wall()
        with self._lock:
            return [i.as_dict(now) for i in self.items]


class Worker:
    def __init__(self, spec: MediaSpec, emitter: Emitter, stop: threading.Event) -> None:
        self.spec, self.emitter, self.stop_event = spec, emitter, stop
        self.mono0, self.wall0 = time.monotonic(), time.time()
        self.interruptions = Interruptions(lambda: self.wall_of(time.monotonic()))
        self.video = VideoSource(spec.video, self._on_event, ffmpeg=spec.ffmpeg)
        self.audio = AudioSource(spec.audio, self._on_event)
        self.video_health = VideoHealth()
        self.meter = AudioMeter()
        self.sinks: list[Any] = []
        self._by_container: dict[str, list[Any]] = {}
        self._make_sinks()
        self.encoder = Encoder(spec, self._fan_out, live_formats=self._by_container,
                               ffmpeg=spec.ffmpeg)
        self.recording_state = "recording" if spec.recording.enabled else "off"
        self.watcher: SegmentWatcher | None = None
        self.video_pump: VideoPump | None = None
        self.audio_pump: AudioPump | None = None

    def wall_of(self, mono: float) -> float:
        return self.wall0 + (mono - self.mono0)

    def _on_event(self, event: str, severity: str, message: str, details: dict[str, Any],
                  sink: str | None = None) -> None:
        self.interruptions.note(event, sink)
        if event == "camera_lost":
            self.video_health.reset()
        self.emitter.emit("event", event=event, severity=severity, message=message,
                          details=details)

    def _fan_out(self, container: str, chunk: bytes) -> None:
        for sink in self._by_container[container]:
            sink.feed(chunk)

    def _make_sinks(self) -> None:
        if not self.spec.live:
            return
        from agent.media.sinks import LiveSink  # only when needed: the other half of the worker

        for s in self.spec.live:
            def on_event(event: str, severity: str, message: str, details: dict[str, Any],
                         _name: str = s.name) -> None:
                self._on_event(event, severity, message, details, sink=_name)
            try:
                sink = LiveSink(s.name, s.url, on_event, ffmpeg=self.spec.ffmpeg,
                                protocol=s.protocol, token_file=s.token_file)
            except ValueError as exc:  # URL and protocol do not fit: this sink only is lost
                on_event("sink_down", "warning", f"live sink {s.name} cannot be used: {exc}",
                         {"name": s.name, "url": redact_url(s.url), "cause": str(exc)})
                continue
            self.sinks.append(sink)
            self._by_container.setdefault(sink.container, []).append(sink)

    def run(self) -> int:
        """The whole lesson; returns the exit code."""
        version = ffmpeg_version(self.encoder.ffmpeg)  # before the clock starts: it takes time
        for sink in self.sinks:
            sink.start()
        self.video.start()
        self.audio.start()
        try:
            self.encoder.start()
        except (OSError, SpecError) as exc:
            return self._fail(f"the encoder could not start: {exc}")
        start = time.monotonic() + START_DELAY_S
        recording = self.spec.recording.enabled
        if recording:
            self.watcher = SegmentWatcher(self.encoder.list_path, self.encoder.record_dir,
                                          self.wall_of(start))
        spec = self.spec
        slate = Slate(spec.video.width, spec.video.height, to_pipe)
        self.video_pump = VideoPump(self.video, spec.video.fps, start, self.encoder.write_video,
                                    to_pipe, slate, on_frame=self.video_health.frame)
        aligner = AudioAligner(spec.audio.rate, spec.audio.channels, start,
                               spec.audio.delay_ms - encoder_audio_lag_ms(spec.audio.rate))
        self.audio_pump = AudioPump(self.audio, aligner, self.encoder.write_audio,
                                    on_chunk=self.meter.add, on_gap=self.meter.lost)
        self.video_pump.start()
        self.audio_pump.start()
        self.emitter.emit("started", pid=os.getpid(), ffmpeg=version,
                          lesson_id=spec.lesson_id,
                          recording_dir=str(self.encoder.record_dir) if recording else None,
                          first_segment=self.encoder.start_number if recording else None)
        failure = self._loop()
        return self._finish(failure)

    def _loop(self) -> str:
        """Stats every second until asked to stop; returns why the encoder failed, if it did."""
        next_t = time.monotonic() + 1.0
        while not self.stop_event.wait(max(0.0, next_t - time.monotonic())):
            next_t += 1.0
            self._emit_segments()
            pump_error = (self.video_pump and self.video_pump.error) or (
                self.audio_pump and self.audio_pump.error)
            if not self.encoder.alive() or pump_error:
                if self.stop_event.is_set():
                    break
                return self._encoder_failure()
            self._emit_stats()
        return ""

    def _encoder_failure(self) -> str:
        code = self.encoder.wait(2.0)
        last = "; ".join(self.encoder.errors) or "no error message"
        return f"FFmpeg exited with code {code} ({last})"

    def _finish(self, failure: str) -> int:
        """Graceful stop: pumps, encoder inputs, FFmpeg, sources, sinks; then the summary."""
        for pump in (self.video_pump, self.audio_pump):
            if pump is not None and not pump.stop():
                # Closing a pipe another thread is blocked writing to would block us too.
                log.warning("a pump is still blocked writing to the encoder; killing FFmpeg")
                self.encoder.kill()
        self.encoder.close_inputs()
        stoppers = [threading.Thread(target=s.stop, daemon=True)
                    for s in (self.video, self.audio)]
        for t in stoppers:
            t.start()
        code = self.encoder.wait(ENCODER_FINISH_S)
        for t in stoppers:
            t.join(5.0)
        self._emit_segments()
        if code != 0 and not failure:
            failure = f"FFmpeg exited with code {code} at stop (" + (
                "; ".join(self.encoder.errors) or "no error message") + ")"
        live_s = self._stop_sinks()
        if failure:
            return self._fail(failure)
        if self.recording_state == "recording":
            self.recording_state = "stopped"
        segments = self.watcher.segments if self.watcher else []
        self.emitter.emit("stopped", summary={
            "encoder": {"codec": self.spec.encoder.codec,
                        "reason": self.spec.encoder.codec_reason},
            "live_s": live_s,
            "recorded_s": round(sum(s.duration_s for s in segments), 3),
            "segments": [asdict(s) for s in segments],
            "interruptions": self.interruptions.summary(),
        })
        return 0

    def _stop_sinks(self) -> dict[str, float]:
        live: dict[str, float] = {}
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception:
                log.exception("stopping live sink %s failed", getattr(sink, "name", "?"))
            try:
                stats = sink.stats()
                live[str(stats["name"])] = float(stats.get("live_s", 0.0))
            except Exception:
                log.exception("live sink stats failed")
        return live

    def _fail(self, why: str) -> int:
        self.recording_state = "failed"
        self.emitter.emit("event", event="recording_failed", severity="error",
                          message=f"recording of lesson {self.spec.lesson_id} failed: {why}; "
                                  "check free space and permissions of "
                          f"{self.spec.recording.dir}; the worker will be restarted",
                          details={"reason": why})
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.stop()
        return 3

    def _emit_segments(self) -> None:
        if self.watcher is None:
            return
        for seg in self.watcher.poll():
            self.emitter.emit("segment", **asdict(seg))

    def _emit_stats(self) -> None:
        prog = self.encoder.progress
        recorded = self.watcher.recorded_bytes() if self.watcher else 0
        # FFmpeg reports no bit rate for a tee output: the recording's mean stands in for it.
        mean_kbps = recorded * 8 / 1000 / prog.out_time_s if prog.out_time_s > 0 else 0.0
        vc = self.video_pump.pacer.counters if self.video_pump else None
        levels = self.meter.take()
        sinks = []
        for sink in self.sinks:
            try:
                sinks.append(sink.stats())
            except Exception as exc:
                sinks.append({"name": getattr(sink, "name", "?"), "error": str(exc)})
        self.emitter.emit(
            "stats",
            video={"captured": self.video.captured, "encoded": vc.encoded if vc else 0,
                   "duplicated": vc.duplicated if vc else 0, "dropped": vc.dropped if vc else 0,
                   "source_state": self.video.state},
            audio={"chunks": self.audio.chunks, "rms_dbfs": levels.rms_dbfs,
                   "peak_dbfs": levels.peak_dbfs, "source_state": self.audio.state},
            flags={"black": self.video_health.black, "frozen": self.video_health.frozen,
                   "silence": levels.silence},
            encoder={"fps": prog.fps, "speed": prog.speed,
                     "bitrate_kbps": round(prog.bitrate_kbps or mean_kbps, 1),
                     "frames": prog.frames},
            sinks=sinks,
            recording={"state": self.recording_state, "seconds": round(prog.out_time_s, 2),
                       "bytes": recorded},
        )


def _watch_stdin(stdin: BinaryIO, stop: threading.Event) -> None:
    """``stop`` or EOF (the daemon died) ends the lesson; other lines are ignored."""
    for raw in stdin:
        line = raw.strip()
        if line == b"stop":
            log.info("stop requested on stdin")
            break
        if line:
            log.warning("ignoring unknown command %r on stdin (only 'stop' is known)", line[:80])
    else:
        log.info("stdin closed: stopping")
    stop.set()


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)  # one line per message: the daemon relays lines
    handler.setFormatter(InertFormatter(
        "%(asctime)s media-worker[%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("CLASSROOM_AGENT_MEDIA_LOG", "INFO").upper(),
                        handlers=[handler])
    # Protocol lines get a private copy of stdout; fd 1 then points at the log, so a C library
    # that prints cannot corrupt the protocol.
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    emitter = Emitter(proto)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("signal %d: stopping", signum),
                                                   stop.set()))
    code = _main(emitter, stop)
    proto.flush()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # capture threads may sit in a driver call: do not wait for them


def _main(emitter: Emitter, stop: threading.Event) -> int:
    first = sys.stdin.buffer.readline()
    if not first.strip():
        log.error("no spec on stdin (EOF before the first line); the supervisor must write one "
                  "JSON line")
        return 2
    try:
        spec = MediaSpec.from_json(first)
    except SpecError as exc:
        log.error("unusable spec: %s", exc)
        return 2
    threading.Thread(target=_watch_stdin, args=(sys.stdin.buffer, stop), name="stdin",
                     daemon=True).start()
    log.info("lesson %s: video %s %dx%d@%d, audio %s %d Hz x%d, %d live sink(s), recording "
             "in %s", spec.lesson_id, shown_source(spec.video.source),
             spec.video.width, spec.video.height,
             spec.video.fps, spec.audio.source, spec.audio.rate, spec.audio.channels,
             len(spec.live), spec.recording.dir)
    return Worker(spec, emitter, stop).run()


if __name__ == "__main__":
    main()
