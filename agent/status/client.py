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


def page_address(cfg: Config, timeout: float = 5.0) -> str:
    """The status page's address with its key (``classroom-agent page``), from the control
    socket only: raises ``PermissionError`` (this user is not in its group), another ``OSError``
    (no agent) or ``ValueError`` (an answer that is not the address)."""
    doc = json.loads(_via_socket(cfg.status.socket, timeout, "/page-url.json"))
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str) or not url.startswith("http://"):
        raise ValueError("the agent's answer holds no page address")
    return url


def _via_socket(path: str, timeout: float, target: str = "/status.json") -> bytes:
    conn = UnixConnection(path, timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        if resp.status != 200:
            raise ConnectionError(f"the control socket answered {resp.status}")
        return resp.read()
    except http.client.HTTPException as exc:
        raise ConnectionError(str(exc)) from None
    finally:
        conn.close()
