"""The media worker's spec: what one lesson captures, encodes, records and streams.

The daemon builds it from the config and sends it to the worker as one JSON line, so this module
stays free of NumPy, OpenCV and PyAudio (the daemon imports it; design.md: RSS target).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import LiveSinkConfig, MediaConfig


class SpecError(ValueError):
    """A spec line the worker cannot use; the message names the key and what was expected."""


@dataclass(frozen=True)
class VideoSpec:
    source: str = "synthetic"
    width: int = 1280
    height: int = 720
    fps: int = 30


@dataclass(frozen=True)
class AudioSpec:
    source: str = "synthetic"
    rate: int = 48000
    channels: int = 2
    delay_ms: int = 0


@dataclass(frozen=True)
class EncoderSpec:
    video_bitrate_kbps: int = 2500
    audio_bitrate_kbps: int = 128
    preset: str = "veryfast"
    gop_s: float = 2.0
    codec: str = "libx264"     # the encoder chosen at start (agent/media/hwenc.py)
    codec_reason: str = ""     # why (into the evidence)
    hw_device: str = ""        # VAAPI/QSV render node


@dataclass(frozen=True)
class SinkSpec:
    name: str
    url: str
    protocol: str = ""     # "" = from the URL's scheme; "whip" for http(s)
    token_file: str = ""   # WHIP bearer token file (the worker reads it; never the token here)


@dataclass(frozen=True)
class RecordingSpec:
    dir: str
    segment_s: float = 60.0
    #: False: live only, nothing written to disk (the daemon's disk guard stopped the recording)
    enabled: bool = True


@dataclass(frozen=True)
class MediaSpec:
    lesson_id: str
    recording: RecordingSpec
    video: VideoSpec = field(default_factory=VideoSpec)
    audio: AudioSpec = field(default_factory=AudioSpec)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    live: tuple[SinkSpec, ...] = ()
    #: the FFmpeg executable (resolved from media.ffmpeg by the daemon, agent/media/ffmpeg.py)
    ffmpeg: str = "ffmpeg"

    def to_json(self) -> str:
        """One line (no newline inside), as the worker protocol wants."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> MediaSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"spec is not JSON ({exc}); send one line of JSON") from None
        return _build(cls, data, "spec")

    @classmethod
    def from_config(
        cls, media: MediaConfig, lesson_id: str, recording_dir: Path,
        live: list[LiveSinkConfig] | None = None, ffmpeg: str = "ffmpeg",
        encoder: tuple[str, str, str] = ("libx264", "", ""),
    ) -> MediaSpec:
        """The spec of one lesson; ``recording_dir`` is that lesson's own directory."""
        sinks = media.live if live is None else live
        v, a, e = media.video, media.audio, media.encoder
        return cls(
            lesson_id=lesson_id,
            video=VideoSpec(source=v.source, width=v.width, height=v.height, fps=v.fps),
            audio=AudioSpec(source=a.source, rate=a.rate, channels=a.channels,
                            delay_ms=a.delay_ms),
            encoder=EncoderSpec(video_bitrate_kbps=e.video_bitrate_kbps,
                                audio_bitrate_kbps=e.audio_bitrate_kbps, preset=e.preset,
                                gop_s=e.gop_s, codec=encoder[0], codec_reason=encoder[1],
                                hw_device=encoder[2]),
            live=tuple(SinkSpec(name=s.name or f"sink{i}", url=s.url, protocol=s.protocol or "",
                                token_file=s.token_file or "")
                       for i, s in enumerate(sinks, start=1)),
            ffmpeg=ffmpeg,
            recording=RecordingSpec(dir=str(recording_dir), segment_s=media.recording.segment_s),
        )


_NESTED: dict[str, type] = {
    "video": VideoSpec, "audio": AudioSpec, "encoder": EncoderSpec, "recording": RecordingSpec,
}


def _build(cls: type, data: Any, path: str) -> Any:
    """Typed construction with errors that name the key (the worker's only input check)."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{key}: required key is missing")
            continue
        raw, tp = data[name], hints[name]
        if name in _NESTED and cls is MediaSpec:
            values[name] = _build(_NESTED[name], raw, key)
        elif name == "live":
            if not isinstance(raw, list):
                raise SpecError(f"{key}: expected a list of {{name, url, protocol, token_file}}")
            values[name] = tuple(_build(SinkSpec, s, f"{key}[{i}]") for i, s in enumerate(raw))
        else:
            values[name] = _scalar(tp, raw, key)
    return cls(**values)


def _scalar(tp: Any, raw: Any, key: str) -> Any:
    if tp is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if tp is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if tp is str and isinstance(raw, str):
        return raw
    if tp is bool and isinstance(raw, bool):
        return raw
    raise SpecError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {raw!r}")
