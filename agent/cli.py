"""Command line: ``run``, ``status`` and ``config check``.

Output for people by default, ``--json`` for scripts. Exit codes: 0 fine; 1 running but with
warnings (``status``); 2 bad usage or bad configuration; 3 the daemon is not running.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request

from agent import __version__, config

EXIT_OK, EXIT_WARN, EXIT_CONFIG, EXIT_NOT_RUNNING = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="classroom-agent",
        description="Edge agent of a classroom teaching terminal: telemetry over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    p_run.add_argument("--config", default=str(config.DEFAULT_PATH), help="config file")

    p_status = sub.add_parser("status", help="show what the running agent is doing")
    p_status.add_argument("--config", default=str(config.DEFAULT_PATH), help="config file")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")

    p_cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True)
    p_check = cfg_sub.add_parser("check", help="validate a config file")
    p_check.add_argument("path")

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "status":
        return _status(args.config, args.json)
    return _check(args.path)


def _load_or_report(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"classroom-agent: invalid configuration:\n{exc}", file=sys.stderr)
        print("Next step: fix the lines above; `classroom-agent config check "
              f"{path}` re-checks without starting.", file=sys.stderr)
        return None


def _run(path: str) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    logging.basicConfig(
        level=cfg.log_level.upper(), stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",  # journald adds the time
    )
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
    print(f"{path}: OK: device {cfg.device.id} at school {cfg.device.school}, broker "
          f"{cfg.mqtt.host}:{cfg.mqtt.port}{tls}, state in {cfg.state_dir}, "
          f"config hash {cfg.hash}")
    return EXIT_OK


def _status(path: str, as_json: bool) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    host, port = cfg.status.address
    url = f"http://{host}:{port}/status.json"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            snap = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if as_json:
            print(json.dumps({"running": False, "error": str(reason), "url": url}))
        else:
            print(f"classroom-agent is NOT running (nothing answers on {host}:{port}: {reason}).")
            print("Next step: `systemctl status classroom-agent` and "
                  "`journalctl -u classroom-agent -n 50` show why.")
        return EXIT_NOT_RUNNING
    snap["running"] = True
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        from agent.status import render_text

        print(render_text(snap))
    return EXIT_OK if snap.get("ok") else EXIT_WARN
