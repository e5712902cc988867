"""Unit tests of the upload's small parts: SigV4 against AWS's published examples, the playlist,
the hours window, the token bucket, retention with an upload ledger, the config rules."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigError, loads
from agent.media import retention
from agent.throttle import TokenBucket
from agent.upload import hls
from agent.upload.s3 import EMPTY_SHA256, S3Client, _canonical_query, _clip
from agent.upload.window import in_hours

# AWS's SigV4 examples for S3 ("Signature Calculations for the Authorization Header"), with the
# documentation's example key pair, at 2013-05-24T00:00:00Z.
AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _aws_client() -> S3Client:
    return S3Client("https://examplebucket.s3.amazonaws.com", "examplebucket", "us-east-1",
                    AWS_KEY, AWS_SECRET, clock=lambda: 1369353600.0)


@pytest.mark.parametrize(("path", "query", "extra", "signature"), [
    ("/test.txt", {}, {"range": "bytes=0-9"},
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ("/", {"lifecycle": ""}, {},
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("/", {"max-keys": "2", "prefix": "J"}, {},
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
])
def test_sigv4_matches_the_aws_examples(path: str, query: dict[str, str], extra: dict[str, str],
                                        signature: str) -> None:
    hdrs = {"host": "examplebucket.s3.amazonaws.com", "x-amz-content-sha256": EMPTY_SHA256,
            **extra}
    out = _aws_client()._sign("GET", path, _canonical_query(query), hdrs, EMPTY_SHA256)
    assert out["x-amz-date"] == "20130524T000000Z"
    assert out["authorization"].endswith(f"Signature={signature}")
    assert f"Credential={AWS_KEY}/20130524/us-east-1/s3/aws4_request" in out["authorization"]


def test_the_client_never_shows_its_secret() -> None:
    c = _aws_client()
    assert AWS_SECRET not in repr(c) and AWS_SECRET not in str(vars(c).get("host_header"))


def test_a_store_error_text_cannot_forge_a_log_line() -> None:
    assert _clip("bad\nINFO forged line\x1b[31m") == "bad INFO forged line [31m"
    assert len(_clip("x" * 5000)) == 303


def test_playlist_is_hls_vod_with_discontinuities_at_new_worker_runs() -> None:
    text = hls.playlist([("seg-00000.ts", 2.0, True), ("seg-00001.ts", 1.5, False),
                         ("seg-00002.ts", None, True)], default_s=4.0).decode()
    lines = text.splitlines()
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:4",
                         "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    assert lines[5:] == ["#EXTINF:2.000,", "seg-00000.ts", "#EXTINF:1.500,", "seg-00001.ts",
                         "#EXT-X-DISCONTINUITY", "#EXTINF:4.000,", "seg-00002.ts",
                         "#EXT-X-ENDLIST"]


@pytest.mark.parametrize(("hours", "hhmm", "allowed"), [
    ([], "10:00", True),
    (["18:00-07:30"], "23:59", True), (["18:00-07:30"], "07:29", True),
    (["18:00-07:30"], "07:30", False), (["18:00-07:30"], "12:00", False),
    (["12:00-13:30", "17:30-18:00"], "13:00", True), (["12:00-13:30"], "13:30", False),
    (["08:00-08:00"], "03:00", True),
])
def test_upload_hours(hours: list[str], hhmm: str, allowed: bool) -> None:
    h, m = map(int, hhmm.split(":"))
    when = datetime(2026, 11, 30, h, m, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert in_hours(hours, when) is allowed


def test_token_bucket_paces_bytes() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(100_000, 10_000, clock=lambda: now[0])
    for _ in range(100):
        bucket.take(10_000, sleep)
    assert 9.8 <= now[0] <= 10.0  # 1 MB at 100 kB/s, less the first burst
    assert not bucket.allow()  # the same bucket refuses a command-style request meanwhile


def _lesson(root: Path, name: str, mb: int, age_days: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "seg-00000.ts").write_bytes(os.urandom(mb * 1_048_576))
    t = time.time() - age_days * 86400
    os.utime(d, (t, t))
    return d


def test_retention_with_upload_keeps_what_is_not_uploaded(tmp_path: Path) -> None:
    old_up = _lesson(tmp_path, "a-old-uploaded", 1, 40)
    old_not = _lesson(tmp_path, "b-old-not-uploaded", 1, 40)
    new_not = _lesson(tmp_path, "c-new-not-uploaded", 1, 2)
    new_up = _lesson(tmp_path, "d-new-uploaded", 1, 1)
    done = {old_up.name, new_up.name}
    removed = retention.enforce(tmp_path, 30, 0, uploaded=lambda d: d.name in done)
    assert [(Path(r.path).name, r.reason, r.uploaded) for r in removed] == [
        ("a-old-uploaded", "age", True)]
    assert old_not.exists(), "age alone never deletes what is not uploaded"
    # Space needed: uploaded ones first, then the oldest not uploaded (reported as such).
    free = retention.free_mb(tmp_path)
    removed = retention.enforce(tmp_path, 30, free + 1.5, uploaded=lambda d: d.name in done)
    assert [(Path(r.path).name, r.uploaded) for r in removed] == [
        ("d-new-uploaded", True), ("b-old-not-uploaded", False)]
    assert new_not.exists()


def test_retention_without_upload_is_unchanged(tmp_path: Path) -> None:
    _lesson(tmp_path, "old", 1, 40)
    removed = retention.enforce(tmp_path, 30, 0)
    assert [(Path(r.path).name, r.uploaded) for r in removed] == [("old", None)]


BASE = "device: {id: room-101, school: school-a}\n"


def test_upload_config_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        loads(BASE + "upload: {enabled: true, endpoint: 'http://s3 host', bucket: B}\n")
    text = str(err.value)
    assert "upload.endpoint: invalid value" in text and "upload.bucket: invalid value" in text
    with pytest.raises(ConfigError) as err:
        loads(BASE + "upload: {enabled: true, key_prefix: 'recordings/{school}'}\n")
    text = str(err.value)
    for key in ("endpoint", "bucket", "access_key_file", "secret_key_file"):
        assert f"upload.{key}: required when upload.enabled is true" in text
    assert "upload.key_prefix: must contain {device}" in text
    with pytest.raises(ConfigError, match=r"upload\.hours\[0\]: invalid value"):
        loads(BASE + "upload: {hours: ['25:00-07:00']}\n")
    with pytest.raises(ConfigError, match="retry_max_s: must be at least"):
        loads(BASE + "upload: {retry_min_s: 60, retry_max_s: 30}\n")
    key = tmp_path / "k"
    key.write_text("x")
    cfg = loads(BASE + f"upload: {{enabled: true, endpoint: 'https://s3.example.cn:9000', "
                f"bucket: lessons, access_key_file: {key}, secret_key_file: {key}, "
                "hours: ['17:30-07:30']}\n")
    assert cfg.upload.ready and cfg.upload.hours == ["17:30-07:30"]


def test_uploads_off_answers_as_the_uploader_does_when_off(tmp_path: Path) -> None:
    """The daemon stands agent.upload.off in for the uploader when uploads are off (so that it
    does not load it); status and commands must not tell the difference."""
    from agent.upload.off import UploadsOff
    from agent.upload.uploader import Uploader

    cfg = loads(BASE)
    real = Uploader(cfg.upload, cfg.device, tmp_path / "state", tmp_path / "rec",
                    lambda _r: None, None)  # type: ignore[arg-type]
    off = UploadsOff()
    assert real.enabled is off.enabled is False
    assert off.snapshot() == real.snapshot()
    assert off.report() == real.report() and off.report("x") == real.report("x")
    assert off.retry() == real.retry() and off.retry("x") == real.retry("x")
    assert not (tmp_path / "state").exists()  # neither opens a journal
