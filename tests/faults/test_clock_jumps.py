"""The wall clock stepped back and forward an hour under the running agent, as NTP or a
technician fixing the date would, while the monotonic clock runs on.

libfaketime (Debian package ``faketime``) is preloaded into the agent, its CLI and its media
worker; the offset is read from a file every second (``FAKETIME_CACHE_DURATION``), so the test
moves it mid-run. ``FAKETIME_DONT_FAKE_MONOTONIC`` leaves ``CLOCK_MONOTONIC`` alone.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import (
    LIBFAKETIME,
    Subscriber,
    assert_no_loss,
    epoch,
    fake_clock,
    wait_until,
    witnessed,
)

LESSON_S = 24.0
#: Offsets from the true time, one step every 4 s: back an hour, forward again, forward an hour
#: more, and back to true time.
STEPS = ("-3600", "+0", "+3600", "+0")
MEDIA = {"video": {"width": 160, "height": 120, "fps": 10},
         "encoder": {"preset": "ultrafast", "video_bitrate_kbps": 200},
         "recording": {"segment_s": 2, "min_free_mb": 0}}
SIGNED = ("_dbfs", "_db")  # levels in decibels are negative by nature


def _negatives(value: Any, path: str = "") -> list[str]:
    """Every negative number in a payload (but decibels), with its key path."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _negatives(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _negatives(v, f"{path}[{i}]")]
    if (isinstance(value, int | float) and not isinstance(value, bool) and value < 0
            and not path.endswith(SIGNED)):
        return [f"{path}={value}"]
    return []


def _intervals(value: Any, path: str = "") -> list[str]:
    """Every {start, end} pair (lesson, segment, interruption, usage period, power-on) whose end
    lies before its start."""
    out = []
    if isinstance(value, dict):
        s, e = value.get("start"), value.get("end")
        if isinstance(s, str) and isinstance(e, str) and e < s:
            out.append(f"{path}: {s} .. {e}")
        s, e = value.get("actual_start"), value.get("actual_end")
        if isinstance(s, str) and isinstance(e, str) and e < s:
            out.append(f"{path}: {s} .. {e}")
        out += [n for k, v in value.items() for n in _intervals(v, f"{path}.{k}")]
    elif isinstance(value, list):
        out += [n for i, v in enumerate(value) for n in _intervals(v, f"{path}[{i}]")]
    return out


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime missing: scripts/deps.sh")
def test_wall_clock_jumps_keep_order_lesson_length_and_durations(
        subscriber: Subscriber, agent_factory) -> None:
    agent = agent_factory(media=MEDIA, telemetry={"interval_s": 0.2, "usage_interval_s": 2,
                                                  "usage_sample_s": 0.5})
    offset = fake_clock(agent)
    agent.start()
    assert agent.cli("lesson", "start", "--course", "History", "--duration", f"{LESSON_S:g}",
                     "--config", str(agent.config_path)).returncode == 0
    running_at = 0.0  # true time at which a status request last found the lesson running

    def live() -> bool:
        nonlocal running_at
        asked = time.time()
        current = agent.status()["lessons"]["current"]
        if current is not None and current["state"] == "live":  # "ending": it has ended
            running_at = asked
            return True
        return False

    wait_until(live, 10, "the lesson to start")
    status_negatives = []
    for step in STEPS:
        time.sleep(2.5)
        offset.write_text(step + "\n")
        time.sleep(1.5)  # libfaketime rereads the offset every second
        assert live(), "the lesson ended during the clock steps"
        status_negatives += _negatives(agent.status(), f"status@{step}")
    wait_until(lambda: not live(), LESSON_S + 20, "the lesson to end")
    ended_by = time.time()
    wait_until(lambda: agent.status()["lessons"]["current"] is None, 30, "the evidence")
    witnessed(agent, subscriber)

    assert_no_loss(subscriber.seqs())
    msgs = subscriber.snapshot()
    ended = [m.payload["data"]["details"] for m in subscriber.snapshot("event")
             if m.payload["data"]["type"] == "lesson_ended"]
    assert ended and ended[0]["ended_by"] == "duration"
    reported = ended[0]["duration_s"]
    # The real length, on the true clock: from the agent's own start instant (its clock was at
    # offset +0 then; the first step comes 2.5 s later) to the last status request that found
    # the lesson running (at least) and to the first that found it over (at most). Starting a
    # stopwatch when `lesson start` returns would count the CLI's start-up on a busy machine.
    began = epoch(ended[0]["actual_start"])
    at_least, at_most = running_at - began, ended_by - began
    print(f"\nclock steps {', '.join(STEPS)} s: lesson of {LESSON_S:g} s lasted {at_least:.1f} "
          f"to {at_most:.1f} s (evidence {reported:.1f} s), {len(set(subscriber.seqs()))} "
          f"records in order")
    assert abs(reported - LESSON_S) < 2.0, ended[0]
    assert LESSON_S - 1 < at_least <= at_most < LESSON_S + 6, (at_least, at_most)
    negatives = [n for m in msgs for n in _negatives(m.payload, m.topic.rsplit("/", 1)[-1])]
    assert not negatives, negatives[:20]
    backwards = [n for m in msgs for n in _intervals(m.payload, m.topic.rsplit("/", 1)[-1])]
    assert not backwards, backwards[:20]
    assert not status_negatives, status_negatives
