"""Soak: the real agent for an hour (telemetry every second, a lesson every few minutes) while
its resources are sampled, to show that nothing grows without bound.

Runs a private Mosquitto (``_benchlib.mosquitto``) and the real agent (``tests.support.
AgentProcess``: ``python -m agent run``), starts a lesson with synthetic sources at a small
resolution through the local control endpoint every ``--lesson-every-s`` seconds, and every
``--sample-s`` seconds reads from /proc the daemon's RSS, open fds and threads, the same summed
over its media worker and FFmpeg children, and the outbox (file size of outbox.db + its WAL, and
the pending rows from /status.json). A table is printed as it goes and at the end.

Trend: least-squares slope, per hour, of each series over the second half of the run (the first
half is warm-up: caches, the first lesson's imports, SQLite's page cache). The daemon's series are
fitted on the samples taken between lessons and the media series on the median of each lesson's
samples (each lesson has a new worker; a sample that catches one starting or stopping is not a
trend), so the lesson sawtooth does not read as a trend. A slope above the tolerance is reported
as an upward trend and the exit code is 1.

The plot (one panel per series, lessons shaded, the fitted line in red) is drawn with OpenCV,
which is already a core dependency: no plotting library is added for one bench.

Usage: python bench/soak.py [--minutes 60] [--telemetry-s 1] [--lesson-every-s 300]
       [--lesson-s 60] [--sample-s 10] [--out bench/out/soak.png]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _benchlib import ROOT, descendants, log, mosquitto, scratch_dir, sigterm_as_interrupt

from agent import control
from tests.support import AgentProcess


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    unit: str
    phase: str          # "idle": fit on samples between lessons; "lesson": during lessons
    tolerance: float    # per hour, in ``unit``
    scale: float = 1.0  # raw value -> unit


SERIES = [
    Series("agent_rss", "daemon RSS", "MiB", "idle", 2.0, 1 / 1024),
    Series("agent_fds", "daemon open fds", "fds", "idle", 1.0),
    Series("agent_threads", "daemon threads", "threads", "idle", 1.0),
    Series("media_rss", "media worker+FFmpeg RSS", "MiB", "lesson", 5.0, 1 / 1024),
    Series("media_fds", "media worker+FFmpeg fds", "fds", "lesson", 2.0),
    Series("media_threads", "media worker+FFmpeg threads", "threads", "lesson", 2.0),
    Series("outbox_file", "outbox.db + WAL", "KiB", "idle", 256.0, 1 / 1024),
    Series("outbox_depth", "outbox pending rows", "rows", "idle", 50.0),
]


@dataclass
class Sample:
    t: float                    # seconds since the agent started
    lesson: bool
    values: dict[str, float] = field(default_factory=dict)


def _status_field(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _file_size(*paths: Path) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def sample(agent: AgentProcess, t0: float) -> Sample:
    assert agent.proc is not None
    pid = agent.proc.pid
    kids = [p for p in descendants(pid) if p != pid]
    status = agent.status() or {}
    lesson = (status.get("lessons") or {}).get("state", "idle") != "idle"
    state = Path(agent.config["state_dir"])
    return Sample(time.monotonic() - t0, lesson or bool(kids), {
        "agent_rss": _status_field(pid, "VmRSS"),
        "agent_fds": _fds(pid),
        "agent_threads": _status_field(pid, "Threads"),
        "media_rss": sum(_status_field(p, "VmRSS") for p in kids),
        "media_fds": sum(_fds(p) for p in kids),
        "media_threads": sum(_status_field(p, "Threads") for p in kids),
        "outbox_file": _file_size(state / "outbox.db", state / "outbox.db-wal"),
        "outbox_depth": float((status.get("outbox") or {}).get("depth", math.nan)),
    })


def start_lesson(agent: AgentProcess, seconds: float) -> str:
    """lesson_start over the agent's local control socket; returns the lesson id."""
    body = control.request_body({"duration_s": seconds, "course": "soak"})
    reply = control.send(agent.config["status"]["socket"], "lesson_start", body)
    return str((reply.get("result") or {}).get("lesson_id", "?"))


