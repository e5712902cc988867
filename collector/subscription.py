"""The MQTT side: one shared subscription, a persistent session, acknowledgements by hand.

- ``$share/{group}/{prefix}/#`` at QoS 1 (MQTT 5 shared subscription: the broker hands each
  message to one instance of the group), or ``{prefix}/#`` when the group is empty.
- A stable client id per instance with ``clean_start=False`` and a session expiry: while an
  instance is down, the broker keeps its subscription and queues what it owes it.
- ``manual_ack=True``: paho sends no PUBACK by itself. :meth:`Subscription.ack` is called by the
  ingest loop only after the batch is committed, so a collector killed at any moment has
  acknowledged only what is stored, and the broker sends the rest again.
- paho's callbacks only put a message on a queue: no database, no locks of ours, no sleeping,
  and nothing escapes them. ``connect_async`` + ``loop_start``: no network at start is not an
  error. Reconnects are ours, with exponential back-off and full jitter, on a fresh client:
  acknowledgements are only valid on the connection that received the message (``conn``); one
  received on an older connection is not acknowledged and the broker delivers it again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import Backoff
from agent.mqttauth import apply_credentials
from collector.config import MQTT_PASSWORD_ENV, MqttConfig, SubscriptionConfig
from collector.validation import Inbound

log = logging.getLogger(__name__)


@dataclass
class SubscriptionStats:
    connected: bool = False
    subscribed: bool = False
    connects_total: int = 0
    disconnects_total: int = 0
    received_total: int = 0
    acked_total: int = 0
    last_error: str | None = None


class Subscription:
    def __init__(self, mqtt_cfg: MqttConfig, sub_cfg: SubscriptionConfig) -> None:
        self.cfg = mqtt_cfg
        self.topic = sub_cfg.topic
        self.prefix = sub_cfg.topic_prefix
        self._caught_up = False
        self.client_id = mqtt_cfg.effective_client_id()
        self.stats = SubscriptionStats()
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._backoff = Backoff(mqtt_cfg.reconnect_min_s, mqtt_cfg.reconnect_max_s)
        self._client: mqtt.Client | None = None
        self._conn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="subscription", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect; what was received and not acknowledged is delivered again later."""
        self._stop.set()
        self._events.put(("stop",))
        if self._thread is not None:
            self._thread.join(10)
        self._drop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- for the ingest loop -------------------------------------------------------------------

    def take(self, max_n: int, wait_s: float, linger_s: float,
             max_bytes: int = 1 << 62) -> list[Inbound]:
        """Up to ``max_n`` messages and about ``max_bytes`` of payload: waits ``wait_s`` for the
        first, then takes what is queued and lingers while more keep coming (at most
        ``linger_s`` between two)."""
        try:
            first = self._inbox.get(timeout=wait_s)
        except queue.Empty:
            return []
        batch = [first]
        size = len(first.payload)
        while len(batch) < max_n and size < max_bytes:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                if linger_s <= 0:
                    break
                try:
                    batch.append(self._inbox.get(timeout=linger_s))
                except queue.Empty:
                    break
            size += len(batch[-1].payload)
        return batch

    def backlog(self) -> int:
        return self._inbox.qsize()

    def ack(self, messages: list[Inbound]) -> int:
        """PUBACK every QoS 1 message of the current connection, in the order received."""
        client, conn = self._client, self._conn
        n = 0
        if client is None:
            return 0
        for m in messages:
            if m.qos > 0 and m.conn == conn:
                with contextlib.suppress(Exception):  # a dropped socket: the broker resends
                    client.ack(m.mid, m.qos)
                    n += 1
        self.stats.acked_total += n
        return n

    # -- connection life cycle (our thread) ----------------------------------------------------

    def _run(self) -> None:
        next_attempt = 0.0
        while not self._stop.is_set():
            if self._client is None and time.monotonic() >= next_attempt:
                self._connect()
            try:
                ev = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            kind = ev[0]
            if kind == "stop":
                return
            conn = ev[1]
            if conn != self._conn:
                continue  # an event of a connection we already dropped
            if kind == "connack":
                self._on_connack(ev[2], ev[3])
            elif kind == "suback":
                self._on_suback(ev[2])
            elif kind == "disconnected":
                self.stats.disconnects_total += 1
                self._note(f"disconnected from the broker: {ev[2]}")
                self._drop()
                delay = self._backoff.next_delay()
                next_attempt = time.monotonic() + delay
                log.warning("subscription: %s; reconnecting in %.1f s", self.stats.last_error,
                            delay)

    def _make_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False, manual_ack=True)
        client.connect_timeout = 10.0
        apply_credentials(client, username=self.cfg.username,
                          password_file=self.cfg.password_file, password_env=MQTT_PASSWORD_ENV,
                          tls=self.cfg.tls)
        conn = self._conn
        inbox, events = self._inbox, self._events

        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
            events.put(("connack", conn, reason, bool(getattr(flags, "session_present", False))))

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            events.put(("disconnected", conn, reason))

        def on_connect_fail(_c: Any, _u: Any) -> None:  # connect_async found no broker
            events.put(("disconnected", conn, "connection failed"))

        def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
            events.put(("suback", conn, reasons))

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with contextlib.suppress(Exception):  # nothing may escape into paho's thread
                try:
                    topic = msg.topic
                except UnicodeDecodeError:
                    topic = "(topic is not UTF-8)"
                inbox.put(Inbound(topic, msg.payload, msg.mid, msg.qos, bool(msg.retain),
                                  time.time(), conn))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_connect_fail = on_connect_fail
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        return client

    def _connect(self) -> None:
        self._conn += 1
        try:
            client = self._make_client()
            props = None
            if self.cfg.protocol == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.cfg.session_expiry_s
                props.ReceiveMaximum = self.cfg.receive_maximum
            log.info("subscription: connecting to %s:%d as %s (MQTT %s, TLS %s)", self.cfg.host,
                     self.cfg.port, self.client_id, self.cfg.protocol,
                     "on" if self.cfg.tls.active else "off")
            client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                 clean_start=False, properties=props)
            client.loop_start()
        except (OSError, ValueError) as exc:
            self._note(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {exc}")
            self._events.put(("disconnected", self._conn, self.stats.last_error))
            return
        self._client = client

    def _on_connack(self, reason: Any, session_present: bool) -> None:
        if getattr(reason, "is_failure", False):
            self._note(f"the broker refused the connection: {reason}")
            self._events.put(("disconnected", self._conn, self.stats.last_error))
            return
        self.stats.connected = True
        self.stats.connects_total += 1
        self._backoff.reset()
        log.info("subscription: connected (session %s); subscribing to %s",
                 "resumed" if session_present else "new", self.topic)
        assert self._client is not None
        self._client.subscribe(self.topic, qos=1)

    def _on_suback(self, reasons: Any) -> None:
        codes = list(reasons) if isinstance(reasons, list | tuple) else [reasons]
        failed = [c for c in codes if getattr(c, "is_failure", False)]
        if failed:
            self._note(f"the broker refused the subscription to {self.topic}: {failed[0]}")
            log.error("subscription: %s. Next step: check the broker's ACL for the collector's "
                      "account and that it supports shared subscriptions (or set "
                      "subscription.group to '').", self.stats.last_error)
            return
        self.stats.subscribed = True
        log.info("subscription: subscribed to %s", self.topic)
        if not self._caught_up:
            self._caught_up = True
            threading.Thread(target=self._catch_up_retained, name="retained", daemon=True).start()

    def _catch_up_retained(self) -> None:
        """Read the broker's retained state, inventory and schedule of every terminal once.

        A shared subscription never receives retained messages (MQTT 5, 4.8.2), so a collector
        installed after the terminals (or a database rebuilt) would know nothing of their
        current state until each reconnects. A short-lived plain subscription with a clean
        session reads them; they go through the same ingest (duplicates are harmless: state
        applies by session, inventory and schedule by seq) and need no acknowledgement."""
        topics = [(f"{self.prefix}/+/+/{kind}", 1) for kind in ("state", "inventory", "schedule")]
        inbox, count, last = self._inbox, [0], [time.monotonic()]
        done = threading.Event()
        v5 = self.cfg.protocol == "5"
        try:
            client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                 client_id=f"{self.client_id}-retained"[:128],
                                 protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                 clean_session=None if v5 else True, reconnect_on_failure=False)
            apply_credentials(client, username=self.cfg.username,
                              password_file=self.cfg.password_file,
                              password_env=MQTT_PASSWORD_ENV, tls=self.cfg.tls)

            def on_message(_c: Any, _u: Any, msg: Any) -> None:
                with contextlib.suppress(Exception):
                    if msg.retain:
                        inbox.put(Inbound(msg.topic, msg.payload, msg.mid, 0, True, time.time(),
                                          -1))
                        count[0] += 1
                        last[0] = time.monotonic()

            client.on_message = on_message
            client.on_connect = lambda c, *_a: c.subscribe(topics)
            client.on_subscribe = lambda *_a: done.set()
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
            client.loop_start()
        except (OSError, ValueError) as exc:
            log.warning("subscription: could not read the retained messages: %s", exc)
            return
        try:
            started = time.monotonic()
            done.wait(30)
            last[0] = time.monotonic()
            while time.monotonic() - last[0] < 2.0 and time.monotonic() - started < 300:
                if self._stop.wait(0.2):
                    break
            log.info("subscription: read %d retained state, inventory and schedule messages",
                     count[0])
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        self.stats.connected = self.stats.subscribed = False
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()

    def _note(self, why: str) -> None:
        self.stats.last_error = why
