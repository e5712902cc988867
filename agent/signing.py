"""Signed commands: the platform signs each MQTT command with Ed25519; the agent verifies it.

Why: the broker ACL keeps devices out of each other's topics, but whoever holds the platform's
broker account (or the broker itself) could still start a camera. With signatures that takes the
platform's private key, which never leaves the platform; the agent holds only public keys.

What is signed (docs/contract.md, "Signed commands") is :func:`canonical`: a fixed prefix and
the canonical JSON (sorted keys, compact, UTF-8) of school, device, command name, id, ts and args.
So a signature cannot be moved to another device, another command, other arguments or another
time. :class:`CommandGuard` checks a parsed request before the router runs it: signature,
``ts`` inside ``max_age_s`` of the agent's clock (both directions), and the id not seen before
(:class:`SeenIds`, persisted in the state directory, so a restart does not reopen the window).
A rejection is an error reply plus a ``command_rejected`` event that never carries the
signature or the arguments; a flood of them is one event per minute with the counts.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import Request, error
from agent.pemkey import KeyFileError, read_ed25519_public_key
from agent.records import Record, event, rfc3339
from agent.safetext import clip, inert
from agent.statefile import atomic_write_json
from agent.throttle import Summary, Tally

if TYPE_CHECKING:
    # The daemon verifies with PyNaCl (libsodium: +1.2 MiB of RSS, imported only when a key is
    # configured) and never imports cryptography (+8.6 MiB, docs/benchmarks.md); cryptography's
    # private key is only for whoever signs: scripts/send-command, the tests and benches.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from nacl.signing import VerifyKey

log = logging.getLogger(__name__)

#: Domain separation: these bytes can never be confused with anything else the key signs.
DOMAIN = b"classroom-agent command v1\n"

SIGNATURE_REQUIRED = "signature_required"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
REPLAYED = "replayed"
CODES = (SIGNATURE_REQUIRED, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID, REPLAYED)

#: Rejections are reported once, then summarised in one event per this many seconds.
REJECTION_WINDOW_S = 60.0

#: Ids remembered at most; beyond it the oldest is forgotten and its ts becomes a floor below
#: which every command counts as replayed, so forgetting never reopens a replay.
SEEN_LIMIT = 4096


def canonical(school: str, device: str, command: str, req_id: str, ts: str,
              args: dict[str, Any]) -> bytes:
    """The exact bytes a command's signature covers (raises ValueError for unencodable text)."""
    body = {"school": school, "device": device, "command": command, "id": req_id, "ts": ts,
            "args": args}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return DOMAIN + text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError


