"""Uploads switched off (``upload.enabled: false``, the default): what the daemon asks of its
uploader, without loading the uploader, its journal and its S3 client into a daemon that never
uploads (~0.35 MiB of RSS, bench/agent_memory.py). A reload that turns uploads on makes the real
one (agent.daemon); what it answers while off is what agent.upload.uploader.Uploader answers."""

from __future__ import annotations

from typing import Any

from agent.records import Record


class UploadsOff:
    enabled = False

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        pass

    def note(self, record: Record) -> None:
        pass

    def retry(self, lesson_id: str | None = None) -> dict[str, Any]:
        return {"enabled": False, "queued": []}

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": False}

    def report(self, lesson_id: str | None = None, limit: int = 50) -> dict[str, Any]:
        return self.snapshot()
