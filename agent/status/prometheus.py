"""The status snapshot as Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

from typing import Any


def render_prometheus(s: dict[str, Any]) -> str:
    b, ob = s["broker"], s["outbox"]
    labels = f'device="{s["device"]["id"]}",school="{s["device"]["school"]}"'
    values = {
        "classroom_agent_up": 1,
        "classroom_agent_broker_connected": int(b["connected"]),
        "classroom_agent_reconnects_total": b["reconnects_total"],
        "classroom_agent_publish_failures_total": b["publish_failures_total"],
        "classroom_agent_outbox_depth": ob["depth"],
        "classroom_agent_outbox_bytes": ob["bytes"],
        "classroom_agent_outbox_oldest_age_seconds": ob["oldest_age_s"] or 0,
        "classroom_agent_outbox_dropped_total": ob["dropped_total"],
        "classroom_agent_warnings": len(s["warnings"]),
    }
    return "".join(f"{k}{{{labels}}} {v}\n" for k, v in values.items())

