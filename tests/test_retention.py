"""Recording retention on a real directory tree: by age, then free space; never the active one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.media import retention


def _lesson(root: Path, name: str, age_days: float, size: int = 1000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "seg-00000.ts").write_bytes(b"\0" * size)
    t = time.time() - age_days * 86400
    os.utime(d, (t, t))
    return d


def test_removes_by_age_but_not_the_active_lesson(tmp_path: Path) -> None:
    old = _lesson(tmp_path, "old", 40)
    active = _lesson(tmp_path, "active", 50)
    recent = _lesson(tmp_path, "recent", 1)
    removed = retention.enforce(tmp_path, retention_days=30, min_free_mb=0, active=active)
    assert [(Path(r.path).name, r.reason, r.bytes) for r in removed] == [("old", "age", 1000)]
    assert not old.exists() and active.exists() and recent.exists()


def test_removes_oldest_first_to_keep_the_free_space_reserve(tmp_path: Path) -> None:
    a = _lesson(tmp_path, "a", 3)
    b = _lesson(tmp_path, "b", 2)
    c = _lesson(tmp_path, "c", 1)
    # A reserve larger than the disk: everything but the active lesson goes, oldest first.
    huge = retention.free_mb(tmp_path) * 10
    removed = retention.enforce(tmp_path, retention_days=30, min_free_mb=huge, active=c)
    assert [Path(r.path).name for r in removed] == ["a", "b"]
    assert all(r.reason == "free_space" for r in removed)
    assert not a.exists() and not b.exists() and c.exists()


def test_missing_root_is_not_an_error(tmp_path: Path) -> None:
    assert retention.enforce(tmp_path / "none", 30, 100) == []


def test_reserve_guard_stops_once_and_resumes_only_above_the_margin() -> None:
    guard = retention.ReserveGuard(reserve_mb=100, margin_mb=20)
    seen = [guard.update(free) for free in (150, 99, 90, 105, 119, 120, 110, 99.9)]
    assert seen == [None, "stop", None, None, None, "resume", None, "stop"]
