"""agent/safetext.py: outside text made inert for logs and terminals."""

from __future__ import annotations

import io
import logging
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.safetext import MAX_LOG_MESSAGE, InertFormatter, inert
from tests.fuzzing import NASTY_CHARS, fuzz_case

FORGED = "x\nINFO agent.daemon: signature OK"


@pytest.mark.parametrize("text, shown", [
    ("room-101", "room-101"),
    ("数学 李明", "数学 李明"),  # printable text is untouched, Chinese included
    ("全角\u3000空格", "全角\u3000空格"),
    (FORGED, "x\\nINFO agent.daemon: signature OK"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x1b]0;pwned\x07\x1b[2J", "\\x1b]0;pwned\\x07\\x1b[2J"),  # window title, clear screen
    ("\x9b2J", "\\x9b2J"),  # the C1 form of the same
    ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
    ("a\u2066b\u2069", "a\\u2066b\\u2069"),  # isolates
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("\ud800", "\\ud800"),
    ("\U000e0001tag", "\\U000e0001tag"),
    ("C:\\path\\n", "C:\\\\path\\\\n"),  # a backslash is doubled: every escape shown is ours
    ("\x00", "\\x00"),
])
def test_inert(text: str, shown: str) -> None:
    assert inert(text) == shown


def test_inert_bounds_length_and_takes_any_object() -> None:
    assert inert("a" * 300) == "a" * 200 + "...(300 characters)"
    assert inert("a" * 300, None) == "a" * 300
    assert inert(b"\n") == "b'\\\\n'"
    assert inert(ValueError("bad\nline")) == "bad\\nline"


def _log_output(*args: object, exc: BaseException | None = None) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(InertFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("test.safetext")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if exc is not None:
            try:
                raise exc
            except type(exc):
                logger.exception(*args)
        else:
            logger.warning(*args)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_forged_log_line_stays_on_its_own_line() -> None:
    text = _log_output("commands: refused %s id %s", "lesson\u202estart", FORGED)
    assert text.count("\n") == 1
    assert text == ("WARNING test.safetext: commands: refused lesson\\u202estart id "
                    "x\\nINFO agent.daemon: signature OK\n")


def test_tracebacks_keep_their_frames_and_lose_forged_lines() -> None:
    text = _log_output("failed", exc=ValueError(FORGED))
    lines = text.splitlines()
    assert lines[0] == "ERROR test.safetext: failed" and lines[1].startswith("Traceback")
    assert any(ln.startswith('  File "') for ln in lines)
    assert lines[-1] == "ValueError: x\\nINFO agent.daemon: signature OK"
    assert not any(ln.startswith("INFO agent.daemon") for ln in lines)


def test_a_huge_message_is_cut() -> None:
    text = _log_output("%s", "y" * (MAX_LOG_MESSAGE * 3))
    assert len(text) < MAX_LOG_MESSAGE + 200 and text.rstrip().endswith(
        f"...({MAX_LOG_MESSAGE * 3 + 0} characters)")


@pytest.mark.fuzz
@given(st.text(st.sampled_from(NASTY_CHARS) | st.characters(), max_size=80))
def test_fuzz_inert_output_is_one_printable_line(text: str) -> None:
    with fuzz_case():
        out = inert(text, None)
        unsafe = [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs",
                                                                    "Co", "Cn")]
        assert not unsafe, ascii(out)
        assert "\n" not in out and "\r" not in out
