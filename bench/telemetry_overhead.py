"""Telemetry overhead benchmark: our agent beside Glances and collectd, all publishing over MQTT.

Runs at the same time, against one private Mosquitto, at the same interval:
  agent     python -m agent run (telemetry.interval_s = --interval, everything else default)
  glances   glances --export mqtt --quiet -t INTERVAL (own venv in bench/.peers/glances)
  collectd  collectd -f (cpu memory df disk interface load processes uptime + mqtt)
and measures, over the window after a warm-up: CPU seconds (utime+stime of the process and its
children, from /proc/PID/stat), RSS (VmRSS at the end, VmHWM = peak since start), and what each
sends: MQTT messages and bytes (topic + payload + PUBLISH header, counted by a subscriber) and,
from ``ss -tin``, the TCP payload bytes of each client's connection.

``--processes 350,1000`` measures once per process count: the machine is brought to that many
processes by starting idle ones (``sleep``; the ones it starts are stopped at the end), and the
count is read from /proc through the window (a shared machine's own processes come and go), so
the table says at what count each figure was really measured. ``--repeat N`` runs every count N
times and reports the spread; the load average is printed beside every run.

Usage: python bench/telemetry_overhead.py [--minutes 5] [--interval 10] [--processes 350,1000]
       [--repeat 1] [--agent-python /opt/classroom-agent/venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _benchlib import (
    ROOT,
    ExecCounter,
    IdleProcesses,
    cpu_by_thread,
    cpu_seconds,
    descendants,
    ensure_apt,
    free_port,
    log,
    memory,
    mosquitto,
    process_count,
    scratch_dir,
    sigterm_as_interrupt,
    stop_process,
    tcp_bytes_by_pid,
    wait_port,
)

GLANCES_VENV = ROOT / "bench" / ".peers" / "glances"
# Checked here: Glances 4.5.8's MQTT export runs on paho-mqtt 2 (CallbackAPIVersion.VERSION2).
GLANCES_PINS = {"glances": "4.5.8", "paho-mqtt": "2.2.0", "certifi": None, "defusedxml": None}

# Issue 12: a Python agent as cheap as the C collector, on a classroom PC's process count.
TARGET_VS_GLANCES = 0.15
TARGET_VS_COLLECTD = 1.0
TARGET_RSS_MB = 30.0
#: Agent CPU may grow by at most this share from the lowest to the highest process count.
TARGET_GROWTH = 0.10

COVERAGE = {
    "agent": "cpu (total, per core, load), memory+swap, disks (physical mounts usage, per-disk "
             "I/O rates), network (per-NIC rates, errors, drops, link), sensors (temps, fans, "
             "battery), host (uptime, processes, sessions), per-app usage (teaching apps "
             "running/active: an incremental /proc table and the kernel's exec events), "
             "peripherals (cameras, microphones, displays, USB), network probe (TCP connect RTT "
             "to the broker), the agent's own health; QoS 1 from a durable SQLite outbox (fsync "
             "per tick)",
    "glances": "Glances defaults: cpu, percpu, load, mem, memswap, fs, diskio, network, sensors, "
               "processcount, processlist (top processes), programlist, system, uptime, ip, "
               "irq, wifi, raid, smart, containers, ports, ...; one JSON per plugin (per-plugin "
               "topics), QoS 0, no local buffering",
    "collectd": "cpu (jiffies per state per core), memory, df, disk, interface, load, processes "
                "(counts by state), uptime; one value list per message, QoS 0, no buffering",
}


# --- installs ---------------------------------------------------------------------------------


def ensure_glances() -> Path:
    """A venv with the pinned Glances + paho-mqtt; returns its ``glances`` executable."""
    exe = GLANCES_VENV / "bin" / "glances"
    py = GLANCES_VENV / "bin" / "python"
    want = {k: v for k, v in GLANCES_PINS.items() if v}
    if py.exists():
        check = "import importlib.metadata as m; print(" + ",".join(
            f"m.version({k!r})" for k in want) + ")"
        out = subprocess.run([str(py), "-c", check], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.split() == list(want.values()) and exe.exists():
            return exe
    specs = [f"{k}=={v}" if v else k for k, v in GLANCES_PINS.items()]
    log(f"glances: creating {GLANCES_VENV} and installing {' '.join(specs)}")
    subprocess.run([sys.executable, "-m", "venv", str(GLANCES_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *specs],
                   check=True)
    return exe


# --- counting what each peer publishes ----------------------------------------------------------


@dataclass
class Traffic:
    messages: int = 0
    bytes: int = 0
    topics: set[str] = field(default_factory=set)


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2_097_152 else 4


class Counter:
    """A paho subscriber counting each peer's messages and MQTT bytes by topic prefix."""

    def __init__(self, port: int, prefixes: dict[str, str], family: Callable[[str, str], str]):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefixes = prefixes
        self.family = family
        self.lock = threading.Lock()
        self.traffic = {peer: Traffic() for peer in prefixes}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-count-{port}")
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # QoS 1: the delivered QoS is then the publisher's own, which sets its header size.
        self.client.subscribe([(f"{p}/#", 1) for p in prefixes.values()])
        if not self._subscribed.wait(10):
            raise TimeoutError("the counting subscriber got no SUBACK")

    def _on_message(self, _c: object, _u: object, msg: object) -> None:
        topic: str = msg.topic  # type: ignore[attr-defined]
        payload: bytes = msg.payload  # type: ignore[attr-defined]
        qos: int = msg.qos  # type: ignore[attr-defined]
        if msg.retain:  # type: ignore[attr-defined]
            return  # a retained copy from before we subscribed, not new traffic
        for peer, prefix in self.prefixes.items():
            if topic.startswith(prefix + "/"):
                t = len(topic.encode())
                # PUBLISH: fixed header + topic length + topic + packet id (QoS > 0) + payload;
                # MQTT 5 adds a property length byte (ours speaks 5; the peers 3.1.1).
                body = 2 + t + (2 if qos else 0) + len(payload) + (1 if peer == "agent" else 0)
                size = 1 + _varint_len(body) + body + (4 if qos else 0)  # + PUBACK for QoS 1
                with self.lock:
                    tr = self.traffic[peer]
                    tr.messages += 1
                    tr.bytes += size
                    tr.topics.add(self.family(peer, topic[len(prefix) + 1:]))
                return

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            return {p: (t.messages, t.bytes) for p, t in self.traffic.items()}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def topic_family(peer: str, rest: str) -> str:
    """A short name of what a topic carries: our kind, Glances' plugin, collectd's plugin."""
    parts = rest.split("/")
    if peer == "agent":
        return parts[-1]  # {school}/{device}/{kind}
    if peer == "glances":
        return parts[1] if len(parts) > 1 else rest  # {host}/{plugin}[/...]
    return parts[1].split("-")[0] if len(parts) > 1 else rest  # {host}/{plugin-inst}/{type}


