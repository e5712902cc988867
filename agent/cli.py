"""Command line: ``run``, ``status``, ``page``, ``doctor``, ``config check``,
``lesson start|stop``, ``devices``.

Output for people by default, ``--json`` for scripts. Exit codes: 0 fine; 1 running but with
warnings (``status``, ``doctor``) or the agent refused the command (``lesson``), or no device
listing (``devices``); 2 bad usage or bad configuration, or a failed ``doctor`` check; 3 the
daemon is not running. ``--lang`` (or the locale) picks English or Chinese (agent/i18n.py).

``lesson`` and ``page`` talk to the running agent over its local control socket
(agent/control.py), so they work without a broker; exit 4 means this user may not (not in the
socket's group).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from agent import __version__, config, i18n
from agent.i18n import N_, _
from agent.safetext import inert

#: The clock check's NTP server (``doctor --ntp``); one that answers in China.
DEFAULT_NTP = "ntp.aliyun.com"
#: ``doctor --only`` choices (agent/doctor/command.py's CHECKS; a test keeps them equal).
CHECK_IDS = ("state_dir", "disk", "secrets", "broker", "clock", "devices", "ffmpeg", "live",
             "service", "agent")

EXIT_OK, EXIT_WARN, EXIT_CONFIG, EXIT_NOT_RUNNING, EXIT_NOT_ALLOWED = 0, 1, 2, 3, 4


def _lang_arg(argv: list[str]) -> str | None:
    """``--lang`` read before the parser is built, so that its help is in that language too."""
    for i, a in enumerate(argv):
        if a.startswith("--lang="):
            return a.split("=", 1)[1]
        if a == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    i18n.use(i18n.pick(_lang_arg(argv)))
    # The parser is garbage once it has parsed, instead of living as long as the daemon.
    return _dispatch(_parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classroom-agent",
        description=_("Edge agent of a classroom teaching terminal: telemetry over MQTT."),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--lang", choices=i18n.LANGUAGES,
                        help=_("language of the output (default: from LANG/LC_ALL/LC_MESSAGES)"))
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help=_("run the agent in the foreground (systemd runs this)"))
    p_run.add_argument("--config", default=str(config.DEFAULT_PATH), help=_("config file"))

    p_status = sub.add_parser("status", help=_("show what the running agent is doing"))
    p_status.add_argument("--config", default=str(config.DEFAULT_PATH), help=_("config file"))
    p_status.add_argument("--json", action="store_true", help=_("machine-readable output"))

    p_page = sub.add_parser("page", help=_("print the address of the status page with its key "
                                           "(camera snapshot, microphone level)"))
    p_page.add_argument("--config", default=str(config.DEFAULT_PATH), help=_("config file"))

    p_lesson = sub.add_parser("lesson", help=_("start or stop a lesson on the running agent"))
    lesson_sub = p_lesson.add_subparsers(dest="lesson_command", required=True)
    p_start = lesson_sub.add_parser("start", help=_("start a lesson now"))
    p_start.add_argument("--course", help=_("course name"))
    p_start.add_argument("--teacher", help=_("teacher's name"))
    p_start.add_argument("--role", choices=("lecturing", "receiving"),
                         help=_("lecturing: this room teaches; receiving: it follows a remote one"))
    p_start.add_argument("--duration", type=float, metavar="SECONDS",
                         help=_("stop by itself after this many seconds (10 to 86400)"))
    p_stop = lesson_sub.add_parser("stop", help=_("stop the running lesson"))
    for p in (p_start, p_stop):
        p.add_argument("--config", default=str(config.DEFAULT_PATH), help=_("config file"))
        p.add_argument("--json", action="store_true", help=_("print the agent's reply as JSON"))

    p_doc = sub.add_parser("doctor", help=_("check everything this terminal needs, with fixes"))
    p_doc.add_argument("--config", default=str(config.DEFAULT_PATH), help=_("config file"))
    p_doc.add_argument("--json", action="store_true", help=_("machine-readable output"))
    p_doc.add_argument("--ntp", default=DEFAULT_NTP, metavar="SERVER[:PORT]",
                       help=_("NTP server for the clock check, or 'off' (default {server})")
                       .format(server=DEFAULT_NTP))
    p_doc.add_argument("--only", type=lambda t: [x for x in t.split(",") if x],
                       metavar="CHECK,...",
                       help=_("run only these checks: {checks}").format(
                           checks=", ".join(CHECK_IDS)))

    p_dev = sub.add_parser("devices", help=_("list the cameras and microphones of this PC and "
                                             "the FFmpeg the agent uses"))
    p_dev.add_argument("--json", action="store_true", help=_("machine-readable output"))
    p_dev.add_argument("--config", default=str(config.DEFAULT_PATH),
                       help=_("config file (media.ffmpeg and media.live); defaults if missing"))

    p_cfg = sub.add_parser("config", help=_("configuration tools"))
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True)
    p_check = cfg_sub.add_parser("check", help=_("validate a config file"))
    p_check.add_argument("path")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args.config)
    if args.command == "status":
        return _status(args.config, args.json)
    if args.command == "page":
        return _page(args.config)
    if args.command == "lesson":
        if args.lesson_command == "start":
            return _command(args.config, "lesson_start", args.json, {
                "course": args.course, "teacher": args.teacher, "role": args.role,
                "duration_s": args.duration})
        return _command(args.config, "lesson_stop", args.json)
    if args.command == "doctor":
        from agent.doctor import command

        return command.main(args.config, args.json, args.ntp, args.only)
    if args.command == "devices":
        return _devices(args.json, args.config)
    return _check(args.path)


def _load_or_report(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(_("classroom-agent: invalid configuration:"), file=sys.stderr)
        for problem in exc.problems:  # they quote the file: one inert line each
            print(inert(problem, None), file=sys.stderr)
        say(_("Next step: fix the lines above; `classroom-agent config check {path}` re-checks "
              "without starting.").format(path=path), file=sys.stderr)
        return None


#: Optional packages that a library of the daemon imports whenever they are installed, for a
#: feature the agent never uses: paho-mqtt imports dnspython for ``connect_srv()`` (DNS SRV
#: lookup of the broker). A development venv has dnspython (aiortc needs it): 1.5-4.5 MB of RSS.
NOT_IN_THE_DAEMON = ("dns",)


def keep_out_of_the_daemon() -> None:
    """Make ``import`` of :data:`NOT_IN_THE_DAEMON` fail in this process as if they were not
    installed (a None entry in ``sys.modules`` is Python's documented way). paho-mqtt imports
    dnspython in ``try: ... except ImportError`` and works without it, as in a production venv
    (which has no dnspython). Only the daemon's process does this, never a library import:
    another program may need them. tests/test_import_budget.py checks what the daemon loads."""
    for name in NOT_IN_THE_DAEMON:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def _run(path: str) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    from agent.safetext import InertFormatter

    handler = logging.StreamHandler(sys.stderr)
    # journald adds the time; every message is one line with outside text made inert.
    handler.setFormatter(InertFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler])
    keep_out_of_the_daemon()
    from agent import daemon  # heavy imports only for `run`

    try:
        return daemon.run(cfg, path)
    except OSError as exc:
        logging.getLogger("agent").error(
            "cannot start: %s. Next step: check state_dir (%s) permissions and that nothing "
            "else listens on %s.", exc, cfg.state_dir, cfg.status.listen)
        return 1


def _check(path: str) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    tls = ", TLS" if cfg.mqtt.tls.active else ""
    say(_("{path}: OK: device {device} at school {school}, broker {host}:{port}{tls}, state in "
          "{state_dir}, config hash {hash}").format(
        path=path, device=cfg.device.id, school=cfg.device.school, host=cfg.mqtt.host,
        port=cfg.mqtt.port, tls=tls, state_dir=cfg.state_dir, hash=cfg.hash))
    return EXIT_OK


def _status(path: str, as_json: bool) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    from agent.status import client

    host, port = cfg.status.address
    try:
        snap = client.fetch(cfg)
    except (OSError, ValueError) as exc:
        return _not_running(f"{host}:{port}", exc, as_json, url=client.status_url(cfg))
    snap["running"] = True
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        from agent.status.text import render_text

        print(render_text(snap))
    return EXIT_OK if snap.get("ok") else EXIT_WARN


def _page(path: str) -> int:
    """The status page's address with this run's key, for root and the socket's group only."""
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    from agent.status import client

    sock = cfg.status.socket
    try:
        url = client.page_address(cfg)
    except PermissionError:
        return _not_allowed(sock, False)
    except (OSError, ValueError) as exc:
        return _not_running(sock, exc, False)
    say(_("Status page of this terminal (the key changes when the agent restarts; do not share "
          "it with pupils):"))
    print(inert(url, None))
    return EXIT_OK


def _command(path: str, name: str, as_json: bool, cmd_args: dict[str, Any] | None = None) -> int:
    """Send one command to the running agent over its local control socket."""
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    from agent import control

    sock = cfg.status.socket
    try:
        reply = control.send(sock, name, control.request_body(cmd_args))
    except PermissionError:
        return _not_allowed(sock, as_json)
    except OSError as exc:  # no socket, nobody listening, no answer in time
        return _not_running(sock, exc, as_json)
    if as_json:
        print(json.dumps(reply, indent=2))  # ASCII: no byte of it can drive a terminal
    elif reply.get("ok"):
        say(_done_sentence(name, reply.get("result") or {}))
    else:
        err = reply.get("error") or {}
        say(_("The agent refused {command}: {message} ({code}).").format(
            command=name, message=err.get("message", _("no reason given")),
            code=err.get("code", "unknown")))
    return EXIT_OK if reply.get("ok") else EXIT_WARN


def _not_allowed(sock: str, as_json: bool) -> int:
    """The socket refused this user: say who may, and how a technician gets there."""
    import grp
    import os

    try:
        group = grp.getgrgid(os.stat(sock).st_gid).gr_name
    except (OSError, KeyError):
        group = "classroom-agent"
    if as_json:
        print(json.dumps({"running": True, "ok": False, "error": {
            "code": "not_allowed",
            "message": f"{sock} is only for root and members of the group {group}"}}))
    else:
        say(_("You may not control this agent: {socket} is only for root and members of the "
              "group {group}.").format(socket=sock, group=group))
        say(_("Next step: an administrator adds you with `usermod -aG {group} $USER` (then log "
              "in again), or run the command with sudo.").format(group=group))
    return EXIT_NOT_ALLOWED


def _done_sentence(name: str, result: dict[str, Any]) -> str:
    what = {"lesson_start": _("Lesson started"), "lesson_stop": _("Lesson stopped"),
            "report_now": _("Report published")}.get(name, _("{command} done").format(
                command=name))
    details = ", ".join(f"{_(RESULT_WORDS.get(k, k.replace('_', ' ')))} {v}"
                        for k, v in result.items()
                        if isinstance(v, str | int | float) and not isinstance(v, bool))
    return f"{what}: {details}." if details else f"{what}."


#: The lesson evidence's keys as people read them (agent/lessons/manager.py's ``_identity`` and
#: ``lesson_ended``); others are shown with '_' as a space, untranslated.
RESULT_WORDS = {
    "lesson_id": N_("lesson id"), "course": N_("course"), "teacher": N_("teacher"),
    "role": N_("role"), "trigger": N_("trigger"), "scheduled_start": N_("scheduled start"),
    "scheduled_end": N_("scheduled end"), "actual_start": N_("actual start"),
    "actual_end": N_("actual end"), "planned_duration_s": N_("planned duration s"),
    "duration_s": N_("duration s"), "ended_by": N_("ended by"), "recorded_s": N_("recorded s"),
    "continues": N_("continues"),
}


def _media_config(path: str) -> config.MediaConfig | None:
    """media.* of ``path``, the defaults when there is no such file, None when it is invalid."""
    import os

    if not os.path.exists(path):
        return config.MediaConfig()
    cfg = _load_or_report(path)
    return cfg.media if cfg is not None else None


def _devices(as_json: bool, path: str) -> int:
    """List cameras and microphones with the media part's own discovery (no agent needed), and
    the FFmpeg the agent would use with what this configuration needs of it."""
    media = _media_config(path)
    if media is None:
        return EXIT_CONFIG
    try:
        from agent.media import devices
        from agent.media.ffmpeg import report
        from agent.urls import live_kinds
    except ImportError as exc:
        say(_("classroom-agent: cannot list devices: the media part is missing from this "
              "installation ({error}). Next step: reinstall or upgrade the agent "
              "(scripts/install.sh).").format(error=exc), file=sys.stderr)
        return EXIT_WARN
    try:
        found = {"cameras": [_plain(d) for d in devices.list_cameras()],
                 "microphones": [_plain(d) for d in devices.list_microphones()],
                 "ffmpeg": report(media.ffmpeg, live_kinds(media.live))}
    except Exception as exc:
        say(_("classroom-agent: listing devices failed: {error}. Next step: check that this "
              "user is in the video and audio groups.").format(
            error=f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_WARN
    if as_json:
        print(json.dumps(found, indent=2, default=str))  # ASCII: device names are outside text
        return EXIT_OK if found["ffmpeg"].get("ok") else EXIT_WARN
    for title, items in ((_("{count} camera(s)"), found["cameras"]),
                         (_("{count} microphone(s)"), found["microphones"])):
        problems = [i["error"] for i in items if isinstance(i, dict) and i.get("error")]
        items = [i for i in items if not (isinstance(i, dict) and i.get("error"))]
        say(title.format(count=len(items)) + (":" if items else "."))
        for item in items:
            say(f"  - {_device_line(item)}")
        for why in problems:
            say(f"  ! {why}")
    for line in _ffmpeg_lines(found["ffmpeg"]):
        say(line)
    return EXIT_OK if found["ffmpeg"].get("ok") else EXIT_WARN


def _ffmpeg_lines(ff: dict[str, Any]) -> list[str]:
    if not ff.get("version"):
        return [_("FFmpeg ({choice}): ! {error}").format(choice=ff.get("choice"),
                                                        error=ff.get("error"))]
    needs = ff.get("needs") or {}
    pusher = ff.get("pusher") or {}
    lines = [
        _("FFmpeg {version} ({choice}: {path})").format(**ff),
        _("  needs: {needs}").format(needs="; ".join(f"{k} {', '.join(v)}"
                                                     for k, v in needs.items())),
        _("  hardware H.264 encoders built in: {names}").format(
            names=", ".join(ff.get("hardware_encoders") or []) or "-"),
        _("  keeps SRT passphrases off the command line (-fpre): {answer}").format(
            answer=_("yes") if ff.get("preset_options") else _("no")),
    ]
    if pusher.get("pyav"):
        lines.append(_("  RTMP pusher: PyAV {pyav} (libavformat {libavformat})").format(**pusher))
    elif pusher.get("error"):
        lines.append(_("  ! RTMP pusher: {error}").format(error=pusher["error"]))
    if ff.get("error"):
        lines.append(f"  ! {ff['error']}")
    return lines


def _plain(item: Any) -> Any:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return item if isinstance(item, dict | str | int | float) else str(item)


def _device_line(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    label = next((str(item[k]) for k in ("name", "label", "description") if item.get(k)), "")
    where = next((str(item[k]) for k in ("path", "device", "node", "index")
                  if item.get(k) not in (None, "")), "")
    line = f"{label} ({where})" if label and where else label or where or json.dumps(item)
    extra = []
    modes = [m for m in item.get("modes") or [] if isinstance(m, dict) and m.get("width")]
    if modes:
        best = max(modes, key=lambda m: m["width"] * m.get("height", 0))
        extra.append(_("up to {width}x{height}").format(width=best["width"],
                                                        height=best.get("height", "?")))
    if item.get("rates"):
        extra.append(_("rates {rates} Hz").format(rates="/".join(f"{r:g}" for r in item["rates"])))
    if item.get("note"):
        extra.append(str(item["note"]))
    return f"{line}: {'; '.join(extra)}" if extra else line


def say(line: str, file: Any = None) -> None:
    """Print one line of output that may quote outside text (names, messages): inertly, so it
    can neither add a line nor drive the terminal (agent/safetext.py)."""
    print(inert(line, None), file=file or sys.stdout)


def _not_running(where: str, exc: BaseException, as_json: bool, url: str | None = None) -> int:
    """Nothing answers on the status address or the control socket: say so, and what next."""
    reason = getattr(exc, "reason", exc)
    if as_json:
        doc: dict[str, Any] = {"running": False, "error": str(reason)}
        doc["url" if url else "socket"] = url or where
        print(json.dumps(doc))
    else:
        say(_("classroom-agent is NOT running (nothing answers on {where}: {reason}).")
            .format(where=where, reason=reason))
        print(_("Next step: `systemctl status classroom-agent` and "
                "`journalctl -u classroom-agent -n 50` show why."))
    return EXIT_NOT_RUNNING
