"""FLV for the RTMP sinks: whole tags, the stream's init, and where a new connection may start.

RTMP carries FLV tags, so RTMP sinks get FLV from the encoder and remux it with ``-c copy``
(no container change). MPEG-TS would cost ~80 ms more: its demuxer completes a video PES only
when the next one starts (docs/benchmarks.md, "Live latency").

FLV has no sync marker, so a sink that drops data must drop whole tags: :class:`FlvFramer` cuts
the encoder's byte stream at tag boundaries, and every chunk a sink gets starts at a tag. A
remux process started mid-stream needs what FLV says only once, at the start (the file header,
``onMetaData`` and the AVC and AAC sequence headers): :class:`FlvInit` keeps it from the chunks
it sees, and :class:`FlvGate` puts it in front of the first video key frame.

Layout (Adobe FLV spec v10.1, annex E): a 9-byte header and a 4-byte PreviousTagSize0, then
tags of an 11-byte header (type, 24-bit data size, timestamp, stream id), the data, and a 4-byte
PreviousTagSize.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

SIGNATURE = b"FLV"
HEADER_LEN = 13          # 9-byte file header + PreviousTagSize0
TAG_HEADER_LEN = 11
TAG_TRAILER_LEN = 4      # PreviousTagSize
AUDIO, VIDEO, SCRIPT = 8, 9, 18
_AVC, _AAC = 7, 10
_KEY_FRAME = 1
_SEQUENCE_HEADER = 0


def _tags(data: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """(offset, tag type, tag length including its trailer) of each whole tag from ``start``."""
    pos, end = start, len(data)
    while pos + TAG_HEADER_LEN <= end:
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        total = TAG_HEADER_LEN + size + TAG_TRAILER_LEN
        if pos + total > end:
            return
        yield pos, data[pos] & 0x1F, total
        pos += total


def _first_tag(chunk: bytes) -> int:
    """Where the first tag of a framed chunk begins (after the file header, if it is there)."""
    return HEADER_LEN if chunk[:3] == SIGNATURE else 0


class FlvFramer:
    """Cuts a byte stream of FLV into chunks that hold only whole tags (the header is one too)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header_seen = False

    def feed(self, data: bytes) -> bytes:
        """The whole tags completed by ``data`` (b"" while a tag is still partial)."""
        self._buf += data
        start = 0
        if not self._header_seen:
            if len(self._buf) < HEADER_LEN:
                return b""
            if self._buf[:3] != SIGNATURE:
                raise ValueError("the encoder's live output is not FLV (no 'FLV' signature)")
            self._header_seen = True
            start = HEADER_LEN
        end = start
        for pos, _kind, total in _tags(self._buf, start):
            end = pos + total
        if end == 0:
            return b""
        out = bytes(self._buf[:end])
        del self._buf[:end]
        return out


class FlvInit:
    """The once-per-stream part of an FLV stream, kept from the framed chunks that pass by."""

    def __init__(self) -> None:
        self._header = b""
        self._parts: dict[str, bytes] = {}

    def observe(self, chunk: bytes) -> None:
        """Remember the header, metadata and sequence headers in ``chunk`` (a framed chunk)."""
        start = _first_tag(chunk)
        if start:
            self._header = chunk[:HEADER_LEN]
        for pos, kind, total in _tags(chunk, start):
            part = _init_part(chunk, pos, kind)
            if part:
                self._parts[part] = chunk[pos:pos + total]

    def bytes(self) -> bytes:
        """Header + metadata + sequence headers, or b"" until the header has been seen."""
        if not self._header:
            return b""
        return self._header + b"".join(self._parts[k] for k in ("meta", "video", "audio")
                                       if k in self._parts)


def _init_part(chunk: bytes, pos: int, kind: int) -> str | None:
    data = pos + TAG_HEADER_LEN
    if kind == SCRIPT:
        return "meta"
    if data + 1 >= len(chunk):
        return None
    if kind == VIDEO and chunk[data] & 0x0F == _AVC and chunk[data + 1] == _SEQUENCE_HEADER:
        return "video"
    if kind == AUDIO and chunk[data] >> 4 == _AAC and chunk[data + 1] == _SEQUENCE_HEADER:
        return "audio"
    return None


def is_key_frame(chunk: bytes, pos: int) -> bool:
    """Whether the tag at ``pos`` is a video key frame carrying picture data."""
    data = pos + TAG_HEADER_LEN
    if chunk[pos] & 0x1F != VIDEO or data >= len(chunk) or chunk[data] >> 4 != _KEY_FRAME:
        return False
    if chunk[data] & 0x0F == _AVC:  # not the sequence header or end of sequence
        return data + 1 < len(chunk) and chunk[data + 1] == 1
    return True


#: After a skip within one process, the stream resumes this long after its last tag (ms): more
#: than an audio frame, so that no stream's timestamps go backwards.
RESUME_GAP_MS = 50


def tag_ts(chunk: bytes | bytearray, pos: int) -> int:
    """The timestamp (ms) of the tag at ``pos``: 24 bits plus the extension byte on top."""
    return int.from_bytes(chunk[pos + 4:pos + 7], "big") | chunk[pos + 7] << 24


def _set_ts(buf: bytearray, pos: int, ts: int) -> None:
    ts &= 0xFFFFFFFF
    buf[pos + 4:pos + 7] = (ts & 0xFFFFFF).to_bytes(3, "big")
    buf[pos + 7] = ts >> 24


class FlvGate:
    """Holds back framed FLV until a video key frame, then sends the stream's init before it.

    Skipping within one process (``reset(fresh=False)``: a full queue, a sink still connecting)
    removes the skipped time from the timestamps that follow: a jump would make the receiving
    process wait (its muxer interleaves by time) or play one stream seconds after the other.
    """

    def __init__(self, init: FlvInit) -> None:
        self._init = init
        self.open = False
        self._midstream = False
        self._shift = 0          # ms subtracted from every tag since the last skip
        self._last_ts: int | None = None

    def reset(self, fresh: bool = True) -> None:
        """Wait for the next key frame; ``fresh``: a new process, so send the init first (in
        the same process a second FLV header would corrupt the stream)."""
        self.open = False
        self._midstream = not fresh
        if fresh:
            self._shift, self._last_ts = 0, None

    def feed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` may be written now (all of it once open)."""
        if self.open:
            return self._restamp(chunk, _first_tag(chunk))
        init = b"" if self._midstream else self._init.bytes()
        if not init and not self._midstream:
            return b""
        for pos, _kind, _total in _tags(chunk, _first_tag(chunk)):
            if is_key_frame(chunk, pos):
                self.open = True
                if self._midstream and self._last_ts is not None:
                    self._shift = tag_ts(chunk, pos) - self._last_ts - RESUME_GAP_MS
                return init + self._restamp(chunk[pos:], 0)
        return b""

    def _restamp(self, chunk: bytes, start: int) -> bytes:
        tags = list(_tags(chunk, start))
        if tags:
            last = tags[-1][0]
            self._last_ts = tag_ts(chunk, last) - self._shift
        if not self._shift:
            return chunk
        buf = bytearray(chunk)
        for pos, _kind, _total in tags:
            _set_ts(buf, pos, tag_ts(buf, pos) - self._shift)
        return bytes(buf)
