"""What the agent serves where: the routes of its TCP status address and of its Unix socket.

- TCP (``status.listen``, read-only, for every local account): the status JSON, ``/metrics``,
  the technicians' page and what it reads, and a 403 for ``POST /command/...`` that names the
  socket.
- The Unix socket (``status.socket``, mode 0660, the technicians' group): local control
  (``POST /command/{name}``) and the same read-only status.

One place, so that the daemon and the tests that attack these addresses (tests/test_local_http.py,
tests/test_commands.py) serve exactly the same routes.
"""

from __future__ import annotations

from agent import control
from agent.media.peek import Peeker
from agent.status.endpoints import Snapshot, status_routes
from agent.status.http import Routes


def tcp_routes(snapshot: Snapshot, peeker: Peeker | None, socket_path: str) -> Routes:
    return status_routes(snapshot, peeker).include(control.moved_routes(socket_path))


def socket_routes(dispatch: control.Dispatch, snapshot: Snapshot) -> Routes:
    return control.routes(dispatch).include(status_routes(snapshot))
