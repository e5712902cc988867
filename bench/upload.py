"""Upload of recordings to a real object store (SeaweedFS on loopback): libraries, overhead, and
what it does to a live lesson on a shared 4 Mbit/s link.

Three parts (each can be run alone):

``--libraries``  The same files (``--mb`` MB in 20 MiB segments) uploaded at the same part size
    (8 MiB, one request at a time, each process at nice 10 like the uploader) by: our S3 client
    bare (``agent/upload/s3.py``: hash, then
    multipart), the agent's uploader (the same client plus journal, ListParts bookkeeping,
    HEAD verification and the HLS playlist), boto3 and the MinIO SDK. Each runs in a fresh
    process: RSS added by importing the library and making a client (after ``agent.daemon`` is
    imported, as in the daemon), peak RSS, CPU seconds per 100 MB, throughput. Target: the
    uploader >= 0.9x the bare client's throughput.

``--live``  A live lesson (the real media worker, synthetic 640x360@25, 1200 kbit/s, RTMP)
    streams through a rate-limited TCP link of our own (a proxy: one FIFO queue of 256 KiB for
    every connection's upstream bytes, drained by a token bucket at ``--link-kbps`` 4000, as a
    school's uplink with its router's buffer) while the uploader
    sends a lesson's recording through the same link: paused (the default: not during a
    lesson), capped (``upload.max_kbps`` 1500) and uncapped. The receiver decodes each frame's
    time strip: frames that arrived, and capture-to-receiver latency p50/p95/max.

``--kills N``  tests/faults/test_upload_faults.py's SIGKILL test with N kills (20 by default).

Usage: python bench/upload.py [--libraries] [--live] [--kills 20] [--mb 100] [--seconds 30]
Prints os.getloadavg() and the process count beside the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _benchlib import ROOT, free_port, log, sigterm_as_interrupt

sys.path.insert(0, str(ROOT))

MiB = 1_048_576
PART = 8 * MiB
SEGMENT = 20 * MiB


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    procs = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
    return f"load average {load}; {procs} processes; {os.cpu_count()} CPUs"


# -- the store ------------------------------------------------------------------------------------

def start_store(workdir: Path) -> Any:
    from tests.objectstore import SeaweedFS

    store = SeaweedFS(workdir / "seaweedfs").start()
    store.make_bucket()
    return store


def make_files(folder: Path, total_mb: int) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    segs, left, i = [], total_mb * 1_000_000, 0
    while left > 0:
        size = min(SEGMENT, left)
        data = os.urandom(size)
        path = folder / f"seg-{i:05d}.ts"
        path.write_bytes(data)
        segs.append({"path": str(path), "bytes": size, "sha256": hashlib.sha256(data).hexdigest(),
                     "duration_s": 60.0})
        left -= size
        i += 1
    return segs


# -- one library, in a child process ----------------------------------------------------------

def secret_file(path: Path, text: str) -> None:
    """A key file as the agent wants one: readable by its owner only, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def child(method: str, endpoint: str, bucket: str, files: str, prefix: str) -> None:
    """Runs in a fresh process: import, make a client, upload the files; prints JSON. The key
    pair comes on standard input (one JSON line), never on the command line: ``ps`` and
    ``/proc/PID/cmdline`` show a command line to every user of the machine."""
    keys = json.loads(sys.stdin.readline())
    access, secret = keys["access"], keys["secret"]
    import psutil

    import agent.daemon  # noqa: F401  the daemon's own imports come first, as in the agent

    # The uploader's thread runs at nice 10 (agent/upload/uploader.py); on a busy machine that
    # alone halves its share of the CPU. Every method gets the same priority.
    os.nice(10)

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    segs = json.loads(Path(files).read_text())
    if method == "boto3":
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                              aws_secret_access_key=secret, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}))
        conf = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                              max_concurrency=1, use_threads=False)

        def put(path: str, key: str) -> None:
            client.upload_file(path, bucket, key, Config=conf)
    elif method == "minio":
        import minio

        host = endpoint.removeprefix("http://")
        client = minio.Minio(host, access_key=access, secret_key=secret, secure=False)

        def put(path: str, key: str) -> None:
            client.fput_object(bucket, key, path, part_size=PART, num_parallel_uploads=1)
    elif method == "own":
        from agent.upload.s3 import Body, S3Client, digest_range

        client = S3Client(endpoint, bucket, "us-east-1", access, secret)

        def put(path: str, key: str) -> None:
            size = os.path.getsize(path)
            bodies, off = [], 0
            with open(path, "rb") as f:
                while off < size:
                    n = min(PART, size - off)
                    bodies.append(Body(Path(path), off, n, digest_range(f, n)))
                    off += n
            uid = client.create_multipart(key, {}, "video/mp2t")
            etags = [(i, client.upload_part(key, uid, i, b)) for i, b in enumerate(bodies, 1)]
            client.complete_multipart(key, uid, etags)
    elif method == "uploader":
        from agent.config import DeviceConfig, UploadConfig
        from agent.upload.uploader import Uploader

        keys = Path(files).parent / "keys"
        keys.mkdir(exist_ok=True)
        secret_file(keys / "a", access)
        secret_file(keys / "s", secret)
        cfg = UploadConfig(enabled=True, endpoint=endpoint, bucket=bucket, max_kbps=0,
                           part_size_mb=PART // MiB, access_key_file=str(keys / "a"),
                           secret_key_file=str(keys / "s"), key_prefix="{school}/{device}")
        done = threading.Event()
        root = Path(segs[0]["path"]).parent.parent

        class Idle:
            def running(self) -> bool:
                return False

            def recorded(self, _l: str, _s: float) -> dict[str, Any]:
                return {"segments": []}

            def recording_dir(self) -> Path | None:
                return None

        up = Uploader(cfg, DeviceConfig(id=prefix.replace("/", "-"), school="bench"),
                      Path(files).parent / f"state-{prefix.replace('/', '-')}", root,
                      lambda r: done.set() if r.data["type"] == "recording_uploaded" else None,
                      Idle())
    else:
        raise SystemExit(f"unknown method {method}")
    rss1 = proc.memory_info().rss
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    if method == "uploader":
        up.start()
        up.enqueue(Path(segs[0]["path"]).parent.name, segs, {})
        done.wait(3600)
        up.stop()
    else:
        for s in segs:
            put(s["path"], f"{prefix}/{Path(s['path']).name}")
    wall = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    total = sum(s["bytes"] for s in segs)
    print(json.dumps({
        "method": method, "import_rss_mib": (rss1 - rss0) / MiB, "base_rss_mib": rss0 / MiB,
        "end_rss_mib": proc.memory_info().rss / MiB,
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), "wall_s": wall,
        "bytes": total}))


