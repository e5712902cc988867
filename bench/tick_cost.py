"""Where a telemetry tick's CPU goes: each collector, the usage scan, the commit, the idle loop;
and how often each thread of the real agent wakes.

Times every part of the agent's tick in this process (CPU time, ``time.thread_time``), N ticks,
and the CPU that the publisher thread burns while there is nothing to send (read from
/proc/self/task/TID/stat), against a private Mosquitto. It explains telemetry_overhead's figures.

Then it runs the real daemon (``python -m agent run``) twice on that broker, idle (nothing to
send: ``telemetry.interval_s`` 3600, no lesson) and at ``--interval``, and reports per thread the
voluntary context switches per second (each is a wake-up: a timer, a poll, an event, a lock or an
fsync wait), the involuntary ones and the CPU, from /proc/PID/task/*/{status,stat,comm}.

Usage: python bench/tick_cost.py [--ticks 50] [--idle 20] [--wakes 60] [--interval 10]
       [--processes N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _benchlib import (
    ROOT,
    IdleProcesses,
    ensure_apt,
    free_port,
    log,
    mosquitto,
    process_count,
    sigterm_as_interrupt,
    stop_process,
    wait_port,
)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(median, mean) CPU milliseconds of ``fn`` over ``n`` calls."""
    samples = []
    for _ in range(n):
        t = time.thread_time()
        fn()
        samples.append((time.thread_time() - t) * 1000)
    return statistics.median(samples), statistics.fmean(samples)


@dataclass
class Task:
    name: str
    voluntary: int
    involuntary: int
    cpu_s: float


