"""Fleet scale: N terminals, one Mosquitto, two collectors, one PostgreSQL, all on this machine.

The terminals run the agent's own code, many per process (bench/fleet_terminals.py): the real
outbox and publisher, lessons on a timetable with their evidence, the retained schedule and
missed-lesson reports; metrics every 10 s, usage every 15 min, a few events. They are named as
a region names them: ``--rooms-per-school`` rooms per school and the same room names in every
school (``room-101`` ...), so the MQTT client ids ``{school}.{device}`` must not collide (the
broker log is checked for take-overs). Mosquitto (persistence on, queues unbounded for the
collectors' persistent sessions), PostgreSQL (fsync on, ``track_commit_timestamp`` for the
delays) and the two collectors (``classroom-collector run``, one shared subscription) are
started here (tests/support.py, tests/platform_support.py).

Phases, each optional:
1. live (``--live-s``): records/s committed, p50/p95 delay from a record's ``ts`` to its commit,
   CPU and RSS of the collectors, PostgreSQL, Mosquitto and the terminal processes;
2. broker restart (``--restart-down-s``): connections per second while every terminal comes
   back (the agent's full-jitter back-off spreads them);
3. broker outage (``--outage-s``, 600 by default): the terminals keep recording into their
   outboxes; after it, time to drain and records/s into PostgreSQL while draining, with one
   collector SIGKILLed mid-drain and restarted (``--kill-down-s``);
4. collector capacity (``--capacity-records``): both collectors stopped, a backlog of that many
   of the agent's records queued at the broker (bench/collector_ingest.py's), both started:
   the records/s two collectors drain.
Every run ends by pausing the terminals, waiting for their outboxes to empty, and checking from
the database: 0 records lost (every terminal's seqs 1..last, no open gap), 0 duplicate rows,
nothing quarantined; lessons stored as the terminals reported them. Exit status 1 otherwise.

    python bench/fleet.py [--terminals 1000] [--per-process 100] [--outage-s 600] ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from _benchlib import ROOT, cpu_seconds, log, memory, process_count, sigterm_as_interrupt
from collector_ingest import publish_backlog, templates
from collector_validation import capture

from tests.platform_support import SEQ_TABLES, CollectorProcess, PostgresServer
from tests.support import Broker, wait_until

COURSES = ("数学", "语文", "英语", "科学", "音乐", "美术")
TEACHERS = ("王芳", "李明", "陈静", "张华", "赵强", "刘洋", "杨丽", "黄磊")
GROUP = "collectors"
#: Sequenced kinds in the database, for the counters (pg_stat_user_tables).
COUNTED = ("metrics_y%", "usage", "events", "inventories", "schedules", "other_records")


# -- the fleet's timetables ----------------------------------------------------------------------

def pick_timezone(now: float, span_s: float) -> str:
    """Asia/Shanghai, unless the bench would cross its local midnight (a timetable day ends
    there); then a zone where it does not."""
    for tz in ("Asia/Shanghai", "Europe/Berlin", "America/New_York"):
        a = datetime.fromtimestamp(now - 3600, ZoneInfo(tz))
        b = datetime.fromtimestamp(now + span_s + 3600, ZoneInfo(tz))
        if a.date() == b.date():
            return tz
    return "Asia/Shanghai"


def timetables(tz: str, now: float, span_s: float, variants: int, every_min: int,
               past_min: int) -> list[str]:
    """YAML timetables (docs/timetable.md) with one-minute lessons every ``every_min`` minutes
    today, from ``past_min`` minutes ago to the end of the run; variant ``v`` starts ``v``
    minutes later, so that schools do not all start at the same second."""
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    day = local.date()
    first = local.replace(second=0, microsecond=0) - timedelta(minutes=past_min)
    end = local + timedelta(seconds=span_s)
    span_min = (end - first).total_seconds() / 60
    every = max(every_min, int(span_min / 28) + 1, variants + 1)  # at most 30 lessons a day
    out = []
    for v in range(variants):
        lines, k = [], 0
        t = first + timedelta(minutes=v)
        while t < end and (t + timedelta(minutes=1)).date() == day:
            role = "receiving" if (k + v) % 3 == 2 else "lecturing"
            live = ", live: []" if role == "receiving" else ""
            lines.append(f"      - {{time: '{t:%H:%M}-{t + timedelta(minutes=1):%H:%M}', "
                         f"course: {COURSES[(k + v) % len(COURSES)]}, "
                         f"teacher: {TEACHERS[(k + 3 * v) % len(TEACHERS)]}, role: {role}{live}}}")
            t += timedelta(minutes=every)
            k += 1
        out.append(f"term: {{start: {day - timedelta(days=7)}, end: {day + timedelta(days=30)}}}\n"
                   "grids: {school: {p1: '08:00-08:40'}}\n"
                   f"overrides:\n  - date: {day}\n    add:\n" + "\n".join(lines) + "\n")
    return out


def lesson_count(yaml_text: str) -> int:
    return yaml_text.count("{time:")


# -- the terminal processes ----------------------------------------------------------------------

class Workers:
    """The processes of bench/fleet_terminals.py; one JSON command and answer a line each."""

    def __init__(self, workdir: Path, specs: list[dict[str, Any]]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()
        for i, spec in enumerate(specs):
            path = workdir / f"terminals-{i}.json"
            path.write_text(json.dumps(spec))
            err = open(workdir / f"terminals-{i}.log", "ab")  # noqa: SIM115 (the child's)
            self.procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fleet_terminals.py"), str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=ROOT, start_new_session=True))
            err.close()
        for p in self.procs:
            line = p.stdout.readline() if p.stdout else ""
            if not line:
                raise SystemExit("a terminal process failed to start: see "
                                 f"{workdir}/terminals-*.log")

    def ask(self, cmd: str) -> list[Any]:
        with self._lock:
            for p in self.procs:
                assert p.stdin is not None
                p.stdin.write(cmd + "\n")
                p.stdin.flush()
            out = []
            for p in self.procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                if not line:
                    raise SystemExit(f"terminal process {p.pid} died (exit {p.poll()})")
                out.append(json.loads(line))
            return out

    def status(self) -> dict[str, Any]:
        total: dict[str, Any] = {"connected": 0, "depth": 0, "inflight": 0, "terminals": 0}
        appended: Counter[str] = Counter()
        for s in self.ask("status"):
            for k in total:
                total[k] += s[k]
            appended.update(s["appended"])
        total["appended"] = appended
        return total

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def rss_mb(self) -> float:
        return sum(memory(p.pid).rss_kb for p in self.procs) / 1024

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop")
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def sequenced(appended: dict[str, int]) -> int:
    return sum(appended.get(k, 0) for k in ("metrics", "usage", "event", "schedule", "inventory"))


# -- measuring -----------------------------------------------------------------------------------

class Meter:
    """Records committed (PostgreSQL's own insert counters, at most a second behind), sampled
    once a second on a thread while a phase runs."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def inserted(self) -> int:
        like = " OR ".join(f"relname LIKE '{t}'" for t in COUNTED)
        row = self.conn.execute("SELECT COALESCE(sum(n_tup_ins), 0) FROM pg_stat_user_tables "
                                f"WHERE {like}").fetchone()
        return int(row[0]) if row else 0

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.inserted()))
            self._stop.wait(1.0)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.samples.append((time.monotonic(), self.inserted()))
        return self.samples


