"""Real parts for tests: a private Mosquitto, the agent as a process, an MQTT subscriber.

Nothing here talks to a service the tests did not start: the broker runs on a free port chosen
at run time, so a system Mosquitto on 1883 is never involved.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "agent" / "schemas"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    """``{name}.crt`` and ``{name}.key`` in ``d``: a self-signed CA made with the openssl CLI."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, name: str, ca: str, cn: str, san: str, days: int = 2) -> None:
    """``{name}.crt``/``{name}.key`` signed by CA ``ca``, with common name ``cn`` and SAN."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", "/CN=" + cn.replace("/", "\\/"), cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", str(days), "-out", f"{name}.crt", "-extfile",
             f"{name}.ext",
             cwd=d)


def secure_broker(workdir: Path, listener: str) -> tuple[Broker, int]:
    """A Broker with its plain listener (for test clients) plus a second one configured by
    ``listener`` (TLS, passwords, ACL...) on another free port; returns both."""
    port = free_port()
    b = Broker(workdir, head="per_listener_settings true",
               extra=f"listener {port} 127.0.0.1\n{listener}")
    b.start()
    wait_until(lambda: accepting(port), 10, "the secured listener")
    return b, port


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd) for ``users``."""
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user,
                        password], check=True, capture_output=True, timeout=30)
    path.chmod(0o644)  # Mosquitto may drop to another user before it reads it
    return path


