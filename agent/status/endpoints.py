"""The board on HTTP routes: ``/`` (a page), ``/status.json`` and ``/metrics``. Read-only.

Each route is a small function of a :class:`~agent.status.http.Request`; adding an endpoint (the
technician page, a camera snapshot, a level meter) is one more ``routes.get(...)`` here or in a
module of its own whose routes the daemon includes.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

from agent.status.http import Request, Response, Routes
from agent.status.text import render_text

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


def status_routes(snapshot: Snapshot) -> Routes:
    """GET routes over ``snapshot`` (the board's :meth:`~agent.status.board.StatusBoard.snapshot`).
    A snapshot that fails answers 500 with a pointer to the log, never a traceback."""

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

    def page(snap: dict[str, Any]) -> Response:
        body = (f"<!doctype html><meta charset=utf-8><title>classroom-agent</title>"
                f"<meta http-equiv=refresh content=5>"
                f"<pre>{html.escape(render_text(snap))}</pre>")
        return Response(200, body.encode(), "text/html; charset=utf-8")

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

    return (Routes()
            .get("/", with_snapshot(page))
            .get("/status.json", with_snapshot(lambda s: Response.json(s, indent=2)))
            .get("/metrics", metrics))
