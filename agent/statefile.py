"""Small state files under the state directory, written so a power cut never tears them.

One home for the write (temporary file, fsync, rename, fsync of the directory) and for the read
that never stops the agent (a missing, unreadable or corrupt file means "start fresh", logged;
a corrupt one can be set aside for analysis first).
"""

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a crash or power cut leaves either the old or the new file, whole.
    Raises OSError (a full or read-only disk): the caller decides how loud that is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable (not on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_json(path: Path, data: Any) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON (sorted keys, so equal states give equal
    files)."""
    atomic_write_text(path, json.dumps(data, sort_keys=True))


def load_state(path: Path, what: str, parse: Callable[[Any], T], *,
               set_aside: bool = False) -> T | None:
    """``parse`` applied to the JSON in ``path``; None when the file is missing, unreadable or
    not what ``parse`` expects (logged: the caller starts fresh, it never fails to start).

    ``set_aside``: a corrupt file is renamed to ``<name>.corrupt`` (replacing an older one) and
    logged as an error, for a file whose loss is itself news (the running lesson's evidence).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s %s unreadable (%s); starting fresh", what, path, exc)
        return None
    try:  # bytes that are not UTF-8 are corrupt too (UnicodeDecodeError is a ValueError)
        return parse(json.loads(raw.decode("utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if not set_aside:
            log.warning("%s %s is corrupt (%s); starting fresh", what, path, exc)
            return None
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError as move_exc:
            log.error("%s %s is corrupt (%s) and cannot be moved aside (%s); starting fresh",
                      what, path, exc, move_exc)
        else:
            log.error("%s %s is corrupt (%s); moved to %s, starting fresh", what, path, exc,
                      aside)
        return None
