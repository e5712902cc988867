"""Network quality as a lesson sees it: can we reach the platform, and how fast does TCP connect?

A TCP connect needs no privileges (unlike ICMP ping) and goes through the same firewalls as the
lesson stream and the MQTT link. The RTT measured is the connect time only: the name is resolved
first, so a slow DNS does not masquerade as a slow link (a DNS failure is still reported).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.telemetry.base import Accumulator

#: Addresses tried per target (e.g. IPv6 then IPv4), each with the full timeout.
MAX_ADDRESSES = 2


def _format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _resolve(host: str, port: int, timeout_s: float) -> list[tuple[str, int]]:
    """getaddrinfo with a deadline: it has none of its own and can hang for tens of seconds
    when DNS is down. The lookup runs in a daemon thread that is abandoned on timeout."""
    try:  # a literal address needs no lookup (and no thread)
        ipaddress.ip_address(host)
        return [(host, port)]
    except ValueError:
        pass
    result: list[Any] = []
    error: list[Exception] = []

    def run() -> None:
        try:
            result.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the caller below
            error.append(exc)

    t = threading.Thread(target=run, name=f"resolve-{host}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"name resolution of {host} timed out")
    if error:
        raise error[0]
    return [(ai[4][0], ai[4][1]) for ai in result]


@dataclass(slots=True)
class _Target:
    host: str
    port: int
    failures_total: int = 0


class NetworkQualityCollector:
    """Collector ``netquality``: TCP connect RTT to each target; failures are counted across calls.

    Targets are probed one after the other, so a gather takes at most about
    ``len(targets) * (1 + MAX_ADDRESSES) * timeout_s`` when everything hangs: keep it short.
    """

    name = "netquality"

    def __init__(
        self, targets: list[tuple[str, int]], timeout_s: float = 2.0, every_s: float = 0.0
    ) -> None:
        self._targets = [_Target(h, int(p)) for h, p in targets]
        self._timeout = timeout_s
        # Probes open real connections (at the broker too): at a short telemetry interval,
        # probe at most every ``every_s`` and repeat the last result in between.
        self._every = every_s
        self._last_probe = -float("inf")
        self._last: list[dict[str, Any]] = []

    def _probe(self, t: _Target) -> tuple[float | None, str | None]:
        """(rtt_ms, None) on success, (None, error text) on failure."""
        try:
            addrs = _resolve(t.host, t.port, self._timeout)
        except (OSError, UnicodeError) as exc:
            return None, f"name resolution failed: {_error_text(exc)}"
        if not addrs:
            return None, "name resolution failed: no address"
        last: BaseException | None = None
        for addr in addrs[:MAX_ADDRESSES]:
            start = time.monotonic()
            try:
                sock = socket.create_connection(addr, timeout=self._timeout)
            except OSError as exc:
                last = exc
                continue
            rtt = (time.monotonic() - start) * 1000
            sock.close()
            return round(rtt, 2), None
        return None, _error_text(last) if last else "connect failed"

    def gather(self, acc: Accumulator) -> None:
        now = time.monotonic()
        if now - self._last_probe < self._every:
            acc.add_metrics("netquality", {"targets": self._last})
            return
        self._last_probe = now
        results: list[dict[str, Any]] = []
        for t in self._targets:
            rtt, error = self._probe(t)
            if error is not None:
                t.failures_total += 1
            results.append(
                {
                    "target": _format_target(t.host, t.port),
                    "ok": error is None,
                    "rtt_ms": rtt,
                    "failures_total": t.failures_total,
                    "error": error,
                }
            )
        self._last = results
        acc.add_metrics("netquality", {"targets": results})
