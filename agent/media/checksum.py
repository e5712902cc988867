"""SHA-256 of a recording segment, read in blocks (segments are tens of MB).

Kept apart from the encoder so that the daemon side (supervisor, adapter) can hash files without
importing OpenCV or NumPy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
