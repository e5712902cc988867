"""A real WebRTC receiver behind a WHIP endpoint (RFC 9725): aiortc + aiohttp, in a thread.

``POST /whip/{room}`` with an SDP offer (and ``Authorization: Bearer TOKEN`` when a token is set)
is answered ``201 Created`` with the SDP answer and a ``Location``; ``DELETE`` on it ends the
session. Every received video frame is decoded by aiortc and its time strip read
(agent/media/timestrip.py), so the latency from capture to decoded frame is known; the audio is
decoded too (Opus), its level measured and its beeps found (tests/media_support.py). Used by the
tests and by bench/latency.py.

With ``impairment`` set, each session's media path (ICE, DTLS, SRTP) goes through a lossy, slow,
jittery UDP relay (tests/netimpair.py): the answer's candidate is rewritten to the relay's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.media.whipsdp import relay_candidate
from tests.netimpair import Impairment, UdpRelay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Session:
    """What one publisher sent: (arrival, capture) per video frame, audio samples with the
    arrival of the first one."""

    video: list[tuple[float, float | None]] = field(default_factory=list)
    audio_rate: int = 48000
    audio_pcm: list[Any] = field(default_factory=list)  # mono int16 arrays, one per frame
    audio_arrivals: list[float] = field(default_factory=list)  # when each frame came out
    audio_frames: int = 0
    ended: bool = False
    #: first RTP packet arrival of each video frame (by its timestamp from the stream's first)
    first_packet: dict[int, float] = field(default_factory=dict)
    video_pts: list[int | None] = field(default_factory=list)
    relay: UdpRelay | None = None  # the impaired path, when the endpoint has one

    def freezes(self, since: float, until: float, gap_s: float = 0.2) -> list[float]:
        """Gaps longer than ``gap_s`` without a decoded picture between ``since`` and ``until``
        (wall clock), the wait for the first picture and after the last one included."""
        arrivals = [since, *(a for a, _c in list(self.video) if since <= a <= until), until]
        return [b - a for a, b in itertools.pairwise(arrivals) if b - a > gap_s]

    def receiver_ms(self, since: float = 0.0) -> list[float]:
        """What the receiver adds: first RTP packet of a frame -> its decoded picture (aiortc's
        jitter buffer and decoder)."""
        out = []
        for (arrival, _c), pts in zip(list(self.video), list(self.video_pts), strict=False):
            first = self.first_packet.get(pts) if pts is not None else None
            if first is not None and arrival >= since:
                out.append((arrival - first) * 1000)
        return out

    def latencies_ms(self, since: float = 0.0) -> list[float]:
        return [(a - c) * 1000 for a, c in list(self.video) if c is not None and a >= since]

    def audio_rms_dbfs(self) -> float:
        import numpy as np

        if not self.audio_pcm:
            return -200.0
        x = np.concatenate(self.audio_pcm).astype(np.float64) / 32768
        rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
        return 20 * np.log10(rms) if rms > 0 else -200.0

    def av_offsets_ms(self) -> list[float]:
        """Each beep's time at the receiver minus that of the nearest picture whose capture time
        passes a whole second (+ = sound late; pairs by proximity, so it reads offsets within
        +-0.5 s, and survives a sender that skipped seconds while it connected). A decoded
        audio frame's last sample is placed at the frame's arrival, the others before it at the
        sample rate."""
        import itertools

        import numpy as np

        from tests.media_support import onsets_in

        if not self.audio_pcm:
            return []
        pcm = np.concatenate(self.audio_pcm)
        rate = self.audio_rate
        times = np.concatenate([arr - (len(p) - 1 - np.arange(len(p))) / rate
                                for arr, p in zip(self.audio_arrivals, self.audio_pcm,
                                                  strict=True)])
        onsets = [float(np.interp(t * rate, np.arange(len(times)), times))
                  for t in onsets_in(pcm, 0.0, rate)]
        known = [(a, c) for a, c in self.video if c is not None]
        crossings = [a0 + (int(c1) - c0) / (c1 - c0) * (a1 - a0)
                     for (a0, c0), (a1, c1) in itertools.pairwise(known)
                     if int(c0) < int(c1) and c1 > c0]
        if not crossings:
            return []
        return [round((t - min(crossings, key=lambda x: abs(x - t))) * 1000, 1)
                for t in onsets]


class WhipEndpoint:
    """aiohttp + aiortc on 127.0.0.1 in a thread of its own; ``sessions`` in arrival order."""

    def __init__(self, token: str | None = None, strip_width: int | None = None,
                 impairment: Impairment | None = None, seed: int | None = None) -> None:
        self.token = token
        self.impairment, self.seed = impairment, seed
        self.port = _free_port()
        self.sessions: list[Session] = []
        self.rejected = 0
        self.strip_width = strip_width
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="whip-endpoint",
                                        daemon=True)
        self._runner: Any = None
        self._pcs: dict[str, Any] = {}
        self._tasks: set[Any] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/whip/room"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(15)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/whip/{room}", self._offer)
        app.router.add_delete("/whip/{room}/{sid}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        for pc in list(self._pcs.values()):
            await pc.close()
        for session in self.sessions:
            if session.relay is not None:
                session.relay.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _offer(self, request: Any) -> Any:
        from aiohttp import web
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        if self.token is not None and request.headers.get("Authorization") != \
                f"Bearer {self.token}":
            self.rejected += 1
            return web.Response(status=401, text="bad or missing bearer token")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
        session = Session()
        self.sessions.append(session)
        sid = str(len(self.sessions))
        self._pcs[sid] = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            consume = self._video if track.kind == "video" else self._audio
            self._tasks.add(asyncio.ensure_future(consume(track, session)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                self._watch_packets(transceiver.receiver, session)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        sdp = pc.localDescription.sdp
        if self.impairment is not None:
            sdp, session.relay = through_relay(sdp, self.impairment, self.seed)
        return web.Response(status=201, text=sdp,
                            content_type="application/sdp",
                            headers={"Location": f"/whip/{request.match_info['room']}/{sid}"})

    @staticmethod
    def _watch_packets(receiver: Any, session: Session) -> None:
        """Note when each video frame's first RTP packet arrives (aiortc's frame pts is the RTP
        timestamp minus the stream's first)."""
        handle = receiver._handle_rtp_packet
        origin: list[int] = []

        async def wrapped(packet: Any, arrival_time_ms: int) -> None:
            if not origin:
                origin.append(packet.timestamp)
            session.first_packet.setdefault((packet.timestamp - origin[0]) % (1 << 32),
                                            time.time())
            if len(session.first_packet) > 100_000:
                session.first_packet.clear()
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = wrapped

    async def _delete(self, request: Any) -> Any:
        from aiohttp import web

        pc = self._pcs.pop(request.match_info["sid"], None)
        if pc is None:
            return web.Response(status=404)
        self.sessions[int(request.match_info["sid"]) - 1].ended = True
        await pc.close()
        return web.Response(status=200)

    async def _video(self, track: Any, session: Session) -> None:
        from agent.media.timestrip import BITS, block_size, read_strip

        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                arrival = time.time()
                gray = frame.to_ndarray(format="gray")
                b = block_size(self.strip_width or frame.width)
                session.video.append((arrival, read_strip(gray[:b, :BITS * b], arrival)))
                session.video_pts.append(frame.pts)

    async def _audio(self, track: Any, session: Session) -> None:
        import numpy as np

        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                session.audio_arrivals.append(time.time())
                session.audio_rate = frame.sample_rate
                pcm = frame.to_ndarray()  # s16, interleaved (1, samples * channels)
                channels = len(frame.layout.channels)
                mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm.reshape(-1)
                session.audio_pcm.append(np.array(mono, dtype=np.int16))
                session.audio_frames += 1


def through_relay(sdp: str, impairment: Impairment, seed: int | None) -> tuple[str, UdpRelay]:
    """The answer with one candidate left, moved to a relay that forwards to where it was (every
    UDP datagram of the session then crosses the relay); the candidate is the one the agent's
    own consent relay picks (agent.media.whipsdp.relay_candidate)."""
    relays: list[UdpRelay] = []

    def start(target: tuple[str, int]) -> int:
        relays.append(UdpRelay(target, impairment, seed).start())
        return relays[-1].port

    answer = relay_candidate(sdp.encode(), start)
    if answer is None:
        raise RuntimeError("the answer has no UDP candidate to relay")
    return answer.decode(), relays[0]
