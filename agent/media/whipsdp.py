"""Mending FFmpeg's WHIP offer and the answer on their way through the signalling proxy.

FFmpeg 9.0.2's ``whip`` muxer offers retransmissions (``a=rtpmap:105 rtx/90000``, ``a=rtcp-fb
nack``) and names its RTX stream only in ``a=ssrc-group:FID VIDEO RTX``, without an ``a=ssrc:RTX``
line. RFC 5576 (section 4.2) wants every SSRC of a group described by ``a=ssrc`` lines, and
aiortc 1.16 maps retransmissions only from such lines: it dropped every retransmitted packet
("RTX packet from unknown SSRC"), so a lost packet was never recovered and each loss froze the
picture until its jitter buffer overflowed (measured through 2 % loss: 17-29 of ~180 frames
decoded in 8 s; with the lines added, 178-179). ``declare_group_ssrcs`` gives each SSRC that a
group names but no line describes the attributes of the group's first SSRC (cname, msid), as
browsers write them.

On the way back, ``relay_candidate`` moves the answer's candidate to the consent relay
(whiprelay.py), with ``ice_credentials`` from the offer: FFmpeg 9.0.2 leaves the receiver's
consent checks unanswered once media flows (docs/media.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

_GROUP = re.compile(r"a=ssrc-group:(\S+)((?: \d+)+)\s*$")
_SSRC = re.compile(r"a=ssrc:(\d+) (.*)$")


def declare_group_ssrcs(offer: bytes) -> bytes:
    """The offer with an ``a=ssrc`` line for every grouped SSRC that lacks one (else unchanged)."""
    try:
        text = offer.decode("utf-8")
    except UnicodeDecodeError:
        return offer
    eol = "\r\n" if "\r\n" in text else "\n"
    sections: list[list[str]] = [[]]
    for line in text.split(eol):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    changed = False
    for lines in sections:
        changed |= _declare(lines)
    return eol.join(line for lines in sections for line in lines).encode() if changed else offer


def _declare(lines: list[str]) -> bool:
    """Add the missing lines to one media section, after its last ``a=ssrc`` line."""
    attrs: dict[str, list[str]] = {}
    for line in lines:
        if m := _SSRC.match(line):
            attrs.setdefault(m.group(1), []).append(m.group(2))
    missing: list[str] = []
    for line in lines:
        if (m := _GROUP.match(line)) is None:
            continue
        first, *others = m.group(2).split()
        missing += [f"a=ssrc:{ssrc} {attr}" for ssrc in others if ssrc not in attrs
                    for attr in attrs.get(first, [])]
    if not missing:
        return False
    last = max(i for i, line in enumerate(lines) if _SSRC.match(line))
    lines[last + 1:last + 1] = missing
    return True


_ICE = re.compile(r"a=ice-(ufrag|pwd):(\S+)\s*$")


def ice_credentials(offer: bytes) -> tuple[str, str] | None:
    """The offer's first ``a=ice-ufrag`` and ``a=ice-pwd`` (FFmpeg's ICE credentials)."""
    found: dict[str, str] = {}
    for line in offer.decode("utf-8", "replace").splitlines():
        if (m := _ICE.match(line)) and m.group(1) not in found:
            found[m.group(1)] = m.group(2)[:256]
    return (found["ufrag"], found["pwd"]) if len(found) == 2 else None


def relay_candidate(answer: bytes, relay: Callable[[tuple[str, int]], int]) -> bytes | None:
    """The answer with one candidate left, moved to ``127.0.0.1:relay(where it was)``.

    The candidate kept is the one FFmpeg 9.0.2 would pick (the first UDP ``host`` candidate of
    component 1, else the first UDP one); its address must be an IP address. None when the answer
    has no such candidate (it is then passed on unchanged)."""
    try:
        text = answer.decode("utf-8")
    except UnicodeDecodeError:
        return None
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = text.split(eol)
    fields = [line.split() if line.startswith("a=candidate:") else [] for line in lines]
    usable = [i for i, f in enumerate(fields)
              if len(f) >= 8 and f[1] == "1" and f[2].lower() == "udp" and f[5].isdigit()
              and 0 < int(f[5]) < 65536]
    hosts = [i for i in usable if fields[i][6:8] == ["typ", "host"]]
    if not usable:
        return None
    pick = (hosts or usable)[0]
    f = fields[pick]
    try:
        target = (str(ipaddress.ip_address(f[4])), int(f[5]))
    except ValueError:
        return None
    f[4], f[5] = "127.0.0.1", str(relay(target))
    lines[pick] = " ".join(f)
    kept = [line for i, line in enumerate(lines) if i == pick or not fields[i]]
    return eol.join(kept).encode()
