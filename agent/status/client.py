"""Reading the running agent's status snapshot from its status address (CLI and ``doctor``)."""

from __future__ import annotations

import http.client
import json
import urllib.request
from typing import Any

from agent.config import Config
from agent.status.http import UnixConnection


def status_url(cfg: Config, path: str = "/status.json") -> str:
    host, port = cfg.status.address
    return f"http://{host}:{port}{path}"


def fetch(cfg: Config, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot; raises ``OSError`` (nothing answers: ``URLError`` is one) or
    ``ValueError`` (the answer is not JSON).

    Through the control socket when this user may use it (root, the agent's user, its group:
    nobody else can connect there, so a flood of the TCP port by another local user cannot
    delay it), else from the TCP status address."""
    try:
        data = _via_socket(cfg.status.socket, timeout)
    except OSError:  # no socket, not allowed, not listening: the TCP address is for everyone
        with urllib.request.urlopen(status_url(cfg), timeout=timeout) as resp:
            data = resp.read()
    snap = json.loads(data)
    if not isinstance(snap, dict):
        raise ValueError("the status is not a JSON object")
    return snap


def _via_socket(path: str, timeout: float) -> bytes:
    conn = UnixConnection(path, timeout)
    try:
        conn.request("GET", "/status.json")
        resp = conn.getresponse()
        if resp.status != 200:
            raise ConnectionError(f"the control socket answered {resp.status}")
        return resp.read()
    except http.client.HTTPException as exc:
        raise ConnectionError(str(exc)) from None
    finally:
        conn.close()
