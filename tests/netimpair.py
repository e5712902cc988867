"""A lossy, slow, jittery UDP path on loopback, of our own: no root, no netem, no kernel module.

``UdpRelay`` listens on 127.0.0.1:``port`` and forwards every datagram to ``target``; whatever
the target answers (to the relay's upstream socket) goes back to the last client address. Each
datagram, in each direction, is dropped with probability ``loss`` or delivered after ``delay_ms``
plus a uniform random ``+-jitter_ms`` (one way, so an RTT of 80 ms is ``delay_ms=40``). Like
netem's ``delay D J`` without a distribution table, datagrams may be reordered by the jitter.

Used to put ICE, DTLS and SRTP between FFmpeg's WHIP muxer and the aiortc receiver
(tests/whip_endpoint.py rewrites the candidate it answers with to the relay's port) in
bench/latency.py and the tests. Every decision is counted per direction, so a test can check
that the path did what it was told.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field

MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class Impairment:
    """What the path does to each datagram, in each direction."""

    loss: float = 0.0       # probability of dropping a datagram, 0..1
    delay_ms: float = 0.0   # one-way delay
    jitter_ms: float = 0.0  # uniform +- around the delay

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1): {self.loss}")
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.jitter_ms > self.delay_ms:
            raise ValueError(f"need 0 <= jitter_ms <= delay_ms: {self}")

    def describe(self) -> str:
        return (f"{self.loss:.1%} loss, {2 * self.delay_ms:g} ms RTT, +-{self.jitter_ms:g} ms "
                f"jitter each way")


@dataclass
class Direction:
    """Counters of one direction: datagrams in, dropped, forwarded, and the delay given to each
    forwarded one."""

    received: int = 0
    dropped: int = 0
    forwarded: int = 0
    delays_ms: list[float] = field(default_factory=list)  # as scheduled, per datagram


class UdpRelay:
    """One client (the first address that sends, then the latest) <-> ``target``, impaired."""

    def __init__(self, target: tuple[str, int], impairment: Impairment,
                 seed: int | None = None) -> None:
        self.target = target
        self.impairment = impairment
        self.up = Direction()    # client -> target
        self.down = Direction()  # target -> client
        self._rng = random.Random(seed)
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self.port = int(self._front.getsockname()[1])
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.bind(("0.0.0.0", 0))  # the target may be on any local address
        self._client: tuple[str, int] | None = None
        self._queue: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._receive, name="relay-recv", daemon=True),
                         threading.Thread(target=self._deliver, name="relay-send", daemon=True)]

    def start(self) -> UdpRelay:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(5)
        self._front.close()
        self._back.close()

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _receive(self) -> None:
        socks = [self._front, self._back]
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.1)
            for sock in ready:
                with contextlib.suppress(OSError):
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                    if sock is self._front:
                        self._client = addr
                        self._schedule(self.up, self._back, data, self.target)
                    elif self._client is not None:
                        self._schedule(self.down, self._front, data, self._client)

    def _schedule(self, way: Direction, out: socket.socket, data: bytes,
                  to: tuple[str, int]) -> None:
        imp = self.impairment
        way.received += 1
        if self._rng.random() < imp.loss:
            way.dropped += 1
            return
        delay = imp.delay_ms + self._rng.uniform(-imp.jitter_ms, imp.jitter_ms)
        way.delays_ms.append(delay)
        with self._cv:
            heapq.heappush(self._queue, (time.monotonic() + delay / 1000, next(self._order),
                                         out, data, to))
            self._cv.notify()
        way.forwarded += 1

    def _deliver(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._stop.is_set():
                    wait = self._queue[0][0] - time.monotonic() if self._queue else 0.5
                    if self._queue and wait <= 0:
                        break
                    self._cv.wait(wait)
                else:
                    return
                _due, _n, out, data, to = heapq.heappop(self._queue)
            with contextlib.suppress(OSError):
                out.sendto(data, to)
