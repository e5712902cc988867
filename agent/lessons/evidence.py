"""The media side's account of a lesson, checked field by field before it becomes evidence.

It comes from another process (the media worker, or what a killed one left on disk), which may
be of another version, may have crashed half-way or may simply be wrong: a field of the wrong
type is dropped, a number is bounded and rounded, an instant is RFC 3339, a digest is 64 hex
digits. The evidence a lesson leaves is only ever built from what passed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.records import rfc3339


class MediaSummary:
    """media.stop()'s summary, checked field by field: it comes from another process."""

    def __init__(self, summary: dict[str, Any] | None) -> None:
        s = summary if isinstance(summary, dict) else {}
        raw_live = s.get("live_s") if isinstance(s.get("live_s"), dict) else {}
        self.live_s = {str(k): _seconds(v) for k, v in raw_live.items() if _num(v)}
        self.recorded_s = _seconds(s["recorded_s"]) if _num(s.get("recorded_s")) else None
        self.segments = [seg for seg in map(_segment, _list(s.get("segments"))) if seg]
        self.interruptions = [i for i in map(_interruption, _list(s.get("interruptions"))) if i]
        enc = s.get("encoder")
        self.encoder = ({"codec": enc["codec"][:32], "reason": str(enc.get("reason", ""))[:500]}
                        if isinstance(enc, dict) and isinstance(enc.get("codec"), str) else None)


def _segment(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        return None
    out: dict[str, Any] = {
        "path": raw["path"],
        "bytes": max(0, int(raw["bytes"])) if _num(raw.get("bytes")) else None,
        "sha256": _sha256(raw.get("sha256")),
        "start": _instant(raw.get("start")),
        "end": _instant(raw.get("end")),
    }
    if _num(raw.get("duration_s")):
        out["duration_s"] = _seconds(raw["duration_s"])
    if isinstance(raw.get("partial"), bool):
        out["partial"] = raw["partial"]  # left on disk by a crashed worker
    return out


def _interruption(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("what"), str):
        return None
    out: dict[str, Any] = {
        "what": raw["what"], "start": _instant(raw.get("start")), "end": _instant(raw.get("end")),
        "duration_s": _seconds(raw["duration_s"]) if _num(raw.get("duration_s")) else None,
    }
    for key in ("detail", "message", "reason"):
        if isinstance(raw.get(key), str):
            out["detail"] = raw[key]
            break
    return out


def _sha256(value: Any) -> str | None:
    text = value.lower() if isinstance(value, str) else ""
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _instant(value: Any) -> str | None:
    """Epoch seconds (the worker's unit) or an RFC 3339 string, as RFC 3339 UTC ms."""
    if _num(value):
        return rfc3339(float(value))
    if isinstance(value, str) and value:
        try:
            return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def _seconds(value: float) -> float:
    return round(max(0.0, float(value)), 3)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
