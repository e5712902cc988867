"""Secret files (MQTT password, TLS client key): warn when someone else can read them.

The agent reads secrets only from files named in the config (never from the config itself).
A file other users can read is a leak waiting to happen on a shared classroom PC, so the daemon
checks the mode at start and on every reload and says so in its log, its status and an event.
The check never reads the file's content.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from agent.config import Config


@dataclass(frozen=True)
class Exposed:
    what: str
    path: str
    mode: int

    @property
    def params(self) -> dict[str, str]:
        """The parameters of the ``secret_file_exposed`` warning (agent/status/warnings.py)."""
        return {"what": self.what, "path": self.path, "mode": f"{self.mode:04o}"}


def secret_files(cfg: Config) -> list[tuple[str, str]]:
    """(what, path) of every secret file the config makes the agent read."""
    out = []
    if cfg.mqtt.password_file:
        out.append(("MQTT password", cfg.mqtt.password_file))
    if cfg.mqtt.tls.key_file:
        out.append(("TLS client key", cfg.mqtt.tls.key_file))
    if cfg.upload.access_key_file:
        out.append(("upload access key", cfg.upload.access_key_file))
    if cfg.upload.secret_key_file:
        out.append(("upload secret key", cfg.upload.secret_key_file))
    return out


def exposed(cfg: Config) -> list[Exposed]:
    """The secret files whose mode lets group or others read them (missing files are skipped:
    the config check reports those)."""
    out = []
    for what, path in secret_files(cfg):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            out.append(Exposed(what, path, mode))
    return out
