"""Where a telemetry tick's CPU goes: each collector, the usage scan, the commit, the idle loop.

Times every part of the agent's tick in this process (CPU time, ``time.thread_time``), N ticks,
and the CPU that the publisher thread burns while there is nothing to send (read from
/proc/self/task/TID/stat), against a private Mosquitto. It explains telemetry_overhead's figures.

Usage: python bench/tick_cost.py [--ticks 50] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _benchlib import ensure_apt, log, mosquitto, sigterm_as_interrupt

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=50, help="calls of each part")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle publisher to time")
    args = ap.parse_args()
    sigterm_as_interrupt()
    ensure_apt(["mosquitto"])

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

    nproc = sum(1 for p in os.listdir("/proc") if p.isdigit())
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
        parts.append(("usage._scan only (process scan)",
                      *timed(lambda: usage._scan(time.time() - 10), args.ticks)))
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
