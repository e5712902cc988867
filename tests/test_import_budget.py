"""What the running daemon imports: its RSS is mostly the code of the modules it loads (issue 12:
RSS <= 30 MB; docs/benchmarks.md has the breakdown), so modules that only a command, an upload,
the media worker or a mistake needs must not be loaded by an idle daemon.

The daemon is the real one (``classroom-agent run`` through ``agent.cli.main``, against a real
Mosquitto with a subscriber), driven in its own process by a watcher thread that waits until it
is connected, has sampled and delivered its telemetry and has probed FFmpeg, then lists
``sys.modules`` and stops the daemon with SIGTERM. The watcher speaks HTTP over a bare socket so
that it loads nothing itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import REPO, Broker, Subscriber, free_port

DRIVER = r"""
import json, os, signal, socket, sys, threading, time
from agent import cli

out, config, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

def status():
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])

def settled(st):
    return (st["broker"]["connected"] and st["telemetry"]["last_sample"] is not None
            and st["outbox"]["depth"] == 0 and st["ffmpeg"] is not None)

def watch():
    deadline, why = time.monotonic() + 60, "never settled"
    while time.monotonic() < deadline:
        try:
            if settled(status()):
                why = ""
                break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    with open(out, "w") as fh:
        json.dump({"modules": sorted(k for k, v in sys.modules.items() if v is not None),
                   "why": why}, fh)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(cli.main(["run", "--config", config]))
"""

#: Never in an idle daemon's process, and why.
NOT_LOADED = {
    "dns": "dnspython: paho-mqtt imports it when installed (development venvs, via aiortc) for "
           "DNS SRV lookups the agent never does; agent.cli keeps it out",
    "OpenSSL": "pyOpenSSL: later paho-mqtt versions import it when installed",
    "aiortc": "WebRTC: tests and the media worker's WHIP path only",
    "aioice": "WebRTC: tests only",
    "av": "PyAV: the media worker's RTMP pusher (a child process)",
    "cv2": "OpenCV: the media worker (a child process)",
    "numpy": "the media worker (a child process)",
    "pyaudio": "the media worker (a child process)",
    "asyncio": "~1.4 MB: the status and control servers use selectors (agent/status/http.py)",
    "concurrent": "thread pools come with asyncio; the servers have their own handler threads",
    "imageio_ffmpeg": "its import costs ~1 MB; the bundled FFmpeg is found by path",
    "agent.upload.uploader": "uploads are off (upload.enabled: false): agent.upload.off stands in",
    "agent.upload.s3": "uploads are off",
    "xml": "XML is parsed only from an object store's answers (agent/upload/s3.py)",
    "difflib": "only to suggest a name for a mistyped config key",
    "cryptography": "~8.6 MiB: never; the daemon verifies with PyNaCl (agent/signing.py)",
    "nacl": "PyNaCl: only with a command key configured (none here)",
    "boto3": "not the upload client (docs/upload.md)",
    "prometheus_client": "imported at the first /metrics scrape",
    "icalendar": "only with an iCalendar timetable",
    "zipfile": "nothing in the daemon reads archives (imageio-ffmpeg's import brought it)",
    "decimal": "nothing in the daemon computes in decimals (imageio-ffmpeg's import brought it)",
}


def daemon_modules(tmp_path: Path, broker: Broker, **overrides: object) -> set[str]:
    status_port = free_port()
    cfg: dict[str, object] = {
        "device": {"id": "room-101", "school": "school-a"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "state_dir": str(tmp_path / "state"),
        "telemetry": {"interval_s": 0.5, "usage_interval_s": 2},
        "status": {"listen": f"127.0.0.1:{status_port}", "socket": str(tmp_path / "ctl.sock")},
        **overrides,
    }
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "modules.json"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(out), str(config), str(status_port)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(out.read_text())
    assert not found["why"], f"the daemon {found['why']}:\n{run.stderr[-3000:]}"
    return set(found["modules"])


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_an_idle_daemon_loads_only_what_it_uses(tmp_path: Path, broker: Broker,
                                                subscriber: Subscriber) -> None:
    modules = daemon_modules(tmp_path, broker)
    assert "agent.publisher" in modules and "paho.mqtt.client" in modules  # it really ran
    wrong = {name: why for name, why in NOT_LOADED.items() if loaded(modules, name)}
    assert not wrong, "the idle daemon loaded:\n" + "\n".join(
        f"  {name}: {why}" for name, why in wrong.items())


def test_a_daemon_with_a_command_key_verifies_without_cryptography(
        tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    """Production installs always have a platform key (scripts/install.sh --command-key). The
    daemon reads it and verifies with PyNaCl (+1.2 MiB); cryptography would add 8.6 MiB of RSS
    (docs/benchmarks.md, issue 12), so it must stay out of the process."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "platform.pub.pem"
    key.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    modules = daemon_modules(tmp_path, broker, commands={"public_keys": [str(key)]})
    wrong = {name: why for name, why in NOT_LOADED.items()
             if name != "nacl" and loaded(modules, name)}
    assert not wrong, "the daemon with a command key loaded:\n" + "\n".join(
        f"  {name}: {why}" for name, why in wrong.items())
    assert "nacl.signing" in modules  # the key was loaded: the verifier is in the process
