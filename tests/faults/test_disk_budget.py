"""Disk budget exhausted, on a really small filesystem: a 40 MiB tmpfs mounted for the test.

The agent's state directory (outbox, lesson state) and its recordings live on that filesystem; a
filler file (``posix_fallocate``) takes the space away and gives it back. Real parts throughout:
the agent process, Mosquitto, the media worker with FFmpeg, an FFmpeg RTMP receiver.

Mounting needs root (CAP_SYS_ADMIN); without it the tests are skipped with that reason. A
filler on the machine's own disk would fill the developer's disk, so there is no fallback.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxConfig
from agent.media.retention import free_mb
from agent.outbox import Outbox
from agent.records import Envelope, Record
from tests.receivers import RtmpReceiver
from tests.support import Broker, Subscriber, free_port, schema_errors, wait_until

FS_MB = 40
RESERVE_MB = 12
MARGIN_MB = 4


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0755", "tmpfs",
                          str(mnt)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a {FS_MB} MiB tmpfs (needs root): {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Filler:
    """A file that takes free space away (allocated, not sparse) and gives it back."""

    def __init__(self, fs: Path) -> None:
        self.path = fs / "filler"

    def leave_free(self, mb: float) -> None:
        """Grow the filler until ``mb`` MiB are left free (0: the filesystem is full)."""
        want = int((free_mb(self.path.parent) - mb) * 1_048_576)
        if want <= 0:
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):  # ENOSPC at the very end is the point
                os.posix_fallocate(fd, size, want)
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class FreeWatch:
    """Samples free space every 50 ms in a thread: the lowest value seen is the test's proof."""

    def __init__(self, fs: Path) -> None:
        self.fs, self.lowest = fs, float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.lowest = min(self.lowest, free_mb(self.fs))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Relistening:
    """An RTMP receiver that listens again after each publisher leaves (an FFmpeg listener
    takes one publisher; the agent reconnects when its media worker is replaced)."""

    def __init__(self, receiver: RtmpReceiver) -> None:
        self.receiver = receiver
        self._stop = threading.Event()
        receiver.start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if not self.receiver.running():
                with contextlib.suppress(AssertionError):
                    self.receiver.start()

    def bytes_since(self, life: int) -> int:
        return sum(self.receiver.size(i) for i in range(life, len(self.receiver.files)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.receiver.kill()


def _events(sub: Subscriber, type_: str) -> list[dict[str, Any]]:
    """The events of ``type_``: their data, plus the record's ``seq``."""
    return [{**m.payload["data"], "seq": m.payload["seq"]} for m in sub.snapshot("event")
            if m.payload["data"]["type"] == type_]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _segments(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.glob("seg-*.ts"))}


def test_recording_stops_before_the_disk_is_full_and_resumes(
        tmp_path: Path, small_fs: Path, broker: Broker, subscriber: Subscriber,
        agent_factory) -> None:
    state = small_fs / "state"
    old = state / "recordings" / "2026-01-01-old-lesson"
    old.mkdir(parents=True)
    (old / "seg-00000.ts").write_bytes(os.urandom(6 * 1_048_576))
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    rtmp = Relistening(RtmpReceiver(free_port(), tmp_path / "live.flv", path="live/room-101"))
    agent = agent_factory(
        state_dir=str(state), telemetry={"interval_s": 0.5},
        media={"video": {"width": 320, "height": 240, "fps": 15},
               "encoder": {"video_bitrate_kbps": 4000, "preset": "ultrafast", "gop_s": 1},
               "live": [{"url": rtmp.receiver.url, "name": "platform"}],
               "recording": {"segment_s": 2, "min_free_mb": RESERVE_MB,
                             "resume_margin_mb": MARGIN_MB, "check_s": 0.5}})
    filler, watch = Filler(small_fs), FreeWatch(small_fs)
    try:
        agent.start()
        out = agent.cli("lesson", "start", "--config", str(agent.config_path), "--duration",
                        "600", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        lesson = wait_until(lambda: agent.status()["lessons"]["current"], 10, "the lesson")
        folder = state / "recordings" / lesson["lesson_id"]
        wait_until(lambda: len(_segments(folder)) >= 2, 60, "two recorded segments")

        # Take the space away: under the reserve. Older lessons go first, then the recording.
        filler.leave_free(RESERVE_MB - 3)
        stopped = subscriber.wait_for(lambda _m: _events(subscriber, "recording_stopped"), 60,
                                      "recording_stopped")[0]
        removed = _events(subscriber, "recordings_removed")
        assert removed and removed[0]["details"]["removed"][0]["path"] == str(old)
        assert removed[0]["details"]["removed"][0]["reason"] == "free_space"
        assert removed[0]["seq"] < stopped["seq"], "older lessons go before the recording"
        assert not old.exists() and folder.exists(), "the running lesson is never removed"
        d = stopped["details"]
        assert d["reason"] == "disk_full" and d["lesson_id"] == lesson["lesson_id"]
        assert d["free_mb"] <= RESERVE_MB and d["live_continues"] is True

        # Stopped means stopped: no segment grows or appears; the live stream goes on.
        time.sleep(1.5)  # the old worker's last segment is finished by now
        on_disk, life = _segments(folder), len(rtmp.receiver.files)
        metrics_before = len(subscriber.snapshot("metrics"))
        time.sleep(5)
        assert _segments(folder) == on_disk, "segments written while the disk is short"
        assert rtmp.bytes_since(life - 1) > 0
        wait_until(lambda: rtmp.bytes_since(life - 1) > 50_000, 20, "live bytes while stopped")
        assert agent.status()["lessons"]["current"]["lesson_id"] == lesson["lesson_id"]
        assert len(subscriber.snapshot("metrics")) > metrics_before + 4, "telemetry goes on"
        assert watch.lowest > 2, f"free space fell to {watch.lowest:.1f} MiB"

        # Space comes back: recording resumes in the same lesson, numbering continues.
        filler.remove()
        resumed = subscriber.wait_for(lambda _m: _events(subscriber, "recording_resumed"), 30,
                                      "recording_resumed")[0]
        assert resumed["details"]["lesson_id"] == lesson["lesson_id"]
        last_before = max(on_disk)
        wait_until(lambda: len([n for n in _segments(folder) if n > last_before]) >= 2, 60,
                   "new segments after the resume")
        out = agent.cli("lesson", "stop", "--config", str(agent.config_path), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        ended = subscriber.wait_for(lambda _m: _events(subscriber, "lesson_ended"), 60,
                                    "lesson_ended")[0]["details"]
    finally:
        watch.close()
        rtmp.close()
    gaps = [i for i in ended["interruptions"] if i["what"] == "recording_stopped"]
    assert len(gaps) == 1 and gaps[0]["duration_s"] >= 5, ended["interruptions"]
    assert "disk_full" in gaps[0]["detail"]
    names = [Path(s["path"]).name for s in ended["segments"]]
    assert names == sorted(names) and names[-1] > last_before and set(on_disk) <= set(names)
    assert ended["live_s"]["platform"] > 10
    problems = [e for m in subscriber.snapshot() for e in schema_errors(m)]
    assert not problems, problems[:5]
    print(f"\nlowest free space seen: {watch.lowest:.1f} MiB (reserve {RESERVE_MB}); recording "
          f"stopped at {d['free_mb']} MiB free for {gaps[0]['duration_s']:.1f} s; "
          f"{len(names)} segments, live {ended['live_s']['platform']} s")


def test_outbox_on_a_full_disk_with_the_broker_down(
        small_fs: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    agent = agent_factory(state_dir=str(small_fs / "state"), telemetry={"interval_s": 0.2},
                          outbox={"max_records": 60})
    filler = Filler(small_fs)
    agent.start()
    subscriber.wait_for(lambda m: len(m) >= 3, 30, "the first records")
    # A clean stop: a SIGKILLed Mosquitto loses what it acknowledged since its last autosave,
    # which would read as the agent's loss here (the broker-kill tests cover that fault).
    broker.stop()
    # Bounded: the oldest records go first and are counted.
    wait_until(lambda: agent.status()["outbox"]["dropped_total"] > 0, 60, "the outbox bound")
    filler.leave_free(0)
    assert free_mb(small_fs) < 0.01
    # SQLite goes on in the WAL pages it already has until it needs a new one.
    wait_until(lambda: "cannot commit" in agent.log_text(), 90, "the outbox to feel the full disk")
    full_from = time.time()
    time.sleep(8)
    assert agent.status()["agent"]["pid"] == agent.proc.pid, "the daemon is alive"
    full_until = time.time()
    filler.remove()
    broker.start()
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0
               and agent.status()["broker"]["connected"], 90, "the outbox to drain")
    last_seq = agent.status()["outbox"]["last_seq"]
    subscriber.wait_for(lambda _m: max(subscriber.seqs(), default=0) >= last_seq, 60,
                        "every record up to the last seq")
    dropped = agent.status()["outbox"]["dropped_total"]
    metrics = [m.payload for m in subscriber.snapshot("metrics")]
    during = [m for m in metrics if full_from + 1 <= _epoch(m["ts"]) <= full_until - 1]
    assert len(during) >= 15, f"only {len(during)} metrics from the full-disk window arrived"
    seen = set(subscriber.seqs())
    missing = sorted(set(range(1, last_seq + 1)) - seen)
    assert len(missing) == dropped, f"{len(missing)} seqs missing, {dropped} counted as dropped"
    assert missing == list(range(missing[0], missing[-1] + 1)), "only the oldest were dropped"
    drained = time.time()
    later = subscriber.wait_for(
        lambda ms: [m.payload for m in ms if m.topic.endswith("/metrics")
                    and _epoch(m.payload["ts"]) > drained + 1], 30, "metrics after the drain")
    reported = later[0]["data"]["agent"]["outbox"]["dropped_total"]
    assert reported == dropped, "nothing was dropped from the memory hold (it is far from full)"
    problems = [e for m in subscriber.snapshot() for e in schema_errors(m)]
    assert not problems, problems[:5]
    print(f"\nfull disk for {full_until - full_from:.1f} s: {len(during)} metrics from that "
          f"window delivered afterwards; {len(missing)} seqs missing, {dropped} counted dropped "
          f"by the outbox, {reported} in metrics; last seq {last_seq}")


# -- the outbox's accounting, unit by unit (the agent-level test above relies on it) ---------


def _outbox(state: Path, max_records: int) -> Outbox:
    return Outbox(state, OutboxConfig(max_records=max_records), Envelope("room-101", "school-a"))


def _metrics(n: int) -> list[Record]:
    return [Record("metrics", {"i": i, "pad": "x" * 200}) for i in range(n)]


def test_outbox_failed_commit_on_a_full_disk_counts_no_drop(small_fs: Path) -> None:
    outbox = _outbox(small_fs / "state", max_records=10)
    assert outbox.append(_metrics(10)) == list(range(1, 11))
    filler = Filler(small_fs)
    filler.leave_free(0)
    failures = 0
    for _ in range(20):  # the WAL may take a few commits before it needs a new page
        try:
            outbox.append(_metrics(5))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)
            failures += 1
    assert failures, "the full disk never reached SQLite"
    stats = outbox.stats()
    committed = stats.last_seq - 10
    assert stats.dropped_total == committed, "only rows really dropped are counted"
    filler.remove()
    seqs = outbox.append(_metrics(5))
    assert seqs == list(range(stats.last_seq + 1, stats.last_seq + 6)), "no seq lost to a failure"
    assert outbox.stats().depth == 10
    outbox.close()


def test_outbox_bound_does_not_count_delivered_rows_as_dropped(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, max_records=10)
    outbox.ack(outbox.append(_metrics(10)))  # delivered; deleted at the next flush
    outbox.append(_metrics(3))
    stats = outbox.stats()
    assert (stats.dropped_total, stats.depth) == (0, 3)
    outbox.append(_metrics(9))  # now over the bound with undelivered rows: 2 really dropped
    assert outbox.stats().dropped_total == 2
    outbox.close()