def sign_request(key: Ed25519PrivateKey, school: str, device: str, command: str, req_id: str,
                 args: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """A signed request body, as the platform (and scripts/send-command) publishes it."""
    stamp = rfc3339(time.time() if ts is None else ts)
    sig = key.sign(canonical(school, device, command, req_id, stamp, args))
    return {"id": req_id, "args": args, "ts": stamp, "sig": base64.b64encode(sig).decode()}


def load_public_key(path: str) -> VerifyKey:
    """The Ed25519 public key of a PEM file (agent/pemkey.py); KeyFileError if it is not one."""
    from nacl.signing import VerifyKey

    return VerifyKey(read_ed25519_public_key(path))


def parse_ts(ts: Any) -> float | None:
    """Epoch seconds of an RFC 3339 time with a zone (Z or +hh:mm), or None if it is not one."""
    if not isinstance(ts, str) or not 20 <= len(ts) <= 40 or "T" not in ts:
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


class SeenIds:
    """Ids of commands already run, with their ts; saved to ``path`` after every change.

    Only ids whose ts is still inside the window matter (older commands are refused as expired
    anyway), so the file stays small. A missing file is an empty memory; an unreadable one is
    replaced by a floor at load time, so no command signed before the start can run (fail closed).
    """

    def __init__(self, path: Path, limit: int = SEEN_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self.ids: dict[str, float] = {}
        self.floor = 0.0
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            self.floor = float(doc.get("floor", 0.0))
            self.ids = {str(k): float(v) for k, v in doc["ids"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            self.floor = time.time()
            self.ids = {}
            log.error("signing: %s is unreadable (%s); refusing every command signed before now "
                      "so none can be replayed. Next step: none, the file is rewritten with the "
                      "next accepted command", self.path, exc)

    def seen(self, req_id: str, ts: float) -> bool:
        return req_id in self.ids or ts <= self.floor

    def add(self, req_id: str, ts: float, oldest_useful: float) -> None:
        self.ids = {k: v for k, v in self.ids.items() if v >= oldest_useful}
        self.ids[req_id] = ts
        while len(self.ids) > self.limit:
            victim = min(self.ids, key=self.ids.__getitem__)
            self.floor = max(self.floor, self.ids.pop(victim))
        self._save()

    def _save(self) -> None:
        try:
            atomic_write_json(self.path, {"floor": self.floor, "ids": self.ids})
        except OSError as exc:  # the in-memory copy still protects this run
            log.error("signing: cannot save %s: %s; a restart could accept a replay of the last "
                      "commands. Next step: check the state directory (space, permissions)",
                      self.path, exc)


@dataclass(frozen=True)
class Verdict:
    code: str
    message: str


class CommandGuard:
    """Checks a parsed MQTT request before it runs; :meth:`ran` remembers it afterwards.

    :meth:`check` runs on the publisher thread (at the door), :meth:`ran` on the command worker's:
    a verified id is reserved until it has run (or is released), so a second copy that
    arrives meanwhile is ``replayed`` at once. Rejections become ``command_rejected`` events
    through a :class:`~agent.throttle.Tally`: the first at once, then one per
    :data:`REJECTION_WINDOW_S` with the counts, however many arrive.
    """

    def __init__(self, keys: Sequence[VerifyKey], required: bool, max_age_s: float,
                 school: str, device: str, seen: SeenIds, emit: Callable[[Record], None],
                 problems: Sequence[str] = (), clock: Callable[[], float] = time.time) -> None:
        self.keys = list(keys)
        self.required = required
        self.max_age_s = max_age_s
        self.school = school
        self.device = device
        self.seen = seen
        self.emit = emit
        self.problems = list(problems)
        self.clock = clock
        self.rejected_total = 0
        self._lock = threading.Lock()
        self._reserved: set[str] = set()
        self._tally = Tally(REJECTION_WINDOW_S, self._report)

    def check(self, req: Request) -> dict[str, Any] | None:
        """None when ``req`` may run, else the error reply (and a ``command_rejected`` event)."""
        with self._lock:
            verdict = self._verdict(req)
            if verdict is None and self._signed(req):
                self._reserved.add(req.id)
        if verdict is None:
            return None
        self.rejected_total += 1
        # Shown on the platform's dashboards: bounded and inert (escapes can lengthen an id).
        self._tally.note(verdict.code, {"command": clip(inert(req.name, 64), 64),
                                        "id": clip(inert(req.id, 64), 64)})
        return error(req.id, verdict.code, verdict.message)

    def ran(self, req: Request) -> None:
        """Remember a verified request's id once it has run (a crash before that lets the
        broker's redelivery run it, as for unsigned commands)."""
        ts = parse_ts(req.ts)
        with self._lock:
            self._reserved.discard(req.id)
            if ts is not None and self._signed(req):
                self.seen.add(req.id, ts, self.clock() - self.max_age_s)

    def release(self, req: Request) -> None:
        with self._lock:
            self._reserved.discard(req.id)

    def flush(self) -> None:
        """Report the rejections counted so far (at stop or when the guard is replaced)."""
        self._tally.flush()

    def _signed(self, req: Request) -> bool:
        return bool(self.keys) and req.sig is not None

    def _report(self, s: Summary) -> None:
        example = s.example
        if s.first:
            self.emit(event("command_rejected", "warning",
                            f"command {example['command']} rejected: {next(iter(s.by_key))}",
                            reason=next(iter(s.by_key)), count=1, **example))
            return
        reason = max(s.by_key, key=s.by_key.__getitem__)
        self.emit(event("command_rejected", "warning",
                        f"{s.count} more commands rejected in {s.window_s:.0f} s",
                        reason=reason, count=s.count, reasons=s.by_key, window_s=s.window_s,
                        **example))

    def _verdict(self, req: Request) -> Verdict | None:
        if req.sig is None and req.ts is None:
            if not self.required:
                return None
            why = ("; " + "; ".join(self.problems)) if self.problems else ""
            return Verdict(SIGNATURE_REQUIRED,
                           "this terminal takes only signed commands (ts and sig)" + why +
                           ". Next step: sign with the platform key (scripts/send-command)")
        if not self.keys:
            if self.required:
                return Verdict(BAD_SIGNATURE, "no usable public key is configured ("
                               + ("; ".join(self.problems) or "commands.public_keys is empty")
                               + "). Next step: fix commands.public_keys in the agent config")
            return None  # nothing to verify against; unsigned commands are allowed here
        ts = parse_ts(req.ts)
        sig = _signature(req.sig)
        if ts is None or sig is None:
            return Verdict(BAD_SIGNATURE, "a signed command needs ts (RFC 3339 with a zone, e.g. "
                           "2026-11-23T08:00:00.000Z) and sig (base64 of 64 bytes)")
        try:
            signed = canonical(self.school, self.device, req.name, req.id, req.ts, req.args)
        except ValueError:
            return Verdict(BAD_SIGNATURE, "the request cannot be put in canonical form")
        if not any(_verifies(k, sig, signed) for k in self.keys):
            return Verdict(BAD_SIGNATURE, "the signature does not match this command for this "
                           "device with any configured public key")
        now = self.clock()
        # ts and id are echoed to the sender: inert, like every string from outside
        if ts < now - self.max_age_s:
            return Verdict(EXPIRED, f"ts {inert(req.ts, 40)} is more than {self.max_age_s:g} s "
                           f"old (agent clock {rfc3339(now)}). Next step: send it again with a "
                           "fresh ts; if fresh ones fail too, check both clocks (NTP)")
        if ts > now + self.max_age_s:
            return Verdict(NOT_YET_VALID, f"ts {inert(req.ts, 40)} is more than "
                           f"{self.max_age_s:g} s ahead of the agent clock {rfc3339(now)}. "
                           "Next step: check both clocks (NTP)")
        if self.seen.seen(req.id, ts) or req.id in self._reserved:
            return Verdict(REPLAYED, f"id {inert(req.id, 64)} was already used; this is a "
                           "replay or a duplicate delivery. Next step: a new command needs a "
                           "new id")
        return None


def _signature(sig: Any) -> bytes | None:
    if not isinstance(sig, str) or len(sig) > 100:
        return None
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def _verifies(key: VerifyKey, sig: bytes, data: bytes) -> bool:
    from nacl.exceptions import BadSignatureError

    if len(sig) != 64:  # PyNaCl raises ValueError for any other length
        return False
    try:
        key.verify(data, sig)
    except BadSignatureError:
        return False
    return True


def make_guard(public_keys: Sequence[str], required: bool, max_age_s: float, school: str,
               device: str, seen: SeenIds, emit: Callable[[Record], None]) -> CommandGuard:
    """A guard from config values. An unusable key file is logged and kept as a problem: the
    guard then still requires signatures (fails closed) with the keys that did load."""
    keys: list[VerifyKey] = []
    problems: list[str] = []
    for path in public_keys:
        try:
            keys.append(load_public_key(path))
        except KeyFileError as exc:
            problems.append(str(exc))
            log.error("signing: %s", exc)
    if problems:
        required = True
    elif not required:
        log.warning("signing: MQTT commands are accepted WITHOUT a signature. Next step: set "
                    "commands.public_keys to the platform's public key (docs/security.md)")
    return CommandGuard(keys, required, max_age_s, school, device, seen, emit, problems)
