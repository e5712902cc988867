"""Which processes belong to a catalogued application, read from /proc without scanning it all.

The usage scan used to read every process on every sample (psutil, ~80 us a process: 28 ms at
350 processes, the agent's largest cost and the only one that grew with the machine; issue 12).
Now:

* :class:`ProcessTable` lists /proc (one directory read), reads only the processes it has not
  seen before (name, executable basename, start time) and re-reads only those that matched an
  application (CPU time, and the start time again, which tells a reused PID).
* :class:`ExecEvents` follows program starts through the kernel's process connector
  (``NETLINK_CONNECTOR``, ``PROC_EVENT_EXEC``, filtered in the kernel where it can be): a program
  that starts and ends between two samples is still seen, and a pidfd per matching process tells
  its exit when it happens. Listening needs no privilege from Linux 6.6 on; older kernels want
  ``CAP_NET_ADMIN``, which the systemd unit does not grant, and then the table alone runs, at the
  resolution of ``telemetry.usage_sample_s`` (as before).

Only the process name (``comm``) and the basename of the executable are read, never a command
line. Names the kernel cut at 15 characters are matched against patterns cut the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_COMM_LEN = 15  # TASK_COMM_LEN - 1: longer names are cut by the kernel

#: After handling a burst of exec events, wait this long before reading the next: a machine that
#: starts programs all the time (a build) costs at most one wake-up per this many seconds for
#: them, and a program that ran for less than this may be missed. Exits (pidfds) are handled at
#: once.
EXEC_BATCH_S = 2.0


@dataclass(slots=True)
class ProcInfo:
    """One process as /proc/PID/stat shows it."""

    name: str
    start_ticks: int  # clock ticks after boot (field 22): with the PID, the process's identity
    cpu_s: float  # utime + stime


def read_stat(pid: int) -> ProcInfo | None:
    """``/proc/PID/stat``, or None when the process is gone (or not readable)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            raw = os.read(fd, 2048)
        finally:
            os.close(fd)
    except OSError:
        return None
    try:
        open_, close = raw.index(b"("), raw.rindex(b")")
        fields = raw[close + 2:].split()
        return ProcInfo(raw[open_ + 1:close].decode("utf-8", "replace"), int(fields[19]),
                        (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    except (ValueError, IndexError):
        return None


def exe_basename(pid: int) -> str | None:
    """The basename of the process's executable; None when not allowed (another user's process
    for an unprivileged agent) or gone."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
    except OSError:
        return None


def _boot_time() -> float:
    """Wall-clock time of boot, to the clock's precision: a process's start is counted in
    CLOCK_BOOTTIME ticks, and /proc/stat's ``btime`` is rounded to the second (psutil's
    create_time was up to a second early)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.time() - time.clock_gettime(clock)


class Catalog:
    """Application globs (fnmatch, case-insensitive) matched against a name and an exe
    basename."""

    def __init__(self, apps: dict[str, list[str]]) -> None:
        self.apps = {app: _compile(pats) for app, pats in apps.items() if pats}
        # A name of exactly 15 characters may have been cut: match it against cut patterns too.
        self._cut = {app: _compile([p[:_COMM_LEN] for p in pats]) for app, pats in apps.items()
                     if pats and any(len(p) > _COMM_LEN for p in pats)}

    def match(self, name: str, exe: Callable[[], str | None]) -> tuple[str, ...]:
        """Apps whose globs match ``name`` or, only if the name matched none, ``exe()``."""
        if not self.apps:
            return ()
        low = name.lower()
        found = [app for app, rx in self.apps.items() if rx.match(low)]
        if len(low) == _COMM_LEN:
            found += [app for app, rx in self._cut.items() if rx.match(low) and app not in found]
        if len(found) < len(self.apps):
            base = exe()
            if base:
                b = base.lower()
                found += [app for app, rx in self.apps.items() if app not in found and rx.match(b)]
        return tuple(app for app in self.apps if app in found)  # catalog order


def _compile(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))


@dataclass(slots=True)
class Tracked:
    """A process of a catalogued app: when it started and ended (wall clock), its CPU time."""

    pid: int
    apps: tuple[str, ...]
    start: float
    start_ticks: int
    cpu_s: float  # at the last reading
    cpu_base: float  # at the last sample (what the next sample's delta starts from)
    end: float | None = None
    pidfd: int | None = None


