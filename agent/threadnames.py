"""Give the agent's threads their names in the kernel too (``/proc/PID/task/TID/comm``).

Python 3.11 names threads only for itself, so ``top -H``, ``ps -L`` and per-thread accounting
all showed ``python``. With the names there, a technician sees which part uses CPU, and
bench/tick_cost.py reports wake-ups per thread (issue 12).
"""

from __future__ import annotations

import contextlib
import threading

_COMM_MAX = 15  # TASK_COMM_LEN - 1


def name_native_threads() -> None:
    """Write each live thread's Python name as its kernel name (Linux; a no-op elsewhere). The
    main thread keeps the process's name (what ``ps`` and ``pgrep`` show)."""
    for t in threading.enumerate():
        if t.native_id is None or t is threading.main_thread():
            continue
        # Not Linux, or the thread just ended: nothing to name.
        with contextlib.suppress(OSError), open(f"/proc/self/task/{t.native_id}/comm", "w") as fh:
            fh.write(t.name[:_COMM_MAX])
