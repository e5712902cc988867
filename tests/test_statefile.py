"""The state files' one writer and reader (agent/statefile.py): whole files only, and a bad file
means a fresh start, never a failed one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.statefile import atomic_write_json, atomic_write_text, load_state


def test_writes_replace_the_file_whole_and_leave_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write_json(path, {"b": 1, "a": "é"})
    assert path.read_text(encoding="utf-8") == '{"a": "\\u00e9", "b": 1}'
    atomic_write_text(path, "2\n")
    assert path.read_text(encoding="utf-8") == "2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_write_that_fails_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write_json(path, {"n": 1})
    (tmp_path / ".state.json.tmp").mkdir()  # the temporary cannot be opened
    with pytest.raises(OSError):
        atomic_write_json(path, {"n": 2})
    assert load_state(path, "test state", lambda d: d["n"]) == 1


@pytest.mark.parametrize("content", [b"{not json", b'{"m": 1}', b"\xff\xfe\x00", b"[]"])
def test_a_corrupt_file_is_a_fresh_start(tmp_path: Path, content: bytes,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "agent.statefile"):
        assert load_state(path, "test state", lambda d: d["n"]) is None
    assert "test state" in caplog.text and "corrupt" in caplog.text
    assert path.read_bytes() == content  # left where it is: the next write replaces it


def test_a_corrupt_file_can_be_set_aside(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lesson.json"
    path.write_bytes(b"\xff not even text")
    with caplog.at_level(logging.ERROR, "agent.statefile"):
        assert load_state(path, "lesson state", lambda d: d["n"], set_aside=True) is None
    assert not path.exists()
    assert (tmp_path / "lesson.json.corrupt").read_bytes() == b"\xff not even text"
    assert "moved to" in caplog.text


def test_a_missing_file_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "agent.statefile"):
        assert load_state(tmp_path / "none.json", "test state", lambda d: d) is None
    assert caplog.text == ""