# --- the peers --------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    argv: list[str]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    cpu0: float = 0.0
    cpu1: float = 0.0
    rss_max_kb: int = 0
    rss_kb: int = 0
    hwm_kb: int = 0
    tcp0: tuple[int, int] | None = None
    tcp1: tuple[int, int] | None = None
    msgs0: tuple[int, int] = (0, 0)
    msgs1: tuple[int, int] = (0, 0)
    threads0: dict[int, tuple[str, float]] = field(default_factory=dict)
    threads1: dict[int, tuple[str, float]] = field(default_factory=dict)


def write_configs(
    work: Path, port: int, interval: float, structure: str
) -> tuple[dict[str, Path], int]:
    """Config files of the three peers; also returns the agent's status port."""
    (work / "agent-state").mkdir()
    status_port = free_port()
    agent = work / "agent.yaml"
    agent.write_text(f"""\
device: {{id: bench-pc, school: bench-school}}
mqtt: {{host: 127.0.0.1, port: {port}}}
state_dir: {work / "agent-state"}
telemetry: {{interval_s: {interval}}}
status: {{listen: "127.0.0.1:{status_port}", socket: "{work}/control.sock"}}
log_level: warning
""")
    glances = work / "glances.conf"
    glances.write_text(f"""\
[global]
check_update=false
[mqtt]
host=127.0.0.1
port={port}
tls=false
user=glances
password=bench
topic=glances
topic_structure={structure}
""")
    cdir = work / "collectd"
    cdir.mkdir()
    plugins = ["cpu", "memory", "df", "disk", "interface", "load", "processes", "uptime"]
    collectd = work / "collectd.conf"
    collectd.write_text(f"""\
Hostname "bench"
FQDNLookup false
BaseDir "{cdir}"
PIDFile "{cdir}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
Interval {interval}
LoadPlugin logfile
<Plugin logfile>
  LogLevel "warning"
  File STDERR
</Plugin>
{chr(10).join(f"LoadPlugin {p}" for p in plugins)}
LoadPlugin mqtt
<Plugin mqtt>
  <Publish "bench">
    Host "127.0.0.1"
    Port "{port}"
    ClientId "collectd-bench"
    Prefix "collectd"
  </Publish>
</Plugin>
""")
    return {"agent": agent, "glances": glances, "collectd": collectd}, status_port


