"""The technicians' status page: ``/`` and the JSON it reads, in Chinese or English.

The page (``page.html``, ``page.js``, ``page.css`` beside this module; no external asset, schools
are often offline) asks ``/page.json?lang=...`` every two seconds and redraws itself. That JSON is
the board's snapshot seen through :func:`view`: per subsystem a state (good, warning, fault), its
summary lines (the same words as ``classroom-agent status``, agent/status/text.py) and its
problems with cause and next step (the one warning catalogue, agent/status/warnings.py), all in
the requested language; the current and next lesson; the recent events.

On request, and only then: ``/snapshot.json`` (one camera picture, JPEG) and ``/level.json`` (the
microphone's level, ten times a second for a listening session). Both are computed on this PC in
a child process (agent/media/peek.py), never stored and never sent anywhere but to the page that
asked (docs/privacy.md). The status address is loopback by default; a technician's phone on the
school's LAN reaches the page only if ``status.listen`` is opened on purpose.

The status address is open to every account of the PC, a pupil's too, and the rest of the page
says no more than ``classroom-agent status`` does. A picture of the classroom and its sound level
do: those two answer only to a request that carries the page's key (header ``X-Page-Key``), a
secret the agent makes at each start, keeps in memory and gives only on its control socket,
that is to root and the technicians' group (``classroom-agent page`` prints the page's address
with it; docs/security.md). Compared in constant time; never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from agent import i18n
from agent.i18n import N_, Translate
from agent.media.peek import Busy, Peeker
from agent.status import warnings
from agent.status.http import Request, Response, Routes
from agent.status.text import summaries

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
Snapshot = Callable[[], dict[str, Any]]

#: The page's subsystems, in the order shown.
SUBSYSTEMS = [("agent", N_("Agent")), ("broker", N_("Broker")), ("outbox", N_("Outbox")),
              ("machine", N_("Machine")), ("camera", N_("Camera")),
              ("microphone", N_("Microphone")), ("lesson", N_("Lesson")), ("live", N_("Live")),
              ("recording", N_("Recording")), ("upload", N_("Upload")),
              ("commands", N_("Commands")), ("telemetry", N_("Telemetry"))]
_RANK = {"good": 0, "warning": 1, "fault": 2}
MAX_EVENTS = 20

#: The request header that carries the page's key (HTTP/1.1 header names are case-insensitive).
KEY_HEADER = "x-page-key"
#: Why a snapshot or a level was refused without the key (also in the page's catalog).
KEY_REQUIRED = N_("The camera snapshot and the microphone level need this page's key. Next "
                  "step: on this terminal, run `classroom-agent page` as root or a member of "
                  "the agent's group and open the address it prints.")

#: Served with every page response: nothing from elsewhere, no framing, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _media_lines(sid: str, s: dict[str, Any], tr: Translate) -> list[str]:
    """Camera and microphone: what the running lesson's worker says, else that they are idle."""
    m = s.get("media") or {}
    p = s.get("peripherals") or {}
    if sid == "camera":
        v = m.get("video")
        if v:
            return [tr("in the lesson: {frames} frames captured, {state}").format(
                frames=v.get("captured", 0), state=tr(str(v.get("source_state"))))]
        return [tr("{count} camera(s) found; not in use between lessons").format(
            count=p.get("video", "?"))]
    a = m.get("audio")
    if a:
        return [tr("in the lesson: level {rms:.0f} dBFS, {state}").format(
            rms=a.get("rms_dbfs") if isinstance(a.get("rms_dbfs"), int | float) else -120,
            state=tr(str(a.get("source_state"))))]
    return [tr("{count} microphone(s) found; not in use between lessons").format(
        count=p.get("audio_inputs", "?"))]


