"""The status snapshot for people in a terminal: ``classroom-agent status``.

One line per concern, warnings last (worded by agent/status/warnings.py). Input is the snapshot's
JSON as the daemon served it, so this module needs nothing of the daemon and the CLI stays light.
"""

from __future__ import annotations

from typing import Any

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


def render_text(s: dict[str, Any]) -> str:
    """The snapshot for people: one line per concern, warnings last; every line inert."""
    a, d, b, ob, km = s["agent"], s["device"], s["broker"], s["outbox"], s["metrics"]
    name = f" ({d['name']})" if d.get("name") else ""
    lines = [
        f"classroom-agent {a['version']}: device {d['id']}{name}, school {d['school']}",
        f"  Agent       running, pid {a['pid']}, up {_human_s(a['uptime_s'])}, config "
        f"{a['config_path']} ({a['config_hash']})",
    ]
    tls = ", TLS" if b["tls"] else ""
    if b["connected"]:
        last = f", last delivery {b['last_puback']}" if b["last_puback"] else ""
        lines.append(f"  Broker      connected to {b['address']} (MQTT {b['protocol']}{tls}) since "
                     f"{b['connected_since']}{last}")
    else:
        retry = (f"; retrying in {b['next_attempt_in_s']:.0f}s"
                 if b["next_attempt_in_s"] is not None else "")
        lines.append(f"  Broker      NOT connected to {b['address']}{tls}: "
                     f"{b['last_error'] or 'connecting'}{retry}")
    oldest = f", oldest {_human_s(ob['oldest_age_s'])}" if ob["oldest_age_s"] else ""
    lines.append(f"  Outbox      {ob['depth']} waiting ({ob['bytes']} bytes){oldest}, "
                 f"{ob['dropped_total']} dropped, last seq {ob['last_seq']}")
    disks = ", ".join(f"{x['mount']} {x['percent']:.0f}%" for x in km["disks"]) or "-"
    cpu = f"{km['cpu_percent']:.0f}%" if km["cpu_percent"] is not None else "-"
    mem = f"{km['memory_percent']:.0f}%" if km["memory_percent"] is not None else "-"
    lines.append(f"  Machine     CPU {cpu}, memory {mem}, disks {disks}, "
                 f"up {_human_s(km['uptime_s'])}")
    off = s["telemetry"].get("classes_off") or []
    if off:
        lines.append(f"  Telemetry   turned off (telemetry.classes): {', '.join(off)}")
    p = s.get("peripherals") or {}
    if p:
        lines.append(f"  Peripherals {p.get('video', 0)} camera(s), {p.get('audio_inputs', 0)} "
                     f"microphone(s), {p.get('displays_connected', 0)} display(s), "
                     f"{p.get('usb', 0)} USB device(s)")
    lines.extend(_lesson_lines(s.get("lessons") or {}, s.get("media") or {}))
    sec = s.get("security") or {}
    if "signatures_required" in sec:
        mode = (f"signed only ({sec['public_keys']} public key(s))" if sec["signatures_required"]
                else "UNSIGNED accepted (commands.public_keys not set)")
        lines.append(f"  Commands    MQTT: {mode}, {sec['commands_rejected_total']} rejected")
    for t in km["netquality"]:
        state = f"{t['rtt_ms']:.1f} ms" if t.get("ok") else f"FAILED ({t.get('error')})"
        lines.append(f"  Network     {t['target']}: {state}")
    found = warning_lines(s)
    if found:
        lines.append("Warnings:")
        lines.extend(f"  ! {w}" for w in found)
    else:
        lines.append("No warnings: this terminal looks healthy.")
    # Course, teacher, errors, names: text from outside, printed so that it cannot add a line,
    # hide text or drive the terminal.
    return "\n".join(inert(line, None) for line in lines)


def _lesson_lines(ls: dict[str, Any], media: dict[str, Any]) -> list[str]:
    out = []
    cur, nxt = ls.get("current"), ls.get("next")
    if cur:
        who = ", ".join(x for x in (cur.get("course"), cur.get("teacher")) if x) or "no course"
        out.append(f"  Lesson      {cur.get('lesson_id')} ({who}, {cur.get('role')}) "
                   f"{cur.get('state')} for {_human_s(cur.get('elapsed_s'))}, "
                   f"{_human_s(cur.get('remaining_s'))} left")
        rec = media.get("recording") or {}
        if rec:
            out.append(f"  Recording   {rec.get('state')}, {_human_s(rec.get('seconds'))} "
                       f"({rec.get('bytes', 0)} bytes)")
        for sink in media.get("sinks") or []:
            out.append(f"  Live        {sink.get('name')}: {sink.get('state')} "
                       f"({sink.get('bitrate_kbps') or 0:.0f} kbit/s)")
    else:
        out.append("  Lesson      none running")
    if nxt:
        out.append(f"  Next        {nxt.get('lesson_id')} ({nxt.get('course')}) at "
                   f"{nxt.get('start')}")
    return out
