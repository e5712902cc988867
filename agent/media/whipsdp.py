"""Mending FFmpeg's WHIP offer on its way through the signalling proxy (whipproxy.py).

FFmpeg 9.0.2's ``whip`` muxer offers retransmissions (``a=rtpmap:105 rtx/90000``, ``a=rtcp-fb
nack``) and names its RTX stream only in ``a=ssrc-group:FID VIDEO RTX``, without an ``a=ssrc:RTX``
line. RFC 5576 (section 4.2) wants every SSRC of a group described by ``a=ssrc`` lines, and
aiortc 1.16 maps retransmissions only from such lines: it dropped every retransmitted packet
("RTX packet from unknown SSRC"), so a lost packet was never recovered and each loss froze the
picture until its jitter buffer overflowed (measured through 2 % loss: 17-29 of ~180 frames
decoded in 8 s; with the lines added, 178-179). ``declare_group_ssrcs`` gives each SSRC that a
group names but no line describes the attributes of the group's first SSRC (cname, msid), as
browsers write them.
"""

from __future__ import annotations

import re

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