# --- trend ---------------------------------------------------------------------------------


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per hour; None under 3 points."""
    pts = [(t, v) for t, v in points if not math.isnan(v)]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in pts) / var * 3600


@dataclass(frozen=True)
class Trend:
    series: Series
    slope: float | None   # unit per hour
    mean: float           # mean value of the fitted points
    mean_t: float         # their mean time (s): the fitted line goes through (mean_t, mean)
    points: int

    @property
    def upward(self) -> bool:
        return self.slope is not None and self.slope > self.series.tolerance


def trends(samples: list[Sample]) -> list[Trend]:
    """Fit each series on its phase's samples in the second half. The first sample of each
    lesson is left out: it often catches the worker still starting (a few MiB, no FFmpeg)."""
    half = samples[-1].t / 2 if samples else 0.0
    settled = [x.lesson and prev.lesson for prev, x in itertools.pairwise(samples)]
    phase = {"idle": [not x.lesson for x in samples[1:]], "lesson": settled}
    out = []
    for s in SERIES:
        pts = [(x.t, x.values[s.key] * s.scale)
               for x, keep in zip(samples[1:], phase[s.phase], strict=True)
               if keep and x.t >= half]
        pts = [(t, v) for t, v in pts if not math.isnan(v)]
        if s.phase == "lesson":
            pts = _per_lesson_median(pts, gap_s=60.0)
        mean = sum(v for _, v in pts) / len(pts) if pts else math.nan
        mean_t = sum(t for t, _ in pts) / len(pts) if pts else math.nan
        out.append(Trend(s, slope_per_hour(pts), mean, mean_t, len(pts)))
    return out


def _per_lesson_median(pts: list[tuple[float, float]], gap_s: float) -> list[tuple[float, float]]:
    """One point per lesson (its median): a sample that catches a worker starting or stopping
    (fewer threads, a few MiB) must not read as a trend; each lesson has a new worker anyway."""
    groups: list[list[tuple[float, float]]] = []
    for t, v in pts:
        if not groups or t - groups[-1][-1][0] > gap_s:
            groups.append([])
        groups[-1].append((t, v))
    return [(statistics.median(t for t, _ in g), statistics.median(v for _, v in g))
            for g in groups]


# --- output --------------------------------------------------------------------------------

_COLS = [("agent_rss", "RSS MiB", 8, 1), ("agent_fds", "fds", 5, 0),
         ("agent_threads", "thr", 4, 0), ("media_rss", "media MiB", 9, 1),
         ("media_fds", "m.fds", 6, 0), ("media_threads", "m.thr", 6, 0),
         ("outbox_file", "outbox KiB", 10, 0), ("outbox_depth", "rows", 6, 0)]


def table_header() -> str:
    return f"{'t min':>6} {'lesson':>6} " + " ".join(f"{h:>{w}}" for _, h, w, _ in _COLS)


def table_row(x: Sample) -> str:
    scale = {s.key: s.scale for s in SERIES}
    cells = [f"{x.values[k] * scale[k]:{w}.{d}f}" for k, _, w, d in _COLS]
    return f"{x.t / 60:6.1f} {'yes' if x.lesson else '':>6} " + " ".join(cells)


def write_csv(path: Path, samples: list[Sample]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "lesson", *[s.key for s in SERIES]])
        for x in samples:
            w.writerow([round(x.t, 1), int(x.lesson), *[x.values[s.key] for s in SERIES]])


def read_csv(path: Path) -> list[Sample]:
    """The samples of an earlier run (``--replot``)."""
    with open(path, newline="") as fh:
        return [Sample(float(r["t_s"]), r["lesson"] == "1",
                       {s.key: float(r[s.key]) for s in SERIES}) for r in csv.DictReader(fh)]


def plot(path: Path, samples: list[Sample], found: list[Trend], title: str) -> None:
    """One panel per series, lessons shaded grey, the second-half fit drawn in red."""
    import cv2
    import numpy as np

    width, panel_h, left, right, top = 1200, 150, 110, 20, 40
    height = top + panel_h * len(SERIES) + 40
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (left, 26), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    t_end = max(samples[-1].t, 1.0)
    plot_w = width - left - right

    def xpix(t: float) -> int:
        return left + round(t / t_end * plot_w)

    spans: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(samples):
        if a.lesson:
            spans.append((a.t, b.t))
    for i, (s, trend) in enumerate(zip(SERIES, found, strict=True)):
        y0 = top + i * panel_h + 10
        y1 = y0 + panel_h - 30
        for a, b in spans:
            cv2.rectangle(img, (xpix(a), y0), (xpix(b), y1), (225, 225, 225), -1)
        vals = [x.values[s.key] * s.scale for x in samples]
        finite = [v for v in vals if not math.isnan(v)] or [0.0]
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad

        def ypix(v: float, lo: float = lo, hi: float = hi, y0: int = y0, y1: int = y1) -> int:
            return y1 - round((v - lo) / (hi - lo) * (y1 - y0))

        cv2.rectangle(img, (left, y0), (width - right, y1), (120, 120, 120), 1)
        pts = np.array([(xpix(x.t), ypix(v)) for x, v in zip(samples, vals, strict=True)
                        if not math.isnan(v)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, (160, 70, 0), 1, cv2.LINE_AA)
        if trend.slope is not None:
            t_a, t_b = t_end / 2, t_end
            v_a = trend.mean + trend.slope / 3600 * (t_a - trend.mean_t)
            v_b = trend.mean + trend.slope / 3600 * (t_b - trend.mean_t)
            cv2.line(img, (xpix(t_a), ypix(v_a)), (xpix(t_b), ypix(v_b)), (0, 0, 220), 2,
                     cv2.LINE_AA)
        cv2.putText(img, f"{hi - pad:.1f}", (8, y0 + 12), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{lo + pad:.1f}", (8, y1), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        slope = "n/a" if trend.slope is None else f"{trend.slope:+.2f} {s.unit}/h"
        verdict = "UPWARD" if trend.upward else "flat"
        cv2.putText(img, f"{s.label} ({s.unit}); 2nd-half slope {slope} "
                    f"[{s.phase} samples, tol {s.tolerance:g}]: {verdict}",
                    (left + 6, y0 + 14), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    y = height - 14
    for minute in range(0, int(t_end / 60) + 1, max(1, int(t_end / 60) // 12 or 1)):
        cv2.putText(img, f"{minute}", (xpix(minute * 60) - 5, y), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, "minutes", (width - right - 60, y), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"cv2.imwrite could not write {path}; check the directory")


# --- main ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, port: int) -> list[Sample]:
    agent = AgentProcess(
        work / "agent", port,
        telemetry={"interval_s": args.telemetry_s, "usage_interval_s": 60,
                   "inventory_check_s": 600},
        media={"video": {"source": "synthetic", "width": args.width, "height": args.height,
                         "fps": args.fps},
               "encoder": {"video_bitrate_kbps": 300, "preset": "ultrafast"},
               "recording": {"segment_s": 10, "min_free_mb": 0}},
        log_level="warning",
    )
    agent.start()
    log(f"agent pid {agent.proc.pid if agent.proc else '?'}, status port {agent.status_port}")
    samples: list[Sample] = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_lesson = t0 + args.first_lesson_s
    next_sample = t0
    print(table_header(), flush=True)
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_lesson:
                next_lesson += args.lesson_every_s
                try:
                    lesson_id = start_lesson(agent, args.lesson_s)
                    log(f"lesson {lesson_id} started for {args.lesson_s:g} s")
                except OSError as exc:
                    log(f"lesson start failed: {exc}")
            if now >= next_sample:
                next_sample += args.sample_s
                samples.append(sample(agent, t0))
                print(table_row(samples[-1]), flush=True)
            time.sleep(max(0.05, min(next_sample, next_lesson) - time.monotonic()))
    finally:
        code = agent.stop(timeout=60)
        log(f"agent stopped with exit code {code}")
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long to run")
    ap.add_argument("--telemetry-s", type=float, default=1.0, help="telemetry.interval_s")
    ap.add_argument("--lesson-every-s", type=float, default=300.0, help="a lesson this often")
    ap.add_argument("--lesson-s", type=float, default=60.0, help="each lesson's duration")
    ap.add_argument("--first-lesson-s", type=float, default=30.0,
                    help="when the first lesson starts")
    ap.add_argument("--sample-s", type=float, default=10.0, help="sampling period")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.png",
                    help="the PNG plot; a CSV of the samples is written next to it")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--replot", type=Path, metavar="CSV",
                    help="no run: recompute the trends and redraw from an earlier run's CSV")
    args = ap.parse_args()
    sigterm_as_interrupt()
    if args.replot:
        samples = read_csv(args.replot)
    else:
        with scratch_dir("bench-soak-", args.keep) as work, mosquitto(work) as port:
            samples = run(args, work, port)
    if len(samples) < 6:
        raise SystemExit("too few samples for a trend; run longer (--minutes)")
    found = trends(samples)
    print("\nAll samples:\n" + table_header())
    for x in samples:
        print(table_row(x))
    cpus = os.cpu_count()
    print(f"\nTrend over the second half ({samples[-1].t / 60:.1f} min run, {len(samples)} "
          f"samples, telemetry every {args.telemetry_s:g} s, a {args.lesson_s:g} s lesson "
          f"every {args.lesson_every_s:g} s at {args.width}x{args.height}@{args.fps}, "
          f"{cpus} CPUs):")
    print(f"{'series':30} {'phase':>6} {'n':>4} {'mean':>10} {'slope/h':>10} {'tol/h':>8}  "
          "verdict")
    for tr in found:
        slope = "n/a" if tr.slope is None else f"{tr.slope:+10.2f}"
        print(f"{tr.series.label + ' (' + tr.series.unit + ')':30} {tr.series.phase:>6} "
              f"{tr.points:4d} {tr.mean:10.1f} {slope:>10} {tr.series.tolerance:8g}  "
              f"{'UPWARD TREND' if tr.upward else 'flat'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.replot:
        write_csv(args.out.with_suffix(".csv"), samples)
    plot(args.out, samples, found, f"classroom-agent soak: {samples[-1].t / 60:.0f} min, "
         f"telemetry {args.telemetry_s:g} s, lesson {args.lesson_s:g} s every "
         f"{args.lesson_every_s:g} s (grey)")
    log(f"plot: {args.out}; samples: {args.out.with_suffix('.csv')}")
    upward = [tr.series.label for tr in found if tr.upward]
    print("result: " + (f"upward trend in {', '.join(upward)}" if upward else
                        "no upward trend beyond the tolerances"))
    return 1 if upward else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
