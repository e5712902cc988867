"""Interval arithmetic, and the rule that turns a terminal's observations into time known to be
online, known to be offline, and unknown (docs/reports.md, "Online share").

Intervals are ``(start, end)`` in Unix seconds, half-open; a list of them is kept sorted and
disjoint (``union`` makes one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[float, float]


def union(spans: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def intersect(xs: Sequence[Interval], ys: Sequence[Interval]) -> list[Interval]:
    """Both lists sorted and disjoint."""
    out: list[Interval] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(xs: Sequence[Interval], ys: Sequence[Interval]) -> list[Interval]:
    """``xs`` minus ``ys``, both sorted and disjoint."""
    out: list[Interval] = []
    j = 0
    for a, b in xs:
        while j < len(ys) and ys[j][1] <= a:
            j += 1
        k, cur = j, a
        while k < len(ys) and ys[k][0] < b:
            if ys[k][0] > cur:
                out.append((cur, ys[k][0]))
            cur = max(cur, ys[k][1])
            k += 1
        if cur < b:
            out.append((cur, b))
    return out


def total(spans: Iterable[Interval]) -> float:
    return sum(b - a for a, b in spans)


@dataclass(frozen=True)
class Run:
    """Consecutive observations of the broker link with one value, none more than the hold
    apart: a run of metrics samples, a connect (``online`` state). ``persistent``: its last
    observation holds until the next one however late (a graceful ``offline``)."""

    first: float
    last: float
    up: bool
    persistent: bool = False


@dataclass(frozen=True)
class Link:
    up: list[Interval]
    down: list[Interval]


def link(runs: Sequence[Run], hold: float, off: Sequence[Interval],
         unknown: Sequence[Interval], until: float) -> Link:
    """Online and offline time of one terminal.

    1. The latest observation wins: a run claims its time from its first observation to the
       next run's first, at most ``hold`` past its last observation (``until`` for a persistent
       one); the rest is unknown.
    2. Powered off (between two boots the usage records report) is offline, whatever was held.
    3. ``unknown`` (time where records are still missing: open sequence gaps) is unknown,
       whatever else says.
    """
    ordered = sorted(runs, key=lambda r: (r.first, r.up))
    up: list[Interval] = []
    down: list[Interval] = []
    for i, run in enumerate(ordered):
        nxt = ordered[i + 1].first if i + 1 < len(ordered) else math.inf
        end = min(nxt, until if run.persistent else run.last + hold)
        (up if run.up else down).append((run.first, max(run.first, end)))
    off_u, unk = union(off), union(unknown)
    up_u = subtract(subtract(union(up), off_u), unk)
    down_u = subtract(union([*down, *off_u]), unk)
    down_u = subtract(down_u, up_u)
    return Link(up_u, down_u)


def off_between(boots: Sequence[Interval]) -> list[Interval]:
    """Powered-off time: between the end of one boot and the start of the next."""
    merged = union(boots)
    return [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]
