"""The outbox on its own (a real SQLite file): what its state files promise."""

from __future__ import annotations

from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import Envelope, Record


def test_a_new_file_after_quarantine_never_reuses_a_sequence_number(tmp_path: Path) -> None:
    """The sequence floor (outbox.seq-floor, written atomically beside the database) is what a
    fresh database continues from when the old one was corrupt and set aside."""
    env = Envelope("room-101", "school-a")
    box = Outbox(tmp_path, OutboxConfig(), env)
    first = box.append([Record("metrics", {"n": i}, 1.0 + i) for i in range(3)])
    box.close()
    assert first == [1, 2, 3]
    floor = int((tmp_path / "outbox.seq-floor").read_text())
    assert floor > 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    for leftover in tmp_path.glob("outbox.db-*"):
        leftover.unlink()
    (tmp_path / "outbox.db").write_bytes(b"not a database" * 300)
    box = Outbox(tmp_path, OutboxConfig(), env)
    try:
        assert box.stats().quarantined_total == 1
        assert box.append([Record("metrics", {"n": 9}, 9.0)]) == [floor + 1]
    finally:
        box.close()