class ProcessTable:
    """The processes of catalogued apps, kept up to date incrementally (see the module doc).

    Not thread-safe by itself: the usage tracker holds its lock around every call.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.boot = _boot_time()
        self._seen: dict[int, int] = {}  # every pid looked at -> its start ticks
        self.live: dict[int, Tracked] = {}  # app processes alive at the last look
        self.ended: list[Tracked] = []  # app processes that ended since the last sample
        # Set by ExecEvents: open a pidfd for a new app process, close it when it is gone.
        self.on_track: Callable[[Tracked], None] = lambda t: None
        self.on_untrack: Callable[[Tracked], None] = lambda t: None

    def wall(self, start_ticks: int) -> float:
        return self.boot + start_ticks / _CLK_TCK

    def refresh(self, born_after: float | None) -> None:
        """List /proc; read what is new; re-read the app processes. A process created after
        ``born_after`` (wall clock) has all its CPU time counted, an older one first seen only
        sets a baseline (None: everything is a baseline)."""
        self.boot = _boot_time()  # follows a stepped wall clock
        try:
            pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        except OSError as exc:
            raise RuntimeError(f"cannot list /proc: {exc}") from exc
        now = time.time()
        for pid in self._seen.keys() - pids:
            del self._seen[pid]
            self._gone(pid, None)
        for pid in list(self.live):
            t = self.live[pid]
            info = read_stat(pid)
            if info is None or info.start_ticks != t.start_ticks:
                # Watched by a pidfd: it ended just now, its exit waits behind our lock.
                self._gone(pid, now if t.pidfd is not None else None)
                if info is not None:
                    self._seen.pop(pid, None)  # reused: look at it again below
                    pids.add(pid)
            else:
                t.cpu_s = info.cpu_s
        for pid in pids - self._seen.keys():
            self.look(pid, born_after, now)

    def look(self, pid: int, born_after: float | None, now: float,
             exec_event: bool = False) -> Tracked | None:
        """Read a process not seen before (or that just exec'd) and track it if it matches.

        For an exec event only the name is read (every program start on the machine comes
        here); one that does not match by name stays unseen, so the next sample reads it whole
        (its executable too) if it is still running."""
        info = read_stat(pid)
        if info is None:
            return None
        exe = (lambda: None) if exec_event else (lambda: exe_basename(pid))
        apps = self.catalog.match(info.name, exe)
        if exec_event and not apps and pid not in self.live:
            self._seen.pop(pid, None)
            return None
        self._seen[pid] = info.start_ticks
        old = self.live.get(pid)
        if old is not None and old.apps != apps:
            self._gone(pid, now)  # exec'd into another program: that app ended now
        elif old is not None:
            return old
        if not apps:
            return None
        start = min(self.wall(info.start_ticks), now)
        new = born_after is not None and start >= born_after
        t = Tracked(pid, apps, start, info.start_ticks, info.cpu_s, 0.0 if new else info.cpu_s)
        self.live[pid] = t
        self.on_track(t)
        return t

    def exited(self, pid: int, when: float) -> None:
        """An app process ended at ``when`` (its pidfd said so): read its last CPU time if the
        parent has not reaped it yet."""
        t = self.live.get(pid)
        if t is None:
            return
        info = read_stat(pid)
        if info is not None and info.start_ticks == t.start_ticks:
            t.cpu_s = info.cpu_s
        self._gone(pid, when)

    def _gone(self, pid: int, when: float | None) -> None:
        """``when`` None: seen gone at a sample without knowing when; it earns nothing for the
        interval it was last seen in (as the full scan did)."""
        t = self.live.pop(pid, None)
        if t is None:
            return
        t.end = when
        self.ended.append(t)
        self.on_untrack(t)

    def close(self) -> None:
        for t in self.live.values():
            self.on_untrack(t)


# --- the kernel's process connector -----------------------------------------------------------

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_EVENT_NONE = 0x0
_PROC_EVENT_EXEC = 0x2
_NLMSG_DONE = 3
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_CN = struct.Struct("=IIIIHH")  # cn_msg
_EVENT = struct.Struct("=IIQii")  # proc_event: what, cpu, timestamp, exec.process_pid, tgid
_EV_AT = _HDR.size + _CN.size


def _listen_message(filtered: bool) -> bytes:
    # Linux >= 6.6 takes struct proc_input {op, event mask} and drops other events in the kernel;
    # older kernels take the op alone and ignore a message of another size.
    body = struct.pack("=II", _PROC_CN_MCAST_LISTEN, _PROC_EVENT_EXEC) if filtered \
        else struct.pack("=I", _PROC_CN_MCAST_LISTEN)
    cn = _CN.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(body), 0) + body
    return _HDR.pack(_HDR.size + len(cn), _NLMSG_DONE, 0, 0, 0) + cn


def open_connector(timeout: float = 1.0) -> tuple[socket.socket | None, str]:
    """A netlink socket subscribed to exec events, or (None, why not)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
    except (OSError, AttributeError) as exc:
        return None, f"no netlink connector socket ({exc})"
    try:
        sock.bind((0, _CN_IDX_PROC))
    except OSError as exc:
        sock.close()
        why = "needs CAP_NET_ADMIN on this kernel (< 6.6)" if exc.errno == errno.EPERM else exc
        return None, f"process connector: {why}"
    for filtered in (True, False):
        try:
            sock.send(_listen_message(filtered))
        except OSError as exc:
            sock.close()
            return None, f"process connector: listen refused ({exc})"
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data = sock.recv(4096)
            if len(data) >= _EV_AT + 4 and struct.unpack_from("=I", data, _EV_AT)[0] in (
                    _PROC_EVENT_NONE, _PROC_EVENT_EXEC):
                sock.setblocking(False)
                return sock, "process connector" + (" (filtered in the kernel)" if filtered
                                                    else "")
    sock.close()
    return None, "process connector: the kernel did not answer the subscription"


class ExecEvents:
    """A thread that sleeps until the kernel reports a program start or a tracked process's
    exit, and hands them to the table (under ``lock``). No timer: an idle machine never wakes
    it; a busy one wakes it at most once per :data:`EXEC_BATCH_S`."""

    def __init__(self, sock: socket.socket, table: ProcessTable, lock: threading.Lock) -> None:
        self._sock = sock
        self._table = table
        self._lock = lock
        self._poll = select.epoll()
        self._poll.register(sock.fileno(), select.EPOLLIN)
        self._wake_r, self._wake_w = os.pipe()
        self._poll.register(self._wake_r, select.EPOLLIN)
        self._pidfds: dict[int, int] = {}  # pidfd -> pid
        self._buf = bytearray(8192)  # one netlink datagram (one event) per recv
        self._stopping = False
        self.overruns = 0  # times the kernel dropped events (socket buffer full)
        self.events = 0
        table.on_track = self._watch_exit
        table.on_untrack = self._unwatch
        self._thread = threading.Thread(target=self._run, name="usage-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        self._thread.join(5)
        with self._lock:
            self._table.close()
        self._poll.close()
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _watch_exit(self, t: Tracked) -> None:
        """Called by the table (lock held) for each new app process: its pidfd reports its
        exit. Without pidfds (Linux < 5.3), the next sample sees it gone instead."""
        try:
            fd = os.pidfd_open(t.pid)
        except (OSError, AttributeError):
            return
        if self._table.live.get(t.pid) is not t:  # pragma: no cover - raced with a PID reuse
            os.close(fd)
            return
        t.pidfd = fd
        self._pidfds[fd] = t.pid
        try:
            self._poll.register(fd, select.EPOLLIN)
        except OSError:
            self._unwatch(t)

    def _unwatch(self, t: Tracked) -> None:
        fd, t.pidfd = t.pidfd, None
        if fd is None:
            return
        self._pidfds.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._poll.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _run(self) -> None:
        sock = self._sock.fileno()
        rearm_at: float | None = None  # while set, exec events gather in the socket
        while not self._stopping:
            timeout = -1.0 if rearm_at is None else max(0.0, rearm_at - time.monotonic())
            ready = [fd for fd, _ in self._poll.poll(timeout)]
            if self._stopping:
                return
            if rearm_at is not None and time.monotonic() >= rearm_at:
                rearm_at = None
                self._poll.register(sock, select.EPOLLIN)
            try:
                with self._lock:
                    self._handle(ready)
            except Exception:  # one bad event must not end the watch
                log.exception("usage: process events failed; continuing")
            if sock in ready:
                self._poll.unregister(sock)
                rearm_at = time.monotonic() + EXEC_BATCH_S

    def _handle(self, fds: list[int]) -> None:
        now = time.time()
        table = self._table
        for fd in fds:
            pid = self._pidfds.get(fd)
            t = table.live.get(pid) if pid is not None else None
            if t is not None and t.pidfd == fd:
                table.exited(pid, now)  # the table calls _unwatch, which closes the pidfd
        if self._sock.fileno() in fds:
            self._drain(now)

    def _drain(self, now: float) -> None:
        buf = self._buf
        while True:
            try:
                size = self._sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped some: the sample's
                    self.overruns += 1  # listing of /proc still finds what lives on
                    continue
                raise
            offset = 0
            while offset + _EV_AT + _EVENT.size <= size:
                length = _HDR.unpack_from(buf, offset)[0]
                what, _cpu, _ts, _pid, tgid = _EVENT.unpack_from(buf, offset + _EV_AT)
                if what == _PROC_EVENT_EXEC:
                    self.events += 1
                    self._table.look(tgid, born_after=0.0, now=now, exec_event=True)
                if length <= 0:
                    break
                offset += (length + 3) & ~3
