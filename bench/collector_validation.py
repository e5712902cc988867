"""Parse + validate cost per message, on the real agent's payloads: the collector's choice of
orjson + jsonschema-rs against json + jsonschema (the reference) and fastjsonschema.

Runs the real agent against a private Mosquitto for a few seconds (with a short lesson, so that
lesson evidence is in the mix), keeps what it published, then validates that mix N times with
each candidate and checks that each agrees with the reference on valid and invalid messages.
fastjsonschema is measured only when installed (it is not a dependency: it is draft 7 only).

    python bench/collector_validation.py [--n 20000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _benchlib import ROOT, log, sigterm_as_interrupt

sys.path.insert(0, str(ROOT))

from tests.support import AgentProcess, Broker, Subscriber, wait_until

KINDS = ("state", "inventory", "metrics", "usage", "event", "schedule")

#: A week of lessons for the captured agent, so its retained ``schedule`` is measured too.
TIMETABLE = """\
term: {start: 2026-09-01, end: 2027-01-22}
grids:
  main: {p1: "08:00-08:40", p2: "08:50-09:30", p3: "10:00-10:40", p4: "14:00-14:40"}
weekly:
  monday: [{period: p1, course: 数学, teacher: 王芳}, {period: p3, course: 音乐, teacher: 李明}]
  tuesday: [{period: p2, course: English, teacher: Chen Jing}]
  wednesday: [{period: p4, course: 美术, teacher: 张华, role: receiving}]
  thursday: [{period: p1, course: 数学, teacher: 王芳}]
  friday: [{period: p2, course: 科学, teacher: 赵强}]
"""


def capture(workdir: Path) -> list[tuple[str, bytes]]:
    broker = Broker(workdir / "broker")
    broker.start()
    sub = Subscriber(broker.port)
    timetable = workdir / "timetable.yaml"
    timetable.write_text(TIMETABLE, encoding="utf-8")
    agent = AgentProcess(workdir / "agent", broker.port,
                         lessons={"timetable": str(timetable), "schedule_days": 14})
    try:
        agent.start()
        cfg = str(agent.config_path)
        wait_until(lambda: len(sub.snapshot("metrics")) >= 5 and sub.snapshot("schedule"), 30,
                   "metrics and the schedule")
        agent.cli("lesson", "start", "--config", cfg, "--course", "数学", "--teacher", "李明")
        time.sleep(1)
        agent.cli("lesson", "stop", "--config", cfg)
        agent.stop()
        time.sleep(0.5)
        return [(m.topic.rsplit("/", 1)[1], m.raw) for m in sub.snapshot()]
    finally:
        agent.kill()
        sub.close()
        broker.stop()


def candidates(docs: dict[str, Any]) -> dict[str, tuple[Callable[[bytes], Any],
                                                        dict[str, Callable[[Any], bool]]]]:
    import jsonschema_rs
    import orjson
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    reg = Registry().with_resources([(d["$id"], Resource.from_contents(d)) for d in docs.values()])
    ref = {k: Draft202012Validator(docs[k], registry=reg).is_valid for k in KINDS}
    rreg = jsonschema_rs.Registry([(d["$id"], d) for d in docs.values()])
    rs = {k: jsonschema_rs.validator_for(docs[k], registry=rreg).is_valid for k in KINDS}
    out = {"json + jsonschema (reference)": (json.loads, ref),
           "orjson + jsonschema-rs (the collector)": (orjson.loads, rs)}
    try:
        import fastjsonschema
    except ImportError:
        log("fastjsonschema is not installed: not measured")
        return out

    def handler(uri: str) -> Any:
        return docs[uri.rsplit("/", 1)[1].removesuffix(".json")]

    fast = {}
    for k in KINDS:
        compiled = fastjsonschema.compile(docs[k], handlers={"https": handler})

        def ok(obj: Any, f: Callable[[Any], Any] = compiled) -> bool:
            try:
                f(obj)
                return True
            except fastjsonschema.JsonSchemaException:
                return False

        fast[k] = ok
    out["orjson + fastjsonschema"] = (orjson.loads, fast)
    return out


def invalid_cases(msgs: list[tuple[str, bytes]]) -> list[tuple[str, Any, str]]:
    objs = [(k, json.loads(raw)) for k, raw in msgs]
    ended = next(o for k, o in objs if k == "event" and o["data"]["type"] == "lesson_ended")
    metrics = next(o for k, o in objs if k == "metrics")
    cases = []
    e = copy.deepcopy(ended)
    e["data"]["details"]["extra"] = 1
    cases.append(("event", e, "lesson_ended with an unknown field (unevaluatedProperties)"))
    e = copy.deepcopy(ended)
    del e["data"]["details"]["course"]
    cases.append(("event", e, "lesson_ended without course"))
    m = copy.deepcopy(metrics)
    m["data"]["cpu"] = "hot"
    cases.append(("metrics", m, "metrics section of the wrong type"))
    m = copy.deepcopy(metrics)
    del m["seq"]
    cases.append(("metrics", m, "metrics without seq"))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="messages validated per candidate")
    args = ap.parse_args()
    sigterm_as_interrupt()
    docs = {p.stem: json.loads(p.read_text()) for p in (ROOT / "agent" / "schemas").glob("*.json")}
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        log("capturing the real agent's payloads")
        msgs = capture(Path(tmp))
    kinds = {k: sum(1 for kk, _ in msgs if kk == k) for k in KINDS}
    size = sum(len(raw) for _, raw in msgs) / len(msgs)
    log(f"{len(msgs)} messages {kinds}, {size:.0f} bytes on average")
    work = [msgs[i % len(msgs)] for i in range(args.n)]
    cands = candidates(docs)
    cases = invalid_cases(msgs)
    ref = cands["json + jsonschema (reference)"][1]
    print(f"load average {os.getloadavg()}, {len(os.listdir('/proc'))} /proc entries, "
          f"{os.cpu_count()} cores")
    print(f"{'parser + validator':42s} {'msgs/s':>9s} {'us/msg':>7s}  agrees with the reference")
    for name, (parse, vals) in cands.items():
        n = args.n if "reference" not in name else max(200, args.n // 50)
        t0 = time.perf_counter()
        for kind, raw in work[:n]:
            if not vals[kind](parse(raw)):
                raise SystemExit(f"{name} rejects a real {kind} message")
        dt = time.perf_counter() - t0
        disagree = [why for kind, obj, why in cases if vals[kind](obj) != ref[kind](obj)]
        print(f"{name:42s} {n / dt:9.0f} {dt / n * 1e6:7.1f}  "
              f"{'yes' if not disagree else 'NO: accepts ' + '; '.join(disagree)}")


if __name__ == "__main__":
    main()
