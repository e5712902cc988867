"""Text from outside, made inert: it can neither forge a line nor drive a terminal nor hide text.

Request ids, command names, topics, course and teacher names, broker errors, device names and
file contents reach the log and the technician's terminal. Printed raw, a newline forges a second
log line (``x\\nINFO agent.daemon: signature OK``), an escape sequence retitles or clears the
terminal, a Unicode direction override (U+202E) shows text in another order than it is stored.
:func:`inert` is the one helper for all of it: every control character (C0, DEL, C1), every
format character (bidi overrides and isolates, zero-width characters, the BOM), line and
paragraph separators, surrogates, private-use and unassigned code points become visible escapes
(``\\n``, ``\\x1b``, ``\\u202e``); a backslash is doubled, so an escape in the output is always
ours. Printable text, Chinese included, is untouched.

:class:`InertFormatter` applies it to every log message, after its arguments are filled in, and
to the message lines of tracebacks, so no caller can forget it.
"""

from __future__ import annotations

import logging
import re
import traceback
import unicodedata
from types import TracebackType

#: A log message longer than this is cut (what follows says how long it was).
MAX_LOG_MESSAGE = 8192

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: Categories shown as escapes: controls, format characters, line and paragraph separators,
#: surrogates, private use, unassigned.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_ASCII_SAFE = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII except the backslash


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def inert(text: object, limit: int | None = 200) -> str:
    """``text`` (anything; ``str()`` is taken) on one line, with nothing that acts on a terminal
    or a log reader, cut to ``limit`` characters of the original (None: no limit)."""
    s = text if isinstance(text, str) else str(text)
    cut = ""
    if limit is not None and len(s) > limit:
        cut = f"...({len(s)} characters)"
        s = s[:limit]
    if _ASCII_SAFE.fullmatch(s):
        return s + cut
    return "".join(_escape(ch) for ch in s) + cut


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (no escaping): for bounding data, not for display."""
    return text if len(text) <= limit else text[:limit]


class InertFormatter(logging.Formatter):
    """Every message on one line with outside text made inert; tracebacks keep their frames on
    their own lines but the exception messages in them (which may quote input) are made inert."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_text  # another handler's cached traceback was not made inert
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = saved

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = inert(record.message, MAX_LOG_MESSAGE)
        return super().formatMessage(record)

    def formatException(self, ei: tuple[type[BaseException], BaseException,
                                         TracebackType | None] | tuple[None, None, None]) -> str:
        exc = ei[1]
        if exc is None:
            return super().formatException(ei)
        lines: list[str] = []
        for part in traceback.TracebackException.from_exception(exc).format():
            # Frame lines are ours (file names, our source); the exception line may carry input.
            if part.startswith(("  File ", "Traceback ", "\nDuring handling",
                                "\nThe above exception")):
                lines.append(part.rstrip("\n"))
            else:
                lines.append(inert(part.rstrip("\n"), MAX_LOG_MESSAGE))
        return "\n".join(lines)
