"""A TCP relay that can black-hole its traffic: the path dies, but no socket is closed.

A school's uplink failing rarely closes anything: packets just stop, both ways, and neither end
hears a FIN or an RST until its own timers give up. :meth:`BlackholeProxy.blackhole` does that
to every connection through the relay (bytes and FINs are read and dropped, nothing is closed);
new connections are accepted (the kernel completes the handshake) and black-holed too.
:meth:`BlackholeProxy.resume` restores the path: connections that lived through the outage are
closed, as the first packet to reach an endpoint that gave up gets an RST; new ones are relayed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.support import free_port


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    tainted: bool = False  # lived through a blackhole: drop everything, close on resume
    threads: list[threading.Thread] = field(default_factory=list)

    def close(self) -> None:
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


class BlackholeProxy:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``target_port`` until told to black-hole."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._holed = False
        self.accepted_total = 0
        self.dropped_bytes = 0
        self._closed = False
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()

    def blackhole(self) -> None:
        with self._lock:
            self._holed = True
            for p in self._pairs:
                p.tainted = True

    def resume(self) -> None:
        with self._lock:
            self._holed = False
            dead = [p for p in self._pairs if p.tainted]
            self._pairs = [p for p in self._pairs if not p.tainted]
        for p in dead:
            p.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            p.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted_total += 1
                holed = self._holed
            upstream = None
            if not holed:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
                    upstream.settimeout(None)
                except OSError:  # broker down: like a refused connection, end to end
                    conn.close()
                    continue
            pair = _Pair(conn, upstream, tainted=holed)
            with self._lock:
                self._pairs.append(pair)
            self._pump(pair, conn, upstream)
            if upstream is not None:
                self._pump(pair, upstream, conn)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket | None) -> None:
        def run() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if pair.tainted:  # black-holed: bytes and the FIN vanish, nothing is closed
                    self.dropped_bytes += len(data)
                    if not data:
                        return
                    continue
                if not data:
                    pair.close()  # an ordinary close passes through as one
                    return
                try:
                    assert dst is not None
                    dst.sendall(data)
                except OSError:
                    pair.close()
                    return

        t = threading.Thread(target=run, name="proxy-pump", daemon=True)
        pair.threads.append(t)
        t.start()
