"""Local control for technicians: ``POST /command/{name}`` on the agent's Unix socket.

It works with no broker at all (offline-first): the request goes through the same
:class:`~agent.commands.CommandWorker` as MQTT commands, so validation, the one-at-a-time
execution and the reply are identical; only the transport differs. The response body is the
reply JSON; the HTTP status says what kind of answer it is (:func:`http_status`).

Who may: the socket (``status.socket``) is mode 0660, owned by the agent's user and by the group
``status.socket_group`` (by default the agent's own group, ``classroom-agent``, which
scripts/install.sh creates for technicians). The kernel checks that at ``connect()``: root, the
agent's user and the group's members get in, every other local account (a pupil's session) gets
"permission denied". The server learns the caller's uid (``SO_PEERCRED``) and logs it with each
command. The TCP status address (``status.listen``) serves read-only status; a POST there is
answered 403 with the way to the socket. As a second fence, a request must be
``Content-Type: application/json`` and carry no ``Origin`` header (no web page sends either way).
"""

from __future__ import annotations

import http.client
import json
import logging
import pwd
import uuid
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, unquote

from agent import commands
from agent.commands import CONFLICT, INPUT_ERRORS, error
from agent.status.http import Request, Response, Routes, UnixConnection

log = logging.getLogger(__name__)

PREFIX = "/command/"
#: Largest body the server reads for a command; bigger than ``commands.MAX_PAYLOAD`` so that an
#: oversized request is answered ``too_large`` in the reply format, not cut off.
MAX_BODY = 4 * commands.MAX_PAYLOAD
#: How long an HTTP request waits for its command (lesson start can take a few seconds).
CALL_TIMEOUT_S = 30.0
#: Largest reply the CLI reads.
_MAX_REPLY = 1024 * 1024


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


def routes(dispatch: Dispatch) -> Routes:
    """``POST /command/{name}`` through ``dispatch`` (served on the Unix socket)."""

    def command(req: Request) -> Response:
        code, reply = handle(dispatch, req)
        return Response.json(reply, code)

    return Routes().post(PREFIX, command, max_body=MAX_BODY)


def moved_routes(socket_path: str) -> Routes:
    """For the TCP status address: a POST to ``/command/...`` is refused with the way to the
    socket (an older CLI, or a script written for the old endpoint, learns where to go)."""

    def refuse(_req: Request) -> Response:
        return Response.json(error(None, "forbidden", (
            f"local control is on the Unix socket {socket_path}, for root and members of the "
            "agent's technicians group; this TCP address serves status only. Next step: "
            "`classroom-agent lesson ...` as such a user (see docs/security.md)")), 403)

    return Routes().post(PREFIX, refuse, max_body=MAX_BODY)


def handle(dispatch: Dispatch, req: Request) -> tuple[int, dict[str, Any]]:
    """Answer one POST: (HTTP status, reply JSON). Never raises for bad input."""
    if not req.path.startswith(PREFIX):
        return 404, error(None, "not_found", f"POST goes to {PREFIX}<name>, e.g. "
                          f"{PREFIX}report_now")
    if req.headers.get("origin") is not None:
        return 403, error(None, "forbidden", "requests from web pages are refused; use "
                          "`classroom-agent lesson ...` on the terminal itself")
    ctype = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return 415, error(None, commands.BAD_REQUEST,
                          "send the request with Content-Type: application/json")
    name = unquote(req.path[len(PREFIX):])
    if len(req.body) > commands.MAX_PAYLOAD:
        return 400, error(None, commands.TOO_LARGE,
                          f"payload is {len(req.body)} bytes; the limit is {commands.MAX_PAYLOAD}")
    log.info("control: %s asked by %s", name, _who(req))
    reply = dispatch.call(name, req.body, timeout=CALL_TIMEOUT_S)
    return http_status(reply), reply


def _who(req: Request) -> str:
    uid = req.peer.uid
    if uid is None:
        return str(req.peer)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "?"
    return f"uid {uid} ({user}), pid {req.peer.pid}"


def request_body(args: Mapping[str, Any] | None = None) -> bytes:
    """A request as the CLI sends it: a fresh id, and only the arguments that were given."""
    req = {"id": f"cli-{uuid.uuid4().hex[:12]}",
           "args": {k: v for k, v in (args or {}).items() if v is not None}}
    return json.dumps(req).encode()


# -- the client (the CLI) ----------------------------------------------------------------------


def send(socket_path: str, name: str, body: bytes,
         timeout: float = CALL_TIMEOUT_S + 5) -> dict[str, Any]:
    """Send one command over the socket; the agent's reply. Raises ``PermissionError`` (not
    allowed), ``FileNotFoundError`` / ``ConnectionError`` (no agent) or another ``OSError``."""
    conn = UnixConnection(socket_path, timeout)
    try:
        conn.request("POST", PREFIX + quote(name, safe=""), body,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read(_MAX_REPLY)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"the agent's answer was not HTTP: {exc}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError("not an object")
    except ValueError:
        text = data.decode("utf-8", "replace").strip()[:300]
        reply = {"ok": False, "error": {"code": f"http_{resp.status}", "message": text}}
    return reply
