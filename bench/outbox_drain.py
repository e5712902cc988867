"""Outbox drain benchmark: how fast does the real agent empty a backlog into Mosquitto?

1. Fills an outbox (agent.outbox.Outbox) with N metrics-like records, in batches of
   ``--batch`` per ``append`` (one transaction each), and times a sample of single-record
   commits (the daemon commits once per telemetry tick, so that is its real write pattern).
2. For each ``--inflight`` value: copies the filled outbox into a fresh state_dir, starts a
   private Mosquitto's subscriber (``mosquitto_sub``) on the device's topics, starts the real
   agent (``python -m agent run``) on it, and times until ``outbox.depth`` is 0 on
   ``/status.json`` and until the subscriber has received every one of the N sequence numbers.

Usage: python bench/outbox_drain.py [--records 100000] [--inflight 20,100]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _benchlib import (
    ROOT,
    cpu_seconds,
    ensure_apt,
    free_port,
    log,
    mosquitto,
    scratch_dir,
    sigterm_as_interrupt,
    stop_process,
    wait_port,
)

DEVICE, SCHOOL = "bench-dev", "bench-school"
TOPIC = f"classroom/v1/{SCHOOL}/{DEVICE}"
TARGET_RPS = 5000.0
_SEQ = re.compile(rb'"seq":(\d+)')


def metrics_data(rng: random.Random, i: int) -> dict[str, Any]:
    """A metrics section shaped like the agent's own (cpu, memory, disks, network, host)."""
    return {
        "cpu": {"percent": round(rng.uniform(0, 100), 1),
                "per_core": [round(rng.uniform(0, 100), 1) for _ in range(4)],
                "load": [round(rng.uniform(0, 4), 2) for _ in range(3)], "count": 4},
        "memory": {"total": 8_253_415_424, "available": rng.randint(10**9, 8 * 10**9),
                   "used": rng.randint(10**9, 7 * 10**9), "percent": round(rng.uniform(5, 95), 1)},
        "swap": {"total": 2_147_479_552, "used": rng.randint(0, 10**9), "percent": 1.2},
        "disks": {
            "mounts": [{"mount": "/", "fstype": "ext4", "total": 250_375_106_560,
                        "used": rng.randint(10**10, 2 * 10**11),
                        "free": rng.randint(10**10, 2 * 10**11), "percent": 41.3}],
            "io": {"sda": {"read_bps": round(rng.uniform(0, 1e6), 2),
                           "write_bps": round(rng.uniform(0, 1e6), 2),
                           "read_iops": round(rng.uniform(0, 100), 2),
                           "write_iops": round(rng.uniform(0, 100), 2)}},
        },
        "network": {"enp3s0": {"rx_bps": round(rng.uniform(0, 1e6), 2),
                               "tx_bps": round(rng.uniform(0, 1e6), 2),
                               "rx_pps": round(rng.uniform(0, 1e3), 2),
                               "tx_pps": round(rng.uniform(0, 1e3), 2),
                               "errin": 0, "errout": 0, "dropin": 3, "dropout": 0, "up": True}},
        "host": {"uptime_s": 3600.0 + i, "boot_time": "2026-11-23T07:00:00.000Z",
                 "process_count": rng.randint(150, 400), "users": 1},
        "netquality": {"targets": [{"target": "mqtt.example.edu.cn:8883", "ok": True,
                                    "rtt_ms": round(rng.uniform(1, 80), 2),
                                    "failures_total": 0, "error": None}]},
    }


@dataclass
class FillResult:
    records: int
    seconds: float
    bytes: int
    single_rate: float
    single_ms_p50: float
    single_ms_max: float


