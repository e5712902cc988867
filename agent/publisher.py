"""The MQTT publisher: drains the outbox to the broker, in order, deleting only on PUBACK.

One thread, and why: the publisher thread owns the connection life cycle, the outbox cursor and
the socket. It drives paho through paho's external-loop API (``loop_read``, ``loop_write``,
``loop_misc``) from one ``select`` on the broker socket and a wake-up socket, with a timeout that
is the next real deadline (keepalive, CONNACK timeout, acknowledgement flush, reconnect). paho's
own thread (``loop_start``) woke every second by itself whatever there was to do, and the two
threads took turns on the GIL during a drain (docs/benchmarks.md, issue 12). It connects,
publishes up to ``max_inflight`` records, turns PUBACKs into deletions, and reconnects with
exponential back-off and full jitter. While a backlog drains, consecutive non-retained records
go as one ``batch`` message (docs/contract.md): one publish, one PUBACK and one broker routing
for up to ``mqtt.batch_records`` of them, and the PUBACK deletes them all. paho's callbacks still
only put a tuple on a queue that the same thread handles after paho returns: nothing runs
inside paho's locks (an exception in a callback cannot hang the network loop). Other threads
(appends, replies, command acks) put on the queue and write one byte to the wake-up socket.

Each connection gets a fresh paho client with ``reconnect_on_failure=False``: paho's in-memory
session would otherwise resend old messages under new ids after a reconnect (traps 2 and 3), and
the outbox is the only source of truth anyway. After a disconnect we resend from the oldest
unacknowledged record, so the broker sees every record at least once, in order.

Commands (when a ``command_sink`` is given): every connection subscribes to ``{base}/cmd/+`` and
asks for a persistent session (MQTT 5 ``clean_start=False`` with :data:`SESSION_EXPIRY_S`, 3.1.1
``clean_session=False``), so commands published while the terminal is offline wait at the broker.
A fresh client per connection is still right: the broker keeps no state for our QoS 1
publications (only for what it owes us), so resuming the session resends nothing of ours, and the
commands it resends to us are plain QoS 1 deliveries that paho acknowledges without any history.
Commands go to the sink from our thread; replies come back through :meth:`Publisher.reply`.
A command is acknowledged (PUBACK, manual ack) only once its reply is queued: if the agent dies
before that, the broker redelivers it on the next connection instead of it being lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import CONTRACT_VERSION, __version__
from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.mqttauth import apply_credentials
from agent.mqttversion import ProtocolChoice
from agent.outbox import Outbox, Row
from agent.records import RETAINED_KINDS, Envelope, Record, mark_historical, rfc3339
from agent.throttle import Summary, Tally

log = logging.getLogger(__name__)

PASSWORD_ENV = "CLASSROOM_AGENT_MQTT_PASSWORD"
_PREFETCH = 500
_ACK_FLUSH_S = 0.05
_ACK_FLUSH_N = 1000
#: How long the broker keeps our session (subscription and queued commands) while we are away.
#: An hour covers a reboot or a network blip; a command older than that is rarely still wanted,
#: and platforms should set a Message Expiry Interval on commands anyway.
SESSION_EXPIRY_S = 3600
#: Largest packet we accept from the broker (MQTT 5): commands over 16 KiB are refused with
#: ``too_large``; this only stops a huge message from reaching memory at all.
MAX_INBOUND_PACKET = 256 * 1024
#: Reply messages kept while disconnected (a reply with a response topic counts twice).
MAX_PENDING_REPLIES = 100
#: MQTT 5 PUBACK reason code: the broker took the message and has no subscriber for it.
NO_MATCHING_SUBSCRIBERS = 0x10
#: Largest ``batch`` message (bytes of the records in it): tens of KB per message keep a slow
#: link's window moving and a broker's memory per message small; a record bigger than this
#: goes alone.
BATCH_MAX_BYTES = 128 * 1024

CommandSink = Callable[[str, bytes, Any], None]


def client_id(envelope: Envelope) -> str:
    """The MQTT client id: ``{school}.{device}``, unique in the whole fleet.

    Device ids repeat across schools (every school has a ``room-101``); two clients with one id
    take each other's connection and share one persistent session. Names contain no ``.``
    (agent/config.py), so the separator is unambiguous."""
    return f"{envelope.school}.{envelope.device}"


@dataclass(frozen=True)
class ReplyTo:
    """Where an MQTT 5 request asked for its reply, besides ``{base}/reply``; ``ack`` is to be
    called once the reply is queued (it acknowledges the request to the broker)."""

    response_topic: str | None = None
    correlation: bytes | None = None
    ack: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass
class PublisherStats:
    connected: bool = False
    broker: str = ""
    protocol: str = ""
    session: int = 0
    connected_since: float | None = None
    last_puback: float | None = None
    #: Since when the broker has answered "No matching subscribers" (MQTT 5 PUBACK 0x10) for
    #: our records: reachable, but nobody (no collector) receives them; None once one is.
    no_subscriber_since: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    reconnects_total: int = 0
    connect_failures_total: int = 0
    published_total: int = 0
    acked_total: int = 0
    publish_failures_total: int = 0
    inflight: int = 0
    next_attempt_at: float | None = None  # time.monotonic() of the next connection attempt
    commands_subscribed: bool = False
    commands_received_total: int = 0
    replies_sent_total: int = 0
    replies_dropped_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def next_attempt_in_s(self) -> float | None:
        """Seconds until the next connection attempt (None while connected or connecting)."""
        at = self.next_attempt_at
        return None if at is None else max(0.0, at - time.monotonic())


class Publisher:
    def __init__(
        self,
        cfg: MqttConfig,
        envelope: Envelope,
        outbox: Outbox,
        state_dir: Path,
        historical_after_s: float,
        started_at: float,
        command_sink: CommandSink | None = None,
        clear_retained: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        # Retained kinds whose telemetry class is off: emptied on every connect, so the broker
        # stops handing out a copy taken while the class was on (docs/privacy.md).
        self.clear_retained = clear_retained
        self.envelope = envelope
        self.outbox = outbox
        self.historical_after_s = historical_after_s
        self.started_at = started_at
        self._topic_base = f"{cfg.topic_prefix}/{envelope.school}/{envelope.device}"
        self._session_path = Path(state_dir) / "mqtt.session"
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # Other threads write a byte here after putting an event, to end the select() early.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        # Records the broker took with no subscriber for them are sent again after this one
        # (not reset by a connect, only by a record that reached someone).
        self._nobody = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._hold_until: float | None = None
        self._resend_from: int | None = None
        self._protocol = ProtocolChoice(cfg, Path(state_dir))
        self._use_v5 = self._protocol.v5  # of the current connection
        self.stats = PublisherStats(broker=f"{cfg.host}:{cfg.port}")
        # Connection state, owned by the publisher thread.
        self._client: mqtt.Client | None = None
        self._conn_id = 0
        self._ready = False
        self._got_connack = False
        # mid -> the seqs its message carries (one record, or a batch of consecutive ones)
        self._inflight: dict[int, tuple[int, ...]] = {}
        self._batch_head = json.dumps(
            {"v": CONTRACT_VERSION, "school": envelope.school, "device": envelope.device,
             "kind": "batch"}, ensure_ascii=False, separators=(",", ":")).encode()[:-1]
        self._ahead: deque[Row] = deque()
        self._outbox_read_all = False  # the last top-up of _ahead read the outbox to its end
        self._cursor = 0
        self._next_attempt = 0.0
        self._last_ack_flush = 0.0
        self._connect_started = 0.0
        self._flush_deadline = 0.0
        self._state_sent = 0.0
        self._more = True
        # Commands: None = no subscription and a clean session (the behaviour before commands).
        self.command_sink = command_sink
        self._sub_mid: int | None = None
        self._replies: deque[_Outgoing] = deque()
        self._refused_topics = Tally(60.0, self._log_refused_topic)
        self._dropped_replies = Tally(60.0, self._log_dropped_replies)
        self._reply_inflight: dict[int, _Outgoing] = {}

    def topic(self, kind: str) -> str:
        return f"{self._topic_base}/{kind}"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Tell the publisher that the outbox has new records (called after each append)."""
        self._post(("wake",))

    def _post(self, ev: tuple[Any, ...]) -> None:
        """From another thread: queue ``ev`` and wake the publisher thread's select()."""
        self._events.put(ev)
        with contextlib.suppress(OSError):  # full (a wake is already pending) or closed
            self._wake_w.send(b"\0")

    def reply(self, payload: bytes, response_topic: str | None = None,
              correlation: bytes | None = None) -> None:
        """Publish a command reply (QoS 1, not retained) on ``{base}/reply`` and, if given, on the
        request's MQTT 5 response topic. Thread-safe: only enqueues; sent while connected."""
        self._post(("reply", payload, response_topic, correlation))

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, flush_s: float) -> None:
        """Drain what we can within ``flush_s``, publish a graceful offline state, disconnect."""
        self._flush_deadline = time.monotonic() + flush_s
        self._stop.set()
        self._post(("wake",))
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
        return (not self._inflight and not self._ahead and not self._replies
                and not self._reply_inflight and not self.outbox.fetch_after(self._cursor, 1))

    def _step(self) -> None:
        now = time.monotonic()
        if self._client is None:
            if now >= self._next_attempt and not self._stop.is_set():
                self.stats.next_attempt_at = None
                self._connect()
                return
            self.stats.next_attempt_at = self._next_attempt
            self._handle_events(timeout=max(0.01, self._next_attempt - now))
            return
        # Block until something happens (a wake from an append, a PUBACK, a reply) or the next
        # deadline: polling the outbox 20 times a second was 80% of the agent's idle CPU, and a
        # fixed tick is a wake-up for nothing. 50 ms only while acknowledgements wait to be
        # deleted.
        self._handle_events(timeout=0.05 if self.outbox.pending_acks else self._idle_timeout(now))
        if self._ready:
            if now - self._state_sent >= self.cfg.state_refresh_s:
                self._publish_online()
            self._send_replies()
            if self._more:
                self._fill_window()
        pending = self.outbox.pending_acks
        if self._ready and pending and (
            pending >= _ACK_FLUSH_N or now - self._last_ack_flush >= _ACK_FLUSH_S
            or not self._inflight  # the last one came back: no reason to wait for more
        ):
            self._flush_acks()

    def _idle_timeout(self, now: float) -> float:
        """Seconds until something is due with nothing else happening: the CONNACK timeout
        while connecting, the stop's flush deadline, the state's refresh, else paho's keepalive
        (ping due, or the ping's answer overdue)."""
        if not self._got_connack:
            return max(0.01, self._connect_started + self.cfg.keepalive_s - now)
        due = _keepalive_due(self._client)
        if self._ready:  # the retained state's refresh (mqtt.state_refresh_s)
            due = min(due, self._state_sent + self.cfg.state_refresh_s - now)
        if self._stop.is_set():
            due = min(due, self._flush_deadline - now)
        if self._hold_until is not None:
            due = min(due, self._hold_until - now)
        return max(0.01, due)

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
            client_id=client_id(self.envelope),
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else self.command_sink is None,
            reconnect_on_failure=False,
            manual_ack=self.command_sink is not None,  # commands: PUBACK after the reply
        )
        client.connect_timeout = 10.0
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.max_queued_messages_set(self.cfg.max_inflight * 4)
        apply_credentials(client, username=self.cfg.username,
                          password_file=self.cfg.password_file, password_env=PASSWORD_ENV,
                          tls=self.cfg.tls)
        client.will_set(
            self.topic("state"), self._state_payload("offline", session, "connection_lost"),
            qos=1, retain=True,
        )
        conn_id = self._conn_id

        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
            self._events.put(("connack", conn_id, reason,
                              bool(getattr(flags, "session_present", False))))

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            self._events.put(("disconnected", conn_id, reason))

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
            self._events.put(("puback", conn_id, mid, reason))

        def on_subscribe(_c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
            self._events.put(("suback", conn_id, mid, reasons))

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with contextlib.suppress(Exception):  # paho trap 9: nothing escapes into paho
                try:
                    topic = msg.topic
                except UnicodeDecodeError:  # brokers refuse such topics; be safe anyway
                    topic = "(invalid UTF-8)"
                self._events.put(("command", conn_id, topic, msg.payload, msg.properties,
                                  bool(msg.retain), msg.mid, msg.qos))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        if self.command_sink is not None:
            client.on_subscribe = on_subscribe
            client.on_message = on_message
        return client

    def _connect(self) -> None:
        self._conn_id += 1
        session = self._next_session()
        self._use_v5 = self._protocol.next_attempt()
        proto = "5" if self._use_v5 else "3.1.1"
        try:
            client = self._make_client(session)
            log.info("publisher: connecting to %s:%d (MQTT %s, TLS %s)", self.cfg.host,
                     self.cfg.port, proto, "on" if self.cfg.tls.active else "off")
            if self._use_v5:
                persistent = self.command_sink is not None
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
                if persistent:
                    props.MaximumPacketSize = MAX_INBOUND_PACKET
                client.connect(self.cfg.host, self.cfg.port, keepalive=wire_keepalive(self.cfg),
                               clean_start=not persistent, properties=props)
            else:
                client.connect(self.cfg.host, self.cfg.port, keepalive=wire_keepalive(self.cfg))
        except (OSError, ValueError) as exc:
            self._connect_failed(f"cannot connect to {self.stats.broker}: {_describe(exc)}")
            return
        self._client = client
        self._got_connack = False
        self.stats.session = session
        self.stats.protocol = proto
        self._connect_started = time.monotonic()

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
        self.stats.commands_subscribed = False
        self._inflight.clear()
        self._ahead.clear()
        self._cursor = 0  # the next connection resends from the oldest record kept
        self._hold_until = self._resend_from = None
        self._sub_mid = None
        if self._reply_inflight:  # not acknowledged: send again on the next connection
            self._replies.extendleft(reversed(list(self._reply_inflight.values())))
            self._reply_inflight.clear()
            self._trim_replies()
        if client is not None:
            sock = client.socket()
            with contextlib.suppress(Exception):  # the socket may already be gone
                client.disconnect()  # written at once: no loop thread
            if sock is not None:  # a DISCONNECT stuck behind a full send buffer: close anyway
                with contextlib.suppress(OSError):
                    sock.close()
        try:
            self._flush_acks()
        except Exception as exc:
            log.warning("publisher: could not record acknowledgements: %s", exc)
        if was_ready:
            self.stats.reconnects_total += 1
        if not self._stop.is_set():
            self._connect_failed(why)

    # -- the network loop and its events -----------------------------------------------------

    def _handle_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the socket or a wake-up, let paho read, write and keep the
        connection alive, then handle every queued event (paho's callbacks only queue them)."""
        client = self._client
        sock = client.socket() if client is not None else None
        rlist: list[Any] = [self._wake_r]
        wlist: list[Any] = []
        if not self._events.empty():
            timeout = 0.0  # still look at the socket: a stream of wakes must not starve it
        if sock is not None:
            rlist.append(sock)
            if client is not None and client.want_write():
                wlist.append(sock)
            if getattr(sock, "pending", lambda: 0)():  # TLS bytes already decrypted
                timeout = 0.0
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):  # the socket was closed under us: paho will say so
            readable, writable = [], []
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
        if client is not None and sock is not None:
            if sock in readable or getattr(sock, "pending", lambda: 0)():
                client.loop_read()
            if sock in writable and client.socket() is not None:
                client.loop_write()
        if client is not None and client.socket() is not None:
            client.loop_misc()  # keepalive: PINGREQ when due, a dead link closed
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            self._handle(ev)
        self._check_connect_timeout()

    def _check_connect_timeout(self) -> None:
        if (self._client is not None and not self._got_connack
                and time.monotonic() - self._connect_started > self.cfg.keepalive_s):
            self._drop_connection("broker accepted TCP but sent no CONNACK")

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        self._more = True  # any event (append, PUBACK, CONNACK) may make more records sendable
        if kind == "wake":
            return
        if kind == "reply":
            self._queue_reply(ev[1], ev[2], ev[3])
            return
        if kind == "command":
            # Even from a connection already dropped: run it; its ack cannot be sent any more, so
            # the broker redelivers it on the next connection and the worker answers it again.
            self._on_command(ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], ev[7])
            return
        if ev[1] != self._conn_id or self._client is None:
            return  # a late event of a connection we already dropped
        if kind == "puback":
            self._on_puback(ev[2], ev[3])
        elif kind == "connack":
            self._on_connack(ev[2], ev[3])
        elif kind == "disconnected":
            self._on_disconnected(ev[2])
        elif kind == "suback":
            self._on_suback(ev[2], ev[3])
        elif kind == "ack":
            self._send_ack(ev[1], ev[2], ev[3])

    def _on_connack(self, reason: Any, session_present: bool = False) -> None:
        self._got_connack = True
        if reason.is_failure:
            if self._use_v5 and _unsupported_version(reason):
                self._protocol.unsupported()
                if not self._protocol.v5:
                    self._next_attempt = 0
            self._drop_connection(f"broker refused the connection: {reason}")
            return
        self._ready = True
        self._backoff.reset()
        self._protocol.connected()
        self.stats.last_error = self.stats.last_error_ts = None  # connected: nothing is wrong now
        self.stats.connected = True
        self.stats.connected_since = time.time()
        self.stats.next_attempt_at = None
        log.info("publisher: connected to %s (MQTT %s, session %d%s)", self.stats.broker,
                 self.stats.protocol, self.stats.session,
                 ", broker session resumed" if session_present else "")
        assert self._client is not None
        self._publish_online()
        for kind in self.clear_retained:  # an empty retained payload deletes the broker's copy
            self._client.publish(self.topic(kind), b"", qos=1, retain=True)
        if self.command_sink is not None:
            self._subscribe_commands()

    def _publish_online(self) -> None:
        """The retained birth: on every connect and again every ``mqtt.state_refresh_s``, so a
        consumer on a broker that keeps retained messages from wildcard subscribers (RabbitMQ)
        learns the state within that time."""
        assert self._client is not None
        self._state_sent = time.monotonic()
        self._client.publish(
            self.topic("state"),
            self._state_payload("online", self.stats.session, "connected"),
            qos=1, retain=True,
        )

    # -- commands and replies ------------------------------------------------------------------

    def _subscribe_commands(self) -> None:
        """Subscribe on every connection: cheap, and right even if the broker lost the session.

        Retained messages are never commands (one would run again on every reconnect): MQTT 5
        asks the broker not to send them, and :meth:`_on_command` drops any that still come.
        """
        assert self._client is not None
        topic = self.topic("cmd/+")
        if self._use_v5:
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            rc, mid = self._client.subscribe(topic, options=opts)
        else:
            rc, mid = self._client.subscribe(topic, qos=1)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_mid = mid
        else:  # the disconnect that caused it is on its way; we subscribe again after it
            log.warning("publisher: could not subscribe to %s (%s)", topic, rc)

    def _on_suback(self, mid: int, reasons: Any) -> None:
        if mid != self._sub_mid:
            return
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        self.stats.commands_subscribed = not failed
        if failed:
            why = f"broker refused the command subscription {self.topic('cmd/+')}: {failed[0]}"
            self._note_error(why)
            log.error("publisher: %s. Commands cannot reach this terminal over MQTT (local "
                      "control still works). Next step: allow the device to subscribe to "
                      "%s/cmd/+ in the broker ACL.", why, self._topic_base)

    def _on_command(self, conn_id: int, topic: str, payload: bytes, props: Any, retained: bool,
                    mid: int, qos: int) -> None:
        prefix = self.topic("cmd/")
        if not topic.startswith(prefix) or self.command_sink is None:
            log.warning("publisher: ignoring a message on unexpected topic %.200s", topic)
            self._send_ack(conn_id, mid, qos)
            return
        name = topic[len(prefix):]
        if retained:
            log.warning("publisher: ignoring a RETAINED command on %.200s: a retained command "
                        "would run again on every reconnect. Next step: publish commands "
                        "without the retain flag and clear this one (publish an empty retained "
                        "message to the topic).", topic)
            self._send_ack(conn_id, mid, qos)
            return
        self.stats.commands_received_total += 1

        def ack() -> None:  # from the worker thread, after the reply: our thread sends it
            self._post(("ack", conn_id, mid, qos))

        reply_to = ReplyTo(_response_topic(props), _correlation(props), ack)
        try:
            self.command_sink(name, bytes(payload), reply_to)
        except Exception:  # the sink only enqueues; never let it take the publisher down
            log.exception("publisher: the command sink failed for %.100s", name)
            self._send_ack(conn_id, mid, qos)

    def _send_ack(self, conn_id: int, mid: int, qos: int) -> None:
        """PUBACK a command, on the connection it came on (else the broker redelivers it)."""
        if qos and conn_id == self._conn_id and self._client is not None:
            self._client.ack(mid, qos)

    def _queue_reply(self, payload: bytes, response_topic: str | None,
                     correlation: bytes | None) -> None:
        self._replies.append(_Outgoing(self.topic("reply"), payload, correlation))
        if response_topic is not None:
            # Only below this device's own reply topic (the contract's place for replies): a
            # request must not make the device publish under its name anywhere else.
            if (response_topic.startswith(self.topic("reply/"))
                    and _valid_publish_topic(response_topic)):
                self._replies.append(_Outgoing(response_topic, payload, correlation))
            else:
                self._refused_topics.note("response_topic", {"topic": response_topic})
        self._trim_replies()

    def _log_refused_topic(self, s: Summary) -> None:
        log.warning("publisher: %d request(s) asked for a reply outside %s/ or on a topic with "
                    "wildcards, NUL, '.' or spaces (the last: %.200s); replied on %s only",
                    s.count, self.topic("reply"), s.example["topic"], self.topic("reply"))

    def _trim_replies(self) -> None:
        dropped = 0
        while len(self._replies) > MAX_PENDING_REPLIES:
            self._replies.popleft()
            dropped += 1
        if dropped:
            self.stats.replies_dropped_total += dropped
            self._dropped_replies.note("dropped", {}, replies=dropped)

    def _log_dropped_replies(self, s: Summary) -> None:
        log.warning("publisher: dropped the %d oldest command replies%s: more than %d were "
                    "waiting for the broker", s.extra["replies"],
                    "" if s.first else f" in the last {s.window_s:.0f} s", MAX_PENDING_REPLIES)

    def _send_replies(self) -> None:
        client = self._client
        assert client is not None
        while self._replies:
            out = self._replies[0]
            props = None
            if out.correlation is not None and self._use_v5:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = out.correlation
            try:
                info = client.publish(out.topic, out.payload, qos=1, retain=False,
                                      properties=props)
            except (ValueError, TypeError) as exc:  # a topic paho will not take
                self._replies.popleft()
                self.stats.replies_dropped_total += 1
                log.warning("publisher: cannot publish a reply to %.200r: %s", out.topic, exc)
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # not connected any more, or paho's queue is full: try again later
            self._replies.popleft()
            self._reply_inflight[info.mid] = out

    def _on_reply_ack(self, reply: _Outgoing, reason: Any) -> None:
        if getattr(reason, "is_failure", False):  # e.g. not authorised: retrying will not help
            self.stats.replies_dropped_total += 1
            log.error("publisher: broker refused a command reply on %.200s: %s. Next step: allow "
                      "the device to publish there in the broker ACL.", reply.topic, reason)
            return
        self.stats.replies_sent_total += 1

    def _on_disconnected(self, reason: Any) -> None:
        if not self._got_connack:  # an old broker may drop MQTT 5 CONNECTs silently
            self._protocol.closed_before_connack()
        why = f"connection lost: {reason}"
        log.warning("publisher: %s (%d in flight will be resent)", why, len(self._inflight))
        self._drop_connection(why)

    def _on_puback(self, mid: int, reason: Any) -> None:
        reply = self._reply_inflight.pop(mid, None)
        if reply is not None:
            self._on_reply_ack(reply, reason)
            return
        seqs = self._inflight.pop(mid, None)
        self.stats.inflight = len(self._inflight)
        if seqs is None:
            return  # the birth message, or a mid we no longer track
        if getattr(reason, "is_failure", False):
            self.stats.publish_failures_total += 1
            what = f"seq {seqs[0]}" if len(seqs) == 1 else f"seqs {seqs[0]}-{seqs[-1]} (batch)"
            why = f"broker refused record {what}: {reason}"
            log.error("publisher: %s. Next step: check the broker ACL for %s/#", why,
                      self._topic_base)
            self._drop_connection(why)  # resend from here after a back-off, keeping order
            return
        if getattr(reason, "value", None) == NO_MATCHING_SUBSCRIBERS:
            self._hold(seqs[0])
            return
        self._nobody.reset()
        self.stats.no_subscriber_since = None
        self.stats.acked_total += len(seqs)
        self.stats.last_puback = time.time()
        self.outbox.ack(seqs)

    # -- publishing ----------------------------------------------------------------------------

    def _hold(self, seq: int) -> None:
        """The broker took record ``seq`` but had no subscriber for it (MQTT 5 "No matching
        subscribers"): nobody will ever receive it. Seen when a broker restarts without the
        platform's shared subscription (Mosquitto 2.0 does not restore one from its persistence
        file) until the collectors subscribe again. Keep the record, stop sending, and resend
        from it after a back-off, in order, as after a refused PUBACK."""
        self._resend_from = seq if self._resend_from is None else min(self._resend_from, seq)
        if self.stats.no_subscriber_since is None:
            self.stats.no_subscriber_since = time.time()
        if self._hold_until is not None:
            return
        delay = self._nobody.next_delay()
        self._hold_until = time.monotonic() + delay
        self._ahead.clear()
        log.warning("publisher: the broker has no subscriber for record seq %d (MQTT 5 'No "
                    "matching subscribers'): keeping it and the records after it, sending them "
                    "again in %.1f s. Next step: check that the platform's collectors are "
                    "running and subscribed.", seq, delay)

    def _held(self) -> bool:
        """Whether sending waits after a "No matching subscribers"; when the wait is over,
        rewind to the first record nobody received."""
        if self._hold_until is None:
            return False
        if time.monotonic() < self._hold_until:
            return True
        start, self._hold_until, self._resend_from = self._resend_from, None, None
        self._flush_acks()  # what did reach a subscriber meanwhile is not sent again
        self._ahead.clear()
        if start is not None:
            self._cursor = min(self._cursor, start - 1)
        return False

    def _fill_window(self) -> None:
        client = self._client
        assert client is not None
        if self._held():
            return
        while len(self._inflight) < self.cfg.max_inflight:
            if not self._ahead and not self._refill(self._cursor):
                self._more = False  # until the next event says otherwise
                return
            rows = self._next_message()
            now = time.time()
            payloads = [mark_historical(r.payload) if now - r.ts > self.historical_after_s
                        else r.payload for r in rows]
            if len(rows) == 1:
                info = client.publish(self.topic(rows[0].kind), payloads[0], qos=1,
                                      retain=rows[0].kind in RETAINED_KINDS)
            else:
                info = client.publish(self.topic("batch"), self._batch_payload(payloads), qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # Not connected any more: paho will report the disconnect; resend then.
                self._ahead.extendleft(reversed(rows))
                return
            self._inflight[info.mid] = tuple(r.seq for r in rows)
            self._cursor = rows[-1].seq
            self.stats.published_total += len(rows)
            self.stats.inflight = len(self._inflight)

    def _next_message(self) -> list[Row]:
        """The records of the next message, from ``_ahead`` (not empty): one record, or a run
        of consecutive non-retained ones while they are waiting already (a backlog; nothing
        waits for a batch to fill), at most ``mqtt.batch_records`` and :data:`BATCH_MAX_BYTES`.
        Retained kinds always go alone, on their own topic (the broker keeps the last one)."""
        rows = [self._ahead.popleft()]
        if rows[0].kind in RETAINED_KINDS:
            return rows
        size = len(rows[0].payload)
        while len(rows) < self.cfg.batch_records:
            if not self._ahead and (self._outbox_read_all or not self._refill(rows[-1].seq)):
                break
            nxt = self._ahead[0]
            size += len(nxt.payload) + 20  # room for "historical" and the comma
            if nxt.kind in RETAINED_KINDS or size > BATCH_MAX_BYTES:
                break
            rows.append(self._ahead.popleft())
        return rows

    def _refill(self, after: int) -> bool:
        """Top ``_ahead`` up with the records after seq ``after``; whether any came. A short read
        means the outbox held nothing more: a batch being gathered does not ask again (a live
        record would cost a second, empty query), the next round of the window does."""
        rows = self.outbox.fetch_after(after, _PREFETCH)
        self._ahead.extend(rows)
        self._outbox_read_all = len(rows) < _PREFETCH
        return bool(rows)

    def _batch_payload(self, payloads: list[bytes]) -> bytes:
        """A ``batch`` message (agent/schemas/batch.json): the records' own payloads, unchanged
        and in seq order, in ``records``."""
        return b"".join((self._batch_head, b',"records":[', b",".join(payloads), b"]}"))

    def _shutdown(self) -> None:
        client = self._client
        if client is not None and self._ready:
            info = client.publish(
                self.topic("state"),
                self._state_payload("offline", self.stats.session, "shutdown"),
                qos=1, retain=True,
            )
            deadline = time.monotonic() + 2.0  # wait for its PUBACK: we run the loop
            while (self._client is not None and not info.is_published()
                   and (left := deadline - time.monotonic()) > 0):
                self._handle_events(timeout=min(left, 0.5))
        self._drop_connection("agent stopping")
        self._wake_r.close()
        self._wake_w.close()
        log.info("publisher: stopped (%d records still queued)", self.outbox.stats().depth)


def wire_keepalive(cfg: MqttConfig) -> int:
    """The keepalive the agent asks the broker for: half of ``mqtt.keepalive_s``.

    paho notices a dead link only after a full keepalive of silence *and* a second one waiting
    for the PINGRESP, so with the configured value a black-holed link went unnoticed for up to
    2x keepalive_s (measured 6.5-8.8 s at 5 s). Halving it bounds detection by keepalive_s (our
    loop wakes at paho's keepalive deadlines), and the broker publishes our will after 0.75x
    keepalive_s.
    """
    return max(1, cfg.keepalive_s // 2)


def _keepalive_due(client: mqtt.Client | None) -> float:
    """Seconds until paho's keepalive wants ``loop_misc``: a PINGREQ after a keepalive without
    traffic either way, or the connection closed when a PINGRESP is a keepalive late. Read from
    paho's own timestamps (``time.monotonic`` in paho 2); a paho without them gets a quarter of
    the keepalive, which still pings well before the broker's 1.5x limit."""
    if client is None:
        return 1.0
    keepalive = float(getattr(client, "_keepalive", 0) or 0)
    if keepalive <= 0:
        return 3600.0
    try:
        out, got, ping = (float(getattr(client, a)) for a in
                          ("_last_msg_out", "_last_bytes_received", "_ping_t"))
    except (AttributeError, TypeError, ValueError):
        return keepalive / 4
    now = mqtt.time_func()
    due = min(out, got) + keepalive - now
    if ping > 0:
        due = min(due, ping + keepalive - now)
    return due + 0.01  # just past it: paho compares with >=


def _response_topic(props: Any) -> str | None:
    topic = getattr(props, "ResponseTopic", None)
    return topic if isinstance(topic, str) and topic else None


def _correlation(props: Any) -> bytes | None:
    data = getattr(props, "CorrelationData", None)
    return bytes(data) if isinstance(data, bytes | bytearray) else None


def _valid_publish_topic(topic: str) -> bool:
    """A topic we may publish a reply to: non-empty UTF-8 (no lone surrogate, which paho could
    not encode), no wildcards or NUL, at most 65535 bytes; and, as every topic of the contract,
    no '.' and no whitespace: NATS drops the connection of a client that publishes there (the
    unacknowledged reply would be resent, and drop it again, on every reconnect) and RabbitMQ
    turns '.' into a level separator (docs/contract.md, "Brokers")."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (bool(topic) and not any(c in topic for c in "+#\0.") and size <= 65535
            and not any(c.isspace() for c in topic))


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

