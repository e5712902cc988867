"""The WHIP consent relay's parts (agent/media/stun.py, agent/media/whiprelay.py and the answer
rewriting of agent/media/whipsdp.py), checked against aioice, the ICE library of aiortc: its
requests are what the relay must verify, and its parser judges the relay's answers."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest
from aioice import stun as aio

from agent.media import whiprelay
from agent.media.stun import binding_request, binding_success
from agent.media.whiprelay import ConsentRelay
from agent.media.whipsdp import ice_credentials, relay_candidate

UFRAG, PWD = "ffUf", "ffmpeg-ice-password-0123456"
THEIRS = "aiortcUfrag"


def aioice_check(ufrag: str = UFRAG, pwd: str = PWD) -> aio.Message:
    """A consent check as aioice builds it (Connection.build_request): FFmpeg's ufrag first."""
    msg = aio.Message(message_method=aio.Method.BINDING, message_class=aio.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{ufrag}:{THEIRS}"
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLED"] = 0x1234567890ABCDEF
    msg.add_message_integrity(pwd.encode())
    return msg


def test_an_aioice_request_verifies_and_tampering_does_not() -> None:
    msg = aioice_check()
    data = bytes(msg)
    assert binding_request(data, UFRAG, PWD) == msg.transaction_id
    assert binding_request(data, UFRAG, "another-password-000000") is None
    assert binding_request(data, "other", PWD) is None
    assert binding_request(bytes(aioice_check(ufrag="ffUfX")), UFRAG, PWD) is None  # not a prefix
    flipped = bytearray(data)
    flipped[30] ^= 1  # inside an attribute covered by the HMAC
    assert binding_request(bytes(flipped), UFRAG, PWD) is None
    # a response, and a request without MESSAGE-INTEGRITY, are not answered
    resp = aio.Message(aio.Method.BINDING, aio.Class.RESPONSE, msg.transaction_id)
    resp.add_message_integrity(PWD.encode())
    assert binding_request(bytes(resp), UFRAG, PWD) is None
    bare = aio.Message(aio.Method.BINDING, aio.Class.REQUEST)
    bare.attributes["USERNAME"] = f"{UFRAG}:{THEIRS}"
    assert binding_request(bytes(bare), UFRAG, PWD) is None


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    good = bytes(aioice_check())
    samples = [good, b"", b"\x00", os.urandom(20), good[:-1], good[:40], good + b"\0\0\0\0"]
    for _ in range(3000):
        mutated = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        samples.append(bytes(mutated[:rng.randint(0, len(mutated))]))
        samples.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 120))))
    accepted = [s for s in samples if binding_request(s, UFRAG, PWD) is not None]
    # only messages whose HMAC still verifies: everything up to the FINGERPRINT untouched
    assert good in accepted
    assert all(s[:-8] == good[:-8] for s in accepted), accepted


@pytest.mark.parametrize("addr", [("127.0.0.1", 51234), ("192.0.2.77", 9), ("2001:db8::5", 443)])
def test_the_answer_is_what_aioice_accepts(addr: tuple[str, int]) -> None:
    request = aioice_check()
    data = binding_success(request.transaction_id, addr, PWD)
    answer = aio.parse_message(data)  # checks the FINGERPRINT, raises on a bad one
    assert answer.message_method == aio.Method.BINDING
    assert answer.message_class == aio.Class.RESPONSE
    assert answer.transaction_id == request.transaction_id
    assert answer.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert answer.check_message_integrity(PWD.encode())
    assert not answer.check_message_integrity(b"wrong")
    assert list(answer.attributes) == ["XOR-MAPPED-ADDRESS", "MESSAGE-INTEGRITY", "FINGERPRINT"]


FFMPEG_OFFER = ("v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
                f"a=ice-ufrag:{UFRAG}\r\na=ice-pwd:{PWD}\r\na=mid:0\r\n"
                f"m=video 9 UDP/TLS/RTP/SAVPF 106\r\na=ice-ufrag:{UFRAG}\r\na=ice-pwd:{PWD}\r\n")
AIORTC_ANSWER = "\r\n".join([
    "v=0", "m=audio 40000 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 10.0.0.5",
    "a=candidate:a1 1 udp 2130706431 fe80::1 40001 typ host",
    "a=candidate:b2 1 tcp 2130706431 10.0.0.5 9 typ host tcptype active",
    "a=candidate:c3 1 udp 1694498815 203.0.113.9 40000 typ srflx raddr 10.0.0.5 rport 40000",
    "a=candidate:d4 1 udp 2130706431 10.0.0.5 40000 typ host",
    "a=candidate:e5 2 udp 2130706430 10.0.0.5 40002 typ host",
    "a=end-of-candidates", "a=ice-ufrag:srv", "a=ice-pwd:srvpassword", ""])


