"""``classroom-agent doctor`` against real parts and really broken setups.

One Mosquitto with a TLS listener that wants a password serves every case; the broken setups are
real: a CA that did not sign the broker's certificate, a wrong password, a port nothing listens
on, a camera device that does not exist, a PulseAudio microphone that hears nothing, a 1 MiB
tmpfs filled to the last byte, a password file others can read, and an SNTP server whose clock
is five minutes fast.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.doctor import sntp
from tests.media_support import VirtualMicrophone
from tests.support import (
    REPO,
    AgentProcess,
    Broker,
    free_port,
    make_ca,
    make_cert,
    make_password_file,
    secure_broker,
)

PASSWORD = "Corr3ct-horse-7"


class SntpServer:
    """A one-thread SNTP server on loopback whose clock is ``skew_s`` off."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            now = time.time() + self.skew_s
            ntp = struct.pack("!II", int(now) + sntp.NTP_EPOCH, int(now % 1 * 2**32))
            reply = bytes([0x24, 2, 0, 0]) + bytes(20) + data[40:48] + ntp + ntp
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", days=400)
    make_cert(d, "short", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", days=2)
    return d


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[int]:
    d = tmp_path_factory.mktemp("tls-broker")
    passwd = make_password_file(d / "passwd", {"room-101": PASSWORD})
    broker, port = secure_broker(d / "broker", f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
                                 f"keyfile {pki}/server.key\npassword_file {passwd}\n"
                                 "allow_anonymous false")
    yield port
    broker.stop()


@pytest.fixture
def clock_ok() -> Iterator[SntpServer]:
    s = SntpServer(0.0)
    yield s
    s.close()


def _config(tmp_path: Path, pki: Path, port: int, password: str = PASSWORD,
            **over: Any) -> Path:
    pw = tmp_path / "mqtt.password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    cfg: dict[str, Any] = {
        "device": {"id": "room-101", "school": "school-a"},
        "mqtt": {"host": "localhost", "port": port, "username": "room-101",
                 "password_file": str(pw), "tls": {"ca_file": str(pki / "ca.crt")}},
        "state_dir": str(tmp_path / "state"),
        "status": {"listen": f"127.0.0.1:{free_port()}"},
        "media": {"video": {"width": 320, "height": 180, "fps": 10},
                  "recording": {"min_free_mb": 16}},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def doctor(config: Path, ntp: str, *extra: str, env: dict[str, str] | None = None
           ) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([sys.executable, "-m", "agent", "doctor", "--config", str(config),
                          "--ntp", ntp, "--json", *extra], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)
    assert res.stdout, res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == res.returncode
    return res.returncode, doc


def by_check(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in doc["findings"]}


def test_a_healthy_terminal_passes_every_check(tmp_path: Path, pki: Path, tls_broker: int,
                                               clock_ok: SntpServer, broker: Broker) -> None:
    """TLS with the right CA, the right password, synthetic devices, a good clock, the agent
    running: all pass (systemd is skipped: it does not run here), exit 0, in a few seconds."""
    cfg = _config(tmp_path, pki, tls_broker)
    agent = AgentProcess(tmp_path / "agent", broker.port)
    agent.config["status"]["listen"] = yaml.safe_load(cfg.read_text())["status"]["listen"]
    agent.status_port = int(agent.config["status"]["listen"].rsplit(":", 1)[1])
    agent.config["commands"] = {"require_signature": True}  # unsigned commands are a warning
    agent.write_config()
    agent.start()
    try:
        started = time.monotonic()
        code, doc = doctor(cfg, clock_ok.address)
        took = time.monotonic() - started
    finally:
        agent.stop()
    found = by_check(doc)
    assert code == 0, json.dumps(doc, indent=1, ensure_ascii=False)
    assert {f["status"] for f in doc["findings"]} <= {"pass", "skip"}
    for check in ("config", "state_dir", "disk", "secrets", "broker.dns", "broker.tcp",
                  "broker.tls", "broker.login", "clock", "camera", "microphone", "ffmpeg",
                  "agent"):
        assert found[check]["status"] == "pass", found[check]
    assert found["service"]["status"] == "skip" and found["live"]["status"] == "skip"
    assert "until" in found["broker.tls"]["summary"]
    assert found["agent"]["params"]["pid"] == agent.proc.pid  # type: ignore[union-attr]
    assert PASSWORD not in json.dumps(doc)
    print(f"\ndoctor on a healthy terminal: {took:.1f} s (load {os.getloadavg()[0]:.1f})")
    assert took < 20


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with not one byte left."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {out.stderr.strip()}")
    try:
        (mnt / "state").mkdir()
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        yield mnt / "state"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_broken_terminal_names_each_cause_and_fix(tmp_path: Path, pki: Path, tls_broker: int,
                                                    full_disk: Path) -> None:
    """Wrong CA, no camera, a silent microphone, a full disk, an exposed password file, a clock
    five minutes fast and an unreachable live server, all at once: each check fails (or warns)
    with its own cause and fix, and doctor exits 2."""
    fast = SntpServer(300.0)
    mic = VirtualMicrophone(tmp_path / "mic")
    mic.start()
    try:
        cfg = _config(tmp_path, pki, tls_broker, state_dir=str(full_disk),
                      media={"video": {"source": "/dev/video9"},
                             "audio": {"source": "default"},
                             "live": [{"url": f"rtmp://127.0.0.1:{free_port()}/live/k3y",
                                       "name": "main"}]})
        doc_cfg = yaml.safe_load(cfg.read_text())
        doc_cfg["mqtt"]["tls"]["ca_file"] = str(pki / "other-ca.crt")
        cfg.write_text(yaml.safe_dump(doc_cfg))
        Path(doc_cfg["mqtt"]["password_file"]).chmod(0o644)
        code, doc = doctor(cfg, fast.address, env=mic.env)
    finally:
        mic.stop()
        fast.close()
    found = by_check(doc)
    assert code == 2
    expect = {"broker.tls": ("fail", "broker_tls_failed"),
              "camera": ("fail", "camera_unavailable"),
              "microphone": ("fail", "microphone_dead"),
              "state_dir": ("fail", "state_dir_unwritable"),
              "disk": ("fail", "disk_space_exhausted"),
              "secrets": ("warn", "secret_file_exposed"),
              "clock": ("fail", "clock_wrong"),
              "live": ("fail", "live_unreachable")}
    for check, (status, code_) in expect.items():
        assert (found[check]["status"], found[check].get("code")) == (status, code_), found[check]
        assert found[check]["fix"], found[check]
    assert "certificate" in found["broker.tls"]["summary"]
    assert found["broker.login"]["status"] == "skip"
    assert 295 < found["clock"]["params"]["offset_s"] < 305
    assert "/dev/video9" in found["camera"]["summary"]
    assert "k3y" not in json.dumps(doc), "the stream key must not be shown"
    assert found["agent"]["code"] == "agent_not_running"