def tasks(pid: int) -> dict[int, Task]:
    """Every thread of ``pid``: its kernel name and counters."""
    out: dict[int, Task] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
            with open(f"{base}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"{base}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(tid)] = Task(name if int(tid) != pid else "main",
                             int(status["voluntary_ctxt_switches"]),
                             int(status["nonvoluntary_ctxt_switches"]),
                             (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


def agent_wakes(port: int, tmp: Path, interval: float, seconds: float) -> None:
    """Run the real daemon at ``interval`` and print each thread's wake-ups over ``seconds``."""
    state = tmp / f"wakes-{interval:g}"
    status_port = free_port()
    conf = tmp / f"wakes-{interval:g}.yaml"
    conf.write_text(f"""\
device: {{id: tick-dev, school: tick-school}}
mqtt: {{host: 127.0.0.1, port: {port}}}
state_dir: {state}
telemetry: {{interval_s: {interval}}}
status: {{listen: "127.0.0.1:{status_port}", socket: "{state}/control.sock"}}
log_level: error
""")
    with open(tmp / "agent.log", "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf)],
                                cwd=ROOT, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_port(status_port, timeout=30, proc=proc)
        time.sleep(10)  # start-up, the first tick and its delivery
        load0 = os.getloadavg()[0]
        a, t0 = tasks(proc.pid), time.monotonic()
        time.sleep(seconds)
        b, dt = tasks(proc.pid), time.monotonic() - t0
        load1 = os.getloadavg()[0]
    finally:
        stop_process(proc, "agent")
    what = ("idle: nothing to send, no lesson" if interval >= 3600
            else f"telemetry every {interval:g} s")
    print()
    print(f"Wake-ups of the agent's threads, {what}, over {dt:.0f} s "
          f"({process_count()} processes, load {load0:.2f} -> {load1:.2f})")
    print(f"{'thread':<16} {'tid':>8} {'wakes/s':>8} {'invol/s':>8} {'CPU ms/s':>9}")
    total_v = total_cpu = 0.0
    for tid in sorted(b):
        t, t0_ = b[tid], a.get(tid, Task("", 0, 0, 0.0))
        v = (t.voluntary - t0_.voluntary) / dt
        total_v += v
        total_cpu += t.cpu_s - t0_.cpu_s
        print(f"{t.name:<16} {tid:>8} {v:8.2f} {(t.involuntary - t0_.involuntary) / dt:8.2f} "
              f"{(t.cpu_s - t0_.cpu_s) / dt * 1000:9.3f}")
    gone = set(a) - set(b)
    print(f"{'all threads':<16} {'':>8} {total_v:8.2f} {'':>8} {total_cpu / dt * 1000:9.3f}"
          + (f"  ({len(gone)} thread(s) ended during the window, not counted)" if gone else ""))
    if interval >= 3600:
        print(f"target: the idle agent wakes at most 2 times a second in all its threads: "
              f"{'met' if total_v <= 2 else 'MISSED'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=50, help="calls of each part")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle publisher to time")
    ap.add_argument("--wakes", type=float, default=60.0,
                    help="seconds to count the real agent's wake-ups (0: skip)")
    ap.add_argument("--interval", type=float, default=10.0,
                    help="telemetry interval of the second wake-up run")
    ap.add_argument("--processes", type=int, default=0,
                    help="start idle processes to bring the machine to this count first")
    args = ap.parse_args()
    sigterm_as_interrupt()
    ensure_apt(["mosquitto"])
    idle = IdleProcesses()
    try:
        if args.processes:
            idle.reach(args.processes)
        return measure(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        idle.stop()


def measure(args: argparse.Namespace) -> int:

    from agent.config import DEFAULT_APPS, MqttConfig, OutboxConfig
    from agent.outbox import Outbox
    from agent.publisher import Publisher
    from agent.records import Envelope, Record
    from agent.telemetry.agent_self import AgentCollector
    from agent.telemetry.inventory import collect_inventory
    from agent.telemetry.netquality import NetworkQualityCollector
    from agent.telemetry.peripherals import PeripheralWatch
    from agent.telemetry.scheduler import _Acc
    from agent.telemetry.system import system_collectors
    from agent.telemetry.usage import UsageTracker

    nproc = process_count()
    with tempfile.TemporaryDirectory(prefix="tick-cost-") as tmp, mosquitto(Path(tmp)) as port:
        state = Path(tmp) / "state"
        env = Envelope("tick-dev", "tick-school")
        outbox = Outbox(state, OutboxConfig(), env)
        pub = Publisher(MqttConfig(host="127.0.0.1", port=port), env, outbox, state,
                        historical_after_s=20, started_at=time.time())
        usage = UsageTracker(state, DEFAULT_APPS)
        collectors = [*system_collectors(), NetworkQualityCollector([("127.0.0.1", port)]),
                      AgentCollector(outbox, lambda: pub, lambda: (0, 0)), PeripheralWatch()]
        acc = _Acc()
        for c in collectors:  # first gather sets baselines
            c.gather(acc)
        usage.sample()
        parts: list[tuple[str, float, float]] = []
        log(f"timing {args.ticks} calls of each part ({nproc} processes on this machine)")
        for c in collectors:
            parts.append((f"collector {c.name}", *timed(lambda c=c: c.gather(_Acc()), args.ticks)))
        parts.append(("usage.sample (process scan + usage.json fsync)",
                      *timed(usage.sample, args.ticks)))
        parts.append(("usage: /proc table refresh only (incremental)",
                      *timed(lambda: usage._table.refresh(time.time() - 10), args.ticks)))
        import psutil  # what usage.sample() did before issue 12, for comparison

        parts.append(("  (before issue 12: psutil scan of every process)", *timed(
            lambda: list(psutil.process_iter(["create_time", "cpu_times"])), args.ticks)))
        record = Record("metrics", acc.metrics)
        parts.append(("outbox.append (1 metrics record, fsync)",
                      *timed(lambda: outbox.append([record]), args.ticks)))
        parts.append(("inventory (once an hour)",
                      *timed(lambda: collect_inventory("x", "y", {}), 3)))

        # The publisher with nothing to send: how much CPU does waiting cost?
        pub.start()
        deadline = time.monotonic() + 10
        while not pub.stats.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        while outbox.stats().depth and time.monotonic() < deadline + 10:
            time.sleep(0.1)
        assert pub._thread is not None and pub._thread.native_id is not None
        tid = pub._thread.native_id
        log(f"publisher connected={pub.stats.connected}; idle for {args.idle:g} s")
        c0, w0 = thread_cpu(tid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu, idle_s = thread_cpu(tid) - c0, time.monotonic() - w0
        pub.stop(flush_s=1)
        outbox.close()
        if args.wakes > 0:
            log(f"the real agent: wake-ups per thread, {args.wakes:g} s idle and "
                f"{args.wakes:g} s at {args.interval:g} s")
            agent_wakes(port, Path(tmp), 3600.0, args.wakes)
            agent_wakes(port, Path(tmp), args.interval, args.wakes)

    print()
    print(f"Per-tick CPU of the agent's parts, {args.ticks} calls each, {nproc} processes")
    print(f"{'part':<52} {'median ms':>9} {'mean ms':>8}")
    tick_total = 0.0
    for name, med, mean in parts:
        print(f"{name:<52} {med:9.2f} {mean:8.2f}")
        if name.startswith(("collector", "usage.sample", "outbox")):
            tick_total += mean
    print(f"{'one tick (collectors + usage.sample + append)':<52} {'':>9} {tick_total:8.2f}")
    print(f"publisher thread while idle: {idle_cpu / idle_s * 1000:.2f} ms CPU per second "
          f"= {idle_cpu / idle_s * 3600:.1f} CPU s/hour (with nothing to send)")
    print(f"threads now: {threading.active_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
