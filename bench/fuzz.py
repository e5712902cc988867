"""Hostile-input fuzzing at scale: the CI fuzz tests with 10,000 examples each.

Runs the tests marked ``fuzz`` in tests/test_config.py (config loader), tests/test_commands.py
(command handler: payloads, args, topic names and request ids through the publisher and the
worker's door, every request on the control socket as the daemon serves it, the lesson
commands), tests/test_signing.py (the signed door: forged, moved, tampered, stale and replayed
requests), tests/test_timetable.py (YAML and iCalendar timetables), tests/test_local_http.py
(any bytes on the local HTTP server; every request on the status address as the daemon serves
it, against the rules' expected code) and tests/test_safetext.py (text made inert) under the
hypothesis profile ``bench`` (tests/fuzzing.py), the
same strategies CI runs with a few dozen examples. Every example runs under a hang guard (10 s).
Prints, per test and per target, the examples run, how many failed, the time, examples per
second and the slowest example. Exits 1 if any test failed.

Usage: python bench/fuzz.py [--examples 10000]
                            [--target config|commands|signing|timetable|http|text ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import ROOT, log, sigterm_as_interrupt

TARGETS = {
    "config": ("config loader", "tests/test_config.py"),
    "commands": ("command handler", "tests/test_commands.py"),
    "signing": ("signed command door", "tests/test_signing.py"),
    "timetable": ("timetable parser", "tests/test_timetable.py"),
    "http": ("local HTTP server", "tests/test_local_http.py"),
    "text": ("inert text", "tests/test_safetext.py"),
}


def run(targets: list[str], examples: int, report: Path) -> tuple[int, float]:
    env = dict(os.environ, CLASSROOM_AGENT_FUZZ="bench", CLASSROOM_AGENT_FUZZ_REPORT=str(report),
               CLASSROOM_AGENT_FUZZ_EXAMPLES=str(examples))
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "fuzz", "-p", "no:cacheprovider",
            "--timeout=14400", "--show-capture=no", "--tb=short",
            *(TARGETS[t][1] for t in targets)]
    log(f"running {' '.join(argv[3:])} with {examples} examples per test")
    began = time.monotonic()
    code = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode
    return code, time.monotonic() - began


def table(report: dict[str, dict], targets: list[str]) -> list[str]:
    lines = [f"{'test':<66} {'cases':>7} {'failed':>6} {'time s':>8} {'cases/s':>8} "
             f"{'slowest s':>9}  outcome"]
    for key in targets:
        name, path = TARGETS[key]
        rows = {k: v for k, v in report.items() if k.startswith(path + "::")}
        for nodeid, r in sorted(rows.items()):
            rate = r["cases"] / r["seconds"] if r["seconds"] else 0.0
            lines.append(f"{nodeid.split('::', 1)[1][:66]:<66} {r['cases']:>7} "
                         f"{r['failures']:>6} {r['seconds']:>8.1f} {rate:>8.0f} "
                         f"{r['slowest_s']:>9.3f}  {r['outcome'] or '?'}")
        cases = sum(r["cases"] for r in rows.values())
        seconds = sum(r["seconds"] for r in rows.values())
        failed = sum(r["outcome"] != "passed" for r in rows.values())
        slowest = max((r["slowest_s"] for r in rows.values()), default=0.0)
        lines.append(f"{'= ' + name + f' ({len(rows)} tests, {failed} failed)':<66} {cases:>7} "
                     f"{sum(r['failures'] for r in rows.values()):>6} {seconds:>8.1f} "
                     f"{cases / seconds if seconds else 0:>8.0f} {slowest:>9.3f}")
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="examples per test")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS),
                    help="only these targets (repeatable); default: all")
    args = ap.parse_args()
    sigterm_as_interrupt()
    targets = args.target or list(TARGETS)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        report_path = Path(tmp) / "report.json"
        code, wall = run(targets, args.examples, report_path)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    print()
    print("\n".join(table(report, targets)))
    print(f"pytest exit code {code}, wall time {wall:.0f} s. 'failed' counts examples that "
          "raised, including the re-runs hypothesis makes while shrinking a failure.")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