class Broker:
    """A Mosquitto of our own; kill() and start() keep the port so clients can come back."""

    def __init__(self, workdir: Path, persistence: bool = False, extra: str = "",
                 head: str = "", config: str | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        #: A whole mosquitto.conf of the test's own (e.g. config/mosquitto/ with paths
        #: substituted) instead of the generated one; ``port`` must be one of its listeners.
        self.config = config
        self.persistence = persistence
        self.extra = extra
        self.head = head
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def conf(self) -> Path:
        # Mosquitto started as root drops to user "mosquitto", who cannot write our temp dir.
        user = pwd.getpwuid(os.geteuid()).pw_name
        path = self.workdir / "mosquitto.conf"
        if self.config is not None:
            path.write_text(f"user {user}\n{self.config}")
            return path
        lines = [self.head, f"user {user}", f"listener {self.port} 127.0.0.1",
                 "allow_anonymous true",
                 f"persistence {'true' if self.persistence else 'false'}"]
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 1",
                      "max_queued_messages 100000"]
        lines.append(self.extra)
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf())], stdout=log, stderr=log)
        wait_until(self._accepting, 10, f"mosquitto on port {self.port}")

    def _accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        return accepting(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s (a broker with persistence writes its
        database on the way out: give it time when much is queued)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


@dataclass
class Message:
    topic: str
    payload: dict[str, Any]
    retain: bool
    raw: bytes
    arrived: float = field(default_factory=time.time)  # wall time at the subscriber
    batched: bool = False  # one record of a `batch` message (docs/contract.md)


def received(msg: mqtt.MQTTMessage) -> list[Message]:
    """What a subscriber got: one message, or, for a ``batch``, each of its records as if it
    had come alone on ``.../{kind}`` (its raw bytes re-encoded as the agent encodes them)."""
    try:
        payload = json.loads(msg.payload)
    except ValueError:
        payload = {"_unparsed": msg.payload.decode(errors="replace")}
    records = payload.get("records") if isinstance(payload, dict) else None
    if not msg.topic.endswith("/batch") or not isinstance(records, list):
        return [Message(msg.topic, payload, bool(msg.retain), msg.payload)]
    base = msg.topic.rsplit("/", 1)[0]
    return [Message(f"{base}/{r.get('kind')}", r, False,
                    json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode(),
                    batched=True) for r in records if isinstance(r, dict)]


@dataclass
class Subscriber:
    """A QoS 1 subscriber with a persistent session, so a broker restart loses nothing of ours."""

    port: int
    topic: str = "classroom/v1/#"
    client_id: str = field(default_factory=lambda: f"test-sub-{os.getpid()}-{time.monotonic_ns()}")
    messages: list[Message] = field(default_factory=list)
    #: The ``batch`` messages as they came (their records are in ``messages`` too).
    batches: list[Message] = field(default_factory=list)
    #: mqtt.MQTTv311 for brokers without MQTT 5 (NATS, RabbitMQ before 3.13).
    protocol: int = mqtt.MQTTv5

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        v5 = self.protocol == mqtt.MQTTv5
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=self.protocol, clean_session=None if v5 else False)
        c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: self._subscribed.clear()
        c.on_message = self._on_message
        self.client = c
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            c.connect("127.0.0.1", self.port, keepalive=5, clean_start=False, properties=props)
        else:
            c.connect("127.0.0.1", self.port, keepalive=5)
        c.loop_start()
        wait_until(self._subscribed.is_set, 10, "test subscriber to subscribe")

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            c.subscribe(self.topic, qos=1)
            self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got = received(msg)
        with self._lock:
            if any(m.batched for m in got):
                self.batches.append(Message(msg.topic, json.loads(msg.payload), False,
                                            msg.payload))
            self.messages.extend(got)

    def wait_connected(self, timeout: float = 20) -> None:
        """Wait until subscribed again (after a broker restart, before the next kill)."""
        wait_until(self._subscribed.is_set, timeout, "test subscriber to reconnect")

    def snapshot(self, kind: str | None = None) -> list[Message]:
        with self._lock:
            msgs = list(self.messages)
        return [m for m in msgs if kind is None or m.topic.endswith("/" + kind)]

    def seqs(self) -> list[int]:
        return [m.payload["seq"] for m in self.snapshot() if "seq" in m.payload]

    def wait_for(self, pred: Callable[[list[Message]], Any], timeout: float, what: str) -> Any:
        return wait_until(lambda: pred(self.snapshot()), timeout, what)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class MqttClient:
    """A plain MQTT 5 client for tests that need a login or TLS (ACL tests): every message it
    receives is kept, and publish/subscribe wait for the broker's answer and return its codes."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, client_id: str | None = None) -> None:
        self.messages: list[Message] = []
        self._acks: dict[int, Any] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                        client_id=client_id or f"test-{time.monotonic_ns()}")
        if username is not None:
            c.username_pw_set(username, password)
        if ca_file:
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        connected = threading.Event()
        self.connack: Any = None

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            self.connack = rc
            connected.set()

        c.on_connect = on_connect
        c.on_message = lambda _c, _u, m: self._keep(m)
        c.on_publish = lambda _c, _u, mid, rc, _p: self._ack(mid, rc)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self._ack(mid, rcs)
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        wait_until(connected.is_set, 10, f"client {username} to get a CONNACK")
        if self.connack.is_failure:
            self.close()
            raise AssertionError(f"broker refused {username}: {self.connack}")

    def _keep(self, m: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(m.payload)
        except ValueError:
            payload = {"_unparsed": m.payload.decode(errors="replace")}
        with self._lock:
            self.messages.append(Message(m.topic, payload, bool(m.retain), m.payload))

    def _ack(self, mid: int, rc: Any) -> None:
        with self._lock:
            self._acks[mid] = rc

    def _wait(self, mid: int, what: str) -> Any:
        return wait_until(lambda: self._acks.get(mid), 10, what)

    def publish(self, topic: str, payload: bytes | str) -> Any:
        """Publish at QoS 1; the PUBACK reason code (e.g. "Not authorized" under an ACL)."""
        info = self.client.publish(topic, payload, qos=1)
        return self._wait(info.mid, f"PUBACK for {topic}")

    def subscribe(self, topic: str) -> list[Any]:
        """Subscribe at QoS 1; the SUBACK reason codes."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        return self._wait(mid, f"SUBACK for {topic}")

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic: str, timeout: float = 5.0,
             protocol: int = mqtt.MQTTv5) -> dict[str, Any] | None:
    """Read the retained message of ``topic`` with a fresh, clean client."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)

    def on_connect(cl: mqtt.Client, *_a: Any) -> None:
        cl.subscribe(topic, qos=1)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
            done.set()

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(timeout)
    c.loop_stop()
    c.disconnect()
    return json.loads(got[-1]) if got else None


class AgentProcess:
    """The real agent, run as `python -m agent run --config ...` in its own process."""

    def __init__(self, workdir: Path, broker_port: int, **overrides: Any) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_port = free_port()
        self.config: dict[str, Any] = {
            "device": {"id": "room-101", "school": "school-a", "name": "Room 101"},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5,
                     "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
            "state_dir": str(workdir / "state"),
            "telemetry": {"interval_s": 0.5, "usage_interval_s": 2, "inventory_check_s": 5},
            "status": {"listen": f"127.0.0.1:{self.status_port}",
                       "socket": str(workdir / "control.sock")},
        }
        _merge(self.config, overrides)
        self.config_path = workdir / "agent.yaml"
        self.write_config()
        self.log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else yaml.safe_dump(self.config))

    def start(self, wait: bool = True,
              preexec: Callable[[], None] | None = None) -> AgentProcess:
        """``preexec`` runs in the child before the agent (a umask, a resource limit)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                stdout=log, stderr=log, cwd=REPO, env=self.env, preexec_fn=preexec,
            )
        if wait:
            wait_until(self.status, 20, "the agent's status endpoint")
        return self

    def status(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.status_port}/status.json"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.load(resp)
        except OSError:
            return None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def children(self) -> list[int]:
        """Pids of the agent's child processes (its media worker), from every thread."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def command(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """One local-control command over the agent's Unix socket (as `classroom-agent lesson`
        sends it); the agent's reply."""
        from agent import control

        return control.send(self.config["status"]["socket"], name, control.request_body(args))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                              text=True, cwd=REPO, env=self.env, timeout=60)


