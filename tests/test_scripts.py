"""Shell scripts: every one parses (`bash -n`) and, where shellcheck is installed, lints clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shell_scripts() -> list[Path]:
    found = [ROOT / ".ci" / "run"]
    scripts_dir = ROOT / "scripts"
    if scripts_dir.is_dir():
        for path in sorted(scripts_dir.iterdir()):
            if not path.is_file():
                continue
            with path.open("rb") as f:
                first = f.readline()
            if path.suffix == ".sh" or (first.startswith(b"#!") and b"sh" in first):
                found.append(path)
    return [p for p in found if p.exists()]


SCRIPTS = shell_scripts()
IDS = [str(p.relative_to(ROOT)) for p in SCRIPTS]


def test_the_expected_scripts_exist() -> None:
    names = set(IDS)
    for expected in [
        ".ci/run",
        "scripts/deps.sh",
        "scripts/venv.sh",
        "scripts/test.sh",
        "scripts/demo.sh",
        "scripts/install.sh",
    ]:
        assert expected in names


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_executable_with_shebang(script: Path) -> None:
    assert script.read_bytes().startswith(b"#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_shellcheck(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


INSTALL = ROOT / "scripts" / "install.sh"


@pytest.mark.skipif(os.geteuid() != 0 or Path("/etc/classroom-agent/agent.yaml").exists(),
                    reason="needs root and a machine where the agent was never installed")
def test_install_needs_the_platform_key_or_a_loud_opt_out(tmp_path: Path) -> None:
    """A first install that says nothing about command signatures stops before it changes
    anything: MQTT commands start cameras, so unsigned must be a choice, not a default.
    (--check-only everywhere: a mistake in this test can never install anything.)"""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub, private, junk = tmp_path / "p.pub.pem", tmp_path / "p.key", tmp_path / "junk"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    junk.write_text("-----BEGIN PUBLIC KEY-----\n(a private one follows)\nPRIVATE KEY\n")
    from cryptography.hazmat.primitives.asymmetric import rsa
    rsa_pub = tmp_path / "rsa.pub.pem"  # a public key the agent would refuse at start
    rsa_pub.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048)
                        .public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(INSTALL), "--check-only", "--school", "school-a",
                               "--device-id", "room-1", *extra], capture_output=True, text=True,
                              timeout=60)

    for extra, why in [
        ((), "--command-key PLATFORM.pub.pem"),
        (("--command-key", "/nonexistent/platform.pub.pem"), "cannot read"),
        (("--command-key", str(private)), "holds a PRIVATE key"),
        (("--command-key", str(junk)), "holds a PRIVATE key"),  # says so, if only in words
        (("--command-key", "/etc/hostname"), "is not a PEM public key"),
        (("--command-key", str(rsa_pub)), "RSAPublicKey"),
        (("--command-key", str(pub), "--allow-unsigned-commands"), "exclude each other"),
    ]:
        res = install(*extra)
        assert res.returncode == 1 and why in res.stderr, (extra, res.stdout + res.stderr)
        assert res.stdout == ""
    ok = install("--command-key", str(pub))
    assert ok.returncode == 0 and "nothing was changed" in ok.stdout, ok.stderr
    loud = install("--allow-unsigned-commands")
    assert loud.returncode == 0 and loud.stderr.count("WARNING") >= 3, loud.stderr
    assert not Path("/etc/classroom-agent").exists() and not Path("/opt/classroom-agent").exists()
