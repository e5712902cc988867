"""The collector's own counters: what the log line, the heartbeat row and ``status`` show.

Written by the ingest thread (batches) and the maintenance thread (sweeps, gap totals); plain
integers, read without a lock (a figure one batch old is fine for a status line).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from collector.gaps import SweepResult
from collector.storage import BatchResult


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    states: int = 0
    cleared: int = 0
    expired: int = 0
    quarantined: int = 0
    ignored: int = 0
    batches: int = 0
    db_errors: int = 0
    gaps_opened: int = 0
    gaps_closed: int = 0
    seqs_filled_late: int = 0
    gaps_lost: int = 0
    open_gaps: int = 0
    missing: int = 0
    lost_gaps: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    _mark: tuple[float, int, int] = field(default=(0.0, 0, 0), repr=False)

    def __post_init__(self) -> None:
        self._mark = (time.monotonic(), 0, 0)

    def note(self, res: BatchResult, received: int) -> None:
        self.received += received
        self.batches += 1
        self.stored += res.stored
        self.duplicates += res.duplicates
        self.states += res.states
        self.cleared += res.cleared
        self.expired += res.expired
        self.quarantined += res.quarantined
        self.ignored += res.ignored
        self.by_kind.update(res.by_kind)

    def note_sweep(self, res: SweepResult) -> None:
        self.gaps_opened += res.opened
        self.gaps_closed += res.closed
        self.seqs_filled_late += res.filled
        self.gaps_lost += len(res.lost)

    def snapshot(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out["by_kind"] = dict(self.by_kind)
        return out

    def interval_line(self, backlog: int) -> str:
        """Rates since the previous call, then totals."""
        now = time.monotonic()
        t0, stored0, received0 = self._mark
        self._mark = (now, self.stored, self.received)
        dt = max(now - t0, 1e-6)
        return (f"{(self.stored - stored0) / dt:.0f} records/s stored, "
                f"{(self.received - received0) / dt:.0f} messages/s received over {dt:.0f} s; "
                f"queue {backlog}; " + self.totals_line())

    def totals_line(self) -> str:
        return (f"totals: {self.received} received, {self.stored} stored, {self.duplicates} "
                f"duplicates, {self.quarantined} quarantined, {self.ignored} ignored, "
                f"{self.expired} expired, {self.db_errors} database errors; open gaps "
                f"{self.open_gaps} ({self.missing} seqs missing, {self.lost_gaps} lost)")
