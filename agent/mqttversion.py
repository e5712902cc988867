"""Which MQTT version to speak (``mqtt.protocol: auto``), remembered across restarts.

MQTT 5 where the broker speaks it, else 3.1.1. Brokers that do not (NATS 2.9, RabbitMQ before
3.13) refuse an MQTT 5 CONNECT with "unsupported protocol version" or close the socket without an
answer; RabbitMQ 3.10 also logs ~340 lines of frame errors for each attempt. So once 3.1.1 worked
after MQTT 5 did not, the choice is kept in ``{state_dir}/mqtt.protocol`` with the broker it
applies to: a restart goes straight to 3.1.1. MQTT 5 is tried again after ``RETRY_V5_S`` (the
broker may have been upgraded) or when the broker's address or TLS setting changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import MqttConfig
from agent.statefile import atomic_write_json, load_state

log = logging.getLogger(__name__)

STATE_FILE = "mqtt.protocol"
#: How long a remembered fallback to 3.1.1 holds before MQTT 5 is tried again.
RETRY_V5_S = 86400.0


def broker_identity(cfg: MqttConfig) -> str:
    """What the remembered choice applies to: a change here means another broker."""
    return f"{cfg.host}:{cfg.port} {'tls' if cfg.tls.active else 'plain'}"


class ProtocolChoice:
    """The version of the next connection attempt; told what each attempt led to."""

    def __init__(self, cfg: MqttConfig, state_dir: Path,
                 wall: Callable[[], float] = time.time) -> None:
        self.auto = cfg.protocol == "auto"
        self.v5 = cfg.protocol in ("auto", "5")
        self._path = Path(state_dir) / STATE_FILE
        self._broker = broker_identity(cfg)
        self._wall = wall
        self._since: float | None = None  # when 3.1.1 was found to work, if remembered
        if self.auto:
            self._recall()

    @property
    def remembered(self) -> bool:
        return self._since is not None

    def _recall(self) -> None:
        def parse(state: Any) -> tuple[str, str, float]:
            return str(state["protocol"]), str(state["broker"]), float(state["since"])

        found = load_state(self._path, "MQTT protocol memory", parse)
        if found is None:
            return
        protocol, broker, since = found
        if protocol == "3.1.1" and broker == self._broker and self._fresh(since):
            self.v5, self._since = False, since
            log.info("publisher: %s spoke only MQTT 3.1.1 at %s; using it (MQTT 5 is tried again "
                     "after %.0f h)", broker, time.strftime("%Y-%m-%d %H:%M", time.gmtime(since)),
                     RETRY_V5_S / 3600)

    def _fresh(self, since: float) -> bool:
        return 0 <= self._wall() - since < RETRY_V5_S

    def next_attempt(self) -> bool:
        """Whether the next connection speaks MQTT 5."""
        if self._since is not None and not self._fresh(self._since):
            log.info("publisher: trying MQTT 5 again (3.1.1 was remembered for a day)")
            self.v5, self._since = True, None
        return self.v5

    def unsupported(self) -> None:
        """The broker refused MQTT 5 with "unsupported protocol version"."""
        if self.auto and self.v5:
            self.v5 = False
            log.info("publisher: broker does not speak MQTT 5; falling back to 3.1.1")

    def closed_before_connack(self) -> None:
        """The broker closed the connection without a CONNACK: an old broker may drop MQTT 5
        CONNECTs silently; a 3.1.1 attempt that fails so (and was not remembered) gives MQTT 5
        another chance."""
        if self.auto and (self.v5 or not self.remembered):
            self.v5 = not self.v5

    def connected(self) -> None:
        """A CONNACK accepted the current version: remember 3.1.1, forget it on MQTT 5."""
        if not self.auto:
            return
        if self.v5:
            if self._path.exists():
                self._path.unlink(missing_ok=True)
            return
        if self._since is None:
            self._since = self._wall()
            try:
                atomic_write_json(self._path, {"protocol": "3.1.1", "broker": self._broker,
                                               "since": self._since})
            except OSError as exc:  # a read-only state dir costs only a retry at the next start
                log.warning("publisher: cannot remember the MQTT version in %s: %s", self._path,
                            exc)
