"""Live-sink URLs: the one place that says which URLs a sink may have, and what of them is secret.

The config, the YAML and iCalendar timetables and the media worker all accept sink URLs; they all
check them with :data:`SINK_URL` and hide their secrets with :func:`redact_url` (status, events,
logs) and :func:`scrub` (FFmpeg's own messages, which quote the URL). A sink's protocol is named
by the URL's scheme for RTMP(S) and SRT; an ``http(s)://`` URL is a WHIP endpoint (RFC 9725) and
must say so (``protocol: whip``), since other HTTP ingest protocols exist.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SINK_URL = r"^(rtmps?|srt|https?)://[^\s]+$"
SINK_RULE = "an rtmp://, rtmps://, srt:// or (with protocol: whip) http(s):// URL without spaces"
SINK_URL_RE = re.compile(SINK_URL)
SINK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SINK_NAME_RULE = "a sink name is 1-64 letters, digits, '.', '_' or '-'"
PROTOCOLS = ("rtmp", "srt", "whip")

# Query keys of sink URLs that are settings, not secrets; every other value is redacted.
SAFE_QUERY = frozenset({
    "mode", "latency", "rcvlatency", "peerlatency", "timeout", "connect_timeout",
    "listen_timeout", "pkt_size", "payload_size", "maxbw", "inputbw", "oheadbw", "transtype",
    "tlpktdrop", "nakreport", "pbkeylen", "mss", "ffs", "ipttl", "iptos", "linger", "tsbpd",
    "sndbuf", "rcvbuf", "send_buffer_size", "recv_buffer_size", "rw_timeout", "messageapi",
    "enforced_encryption", "kmrefreshrate", "kmpreannounce", "snddropdelay", "lossmaxttl",
    "minversion", "smoother", "congestion",
})
MASK = "***"


@dataclass(frozen=True)
class LiveTarget:
    """One live destination of a lesson: where, how, and the file holding its bearer token."""

    name: str
    url: str
    protocol: str = ""      # "" = from the URL's scheme (rtmp, srt)
    token_file: str = ""    # WHIP: a file whose content is the bearer token (never the token)

    @property
    def kind(self) -> str:
        return protocol_of(self.url, self.protocol)


def protocol_of(url: str, protocol: str | None = "") -> str:
    """``rtmp``, ``srt`` or ``whip`` for ``url``; ValueError naming the fix when they disagree."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    by_scheme = {"rtmp": "rtmp", "rtmps": "rtmp", "srt": "srt"}.get(scheme)
    if protocol:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not supported: use one of "
                             f"{', '.join(PROTOCOLS)}")
        if protocol == "whip" and scheme not in ("http", "https"):
            raise ValueError("protocol whip needs an http:// or https:// URL (the WHIP endpoint)")
        if protocol != "whip" and by_scheme != protocol:
            raise ValueError(f"protocol {protocol} does not match the URL scheme {scheme!r}")
        return protocol
    if by_scheme:
        return by_scheme
    if scheme in ("http", "https"):
        raise ValueError("an http(s):// sink must say its protocol: add protocol: whip to its "
                         "media.live entry (a timetable's WHIP URL takes protocol and "
                         "token_file from the media.live entry with the same URL)")
    raise ValueError(f"live sink URL scheme {scheme!r} is not supported: use rtmp://, "
                     "rtmps://, srt:// or http(s):// with protocol: whip")


def live_kinds(sinks: Iterable[Any]) -> set[str]:
    """The protocols of these sinks (objects with ``url`` and ``protocol``); unusable ones are
    left out (they are reported where they are checked)."""
    kinds = set()
    for sink in sinks:
        with contextlib.suppress(ValueError):
            kinds.add(protocol_of(sink.url, sink.protocol or ""))
    return kinds


def redact_host(url: str) -> str:
    """``scheme://host:port/...``: only where it goes (status and lesson snapshots)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{host}{port}/..."


def redact_url(url: str) -> str:
    """The URL without secrets: user info, the RTMP stream key, and non-setting query values."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return f"{url.split(':', 1)[0]}://{MASK}"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    elif not host:
        netloc = parts.netloc
    path = parts.path
    if parts.scheme in ("rtmp", "rtmps"):
        segments = path.split("/")
        if len([s for s in segments if s]) >= 2:  # /app/key -> /app/***
            segments[-1] = MASK if segments[-1] else segments[-1]
            if not segments[-1]:
                segments[-2] = MASK
            path = "/".join(segments)
    query = [(k, v if k.lower() in SAFE_QUERY else MASK)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, path, urlencode(query, safe="*"), ""))


def shown_source(source: str) -> str:
    """A media source as status, events and logs name it: a camera URL may hold a password."""
    return redact_url(source) if "://" in source else source


def url_secrets(url: str) -> list[str]:
    """The secret substrings of ``url`` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.update([userinfo, *userinfo.split(":", 1)])
    if parts.scheme in ("rtmp", "rtmps"):
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2:
            found.add(segments[-1])
    for raw in parts.query.split("&"):
        key, _, value = raw.partition("=")
        if value and unquote(key).lower() not in SAFE_QUERY:
            found.add(value)
    found |= {unquote(s) for s in found}
    # Very short "secrets" (a test key "x") would mangle every message they occur in.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def scrub(text: str, url: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` with ``url`` and its secrets (and ``extra`` ones) replaced by their masks."""
    if url in text:
        text = text.replace(url, redact_url(url))
    for secret in (*url_secrets(url), *(s for s in extra if len(s) >= 4)):
        text = text.replace(secret, MASK)
    return text
