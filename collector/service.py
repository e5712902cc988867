"""The running collector: wires subscription -> validation -> storage -> acknowledgement, and a
maintenance thread (gap sweeps, partitions, retention, heartbeat). It holds no logic of its own.

Two threads of ours besides paho's:
- the ingest loop (the main thread): takes a batch from the subscription, checks it, writes it
  in one transaction, then acknowledges it. A database error keeps the batch and retries it with
  back-off; nothing is acknowledged until it is committed.
- maintenance, with its own connection: sweeps the gap queue every ``gaps.sweep_interval_s``,
  writes the heartbeat and the log line every ``status.interval_s``, and every hour creates the
  coming months' partitions and applies the retentions.
SIGTERM/SIGINT finish the batch in hand (commit, acknowledge) and disconnect; the broker keeps
what is left for this instance's session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import psycopg

from agent.backoff import Backoff
from agent.threadnames import name_native_threads
from collector import __version__, gaps, partitions
from collector.config import CollectorConfig
from collector.stats import IngestStats
from collector.storage import BatchResult, SchemaNotReady, Store, connect
from collector.subscription import Subscription
from collector.validation import Outcome, Validator

log = logging.getLogger(__name__)

_MAINTENANCE_S = 3600.0
_TAKE_WAIT_S = 0.5


class Collector:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.subscription = Subscription(cfg.mqtt, cfg.subscription)
        self.client_id = self.subscription.client_id
        self.validator = Validator(cfg.subscription.topic_prefix, cfg.ingest.max_payload_bytes)
        self.store = Store(cfg, self.client_id)
        self.stats = IngestStats()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_a: self._stop.set())
        if not self._open_store():
            return 1
        self.subscription.start()
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance",
                                             daemon=True)
        self._maintenance.start()
        log.info("collector %s started as %s: broker %s:%d, subscription %s", __version__,
                 self.client_id, self.cfg.mqtt.host, self.cfg.mqtt.port,
                 self.cfg.subscription.topic)
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self.subscription.stop()
            self._stop.set()
            if self._maintenance is not None:
                self._maintenance.join(15)
            self.store.close()
            log.info("collector stopped: %s", self.stats.totals_line())
        return 0

    def _open_store(self) -> bool:
        """Connect to the database; retry while it is unreachable, give up when it is not
        migrated (an operator must act)."""
        backoff = Backoff(1.0, 30.0)
        while not self._stop.is_set():
            try:
                self.store.open()
                return True
            except SchemaNotReady as exc:
                log.error("collector: %s", exc)
                return False
            except psycopg.Error as exc:
                delay = backoff.next_delay()
                log.error("collector: cannot use the database (%s); retrying in %.1f s. Next "
                          "step: check database.url and that PostgreSQL is running.",
                          _one_line(exc), delay)
                self._stop.wait(delay)
        return False

    # -- the ingest loop -----------------------------------------------------------------------

    def _step(self) -> None:
        batch = self.subscription.take(self.cfg.ingest.batch_max, _TAKE_WAIT_S,
                                       self.cfg.ingest.linger_ms / 1000.0,
                                       self.cfg.ingest.batch_max_bytes)
        if not batch:
            return
        outcomes: list[Outcome] = [o for m in batch for o in self.validator.check(m)]
        result = self._write(outcomes)
        if result is None:
            return  # stopping with the batch unwritten: the broker sends it again
        self.subscription.ack(batch)
        self.stats.note(result, len(batch))

    def _write(self, outcomes: list[Outcome]) -> BatchResult | None:
        backoff = Backoff(0.2, 30.0)
        while True:
            try:
                return self.store.write(outcomes)
            except psycopg.errors.DeadlockDetected as exc:
                log.info("collector: batch retried after a deadlock: %s", _one_line(exc))
                continue
            except psycopg.Error as exc:
                self.stats.db_errors += 1
                delay = backoff.next_delay()
                log.error("collector: could not store a batch of %d (%s); retrying in %.1f s, "
                          "nothing is acknowledged meanwhile. Next step: check PostgreSQL.",
                          len(outcomes), _one_line(exc), delay)
                self.store.close()
                if self._stop.wait(delay):
                    return None

    # -- maintenance ---------------------------------------------------------------------------

    def _maintain(self) -> None:
        conn: psycopg.Connection | None = None
        next_status = time.monotonic() + self.cfg.status.interval_s
        next_housekeeping = 0.0
        backoff = Backoff(1.0, 30.0)
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(self.cfg, f"classroom-collector {self.client_id} maintenance")
                now = time.monotonic()
                if now >= next_housekeeping:
                    housekeeping(conn, self.cfg)
                    next_housekeeping = now + _MAINTENANCE_S
                swept = gaps.sweep(conn, self.cfg.gaps.lost_after_s)
                self.stats.note_sweep(swept)
                if now >= next_status:
                    self._heartbeat(conn)
                    next_status = now + self.cfg.status.interval_s
                backoff.reset()
                if swept.arrivals < gaps.SWEEP_BATCH:
                    self._stop.wait(self.cfg.gaps.sweep_interval_s)
            except psycopg.Error as exc:
                delay = backoff.next_delay()
                log.error("maintenance: %s; retrying in %.1f s", _one_line(exc), delay)
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                self._stop.wait(delay)
            except Exception:  # one bad pass must not end gap tracking
                log.exception("maintenance: unexpected error; going on")
                self._stop.wait(5.0)
        if conn is not None:
            with contextlib.suppress(Exception):
                self._heartbeat(conn)
                conn.close()

    def _heartbeat(self, conn: psycopg.Connection) -> None:
        # paho's thread is new after every reconnect: named here, so that top -H and the
        # benches' per-thread accounting tell the network thread from ingest and maintenance.
        name_native_threads()
        open_gaps, missing, lost = gaps.open_summary(conn)
        self.stats.open_gaps, self.stats.missing, self.stats.lost_gaps = open_gaps, missing, lost
        snapshot = self.status(self.subscription.backlog())
        log.info("collector: %s", self.stats.interval_line(self.subscription.backlog()))
        conn.execute(
            """INSERT INTO collector_instances (client_id, host, pid, version, started_at,
                                                heartbeat_at, stats)
               VALUES (%s, %s, %s, %s, to_timestamp(%s), now(), %s)
               ON CONFLICT (client_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                   version = EXCLUDED.version, started_at = EXCLUDED.started_at,
                   heartbeat_at = now(), stats = EXCLUDED.stats""",
            (self.client_id, socket.gethostname(), os.getpid(), __version__, self.started_at,
             json.dumps(snapshot)))

    def status(self, backlog: int) -> dict[str, Any]:
        return {"ingest": self.stats.snapshot(), "queue": backlog,
                "mqtt": asdict(self.subscription.stats)}


def housekeeping(conn: psycopg.Connection, cfg: CollectorConfig) -> None:
    """Partitions for the retention window and the months ahead; old partitions and old
    quarantine rows dropped."""
    now = datetime.now(UTC)
    first = partitions.month_index(partitions.cutoff(now, cfg.metrics.retention_months))
    partitions.ensure(conn, first, partitions.month_index(now) + cfg.metrics.months_ahead)
    partitions.drop_expired(conn, now, cfg.metrics.retention_months)
    cur = conn.execute("DELETE FROM quarantine WHERE received_at < now() - make_interval("
                       "secs => %s)", (cfg.quarantine.retention_days * 86400,))
    if cur.rowcount:
        log.info("quarantine: removed %d rows older than %.0f days", cur.rowcount,
                 cfg.quarantine.retention_days)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
