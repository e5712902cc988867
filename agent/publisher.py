"""The MQTT publisher: drains the outbox to the broker, in order, deleting only on PUBACK.

Threads and why:
- paho's own network thread (``loop_start``) reads and writes the socket. Our callbacks there only
  put a tuple on a queue: no locks of ours, no SQLite, no sleeping (paho traps 6, 7, 9).
- One publisher thread of ours owns the connection life cycle and the outbox cursor: it connects,
  publishes up to ``max_inflight`` records, turns PUBACKs into deletions, and reconnects with
  exponential back-off and full jitter. SQLite waits happen here, never in paho's thread.

Each connection gets a fresh paho client with ``reconnect_on_failure=False``: paho's in-memory
session would otherwise resend old messages under new ids after a reconnect (traps 2 and 3), and
the outbox is the only source of truth anyway. After a disconnect we resend from the oldest
unacknowledged record, so the broker sees every record at least once, in order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.backoff import Backoff
from agent.config import MqttConfig, read_secret
from agent.outbox import Outbox, Row
from agent.records import RETAINED_KINDS, Envelope, Record, mark_historical, rfc3339

log = logging.getLogger(__name__)

PASSWORD_ENV = "CLASSROOM_AGENT_MQTT_PASSWORD"
_PREFETCH = 500
_ACK_FLUSH_S = 0.05
_ACK_FLUSH_N = 1000


@dataclass
class PublisherStats:
    connected: bool = False
    broker: str = ""
    protocol: str = ""
    session: int = 0
    connected_since: float | None = None
    last_puback: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    reconnects_total: int = 0
    connect_failures_total: int = 0
    published_total: int = 0
    acked_total: int = 0
    publish_failures_total: int = 0
    inflight: int = 0
    next_attempt_in_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Publisher:
    def __init__(
        self,
        cfg: MqttConfig,
        envelope: Envelope,
        outbox: Outbox,
        state_dir: Path,
        historical_after_s: float,
        started_at: float,
    ) -> None:
        self.cfg = cfg
        self.envelope = envelope
        self.outbox = outbox
        self.historical_after_s = historical_after_s
        self.started_at = started_at
        self._topic_base = f"{cfg.topic_prefix}/{envelope.school}/{envelope.device}"
        self._session_path = Path(state_dir) / "mqtt.session"
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._use_v5 = cfg.protocol in ("auto", "5")
        self.stats = PublisherStats(broker=f"{cfg.host}:{cfg.port}")
        # Connection state, owned by the publisher thread.
        self._client: mqtt.Client | None = None
        self._conn_id = 0
        self._ready = False
        self._got_connack = False
        self._inflight: dict[int, int] = {}
        self._ahead: deque[Row] = deque()
        self._cursor = 0
        self._next_attempt = 0.0
        self._last_ack_flush = 0.0
        self._connect_started = 0.0
        self._flush_deadline = 0.0

    def topic(self, kind: str) -> str:
        return f"{self._topic_base}/{kind}"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Tell the publisher that the outbox has new records (called after each append)."""
        self._events.put(("wake",))

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, flush_s: float) -> None:
        """Drain what we can within ``flush_s``, publish a graceful offline state, disconnect."""
        self._flush_deadline = time.monotonic() + flush_s
        self._stop.set()
        self._events.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=flush_s + 10)

    # -- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._stop.is_set() and self._should_finish():
                    break
                self._step()
            except Exception:  # never let one bad turn kill delivery; log and carry on
                log.exception("publisher: unexpected error; dropping the connection and retrying")
                self._drop_connection("internal error")
                time.sleep(0.5)
        self._shutdown()

    def _should_finish(self) -> bool:
        if not self._ready or time.monotonic() >= self._flush_deadline:
            return True
        return not self._inflight and not self._ahead and not self.outbox.fetch_after(
            self._cursor, 1
        )

    def _step(self) -> None:
        now = time.monotonic()
        if self._client is None:
            if now >= self._next_attempt and not self._stop.is_set():
                self._connect()
                return
            self.stats.next_attempt_in_s = max(0.0, self._next_attempt - now)
            self._handle_events(timeout=min(0.5, max(0.01, self._next_attempt - now)))
            return
        self._handle_events(timeout=0.2 if not self._ready else 0.05)
        if self._ready:
            self._fill_window()
        if self._ready and (
            self.outbox.pending_acks >= _ACK_FLUSH_N or now - self._last_ack_flush >= _ACK_FLUSH_S
        ):
            self._flush_acks()

    def _flush_acks(self) -> None:
        self._last_ack_flush = time.monotonic()
        self.outbox.flush_acks()

    # -- connecting ----------------------------------------------------------------------------

    def _next_session(self) -> int:
        try:
            n = int(self._session_path.read_text().strip() or 0) + 1
        except (FileNotFoundError, ValueError):
            n = 1
        try:
            tmp = self._session_path.with_suffix(".tmp")
            tmp.write_text(f"{n}\n")
            tmp.replace(self._session_path)
        except OSError as exc:
            log.warning("publisher: cannot persist session counter: %s", exc)
        return n

    def _state_payload(self, status: str, session: int, reason: str) -> bytes:
        data = {
            "status": status,
            "session": session,
            "reason": reason,
            "agent_version": __version__,
            "started_at": rfc3339(self.started_at),
        }
        return self.envelope.encode(Record("state", data), None)

    def _make_client(self, session: int) -> mqtt.Client:
        v5 = self._use_v5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.envelope.device,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        client.connect_timeout = 10.0
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.max_queued_messages_set(self.cfg.max_inflight * 4)
        if self.cfg.username:
            password = read_secret(self.cfg.password_file, PASSWORD_ENV)
            client.username_pw_set(self.cfg.username, password)
        tls = self.cfg.tls
        if tls.active:
            client.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(
            self.topic("state"), self._state_payload("offline", session, "connection_lost"),
            qos=1, retain=True,
        )
        conn_id = self._conn_id

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            self._events.put(("connack", conn_id, reason))

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            self._events.put(("disconnected", conn_id, reason))

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
            self._events.put(("puback", conn_id, mid, reason))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        return client

    def _connect(self) -> None:
        self._conn_id += 1
        session = self._next_session()
        proto = "5" if self._use_v5 else "3.1.1"
        try:
            client = self._make_client(session)
            log.info("publisher: connecting to %s:%d (MQTT %s, TLS %s)", self.cfg.host,
                     self.cfg.port, proto, "on" if self.cfg.tls.active else "off")
            if self._use_v5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 0
                client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                               clean_start=True, properties=props)
            else:
                client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            self._connect_failed(f"cannot connect to {self.stats.broker}: {_describe(exc)}")
            return
        self._client = client
        self._got_connack = False
        self.stats.session = session
        self.stats.protocol = proto
        self._connect_started = time.monotonic()
        client.loop_start()

    def _connect_failed(self, why: str) -> None:
        self.stats.connect_failures_total += 1
        self._note_error(why)
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        log.warning("publisher: %s; next attempt in %.1f s. Next step: check that the broker is "
                    "running and reachable (classroom-agent status shows the last error).",
                    why, delay)

    def _note_error(self, why: str) -> None:
        self.stats.last_error = why
        self.stats.last_error_ts = time.time()

    def _drop_connection(self, why: str) -> None:
        client, self._client = self._client, None
        was_ready, self._ready = self._ready, False
        self.stats.connected = False
        self.stats.connected_since = None
        self.stats.inflight = 0
        self._inflight.clear()
        self._ahead.clear()
        self._cursor = 0
        if client is not None:
            with contextlib.suppress(Exception):  # the socket may already be gone
                client.disconnect()
            client.loop_stop()
        try:
            self._flush_acks()
        except Exception as exc:
            log.warning("publisher: could not record acknowledgements: %s", exc)
        if was_ready:
            self.stats.reconnects_total += 1
        if not self._stop.is_set():
            self._connect_failed(why)

    # -- events from paho's thread -------------------------------------------------------------

    def _handle_events(self, timeout: float) -> None:
        try:
            ev = self._events.get(timeout=timeout)
        except queue.Empty:
            self._check_connect_timeout()
            return
        while True:
            self._handle(ev)
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
        self._check_connect_timeout()

    def _check_connect_timeout(self) -> None:
        if (self._client is not None and not self._got_connack
                and time.monotonic() - self._connect_started > self.cfg.keepalive_s):
            self._drop_connection("broker accepted TCP but sent no CONNACK")

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "wake":
            return
        if ev[1] != self._conn_id or self._client is None:
            return  # a late event of a connection we already dropped
        if kind == "puback":
            self._on_puback(ev[2], ev[3])
        elif kind == "connack":
            self._on_connack(ev[2])
        elif kind == "disconnected":
            self._on_disconnected(ev[2])

    def _on_connack(self, reason: Any) -> None:
        self._got_connack = True
        if reason.is_failure:
            if self.cfg.protocol == "auto" and self._use_v5 and _unsupported_version(reason):
                self._use_v5 = False
                log.info("publisher: broker does not speak MQTT 5; falling back to 3.1.1")
                self._next_attempt = 0
            self._drop_connection(f"broker refused the connection: {reason}")
            return
        self._ready = True
        self._backoff.reset()
        self.stats.connected = True
        self.stats.connected_since = time.time()
        self.stats.next_attempt_in_s = None
        log.info("publisher: connected to %s (MQTT %s, session %d)", self.stats.broker,
                 self.stats.protocol, self.stats.session)
        assert self._client is not None
        self._client.publish(
            self.topic("state"),
            self._state_payload("online", self.stats.session, "connected"),
            qos=1, retain=True,
        )

    def _on_disconnected(self, reason: Any) -> None:
        if not self._got_connack and self.cfg.protocol == "auto":
            # Closed before any CONNACK: an old broker may drop MQTT 5 CONNECTs silently.
            self._use_v5 = not self._use_v5
        why = f"connection lost: {reason}"
        log.warning("publisher: %s (%d in flight will be resent)", why, len(self._inflight))
        self._drop_connection(why)

    def _on_puback(self, mid: int, reason: Any) -> None:
        seq = self._inflight.pop(mid, None)
        self.stats.inflight = len(self._inflight)
        if seq is None:
            return  # the birth message, or a mid we no longer track
        if getattr(reason, "is_failure", False):
            self.stats.publish_failures_total += 1
            why = f"broker refused record seq {seq}: {reason}"
            log.error("publisher: %s. Next step: check the broker ACL for %s/#", why,
                      self._topic_base)
            self._drop_connection(why)  # resend from here after a back-off, keeping order
            return
        self.stats.acked_total += 1
        self.stats.last_puback = time.time()
        self.outbox.ack((seq,))

    # -- publishing ----------------------------------------------------------------------------

    def _fill_window(self) -> None:
        client = self._client
        assert client is not None
        while len(self._inflight) < self.cfg.max_inflight:
            if not self._ahead:
                self._ahead.extend(self.outbox.fetch_after(self._cursor, _PREFETCH))
                if not self._ahead:
                    return
            row = self._ahead.popleft()
            payload = row.payload
            if time.time() - row.ts > self.historical_after_s:
                payload = mark_historical(payload)
            info = client.publish(self.topic(row.kind), payload, qos=1,
                                  retain=row.kind in RETAINED_KINDS)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # Not connected any more: paho will report the disconnect; resend then.
                self._ahead.appendleft(row)
                return
            self._inflight[info.mid] = row.seq
            self._cursor = row.seq
            self.stats.published_total += 1
            self.stats.inflight = len(self._inflight)

    def _shutdown(self) -> None:
        client = self._client
        if client is not None and self._ready:
            info = client.publish(
                self.topic("state"),
                self._state_payload("offline", self.stats.session, "shutdown"),
                qos=1, retain=True,
            )
            try:
                info.wait_for_publish(timeout=2.0)
                self._handle_events(timeout=0.05)
            except (RuntimeError, ValueError):
                pass
        self._drop_connection("agent stopping")
        log.info("publisher: stopped (%d records still queued)", self.outbox.stats().depth)


def _unsupported_version(reason: Any) -> bool:
    return getattr(reason, "value", None) in (1, 132) or "protocol version" in str(reason).lower()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__

