"""Command line of ``classroom-collector``: ``run``, ``migrate``, ``status``, ``report``,
``config check``.

Exit codes: 0 fine; 1 running with warnings (``status``) or a failure; 2 bad usage or bad
configuration; 3 the database cannot be reached. Each subcommand is one entry of
:data:`SUBCOMMANDS` (its parser and its handler), so a new one (``report``) is one more entry.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from collector import __version__, config

EXIT_OK, EXIT_WARN, EXIT_CONFIG, EXIT_DB = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace], int]


def _load(path: str) -> config.CollectorConfig | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"classroom-collector: invalid configuration:\n{exc}", file=sys.stderr)
        print(f"Next step: fix the lines above; `classroom-collector config check {path}` "
              "re-checks without starting.", file=sys.stderr)
        return None


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")  # journald adds the time


def _db_failed(exc: Exception, cfg: config.CollectorConfig) -> int:
    host = cfg.database.url.split("@")[-1].split("?")[0]
    print(f"classroom-collector: cannot use the database at {host}: "
          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}\n"
          "Next step: check database.url, that PostgreSQL runs and accepts this user "
          "(database.password_file or PGPASSFILE).", file=sys.stderr)
    return EXIT_DB


# -- run ---------------------------------------------------------------------------------------

def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(config.DEFAULT_PATH), help="config file")


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    _logging(cfg.log_level)
    from collector.service import Collector  # paho, psycopg: only for the commands using them

    return Collector(cfg).run()


# -- migrate -----------------------------------------------------------------------------------

def _migrate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    _logging(cfg.log_level)
    import psycopg

    from collector import migrate, service, storage

    try:
        with storage.connect(cfg, "classroom-collector migrate") as conn:
            applied = migrate.migrate(conn)
            service.housekeeping(conn, cfg)
    except psycopg.OperationalError as exc:
        return _db_failed(exc, cfg)
    if applied:
        print("applied: " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    else:
        print("the database is up to date")
    return EXIT_OK


# -- status ------------------------------------------------------------------------------------

def _add_status(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    import psycopg

    from collector import migrate, storage

    try:
        with storage.connect(cfg, "classroom-collector status") as conn:
            snap = _snapshot(conn, cfg, [m.version for m in migrate.pending(conn)])
    except psycopg.OperationalError as exc:
        return _db_failed(exc, cfg)
    if args.json:
        print(json.dumps(snap, indent=2, default=str))
    else:
        print(_render(snap))
    return EXIT_WARN if snap["warnings"] else EXIT_OK


def _snapshot(conn: Any, cfg: config.CollectorConfig, pending: list[int]) -> dict[str, Any]:
    snap: dict[str, Any] = {"version": __version__, "pending_migrations": pending,
                            "instances": [], "warnings": []}
    if pending:
        snap["warnings"].append(f"{len(pending)} migration(s) not applied. Next step: "
                                "classroom-collector migrate")
        return snap
    stale_after = 3 * cfg.status.interval_s + 10
    for row in conn.execute(
            """SELECT client_id, host, pid, version, started_at, heartbeat_at, stats,
                      extract(epoch FROM now() - heartbeat_at)
               FROM collector_instances ORDER BY client_id"""):
        inst = {"client_id": row[0], "host": row[1], "pid": row[2], "version": row[3],
                "started_at": row[4], "heartbeat_at": row[5], "stats": row[6],
                "heartbeat_age_s": float(row[7]), "alive": float(row[7]) <= stale_after}
        snap["instances"].append(inst)
    terminals = conn.execute("""SELECT count(*), count(*) FILTER (WHERE status = 'online')
                                FROM terminals""").fetchone()
    gap = conn.execute("""SELECT count(*), COALESCE(sum(last_seq - first_seq + 1), 0),
                                 count(*) FILTER (WHERE lost_at IS NOT NULL),
                                 count(*) FILTER (WHERE explained IS NOT NULL)
                          FROM seq_gaps WHERE closed_at IS NULL""").fetchone()
    quarantine = conn.execute("""SELECT count(*) FROM quarantine
                                 WHERE received_at > now() - interval '1 day'""").fetchone()
    backlog = conn.execute("SELECT count(*) FROM arrivals").fetchone()
    snap.update(terminals=terminals[0], online=terminals[1], open_gaps=gap[0],
                missing_seqs=int(gap[1]), lost_gaps=gap[2], explained_gaps=gap[3],
                quarantined_24h=quarantine[0], gap_queue=backlog[0])
    if not any(i["alive"] for i in snap["instances"]):
        snap["warnings"].append("no collector has written a heartbeat for "
                                f"{stale_after:.0f} s. Next step: systemctl status "
                                "classroom-collector; journalctl -u classroom-collector")
    if gap[2]:
        snap["warnings"].append(f"{gap[2]} gap(s) reported as lost. Next step: see seq_gaps "
                                "WHERE lost_at IS NOT NULL; check those terminals' outbox "
                                "drops and the broker's max_queued_messages")
    if quarantine[0]:
        snap["warnings"].append(f"{quarantine[0]} message(s) quarantined in the last day. "
                                "Next step: SELECT topic, reason FROM quarantine ORDER BY id "
                                "DESC LIMIT 20")
    return snap


def _render(snap: dict[str, Any]) -> str:
    lines = [f"classroom-collector {snap['version']}"]
    if snap["pending_migrations"]:
        lines.append(f"  Database    migrations pending: {snap['pending_migrations']}")
    for inst in snap["instances"]:
        st = inst["stats"].get("ingest", {})
        state = "alive" if inst["alive"] else "silent"
        lines.append(f"  Instance    {inst['client_id']} on {inst['host']} (pid {inst['pid']}): "
                     f"{state}, heartbeat {inst['heartbeat_age_s']:.0f} s ago; "
                     f"{st.get('stored', 0)} stored, {st.get('duplicates', 0)} duplicates, "
                     f"{st.get('quarantined', 0)} quarantined")
    if "terminals" in snap:
        lines.append(f"  Terminals   {snap['terminals']} known, {snap['online']} online")
        lines.append(f"  Gaps        {snap['open_gaps']} open ({snap['missing_seqs']} seqs "
                     f"missing), {snap['lost_gaps']} lost, {snap['explained_gaps']} explained; "
                     f"{snap['gap_queue']} arrivals waiting for the gap tracker")
        lines.append(f"  Quarantine  {snap['quarantined_24h']} in the last 24 h")
    lines += [f"Warning: {w}" for w in snap["warnings"]] or ["No warnings."]
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------

FORMATS = ("json", "csv", "html")


def _add_report(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--month", required=True, help="the month, YYYY-MM (local time)")
    p.add_argument("--school", help="only this school (its id)")
    p.add_argument("--format", choices=FORMATS, default="json")
    p.add_argument("--out", help="write to this file instead of standard output")


def _report(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    import psycopg

    from collector import migrate, storage
    from collector.reports import build, render
    from collector.reports.calendar import ReportError

    def say(msg: str) -> None:
        print(f"report {args.month}: {msg}", file=sys.stderr, flush=True)

    try:
        with storage.connect(cfg, "classroom-collector report") as conn:
            pending = migrate.pending(conn)
            if pending:
                print(f"classroom-collector report: the database lacks {len(pending)} "
                      "migration(s). Next step: classroom-collector migrate", file=sys.stderr)
                return EXIT_DB
            report = build.build(conn, cfg.reports, args.month, args.school, progress=say)
    except ReportError as exc:
        print(f"classroom-collector report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except psycopg.OperationalError as exc:
        return _db_failed(exc, cfg)
    text = render.RENDERERS[args.format](report)
    if args.out:
        render.write_atomic(args.out, text)
        say(f"{args.format.upper()} written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


# -- config check ------------------------------------------------------------------------------

def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")


def _check(args: argparse.Namespace) -> int:
    cfg = _load(args.path)
    if cfg is None:
        return EXIT_CONFIG
    tls = ", TLS" if cfg.mqtt.tls.active else ""
    host = cfg.database.url.split("@")[-1].split("?")[0]
    print(f"{args.path}: OK: broker {cfg.mqtt.host}:{cfg.mqtt.port}{tls} as "
          f"{cfg.mqtt.effective_client_id()}, subscription {cfg.subscription.topic}, "
          f"database {host}")
    return EXIT_OK


#: (name, help, add its arguments, handler)
SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = [
    ("run", "ingest in the foreground (systemd runs this)", _add_run, _run),
    ("migrate", "create or upgrade the database tables (safe to run again)", _add_run,
     _migrate),
    ("status", "what the collectors are doing: instances, gaps, quarantine", _add_status,
     _status),
    ("report", "a month's figures per terminal, school and teacher (JSON, CSV or HTML)",
     _add_report, _report),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="classroom-collector",
        description="Platform side of classroom-agent: MQTT records into PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for name, help_text, add, handler in SUBCOMMANDS:
        add(sub.add_parser(name, help=help_text))
        handlers[name] = handler
    p_cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True)
    _add_check(cfg_sub.add_parser("check", help="validate a config file"))
    handlers["config"] = _check
    args = parser.parse_args(argv)
    return handlers[args.command](args)


