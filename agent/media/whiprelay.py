"""A UDP relay on the WHIP sink's media path that answers the receiver's consent checks.

FFmpeg 9.0.2's ``whip`` muxer answers STUN Binding requests only while it connects; once media
flows it reads and drops them (docs/media.md). A receiver with full ICE checks consent to send
(RFC 7675) every ~5 s and closes the session after ~30 s without answers. So the signalling proxy
(whipproxy.py) points FFmpeg at this relay instead of the receiver's candidate, and the relay:

- forwards every datagram both ways between FFmpeg (127.0.0.1) and the receiver's candidate,
  from one socket of its own, so the receiver sees one address throughout;
- answers a Binding request from the receiver itself (stun.py: FFmpeg's ufrag and ice-pwd from
  the offer) once FFmpeg has sent media (DTLS/SRTP), and only while FFmpeg sent any in the last
  :data:`ALIVE_S` seconds: consent stays an honest "the sender is alive". The request is still
  forwarded to FFmpeg, which answers it itself while it connects; the receiver takes the first
  answer of a transaction and ignores a second one.

Bounded: one FFmpeg address (the first that sends), datagrams only from the receiver's
candidate (the server-facing socket is connected to it), at most :data:`MAX_DATAGRAM` bytes
each; nothing it receives can stop its thread. When the receiver's port is gone (ICMP port
unreachable: ECONNREFUSED on the connected socket) the relay closes its FFmpeg-facing socket,
so FFmpeg's next datagram fails as it would without the relay, and the sink restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from agent.media.stun import binding_request, binding_success, is_stun
from agent.safetext import inert

log = logging.getLogger(__name__)

MAX_DATAGRAM = 2048  # RTP/DTLS from FFmpeg: pkt_size 1200; a receiver's datagram is no larger
ALIVE_S = 3.0  # answer consent checks only while FFmpeg sent media this recently


class ConsentRelay:
    """FFmpeg <-> ``target`` (the receiver's candidate, an IP address and port), answering
    consent checks for ``ufrag``/``pwd`` (FFmpeg's ICE credentials)."""

    def __init__(self, target: tuple[str, int], ufrag: str, pwd: str) -> None:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.target = target
        self._ufrag, self._pwd = ufrag, pwd
        self.answered = 0    # consent checks answered by the relay
        self.forwarded = 0   # datagrams passed on, both ways
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self.port = int(self._front.getsockname()[1])
        try:
            self._back = socket.socket(family, socket.SOCK_DGRAM)
            self._back.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self._back.connect(target)
        except OSError:
            self._back.close()
            self._front.close()
            raise
        self._ffmpeg: tuple[str, int] | None = None
        self._media_at: float | None = None  # when FFmpeg last sent a non-STUN datagram
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="whip-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2)
        self._front.close()
        self._back.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._front, self._back], [], [], 0.2)
                for sock in ready:
                    self._one(sock)
            except ConnectionRefusedError:
                log.info("whip relay: the receiver's port is closed (the session ended); "
                         "FFmpeg's side of the relay closes too")
                self._stop.set()
                self._front.close()
                return
            except (OSError, ValueError) as exc:  # closed under us, or a network error
                if self._stop.is_set():
                    return
                log.debug("whip relay: %s", inert(exc))
                time.sleep(0.05)

    def _one(self, sock: socket.socket) -> None:
        data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
        if len(data) > MAX_DATAGRAM:
            return
        if sock is self._front:
            if self._ffmpeg is None:
                self._ffmpeg = addr
            elif addr != self._ffmpeg:
                return  # one FFmpeg socket only
            if not is_stun(data):
                self._media_at = time.monotonic()
            self._back.send(data)  # ECONNREFUSED: the receiver is gone (_run)
            self.forwarded += 1
            return
        if self._ffmpeg is None:
            return
        if self._media_at is not None and time.monotonic() - self._media_at < ALIVE_S:
            tid = binding_request(data, self._ufrag, self._pwd)
            if tid is not None:
                self._back.send(binding_success(tid, self.target, self._pwd))
                self.answered += 1
                if self.answered in (1, 100) or self.answered % 1000 == 0:
                    log.info("whip relay: %d consent check(s) of the receiver answered for "
                             "FFmpeg", self.answered)
        with contextlib.suppress(OSError):  # FFmpeg's socket closed: its exit ends the relay
            self._front.sendto(data, self._ffmpeg)
            self.forwarded += 1