def fill(state_dir: Path, n: int, batch: int, single_sample: int) -> FillResult:
    """Commit ``n`` records in batches into ``state_dir``'s outbox; time single commits apart."""
    from agent.config import OutboxConfig
    from agent.outbox import Outbox
    from agent.records import Envelope, Record

    rng = random.Random(1)
    envelope = Envelope(DEVICE, SCHOOL)
    limits = OutboxConfig(max_records=max(n * 2, 500_000), max_bytes=4 * 1024**3)
    outbox = Outbox(state_dir, limits, envelope)
    ts = time.time()
    start = time.perf_counter()
    done = 0
    last_report = start
    try:
        while done < n:
            k = min(batch, n - done)
            outbox.append([Record("metrics", metrics_data(rng, done + j), ts + (done + j) * 1e-3)
                           for j in range(k)])
            done += k
            now = time.perf_counter()
            if now - last_report >= 2:
                last_report = now
                log(f"fill: {done}/{n} committed, {done / (now - start):,.0f} records/s")
        seconds = time.perf_counter() - start
        stats = outbox.stats()
    finally:
        outbox.close()

    # Single-record transactions (the daemon's pattern: one commit per tick), in another file.
    with tempfile.TemporaryDirectory(prefix="drain-single-") as tmp:
        single = Outbox(Path(tmp), limits, envelope)
        lat: list[float] = []
        try:
            t0 = time.perf_counter()
            for j in range(single_sample):
                t = time.perf_counter()
                single.append([Record("metrics", metrics_data(rng, j))])
                lat.append(time.perf_counter() - t)
            single_s = time.perf_counter() - t0
        finally:
            single.close()
    lat.sort()
    return FillResult(n, seconds, stats.bytes, single_sample / single_s,
                      lat[len(lat) // 2] * 1000, lat[-1] * 1000)


class Subscriber:
    """``mosquitto_sub`` on the device's topics; counts distinct sequence numbers received."""

    def __init__(self, port: int, n: int) -> None:
        self.n = n
        self.seen = bytearray(n + 1)
        self.distinct = 0
        self.duplicates = 0
        self.messages = 0
        self.first_at: float | None = None
        self.all_at: float | None = None
        self.ready = threading.Event()
        self._proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-R",
             "-i", f"drain-sub-{port}-{time.monotonic_ns()}", "-t", f"{TOPIC}/#"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(b"bench-ready"):
                self.ready.set()
                continue
            self.messages += 1
            m = _SEQ.search(line)
            if not m:
                continue
            seq = int(m.group(1))
            if seq > self.n:
                continue  # the agent's own startup events and first tick
            if self.first_at is None:
                self.first_at = time.monotonic()
            if self.seen[seq]:
                self.duplicates += 1
            else:
                self.seen[seq] = 1
                self.distinct += 1
                if self.distinct == self.n:
                    self.all_at = time.monotonic()

    def wait_subscribed(self, port: int) -> None:
        """Publish a marker until the subscriber prints it: then it is surely subscribed."""
        deadline = time.monotonic() + 10
        while not self.ready.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto_sub did not subscribe within 10 s")
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                            "-t", f"{TOPIC}/bench-ready", "-m", "bench-ready"], check=True)
            self.ready.wait(0.5)

    def stop(self) -> None:
        stop_process(self._proc, "mosquitto_sub")
        self._thread.join(5)


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


@dataclass
class DrainResult:
    inflight: int
    startup_s: float
    depth0_s: float | None
    received_s: float | None
    distinct: int
    missing: int
    duplicates: int
    agent_cpu_s: float


def agent_config(path: Path, state_dir: Path, broker: int, status_port: int,
                 inflight: int) -> None:
    path.write_text(f"""\
device: {{id: {DEVICE}, school: {SCHOOL}}}
mqtt: {{host: 127.0.0.1, port: {broker}, max_inflight: {inflight}}}
state_dir: {state_dir}
telemetry: {{interval_s: 3600, usage_interval_s: 3600, inventory_check_s: 3600}}
status: {{listen: "127.0.0.1:{status_port}", socket: "{state_dir}/control.sock"}}
log_level: warning
""")


