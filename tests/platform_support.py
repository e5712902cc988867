"""Real parts of the platform side for tests and benchmarks: a PostgreSQL cluster of our own
(``initdb`` + ``postgres`` on a free loopback port in a temporary directory, never a server this
machine already runs) and the collector as a process.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to the unprivileged
``postgres`` user (Debian's postgresql package creates it) and its commands run through
``setpriv``. The cluster trusts local connections: it listens on 127.0.0.1 only and lives for one
test session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO, _merge, free_port, wait_until


def bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """``start()`` makes and starts the cluster; ``stop()`` stops it and removes its files."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        bins = bin_dir()
        if bins is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package: postgresql; "
                               "scripts/deps.sh installs it)")
        self.bin = bins
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="collector-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        #: Server settings; the defaults favour a short-lived test cluster (no fsync: a test
        #: kills collectors, never this server).
        self.settings = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "64MB",
                         "max_connections": "60", "unix_socket_directories": "",
                         "listen_addresses": "127.0.0.1", **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                        "--clear-groups", "--"]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        subprocess.run([*self._as, str(self.bin / "initdb"), "-D", str(self.data), "-U",
                        "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                       check=True, capture_output=True, timeout=120, cwd=self.root)
        args = [f"-c{k}={v}" for k, v in self.settings.items()]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self._as, str(self.bin / "postgres"), "-D", str(self.data), "-p",
                 str(self.port), *args], stdout=log, stderr=log, cwd=self.root)
        wait_until(self._ready, 60, f"PostgreSQL on port {self.port}", step=0.1)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"postgres exited: {self.log.read_text()[-2000:]}")
        res = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(self.port), "-t", "1"], capture_output=True, timeout=10)
        return res.returncode == 0

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)


def available() -> bool:
    return bin_dir() is not None


def wait_for_rows(conn_url: str, sql: str, want: int, timeout: float, what: str) -> int:
    """Poll ``sql`` (one integer) until it reaches ``want``; returns the last value."""
    import psycopg

    last = [0]

    def check() -> bool:
        with psycopg.connect(conn_url, autocommit=True) as conn:
            last[0] = int(conn.execute(sql).fetchone()[0])
        return last[0] >= want

    try:
        wait_until(check, timeout, what, step=0.2)
    except AssertionError:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: "
                             f"{last[0]} of {want}") from None
    return last[0]




class CollectorProcess:
    """The real collector, run as ``python -m collector run --config ...`` in its own process."""

    def __init__(self, workdir: Path, broker_port: int, database_url: str,
                 **overrides: Any) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config: dict[str, Any] = {
            "database": {"url": database_url},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5,
                     "client_id": f"test-collector-{workdir.name}",
                     "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
            "gaps": {"sweep_interval_s": 0.2},
            "status": {"interval_s": 1.0},
        }
        _merge(self.config, overrides)
        self.config_path = workdir / "collector.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log = workdir / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=timeout)

    def migrate(self) -> None:
        res = self.cli("migrate", "--config", str(self.config_path))
        assert res.returncode == 0, f"migrate failed: {res.stdout}{res.stderr}"

    def start(self, wait: bool = True) -> CollectorProcess:
        """Start it; unless ``wait`` is false, wait until it has subscribed."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "run", "--config", str(self.config_path)],
                stdout=log, stderr=log, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if wait:
            wait_until(lambda: self._alive() and "subscription: subscribed" in self.log_text(),
                       30, "the collector to subscribe")
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"collector exited {self.proc.returncode}:\n"
                                 f"{self.log_text()[-3000:]}")
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


#: Every table holding sequenced records (a seq lives in exactly one of them).
SEQ_TABLES = ("metrics", "usage", "events", "inventories", "schedules", "other_records")


def stored_seqs(conn: Any, school: str, device: str) -> list[int]:
    """Every stored seq of one terminal, sorted, duplicates kept (so a test can see them)."""
    union = " UNION ALL ".join(f"SELECT seq FROM {t} WHERE school = %(s)s AND device = %(d)s"
                               for t in SEQ_TABLES)
    return sorted(r[0] for r in conn.execute(union, {"s": school, "d": device}))


def swept(conn: Any) -> bool:
    """The gap tracker has consumed every queued arrival."""
    return conn.execute("SELECT count(*) FROM arrivals").fetchone()[0] == 0
