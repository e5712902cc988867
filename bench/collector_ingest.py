"""Ingest throughput of classroom-collector: a backlog drained into PostgreSQL, validation
included, with one and with two collector processes.

What runs, all on this machine and all started here: PostgreSQL (initdb, default durability:
fsync and synchronous commit on), Mosquitto (no persistence, unbounded queues, 1000 in flight
per client), the real collector(s) as processes. The backlog is the real agent's payloads (a
short run of the agent is captured first: metrics, usage, events as it sends them) re-numbered
for ``--devices`` terminals of ``--schools`` schools, queued at the broker for the collectors'
persistent sessions before they start. Figure: records committed per second from the first to
the last commit, and the CPU seconds of each process per 1,000 records.

    python bench/collector_ingest.py [--records 100000] [--devices 1000] [--collectors 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _benchlib import cpu_by_thread, cpu_seconds, log, sigterm_as_interrupt
from collector_validation import capture  # the same capture of the real agent's payloads

from tests.platform_support import CollectorProcess, PostgresServer
from tests.support import Broker, wait_until


def templates(captured: list[tuple[str, bytes]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) of the agent's sequenced records, as it really sent them (``captured``:
    collector_validation.capture), in a fleet's mix: a terminal sends metrics every 10 s, usage
    every 15 min (1 in 90) and a few events a day (here 1 in 500; lesson evidence, two or three
    a day, is left out of the bulk)."""
    by_kind: dict[str, list[dict[str, Any]]] = {"metrics": [], "usage": [], "event": []}
    for kind, raw in captured:
        data = json.loads(raw)["data"]
        if kind in by_kind and not str(data.get("type", "")).startswith("lesson_"):
            by_kind[kind].append(data)
    out = []
    for i in range(900):
        if i % 90 == 0:
            kind = "usage"
        elif i % 500 == 1:
            kind = "event"
        else:
            kind = "metrics"
        out.append((kind, by_kind[kind][i % len(by_kind[kind])]))
    return out


def register_sessions(port: int, client_ids: list[str], topic: str) -> None:
    """Subscribe each collector's client id once, with a persistent session, so that the
    broker queues the backlog for them before they run."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    for cid in client_ids:
        done = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_a, ev=done: ev.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        wait_until(done.is_set, 10, f"session of {cid}")
        c.disconnect()
        c.loop_stop()


def publish_backlog(port: int, n: int, schools: int, devices: int,
                    tmpl: list[tuple[str, dict[str, Any]]], school_prefix: str = "school",
                    batch_records: int = 1) -> None:
    """``n`` records of ``devices`` terminals, published at QoS 1 and acknowledged by the
    broker, as a fleet's backlog (historical, observation times up to now); with
    ``batch_records`` > 1 as the agent drains a backlog: each terminal's consecutive records in
    ``batch`` messages of that many (docs/contract.md)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.records import Envelope, Record

    acked = [0]
    lock = threading.Lock()

    def on_publish(*_a: Any) -> None:
        with lock:
            acked[0] += 1

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    names = [(f"{school_prefix}-{i % schools:03d}", f"room-{100 + i // schools}")
             for i in range(devices)]
    seq = dict.fromkeys(names, 0)
    t0 = time.time() - n / devices * 10  # every terminal reports every 10 s, up to now
    pending: dict[tuple[str, str], list[bytes]] = {name: [] for name in names}
    sent = 0

    def send(school: str, device: str, raws: list[bytes], kind: str) -> None:
        nonlocal sent
        if len(raws) == 1:
            c.publish(f"classroom/v1/{school}/{device}/{kind}", raws[0], qos=1)
        else:
            head = f'{{"v":1,"school":"{school}","device":"{device}","kind":"batch","records":['
            c.publish(f"classroom/v1/{school}/{device}/batch",
                      head.encode() + b",".join(raws) + b"]}", qos=1)
        sent += 1
        if sent % 5000 == 4999:
            wait_until(lambda s=sent: acked[0] >= s - 2000, 60, "the broker")

    for i in range(n):
        school, device = names[i % devices]
        seq[(school, device)] += 1
        kind, data = tmpl[i % len(tmpl)]
        raw = Envelope(device, school).encode(Record(kind, data, t0 + i * 10 / devices),  # type: ignore[arg-type]
                                              seq[(school, device)])
        raw = raw[:-1] + b',"historical":true}'
        group = pending[(school, device)]
        group.append(raw)
        if len(group) >= batch_records:
            send(school, device, group, kind)
            group.clear()
    for (school, device), group in pending.items():
        if group:
            send(school, device, group, "metrics" if len(group) > 1 else
                 json.loads(group[0])["kind"])
    wait_until(lambda: acked[0] >= sent, 120, "the broker to take the backlog")
    c.disconnect()
    c.loop_stop()


