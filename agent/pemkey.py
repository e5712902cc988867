"""The platform's Ed25519 public key from a PEM file, parsed here rather than by a crypto library.

Why: the daemon verifies with PyNaCl (libsodium, ~1.2 MiB of RSS), which takes a raw 32-byte key
and reads no PEM; loading ``cryptography`` to parse one would cost ~8.6 MiB (docs/benchmarks.md).
An Ed25519 SubjectPublicKeyInfo (RFC 8410) is always the same 12 DER bytes followed by the key,
so the check is exact: one ``-----BEGIN PUBLIC KEY-----`` block (explanatory text around it is
ignored, as RFC 7468 allows), its base64 strictly valid, and exactly :data:`ED25519_SPKI` + 32
bytes inside. Anything else is a :class:`KeyFileError` that says what the file is instead.
"""

from __future__ import annotations

import base64
import binascii
import re

#: SEQUENCE { SEQUENCE { OID 1.3.101.112 (id-Ed25519) }, BIT STRING (0 unused bits) of 32 bytes }
ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
KEY_BYTES = 32
ED25519_OID = "1.3.101.112"

#: A key file is ~113 bytes; this leaves room for comments and refuses anything else unread.
MAX_FILE_BYTES = 16 * 1024

#: What other SubjectPublicKeyInfo algorithms are (named as ``cryptography`` named their keys).
OTHER_ALGORITHMS = {
    "1.2.840.113549.1.1.1": "RSAPublicKey",
    "1.2.840.113549.1.1.10": "RSAPublicKey",  # RSASSA-PSS
    "1.2.840.10045.2.1": "ECPublicKey",
    "1.2.840.10040.4.1": "DSAPublicKey",
    "1.3.101.110": "X25519PublicKey",
    "1.3.101.111": "X448PublicKey",
    "1.3.101.113": "Ed448PublicKey",
}

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL)
_WHITESPACE = re.compile(rb"\s+")


class KeyFileError(ValueError):
    """A public key file that cannot be used; the message names the file and what is wrong."""


def read_ed25519_public_key(path: str) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in the PEM file ``path``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes, too large for a public "
                           "key file (one is ~113 bytes). Next step: use the .pub.pem file of "
                           "scripts/send-command --keygen")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} holds a PRIVATE key. Next step: give the agent only the public "
                           "key (scripts/send-command --keygen writes it as *.pub.pem) and keep "
                           "the private key on the platform")
    blocks = [m for m in _BLOCK.finditer(data) if m[1] == m[3]]
    if len(blocks) > 1:
        raise KeyFileError(f"{path} holds {len(blocks)} PEM blocks. Next step: one key per file; "
                           "list each file in commands.public_keys")
    der = _der(blocks[0]) if blocks else None
    if der is None:
        raise KeyFileError(f"{path} is not a PEM public key. Next step: use the .pub.pem file of "
                           "scripts/send-command --keygen or `openssl pkey -pubout`")
    if len(der) == len(ED25519_SPKI) + KEY_BYTES and der.startswith(ED25519_SPKI):
        return der[len(ED25519_SPKI):]
    what = _what(blocks[0][1], der)
    if what is None:
        raise KeyFileError(f"{path} holds a malformed public key (an Ed25519 one is exactly "
                           f"{len(ED25519_SPKI) + KEY_BYTES} bytes of DER). Next step: make it "
                           "again with scripts/send-command --keygen or `openssl pkey -pubout`")
    raise KeyFileError(f"{path} is a {what}, not an Ed25519 public key")


def _der(block: re.Match[bytes]) -> bytes | None:
    """The DER of a ``PUBLIC KEY`` or ``RSA PUBLIC KEY`` block, None if it is not one or not
    strict base64 (RFC 7468 allows no headers in these blocks)."""
    if block[1] not in (b"PUBLIC KEY", b"RSA PUBLIC KEY"):
        return None
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", block[2]), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _what(label: bytes, der: bytes) -> str | None:
    """What a public key that is not Ed25519 is, None if it is no well-formed start of one."""
    if label == b"RSA PUBLIC KEY":  # PKCS #1
        return "RSAPublicKey"
    oid = _algorithm_oid(der)
    if oid is None or oid == ED25519_OID:
        return None
    return OTHER_ALGORITHMS.get(oid, f"public key of algorithm {oid}")


def _algorithm_oid(der: bytes) -> str | None:
    """The dotted algorithm OID of a SubjectPublicKeyInfo, None if the DER does not start as one."""
    if der[:1] != b"\x30":
        return None
    pos = _skip_length(der, 1)
    if pos is None or der[pos:pos + 1] != b"\x30":  # AlgorithmIdentifier
        return None
    pos = _skip_length(der, pos + 1)
    if pos is None or der[pos:pos + 1] != b"\x06" or pos + 2 > len(der):
        return None
    size = der[pos + 1]
    body = der[pos + 2:pos + 2 + size]
    if size == 0 or size > 0x7F or len(body) != size:
        return None
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or body[-1] & 0x80:
        return None
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _skip_length(der: bytes, pos: int) -> int | None:
    """The position after a DER length at ``pos`` (the content is not skipped)."""
    if pos >= len(der):
        return None
    first = der[pos]
    if first < 0x80:
        return pos + 1
    count = first & 0x7F
    return pos + 1 + count if 0 < count <= 4 and pos + 1 + count <= len(der) else None
