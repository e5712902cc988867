"""Shared helpers of the benchmarks: a private Mosquitto, process accounting, installs.

Nothing here touches a system broker: every benchmark starts its own ``mosquitto`` on a free
loopback port and stops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `import agent` works when run as `python bench/x.py`
    sys.path.insert(0, str(ROOT))

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """A progress line, flushed at once (the output is often piped to a file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM and SIGINT (even if inherited as ignored) raise KeyboardInterrupt, so that
    the ``finally`` blocks stop what we started."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# --- system packages --------------------------------------------------------------------------


def _dpkg_installed(pkg: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() == "installed"


def ensure_apt(packages: Sequence[str]) -> None:
    """Install the Debian packages that are missing (apt-get, no recommends), saying which."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {missing}: run as root or "
                         f"`apt-get install {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"apt: installing {' '.join(missing)} (apt-get update first)")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                    "-o", "Dpkg::Use-Pty=0", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    still = [p for p in missing if not _dpkg_installed(p)]
    if still:
        raise SystemExit(f"apt-get could not install {still}")
    log(f"apt: installed {' '.join(missing)}")


# --- process management -----------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes] | None, name: str, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (and its process group if it leads one), then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {timeout} s; killing it")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
    # Its children, if it started any in its own group (start_new_session=True).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mosquitto(workdir: Path, extra: Sequence[str] = ()) -> Iterator[int]:
    """A private broker on a free loopback port, anonymous, no persistence; yields the port."""
    if shutil.which("mosquitto") is None:
        ensure_apt(["mosquitto"])
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
        "log_dest stderr", "log_type error", "log_type warning", *extra, "",
    ]))
    conf.chmod(0o644)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    errlog = open(workdir / "mosquitto.log", "wb")  # noqa: SIM115  closed below
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=errlog, stderr=errlog,
                            start_new_session=True)
    try:
        wait_port(port, proc=proc)
        log(f"mosquitto pid {proc.pid} on 127.0.0.1:{port}")
        yield port
    finally:
        stop_process(proc, "mosquitto")
        errlog.close()


# --- /proc accounting -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _stat_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, plus the children it already reaped."""
    return sum(cpu_by_pid(pid).values())


def cpu_by_pid(pid: int) -> dict[int, float]:
    """:func:`cpu_seconds` per process: ``pid`` and each live descendant (with what it reaped)."""
    return {p: _stat_cpu(p) for p in descendants(pid)}


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    rss_kb: int
    hwm_kb: int


def memory(pid: int) -> Memory:
    """VmRSS and VmHWM (peak RSS since start) of ``pid`` and its descendants, summed."""
    pids = descendants(pid)
    return Memory(sum(_status_kb(p, "VmRSS") for p in pids),
                  sum(_status_kb(p, "VmHWM") for p in pids))


# --- TCP bytes per client from ss -------------------------------------------------------------

_SS_PID = re.compile(r"pid=(\d+)")
_SS_SENT = re.compile(r"bytes_sent:(\d+)")
_SS_RECV = re.compile(r"bytes_received:(\d+)")


def tcp_bytes_by_pid(broker_port: int) -> dict[int, tuple[int, int]] | None:
    """(bytes sent, bytes received) of the TCP payload of each client socket connected to the
    broker, keyed by the client's pid; None when ``ss`` cannot tell (not installed, no counters).
    """
    if shutil.which("ss") is None:
        return None
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established", f"( dport = :{broker_port} )"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    result: dict[int, tuple[int, int]] = {}
    current: int | None = None
    for line in out.splitlines():
        m = _SS_PID.search(line)
        if m:
            current = int(m.group(1))
        s, r = _SS_SENT.search(line), _SS_RECV.search(line)
        if current is not None and s and r:
            sent, recv = result.get(current, (0, 0))
            result[current] = (sent + int(s.group(1)), recv + int(r.group(1)))
    return result


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary working directory, removed afterwards unless ``keep`` (its path is logged)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- which FFmpeg, and how busy the machine is ------------------------------------------------


def add_ffmpeg_arg(ap: Any) -> None:
    """``--ffmpeg bundled|system|PATH`` (media.ffmpeg's values), default bundled."""
    ap.add_argument("--ffmpeg", default="bundled",
                    help="media.ffmpeg: bundled (imageio-ffmpeg), system or a path")


def ffmpeg_path(choice: str) -> str:
    from agent.media.ffmpeg import locate

    return locate(choice)


def machine_line() -> str:
    """Load averages and process count: benchmarks here share the machine with others."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: load {load}, {process_count()} processes, {os.cpu_count()} CPUs"


# --- bringing the machine to a process count --------------------------------------------------


def process_count() -> int:
    """Processes (not threads) on this machine, as /proc lists them."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


class IdleProcesses:
    """Idle processes (``sleep``) started to bring the machine to a process count, as a classroom
    PC has (desktop, browser tabs, vendor services); only the ones started here are stopped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def reach(self, target: int) -> int:
        """Start (or stop our own) idle processes until /proc lists about ``target``; returns
        the count reached. Other users' processes come and go, so it is approximate."""
        have = process_count()
        if have < target:
            log(f"starting {target - have} idle processes ({have} -> {target})")
        for _ in range(target - have):
            self.procs.append(subprocess.Popen(
                ["sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        while have > target and self.procs:
            self._stop(self.procs.pop())
            have -= 1
        return process_count()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)

    def stop(self) -> None:
        if self.procs:
            log(f"stopping the {len(self.procs)} idle processes started here")
        while self.procs:
            self._stop(self.procs.pop())


def cpu_by_thread(pid: int) -> dict[int, tuple[str, float]]:
    """The kernel name (``comm``) and CPU seconds of each thread of ``pid``, by thread id."""
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                    name = fh.read().strip() if int(tid) != pid else "main"
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


class ExecCounter:
    """Counts program starts (exec) on the whole machine through the kernel's process connector:
    the agent follows them for usage, so a machine that starts many programs (a shared build
    machine) costs it CPU that a classroom PC does not. ``rate()`` is None when unavailable."""

    def __init__(self) -> None:
        from agent.telemetry.procs import open_connector

        self.sock, self.why = open_connector()
        self.count = 0
        self._buf = bytearray(8192)

    def drain(self) -> int:
        while self.sock is not None:
            try:
                self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError:
                continue  # ENOBUFS: some were dropped; the count is a lower bound
            self.count += 1
        return self.count

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