def test_credentials_from_the_offer_and_the_answer_moved_to_the_relay() -> None:
    assert ice_credentials(FFMPEG_OFFER.encode()) == (UFRAG, PWD)
    assert ice_credentials(b"v=0\r\na=ice-ufrag:x\r\n") is None
    seen: list[tuple[str, int]] = []
    out = relay_candidate(AIORTC_ANSWER.encode(), lambda t: seen.append(t) or 5555)
    assert seen == [("fe80::1", 40001)]  # FFmpeg's pick: the first UDP host candidate
    assert out is not None
    lines = out.decode().split("\r\n")
    assert [x for x in lines if x.startswith("a=candidate")] == \
        ["a=candidate:a1 1 udp 2130706431 127.0.0.1 5555 typ host"]
    assert [x for x in lines if not x.startswith("a=candidate")] == \
        [x for x in AIORTC_ANSWER.split("\r\n") if not x.startswith("a=candidate")]
    no_ip = AIORTC_ANSWER.replace("fe80::1", "abc.local")
    assert relay_candidate(no_ip.encode(), lambda t: 1) is None
    assert relay_candidate(b"v=0\r\na=candidate:1 1 tcp 1 10.0.0.1 9 typ host\r\n",
                           lambda t: 1) is None
    assert relay_candidate(b"\xff\xfe", lambda t: 1) is None


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    return s


def _recv_all(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    out, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            break
    return out


def test_the_relay_forwards_both_ways_and_answers_only_while_ffmpeg_sends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whiprelay, "ALIVE_S", 0.6)
    server, ffmpeg, stranger = _udp(), _udp(), _udp()
    relay = ConsentRelay(server.getsockname(), UFRAG, PWD)
    try:
        front = ("127.0.0.1", relay.port)
        # FFmpeg's first datagram (its own ICE check) goes to the server, from the relay's socket
        own_check = bytes(aioice_check(ufrag=THEIRS, pwd="srvpassword"))
        ffmpeg.sendto(own_check, front)
        got, back = server.recvfrom(4096)
        assert got == own_check
        # before media: a check is forwarded to FFmpeg, not answered
        check = aioice_check()
        server.sendto(bytes(check), back)
        assert ffmpeg.recv(4096) == bytes(check)
        assert _recv_all(server) == [] and relay.answered == 0
        # media (a DTLS record) flows: the check is answered and still forwarded
        ffmpeg.sendto(b"\x16\xfe\xfd" + bytes(60), front)
        assert server.recv(4096)[:3] == b"\x16\xfe\xfd"
        check = aioice_check()
        server.sendto(bytes(check), back)
        (answer,) = _recv_all(server)
        parsed = aio.parse_message(answer)
        assert parsed.transaction_id == check.transaction_id
        assert parsed.check_message_integrity(PWD.encode())
        assert parsed.attributes["XOR-MAPPED-ADDRESS"] == server.getsockname()
        assert ffmpeg.recv(4096) == bytes(check) and relay.answered == 1
        # a check with the wrong password: forwarded, not answered
        server.sendto(bytes(aioice_check(pwd="not-ffmpegs-password-000")), back)
        assert _recv_all(server) == [] and len(_recv_all(ffmpeg)) == 1
        # nobody else gets through, in either direction; oversized datagrams are dropped
        stranger.sendto(bytes(aioice_check()), back)
        stranger.sendto(b"\x80" + bytes(100), front)
        server.sendto(bytes(5000), back)
        assert _recv_all(server) == [] and _recv_all(ffmpeg) == [] and relay.answered == 1
        # FFmpeg silent for longer than ALIVE_S: consent is no longer given for it
        time.sleep(0.7)
        server.sendto(bytes(aioice_check()), back)
        assert _recv_all(server) == [] and len(_recv_all(ffmpeg)) == 1
        assert relay.answered == 1
    finally:
        relay.close()
        for s in (server, ffmpeg, stranger):
            s.close()
    assert not relay._thread.is_alive()


def test_a_receiver_gone_reaches_ffmpeg_as_it_would_without_the_relay() -> None:
    """aiortc closed its port: FFmpeg (whose UDP socket is connected) must get ECONNREFUSED as
    it does without the relay, so that the sink restarts it instead of sending into the void."""
    server, ffmpeg = _udp(), _udp()
    relay = ConsentRelay(server.getsockname(), UFRAG, PWD)
    try:
        ffmpeg.connect(("127.0.0.1", relay.port))
        ffmpeg.send(b"\x80" + bytes(100))
        assert server.recv(4096)[:1] == b"\x80"
        server.close()
        with pytest.raises(ConnectionRefusedError):
            for _ in range(50):
                ffmpeg.send(b"\x80" + bytes(100))
                time.sleep(0.02)
        assert not relay._thread.is_alive()
    finally:
        relay.close()
        ffmpeg.close()