def view(s: dict[str, Any], lang: str, default_lang: str = "en") -> dict[str, Any]:
    """What the page shows, worded in ``lang``."""
    tr = i18n.translator(lang)
    rows = summaries(s, tr)
    found = [w for w in (warnings.from_json(d) for d in s.get("warning_details") or []
                         if isinstance(d, dict)) if w is not None]
    subsystems = []
    for sid, label in SUBSYSTEMS:
        mine = [w for w in found if w.template.subsystem == sid]
        state = max((("fault" if w.template.severity == "fault" else "warning") for w in mine),
                    key=_RANK.__getitem__, default="good")
        lines = _media_lines(sid, s, tr) if sid in ("camera", "microphone") else rows.get(sid, [])
        if sid == "live" and not lines:
            lines = [tr("nothing streamed between lessons")]
        if sid == "recording":  # the FFmpeg that records belongs here too
            lines = (lines or [tr("nothing recorded between lessons")]) + rows.get("ffmpeg", [])
        if sid == "telemetry" and not lines and not mine:
            lines = [tr("every class collected")]
        subsystems.append({
            "id": sid, "title": tr(label), "state": state, "lines": lines,
            "problems": [{"code": w.code, "severity": w.template.severity,
                          "cause": warnings.cause(w, tr), "next_step": warnings.next_step(w, tr)}
                         for w in mine]})
    overall = max((x["state"] for x in subsystems), key=_RANK.__getitem__, default="good")
    ls = s.get("lessons") or {}
    d = s["device"]
    return {
        "lang": i18n.normalize(lang), "default_lang": default_lang,
        "device": {"id": d["id"], "school": d["school"], "name": d.get("name") or ""},
        "version": s["agent"]["version"], "overall": overall, "subsystems": subsystems,
        "lesson": {"current": _lesson(ls.get("current"), tr), "next": _lesson(ls.get("next"), tr)},
        "events": [_event(e) for e in (s.get("recent_events") or [])[-MAX_EVENTS:][::-1]],
    }


def _lesson(x: dict[str, Any] | None, tr: Translate) -> dict[str, Any] | None:
    if not x:
        return None
    keys = ("lesson_id", "course", "teacher", "start", "end", "elapsed_s", "remaining_s")
    out = {k: x.get(k) for k in keys}
    out["role"] = tr(str(x.get("role"))) if x.get("role") else ""
    out["state"] = tr(str(x.get("state"))) if x.get("state") else ""
    return out


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {k: str(e.get(k, ""))[:300] for k in ("ts", "type", "severity", "message")}


@cache
def _static(name: str) -> bytes:
    return (HERE / name).read_bytes()


def _lang(req: Request, default: str) -> str:
    wanted = parse_qs(req.query).get("lang", [""])[0]
    return i18n.normalize(wanted) if wanted else default


def _json(doc: Any, status: int = 200) -> Response:
    r = Response.json(doc, status)
    return Response(r.status, r.body, "application/json; charset=utf-8", SECURITY_HEADERS)


def key_matches(req: Request, key: str) -> bool:
    """Whether ``req`` carries ``key`` (constant time: the answer's timing tells nothing)."""
    given = req.headers.get(KEY_HEADER, "").encode("latin-1")  # the server decoded latin-1
    return hmac.compare_digest(given, key.encode("ascii"))


def routes(snapshot: Snapshot, peeker: Peeker | None, page_key: str | None = None,
           default_lang: str | None = None) -> Routes:
    """``/``, its script and style, ``/page.json``, ``/i18n.json``, and the on-request
    ``/snapshot.json`` and ``/level.json`` (403 without ``page_key``, 409 with the reason when
    they cannot be had). A ``peeker`` needs a ``page_key``: nobody gets the camera without it."""
    lang0 = default_lang or i18n.pick(None, os.environ)
    if peeker is not None and not page_key:
        raise ValueError("the camera snapshot and microphone level need a page key")

    def static(name: str, ctype: str) -> Callable[[Request], Response]:
        return lambda _req: Response(200, _static(name), ctype, SECURITY_HEADERS)

    def page_json(req: Request) -> Response:
        try:
            snap = snapshot()
        except Exception:
            log.exception("status page: snapshot failed")
            return _json({"error": "status snapshot failed; see the agent log"}, 500)
        return _json(view(snap, _lang(req, lang0), lang0))

    def catalog(req: Request) -> Response:
        return _json(i18n.catalog(_lang(req, lang0)))

    def on_request(what: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            tr = i18n.translator(_lang(req, lang0))
            if peeker is None or page_key is None:
                return _json({"error": tr("not available in this agent")}, 404)
            if not key_matches(req, page_key):
                return _json({"error": tr(KEY_REQUIRED)}, 403)
            try:
                doc = peeker.snapshot() if what == "snapshot" else peeker.level()
            except Busy as exc:
                return _json({"error": tr(str(exc))}, 409)
            if doc.get("error"):
                doc = {**doc, "error": str(doc["error"])[:300]}
            return _json(doc)
        return handler

    return (Routes()
            .get("/", static("page.html", "text/html; charset=utf-8"))
            .get("/page.js", static("page.js", "text/javascript; charset=utf-8"))
            .get("/page.css", static("page.css", "text/css; charset=utf-8"))
            .get("/favicon.ico", lambda _req: Response(204, b"", "image/x-icon"))
            .get("/page.json", page_json)
            .get("/i18n.json", catalog)
            .get("/snapshot.json", on_request("snapshot"))
            .get("/level.json", on_request("level")))


#: Words shown on the page from values of the snapshot (sources' states).
PAGE_WORDS = (N_("ok"), N_("lost"))
