"""The status snapshot for people in a terminal: ``classroom-agent status``.

One line per concern, warnings last (worded by agent/status/warnings.py). Input is the snapshot's
JSON as the daemon served it, so this module needs nothing of the daemon and the CLI stays light.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from agent.i18n import N_, Translate, _
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


#: The rows of ``status`` (and the page's subsystems): id and label, in order.
ROWS = [("agent", N_("Agent")), ("broker", N_("Broker")), ("outbox", N_("Outbox")),
        ("machine", N_("Machine")), ("telemetry", N_("Telemetry")),
        ("peripherals", N_("Peripherals")), ("ffmpeg", N_("FFmpeg")), ("camera", N_("Camera")),
        ("microphone", N_("Microphone")), ("lesson", N_("Lesson")),
        ("recording", N_("Recording")), ("live", N_("Live")), ("next", N_("Next")),
        ("upload", N_("Upload")),
        ("commands", N_("Commands")), ("network", N_("Network"))]


def summaries(s: dict[str, Any], tr: Translate = _) -> dict[str, list[str]]:
    """One or more lines per row id, in the language of ``tr``; rows with nothing to say are
    absent. The CLI prints them with their labels; the page shows them under its subsystems."""
    a, b, ob, km = s["agent"], s["broker"], s["outbox"], s["metrics"]
    out: dict[str, list[str]] = {}
    out["agent"] = [tr("running, pid {pid}, up {uptime}, config {path} ({hash})").format(
        pid=a["pid"], uptime=_human_s(a["uptime_s"]), path=a["config_path"],
        hash=a["config_hash"])]
    tls = ", TLS" if b["tls"] else ""
    if b["connected"]:
        text = tr("connected to {address} (MQTT {protocol}{tls}) since {since}").format(
            address=b["address"], protocol=b["protocol"], tls=tls, since=b["connected_since"])
        if b["last_puback"]:
            text += tr(", last delivery {at}").format(at=b["last_puback"])
    else:
        text = tr("NOT connected to {address}{tls}: {error}").format(
            address=b["address"], tls=tls, error=b["last_error"] or tr("connecting"))
        if b["next_attempt_in_s"] is not None:
            text += tr("; retrying in {seconds:.0f}s").format(seconds=b["next_attempt_in_s"])
    out["broker"] = [text]
    text = tr("{depth} waiting ({bytes} bytes)").format(depth=ob["depth"], bytes=ob["bytes"])
    if ob["oldest_age_s"]:
        text += tr(", oldest {age}").format(age=_human_s(ob["oldest_age_s"]))
    text += tr(", {dropped} dropped, last seq {seq}").format(dropped=ob["dropped_total"],
                                                            seq=ob["last_seq"])
    out["outbox"] = [text]
    disks = ", ".join(f"{x['mount']} {x['percent']:.0f}%" for x in km["disks"]) or "-"
    cpu = f"{km['cpu_percent']:.0f}%" if km["cpu_percent"] is not None else "-"
    mem = f"{km['memory_percent']:.0f}%" if km["memory_percent"] is not None else "-"
    out["machine"] = [tr("CPU {cpu}, memory {memory}, disks {disks}, up {uptime}").format(
        cpu=cpu, memory=mem, disks=disks, uptime=_human_s(km["uptime_s"]))]
    off = s["telemetry"].get("classes_off") or []
    if off:
        out["telemetry"] = [tr("turned off (telemetry.classes): {classes}").format(
            classes=", ".join(off))]
    p = s.get("peripherals") or {}
    if p:
        out["peripherals"] = [tr(
            "{cameras} camera(s), {microphones} microphone(s), {displays} display(s), {usb} USB "
            "device(s)").format(cameras=p.get("video", 0), microphones=p.get("audio_inputs", 0),
                                displays=p.get("displays_connected", 0), usb=p.get("usb", 0))]
    ff = s.get("ffmpeg") or {}
    if ff.get("version"):
        out["ffmpeg"] = [tr("{version} ({choice}: {path})").format(**ff)]
        enc = ff.get("encoder") or {}
        if enc.get("codec"):
            out["ffmpeg"].append(tr("H.264 encoder {codec}: {reason}").format(
                codec=enc["codec"], reason=enc.get("reason", "")))
    out.update(_lesson_rows(s.get("lessons") or {}, s.get("media") or {}, tr))
    if (s.get("upload") or {}).get("enabled"):
        out["upload"] = [_upload_text(s["upload"], tr)]
    elif "upload" in s:  # the page's card says so instead of standing empty
        out["upload"] = [tr("off (upload.enabled, endpoint and bucket not set): "
                            "recordings stay on this PC")]
    sec = s.get("security") or {}
    if "signatures_required" in sec:
        if not sec["signatures_required"]:
            mode = tr("UNSIGNED accepted (commands.public_keys not set)")
        elif sec["public_keys"]:
            mode = tr("signed only ({keys} public key(s))").format(keys=sec["public_keys"])
        else:
            mode = tr("none accepted (signatures required, no public key set)")
        out["commands"] = [tr("MQTT: {mode}, {rejected} rejected").format(
            mode=mode, rejected=sec["commands_rejected_total"])]
    nets = [f"{t['target']}: " + (f"{t['rtt_ms']:.1f} ms" if t.get("ok")
                                 else tr("FAILED ({error})").format(error=t.get("error")))
            for t in km["netquality"]]
    if nets:
        out["network"] = nets
    return out


def render_text(s: dict[str, Any], tr: Translate = _) -> str:
    """The snapshot for people: one line per concern, warnings last; every line inert. Words
    in the CLI's language (agent/i18n.py) unless ``tr`` says otherwise."""
    d = s["device"]
    head = (tr("classroom-agent {version}: device {device} ({name}), school {school}")
            if d.get("name") else tr("classroom-agent {version}: device {device}, school {school}"))
    lines = [head.format(version=s["agent"]["version"], device=d["id"], name=d.get("name"),
                         school=d["school"])]
    rows = summaries(s, tr)
    for row, label in ROWS:
        lines.extend(f"  {pad(tr(label))}{text}" for text in rows.get(row, []))
    found = warning_lines(s, tr)
    if found:
        lines.append(tr("Warnings:"))
        lines.extend(f"  ! {w}" for w in found)
    else:
        lines.append(tr("No warnings: this terminal looks healthy."))
    # Course, teacher, errors, names: text from outside, printed so that it cannot add a line,
    # hide text or drive the terminal.
    return "\n".join(inert(line, None) for line in lines)


