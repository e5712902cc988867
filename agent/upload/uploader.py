"""The uploader: takes each finished lesson's recording to the object store, one part at a time.

A thread of the daemon (the S3 client is our own and adds under 1 MB, docs/upload.md), at a lower
CPU priority than the rest of the daemon. It works through the journal (agent/upload/journal.py)
oldest lesson first:

1. every segment is read once for each part's MD5, then sent: a segment up to ``part_size_mb``
   with one PUT (its SHA-256 checked against the evidence's first), a larger one as a multipart
   upload whose SHA-256 is computed as the parts are sent and checked before it is completed
   (a mismatch aborts it). Each body carries Content-MD5, signed (the store refuses a damaged
   part and echoes the MD5 as its ETag); the evidence's SHA-256 is stored with the object
   (``x-amz-meta-sha256``);
2. after a restart, a multipart upload is resumed with ListParts: a part the store has with our
   MD5 is never sent again;
3. after completion a HEAD checks size, ETag (the part MD5s as the store computed them) and the
   stored SHA-256 before the object counts as verified;
4. with every segment verified, an HLS playlist goes beside them; then the lesson is verified
   (local retention may delete it) and ``recording_uploaded`` is raised.

It never competes with the live stream: it pauses while a lesson's media runs (unless
``upload.during_lessons``) and outside ``upload.hours``, stopping a part in the middle when a
lesson starts; every byte goes through the ``upload.max_kbps`` token bucket. Failures are retried
with exponential back-off and full jitter (``retry_min_s`` .. ``retry_max_s``); each new cause
raises one ``recording_upload_failed`` naming it and the next step, never one per attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from agent.backoff import Backoff
from agent.config import DeviceConfig, UploadConfig, read_secret
from agent.records import Record, event, rfc3339
from agent.throttle import TokenBucket
from agent.upload import hls
from agent.upload.journal import Journal, Lesson, Obj, Segment
from agent.upload.s3 import Body, S3Client, S3Error, Stopped, digest_range
from agent.upload.window import in_hours

log = logging.getLogger(__name__)

IDLE_WAIT_S = 30.0
PAUSE_POLL_S = 1.0
NICE = 10
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_CREDENTIALS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}
_CONTENT_TYPES = {".ts": "video/mp2t", ".m3u8": hls.CONTENT_TYPE}

class Recordings(Protocol):
    """What the uploader needs from media (agent.media.adapter.LessonMedia)."""

    def running(self) -> bool: ...

    def recorded(self, lesson_id: str, since: float) -> dict[str, Any]: ...

    def recording_dir(self) -> Path | None: ...


class Failure(Exception):
    """Why an attempt failed: ``cause`` for machines, ``text`` and ``next_step`` for people.
    ``permanent``: retrying cannot help; the lesson is set aside as failed."""

    def __init__(self, cause: str, text: str, next_step: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.cause, self.text, self.next_step, self.permanent = cause, text, next_step, permanent


@dataclass
class _Progress:
    lesson_id: str
    key: str
    bytes_total: int
    started: float
    sent_at_start: int


class Uploader:
    def __init__(self, cfg: UploadConfig, device: DeviceConfig, state_dir: Path,
                 recordings: Path, emit: Callable[[Record], None], media: Recordings,
                 tz: str = "Asia/Shanghai", segment_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.device = device
        self.root = Path(recordings)
        self._emit = emit
        self._media = media
        self._tz = ZoneInfo(tz)
        self._segment_s = segment_s
        self._clock = clock
        self.enabled = cfg.ready
        self._journal_path = Path(state_dir) / "uploads.db"
        self._journal_error = ""
        self.journal = self._open_journal() if self.enabled else None
        self.prefix = cfg.key_prefix.replace("{school}", device.school).replace(
            "{device}", device.id).strip("/")
        rate = cfg.max_kbps * 1000 / 8  # bytes/s; the burst: a quarter second, at least a block
        self.limiter = TokenBucket(rate, max(64 * 1024, rate / 4)) if rate > 0 else None
        self._backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: S3Client | None = None
        self._cleaned = False
        self._lock = threading.Lock()
        self._state = "idle"
        self._paused_why: str | None = None
        self._paused_at = 0.0
        self._paused_cached: str | None = None
        self._next_try_mono = 0.0
        self._progress: _Progress | None = None
        self._failure: dict[str, Any] | None = None
        self._bytes_sent_total = 0
        self._held: list[tuple[str, list[Any], dict[str, Any]]] = []  # not yet in the journal
        self.failures_total = 0
        self.aborted_total = 0

    def _open_journal(self) -> Journal | None:
        """The journal, or None while it cannot be opened (state disk full or unwritable: the
        loop tries again; the daemon must not die of it)."""
        try:
            return Journal(self._journal_path)
        except sqlite3.Error as exc:
            self._journal_error = f"{exc}"
            log.error("upload: cannot open the upload journal %s: %s; trying again",
                      self._journal_path, exc)
            return None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        # Listed now, before any lesson starts, hashed in the thread: a recording in progress is
        # never mistaken for one left behind, and a start with a large backlog stays fast.
        left = self._left_behind()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(left,), name="upload",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        if self._client is not None:
            self._client.close()
        if self.journal is not None:
            with contextlib.suppress(sqlite3.Error):
                self.journal.close()

    # -- what the rest of the agent tells it ----------------------------------------------------

    def note(self, record: Record) -> None:
        """Every event the agent raises passes here; a ``lesson_ended`` queues its recording."""
        if not self.enabled or record.kind != "event" or record.data.get("type") != "lesson_ended":
            return
        details = record.data.get("details") or {}
        job = (str(details.get("lesson_id") or ""), details.get("segments") or [], details)
        try:
            if self.journal is None:
                raise sqlite3.OperationalError(self._journal_error or "journal not open")
            self.enqueue(*job)
        except sqlite3.Error as exc:  # the state disk is full: held here, queued when it works
            log.error("upload: cannot queue lesson %s yet (%s); holding it in memory and trying "
                      "again", job[0], exc)
            with self._lock:
                self._held.append(job)
            self._wake.set()
        except Exception:  # the lesson's evidence is committed already; the start scan retries
            log.exception("upload: could not queue lesson %s", details.get("lesson_id"))

    def enqueue(self, lesson_id: str, segments: list[Any], evidence: dict[str, Any]) -> bool:
        """Queue a lesson's segments as its evidence lists them (path, bytes, sha256)."""
        assert self.journal is not None
        folder = self.root / lesson_id
        if not lesson_id or _SAFE.sub("_", lesson_id) != lesson_id:
            log.warning("upload: lesson id %r cannot be an object key; not uploaded", lesson_id)
            return False
        objects: list[tuple[str, Segment]] = []
        for raw in segments:
            seg = self._segment(raw, folder)
            if seg is not None:
                objects.append((self._key(lesson_id, Path(seg.path).name), seg))
        if not objects:
            return False
        keep = {k: evidence.get(k) for k in ("actual_start", "actual_end", "recorded_s",
                                             "ended_by") if k in evidence}
        added = self.journal.add(lesson_id, str(folder), objects, keep, self._clock())
        if added:
            log.info("upload: lesson %s queued (%d segment(s), %d bytes)", lesson_id,
                     len(objects), sum(s.bytes for _, s in objects))
            self._wake.set()
        return added

    def uploaded(self, folder: Path) -> bool:
        """For retention: the lesson in ``folder`` is in the store and verified."""
        if not self.enabled:
            return True
        if self.journal is None:
            return False  # unknown: keep it
        lesson = self.journal.lesson(folder.name)
        return lesson is not None and lesson.state == "verified"

    def discarded(self, folder: Path, size: int, reason: str) -> None:
        """Retention deleted ``folder`` before it was uploaded: say what was lost, stop trying."""
        lesson_id = folder.name
        lesson = self.journal.lesson(lesson_id) if self.journal is not None else None
        if lesson is not None:
            self.journal.set_state(lesson_id, "lost", "deleted_locally", reason)  # type: ignore[union-attr]
        objs = self.journal.objects(lesson_id) if lesson is not None else []  # type: ignore[union-attr]
        self._raise("recording_lost", "error",
                    f"recording of lesson {lesson_id} was deleted before it was uploaded "
                    f"({reason}); {sum(o.verified for o in objs)} of {len(objs)} segment(s) "
                    "had reached the store. Next step: free space on the recording disk or "
                    "let uploads run more often (upload.hours, upload.max_kbps)",
                    lesson_id=lesson_id, path=str(folder), bytes=size, reason=reason,
                    segments=len(objs), segments_uploaded=sum(o.verified for o in objs))

    def retry(self, lesson_id: str | None = None) -> dict[str, Any]:
        """``upload_retry``: failed lessons (or the one named) queued again, back-off reset."""
        if not self.enabled:
            return {"enabled": False, "queued": []}
        if self.journal is None:
            raise LookupError(f"the upload journal cannot be opened: {self._journal_error}")
        requeued = []
        for lesson in self.journal.lessons(("failed", "queued")):
            if lesson_id and lesson.lesson_id != lesson_id:
                continue
            if lesson.state == "failed":
                self.journal.set_state(lesson.lesson_id, "queued")
            requeued.append(lesson.lesson_id)
        if lesson_id and not requeued:
            known = self.journal.lesson(lesson_id)
            raise LookupError(f"lesson {lesson_id} is not waiting for upload" + (
                f" (it is {known.state})" if known else " (unknown to the upload queue)"))
        self._backoff.reset()
        with self._lock:
            self._next_try_mono = 0.0
            self._failure = None
        self._wake.set()
        return {"enabled": True, "queued": requeued, "paused": self._paused_why}

    # -- status ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False}
        if self.journal is None:
            return {"enabled": True, "state": "waiting", "paused": None, "current": None,
                    "last_error": self._failure}
        totals = self.journal.totals()
        with self._lock:
            progress, failure = self._progress, self._failure
            state, paused = self._state, self._paused_why
            wait = max(0.0, self._next_try_mono - time.monotonic())
        if state != "uploading":  # idle or waiting: say now what would hold an upload back
            paused = self._pause_reason()
            state = "paused" if paused else ("idle" if state == "paused" else state)
        current = None
        sent = self._client.bytes_sent if self._client is not None else 0
        if progress is not None:
            done = max(0, sent - progress.sent_at_start)
            elapsed = max(1e-3, time.monotonic() - progress.started)
            current = {"lesson_id": progress.lesson_id, "key": progress.key,
                       "bytes_sent": done, "bytes_total": progress.bytes_total,
                       "rate_kbps": round(done * 8 / 1000 / elapsed, 1)}
        oldest = self.journal.lessons(("queued",), limit=1)
        return {
            "enabled": True,
            "endpoint": f"{self.cfg.endpoint.rstrip('/')}/{self.cfg.bucket}/{self.prefix}/",
            "state": state, "paused": paused, "current": current,
            "queued_lessons": totals["queued"]["lessons"],
            "queued_bytes": totals["queued"]["bytes_left"],
            "oldest_queued_at": rfc3339(oldest[0].queued_at) if oldest else None,
            "uploaded_lessons": totals["verified"]["lessons"],
            "uploaded_bytes": totals["verified"]["bytes"],
            "failed_lessons": totals["failed"]["lessons"],
            "lost_lessons": totals["lost"]["lessons"],
            "bytes_sent_total": self._bytes_sent_total + sent,
            "failures_total": self.failures_total,
            "aborted_uploads_total": self.aborted_total,
            "max_kbps": self.cfg.max_kbps,
            "last_error": failure,
            "next_attempt_in_s": round(wait, 1) if failure else None,
        }

    def report(self, lesson_id: str | None = None, limit: int = 50) -> dict[str, Any]:
        """``upload_status``: the snapshot and the lessons the queue knows (newest last)."""
        snap = self.snapshot()
        if self.journal is None:
            return snap
        lessons = self.journal.lessons(limit=100_000)
        if lesson_id:
            lessons = [x for x in lessons if x.lesson_id == lesson_id]
            if not lessons:
                raise LookupError(f"lesson {lesson_id} is unknown to the upload queue")
        out = []
        for x in lessons[-limit:]:
            objs = self.journal.objects(x.lesson_id)
            out.append({"lesson_id": x.lesson_id, "state": x.state,
                        "queued_at": rfc3339(x.queued_at),
                        "done_at": rfc3339(x.done_at) if x.done_at else None,
                        "objects": len(objs), "objects_verified": sum(o.verified for o in objs),
                        "bytes": sum(o.bytes for o in objs), "attempts": x.attempts,
                        "cause": x.cause, "error": x.error})
        return {**snap, "lessons": out}

    # -- the loop -------------------------------------------------------------------------------

    def _run(self, left_behind: list[Path]) -> None:
        with contextlib.suppress(OSError):  # Linux: a thread's nice value is its own
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        self._queue_left_behind(left_behind)
        while not self._stop.is_set():
            try:
                wait = self._step()
            except Exception as exc:  # one bad step must not end uploading
                log.exception("upload: unexpected error")
                wait = self._failed(None, Failure(
                    "internal", f"unexpected error: {type(exc).__name__}: {exc}",
                    "see the agent log (journalctl -u classroom-agent)"))
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()

    def _step(self) -> float:
        """One unit of work; returns how long to wait before the next."""
        if self.journal is None:
            self.journal = self._open_journal()
            if self.journal is None:
                return self._failed(None, self._state_disk(
                    sqlite3.OperationalError(self._journal_error)))
            self._queue_left_behind(self._left_behind())
        with self._lock:
            held, self._held = self._held, []
        while held:  # lessons the journal could not take (disk full): first, in order
            try:
                self.enqueue(*held[0])
                held.pop(0)
            except sqlite3.Error as exc:
                with self._lock:
                    self._held[:0] = held
                return self._failed(None, self._state_disk(exc))
        why = self._why_paused(fresh=True)
        if why is not None:
            self._set_state("paused", why)
            return PAUSE_POLL_S
        wait = self._next_try_mono - time.monotonic()
        if wait > 0:
            self._set_state("waiting")
            return min(wait, PAUSE_POLL_S * 5)
        queued = self.journal.lessons(("queued",), limit=1)
        if not queued:
            self._set_state("idle")
            return IDLE_WAIT_S
        lesson = queued[0]
        self._set_state("uploading")
        try:
            client = self._connect()
            self._clean_abandoned(client)
            self._upload_lesson(client, lesson)
        except Stopped:
            return 0.0
        except Failure as f:
            return self._failed(lesson, f)
        except S3Error as exc:
            return self._failed(lesson, self._explain(exc))
        except sqlite3.Error as exc:
            return self._failed(lesson, self._state_disk(exc))
        self._backoff.reset()
        with self._lock:
            self._failure = None
        return 0.0

    def _failed(self, lesson: Lesson | None, f: Failure) -> float:
        self.failures_total += 1
        if self._client is not None:
            self._client.close()
            self._bytes_sent_total += self._client.bytes_sent
        self._client = None  # secrets are read again: a fixed key file works at the next try
        lesson_id = lesson.lesson_id if lesson is not None else None
        previous = self._failure
        delay = 0.0 if f.permanent else self._backoff.next_delay()
        if lesson is not None and self.journal is not None:
            with contextlib.suppress(sqlite3.Error):
                self.journal.note_attempt(lesson.lesson_id, f.cause, f.text)
                if f.permanent:
                    self.journal.set_state(lesson.lesson_id, "failed", f.cause, f.text)
        with self._lock:
            self._failure = {"cause": f.cause, "message": f.text, "next_step": f.next_step,
                             "lesson_id": lesson_id, "at": rfc3339(self._clock())}
            self._next_try_mono = time.monotonic() + delay
            self._progress = None
        log.warning("upload: %s: %s. Next step: %s%s", lesson_id or "-", f.text, f.next_step,
                    "" if f.permanent else f" (retrying in {delay:.0f} s)")
        if previous is None or previous["cause"] != f.cause or previous["lesson_id"] != lesson_id:
            attempts = (self.journal.lesson(lesson_id).attempts  # type: ignore[union-attr]
                        if lesson_id and self.journal is not None else 0)
            self._raise("recording_upload_failed", "error" if f.permanent else "warning",
                        f"upload of lesson {lesson_id or '-'} failed: {f.text}. Next step: "
                        f"{f.next_step}", lesson_id=lesson_id, cause=f.cause, error=f.text,
                        next_step=f.next_step, attempts=attempts,
                        retry_in_s=None if f.permanent else round(delay, 1))
        return delay

    def _set_state(self, state: str, paused: str | None = None) -> None:
        with self._lock:
            self._state, self._paused_why = state, paused
            if state != "uploading":
                self._progress = None

    def _why_paused(self, fresh: bool = False) -> str | None:
        """Why uploading must wait now, or None. Cached for a second (called per block)."""
        now = time.monotonic()
        if not fresh and now - self._paused_at < 1.0:
            return self._paused_cached
        self._paused_at = now
        self._paused_cached = why = self._pause_reason()
        if why is not None and self._state == "uploading":
            self._set_state("paused", why)
        return why

    def _pause_reason(self) -> str | None:
        if not self.cfg.during_lessons and self._live():
            return "a lesson is running (upload.during_lessons is false)"
        if not in_hours(self.cfg.hours, datetime.fromtimestamp(self._clock(), self._tz)):
            return f"outside upload.hours ({', '.join(self.cfg.hours)})"
        return None

    def _live(self) -> bool:
        try:
            return bool(self._media.running())
        except Exception:
            return False

    def _keep_going(self) -> bool:
        return not self._stop.is_set() and self._why_paused() is None

    # -- one lesson -----------------------------------------------------------------------------

    def _upload_lesson(self, client: S3Client, lesson: Lesson) -> None:
        assert self.journal is not None
        folder = Path(lesson.dir)
        if not folder.is_dir():
            self.discarded(folder, 0, "missing: the recording directory is gone")
            return
        objs = [o for o in self.journal.objects(lesson.lesson_id)
                if not o.key.endswith(hls.NAME)]
        started = time.monotonic()
        for obj in objs:
            if not obj.verified:
                self._put(client, obj)
        segments = self.journal.objects(lesson.lesson_id)
        playlist = self._playlist(lesson, [o for o in segments if not o.key.endswith(hls.NAME)])
        done = [o for o in segments if o.key.endswith(hls.NAME) and o.verified]
        if not done:
            data = playlist
            obj = self.journal.add_object(lesson.lesson_id, self._key(lesson.lesson_id, hls.NAME),
                                          Segment(str(folder / hls.NAME), len(data),
                                                  hashlib.sha256(data).hexdigest(), None))
            self._put(client, obj, data=data)
        self.journal.set_state(lesson.lesson_id, "verified", now=self._clock())
        objs = self.journal.objects(lesson.lesson_id)
        seg_objs = [o for o in objs if not o.key.endswith(hls.NAME)]
        total = sum(o.bytes for o in seg_objs)
        log.info("upload: lesson %s uploaded and verified: %d object(s), %d bytes in %.1f s",
                 lesson.lesson_id, len(objs), total, time.monotonic() - started)
        self._raise(
            "recording_uploaded", "info",
            f"recording of lesson {lesson.lesson_id} uploaded and verified: {len(seg_objs)} "
            f"segment(s), {total} bytes, playlist {self._key(lesson.lesson_id, hls.NAME)}",
            lesson_id=lesson.lesson_id, bucket=self.cfg.bucket,
            endpoint=self.cfg.endpoint.rstrip("/"),
            playlist=self._key(lesson.lesson_id, hls.NAME), bytes=total,
            duration_s=round(sum(o.duration_s or 0.0 for o in seg_objs), 3),
            objects=[{"key": o.key, "bytes": o.bytes, "sha256": o.sha256} for o in seg_objs],
            queued_at=rfc3339(lesson.queued_at), attempts=lesson.attempts + 1)
        self._wake.set()

    def _playlist(self, lesson: Lesson, objs: list[Obj]) -> bytes:
        starts = set()
        for csv in Path(lesson.dir).glob("segments-*.csv"):
            number = csv.stem.removeprefix("segments-")
            if number.isdigit():
                starts.add(int(number))
        entries = []
        for o in objs:
            name = Path(o.path).name
            number = name.removeprefix("seg-").removesuffix(".ts")
            entries.append((name, o.duration_s, number.isdigit() and int(number) in starts))
        return hls.playlist(entries, self._segment_s)

    # -- one object -----------------------------------------------------------------------------

    def _put(self, client: S3Client, obj: Obj, data: bytes | None = None) -> None:
        """Send one object (or find it already there), then verify it."""
        assert self.journal is not None
        part_size = self.cfg.part_size_mb * 1_048_576
        bodies = self._bodies(obj, part_size, data)
        md5s = [b.md5 for b in bodies]
        expect = _etag_of(md5s, multipart=obj.bytes > part_size)
        meta = {"sha256": obj.sha256, "lesson-id": obj.lesson_id}
        ctype = _CONTENT_TYPES.get(Path(obj.key).suffix, "application/octet-stream")
        with self._lock:
            self._progress = _Progress(obj.lesson_id, obj.key, obj.bytes, time.monotonic(),
                                       client.bytes_sent)
        if obj.upload_id is None and self._matches(client.head_object(obj.key), obj, expect):
            log.info("upload: %s found complete in the store (sent before an interruption)",
                     obj.key)
            self.journal.object_verified(obj.lesson_id, obj.seq, expect)
            return
        if obj.bytes <= part_size:
            body = bodies[0] if data is None else None
            if body is not None:
                client.put_object(obj.key, body, meta, ctype, self._keep_going)
            else:
                client.put_bytes(obj.key, data or b"", meta, ctype)
        else:
            self._multipart(client, obj, bodies, meta, ctype)
        head = client.head_object(obj.key)
        if not self._matches(head, obj, expect):
            self.journal.set_upload_id(obj.lesson_id, obj.seq, None)
            raise Failure("verify_failed",
                          f"{obj.key} in the store does not match what was sent (size or "
                          f"checksum differs: {_describe(head)}, expected {obj.bytes} bytes, "
                          f"ETag {expect})", "none: it is uploaded again")
        self.journal.object_verified(obj.lesson_id, obj.seq, expect)

    def _multipart(self, client: S3Client, obj: Obj, bodies: list[Body], meta: dict[str, str],
                   ctype: str) -> None:
        assert self.journal is not None
        upload_id = obj.upload_id
        have: dict[int, str] = {}
        if upload_id is not None:
            try:
                listed = client.list_parts(obj.key, upload_id)
            except S3Error as exc:
                if exc.status != 404:
                    raise
                log.info("upload: %s: multipart upload %s is gone from the store; starting "
                         "again", obj.key, upload_id[:16])
                self.journal.set_upload_id(obj.lesson_id, obj.seq, None)
                upload_id = None
            else:
                for p in listed:
                    i = p.number - 1
                    if 0 <= i < len(bodies) and p.size == bodies[i].size \
                            and p.etag == bodies[i].md5.hex():
                        have[p.number] = p.etag
                for n, etag in have.items():
                    self.journal.part_done(upload_id, n, etag, bodies[n - 1].size)
                log.info("upload: %s: resuming, the store has %d of %d part(s)", obj.key,
                         len(have), len(bodies))
        if upload_id is None:
            upload_id = client.create_multipart(obj.key, meta, ctype)
            self.journal.set_upload_id(obj.lesson_id, obj.seq, upload_id)
        whole = hashlib.sha256()  # of the parts in order: sent ones as they go, the rest read
        for n, body in enumerate(bodies, 1):
            if n in have:
                for chunk in body.blocks():
                    whole.update(chunk)
                continue
            etag = client.upload_part(obj.key, upload_id, n, replace(body, tap=whole.update),
                                      self._keep_going)
            if etag and etag != body.md5.hex():
                raise Failure("verify_failed", f"{obj.key} part {n}: the store's ETag {etag} "
                              f"is not the part's MD5 {body.md5.hex()}",
                              "none: the part is sent again")
            self.journal.part_done(upload_id, n, body.md5.hex(), body.size)
        if whole.hexdigest() != obj.sha256:  # never complete what the evidence does not say
            client.abort_multipart(obj.key, upload_id)
            self.journal.set_upload_id(obj.lesson_id, obj.seq, None)
            raise _mismatch(Path(obj.path))
        try:
            client.complete_multipart(obj.key, upload_id,
                                      [(n, b.md5.hex()) for n, b in enumerate(bodies, 1)])
        except S3Error as exc:
            if exc.status != 404:  # 404: completed before a kill; the HEAD below decides
                raise

    def _bodies(self, obj: Obj, part_size: int, data: bytes | None) -> list[Body]:
        """Read the object once: its parts' digests, and its SHA-256 checked against the
        evidence (only the evidence's first ``bytes`` bytes are sent: a segment a killed worker
        was still finishing may have grown since)."""
        if data is not None:
            return [Body(Path(obj.path), 0, len(data), hashlib.md5(data, usedforsecurity=False)
                         .digest())]
        path = Path(obj.path)
        single = obj.bytes <= part_size  # its SHA-256 is checked before it is sent
        try:
            size = path.stat().st_size
            if size < obj.bytes:
                raise Failure("local_file", f"{path} has {size} bytes, its evidence says "
                              f"{obj.bytes}", "check the recording disk; the recording "
                              "cannot be uploaded as recorded", permanent=True)
            whole = hashlib.sha256() if single else None
            bodies = []
            with open(path, "rb") as f:
                offset = 0
                while offset < obj.bytes or not bodies:
                    n = min(part_size, obj.bytes - offset)
                    bodies.append(Body(path, offset, n, digest_range(f, n, whole)))
                    offset += n
        except FileNotFoundError:
            raise Failure("local_file", f"{path} is missing", "check the recording disk; the "
                          "rest of the lesson is kept", permanent=True) from None
        except OSError as exc:
            raise Failure("local_file", f"cannot read {path}: {exc}",
                          "check the recording disk (dmesg)") from None
        if whole is not None and whole.hexdigest() != obj.sha256:
            raise _mismatch(path)
        return bodies

    @staticmethod
    def _matches(head: Any, obj: Obj, etag: str) -> bool:
        if head is None:
            return False
        h = head.headers
        return (h.get("content-length") == str(obj.bytes)
                and h.get("etag", "").strip('"') == etag
                and h.get("x-amz-meta-sha256") == obj.sha256)

    # -- the store ------------------------------------------------------------------------------

    def _connect(self) -> S3Client:
        if self._client is not None:
            return self._client
        cfg = self.cfg
        try:
            access = read_secret(cfg.access_key_file, "")
            secret = read_secret(cfg.secret_key_file, "")
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure("credentials", f"cannot read the key files: {type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}",
                          "check upload.access_key_file and upload.secret_key_file (they must "
                          "exist and be readable by the agent)") from None
        if not access or not secret:
            raise Failure("credentials", "a key file is empty", "write the access key and the "
                          "secret key into upload.access_key_file and upload.secret_key_file")
        self._client = S3Client(cfg.endpoint, cfg.bucket, cfg.region, access.strip(),
                                secret.strip(), ca_file=cfg.tls.ca_file, verify=cfg.tls.verify,
                                timeout_s=cfg.timeout_s, bucket_limiter=self.limiter,
                                clock=self._clock)
        return self._client

    def _clean_abandoned(self, client: S3Client) -> None:
        """Once per run: abort this terminal's multipart uploads the journal does not know
        (started just before a kill, before their id reached the journal)."""
        if self._cleaned or self.journal is None:
            return
        known = self.journal.known_upload_ids()
        for key, upload_id in client.list_multipart(self.prefix + "/"):
            if upload_id not in known and key.startswith(self.prefix + "/"):
                client.abort_multipart(key, upload_id)
                self.aborted_total += 1
                log.info("upload: aborted an abandoned multipart upload of %s", key)
        self._cleaned = True

    def _state_disk(self, exc: sqlite3.Error) -> Failure:
        return Failure("state_disk", f"cannot write the upload journal "
                       f"{getattr(self.journal, 'path', '')}: {exc}", "free space in the state "
                       "directory (df -h); the upload resumes by itself where it stopped")

    def _explain(self, exc: S3Error) -> Failure:
        where = f"{self.cfg.endpoint.rstrip('/')}/{self.cfg.bucket}"
        if exc.network:
            if exc.code == "tls":
                return Failure("tls", f"TLS with {self.cfg.endpoint} failed: {exc.message}",
                               "set upload.tls.ca_file to the CA that signed the store's "
                               "certificate")
            return Failure("unreachable", f"cannot reach {self.cfg.endpoint}: {exc.message}",
                           "check the network and that the store runs; the upload resumes "
                           "by itself where it stopped")
        if exc.code in _CREDENTIALS or exc.status == 403:
            return Failure("credentials", f"the store refused the credentials for {where} "
                           f"({exc.status} {exc.code})", "check the keys in "
                           "upload.access_key_file / upload.secret_key_file and that they may "
                           f"write to bucket {self.cfg.bucket}")
        if exc.code == "NoSuchBucket" or (exc.status == 404 and exc.code == "NotFound"):
            return Failure("no_bucket", f"bucket {self.cfg.bucket} does not exist on "
                           f"{self.cfg.endpoint}", "create it on the store (the agent never "
                           "creates buckets) or correct upload.bucket")
        return Failure("store_error", f"the store answered {exc.status} {exc.code}: "
                       f"{exc.message}", "none if it passes; if it lasts, check the store's "
                       "health and free space")

    # -- helpers --------------------------------------------------------------------------------

    def _segment(self, raw: Any, folder: Path) -> Segment | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            return None
        path = Path(raw["path"])
        try:
            inside = path.resolve().parent == folder.resolve()
        except (OSError, ValueError):
            inside = False
        if not inside or not re.fullmatch(r"seg-\d{1,9}\.ts", path.name):
            log.warning("upload: %s is not a segment of %s; not uploaded", raw["path"][:200],
                        folder)
            return None
        size, sha = raw.get("bytes"), raw.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str) or len(sha) != 64 or size <= 0:
            return None
        duration = raw.get("duration_s")
        return Segment(str(path), size, sha,
                       float(duration) if isinstance(duration, int | float) else None)

    def _key(self, lesson_id: str, name: str) -> str:
        return f"{self.prefix}/{lesson_id}/{name}"

    def _left_behind(self) -> list[Path]:
        """Recording directories no queue entry knows (a kill between a lesson's evidence and
        its queue entry, or upload turned on later)."""
        if self.journal is None or not self.root.is_dir():
            return []
        active = self._media.recording_dir()
        return [d for d in sorted(self.root.iterdir())
                if d.is_dir() and d != active and self.journal.lesson(d.name) is None]

    def _queue_left_behind(self, folders: list[Path]) -> None:
        """Queue them from their files (hashed now; the evidence of such a lesson, if it was
        sent, listed the same files)."""
        for folder in folders:
            if self._stop.is_set():
                return
            try:
                found = self._media.recorded(folder.name, folder.stat().st_mtime)
                self.enqueue(folder.name, found.get("segments") or [], {"ended_by": None})
            except Exception:
                log.exception("upload: could not queue the recording in %s", folder)

    def _raise(self, type_: str, severity: str, message: str, **details: Any) -> None:
        try:
            self._emit(event(type_, severity, message, **details))  # type: ignore[arg-type]
        except Exception:
            log.exception("upload: could not raise %s", type_)


def _mismatch(path: Path) -> Failure:
    return Failure("checksum_mismatch", f"{path} no longer matches its evidence's SHA-256 "
                   "(changed or damaged on disk)", "check the recording disk (dmesg, "
                   "smartctl); the recording is kept, not uploaded", permanent=True)


def _etag_of(md5s: list[bytes], multipart: bool) -> str:
    if not multipart:
        return md5s[0].hex()
    return f"{hashlib.md5(b''.join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"


def _describe(head: Any) -> str:
    if head is None:
        return "not found"
    h = head.headers
    return f"{h.get('content-length')} bytes, ETag {h.get('etag', '').strip(chr(34))}"
