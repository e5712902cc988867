"""How each kind of live sink is pushed, with no secret on any command line (issue 9).

Every local user can read every process's command line (``/proc/PID/cmdline``), so a stream key,
an SRT passphrase or a WHIP token must never be in one, nor in an environment. Per protocol:

- **RTMP(S)**: the pusher (``python -m agent.media.pusher``, PyAV) gets the URL with its key on a
  pipe (``pass_fds``); its command line is only ``--config-fd N``.
- **WHIP**: FFmpeg's ``whip`` muxer (the CLI's; PyAV's FFmpeg 8 fails the DTLS handshake with
  aiortc, docs/media.md) is pointed at the worker's signalling proxy (agent/media/whipproxy.py),
  which adds the bearer token read from ``token_file``. Sound is re-encoded to Opus.
- **SRT**: FFmpeg's ``srt`` protocol. Secret query values (``passphrase``, ``streamid``, anything
  not a known setting) go into an FFmpeg preset file (``-fpre``), mode 0600 in a private 0700
  directory, removed when the process ends, when the FFmpeg in use applies presets to protocol
  options (5.1 does, 9.0.2 does not: probed, agent/media/ffmpeg.py). Otherwise the sink is
  refused with the reason and the fix, rather than leak the secret.

:func:`check_argv` is the last guard: a launch whose argv holds any secret of its URL or token is
refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.urls import SAFE_QUERY, protocol_of, url_secrets

IO_TIMEOUT_US = 5_000_000     # FFmpeg network I/O timeout: a silent stall must not hang it
ANALYZE_US = 200_000          # FFmpeg's default probe waits 5 s of stream before any output
_SRT_LATENCY_KEYS = ("latency", "rcvlatency", "peerlatency")
_SRT_MS_LIMIT = 10_000  # an SRT latency <= this is milliseconds (10 ms in FFmpeg's us is useless)
MAX_TOKEN_BYTES = 8192


class Refused(Exception):
    """This sink cannot be pushed without leaking a secret or without a capability; the
    message names the sink's problem and the fix."""


@dataclass
class Launch:
    """One process to start: argv, descriptors it inherits, what to write to its config pipe."""

    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    #: written to ``config_fd`` (a pipe's write end); the starter closes it and ``pass_fds``
    config: bytes | None = None
    config_fd: int | None = None
    on_started: Callable[[int], None] = lambda _pid: None
    cleanup: Callable[[], None] = lambda: None
    secrets: tuple[str, ...] = field(default_factory=tuple)


def check_argv(argv: list[str], secrets: list[str] | tuple[str, ...], what: str) -> None:
    """Refuse a command line that contains a secret (the last guard before exec)."""
    joined = "\0".join(argv)
    for s in secrets:
        if s and s in joined:
            raise Refused(f"{what}: a secret of the sink would be on the command line; refused")


def srt_caller_url(url: str) -> str:
    """The SRT URL FFmpeg should get: caller mode, an I/O timeout, latency in microseconds.

    People write SRT latency in milliseconds (as srt-live-transmit and the SRT docs do); FFmpeg
    reads it in microseconds, so ``latency=120`` would mean 0.12 ms. Values up to 10,000 are
    therefore taken as milliseconds and converted; larger ones are already microseconds. The
    rest of the query is kept byte for byte (a streamid's own encoding must survive).
    """
    base, _, query = url.partition("?")
    pairs = [p for p in query.split("&") if p]
    keys = {p.partition("=")[0].lower() for p in pairs}
    fixed = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.lower() in _SRT_LATENCY_KEYS and value.isdigit() and int(value) <= _SRT_MS_LIMIT:
            pair = f"{key}={int(value) * 1000}"
        fixed.append(pair)
    if "mode" not in keys:
        fixed.append("mode=caller")
    if "timeout" not in keys:
        fixed.append(f"timeout={IO_TIMEOUT_US}")
    return f"{base}?{'&'.join(fixed)}"


def split_srt_secrets(url: str) -> tuple[str, dict[str, str]]:
    """(the URL with only setting keys in its query, {secret key: decoded value})."""
    base, _, query = url.partition("?")
    kept, hidden = [], {}
    for pair in (p for p in query.split("&") if p):
        key, _, value = pair.partition("=")
        if unquote(key).lower() in SAFE_QUERY:
            kept.append(pair)
        else:
            hidden[unquote(key)] = unquote(value)
    return (f"{base}?{'&'.join(kept)}" if kept else base), hidden


SECRET_DIR_PREFIX = "classroom-agent-secrets-"


