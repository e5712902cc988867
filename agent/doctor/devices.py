"""The camera and the microphone: a short look and listen in the probe child process, or, while a
lesson holds them, the running lesson's own figures (frames flowing, black, frozen, silence)."""

from __future__ import annotations

from typing import Any

from agent.doctor.report import Finding, passed, problem
from agent.doctor.runner import Context
from agent.i18n import N_
from agent.media import peek
from agent.urls import shown_source

T_CAMERA = N_("Camera")
T_MIC = N_("Microphone")
#: How long the probe looks and listens (a frozen picture needs a few frames to be seen).
PROBE_S = 1.5
LIMIT_S = peek.READY_S + PROBE_S + peek.DEVICE_S + 2


def _lesson_media(ctx: Context) -> dict[str, Any] | None:
    s = ctx.status or {}
    return s.get("media") if (s.get("lessons") or {}).get("current") else None


def devices(ctx: Context) -> list[Finding]:
    assert ctx.cfg is not None
    media = ctx.cfg.media
    running = _lesson_media(ctx)
    if running:
        return [_camera_in_lesson(shown_source(media.video.source), running),
                _mic_in_lesson(media.audio.source, running)]
    res = peek.probe(peek.video_spec(media), peek.audio_spec(media), PROBE_S,
                     ffmpeg=media.ffmpeg)
    error = res.get("error", "no answer")
    video = res.get("video") or {"ok": False, "error": error}
    audio = res.get("audio") or {"ok": False, "error": error}
    return [camera_finding(shown_source(media.video.source), video),
            mic_finding(media.audio.source, audio)]


def camera_finding(source: str, v: dict[str, Any]) -> Finding:
    if not v.get("ok"):
        return problem("camera", T_CAMERA, "camera_unavailable", source=source,
                       error=v.get("error", "no frames"))
    if v.get("black"):
        return problem("camera", T_CAMERA, "camera_black", source=source, luma=v.get("luma"))
    if v.get("frozen"):
        return problem("camera", T_CAMERA, "camera_frozen", source=source)
    return passed("camera", T_CAMERA, N_("{source}: {frames} frames of {width}x{height} in "
                                         "{seconds:.1f} s, brightness {luma:.0f}, moving."),
                  source=source, frames=v.get("frames"), width=v.get("width"),
                  height=v.get("height"), seconds=PROBE_S, luma=v.get("luma"))


def mic_finding(source: str, a: dict[str, Any]) -> Finding:
    if not a.get("ok"):
        return problem("microphone", T_MIC, "microphone_unavailable", source=source,
                       error=a.get("error", "no sound"))
    if a.get("dead"):
        return problem("microphone", T_MIC, "microphone_dead", source=source,
                       peak_dbfs=a.get("peak_dbfs"))
    if a.get("silence"):
        return problem("microphone", T_MIC, "microphone_silent", source=source,
                       peak_dbfs=a.get("peak_dbfs"))
    return passed("microphone", T_MIC, N_("{source}: level {rms_dbfs:.0f} dBFS, peak "
                                          "{peak_dbfs:.0f} dBFS."),
                  source=source, rms_dbfs=a.get("rms_dbfs"), peak_dbfs=a.get("peak_dbfs"))


def _camera_in_lesson(source: str, m: dict[str, Any]) -> Finding:
    v, flags = m.get("video") or {}, m.get("flags") or {}
    if v.get("source_state") != "ok":
        return problem("camera", T_CAMERA, "camera_unavailable", source=source,
                       error="lost during the running lesson")
    if flags.get("black"):
        return problem("camera", T_CAMERA, "camera_black", source=source, luma=0)
    if flags.get("frozen"):
        return problem("camera", T_CAMERA, "camera_frozen", source=source)
    return passed("camera", T_CAMERA, N_("{source}: in use by the running lesson, {frames} "
                                         "frames so far."),
                  source=source, frames=v.get("captured"))


def _mic_in_lesson(source: str, m: dict[str, Any]) -> Finding:
    a, flags = m.get("audio") or {}, m.get("flags") or {}
    if a.get("source_state") != "ok":
        return problem("microphone", T_MIC, "microphone_unavailable", source=source,
                       error="lost during the running lesson")
    if flags.get("silence"):
        return problem("microphone", T_MIC, "microphone_silent", source=source,
                       peak_dbfs=a.get("peak_dbfs"))
    return passed("microphone", T_MIC, N_("{source}: in use by the running lesson, level "
                                          "{rms_dbfs:.0f} dBFS."),
                  source=source, rms_dbfs=a.get("rms_dbfs"))
