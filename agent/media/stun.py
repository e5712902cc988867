"""The little of STUN (RFC 5389) that answering an ICE consent check needs, standard library only.

An ICE peer checks consent to send (RFC 7675) with a Binding request whose USERNAME is
``<our ufrag>:<its ufrag>`` and whose MESSAGE-INTEGRITY is an HMAC-SHA1 keyed with our ice-pwd
(short-term credentials, RFC 5389 section 15.4). :func:`binding_request` checks such a request
from untrusted bytes (None for anything else: it never raises); :func:`binding_success` builds
the answer: the same transaction id, XOR-MAPPED-ADDRESS of the requester, MESSAGE-INTEGRITY with
the same key, FINGERPRINT. Used by the WHIP consent relay (whiprelay.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = 20
MAX_STUN = 1500  # a Binding request is ~100 bytes; anything longer is not one we answer


def is_stun(data: bytes) -> bool:
    """Whether ``data`` looks like a STUN message (RFC 7983: first byte 0-3, and the cookie)."""
    return (len(data) >= HEADER and data[0] < 4
            and struct.unpack_from("!I", data, 4)[0] == MAGIC_COOKIE)


def binding_request(data: bytes, ufrag: str, pwd: str) -> bytes | None:
    """The transaction id of ``data`` when it is a Binding request for ``ufrag`` (USERNAME
    ``ufrag:...``) whose MESSAGE-INTEGRITY verifies with ``pwd``; None otherwise."""
    if not is_stun(data) or len(data) > MAX_STUN:
        return None
    mtype, length = struct.unpack_from("!HH", data, 0)
    if mtype != BINDING_REQUEST or length % 4 or HEADER + length != len(data):
        return None
    username: bytes | None = None
    pos = HEADER
    while pos + 4 <= len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4:pos + 4 + alen]
        if len(value) != alen:
            return None
        if atype == USERNAME:
            username = value
        elif atype == MESSAGE_INTEGRITY:
            if alen != 20 or username is None \
                    or not username.startswith(ufrag.encode() + b":"):
                return None
            # The HMAC covers the message up to this attribute, its length field saying
            # the message ends right after it (RFC 5389 section 15.4).
            head = struct.pack("!HH", mtype, pos + 24 - HEADER) + data[4:pos]
            want = hmac.new(pwd.encode(), head, hashlib.sha1).digest()
            return data[8:HEADER] if hmac.compare_digest(want, value) else None
        pos += 4 + alen + (-alen % 4)
    return None


def binding_success(transaction_id: bytes, mapped: tuple[str, int], pwd: str) -> bytes:
    """A Binding success response to ``transaction_id``: XOR-MAPPED-ADDRESS ``mapped`` (the
    requester's address), MESSAGE-INTEGRITY keyed with ``pwd``, FINGERPRINT."""
    ip = ipaddress.ip_address(mapped[0])
    port = mapped[1] ^ (MAGIC_COOKIE >> 16)
    cookie = struct.pack("!I", MAGIC_COOKIE)
    if ip.version == 4:
        xaddr = bytes(a ^ b for a, b in zip(ip.packed, cookie, strict=True))
        value = struct.pack("!BBH", 0, 1, port) + xaddr
    else:
        key = cookie + transaction_id
        xaddr = bytes(a ^ b for a, b in zip(ip.packed, key, strict=True))
        value = struct.pack("!BBH", 0, 2, port) + xaddr
    attrs = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value

    def header(length: int) -> bytes:
        return struct.pack("!HHI", BINDING_SUCCESS, length, MAGIC_COOKIE) + transaction_id

    mac = hmac.new(pwd.encode(), header(len(attrs) + 24) + attrs, hashlib.sha1).digest()
    attrs += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    crc = zlib.crc32(header(len(attrs) + 8) + attrs) ^ FINGERPRINT_XOR
    attrs += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return header(len(attrs)) + attrs