@dataclass
class Cpu:
    """CPU seconds of the platform's processes between two readings."""

    parts: dict[str, Callable[[], float]]
    start: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = {k: f() for k, f in self.parts.items()}

    def end(self) -> dict[str, float]:
        return {k: f() - self.start.get(k, 0.0) for k, f in self.parts.items()}


def rate_series(samples: list[tuple[float, int]], bin_s: float) -> list[int]:
    """Records/s in consecutive bins of ``bin_s`` seconds."""
    if len(samples) < 2:
        return []
    t0 = samples[0][0]
    out: list[int] = []
    for i in range(1, len(samples)):
        b = int((samples[i][0] - t0) // bin_s)
        while len(out) <= b:
            out.append(0)
        out[b] += samples[i][1] - samples[i - 1][1]
    return [round(x / bin_s) for x in out]


def histogram(times: list[float], t0: float, bin_s: float) -> list[int]:
    counts: Counter[int] = Counter(int((t - t0) // bin_s) for t in times if t >= t0)
    return [counts.get(i, 0) for i in range(max(counts, default=-1) + 1)]


def machine() -> dict[str, Any]:
    return {"load": [round(x, 1) for x in os.getloadavg()], "processes": process_count()}


def bars(values: list[int], bin_s: float, unit: str) -> str:
    """A small text histogram, one line a bin."""
    top = max(values, default=0) or 1
    return "\n".join(f"    {i * bin_s:6.0f}-{(i + 1) * bin_s:<6.0f}s {v:7d} {unit} "
                     f"{'#' * round(40 * v / top)}" for i, v in enumerate(values))


# -- the run -------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.results: dict[str, Any] = {"terminals": args.terminals,
                                        "batch_records": args.batch_records,
                                        "per_process": args.per_process,
                                        "collectors": args.collectors, "machine_start": machine()}
        self.pg = PostgresServer(settings={
            "fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
            "shared_buffers": "256MB", "max_wal_size": "2GB", "track_commit_timestamp": "on",
            "max_connections": "100"})
        self.broker = Broker(work / "broker", persistence=True, extra="\n".join([
            "autosave_interval 0",  # saved when it stops: a restart keeps every session
            "max_queued_messages 0", "max_inflight_messages 0", "log_type error",
            "log_type warning", "log_type notice", "connection_messages true",
            "log_timestamp true", "log_timestamp_format %Y-%m-%dT%H:%M:%S"]))
        self.collectors: list[CollectorProcess] = []
        self.workers: Workers | None = None
        self.url = ""
        self.extra = 0  # records stored besides the terminals' (the capacity backlog)

    # setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        log("capturing the real agent's payloads (a short run of classroom-agent)")
        captured = capture(self.work / "capture")
        by_kind = {k: json.loads(r)["data"] for k, r in captured if k in ("metrics", "usage")}
        by_kind["metrics"].pop("agent", None)  # each terminal writes its own
        (self.work / "templates.json").write_text(json.dumps(by_kind))
        self.backlog_templates = templates(captured)
        self.pg.start()
        self.url = self.pg.create_database("fleet")
        self.broker.start()
        log(f"PostgreSQL on {self.pg.port}, Mosquitto on {self.broker.port}")
        for i in range(a.collectors):
            c = CollectorProcess(self.work / f"collector{i}", self.broker.port, self.url,
                                 mqtt={"client_id": f"fleet-collector-{i}", "keepalive_s": 30,
                                       "reconnect_min_s": 1.0, "reconnect_max_s": 10.0},
                                 gaps={"sweep_interval_s": 1.0}, status={"interval_s": 5.0})
            self.collectors.append(c)
        self.collectors[0].migrate()
        for c in self.collectors:
            c.start()
        now = time.time()
        span = a.live_s + a.outage_s + 4 * a.restart_down_s + 1800
        tz = pick_timezone(now, span)
        tts = timetables(tz, now, span, a.timetables, a.lesson_every_min, a.past_min)
        names = [(f"school-{i // a.rooms_per_school + 1:04d}",
                  f"room-{101 + i % a.rooms_per_school}") for i in range(a.terminals)]
        rng = random.Random(a.seed)
        missed = {i for i in range(a.terminals) if rng.random() < a.missed_share}
        state_root = Path(tempfile.mkdtemp(prefix="fleet-terminals-", dir=a.state_root))
        self.state_root = state_root
        specs = []
        for p in range(0, a.terminals, a.per_process):
            chunk = range(p, min(p + a.per_process, a.terminals))
            specs.append({
                "port": self.broker.port, "seed": a.seed + p, "timezone": tz, "timetables": tts,
                "terminals": [[*names[i], (i // a.rooms_per_school) % len(tts)] for i in chunk],
                "missed": [i - p for i in chunk if i in missed],
                "missed_since": now - a.past_min * 60,
                "templates": str(self.work / "templates.json"), "state_root": str(state_root),
                "metrics_interval_s": a.metrics_interval_s,
                "usage_interval_s": a.usage_interval_s, "event_interval_s": a.event_interval_s,
                "keepalive_s": a.keepalive_s, "reconnect_min_s": 1.0,
                "reconnect_max_s": a.reconnect_max_s, "ramp_s": a.ramp_s, "flush_s": 2.0,
                "batch_records": a.batch_records})
        log(f"{a.terminals} terminals ({len(set(n[0] for n in names))} schools, "
            f"{a.rooms_per_school} rooms each) in {len(specs)} processes; timetables in {tz}, "
            f"{lesson_count(tts[0])} one-minute lessons each today; {len(missed)} terminals "
            f"report the lessons of the last {a.past_min} min as missed")
        self.workers = Workers(self.work, specs)
        self.cpu = Cpu({
            "collectors": lambda: sum(cpu_seconds(c.proc.pid) for c in self.collectors
                                      if c.proc is not None),
            "postgres": lambda: cpu_seconds(self.pg.proc.pid) if self.pg.proc else 0.0,
            "mosquitto": lambda: cpu_seconds(self.broker.proc.pid) if self.broker.proc else 0.0,
            "terminals": self.workers.cpu})
        self.meter = Meter(self.url)
        wait_until(lambda: self.workers is not None
                   and self.workers.status()["connected"] == a.terminals,
                   a.ramp_s + 120, "every terminal to connect", step=1.0)
        log(f"all {a.terminals} terminals connected")
        self.workers.ask("connects")  # the start's connections are not the restart's

    # phases --------------------------------------------------------------------------------

    def live(self) -> None:
        a = self.args
        assert self.workers is not None
        log(f"live: {a.live_s:.0f} s of normal traffic")
        before = self.workers.status()["appended"]
        self.cpu.begin()
        rss0 = self._collector_rss()
        t0, w0 = time.monotonic(), time.time()
        self.meter.start()
        time.sleep(a.live_s)
        samples = self.meter.stop()
        w1, span = time.time(), time.monotonic() - t0
        cpu = self.cpu.end()
        after = self.workers.status()["appended"]
        offered = sequenced(after) - sequenced(before)
        stored = samples[-1][1] - samples[0][1]
        p50, p95, n = self._delays(w0, w1 - 5)
        per_k = 1000 / a.terminals
        rss = self._collector_rss()
        self.results["live"] = {
            "seconds": round(span, 1), "offered_records_per_s": round(offered / span, 1),
            "stored_records_per_s": round(stored / span, 1),
            "delay_ts_to_commit_s": {"p50": p50, "p95": p95, "records": n},
            "cpu_share_of_a_core_per_1000_terminals": {
                k: round(v / span * per_k, 4) for k, v in cpu.items()},
            "collector_cpu_ms_per_record": round(cpu["collectors"] / max(stored, 1) * 1000, 3),
            "postgres_cpu_ms_per_record": round(cpu["postgres"] / max(stored, 1) * 1000, 3),
            "collector_rss_mb": [round(x, 1) for x in rss],
            "collector_rss_mb_at_start": [round(x, 1) for x in rss0],
            "terminal_processes_rss_mb": round(self.workers.rss_mb(), 1),
            "machine": machine()}
        r = self.results["live"]
        log(f"live: {r['stored_records_per_s']} records/s stored of {r['offered_records_per_s']} "
            f"offered; delay ts->commit p50 {p50} s, p95 {p95} s ({n} records); CPU per 1,000 "
            f"terminals (share of one core): {r['cpu_share_of_a_core_per_1000_terminals']}; "
            f"collector RSS {r['collector_rss_mb']} MB; {r['machine']}")

    def restart(self) -> None:
        a = self.args
        assert self.workers is not None
        log(f"broker restart: stopped for {a.restart_down_s:.0f} s")
        self.workers.ask("connects")
        self.broker.stop(timeout=120)
        time.sleep(a.restart_down_s)
        t0 = time.time()
        self.broker.start()
        connects = self._await_reconnects(a.reconnect_max_s * 2 + 60)
        self.results["restart"] = self._storm(connects, t0, "restart")

    def outage(self) -> None:
        a = self.args
        assert self.workers is not None
        log(f"broker outage: {a.outage_s:.0f} s; the terminals keep recording")
        self.workers.ask("connects")
        self.broker.stop(timeout=120)
        began = time.monotonic()
        while (left := a.outage_s - (time.monotonic() - began)) > 0:
            time.sleep(min(left, 60))
            st = self.workers.status()
            log(f"  outage: {time.monotonic() - began:.0f} s, {st['depth']:,} records waiting "
                "in the outboxes")
        backlog = self.workers.status()["depth"]
        self.cpu.begin()
        self.meter.start()
        t0, m0 = time.time(), time.monotonic()
        self.broker.start()
        log(f"broker back; {backlog:,} records to drain")
        killed = False
        kill_at = m0 + a.kill_after_s
        while True:
            st = self.workers.status()
            if not killed and a.kill_down_s >= 0 and time.monotonic() >= kill_at:
                killed = True
                self._kill_collector(a.kill_down_s)
            if st["depth"] == 0 and st["connected"] == a.terminals and (
                    killed or a.kill_down_s < 0):
                break
            if time.monotonic() - m0 > a.reconnect_max_s * 4 + 1200:
                raise SystemExit(f"the outage backlog did not drain: {st}")
            time.sleep(1.0)
        terminals_done = time.monotonic() - m0
        self._await_stored(sequenced(self.workers.status()["appended"]) + self.extra)
        drained = time.monotonic() - m0
        samples = self.meter.stop()
        cpu = self.cpu.end()
        connects = self.workers.ask("connects")
        series = rate_series(samples, a.bin_s)
        stored = samples[-1][1] - samples[0][1]
        self.results["outage"] = {
            "outage_s": a.outage_s, "backlog_records": backlog,
            "terminals_drained_s": round(terminals_done, 1),
            "all_stored_s": round(drained, 1),
            "records_per_s_while_draining": round(stored / drained, 1),
            "peak_records_per_s": max(series, default=0) if a.bin_s >= 1 else None,
            "stored_per_s_series": series, "bin_s": a.bin_s,
            "collector_cpu_ms_per_record": round(cpu["collectors"] / max(stored, 1) * 1000, 3),
            "postgres_cpu_ms_per_record": round(cpu["postgres"] / max(stored, 1) * 1000, 3),
            "reconnects": self._storm([t for c in connects for t in c], t0, "outage"),
            "collector_killed": killed, "machine": machine()}
        r = self.results["outage"]
        log(f"outage: {backlog:,} records drained: terminals emptied in "
            f"{r['terminals_drained_s']} s, all stored in {r['all_stored_s']} s, "
            f"{r['records_per_s_while_draining']:,} records/s (peak {r['peak_records_per_s']:,} "
            f"in a {a.bin_s:.0f}-s bin); records stored per second:\n"
            + bars(series, a.bin_s, "rec/s"))

    def capacity(self) -> None:
        a = self.args
        log(f"collector capacity: both collectors stopped, {a.capacity_records:,} records "
            "queued at the broker, both started")
        for c in self.collectors:
            c.stop()  # their persistent sessions stay: the broker queues for them
        publish_backlog(self.broker.port, a.capacity_records, 50, 1000,
                        self.backlog_templates, school_prefix="backlog",
                        batch_records=a.batch_records)
        self.extra += a.capacity_records
        before = self.meter.inserted()
        self.cpu.begin()
        self.meter.start()
        m0 = time.monotonic()
        for c in self.collectors:
            c.start(wait=False)
        target = before + a.capacity_records
        wait_until(lambda: self.meter.inserted() >= target, 3600, "the capacity backlog",
                   step=1.0)
        span = time.monotonic() - m0
        samples = self.meter.stop()
        cpu = self.cpu.end()
        series = rate_series(samples, a.bin_s)
        first = next((i for i, v in enumerate(series) if v), 0)
        self.results["capacity"] = {
            "records": a.capacity_records, "seconds_from_start": round(span, 1),
            "records_per_s": round(a.capacity_records / span),
            "records_per_s_after_first_commit": round(
                a.capacity_records / max(span - first * a.bin_s, 1e-3)),
            "peak_records_per_s": max(series, default=0),
            "collector_cpu_ms_per_record": round(cpu["collectors"] / a.capacity_records * 1000,
                                                 3),
            "postgres_cpu_ms_per_record": round(cpu["postgres"] / a.capacity_records * 1000, 3),
            "mosquitto_cpu_ms_per_record": round(cpu["mosquitto"] / a.capacity_records * 1000,
                                                 3),
            "machine": machine()}
        r = self.results["capacity"]
        log(f"capacity: {a.capacity_records:,} records in {r['seconds_from_start']} s: "
            f"{r['records_per_s']:,} records/s ({r['records_per_s_after_first_commit']:,} from "
            f"the first commit, peak {r['peak_records_per_s']:,}); CPU per record: collectors "
            f"{r['collector_cpu_ms_per_record']} ms, PostgreSQL {r['postgres_cpu_ms_per_record']}"
            f" ms, Mosquitto {r['mosquitto_cpu_ms_per_record']} ms; {r['machine']}")

    # checks --------------------------------------------------------------------------------

    def check(self) -> bool:
        """Pause the terminals, let everything drain, and compare the database with what every
        terminal's outbox issued."""
        import psycopg

        assert self.workers is not None
        log("final check: terminals paused, waiting for every outbox to empty")
        self.workers.ask("pause")
        wait_until(lambda: (lambda s: s["depth"] == 0 and s["inflight"] == 0)(
            self.workers.status()), 600, "the outboxes to empty", step=1.0)  # type: ignore[union-attr]
        final = self.workers.ask("final")
        expected = [row for f in final for row in f["terminals"]]
        appended: Counter[str] = Counter()
        for f in final:
            appended.update(f["appended"])
        self._await_stored(sum(row[2] for row in expected) + self.extra, timeout=300)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE TEMPORARY TABLE expected (school text, device text, "
                         "last_seq bigint, PRIMARY KEY (school, device))")
            with conn.cursor() as cur, cur.copy("COPY expected FROM STDIN") as copy:
                for school, device, last, _depth, _dropped in expected:
                    copy.write_row((school, device, last))
            union = " UNION ALL ".join(f"SELECT school, device, seq FROM {t}"
                                       for t in SEQ_TABLES)
            lost, extra, dup, stored = conn.execute(f"""
                WITH s AS ({union}), per AS (
                    SELECT e.school, e.device, e.last_seq,
                           count(s.seq) FILTER (WHERE s.seq BETWEEN 1 AND e.last_seq) AS n,
                           count(DISTINCT s.seq) FILTER (WHERE s.seq BETWEEN 1 AND e.last_seq)
                               AS distinct_n,
                           count(s.seq) FILTER (WHERE s.seq > e.last_seq) AS extra
                    FROM expected e LEFT JOIN s ON s.school = e.school AND s.device = e.device
                    GROUP BY 1, 2, 3)
                SELECT COALESCE(sum(last_seq - distinct_n), 0), COALESCE(sum(extra), 0),
                       COALESCE(sum(n - distinct_n), 0), COALESCE(sum(n), 0) FROM per
                """).fetchone()
            open_gaps = conn.execute("SELECT count(*) FROM seq_gaps s JOIN expected e "
                                     "USING (school, device) WHERE closed_at IS NULL"
                                     ).fetchone()[0]
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            reasons = conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1 "
                                   "ORDER BY 2 DESC LIMIT 3").fetchall()
            lessons = conn.execute("""
                SELECT count(*) FILTER (WHERE started_seq IS NOT NULL),
                       count(*) FILTER (WHERE ended_seq IS NOT NULL),
                       count(*) FILTER (WHERE missed_seq IS NOT NULL),
                       count(*) FILTER (WHERE planned)
                FROM lessons l JOIN expected e USING (school, device)""").fetchone()
            terminals_online = conn.execute(
                "SELECT count(*) FROM terminals t JOIN expected e USING (school, device) "
                "WHERE t.status = 'online'").fetchone()[0]
        takeovers = self.broker.log.read_text(errors="replace").count("already connected")
        dropped = sum(row[4] for row in expected)
        ok = (lost == 0 and extra == 0 and dup == 0 and open_gaps == 0 and quarantined == 0
              and takeovers == 0 and dropped == 0
              and lessons[0] == appended.get("lesson_started", 0)
              and lessons[1] == appended.get("lesson_ended", 0)
              and lessons[2] == appended.get("lesson_missed", 0))
        self.results["check"] = {
            "records_issued": sum(row[2] for row in expected), "records_stored": int(stored),
            "lost": int(lost), "duplicate_rows": int(dup), "unexpected": int(extra),
            "open_gaps": int(open_gaps), "quarantined": int(quarantined),
            "quarantine_reasons": [[r[0][:200], r[1]] for r in reasons],
            "dropped_by_outboxes": dropped, "client_id_takeovers": takeovers,
            "lessons": {"started": [lessons[0], appended.get("lesson_started", 0)],
                        "ended": [lessons[1], appended.get("lesson_ended", 0)],
                        "missed": [lessons[2], appended.get("lesson_missed", 0)],
                        "planned_rows": lessons[3]},
            "terminals_online": terminals_online, "ok": ok}
        c = self.results["check"]
        log(f"check: {c['records_issued']:,} records issued by {len(expected)} outboxes, "
            f"{c['records_stored']:,} stored; lost {c['lost']}, duplicate rows "
            f"{c['duplicate_rows']}, open gaps {c['open_gaps']}, quarantined {c['quarantined']}"
            f", dropped by outboxes {dropped}, client-id take-overs {takeovers}; lessons "
            f"(database, terminals): started {c['lessons']['started']}, ended "
            f"{c['lessons']['ended']}, missed {c['lessons']['missed']}, planned rows "
            f"{lessons[3]}: {'OK' if ok else 'FAILED'}")
        return ok

    # helpers -------------------------------------------------------------------------------

    def _collector_rss(self) -> list[float]:
        return [memory(c.proc.pid).rss_kb / 1024 for c in self.collectors if c.proc]

    def _delays(self, w0: float, w1: float) -> tuple[float | None, float | None, int]:
        """p50/p95 of commit time minus ``ts`` of the live metrics observed in [w0, w1]."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("""
                SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY d), count(*)
                FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) AS d
                      FROM metrics WHERE ts >= to_timestamp(%s) AND ts < to_timestamp(%s)
                        AND NOT historical) x""", (w0, w1)).fetchone()
        if not row or row[0] is None:
            return None, None, 0
        return round(row[0][0], 3), round(row[0][1], 3), int(row[1])

    def _await_reconnects(self, timeout: float) -> list[float]:
        assert self.workers is not None
        got: list[float] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += [t for c in self.workers.ask("connects") for t in c]
            if self.workers.status()["connected"] == self.args.terminals:
                got += [t for c in self.workers.ask("connects") for t in c]
                return got
            time.sleep(1.0)
        raise SystemExit(f"not every terminal reconnected within {timeout:.0f} s")

    def _storm(self, connects: list[float], t0: float, what: str) -> dict[str, Any]:
        a = self.args
        hist = histogram(connects, t0, a.storm_bin_s)
        last = max(connects, default=t0) - t0
        out = {"reconnections": len(connects), "all_back_after_s": round(last, 1),
               "peak_per_s": round(max(hist, default=0) / a.storm_bin_s, 1),
               "per_bin": hist, "bin_s": a.storm_bin_s, "machine": machine()}
        log(f"{what}: {len(connects)} reconnections, the last {last:.1f} s after the broker came "
            f"back, peak {out['peak_per_s']}/s; connections per {a.storm_bin_s:.0f} s:\n"
            + bars(hist, a.storm_bin_s, "conn"))
        return out

    def _kill_collector(self, down_s: float) -> None:
        c = self.collectors[-1]
        log(f"  SIGKILL {c.config['mqtt']['client_id']} mid-ingest; restarting it in "
            f"{down_s:.0f} s")
        c.kill()
        time.sleep(down_s)
        c.start(wait=False)

    def stored_total(self) -> int:
        """Sequenced records in the database (exact)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return int(conn.execute("SELECT " + " + ".join(f"(SELECT count(*) FROM {t})"
                                                          for t in SEQ_TABLES)).fetchone()[0])

    def _await_stored(self, target: int, timeout: float = 1800) -> bool:
        """Until ``target`` records are stored and the gap tracker has swept them (False on
        timeout: the check then says what is missing)."""
        import psycopg

        def done() -> bool:
            if self.stored_total() < target:
                return False
            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM arrivals").fetchone()[0] == 0

        try:
            wait_until(done, timeout, "the collectors to store everything", step=1.0)
            return True
        except AssertionError:
            log(f"  not everything was stored within {timeout:.0f} s")
            return False

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        for c in self.collectors:
            c.kill()
        self.broker.stop()
        self.pg.stop()
        with contextlib.suppress(Exception):
            shutil.rmtree(self.state_root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--per-process", type=int, default=100,
                    help="terminals per process (docs/scale.md: how many make sense)")
    ap.add_argument("--rooms-per-school", type=int, default=4)
    ap.add_argument("--collectors", type=int, default=2)
    ap.add_argument("--live-s", type=float, default=60.0)
    ap.add_argument("--restart-down-s", type=float, default=2.0,
                    help="broker restart: seconds stopped (negative: no restart phase)")
    ap.add_argument("--outage-s", type=float, default=600.0, help="0: no outage phase")
    ap.add_argument("--kill-after-s", type=float, default=10.0,
                    help="the collector is SIGKILLed this long after the broker is back")
    ap.add_argument("--kill-down-s", type=float, default=3.0,
                    help="and restarted after this long (negative: no kill)")
    ap.add_argument("--capacity-records", type=int, default=0)
    ap.add_argument("--metrics-interval-s", type=float, default=10.0)
    ap.add_argument("--usage-interval-s", type=float, default=900.0)
    ap.add_argument("--event-interval-s", type=float, default=1800.0,
                    help="mean time between peripheral events of one terminal")
    ap.add_argument("--reconnect-max-s", type=float, default=120.0,
                    help="the agent's mqtt.reconnect_max_s (its default: 120)")
    ap.add_argument("--keepalive-s", type=int, default=30)
    ap.add_argument("--batch-records", type=int, default=50,
                    help="the agent's mqtt.batch_records (1: every record alone), also for the "
                         "capacity backlog")
    ap.add_argument("--ramp-s", type=float, default=20.0, help="terminals start over this long")
    ap.add_argument("--timetables", type=int, default=3)
    ap.add_argument("--lesson-every-min", type=int, default=4)
    ap.add_argument("--past-min", type=int, default=6,
                    help="lessons this far back are reported missed by --missed-share")
    ap.add_argument("--missed-share", type=float, default=0.1)
    ap.add_argument("--bin-s", type=float, default=5.0)
    ap.add_argument("--storm-bin-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--state-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the terminals' state directories go (tmpfs by default)")
    ap.add_argument("--json", help="write the figures here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    sigterm_as_interrupt()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    run = Run(args, work)
    ok = False
    try:
        run.setup()
        if args.live_s > 0:
            run.live()
        if args.restart_down_s >= 0:
            run.restart()
        if args.outage_s > 0:
            run.outage()
        if args.capacity_records > 0:
            run.capacity()
        ok = run.check()
    finally:
        run.results["machine_end"] = machine()
        run.close()
        if args.json:
            Path(args.json).write_text(json.dumps(run.results, indent=1, default=str))
        print(json.dumps(run.results, default=str), flush=True)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
