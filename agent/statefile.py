"""Small JSON state files under the state directory, written so a power cut never tears them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a crash or power cut leaves either the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable (not on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_state(path: Path, what: str, parse: Callable[[Any], T]) -> T | None:
    """``parse`` applied to the JSON in ``path``; None when the file is missing, unreadable or
    not what ``parse`` expects (logged: the caller starts fresh, it never fails to start)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s %s unreadable (%s); starting fresh", what, path, exc)
        return None
    try:
        return parse(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("%s %s is corrupt (%s); starting fresh", what, path, exc)
        return None
