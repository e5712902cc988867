"""The status snapshot for people in a terminal: ``classroom-agent status``.

One line per concern, warnings last (worded by agent/status/warnings.py). Input is the snapshot's
JSON as the daemon served it, so this module needs nothing of the daemon and the CLI stays light.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from agent.i18n import N_, _
from agent.safetext import inert
from agent.status import warnings
from agent.status.warnings import human_duration as _human_s


def warning_lines(s: dict[str, Any], translate: warnings.Translate | None = None) -> list[str]:
    """The warnings as sentences: from their codes and params when this version knows them
    (so they can be translated), else the English text the daemon sent."""
    out = []
    details = s.get("warning_details")
    if not isinstance(details, list):  # an agent older than the catalogue
        return [str(w) for w in s.get("warnings") or []]
    for doc in details:
        w = warnings.from_json(doc) if isinstance(doc, dict) else None
        if w is None:
            out.append(str(doc.get("text", "")) if isinstance(doc, dict) else str(doc))
        else:
            out.append(warnings.render(w, translate) if translate else warnings.render(w))
    return out


def pad(label: str, width: int = 12) -> str:
    """``label`` padded to ``width`` terminal columns (a Chinese character takes two)."""
    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in label)
    return label + " " * max(1, width - cols)


def _row(label: str, text: str) -> str:
    return f"  {pad(_(label))}{text}"


def render_text(s: dict[str, Any]) -> str:
    """The snapshot for people: one line per concern, warnings last; every line inert. Words
    in the CLI's language (agent/i18n.py)."""
    a, d, b, ob, km = s["agent"], s["device"], s["broker"], s["outbox"], s["metrics"]
    head = (_("classroom-agent {version}: device {device} ({name}), school {school}")
            if d.get("name") else _("classroom-agent {version}: device {device}, school {school}"))
    lines = [
        head.format(version=a["version"], device=d["id"], name=d.get("name"), school=d["school"]),
        _row(N_("Agent"), _("running, pid {pid}, up {uptime}, config {path} ({hash})").format(
            pid=a["pid"], uptime=_human_s(a["uptime_s"]), path=a["config_path"],
            hash=a["config_hash"])),
    ]
    tls = ", TLS" if b["tls"] else ""
    if b["connected"]:
        text = _("connected to {address} (MQTT {protocol}{tls}) since {since}").format(
            address=b["address"], protocol=b["protocol"], tls=tls, since=b["connected_since"])
        if b["last_puback"]:
            text += _(", last delivery {at}").format(at=b["last_puback"])
    else:
        text = _("NOT connected to {address}{tls}: {error}").format(
            address=b["address"], tls=tls, error=b["last_error"] or _("connecting"))
        if b["next_attempt_in_s"] is not None:
            text += _("; retrying in {seconds:.0f}s").format(seconds=b["next_attempt_in_s"])
    lines.append(_row(N_("Broker"), text))
    text = _("{depth} waiting ({bytes} bytes)").format(depth=ob["depth"], bytes=ob["bytes"])
    if ob["oldest_age_s"]:
        text += _(", oldest {age}").format(age=_human_s(ob["oldest_age_s"]))
    text += _(", {dropped} dropped, last seq {seq}").format(dropped=ob["dropped_total"],
                                                           seq=ob["last_seq"])
    lines.append(_row(N_("Outbox"), text))
    disks = ", ".join(f"{x['mount']} {x['percent']:.0f}%" for x in km["disks"]) or "-"
    cpu = f"{km['cpu_percent']:.0f}%" if km["cpu_percent"] is not None else "-"
    mem = f"{km['memory_percent']:.0f}%" if km["memory_percent"] is not None else "-"
    lines.append(_row(N_("Machine"), _("CPU {cpu}, memory {memory}, disks {disks}, up {uptime}")
                      .format(cpu=cpu, memory=mem, disks=disks, uptime=_human_s(km["uptime_s"]))))
    off = s["telemetry"].get("classes_off") or []
    if off:
        lines.append(_row(N_("Telemetry"), _("turned off (telemetry.classes): {classes}")
                          .format(classes=", ".join(off))))
    p = s.get("peripherals") or {}
    if p:
        lines.append(_row(N_("Peripherals"), _(
            "{cameras} camera(s), {microphones} microphone(s), {displays} display(s), {usb} USB "
            "device(s)").format(cameras=p.get("video", 0), microphones=p.get("audio_inputs", 0),
                                displays=p.get("displays_connected", 0), usb=p.get("usb", 0))))
    lines.extend(_lesson_lines(s.get("lessons") or {}, s.get("media") or {}))
    sec = s.get("security") or {}
    if "signatures_required" in sec:
        mode = (_("signed only ({keys} public key(s))").format(keys=sec["public_keys"])
                if sec["signatures_required"]
                else _("UNSIGNED accepted (commands.public_keys not set)"))
        lines.append(_row(N_("Commands"), _("MQTT: {mode}, {rejected} rejected").format(
            mode=mode, rejected=sec["commands_rejected_total"])))
    for t in km["netquality"]:
        state = (f"{t['rtt_ms']:.1f} ms" if t.get("ok")
                 else _("FAILED ({error})").format(error=t.get("error")))
        lines.append(_row(N_("Network"), f"{t['target']}: {state}"))
    found = warning_lines(s, _)
    if found:
        lines.append(_("Warnings:"))
        lines.extend(f"  ! {w}" for w in found)
    else:
        lines.append(_("No warnings: this terminal looks healthy."))
    # Course, teacher, errors, names: text from outside, printed so that it cannot add a line,
    # hide text or drive the terminal.
    return "\n".join(inert(line, None) for line in lines)


def _lesson_lines(ls: dict[str, Any], media: dict[str, Any]) -> list[str]:
    out = []
    cur, nxt = ls.get("current"), ls.get("next")
    if cur:
        who = ", ".join(x for x in (cur.get("course"), cur.get("teacher")) if x) or _("no course")
        out.append(_row(N_("Lesson"), _(
            "{lesson_id} ({who}, {role}) {state} for {elapsed}, {remaining} left").format(
            lesson_id=cur.get("lesson_id"), who=who, role=_(str(cur.get("role"))),
            state=_(str(cur.get("state"))), elapsed=_human_s(cur.get("elapsed_s")),
            remaining=_human_s(cur.get("remaining_s")))))
        rec = media.get("recording") or {}
        if rec:
            out.append(_row(N_("Recording"), _("{state}, {duration} ({bytes} bytes)").format(
                state=_(str(rec.get("state"))), duration=_human_s(rec.get("seconds")),
                bytes=rec.get("bytes", 0))))
        for sink in media.get("sinks") or []:
            out.append(_row(N_("Live"), _("{name}: {state} ({kbps:.0f} kbit/s)").format(
                name=sink.get("name"), state=_(str(sink.get("state"))),
                kbps=sink.get("bitrate_kbps") or 0)))
    else:
        out.append(_row(N_("Lesson"), _("none running")))
    if nxt:
        out.append(_row(N_("Next"), _("{lesson_id} ({course}) at {start}").format(
            lesson_id=nxt.get("lesson_id"), course=nxt.get("course"), start=nxt.get("start"))))
    return out


#: Words the daemon sends as values (lesson roles and states, recording and sink states),
#: translated where they are shown: listed here so the catalogs must have them.
STATE_WORDS = (N_("lecturing"), N_("receiving"), N_("live"), N_("ending"), N_("idle"),
               N_("recording"), N_("off"), N_("stopped"), N_("failed"), N_("connecting"),
               N_("down"))