def libraries(args: argparse.Namespace, store: Any, work: Path) -> bool:
    from tests.objectstore import ACCESS_KEY, SECRET_KEY

    lesson = work / "rec" / "bench-libraries"
    segs = make_files(lesson, args.mb)
    files = work / "files.json"
    files.write_text(json.dumps(segs))
    total = sum(s["bytes"] for s in segs)
    log(f"{len(segs)} files, {total / 1e6:.0f} MB, part size {PART // MiB} MiB, "
        f"one request at a time; {machine()}")
    rows = []
    methods = ["own", "uploader", "boto3", "minio"]
    for rnd in range(args.rounds):
        for method in methods:
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, store.endpoint, store.bucket,
                 str(files), f"r{rnd}/{method}"],
                input=json.dumps({"access": ACCESS_KEY, "secret": SECRET_KEY}) + "\n",
                capture_output=True, text=True, timeout=3600, cwd=ROOT)
            if out.returncode != 0:
                log(f"{method}: failed: {out.stderr.strip()[-500:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"round {rnd + 1} {method}: {row['bytes'] / row['wall_s'] / 1e6:.1f} MB/s, "
                f"{row['cpu_s'] / row['bytes'] * 1e8:.2f} CPU s/100 MB")
    print(f"\nUpload libraries, {total / 1e6:.0f} MB, part {PART // MiB} MiB, SeaweedFS on "
          f"loopback, median of {args.rounds} round(s) ({machine()})")
    print("RSS: after `import agent.daemon` (which already holds our client), then added by the "
          "library and a client, and at the end of the upload")
    print(f"{'method':10} {'base RSS':>9} {'added':>7} {'at end':>7} {'MB/s':>7} "
          f"{'CPU s/100MB':>12}")
    med: dict[str, dict[str, float]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            print(f"{method:10} (failed)")
            continue
        m = {"rss": statistics.median(r["import_rss_mib"] for r in mine),
             "base": statistics.median(r["base_rss_mib"] for r in mine),
             "end": statistics.median(r["end_rss_mib"] for r in mine),
             "mbs": statistics.median(r["bytes"] / r["wall_s"] / 1e6 for r in mine),
             "cpu": statistics.median(r["cpu_s"] / r["bytes"] * 1e8 for r in mine)}
        med[method] = m
        print(f"{method:10} {m['base']:7.1f}Mi {m['rss']:5.1f}Mi {m['end']:5.1f}Mi "
              f"{m['mbs']:7.1f} {m['cpu']:12.2f}")
    if "own" in med and "uploader" in med:
        ratio = med["uploader"]["mbs"] / med["own"]["mbs"]
        print(f"uploader / bare client throughput: {ratio:.2f} (target >= 0.9: "
              f"{'met' if ratio >= 0.9 else 'MISSED'})")
        return ratio >= 0.9
    return False


# -- the live lesson over a shared, rate-limited link ------------------------------------------

class Link:
    """A school's uplink on loopback: a TCP proxy whose upstream bytes, from every connection
    through it, wait in ONE first-in-first-out queue of ``buffer_kb`` (a router's buffer) and
    leave it at ``kbps`` (a token bucket). A bulk upload that fills the queue delays the live
    stream's packets behind it, as on a real link; the downstream is not limited. Listens on one
    port per target; counts the bytes it forwarded per target."""

    def __init__(self, kbps: int, buffer_kb: int = 256) -> None:
        import queue

        from agent.throttle import TokenBucket

        self.bucket = TokenBucket(kbps * 1000 / 8, 8 * 1024)
        self._queue: queue.Queue[tuple[socket.socket, bytes, int]] = queue.Queue()
        self._room = threading.Semaphore(buffer_kb)  # KiB of queue left
        self.sent: dict[int, int] = {}
        self._stop = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def forward(self, target_port: int) -> int:
        srv = socket.create_server(("127.0.0.1", 0))
        self._socks.append(srv)
        self.sent[target_port] = 0
        threading.Thread(target=self._accept, args=(srv, target_port), daemon=True).start()
        return int(srv.getsockname()[1])

    def _accept(self, srv: socket.socket, target: int) -> None:
        while not self._stop:
            try:
                conn, _ = srv.accept()
                up = socket.create_connection(("127.0.0.1", target))
            except OSError:
                return
            for s in (conn, up):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks.append(s)
            threading.Thread(target=self._upstream, args=(conn, up, target), daemon=True).start()
            threading.Thread(target=self._downstream, args=(up, conn), daemon=True).start()

    def _upstream(self, src: socket.socket, dst: socket.socket, target: int) -> None:
        while True:
            try:
                data = src.recv(1024)
            except OSError:
                data = b""
            if not data:
                self._queue.put((dst, b"", target))  # the FIN, in its turn
                return
            self._room.acquire()  # the router's buffer is full: TCP backs off
            self._queue.put((dst, data, target))

    def _drain(self) -> None:
        while not self._stop:
            dst, data, target = self._queue.get()
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                continue
            self.bucket.take(len(data))
            self._room.release()
            try:
                dst.sendall(data)
                self.sent[target] += len(data)
            except OSError:
                pass

    def _downstream(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(8192)
                if not data:
                    break
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def live(args: argparse.Namespace, store: Any, work: Path) -> bool:
    from latency import StripReceiver, percentile

    from agent.config import DeviceConfig, UploadConfig
    from agent.media.spec import MediaSpec
    from agent.media.supervisor import MediaSupervisor
    from agent.upload.uploader import Uploader
    from tests.objectstore import ACCESS_KEY, SECRET_KEY

    link = Link(args.link_kbps)
    rtmp_port = free_port()
    rtmp_via = link.forward(rtmp_port)
    s3_via = link.forward(store.s3_port)
    width, fps = 640, 25
    receiver = StripReceiver("rtmp", ["-listen", "1", "-timeout", "120", "-i",
                                      f"rtmp://127.0.0.1:{rtmp_port}/live/bench"], width)
    spec = MediaSpec.from_json(json.dumps({
        "lesson_id": "bench-live",
        "video": {"source": "synthetic", "width": width, "height": 360, "fps": fps},
        "audio": {"source": "synthetic", "rate": 48000, "channels": 2},
        "encoder": {"video_bitrate_kbps": 1200, "audio_bitrate_kbps": 64,
                    "preset": "veryfast", "gop_s": 2.0},
        "live": [{"name": "platform", "url": f"rtmp://127.0.0.1:{rtmp_via}/live/bench"}],
        "recording": {"dir": str(work / "live-rec"), "segment_s": 60.0, "enabled": False}}))
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    secret_file(keys / "a", ACCESS_KEY)
    secret_file(keys / "s", SECRET_KEY)
    stats: list[dict[str, Any]] = []
    sup = MediaSupervisor(lambda line: stats.append(line) if line["type"] == "stats" else None)
    results = []
    receiver.start()
    time.sleep(0.5)
    sup.start(spec)
    time.sleep(args.warmup)

    class Live:
        def running(self) -> bool:
            return True  # a lesson is on for the whole run

        def recorded(self, _l: str, _s: float) -> dict[str, Any]:
            return {"segments": []}

        def recording_dir(self) -> Path | None:
            return None

    try:
        for phase, during, cap in (("none", True, None), ("paused", False, 0),
                                   ("capped 1500", True, 1500), ("uncapped", True, 0)):
            up = None
            sent0, live0 = link.sent[store.s3_port], link.sent[rtmp_port]
            if cap is not None:
                lesson = work / "rec" / f"live-{phase.replace(' ', '-')}"
                segs = make_files(lesson, args.live_mb)
                cfg = UploadConfig(enabled=True, endpoint=f"http://127.0.0.1:{s3_via}",
                                   bucket=store.bucket, max_kbps=cap, during_lessons=during,
                                   part_size_mb=5, access_key_file=str(keys / "a"),
                                   secret_key_file=str(keys / "s"), timeout_s=60)
                up = Uploader(cfg, DeviceConfig(id=f"live-{len(results)}", school="bench"),
                              work / f"state-live-{len(results)}", work / "rec", lambda r: None,
                              Live())
                up.start()
                up.enqueue(lesson.name, segs, {})
            since = time.time()
            time.sleep(args.seconds)
            lat = receiver.latencies_ms(since)
            sent = link.sent[store.s3_port] - sent0  # what crossed the link, not what was queued
            live_sent = link.sent[rtmp_port] - live0
            if up is not None:
                up.stop()
            frames = len(lat)
            expected = args.seconds * fps
            row = {"phase": phase, "frames": frames, "expected": expected,
                   "dropped_pct": max(0.0, 100 * (1 - frames / expected)),
                   "p50": statistics.median(lat) if lat else None,
                   "p95": percentile(lat, 95) if lat else None, "max": max(lat) if lat else None,
                   "upload_kbps": sent * 8 / 1000 / args.seconds,
                   "live_kbps": live_sent * 8 / 1000 / args.seconds}
            results.append(row)
            log(f"{phase}: {frames}/{expected:.0f} frames, p50 {row['p50']}, p95 {row['p95']}, "
                f"upload {row['upload_kbps']:.0f} kbit/s")
            time.sleep(3)  # let queues drain between phases
    finally:
        sup.stop()
        receiver.stop()
        link.close()
    print(f"\nLive lesson (640x360@25, 1200+64 kbit/s RTMP) and upload through one "
          f"{args.link_kbps} kbit/s link (one FIFO, 256 KiB buffer), {args.seconds:.0f} s per "
          f"phase ({machine()})")
    print(f"{'upload':12} {'frames':>13} {'lost %':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'max ms':>8} {'live kbit/s':>12} {'upload kbit/s':>14}")
    for r in results:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f}"

        print(f"{r['phase']:12} {r['frames']:>6}/{r['expected']:<6.0f} {r['dropped_pct']:7.1f} "
              f"{f(r['p50']):>8} {f(r['p95']):>8} {f(r['max']):>8} {r['live_kbps']:12.0f} "
              f"{r['upload_kbps']:14.0f}")
    return True


def kills(n: int) -> bool:
    env = dict(os.environ, CLASSROOM_AGENT_UPLOAD_KILLS=str(n))
    log(f"tests/faults/test_upload_faults.py SIGKILL test with {n} kills ({machine()})")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                          "tests/faults/test_upload_faults.py", "-k", "sigkilled"], cwd=ROOT,
                         env=env, timeout=3600)
    print(f"{n} SIGKILLs during uploads: {'passed' if out.returncode == 0 else 'FAILED'} in "
          f"{time.monotonic() - t0:.0f} s")
    return out.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--libraries", action="store_true")
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--mb", type=int, default=100, help="MB per library run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0, help="per live phase")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--live-mb", type=int, default=40, help="MB to upload per live phase")
    ap.add_argument("--link-kbps", type=int, default=4000)
    ap.add_argument("--child", nargs=5, metavar=("METHOD", "ENDPOINT", "BUCKET", "FILES",
                                                 "PREFIX"), help="internal: one library's run "
                    "(the key pair as a JSON line on standard input)")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sigterm_as_interrupt()
    if not (args.libraries or args.live or args.kills):
        args.libraries = args.live = True
    ok = True
    if args.libraries or args.live:
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
            work = Path(tmp)
            store = start_store(work)
            try:
                if args.libraries:
                    ok &= libraries(args, store, work)
                if args.live:
                    ok &= live(args, store, work)
            finally:
                store.kill()
    if args.kills:
        ok &= kills(args.kills)
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