def run_once(workdir: Path, pg: PostgresServer, collectors: int, args: argparse.Namespace,
             tmpl: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    broker = Broker(workdir / f"broker{collectors}",
                    extra="max_queued_messages 0\nmax_inflight_messages 1000\n")
    broker.start()
    url = pg.create_database(f"ingest{collectors}")
    procs = [CollectorProcess(workdir / f"c{collectors}-{i}", broker.port, url,
                              status={"interval_s": 5.0})
             for i in range(collectors)]
    try:
        procs[0].migrate()
        register_sessions(broker.port, [p.config["mqtt"]["client_id"] for p in procs],
                          "$share/collectors/classroom/v1/#")
        log(f"publishing a backlog of {args.records} records from {args.devices} terminals")
        publish_backlog(broker.port, args.records, args.schools, args.devices, tmpl,
                        batch_records=args.batch_records)
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        count_sql = "SELECT (SELECT count(*) FROM metrics) + (SELECT count(*) FROM usage) " \
                    "+ (SELECT count(*) FROM events)"
        pg_cpu0 = cpu_seconds(pg.proc.pid) if pg.proc else 0.0
        br_cpu0 = cpu_seconds(broker.proc.pid) if broker.proc else 0.0
        log(f"starting {collectors} collector(s)")
        t_start = time.monotonic()
        for p in procs:
            p.start()
        threads0 = [cpu_by_thread(p.proc.pid) if p.proc else {} for p in procs]
        first = None
        last_n, samples = 0, []
        while True:
            n = conn.execute(count_sql).fetchone()[0]
            now = time.monotonic()
            if n and first is None:
                first = now
            samples.append((now, n))
            if n >= args.records:
                break
            if now - t_start > args.timeout:
                raise SystemExit(f"only {n} of {args.records} stored after {args.timeout} s")
            if n != last_n:
                last_n = n
            time.sleep(0.2)
        done = time.monotonic()
        cpu = [cpu_seconds(p.proc.pid) for p in procs if p.proc]
        threads = [per_thread_us(t0, cpu_by_thread(p.proc.pid) if p.proc else {}, args.records)
                   for t0, p in zip(threads0, procs, strict=True)]
        pg_cpu = (cpu_seconds(pg.proc.pid) if pg.proc else 0.0) - pg_cpu0
        br_cpu = (cpu_seconds(broker.proc.pid) if broker.proc else 0.0) - br_cpu0
        dup = conn.execute("""SELECT count(*) FROM (SELECT school, device, seq FROM metrics
                              UNION ALL SELECT school, device, seq FROM usage
                              UNION ALL SELECT school, device, seq FROM events) s
                              GROUP BY school, device, seq HAVING count(*) > 1""").fetchall()
        wait_until(lambda: conn.execute("SELECT count(*) FROM arrivals").fetchone()[0] == 0,
                   120, "the gap tracker")
        gaps = conn.execute("SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL"
                            ).fetchone()[0]
        conn.close()
        span = done - (first or t_start)
        return {"collectors": collectors, "batch_records": args.batch_records,
                "records": args.records, "seconds": round(span, 2),
                "records_per_s": round(args.records / span),
                "collector_cpu_s_per_1000": [round(c / args.records * 1000, 3) for c in cpu],
                "collector_thread_cpu_us_per_record": threads,
                "postgres_cpu_s_per_1000": round(pg_cpu / args.records * 1000, 3),
                "mosquitto_cpu_s_per_1000": round(br_cpu / args.records * 1000, 3),
                "duplicate_rows": len(dup), "open_gaps": gaps}
    finally:
        for p in procs:
            p.kill()
        broker.stop()


def per_thread_us(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  records: int) -> dict[str, float]:
    """Microseconds of CPU per record of each collector thread, by its name at the end (the
    main thread is the ingest loop; paho's network thread is ``paho-mqtt-clien``)."""
    out: dict[str, float] = {}
    for tid, (name, sec) in after.items():
        used = sec - before.get(tid, ("", 0.0))[1]
        key = "ingest" if name == "main" else name
        out[key] = out.get(key, 0.0) + used
    return {k: round(v / records * 1e6, 1) for k, v in out.items() if v > 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--schools", type=int, default=50)
    ap.add_argument("--collectors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--batch-records", type=int, default=50,
                    help="records per MQTT message, as the agent's mqtt.batch_records (1: the "
                         "contract before batches, every record alone)")
    args = ap.parse_args()
    sigterm_as_interrupt()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        log("capturing the real agent's payloads")
        tmpl = templates(capture(work / "capture"))
        pg = PostgresServer(settings={"fsync": "on", "full_page_writes": "on",
                                      "shared_buffers": "256MB", "max_wal_size": "2GB"})
        pg.start()
        try:
            for n in args.collectors:
                res = run_once(work, pg, n, args, tmpl)
                res["load_average"] = os.getloadavg()
                res["processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
                print(json.dumps(res), flush=True)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