def remove_secret_dirs(pid: int) -> int:
    """Remove what a crashed worker (``pid``) left of its secret directories; how many."""
    found = list(Path(tempfile.gettempdir()).glob(f"{SECRET_DIR_PREFIX}{pid}-*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return len(found)


class SecretDir:
    """A private directory (0700) for this process's secret files (0600); removed on close,
    and by the supervisor when the worker crashed (named after the worker's pid)."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def write(self, name: str, text: str) -> Path:
        if self.path is None:  # mkdtemp: mode 0700
            self.path = Path(tempfile.mkdtemp(prefix=f"{SECRET_DIR_PREFIX}{os.getpid()}-"))
        path = self.path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def remove(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def read_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding white space ignored); ValueError naming why."""
    if not path:
        return ""
    try:
        raw = Path(path).read_bytes()[:MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"token_file {path} cannot be read: {exc.strerror or exc}") from None
    token = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_TOKEN_BYTES or not token or not all(33 <= ord(c) < 127 for c in token):
        raise ValueError(f"token_file {path} must hold one token of printable ASCII without "
                         "spaces (at most 8 KiB)")
    return token


class Sender:
    """The recipe for one sink's process; ``check()`` once (may probe FFmpeg), then
    ``launch()`` per (re)start, ``close()`` at the end."""

    container = "flv"
    #: Feed only ~0.75 s of stream until the process reports output, then resume at a fresh
    #: key frame: for real-time receivers (WHIP), where seconds of backlog from a slow
    #: handshake would stay as latency. Broadcast sinks (RTMP, SRT) get everything.
    hold_while_connecting = False

    def __init__(self, url: str, ffmpeg: str) -> None:
        self.url, self.ffmpeg = url, ffmpeg

    def check(self) -> None:
        """Raise Refused when this sink cannot be pushed safely with what is installed."""

    def launch(self) -> Launch:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters of this kind of sink for the sink's stats (none by default)."""
        return {}

    def close(self) -> None:
        pass


class RtmpSender(Sender):
    """RTMP(S) through the PyAV pusher; the URL (with its key) travels on a pipe."""

    def launch(self) -> Launch:
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-m", "agent.media.pusher", "--config-fd", str(read_end)]
        check_argv(argv, url_secrets(self.url), "RTMP")
        config = json.dumps({"url": self.url, "protocol": "rtmp"}).encode()
        return Launch(argv, (read_end,), config, write_end)


class SrtSender(Sender):
    """SRT through ``ffmpeg -c copy``; secret query values through a 0600 preset file."""

    container = "mpegts"

    def __init__(self, url: str, ffmpeg: str) -> None:
        super().__init__(url, ffmpeg)
        self.public_url, self.hidden = split_srt_secrets(url)
        self._dir = SecretDir()

    def check(self) -> None:
        if "@" in urlsplit(self.url).netloc:
            raise Refused("SRT URLs carry no user name or password: remove the user info "
                          "(use passphrase= or streamid=)")
        if any("\n" in v or "\r" in v for v in self.hidden.values()):
            raise Refused("an SRT option value contains a line break")
        if self.hidden:
            from agent.media.ffmpeg import probe_path

            info = probe_path(self.ffmpeg)
            if not info.preset_options:
                raise Refused(
                    f"FFmpeg {info.version} cannot take the SRT option(s) "
                    f"{', '.join(sorted(self.hidden))} from a file (its -fpre no longer applies "
                    "protocol options) and on its command line every local user could read "
                    "them. Fix: set media.ffmpeg to an FFmpeg whose -fpre applies them (Debian "
                    "12's: media.ffmpeg: system), or stream to this receiver without a "
                    "passphrase/streamid")

    def launch(self) -> Launch:
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning",
                "-progress", "pipe:2", "-stats_period", "0.5",
                "-analyzeduration", str(ANALYZE_US), "-f", "mpegts", "-i", "pipe:0",
                "-c", "copy", "-f", "mpegts"]
        preset: Path | None = None
        if self.hidden:
            preset = self._dir.write(f"srt-{os.urandom(6).hex()}.ffpreset", "".join(
                f"{k}={v}\n" for k, v in self.hidden.items()))
            argv += ["-fpre", str(preset)]
        argv.append(srt_caller_url(self.public_url))
        check_argv(argv, url_secrets(self.url), "SRT")

        def cleanup() -> None:
            if preset is not None:
                self._dir.remove(preset)
        return Launch(argv, cleanup=cleanup)

    def close(self) -> None:
        self._dir.close()


class WhipSender(Sender):
    """WHIP through FFmpeg's muxer and the worker's signalling proxy (token added there)."""

    hold_while_connecting = True

    def __init__(self, url: str, ffmpeg: str, token_file: str) -> None:
        super().__init__(url, ffmpeg)
        self.token_file = token_file
        self.proxy: object | None = None
        self._token = ""

    def check(self) -> None:
        from agent.media.ffmpeg import probe_path

        info = probe_path(self.ffmpeg)
        missing = [n for n in ("whip",) if n not in info.muxers] + [
            n for n in ("libopus",) if n not in info.encoders]
        if missing:
            raise Refused(f"FFmpeg {info.version} ({self.ffmpeg}) has no {' or '.join(missing)}"
                          ": set media.ffmpeg: bundled (FFmpeg 9 from imageio-ffmpeg)")
        try:
            read_token(self.token_file)
        except ValueError as exc:
            raise Refused(str(exc)) from None

    def launch(self) -> Launch:
        from agent.media.whipproxy import WhipProxy

        self._token = read_token(self.token_file)  # each start: a rotated token is picked up
        if self.proxy is None:
            self.proxy = WhipProxy(self.url, lambda: self._token)
        proxy = self.proxy
        assert isinstance(proxy, WhipProxy)
        local = proxy.arm()
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning",
                "-progress", "pipe:2", "-stats_period", "0.5",
                "-analyzeduration", str(ANALYZE_US), "-f", "flv", "-i", "pipe:0",
                "-c:v", "copy", "-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "96k",
                "-f", "whip", "-handshake_timeout", "5000", local]
        check_argv(argv, [*url_secrets(self.url), self._token, self.url], "WHIP")
        return Launch(argv, on_started=proxy.bind, cleanup=proxy.delete_session,
                      secrets=(self._token,))

    def stats(self) -> dict[str, int]:
        proxy = self.proxy
        return {"consent_answered": proxy.consent_answered  # type: ignore[attr-defined]
                if proxy is not None else 0}

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()  # type: ignore[attr-defined]
            self.proxy = None


def make_sender(url: str, protocol: str, token_file: str, ffmpeg: str) -> Sender:
    """The sender for one sink; ValueError when the URL and protocol do not fit together."""
    kind = protocol_of(url, protocol)
    if kind == "rtmp":
        return RtmpSender(url, ffmpeg)
    if kind == "srt":
        return SrtSender(url, ffmpeg)
    return WhipSender(url, ffmpeg, token_file)
