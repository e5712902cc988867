"""Which FFmpeg the agent runs, and what it can do (probed once per binary and cached).

``media.ffmpeg`` chooses it: ``bundled`` (the static FFmpeg 9 that the ``imageio-ffmpeg`` wheel
carries, the default: docs/media.md says why), ``system`` (the ``ffmpeg`` on PATH, e.g. Debian
12's 5.1) or the path of an executable. The probe lists encoders, muxers and protocols and tries
whether ``-fpre FILE`` still applies format and protocol options (it does in 5.1 and not in 9.0.2):
that is how an SRT passphrase can stay off FFmpeg's command line. Runs in the daemon too: no
NumPy, no OpenCV.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHOICES = ("bundled", "system")
PROBE_TIMEOUT_S = 15.0
_VERSION_RE = re.compile(r"ffmpeg version (\S+)")


class FFmpegError(RuntimeError):
    """The chosen FFmpeg cannot be found or run; the message names ``media.ffmpeg`` and a fix."""


@dataclass(frozen=True)
class FFmpegInfo:
    choice: str
    path: str
    version: str
    encoders: frozenset[str] = field(default_factory=frozenset)
    muxers: frozenset[str] = field(default_factory=frozenset)
    protocols: frozenset[str] = field(default_factory=frozenset)
    #: ``-fpre FILE`` applies format and protocol options (keeps SRT secrets off the argv)
    preset_options: bool = False

    @property
    def major(self) -> int | None:
        m = re.match(r"n?(\d+)", self.version)
        return int(m.group(1)) if m else None


def locate(choice: str) -> str:
    """The executable ``media.ffmpeg`` names; FFmpegError naming the fix when there is none."""
    if choice == "bundled":
        return _bundled()
    if choice == "system":
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise FFmpegError("media.ffmpeg is 'system' but no ffmpeg is on PATH: install it "
                              "(scripts/deps.sh) or set media.ffmpeg: bundled")
        return exe
    if not (os.path.isfile(choice) and os.access(choice, os.X_OK)):
        raise FFmpegError(f"media.ffmpeg {choice!r} is not an executable file: use bundled, "
                          "system or the path of an ffmpeg executable")
    return choice


def _bundled() -> str:
    """The FFmpeg of the imageio-ffmpeg wheel: the executable in its ``binaries`` folder.

    Found there without importing imageio-ffmpeg, whose import costs the daemon ~1 MB of RSS
    for good (importlib.resources, zipfile, decimal, fractions); the daemon looks once at start
    and at every lesson. Only when that folder does not hold exactly one ``ffmpeg*`` executable
    is imageio-ffmpeg asked (tests/test_media_units.py checks that both give the same file)."""
    from importlib.util import find_spec

    spec = find_spec("imageio_ffmpeg")
    if spec is None:
        raise FFmpegError("media.ffmpeg is 'bundled' but the imageio-ffmpeg package is not "
                          "installed: reinstall the agent (pip install classroom-agent) or "
                          "set media.ffmpeg: system")
    folders = [Path(p) / "binaries" for p in spec.submodule_search_locations or ()]
    found = [f for d in folders if d.is_dir() for f in d.iterdir()
             if f.name.startswith("ffmpeg") and f.is_file() and os.access(f, os.X_OK)]
    if len(found) == 1:
        return str(found[0])
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # get_ffmpeg_exe() falls back to the system's ffmpeg; 'bundled' must mean the wheel's.
    if Path(exe).resolve().parent != (Path(imageio_ffmpeg.__file__).parent / "binaries"):
        raise FFmpegError(f"media.ffmpeg is 'bundled' but imageio-ffmpeg has no binary for "
                          f"this platform (it offered {exe}); set media.ffmpeg: system")
    return exe


_cache: dict[tuple[str, int, int], FFmpegInfo] = {}
_lock = threading.Lock()


def probe(choice: str) -> FFmpegInfo:
    """What the FFmpeg ``media.ffmpeg`` chooses is and can do."""
    return probe_path(locate(choice), choice)


def probe_path(path: str, choice: str = "") -> FFmpegInfo:
    """What the FFmpeg at ``path`` is and can do; cached per binary (path, size, mtime)."""
    found = shutil.which(path)
    if found is None:
        raise FFmpegError(f"FFmpeg {path!r} not found; check media.ffmpeg")
    path = found
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    info = _probe(choice or path, path)
    with _lock:
        _cache[key] = info
    return info


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FFmpegError(f"cannot run {argv[0]}: {exc}; check media.ffmpeg") from None
    return out.stdout


def _names(text: str, flags_width: int) -> frozenset[str]:
    """Names from a ``-encoders``/``-muxers`` listing (after the flag column)."""
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) <= flags_width and parts[0] != "--" \
                and not line.rstrip().endswith(":"):
            names.update(parts[1].split(","))
    return frozenset(names)


def _probe(choice: str, path: str) -> FFmpegInfo:
    head = _run([path, "-hide_banner", "-version"]) or _run([path, "-version"])
    m = _VERSION_RE.search(head)
    protocols_text = _run([path, "-hide_banner", "-protocols"])
    out_part = protocols_text.split("Output:", 1)[-1]
    return FFmpegInfo(
        choice=choice, path=path, version=m.group(1) if m else "unknown",
        encoders=_names(_run([path, "-hide_banner", "-encoders"]), 6),
        muxers=_names(_run([path, "-hide_banner", "-muxers"]), 3),
        protocols=frozenset(w for w in out_part.split() if w.isidentifier()),
        preset_options=_preset_applies(path),
    )


def _preset_applies(path: str) -> bool:
    """Whether ``-fpre`` sets format options: FLV without its onMetaData when it does."""
    with tempfile.TemporaryDirectory(prefix="classroom-agent-probe-") as tmp:
        preset = Path(tmp) / "probe.ffpreset"
        preset.write_text("flvflags=no_metadata\n", encoding="ascii")
        try:
            out = subprocess.run(
                [path, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                 "color=s=32x32:r=1:d=1", "-frames:v", "1", "-c:v", "flv1", "-fpre",
                 str(preset), "-f", "flv", "pipe:1"], capture_output=True,
                timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return out.returncode == 0 and bool(out.stdout) and b"onMetaData" not in out.stdout


def needs(*, live_kinds: set[str], encoder: str = "libx264") -> dict[str, list[str]]:
    """What a lesson with these sinks needs from the CLI FFmpeg (RTMP and WHIP are pushed by
    the pusher, agent/media/pusher.py, which brings its own FFmpeg libraries)."""
    return {"encoders": sorted({encoder, "aac"}),
            "muxers": sorted({"tee", "segment", "mpegts", "null"}
                             | ({"flv"} if live_kinds & {"rtmp", "whip"} else set())),
            "protocols": sorted({"pipe", "file"} | ({"srt"} if "srt" in live_kinds else set()))}


def report(choice: str, live_kinds: set[str], encoder: str = "libx264") -> dict[str, Any]:
    """The FFmpeg in use for `classroom-agent devices` and the status: what, and what is
    missing for this configuration (with the fix)."""
    try:
        info = probe(choice)
    except FFmpegError as exc:
        return {"choice": choice, "path": None, "version": None, "ok": False,
                "error": str(exc)}
    wanted = needs(live_kinds=live_kinds, encoder=encoder)
    have = {"encoders": info.encoders, "muxers": info.muxers, "protocols": info.protocols}
    missing = {k: [n for n in v if n not in have[k]] for k, v in wanted.items()}
    missing = {k: v for k, v in missing.items() if v}
    out: dict[str, Any] = {
        "choice": choice, "path": info.path, "version": info.version, "ok": not missing,
        "needs": wanted, "missing": missing, "preset_options": info.preset_options,
        "hardware_encoders": sorted(n for n in info.encoders
                                    if n in ("h264_vaapi", "h264_qsv", "h264_nvenc")),
        "pusher": pusher_report(),
    }
    if missing:
        out["error"] = (f"FFmpeg {info.version} ({info.path}) lacks "
                        + "; ".join(f"{k} {', '.join(v)}" for k, v in missing.items())
                        + ": set media.ffmpeg to one that has them (bundled has all)")
    return out


@functools.cache
def pusher_report() -> dict[str, Any]:
    """PyAV, which pushes RTMP and WHIP sinks: its FFmpeg libraries and the muxers needed."""
    try:
        out = subprocess.run(
            [_python(), "-c", "import av, json; print(json.dumps({'pyav': av.__version__, "
             "'libavformat': '.'.join(map(str, av.library_versions['libavformat'])), "
             "'whip': 'whip' in av.formats_available, "
             "'libopus': 'libopus' in av.codecs_available}))"],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        import json

        return dict(json.loads(out.stdout)) if out.returncode == 0 else {
            "error": f"PyAV is not usable: {out.stderr.strip()[-200:]}; reinstall the agent"}
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return {"error": f"PyAV could not be probed: {exc}"}


def _python() -> str:
    import sys

    return sys.executable
