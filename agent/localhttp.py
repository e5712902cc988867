"""What the agent serves where: the routes of its TCP status address and of its Unix socket.

- TCP (``status.listen``, read-only, for every local account): the status JSON, ``/metrics``,
  the technicians' page and what it reads (the camera snapshot and microphone level only with
  the page's key), and a 403 for ``POST /command/...`` that names the socket.
- The Unix socket (``status.socket``, mode 0660, the technicians' group): local control
  (``POST /command/{name}``), the same read-only status, and ``GET /page-url.json``: the page's
  address with its key (``classroom-agent page``).

One place, so that the daemon and the tests that attack these addresses (tests/test_local_http.py,
tests/test_commands.py) serve exactly the same routes.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable

from agent import control
from agent.media.peek import Peeker
from agent.status.endpoints import Snapshot, status_routes
from agent.status.http import Request, Response, Routes

PAGE_URL_PATH = "/page-url.json"


def new_page_key() -> str:
    """The page's key for one run of the agent: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def page_url(address: str, key: str) -> str:
    """The page's address on ``address`` (``host:port`` the status server is bound to) with its
    key in the fragment, which the browser never sends (page.js moves it to a header)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # every interface: this PC reaches it on loopback
        host = "127.0.0.1"
    if ":" in host and ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"http://{host}:{port}/#key={key}"


def tcp_routes(snapshot: Snapshot, peeker: Peeker | None, socket_path: str,
               page_key: str | None) -> Routes:
    return status_routes(snapshot, peeker, page_key).include(control.moved_routes(socket_path))


def socket_routes(dispatch: control.Dispatch, snapshot: Snapshot,
                  page: Callable[[], str] | None = None) -> Routes:
    routes = control.routes(dispatch).include(status_routes(snapshot))
    if page is not None:
        def address(_req: Request) -> Response:
            return Response.json({"url": page()})

        routes.get(PAGE_URL_PATH, address)
    return routes
