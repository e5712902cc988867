"""Other MQTT brokers a region may run, started by the tests like Mosquitto: NATS's MQTT support
and RabbitMQ's MQTT plugin, each on free ports with its own data directory.

Nothing here touches the services this machine may run (NATS on 4222, RabbitMQ on 5672 with its
node ``rabbit@host``, epmd on 4369): every port is chosen at run time, RabbitMQ runs as a node of
its own name with its own Erlang port mapper (``ERL_EPMD_PORT``), cookie (``HOME``), data, log,
config and plugins file. ``skip_reason()`` says why a broker cannot be started here (its package
is missing: ``scripts/deps.sh`` installs ``nats-server`` and ``rabbitmq-server``).

Usage (also for the collector's tests)::

    with NatsBroker(tmp / "nats") as nats:      # or RabbitBroker
        client.connect("127.0.0.1", nats.port)    # MQTT 3.1.1 only

or the session fixtures ``nats_broker`` and ``rabbitmq_broker`` of ``tests/conftest.py`` (they
skip the test when the package is missing). Each broker takes seconds to start (RabbitMQ 5-30 s):
share one per session; ``rabbitmq_launch`` boots RabbitMQ without waiting, so a test can run
against another broker meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.support import accepting, free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
RABBIT_DIR = Path("/usr/lib/rabbitmq/bin")
RABBIT_SERVER = RABBIT_DIR / "rabbitmq-server"  # not /usr/sbin's wrapper, which su's to rabbitmq
ERTS_EPMD = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))


class _Server:
    """A broker process of our own: start() waits for its MQTT port, stop() ends it (and
    whatever it started), the port stays the same across restarts."""

    name = "broker"
    start_timeout_s = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in_s = 0.0
        self._began = 0.0

    @classmethod
    def skip_reason(cls) -> str | None:  # pragma: no cover - overridden
        return None

    def command(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, wait: bool = True) -> None:
        """Launch it; with ``wait=False`` return at once and call wait() later (to boot a slow
        broker while a test runs against another)."""
        self._began = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         env=self.environment(), cwd=self.workdir,
                                         start_new_session=True)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Until the MQTT port accepts connections (or the broker failed: AssertionError)."""
        assert self.proc is not None, "start() first"
        began = self._began
        deadline = began + self.start_timeout_s
        while not accepting(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: "
                                     f"{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} did not listen on {self.port} within "
                                     f"{self.start_timeout_s:.0f} s: {self.log_text()[-3000:]}")
            time.sleep(0.1)
        self.started_in_s = time.monotonic() - began

    def stop(self) -> None:
        """End the broker and its process group (RabbitMQ's shell wrapper, erl, epmd...)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.stop()


class NatsBroker(_Server):
    """nats-server with its MQTT listener (MQTT 3.1.1; needs a server name and JetStream)."""

    name = "nats"
    start_timeout_s = 20.0

    @classmethod
    def skip_reason(cls) -> str | None:
        if not Path(NATS_SERVER).exists():
            return "nats-server is not installed (Debian package nats-server: scripts/deps.sh)"
        return None

    def command(self) -> list[str]:
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f'server_name: "classroom-test-{self.port}"\n'
            f"listen: 127.0.0.1:{free_port()}\n"
            f'jetstream {{\n  store_dir: "{self.workdir / "js"}"\n'
            "  max_memory_store: 64MB\n  max_file_store: 256MB\n}\n"
            f"mqtt {{\n  listen: 127.0.0.1:{self.port}\n}}\n")
        return [NATS_SERVER, "-c", str(conf)]


class RabbitBroker(_Server):
    """A RabbitMQ node of our own with the rabbitmq_mqtt plugin (MQTT 3.1.1 in 3.10); no AMQP
    listener, anonymous MQTT logins as guest (loopback only)."""

    name = "rabbitmq"
    start_timeout_s = 90.0  # 5-10 s on a quiet machine; much more on a loaded one

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.node = f"classroom-test-{self.port}@localhost"
        self.epmd_port = free_port()
        self.dist_port = free_port()

    @classmethod
    def skip_reason(cls) -> str | None:
        if not RABBIT_SERVER.exists():
            return ("rabbitmq-server is not installed (Debian package rabbitmq-server: "
                    "scripts/deps.sh)")
        return None

    def command(self) -> list[str]:
        (self.workdir / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "log.console = false\n"
            "log.file.level = info\n")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        for d in ("home", "data", "logs"):
            (self.workdir / d).mkdir(exist_ok=True)
        return [str(RABBIT_SERVER)]

    def environment(self) -> dict[str, str]:
        w = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "LANG": "C.UTF-8",
            "HOME": str(w / "home"),  # the Erlang cookie of this node
            "ERL_EPMD_PORT": str(self.epmd_port),  # a port mapper of our own, not 4369
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "data"),
            "RABBITMQ_LOG_BASE": str(w / "logs"),
        }

    def broker_log(self) -> str:
        """The node's own log (the MQTT plugin writes its frame errors there)."""
        path = self.workdir / "logs" / f"{self.node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        super().stop()
        # erl started a port mapper on our port for this node; it outlives the node.
        if ERTS_EPMD:
            subprocess.run([str(ERTS_EPMD[-1]), "-port", str(self.epmd_port), "-kill"],
                           capture_output=True, timeout=10, check=False)


def launched(cls: type[_Server], workdir: Path) -> Iterator[_Server | None]:
    """For a session fixture: the broker launched but perhaps not ready yet (call ``wait()``),
    or None when it cannot run here; stopped at the end."""
    if cls.skip_reason() is not None:
        yield None
        return
    broker = cls(workdir)
    broker.start(wait=False)
    try:
        yield broker
    finally:
        broker.stop()


def ready(broker: _Server | None, cls: type[_Server]) -> _Server:
    """The launched broker once it accepts connections; skips the test when it cannot run."""
    if broker is None:
        pytest.skip(cls.skip_reason() or f"{cls.name} unavailable")
    broker.wait()
    return broker
