"""The daemon's memory: how much the running agent holds, where it goes, and what each import costs.

Runs the real agent (``python -m agent run``) with the interpreter given by ``--python`` (a
production venv made as scripts/install.sh makes it, ``pip install .`` without extras, or the
development venv) against a private Mosquitto, at telemetry.interval_s 10 with nothing else to
do (no lesson), and after ``--idle`` seconds reads:

- /proc/PID/status: VmRSS, VmHWM (the peak since start);
- /proc/PID/smaps_rollup: Rss, Pss (shared pages divided among the processes mapping them) and
  USS (Private_Clean + Private_Dirty: what stopping the agent would give back);
- /proc/PID/smaps: resident memory per mapping, grouped: the interpreter binary, each shared
  library, the brk heap, malloc's per-thread arenas (64 MiB reservations), thread stacks, other
  anonymous memory (pymalloc's arenas, large objects);
- the threads, by name.

``--variant NAME:ENV=VALUE[,ENV=VALUE]`` adds an agent started with those environment variables
(e.g. ``arena2:MALLOC_ARENA_MAX=2``); all variants run side by side, so Pss is shared among them
(Rss and USS are not). ``--command-key`` gives every variant an Ed25519 public key to check
platform commands with, as a production install has (scripts/install.sh --command-key), so the
signature library is loaded. A QoS 1 subscriber stands for the platform, so that what the agents
send is delivered (with nobody subscribed, the broker answers "no matching subscribers" and the
agent keeps the records and sends them again). ``--upload`` configures uploads to a real SeaweedFS
(tests/objectstore.py) in every variant, runs one 12 s lesson of synthetic media after the idle
reading and reads again once the recording is uploaded and verified (issue 13), sampling the
daemon's VmRSS (its own, not its media worker's) once a second throughout.

``--imports`` prints the cost of ``import agent.daemon`` in that interpreter: the RSS and the
Python heap (tracemalloc) each module's own code added (its imports excluded) and ``-X
importtime``'s self time, summed by top-level package.

Usage: python bench/agent_memory.py [--python /opt/classroom-agent/venv/bin/python] [--idle 300]
       [--variant arena2:MALLOC_ARENA_MAX=2] [--command-key] [--upload] [--imports]
       [--only-imports]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _benchlib import (
    free_port,
    log,
    machine_line,
    mosquitto,
    scratch_dir,
    sigterm_as_interrupt,
    stop_process,
    wait_port,
)

MiB = 1024 * 1024
#: glibc reserves each thread arena as 64 MiB (HEAP_MAX_SIZE on 64-bit), rw part + PROT_NONE rest.
ARENA_KB = 64 * 1024
MEDIA = {"video": {"width": 160, "height": 120, "fps": 10},
         "encoder": {"preset": "ultrafast", "video_bitrate_kbps": 300},
         "recording": {"segment_s": 2, "min_free_mb": 0}}


# --- reading one process ----------------------------------------------------------------------


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


def rollup_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0

    @property
    def size_kb(self) -> int:
        return (self.end - self.start) // 1024


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def mappings(pid: int) -> list[Mapping]:
    out: list[Mapping] = []
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            m = _HEADER.match(line)
            if m:
                out.append(Mapping(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                                   m.group(4).strip()))
            elif line.startswith("Rss:") and out:
                out[-1].rss_kb = int(line.split()[1])
    return out


def stacks(pid: int) -> set[int]:
    """Start addresses of the mappings holding each thread's stack pointer (from /proc's
    ``stat`` field 29, kstkesp; 0 when the kernel hides it, then stacks are found by shape)."""
    found = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    sp = int(fh.read().rsplit(")", 1)[1].split()[26])
                if sp:
                    found.add(sp)
    return found


def breakdown(pid: int) -> dict[str, int]:
    """Resident kB by kind of mapping. Anonymous ones: a thread arena is a rw mapping followed
    by the PROT_NONE rest of its 64 MiB reservation; a thread stack is a rw mapping right after
    a PROT_NONE guard page, of the thread stack size (ulimit -s, 8 MiB by default)."""
    maps = mappings(pid)
    sps = stacks(pid)
    groups: dict[str, int] = {}
    for i, m in enumerate(maps):
        if m.path.startswith("/"):
            name = Path(m.path).name
            if name.startswith("python3") or name.startswith("libpython"):
                name = "the interpreter (" + name + ")"
            elif "site-packages" in m.path:
                name = m.path.split("site-packages/", 1)[1].split("/", 1)[0] + " (extension)"
            elif "lib-dynload" in m.path:
                name = "stdlib extension modules (lib-dynload)"
        elif m.path in ("[heap]", "[stack]", "[vvar]", "[vdso]", "[vsyscall]"):
            name = {"[heap]": "brk heap (main arena)", "[stack]": "main thread stack"}.get(
                m.path, "kernel pages")
        elif m.path:
            name = m.path
        else:
            nxt = maps[i + 1] if i + 1 < len(maps) else None
            prev = maps[i - 1] if i else None
            if "rw" in m.perms and nxt and nxt.start == m.end and nxt.perms.startswith("---") \
                    and not nxt.path and m.size_kb + nxt.size_kb == ARENA_KB:
                name = "malloc thread arenas"
            elif "rw" in m.perms and prev and prev.end == m.start and \
                    prev.perms.startswith("---") and not prev.path and prev.size_kb <= 64 and \
                    (any(m.start <= sp < m.end for sp in sps) or m.size_kb >= 1024):
                name = "thread stacks"
            elif m.perms.startswith("---"):
                continue  # reserved, never resident
            else:
                name = "other anonymous (pymalloc arenas, large objects)"
        groups[name] = groups.get(name, 0) + m.rss_kb
    return groups


def threads(pid: int) -> list[str]:
    names = []
    with contextlib.suppress(OSError):
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/comm") as fh:
                names.append("main" if int(tid) == pid else fh.read().strip())
    return names


@dataclass
class Reading:
    when: str
    rss_kb: int
    hwm_kb: int
    pss_kb: int
    uss_kb: int
    anon_kb: int
    groups: dict[str, int]
    threads: list[str]

    @classmethod
    def of(cls, pid: int, when: str) -> Reading:
        st, ru = status_kb(pid), rollup_kb(pid)
        return cls(when, st["VmRSS"], st["VmHWM"], ru["Pss"],
                   ru.get("Private_Clean", 0) + ru.get("Private_Dirty", 0),
                   ru.get("Anonymous", 0), breakdown(pid), threads(pid))


# --- one agent --------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    config: Path | None = None
    readings: list[Reading] = field(default_factory=list)
    peak_kb: int = 0  # the highest VmRSS sampled (the daemon alone, not its children)
    samples: int = 0


def parse_variant(text: str) -> Variant:
    name, _, envs = text.partition(":")
    env = {}
    for item in filter(None, envs.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"variant {text!r}: want NAME:ENV=VALUE[,...]")
        env[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} has no name")
    return Variant(name, env)


def write_config(v: Variant, port: int, upload: dict[str, object] | None,
                 key: Path | None) -> int:
    """The variant's agent.yaml (JSON, which YAML reads); returns its status port."""
    assert v.workdir is not None
    status_port = free_port()
    cfg: dict[str, object] = {
        "device": {"id": f"mem-{v.name}", "school": "bench-school"},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(v.workdir / "state"),
        "telemetry": {"interval_s": 10},
        "status": {"listen": f"127.0.0.1:{status_port}", "socket": str(v.workdir / "ctl.sock")},
        "log_level": "warning",
    }
    if upload is not None:
        cfg["upload"] = upload
        cfg["media"] = MEDIA
    if key is not None:
        cfg["commands"] = {"public_keys": [str(key)]}
    v.config = v.workdir / "agent.yaml"
    v.config.write_text(json.dumps(cfg, indent=1))
    return status_port


