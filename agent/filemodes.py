"""The agent's files are its own: outbox (telemetry), lesson state (teachers' names), recordings
(pupils on camera) are readable by the agent's user only, whoever started it and with what umask.

systemd runs the agent with ``UMask=0077``; run by hand (a technician, a test, another init) the
process would inherit any umask, and files from an older version may be world-readable already.
So the daemon sets the umask itself and, at start, takes group and other permissions away from
what is already there. It only removes bits (never adds), and only on what the agent owns.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: New files 0600, new directories 0700; FFmpeg and the media worker inherit it.
UMASK = 0o077


def make_private(*roots: Path) -> int:
    """Set the umask, create ``roots`` (0700) if missing, and remove group/other permissions
    from them and everything below that this user owns. Returns how many modes changed."""
    os.umask(UMASK)
    changed = 0
    uid = os.geteuid()
    for root in roots:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in _walk(root):
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or st.st_uid != uid or not st.st_mode & 0o077:
                continue
            try:
                path.chmod(stat.S_IMODE(st.st_mode) & ~0o077)
                changed += 1
            except OSError as exc:
                log.warning("cannot make %s private: %s", path, exc)
    if changed:
        log.info("made %d existing file(s) private to the agent's user (no group or other "
                 "access)", changed)
    return changed


def _walk(root: Path) -> list[Path]:
    out = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in filenames)
    return out