def collectd_binary() -> str:
    return shutil.which("collectd") or "/usr/sbin/collectd"


def sample_all(peers: list[Peer], port: int, counter: Counter, start: bool) -> None:
    tcp = tcp_bytes_by_pid(port)
    msgs = counter.snapshot()
    for p in peers:
        assert p.proc is not None
        cpu = cpu_seconds(p.proc.pid)
        pids = set(descendants(p.proc.pid))
        t = None
        if tcp is not None:
            mine = [v for pid, v in tcp.items() if pid in pids]
            t = (sum(s for s, _ in mine), sum(r for _, r in mine)) if mine else None
        threads = cpu_by_thread(p.proc.pid) if p.name == "agent" else {}
        if start:
            p.cpu0, p.tcp0, p.msgs0, p.threads0 = cpu, t, msgs[p.name], threads
        else:
            p.cpu1, p.tcp1, p.msgs1, p.threads1 = cpu, t, msgs[p.name], threads


def watch_memory(peers: list[Peer]) -> None:
    for p in peers:
        assert p.proc is not None
        m = memory(p.proc.pid)
        p.rss_kb, p.hwm_kb = m.rss_kb or p.rss_kb, max(m.hwm_kb, p.hwm_kb)
        p.rss_max_kb = max(p.rss_max_kb, m.rss_kb)


def check_alive(peers: list[Peer], work: Path) -> None:
    for p in peers:
        assert p.proc is not None
        if p.proc.poll() is not None:
            tail = (work / f"{p.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{tail}")


@dataclass
class RunResult:
    """One measured run at one process count: CPU s/h and RSS per peer, and the conditions."""

    target: int
    procs: list[int]
    load: list[float]
    cpu_h: dict[str, float]
    rss_mb: dict[str, float]
    ok: bool
    execs_per_s: float | None = None
    agent_threads_h: dict[str, float] = field(default_factory=dict)


