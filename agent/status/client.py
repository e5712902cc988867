"""Reading the running agent's status snapshot from its status address (CLI and ``doctor``)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from agent.config import Config


def status_url(cfg: Config, path: str = "/status.json") -> str:
    host, port = cfg.status.address
    return f"http://{host}:{port}{path}"


def fetch(cfg: Config, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot; raises ``OSError`` (nothing answers: ``URLError`` is one) or
    ``ValueError`` (the answer is not JSON)."""
    with urllib.request.urlopen(status_url(cfg), timeout=timeout) as resp:
        snap = json.load(resp)
    if not isinstance(snap, dict):
        raise ValueError("the status is not a JSON object")
    return snap