@pytest.mark.parametrize("case", ["wrong_password", "closed_port", "certificate_expiring"])
def test_broker_login_port_and_certificate(tmp_path: Path, pki: Path, tls_broker: int,
                                           case: str) -> None:
    short: Broker | None = None
    if case == "wrong_password":
        cfg = _config(tmp_path, pki, tls_broker, password="not-the-password")
        check, code, want = "broker.login", "broker_auth_failed", 2
    elif case == "closed_port":
        cfg = _config(tmp_path, pki, free_port())
        check, code, want = "broker.tcp", "broker_port_closed", 2
    else:  # a certificate that runs out in two days: a warning, the login still works
        short, port = secure_broker(tmp_path / "short", f"cafile {pki}/ca.crt\ncertfile "
                                    f"{pki}/short.crt\nkeyfile {pki}/short.key\n"
                                    "allow_anonymous true")
        cfg = _config(tmp_path, pki, port)
        check, code, want = "broker.tls", "broker_cert_expiring", 1
    try:
        status, doc = doctor(cfg, "off", "--only", "broker,agent")
    finally:
        if short is not None:
            short.stop()
    found = by_check(doc)
    assert status == max(want, 1)  # the agent does not run here: at least a warning
    assert found[check]["code"] == code and found[check]["fix"], found[check]
    if case == "certificate_expiring":
        assert found["broker.login"]["status"] == "pass"
    assert "camera" not in found and "clock" not in found  # --only
    assert "not-the-password" not in json.dumps(doc)


def test_a_bad_config_fails_first_and_alone(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("device: {id: room-101, school: school-a}\nmqtt: {prot: 1883}\n")
    res = subprocess.run([sys.executable, "-m", "agent", "doctor", "--config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2
    assert "[FAIL] Configuration" in res.stdout and "mqtt.prot" in res.stdout
    assert "Fix: fix the lines named" in res.stdout
    assert "Broker" not in res.stdout  # nothing else can be checked without a config


def test_only_names_known_checks() -> None:
    from agent import cli
    from agent.doctor.command import CHECKS

    assert tuple(c.id for c in CHECKS) == cli.CHECK_IDS


def test_sntp_offset_against_a_skewed_server() -> None:
    """The SNTP exchange itself: a server 42 s fast reads as +42 s."""
    s = SntpServer(42.0)
    try:
        r = sntp.query(s.address, timeout=2)
    finally:
        s.close()
    assert r.offset_s == pytest.approx(42.0, abs=0.5) and r.stratum == 2
    assert sntp.split_server("[::1]:1234") == ("::1", 1234)
    assert sntp.split_server("ntp.example") == ("ntp.example", 123)