def report(peers: list[Peer], window: float, interval: float, counter: Counter) -> bool:
    n_int = window / interval
    by = {p.name: p for p in peers}
    rows = []
    print()
    print(f"Telemetry overhead over {window:.0f} s ({n_int:.1f} intervals of {interval:g} s), "
          "measured after the warm-up")
    print(f"{'peer':<9} {'CPU s':>7} {'CPU s/h':>8} {'CPU %':>6} {'RSS MB':>7} {'peak MB':>7} "
          f"{'msgs/int':>8} {'MQTT B/int':>10} {'TCP B/int':>10} {'topics':>6}")
    for p in peers:
        cpu = p.cpu1 - p.cpu0
        msgs = (p.msgs1[0] - p.msgs0[0]) / n_int
        mqtt_b = (p.msgs1[1] - p.msgs0[1]) / n_int
        tcp = "-"
        if p.tcp0 is not None and p.tcp1 is not None:
            tcp = f"{(sum(p.tcp1) - sum(p.tcp0)) / n_int:,.0f}"
        topics = len(counter.traffic[p.name].topics)
        rows.append((p.name, cpu))
        print(f"{p.name:<9} {cpu:7.2f} {cpu / window * 3600:8.1f} {cpu / window * 100:6.2f} "
              f"{p.rss_kb / 1024:7.1f} {p.hwm_kb / 1024:7.1f} {msgs:8.1f} {mqtt_b:10,.0f} "
              f"{tcp:>10} {topics:>6}")
    print("RSS = VmRSS at the end, peak = VmHWM (since start, includes start-up). MQTT B/int = "
          "topic + payload + PUBLISH header (+ PUBACK) as the subscriber saw them, not TCP bytes;"
          " TCP B/int = TCP payload both ways of the client's connection(s) to the broker "
          "(ss -tin bytes_sent + bytes_received), without TCP/IP headers.")
    ok = True
    agent = by.get("agent")
    if agent is not None:
        a_cpu = agent.cpu1 - agent.cpu0
        for name, target, cmp in (("glances", TARGET_VS_GLANCES, "<="),
                                  ("collectd", TARGET_VS_COLLECTD, "<=")):
            if name in by:
                other = by[name].cpu1 - by[name].cpu0
                ratio = a_cpu / other if other > 0 else float("inf")
                hit = ratio <= target
                ok &= hit
                print(f"agent/{name} CPU = {ratio:.2f} (target {cmp} {target:g}): "
                      f"{'met' if hit else 'MISSED'}")
        rss_mb = max(agent.rss_kb, agent.hwm_kb) / 1024
        hit = rss_mb <= TARGET_RSS_MB
        ok &= hit
        print(f"agent RSS peak {rss_mb:.1f} MB (target <= {TARGET_RSS_MB:g} MB): "
              f"{'met' if hit else 'MISSED'}")
    print()
    print("What each peer covers (so the comparison is honest):")
    for p in peers:
        seen = ", ".join(sorted(counter.traffic[p.name].topics))
        print(f"  {p.name}: {COVERAGE[p.name]}")
        print(f"    topics seen: {seen}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="measured window")
    ap.add_argument("--interval", type=float, default=10.0, help="collection interval (s)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds skipped before measuring (default: one interval, >= 15 s)")
    ap.add_argument("--peers", default="agent,glances,collectd", help="which peers to run")
    ap.add_argument("--glances-topics", default="per-plugin", choices=["per-plugin", "per-metric"],
                    help="Glances' topic_structure (per-plugin is closest to ours)")
    ap.add_argument("--processes", default="",
                    help="comma-separated process counts to measure at (idle processes are "
                         "started to reach each); default: as the machine is")
    ap.add_argument("--repeat", type=int, default=1, help="runs per process count")
    ap.add_argument("--agent-python", default=sys.executable,
                    help="interpreter to run the agent with, e.g. a production venv's made as "
                         "scripts/install.sh makes it (default: this one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    try:
        counts = [int(x) for x in args.processes.split(",") if x.strip()] or [0]
    except ValueError:
        ap.error(f"--processes wants comma-separated integers, got {args.processes!r}")
    names = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(names) - set(COVERAGE)
    if unknown:
        ap.error(f"unknown peers: {', '.join(sorted(unknown))}")
    warmup = args.warmup if args.warmup is not None else max(args.interval, 15.0)
    window = args.minutes * 60
    sigterm_as_interrupt()

    apt = ["mosquitto", "iproute2"] + (["collectd-core"] if "collectd" in names else [])
    ensure_apt(apt)
    glances = ensure_glances() if "glances" in names else None

    idle = IdleProcesses()
    results: list[RunResult] = []
    try:
        for n in range(max(1, args.repeat)):
            for target in counts:
                if target:
                    idle.reach(target)
                log(f"run {n + 1}/{args.repeat} at {process_count()} processes "
                    f"(target {target or 'as is'}), load average {_load()}")
                with scratch_dir("telemetry-overhead-", args.keep) as work, \
                        mosquitto(work) as port:
                    results.append(run(work, port, names, glances, args.interval, warmup,
                                       window, args.glances_topics, target, args.agent_python))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        idle.stop()
    return 0 if summary(results, args.interval) else 1


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(results: list[RunResult], interval: float) -> bool:
    """The issue's table: one row per run, then the spread and the targets over all runs."""
    ok = all(r.ok for r in results)
    print()
    print(f"Summary at {interval:g} s intervals (CPU s/h over each run's window; processes = "
          "min-max counted in /proc during the window; load = 1-min load average at start/end; "
          "exec/s = program starts on the whole machine, which the agent's usage-events thread "
          "follows)")
    print("| run | processes | load | exec/s | agent CPU s/h (of which usage-events) | Glances | "
          f"collectd | agent/Glances (<= {TARGET_VS_GLANCES:g}) | agent/collectd "
          f"(<= {TARGET_VS_COLLECTD:g}) | agent RSS (<= {TARGET_RSS_MB:g} MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        a, g, c = (r.cpu_h.get(k) for k in ("agent", "glances", "collectd"))
        ev = r.agent_threads_h.get("usage-events")
        print(f"| ~{r.target or 'as is'} | {min(r.procs)}-{max(r.procs)} | "
              f"{r.load[0]:.2f}/{r.load[-1]:.2f} | {_f(r.execs_per_s, 1)} | {_f(a)} "
              f"({_f(ev)}) | {_f(g)} | {_f(c)} | {_ratio(a, g)} | {_ratio(a, c)} | "
              f"{_f(r.rss_mb.get('agent'))} MB |")
    by_target: dict[int, list[float]] = {}
    for r in results:
        if "agent" in r.cpu_h:
            by_target.setdefault(r.target, []).append(r.cpu_h["agent"])
    for target, xs in by_target.items():
        if len(xs) > 1:
            print(f"agent at ~{target or 'as is'} processes: median {statistics.median(xs):.2f}"
                  f" CPU s/h, spread {min(xs):.2f}-{max(xs):.2f} over {len(xs)} runs")
    if len(by_target) > 1:
        lo, hi = min(by_target), max(by_target)
        growth = statistics.median(by_target[hi]) / statistics.median(by_target[lo]) - 1
        hit = growth <= TARGET_GROWTH
        ok &= hit
        print(f"agent CPU growth {lo} -> {hi} processes: {growth:+.0%} (medians; target <= "
              f"{TARGET_GROWTH:+.0%}): {'met' if hit else 'MISSED'}")
    return ok


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def run(work: Path, port: int, names: list[str], glances: Path | None, interval: float,
        warmup: float, window: float, structure: str, target: int,
        agent_python: str) -> RunResult:
    """Start the peers on the broker at ``port``, measure, report; stops them whatever happens."""
    confs, status_port = write_configs(work, port, interval, structure)
    argv = {
        "agent": [agent_python, "-m", "agent", "run", "--config", str(confs["agent"])],
        "glances": [str(glances), "--export", "mqtt", "--quiet", "-t", f"{interval:g}",
                    "-C", str(confs["glances"])],
        "collectd": [collectd_binary(), "-f", "-C", str(confs["collectd"])],
    }
    peers: list[Peer] = []
    logs = []
    counter = Counter(port, {"agent": "classroom/v1", "glances": "glances",
                             "collectd": "collectd"}, topic_family)
    try:
        for name in names:
            # The agent runs from the checkout, unless another interpreter (a venv with the agent
            # installed) is given: then from elsewhere, so that it imports the installed one.
            here = ROOT if name == "agent" and agent_python == sys.executable else work
            peer = Peer(name, argv[name], here)
            fh = open(work / f"{name}.log", "wb")  # noqa: SIM115  closed in finally
            logs.append(fh)
            peer.proc = subprocess.Popen(peer.argv, cwd=peer.cwd, stdout=fh, stderr=fh,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            peers.append(peer)
            log(f"started {name} (pid {peer.proc.pid}): {' '.join(peer.argv)}")
        if "agent" in names:
            wait_port(status_port, timeout=30, proc=peers[names.index("agent")].proc)

        log(f"warm-up {warmup:g} s")
        end_warm = time.monotonic() + warmup
        while time.monotonic() < end_warm:
            check_alive(peers, work)
            watch_memory(peers)
            time.sleep(1)
        execs = ExecCounter()
        sample_all(peers, port, counter, start=True)
        procs, load = [process_count()], [os.getloadavg()[0]]
        t0 = time.monotonic()
        execs0 = execs.drain()
        log(f"measuring for {window:g} s")
        every = interval * max(1, round(30 / interval))
        next_progress = t0 + every
        while (now := time.monotonic()) < t0 + window:
            check_alive(peers, work)
            watch_memory(peers)
            procs.append(process_count())
            execs.drain()
            if now >= next_progress:
                next_progress += every
                msgs = counter.snapshot()
                parts = []
                for p in peers:
                    assert p.proc is not None
                    cpu = cpu_seconds(p.proc.pid) - p.cpu0
                    parts.append(f"{p.name} cpu {cpu:.2f}s msgs {msgs[p.name][0] - p.msgs0[0]}")
                log(f"t={now - t0:5.0f}s  " + "; ".join(parts)
                    + f"; {procs[-1]} processes, load {_load()}")
            time.sleep(min(1.0, max(0.0, t0 + window - now)))
        exec_rate = (execs.drain() - execs0) / (time.monotonic() - t0) if execs.sock else None
        execs.close()
        sample_all(peers, port, counter, start=False)
        measured = time.monotonic() - t0
        load.append(os.getloadavg()[0])
        watch_memory(peers)
        ok = report(peers, measured, interval, counter)
        print(f"processes during the window: {min(procs)}-{max(procs)} "
              f"(mean {statistics.fmean(procs):.0f}); load average {load[0]:.2f} at the start, "
              f"{load[-1]:.2f} at the end; program starts (exec) on the machine: "
              + (f"{exec_rate:.1f}/s" if exec_rate is not None else f"unknown ({execs.why})"))
        threads: dict[str, float] = {}
        for p in peers:
            if p.name == "agent":
                for tid, (name, cpu) in p.threads1.items():  # per thread, summed by name
                    before = p.threads0.get(tid, (name, 0.0))[1]
                    threads[name] = threads.get(name, 0.0) + (cpu - before) / measured * 3600
                print("agent CPU s/h by thread: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])))
        return RunResult(target, procs, load,
                         {p.name: (p.cpu1 - p.cpu0) / measured * 3600 for p in peers},
                         {p.name: max(p.rss_kb, p.hwm_kb) / 1024 for p in peers}, ok,
                         exec_rate, threads)
    finally:
        for p in peers:
            stop_process(p.proc, p.name)
        counter.stop()
        for fh in logs:
            fh.close()


if __name__ == "__main__":
    sys.exit(main())
