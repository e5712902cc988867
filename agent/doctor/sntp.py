"""The clock's offset from an NTP server: one SNTP (RFC 4330) exchange over UDP.

MQTT carries no time, so the broker cannot tell us ours; an NTP server can, in one packet each
way. The offset is the usual ``((t2 - t1) + (t3 - t4)) / 2`` of the four timestamps.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01
PORT = 123


@dataclass(frozen=True)
class Reading:
    offset_s: float
    delay_s: float
    stratum: int


def _to_ntp(t: float) -> bytes:
    sec = int(t) + NTP_EPOCH
    return struct.pack("!II", sec & 0xFFFFFFFF, int((t % 1) * 2**32) & 0xFFFFFFFF)


def _from_ntp(data: bytes) -> float:
    sec, frac = struct.unpack("!II", data)
    return sec - NTP_EPOCH + frac / 2**32


def split_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else PORT
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return text, PORT


def query(server: str, timeout: float = 2.0) -> Reading:
    """One exchange; raises OSError (no answer, refused) or ValueError (not a server reply)."""
    host, port = split_server(server)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t1 = time.time()
        packet = b"\x23" + bytes(39) + _to_ntp(t1)  # LI 0, version 4, mode 3 (client)
        s.sendto(packet, info[4])
        data, _ = s.recvfrom(512)
        t4 = time.time()
    if len(data) < 48:
        raise ValueError(f"short reply ({len(data)} bytes)")
    mode, stratum = data[0] & 0x7, data[1]
    if mode not in (4, 5) or data[24:32] != packet[40:48]:
        raise ValueError("not an answer to our request")
    if stratum == 0:
        raise ValueError("the server says it is not synchronised (kiss-o'-death)")
    t2, t3 = _from_ntp(data[32:40]), _from_ntp(data[40:48])
    return Reading(((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2), stratum)