def subscriber(port: int) -> Any:
    """A QoS 1 subscriber to every agent's topics, started (paho, in this process)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-memory-{port}")
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("classroom/v1/#", qos=1)
    if not subscribed.wait(10):
        raise TimeoutError("the bench's subscriber got no SUBACK")
    return client


def command_key(work: Path) -> Path:
    """A platform public key (PEM) to check commands with; its private half is thrown away."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = work / "platform.pub.pem"
    path.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def status_json(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as resp:
        return json.load(resp)


def sample_peaks(variants: list[Variant], stop: threading.Event) -> None:
    """VmRSS of each daemon (itself, not its children) once a second."""
    while not stop.wait(1.0):
        for v in variants:
            if v.proc is not None and v.proc.poll() is None:
                with contextlib.suppress(OSError, KeyError):
                    v.peak_kb = max(v.peak_kb, status_kb(v.proc.pid)["VmRSS"])
                    v.samples += 1


def run_lesson(python: str, v: Variant, port: int, work: Path, timeout: float = 240) -> str:
    """One 12 s lesson through local control (as a technician would), then wait until its
    recording is uploaded and verified; returns what the status said."""
    assert v.config is not None
    out = subprocess.run([python, "-m", "agent", "lesson", "start", "--config", str(v.config),
                          "--course", "bench", "--duration", "12", "--json"],
                         cwd=work, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{v.name}: lesson start failed: {out.stdout} {out.stderr}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = status_json(port).get("upload") or {}
        if isinstance(up, dict) and up.get("uploaded_lessons") == 1 and up.get("state") == "idle":
            return f"uploaded_lessons 1, last_error {up.get('last_error')}"
        time.sleep(1)
    raise TimeoutError(f"{v.name}: no verified upload after {timeout:.0f} s: {up}")


# --- the cost of each import ------------------------------------------------------------------

#: Run in the measured interpreter: wraps every loader's exec_module to note the RSS it added.
_HOOK = r"""
import importlib, importlib.abc, json, os, sys, tracemalloc
PAGE = os.sysconf("SC_PAGE_SIZE")
if sys.argv[2] == "heap":
    tracemalloc.start(1)
    def measure():
        return tracemalloc.get_traced_memory()[0]
else:
    def measure():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
stack, own = [], {}
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                inner = loader.exec_module
                def exec_module(module, inner=inner, name=name):
                    stack.append(0); before = measure()
                    try:
                        inner(module)
                    finally:
                        added = measure() - before; children = stack.pop()
                        own[name] = own.get(name, 0) + added - children
                        if stack:
                            stack[-1] += added
                try:
                    loader.exec_module = exec_module
                except (AttributeError, TypeError):
                    pass
            return spec
        return None
start = measure()
sys.meta_path.insert(0, Hook())
importlib.import_module(sys.argv[1])
print(json.dumps({"start": start, "end": measure(), "own": own,
                  "agent": sys.modules["agent"].__file__, "python": sys.version.split()[0]}))
"""
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def group_of(module: str) -> str:
    """agent.x.y -> agent.x; everything else by its top-level package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "agent" else parts[0]


def _hooked(python: str, module: str, what: str, work: Path,
            *flags: str) -> tuple[dict[str, object], str]:
    out = subprocess.run([python, *flags, "-c", _HOOK, module, what], cwd=work,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout), out.stderr


def _by_group(own: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, added in own.items():
        out[group_of(name)] = out.get(group_of(name), 0) + added
    return out


def imports(python: str, module: str, work: Path) -> None:
    """Three runs of the import in fresh interpreters: RSS per module, Python heap per module
    (tracemalloc: what its code objects, classes and tables hold), -X importtime."""
    data, timing = _hooked(python, module, "rss", work, "-X", "importtime")
    heap_data, _ = _hooked(python, module, "heap", work)
    self_us: dict[str, int] = {}
    for line in timing.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            g = group_of(m.group(4))
            self_us[g] = self_us.get(g, 0) + int(m.group(1))
    own, heap = _by_group(data["own"]), _by_group(heap_data["own"])  # type: ignore[arg-type]
    start, end = int(data["start"]), int(data["end"])  # type: ignore[call-overload]
    print(f"\n`import {module}` with {python} (Python {data['python']}, agent from "
          f"{data['agent']}): VmRSS {start / MiB:.1f} -> {end / MiB:.1f} MiB "
          f"(+{(end - start) / MiB:.1f}), Python heap +{int(heap_data['end']) / MiB:.1f} MiB "
          f"(tracemalloc), {len(own)} packages, {len(data['own'])} modules")  # type: ignore[arg-type]
    print("By package, its own modules' code only (what they import is counted where it is "
          "defined): RSS added (pages: noisy below ~0.1 MiB; shared libraries and C "
          "allocations included), Python heap (tracemalloc: exact), -X importtime self time.")
    print(f"{'package':<34} {'RSS MiB':>7} {'heap MiB':>8} {'ms':>6}")
    shown = [g for g in own if own[g] >= 0.1 * MiB or heap.get(g, 0) >= 0.1 * MiB]
    for g in sorted(shown, key=lambda k: -own[k]):
        print(f"{g:<34} {own[g] / MiB:7.2f} {heap.get(g, 0) / MiB:8.2f} "
              f"{self_us.get(g, 0) / 1000:6.1f}")
    rest = [g for g in own if g not in shown]
    print(f"{'(the other ' + str(len(rest)) + ')':<34} {sum(own[g] for g in rest) / MiB:7.2f} "
          f"{sum(heap.get(g, 0) for g in rest) / MiB:8.2f}")


# --- the report -------------------------------------------------------------------------------


def report(variants: list[Variant]) -> None:
    print()
    print("| variant | when | VmRSS | VmHWM | Pss | USS | anonymous | threads |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in variants:
        for r in v.readings:
            print(f"| {v.name} | {r.when} | {r.rss_kb / 1024:.1f} | {r.hwm_kb / 1024:.1f} | "
                  f"{r.pss_kb / 1024:.1f} | {r.uss_kb / 1024:.1f} | {r.anon_kb / 1024:.1f} | "
                  f"{len(r.threads)} |")
        if v.samples:
            print(f"| {v.name} | highest VmRSS sampled (1/s, {v.samples} samples) | "
                  f"{v.peak_kb / 1024:.1f} | | | | | |")
    print("MiB. Pss divides shared pages among every process mapping them (the variants here "
          "run side by side); USS = Private_Clean + Private_Dirty.")
    for v in variants:
        for r in v.readings:
            print(f"\n{v.name}, {r.when}: resident MiB by mapping")
            for name, kb in sorted(r.groups.items(), key=lambda kv: -kv[1]):
                if kb >= 100:
                    print(f"  {kb / 1024:6.2f}  {name}")
            small = sum(kb for kb in r.groups.values() if kb < 100)
            print(f"  {small / 1024:6.2f}  (mappings under 0.1 MiB each)")
            print("  threads: " + ", ".join(r.threads))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the venv to run the agent with (default: this one)")
    ap.add_argument("--idle", type=float, default=300.0, help="seconds before the reading")
    ap.add_argument("--variant", type=parse_variant, action="append", default=[],
                    help="NAME:ENV=VALUE[,ENV=VALUE] (repeatable); 'base' (no change) always runs")
    ap.add_argument("--command-key", action="store_true",
                    help="configure a platform command key (Ed25519), as production does")
    ap.add_argument("--upload", action="store_true",
                    help="configure uploads to SeaweedFS, then upload one lesson's recording")
    ap.add_argument("--imports", action="store_true",
                    help="also print the cost of `import agent.daemon`, by package")
    ap.add_argument("--only-imports", action="store_true", help="only the import costs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    sigterm_as_interrupt()
    print(machine_line())
    with scratch_dir("agent-memory-", args.keep) as work:
        if args.imports or args.only_imports:
            imports(args.python, "agent.daemon", work)
        if args.only_imports:
            return 0
        variants = [Variant("base", {}), *args.variant]
        try:
            measure(args, variants, work)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
    report(variants)
    print(machine_line())
    return 0


def measure(args: argparse.Namespace, variants: list[Variant], work: Path) -> None:
    store = None
    stop = threading.Event()
    sampler = threading.Thread(target=sample_peaks, args=(variants, stop), daemon=True)
    logs = []
    with mosquitto(work) as port:
        platform = subscriber(port)  # as a collector: what the agents send is delivered
        try:
            upload = None
            if args.upload:
                from tests.objectstore import ACCESS_KEY, SECRET_KEY, SeaweedFS

                store = SeaweedFS(work / "seaweedfs").start()
                store.make_bucket()
                keys = work / "keys"
                keys.mkdir(mode=0o700)
                for name, text in (("access", ACCESS_KEY), ("secret", SECRET_KEY)):
                    fd = os.open(keys / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(text + "\n")
                upload = {"enabled": True, "endpoint": store.endpoint, "bucket": store.bucket,
                          "access_key_file": str(keys / "access"),
                          "secret_key_file": str(keys / "secret"), "max_kbps": 0}
            key = command_key(work) if args.command_key else None
            ports = {}
            for v in variants:
                v.workdir = work / v.name
                v.workdir.mkdir()
                ports[v.name] = write_config(v, port, upload, key)
                fh = open(v.workdir / "agent.log", "wb")  # noqa: SIM115  closed below
                logs.append(fh)
                env = dict(os.environ, PYTHONUNBUFFERED="1", **v.env)
                v.proc = subprocess.Popen([args.python, "-m", "agent", "run", "--config",
                                           str(v.config)], cwd=work, env=env, stdout=fh,
                                          stderr=fh, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
                envs = " ".join(f"{k}={x}" for k, x in v.env.items()) or "as installed"
                log(f"{v.name}: agent pid {v.proc.pid} ({envs})")
            for v in variants:
                wait_port(ports[v.name], timeout=60, proc=v.proc)
            sampler.start()
            log(f"idle {args.idle:g} s; {machine_line()}")
            time.sleep(args.idle)
            for v in variants:
                assert v.proc is not None
                if v.proc.poll() is not None:
                    raise RuntimeError(f"{v.name} exited: "
                                       + (v.workdir / "agent.log").read_text()[-2000:])
                v.readings.append(Reading.of(v.proc.pid, f"idle {args.idle:g} s"))
            if args.upload:
                for v in variants:
                    log(f"{v.name}: a lesson, then its upload")
                    said = run_lesson(args.python, v, ports[v.name], work)
                    log(f"{v.name}: {said}")
                for v in variants:
                    assert v.proc is not None
                    v.readings.append(Reading.of(v.proc.pid, "after a lesson and its upload"))
        finally:
            stop.set()
            for v in variants:
                stop_process(v.proc, v.name)
            platform.disconnect()
            platform.loop_stop()
            for fh in logs:
                fh.close()
            if store is not None:
                store.stop()


if __name__ == "__main__":
    sys.exit(main())
