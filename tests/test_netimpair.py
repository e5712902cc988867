"""The impairment relay (tests/netimpair.py) does what it is told, measured with real UDP sockets
on both sides: the share of datagrams lost, no datagram sooner than the delay allows, the jitter
spread, and the replies carried back to the client through the same impairment."""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
import struct
import threading
import time

import pytest

from tests.netimpair import Impairment, UdpRelay

N = 1500


def _pair() -> tuple[socket.socket, socket.socket]:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    return client, server


def _send_and_collect(client: socket.socket, server: socket.socket, port: int,
                      n: int = N) -> tuple[dict[int, float], int]:
    """n stamped datagrams at ~2,000/s; what the server got (sequence -> one-way delay in ms,
    read as it arrives by a thread of its own) and how many arrived out of order."""
    got: dict[int, float] = {}
    order: list[int] = []

    def receive() -> None:
        server.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                data, _ = server.recvfrom(64)
                seq, sent = struct.unpack("!Id", data)
                got[seq] = (time.monotonic() - sent) * 1000
                order.append(seq)

    reader = threading.Thread(target=receive)
    reader.start()
    for i in range(n):
        client.sendto(struct.pack("!Id", i, time.monotonic()), ("127.0.0.1", port))
        if i % 20 == 19:
            time.sleep(0.01)
    reader.join(30)
    return got, sum(1 for a, b in itertools.pairwise(order) if b < a)


def test_loss_delay_and_jitter_as_configured() -> None:
    imp = Impairment(loss=0.05, delay_ms=40, jitter_ms=20)
    client, server = _pair()
    with client, server, UdpRelay(server.getsockname(), imp, seed=7) as relay:
        got, reordered = _send_and_collect(client, server, relay.port)
    lost = N - len(got)
    # Binomial(1500, 0.05): mean 75, sd 8.4; a relay that drops nothing or everything fails.
    assert abs(lost - N * imp.loss) < 5 * math.sqrt(N * imp.loss * (1 - imp.loss)), lost
    assert relay.up.dropped == lost and relay.up.forwarded == len(got)
    delays = sorted(got.values())
    # Never sooner than delay - jitter (a loaded machine may only make it later).
    assert delays[0] >= imp.delay_ms - imp.jitter_ms - 1.0, delays[:5]
    # The jitter is really there: the scheduled delays cover most of +-20 ms, and the middle
    # 80 % of what arrived spreads over at least half the 40 ms (uniform: 32 ms).
    assert max(relay.up.delays_ms) - min(relay.up.delays_ms) > 1.8 * imp.jitter_ms
    p10, p90 = delays[len(delays) // 10], delays[len(delays) * 9 // 10]
    assert p90 - p10 >= imp.jitter_ms, (p10, p90)
    # Like netem's jitter, it reorders.
    assert reordered > 0


def test_replies_go_back_to_the_client_through_the_same_path() -> None:
    imp = Impairment(loss=0.0, delay_ms=30, jitter_ms=0)
    client, server = _pair()
    with client, server, UdpRelay(server.getsockname(), imp, seed=1) as relay:
        client.settimeout(2)
        server.settimeout(2)
        t0 = time.monotonic()
        client.sendto(b"ping", ("127.0.0.1", relay.port))
        data, back = server.recvfrom(64)
        t1 = time.monotonic()
        assert data == b"ping" and back[1] != client.getsockname()[1]  # from the relay
        server.sendto(b"pong", back)
        data, src = client.recvfrom(64)
        t2 = time.monotonic()
    assert data == b"pong" and src == ("127.0.0.1", relay.port)
    assert (t1 - t0) * 1000 >= 29 and (t2 - t1) * 1000 >= 29
    assert relay.up.forwarded == relay.down.forwarded == 1


def test_a_clean_path_keeps_everything_in_order() -> None:
    client, server = _pair()
    with client, server, UdpRelay(server.getsockname(), Impairment(), seed=3) as relay:
        got, reordered = _send_and_collect(client, server, relay.port, n=500)
    assert reordered == 0
    assert sorted(got) == list(range(500))


@pytest.mark.parametrize("bad", [dict(loss=1.0), dict(delay_ms=10, jitter_ms=20),
                                 dict(delay_ms=-1)])
def test_nonsense_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Impairment(**bad)
