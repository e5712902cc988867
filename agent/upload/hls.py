"""An HLS VOD playlist for a lesson's MPEG-TS segments, so it plays straight from the store.

MPEG-TS segments are what HLS plays; the playlist only lists them with their durations
(RFC 8216: ``#EXT-X-PLAYLIST-TYPE:VOD``, ``#EXT-X-ENDLIST``). Segment URIs are relative, so the
playlist works under any URL the store serves the lesson's prefix from (a presigned URL per
segment is the platform's business, not the agent's). A segment without a duration in its
evidence (left by a crashed worker) gets the configured segment length. Where a new media worker
took over (a crash, the disk guard) timestamps restart, so such a segment is preceded by
``#EXT-X-DISCONTINUITY``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONTENT_TYPE = "application/vnd.apple.mpegurl"
NAME = "index.m3u8"


def playlist(segments: Sequence[tuple[str, float | None, bool]], default_s: float) -> bytes:
    """(relative URI, duration in seconds, starts a new worker run) of each segment, in order
    -> the playlist's bytes."""
    durations = [d if d is not None and d > 0 else default_s for _, d, _ in segments]
    target = max([1, *(math.ceil(d) for d in durations)])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i, ((uri, _, new_run), d) in enumerate(zip(segments, durations, strict=True)):
        if new_run and i:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXTINF:{d:.3f},", uri]
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()
