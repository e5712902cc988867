"""``classroom-agent doctor``: the checks in order, printed as they finish, and the exit code."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TextIO

from agent.doctor import devices, local, network
from agent.doctor.report import Finding, exit_code, line
from agent.doctor.runner import Check, Context, run
from agent.i18n import _
from agent.status import client

CHECKS = [
    Check("state_dir", local.T_STATE, 5, local.state_dir),
    Check("disk", local.T_DISK, 5, local.disk),
    Check("secrets", local.T_SECRETS, 5, local.secrets),
    Check("broker", network.T_DNS, 4 * network.STEP_S + 2, network.broker),
    Check("clock", network.T_CLOCK, network.STEP_S, network.clock),
    Check("devices", devices.T_CAMERA, devices.LIMIT_S, devices.devices),
    Check("ffmpeg", local.T_FFMPEG, 12, local.ffmpeg),
    Check("live", network.T_LIVE, network.STEP_S * 2 + 1, network.live),
    Check("service", local.T_SERVICE, 6, local.service),
    Check("agent", local.T_AGENT, 3, local.agent),
]


def main(config_path: str, as_json: bool, ntp: str | None, only: list[str] | None = None,
         out: TextIO = sys.stdout) -> int:
    """Run the checks (``only``: their ids, e.g. after fixing one thing); the exit code."""
    started = time.monotonic()
    checks = [c for c in CHECKS if not only or c.id in only]
    cfg, first = local.load_config(config_path)
    findings: list[Finding] = list(first)

    def show(f: Finding) -> None:
        if not as_json:
            print(line(f, _), file=out, flush=True)

    for f in first:
        show(f)
    if cfg is not None:
        status = None
        with contextlib.suppress(OSError, ValueError):
            status = client.fetch(cfg, timeout=2.0)
        if not as_json:
            print(_("Checking {count} parts of this terminal (at most {limit:.0f} s)...")
                  .format(count=len(checks), limit=max(c.limit_s for c in checks)),
                  file=out, flush=True)
        ctx = Context(config_path, cfg, status, ntp)
        findings += run(checks, ctx, on_result=show)
    code = exit_code(findings)
    took = time.monotonic() - started
    if as_json:
        print(json.dumps({"exit_code": code, "seconds": round(took, 2),
                          "findings": [f.as_json() for f in findings]},
                         indent=2, ensure_ascii=False), file=out)
        return code
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("pass", "warn", "fail")}
    verdict = {0: _("Everything checked is fine."),
               1: _("Works, with warnings: see the fixes above."),
               2: _("Something does not work: start with the first FAIL above.")}[code]
    print(_("{passed} passed, {warned} warnings, {failed} failed in {seconds:.1f} s. {verdict}")
          .format(passed=counts["pass"], warned=counts["warn"], failed=counts["fail"],
                  seconds=took, verdict=verdict), file=out)
    return code
