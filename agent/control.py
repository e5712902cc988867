"""Local control for technicians: ``POST /command/{name}`` on the status server.

It works with no broker at all (offline-first): the request goes through the same
:class:`~agent.commands.CommandWorker` as MQTT commands, so validation, the one-at-a-time
execution and the reply are identical; only the transport differs. The response body is the
reply JSON; the HTTP status says what kind of answer it is (:func:`http_status`).

The status server has no authentication and listens on 127.0.0.1 by default. Commands are taken
only from the terminal itself (a loopback peer), even if ``status.listen`` is opened to the
network for scraping. To keep a web page open on the terminal from driving it (CSRF, DNS
rebinding), a POST must be
``Content-Type: application/json`` (a cross-site page cannot send that without a CORS preflight,
which we never grant) and must not carry an ``Origin`` header (browsers always send one on a
POST; ``curl`` and the CLI do not).
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote

from agent import commands
from agent.commands import CONFLICT, INPUT_ERRORS, error

PREFIX = "/command/"
#: Bytes read and thrown away from an oversized body, so the client sees our answer, not a reset.
_DRAIN_LIMIT = 1024 * 1024
#: How long an HTTP request waits for its command (lesson start can take a few seconds).
CALL_TIMEOUT_S = 30.0


class Dispatch(Protocol):
    """What the server needs: the command worker (``CommandWorker`` implements it)."""

    def call(self, name: str, payload: bytes, timeout: float = ...) -> dict[str, Any]: ...


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


def http_status(reply: Mapping[str, Any]) -> int:
    """200 done; 400 bad input; 503 busy; 504 still running; 500 agent bug; 409 refused now."""
    if reply.get("ok"):
        return 200
    code = (reply.get("error") or {}).get("code")
    if code in INPUT_ERRORS:
        return 400
    return {commands.BUSY: 503, commands.TIMEOUT: 504, commands.INTERNAL_ERROR: 500,
            CONFLICT: 409}.get(code, 409)


def handle_post(dispatch: Dispatch | None, path: str, headers: Mapping[str, str],
                body: _Readable, peer: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    """Answer one POST from ``peer``: (HTTP status, reply JSON). Never raises for bad input."""
    path = path.split("?", 1)[0]
    if not path.startswith(PREFIX):
        return 404, error(None, "not_found", f"POST goes to {PREFIX}<name>, e.g. "
                          f"{PREFIX}report_now")
    if dispatch is None:
        return 404, error(None, "not_found", "commands are not enabled in this agent")
    if not _loopback(peer):
        return 403, error(None, "forbidden", "commands are taken only from the terminal itself "
                          "(127.0.0.1); run `classroom-agent lesson ...` there")
    if headers.get("Origin") is not None:
        return 403, error(None, "forbidden", "requests from web pages are refused; use "
                          "`classroom-agent lesson ...` or curl on the terminal itself")
    ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return 415, error(None, commands.BAD_REQUEST,
                          "send the request with Content-Type: application/json")
    name = unquote(path[len(PREFIX):])
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        return 400, error(None, commands.BAD_REQUEST, "Content-Length is not a number")
    if length > commands.MAX_PAYLOAD:
        _drain(body, min(length, _DRAIN_LIMIT))
        return 400, error(None, commands.TOO_LARGE,
                          f"payload is {length} bytes; the limit is {commands.MAX_PAYLOAD}")
    payload = body.read(length) if length > 0 else b""
    reply = dispatch.call(name, payload, timeout=CALL_TIMEOUT_S)
    return http_status(reply), reply


def _loopback(peer: str) -> bool:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _drain(body: _Readable, n: int) -> None:
    while n > 0:
        chunk = body.read(min(n, 65536))
        if not chunk:
            return
        n -= len(chunk)


def request_body(args: Mapping[str, Any] | None = None) -> bytes:
    """A request as the CLI sends it: a fresh id, and only the arguments that were given."""
    req = {"id": f"cli-{uuid.uuid4().hex[:12]}",
           "args": {k: v for k, v in (args or {}).items() if v is not None}}
    return json.dumps(req).encode()