#: libfaketime (Debian package ``faketime``), to move the wall clock under the agent.
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def fake_clock(agent: AgentProcess, offset: str = "+0") -> Path:
    """Preload libfaketime into the agent (and its children) with the wall-clock offset read
    from the returned file, re-read every second (write e.g. ``-3600`` to it mid-run);
    ``CLOCK_MONOTONIC`` is left alone."""
    path = agent.workdir / "faketime.offset"
    path.write_text(offset + "\n")
    agent.env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME_TIMESTAMP_FILE=str(path),
                     FAKETIME_CACHE_DURATION="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
                     FAKETIME_DONT_RESET="1")
    return path


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


@cache
def _validators() -> dict[str, Draft202012Validator]:
    resources = []
    docs = {}
    for path in SCHEMAS.glob("*.json"):
        doc = json.loads(path.read_text())
        docs[path.stem] = doc
        resources.append((doc["$id"], Resource.from_contents(doc)))
    registry = Registry().with_resources(resources)
    return {
        kind: Draft202012Validator(docs[kind], registry=registry)
        for kind in ("state", "inventory", "metrics", "usage", "event", "schedule", "command",
                     "reply", "batch")
    }


def schema_errors(msg: Message) -> list[str]:
    """Every way ``msg`` breaks the published JSON Schema of its kind (empty when valid)."""
    kind = "command" if "/cmd/" in msg.topic else msg.topic.rsplit("/", 1)[-1]
    validator = _validators().get(kind)
    if validator is None:
        return [f"no schema for topic {msg.topic}"]
    return [f"{msg.topic} {list(e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(msg.payload)]


@dataclass(frozen=True)
class Delivery:
    """What a subscriber saw of the agent's sequenced records, as the fault tests report it."""

    received: int  # distinct seqs
    lost: list[int]  # seqs from ``first`` to the highest seen that never arrived
    out_of_order: list[tuple[int, int]]  # first arrivals that came after a higher seq
    duplicates: int  # deliveries beyond the first (QoS 1 resends)
    max_delay_s: float  # first arrival minus observation time (``ts``), worst case

    def summary(self) -> str:
        return (f"{self.received} received, {len(self.lost)} lost, "
                f"{len(self.out_of_order)} out of order, {self.duplicates} duplicates, "
                f"max delivery delay {self.max_delay_s:.1f} s")


def delivery(msgs: list[Message], first: int = 1) -> Delivery:
    """Figures of the sequenced messages in ``msgs``. Retained replays (a resubscribe gets the
    stored inventory again) are not deliveries and count only towards "not lost"."""
    live = [m for m in msgs if "seq" in m.payload and not m.retain]
    firsts: dict[int, Message] = {}
    for m in live:
        firsts.setdefault(m.payload["seq"], m)
    everything = set(firsts) | {m.payload["seq"] for m in msgs if "seq" in m.payload}
    delays = [m.arrived - epoch(m.payload["ts"]) for m in firsts.values() if "ts" in m.payload]
    return Delivery(
        received=len(everything), lost=_missing(everything, first),
        out_of_order=_out_of_order(list(firsts)), duplicates=len(live) - len(firsts),
        max_delay_s=max(delays, default=0.0))


def epoch(ts: str) -> float:
    """Epoch seconds of a contract timestamp (RFC 3339 UTC with milliseconds)."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _missing(seen: set[int], first: int) -> list[int]:
    return sorted(set(range(first, max(seen, default=0) + 1)) - seen)


def _out_of_order(order: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.pairwise(order) if b < a]


def assert_no_loss(seqs: list[int], first: int = 1) -> None:
    """Every seq from ``first`` to the highest seen arrived; first arrivals are in order."""
    assert seqs, "no sequenced message arrived"
    missing = _missing(set(seqs), first)
    assert not missing, f"{len(missing)} records lost, e.g. seq {missing[:20]}"
    out_of_order = _out_of_order(list(dict.fromkeys(seqs)))
    assert not out_of_order, f"first arrivals out of order, e.g. {out_of_order[:10]}"


def drained(agent: AgentProcess) -> bool:
    """Connected, and the outbox holds nothing more to send."""
    s = agent.status()
    return s is not None and s["broker"]["connected"] and s["outbox"]["depth"] == 0


def witnessed(agent: AgentProcess, subscriber: Subscriber, timeout: float = 60) -> int:
    """Wait until the outbox is drained and the subscriber has everything drained; returns the
    last seq the agent committed."""
    wait_until(lambda: drained(agent), timeout, "the backlog to drain")
    subscriber.wait_connected()
    last = int(agent.status()["outbox"]["last_seq"])
    subscriber.wait_for(lambda _ms: max(subscriber.seqs(), default=0) >= last, 30,
                        f"seq {last} at the subscriber")
    return last


def gone(pid: int) -> bool:
    """The process has exited (a zombie left to an init that does not reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


class CountingListener:
    """A TCP listener on a free loopback port that accepts and counts connections (a probe target
    whose count proves whether the agent connected at all)."""

    def __init__(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = int(self._srv.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, name="counting-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _addr = self._srv.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the blocked accept() on Linux
            self._srv.shutdown(socket.SHUT_RDWR)
        self._srv.close()