def drain(filled: Path, work: Path, broker: int, n: int, inflight: int,
          timeout: float) -> DrainResult:
    """Copy the filled outbox, run the agent on it until drained; return the timings."""
    state = work / f"state-{inflight}"
    shutil.copytree(filled, state)
    status_port = free_port()
    cfg = work / f"agent-{inflight}.yaml"
    agent_config(cfg, state, broker, status_port, inflight)
    sub = Subscriber(broker, n)
    agent: subprocess.Popen[bytes] | None = None
    errlog = open(work / f"agent-{inflight}.log", "wb")  # noqa: SIM115  closed below
    try:
        sub.wait_subscribed(broker)
        log(f"inflight {inflight}: starting the agent on {n} queued records")
        t0 = time.monotonic()
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                                 cwd=ROOT, stdout=errlog, stderr=errlog, start_new_session=True)
        wait_port(status_port, timeout=60, proc=agent)
        startup = time.monotonic() - t0
        depth0: float | None = None
        last = 0.0
        while True:
            now = time.monotonic()
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}; see {errlog.name}")
            snap = status(status_port)
            depth = snap["outbox"]["depth"] if snap else None
            if depth == 0 and depth0 is None:
                depth0 = now - t0
            if now - last >= 1.0:
                last = now
                el = now - t0
                log(f"  t={el:6.1f}s depth={depth} received={sub.distinct}/{n} "
                    f"({sub.distinct / el:,.0f}/s) connected="
                    f"{snap['broker']['connected'] if snap else '?'}")
            if depth0 is not None and sub.all_at is not None:
                break
            if now - t0 > timeout:
                log(f"  timeout after {timeout:.0f} s")
                break
            time.sleep(0.1)
        cpu = cpu_seconds(agent.pid)
        received = sub.all_at - t0 if sub.all_at is not None else None
        return DrainResult(inflight, startup, depth0, received, sub.distinct,
                           n - sub.distinct, sub.duplicates, cpu)
    finally:
        stop_process(agent, "agent", timeout=15)
        sub.stop()
        errlog.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="backlog size N")
    ap.add_argument("--inflight", default="20,100", help="comma-separated mqtt.max_inflight")
    ap.add_argument("--batch", type=int, default=100, help="records per append() when filling")
    ap.add_argument("--single", type=int, default=200, help="single-record commits to time")
    ap.add_argument("--timeout", type=float, default=600, help="give up a drain after this (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    inflights = [int(x) for x in args.inflight.split(",") if x.strip()]
    sigterm_as_interrupt()
    ensure_apt(["mosquitto", "mosquitto-clients"])

    results: list[DrainResult] = []
    try:
        with scratch_dir("outbox-drain-", args.keep) as work:
            filled = work / "filled"
            log(f"fill: {args.records} records in batches of {args.batch} into {filled}")
            fr = fill(filled, args.records, args.batch, args.single)
            avg = fr.bytes / fr.records
            log(f"fill: {fr.records} records ({avg:.0f} bytes each on average) in "
                f"{fr.seconds:.2f} s = {fr.records / fr.seconds:,.0f} records/s committed in "
                f"batches of {args.batch}")
            log(f"fill: single-record commits: {fr.single_rate:,.0f} commits/s "
                f"(p50 {fr.single_ms_p50:.2f} ms, max {fr.single_ms_max:.2f} ms, "
                f"{args.single} commits, synchronous=FULL)")
            # Queue every record for the subscriber (no drop) and let paho's window be the limit.
            extra = ["max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 100"]
            with mosquitto(work, extra) as port:
                for inflight in inflights:
                    results.append(drain(filled, work, port, args.records, inflight, args.timeout))
    except KeyboardInterrupt:
        log("interrupted")
        return 130

    print()
    print(f"Outbox drain, N = {args.records} records of ~{avg:.0f} bytes, target >= "
          f"{TARGET_RPS:,.0f} records/s")
    print(f"fill (batches of {args.batch}): {fr.records / fr.seconds:,.0f} records/s; "
          f"single-record commits: {fr.single_rate:,.0f}/s (p50 {fr.single_ms_p50:.2f} ms)")
    print(f"{'inflight':>8} {'startup s':>9} {'depth=0 s':>9} {'all rcvd s':>10} "
          f"{'records/s':>10} {'missing':>7} {'dups':>6} {'agent CPU s':>11}  target")
    ok = True
    for r in results:
        rate = args.records / r.received_s if r.received_s else 0.0
        hit = rate >= TARGET_RPS and r.missing == 0
        ok &= hit
        d0 = f"{r.depth0_s:9.2f}" if r.depth0_s is not None else f"{'-':>9}"
        rs = f"{r.received_s:10.2f}" if r.received_s is not None else f"{'-':>10}"
        print(f"{r.inflight:>8} {r.startup_s:9.2f} {d0} {rs} {rate:10,.0f} {r.missing:>7} "
              f"{r.duplicates:>6} {r.agent_cpu_s:11.1f}  {'met' if hit else 'MISSED'}")
    print("records/s = N / (agent start -> subscriber has all N); startup = until status.json"
          " answers (includes opening the outbox)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
