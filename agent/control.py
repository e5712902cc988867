"""Local control for technicians: ``POST /command/{name}`` on a local HTTP server.

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
from agent.status.http import Request, Response, Routes

PREFIX = "/command/"
#: Largest body the server reads for a command; bigger than ``commands.MAX_PAYLOAD`` so that an
#: oversized request is answered ``too_large`` in the reply format, not cut off.
MAX_BODY = 4 * commands.MAX_PAYLOAD
#: How long an HTTP request waits for its command (lesson start can take a few seconds).
CALL_TIMEOUT_S = 30.0


class Dispatch(Protocol):
    """What the server needs: the command worker (``CommandWorker`` implements it)."""

    def call(self, name: str, payload: bytes, timeout: float = ...) -> dict[str, Any]: ...


def http_status(reply: Mapping[str, Any]) -> int:
    """200 done; 400 bad input; 503 busy; 504 still running; 500 agent bug; 409 refused now."""
    if reply.get("ok"):
        return 200
    code = (reply.get("error") or {}).get("code")
    if code in INPUT_ERRORS:
        return 400
    return {commands.BUSY: 503, commands.TIMEOUT: 504, commands.INTERNAL_ERROR: 500,
            CONFLICT: 409}.get(code, 409)


def routes(dispatch: Dispatch, loopback_only: bool = True) -> Routes:
    """``POST /command/{name}`` through ``dispatch``; ``loopback_only`` refuses other peers."""

    def command(req: Request) -> Response:
        code, reply = handle(dispatch, req, loopback_only)
        return Response.json(reply, code)

    return Routes().post(PREFIX, command)


def handle(dispatch: Dispatch, req: Request,
           loopback_only: bool = True) -> tuple[int, dict[str, Any]]:
    """Answer one POST: (HTTP status, reply JSON). Never raises for bad input."""
    if not req.path.startswith(PREFIX):
        return 404, error(None, "not_found", f"POST goes to {PREFIX}<name>, e.g. "
                          f"{PREFIX}report_now")
    if loopback_only and not _loopback(req.peer.address):
        return 403, error(None, "forbidden", "commands are taken only from the terminal itself "
                          "(127.0.0.1); run `classroom-agent lesson ...` there")
    if req.headers.get("origin") is not None:
        return 403, error(None, "forbidden", "requests from web pages are refused; use "
                          "`classroom-agent lesson ...` or curl on the terminal itself")
    ctype = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return 415, error(None, commands.BAD_REQUEST,
                          "send the request with Content-Type: application/json")
    name = unquote(req.path[len(PREFIX):])
    if len(req.body) > commands.MAX_PAYLOAD:
        return 400, error(None, commands.TOO_LARGE,
                          f"payload is {len(req.body)} bytes; the limit is {commands.MAX_PAYLOAD}")
    reply = dispatch.call(name, req.body, timeout=CALL_TIMEOUT_S)
    return http_status(reply), reply


def _loopback(peer: str) -> bool:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def request_body(args: Mapping[str, Any] | None = None) -> bytes:
    """A request as the CLI sends it: a fresh id, and only the arguments that were given."""
    req = {"id": f"cli-{uuid.uuid4().hex[:12]}",
           "args": {k: v for k, v in (args or {}).items() if v is not None}}
    return json.dumps(req).encode()
