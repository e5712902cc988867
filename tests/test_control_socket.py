"""Local control for the right people (issue 11, section 4): a second real user.

The agent's control socket is mode 0660 with the group ``status.socket_group``. The CLI run as
``nobody`` is refused by the kernel (exit 4, with who may and how to get there); the same user
with the socket's group in its groups starts and stops a lesson. The TCP status address takes
no commands at all (tests/test_commands.py shows its 403).

The CLI runs as ``nobody`` in a child that imports what it needs as root and then drops to
uid/gid nobody with exactly the groups under test: the interpreter here may live under /root,
which nobody may not read, so ``setpriv ... python`` could not even start it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, AgentProcess, Broker, wait_until

GROUP = f"ca-tech-{os.getpid()}"

_AS_USER = """
import json, os, sys
import agent.cli, agent.config, agent.control, agent.safetext, agent.status.http
import agent.status.client, agent.status.text, agent.i18n
import encodings.idna, grp, pwd, http.client, urllib.parse, urllib.request, uuid, yaml
groups = json.loads(sys.argv[1])
nobody = pwd.getpwnam("nobody")
os.setgroups(groups)
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
sys.exit(agent.cli.main(sys.argv[2:]))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture
def tech_group() -> Iterator[grp.struct_group]:
    """A group of its own for the test's technicians, removed afterwards."""
    subprocess.run(["groupadd", GROUP], check=True, capture_output=True)
    try:
        yield grp.getgrnam(GROUP)
    finally:
        subprocess.run(["groupdel", GROUP], check=False, capture_output=True)


def as_nobody(groups: list[int], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _AS_USER, json.dumps(groups), *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "LANG": "C.UTF-8"})


def test_only_members_of_the_sockets_group_may_control_the_agent(
        broker: Broker, tech_group: grp.struct_group) -> None:
    # A directory anyone may pass through (pytest's own tmp is root-only).
    shared = Path(tempfile.mkdtemp(prefix="ca-sock-"))
    shared.chmod(0o711)
    agent = AgentProcess(shared / "agent", broker.port, media={
        "video": {"width": 320, "height": 180, "fps": 10}, "encoder": {"preset": "ultrafast"}})
    agent.workdir.chmod(0o711)
    agent.config["status"]["socket_group"] = GROUP
    agent.write_config()
    agent.config_path.chmod(0o644)
    try:
        agent.start()
        sock = Path(agent.config["status"]["socket"])
        st_ = sock.stat()
        assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
        assert st_.st_gid == tech_group.gr_gid
        cfg = str(agent.config_path)

        refused = as_nobody([], "lesson", "start", "--course", "x", "--config", cfg)
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert f"only for root and members of the group {GROUP}" in refused.stdout
        assert f"usermod -aG {GROUP}" in refused.stdout
        assert agent.status()["lessons"]["current"] is None, "nothing ran"

        started = as_nobody([tech_group.gr_gid], "lesson", "start", "--course", "Physics",
                            "--duration", "60", "--config", cfg)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Lesson started" in started.stdout
        wait_until(lambda: agent.status()["lessons"]["current"], 10, "the lesson")
        stopped = as_nobody([tech_group.gr_gid], "lesson", "stop", "--json", "--config", cfg)
        assert stopped.returncode == 0 and json.loads(stopped.stdout)["ok"], stopped.stdout
        # The agent knows who asked: the log names the technician's uid.
        nobody = pwd.getpwnam("nobody").pw_uid
        assert f"control: lesson_start asked by uid {nobody} (nobody)" in agent.log_text()

        # The status page's key (camera snapshot, microphone level) is the group's too.
        no_key = as_nobody([], "page", "--config", cfg)
        assert no_key.returncode == 4 and "#key=" not in no_key.stdout, no_key.stdout
        got = as_nobody([tech_group.gr_gid], "page", "--config", cfg)
        assert got.returncode == 0, got.stdout + got.stderr
        url = got.stdout.strip().splitlines()[-1]
        assert url.startswith(f"http://127.0.0.1:{agent.status_port}/#key="), got.stdout
        level = f"http://127.0.0.1:{agent.status_port}/level.json"
        key = url.rpartition("#key=")[2]
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    level, headers={"X-Page-Key": key}), timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as exc:  # 409: the microphone is busy, which is fine here
            code = exc.code
        assert code in (200, 409)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(level, timeout=10)
        assert refused.value.code == 403
    finally:
        agent.kill()
        subprocess.run(["rm", "-rf", str(shared)], check=False)
