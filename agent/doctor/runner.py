"""Runs the checks side by side, each within its own time limit, printing as results come in.

A check is a function of the :class:`Context` that returns findings. Checks run on threads at
once (the whole run takes as long as the slowest, a few seconds when things are fine); results
are printed in the order the checks are listed, each as soon as it and those before it are in,
which is the progress people see. A check that overruns its limit is reported as
``check_timed_out`` and left behind (its thread is a daemon; the probe it waits for is killed
by its own deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config
from agent.doctor.report import Finding, problem

#: ``(id, title, time limit in seconds, function)``.
CheckFn = Callable[["Context"], list[Finding]]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    limit_s: float
    run: CheckFn


@dataclass
class Context:
    config_path: str
    cfg: Config | None
    #: The running agent's status snapshot, or None when it does not answer.
    status: dict[str, Any] | None
    ntp: str | None
    options: dict[str, Any] = field(default_factory=dict)


def run(checks: list[Check], ctx: Context,
        on_result: Callable[[Finding], None] = lambda f: None) -> list[Finding]:
    """Every check's findings, in list order; ``on_result`` sees each as it is printed."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="doctor")
    started = time.monotonic()
    futures: list[tuple[Check, Future[list[Finding]]]] = [
        (c, pool.submit(_guarded, c, ctx)) for c in checks]
    out: list[Finding] = []
    for check, fut in futures:
        remaining = check.limit_s - (time.monotonic() - started)
        try:
            found = fut.result(timeout=max(0.0, remaining))
        except TimeoutError:
            found = [problem(check.id, check.title, "check_timed_out", limit_s=check.limit_s)]
        for f in found:
            on_result(f)
        out.extend(found)
    pool.shutdown(wait=False, cancel_futures=True)
    return out


def _guarded(check: Check, ctx: Context) -> list[Finding]:
    threading.current_thread().name = f"doctor-{check.id}"
    try:
        return check.run(ctx)
    except Exception as exc:  # a bug in one check must not hide the others' results
        return [problem(check.id, check.title, "check_crashed",
                        error=f"{type(exc).__name__}: {exc}"[:300])]