def _lesson_rows(ls: dict[str, Any], media: dict[str, Any], tr: Translate) -> dict[str,
                                                                                  list[str]]:
    out: dict[str, list[str]] = {}
    cur, nxt = ls.get("current"), ls.get("next")
    if cur:
        who = ", ".join(x for x in (cur.get("course"), cur.get("teacher")) if x) or tr(
            "no course")
        out["lesson"] = [tr(
            "{lesson_id} ({who}, {role}) {state} for {elapsed}, {remaining} left").format(
            lesson_id=cur.get("lesson_id"), who=who, role=tr(str(cur.get("role"))),
            state=tr(str(cur.get("state"))), elapsed=_human_s(cur.get("elapsed_s")),
            remaining=_human_s(cur.get("remaining_s")))]
        rec = media.get("recording") or {}
        if rec:
            out["recording"] = [tr("{state}, {duration} ({bytes} bytes)").format(
                state=tr(str(rec.get("state"))), duration=_human_s(rec.get("seconds")),
                bytes=rec.get("bytes", 0))]
        sinks = [tr("{name}: {state} ({kbps:.0f} kbit/s)").format(
            name=sink.get("name"), state=tr(str(sink.get("state"))),
            kbps=sink.get("bitrate_kbps") or 0) for sink in media.get("sinks") or []]
        if sinks:
            out["live"] = sinks
    else:
        out["lesson"] = [tr("none running")]
    if nxt:
        out["next"] = [tr("{lesson_id} ({course}) at {start}").format(
            lesson_id=nxt.get("lesson_id"), course=nxt.get("course"), start=nxt.get("start"))]
    return out


#: Words the daemon sends as values (lesson roles and states, recording and sink states),
#: translated where they are shown: listed here so the catalogs must have them.
STATE_WORDS = (N_("lecturing"), N_("receiving"), N_("live"), N_("ending"), N_("idle"),
               N_("recording"), N_("off"), N_("stopped"), N_("failed"), N_("connecting"),
               N_("down"), N_("uploading"), N_("waiting"))


def _upload_text(u: dict[str, Any], tr: Translate) -> str:
    mb = 1_000_000
    cur = u.get("current")
    if u.get("state") == "uploading" and isinstance(cur, dict):
        lesson, _sep, name = str(cur.get("key", "")).rpartition("/")
        now = tr("uploading {lesson} {name} {sent:.1f}/{total:.1f} MB at {kbps:.0f} kbit/s"
                 ).format(lesson=lesson.rpartition("/")[2], name=name,
                          sent=(cur.get("bytes_sent") or 0) / mb,
                          total=(cur.get("bytes_total") or 0) / mb, kbps=cur.get("rate_kbps") or 0)
    elif u.get("state") == "paused":
        now = tr("paused: {why}").format(why=u.get("paused"))
    elif isinstance(u.get("last_error"), dict):
        now = tr("FAILING ({cause})").format(cause=u["last_error"].get("cause"))
        retry = u.get("next_attempt_in_s")
        if isinstance(retry, int | float):
            now += tr(", retrying in {seconds:.0f}s").format(seconds=retry)
    else:
        now = tr(str(u.get("state")))
    cap = u.get("max_kbps")
    return tr("{now}; {queued} lesson(s) waiting ({mb:.1f} MB), {uploaded} uploaded, cap {cap}"
              ).format(now=now, queued=u.get("queued_lessons", 0),
                       mb=(u.get("queued_bytes") or 0) / mb, uploaded=u.get("uploaded_lessons", 0),
                       cap=tr("{kbps} kbit/s").format(kbps=cap) if cap else tr("none"))
