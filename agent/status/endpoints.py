"""The board on HTTP routes: ``/status.json``, ``/metrics`` and the technicians' page
(agent/status/page.py: ``/`` and what it reads). Read-only.

Each route is a small function of a :class:`~agent.status.http.Request`; adding an endpoint is
one more ``routes.get(...)`` here or in a module of its own whose routes are included here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.media.peek import Peeker
from agent.status import page
from agent.status.http import Request, Response, Routes

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


def status_routes(snapshot: Snapshot, peeker: Peeker | None = None,
                  page_key: str | None = None) -> Routes:
    """GET routes over ``snapshot`` (the board's :meth:`~agent.status.board.StatusBoard.snapshot`);
    ``peeker`` serves the page's camera snapshot and microphone level to requests that carry
    ``page_key`` (agent/status/page.py). A snapshot that fails answers 500 with a pointer to the
    log, never a traceback."""

    def with_snapshot(render: Callable[[dict[str, Any]], Response]) -> Callable[[Request],
                                                                                Response]:
        def handler(_req: Request) -> Response:
            try:
                snap = snapshot()
            except Exception:
                log.exception("status: snapshot failed")
                return Response.text("status snapshot failed; see the agent log\n", 500)
            return render(snap)

        return handler

    registries: list[Any] = []

    def metrics(_req: Request) -> Response:
        # prometheus_client is imported at the first scrape: an agent nobody scrapes does not
        # carry it (the telemetry RSS target, docs/benchmarks.md).
        from agent.status import prometheus

        try:
            if not registries:
                registries.append(prometheus.registry(snapshot))
            body = prometheus.render_prometheus(registries[0])
        except Exception:
            log.exception("status: /metrics failed")
            return Response.text("metrics failed; see the agent log\n", 500)
        return Response(200, body, prometheus.CONTENT_TYPE)

    return (page.routes(snapshot, peeker, page_key)
            .get("/status.json", with_snapshot(lambda s: Response.json(s, indent=2)))
            .get("/metrics", metrics))
