"""The collector's broker login and TLS are the agent's (agent/mqttauth.py): a listener that
demands a client certificate and a password, and a collector that brings both, stores what a
terminal publishes there; one with a wrong password stores nothing and says why."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.collector.ingest_support import Fleet
from tests.platform_support import CollectorProcess
from tests.support import make_ca, make_cert, make_password_file, secure_broker, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def test_tls_client_certificate_and_password(
        tmp_path: Path, collector_factory: Callable[..., CollectorProcess],
        db: psycopg.Connection) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(pki, "collector", "ca", "collector-1", "DNS:collector-1")
    passwords = make_password_file(tmp_path / "passwd", {"collector": "s3cret-pw"})
    broker, port = secure_broker(
        tmp_path / "secure", f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
        f"keyfile {pki}/server.key\nrequire_certificate true\n"
        f"password_file {passwords}\nallow_anonymous false")
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-pw\n")
    secret.chmod(0o600)
    tls = {"ca_file": f"{pki}/ca.crt", "cert_file": f"{pki}/collector.crt",
           "key_file": f"{pki}/collector.key"}
    fleet = None
    try:
        wrong = tmp_path / "wrong-password"
        wrong.write_text("nope\n")
        refused = collector_factory(mqtt={"host": "localhost", "port": port,
                                          "username": "collector", "password_file": str(wrong),
                                          "tls": tls})
        refused.start(wait=False)
        wait_until(lambda: "refused the connection" in refused.log_text(), 30,
                   "the broker to refuse the wrong password")
        assert "s3cret" not in refused.log_text() and "nope" not in refused.log_text()
        refused.kill()
        collector_factory(mqtt={"host": "localhost", "port": port, "username": "collector",
                                "password_file": str(secret), "tls": tls}).start()
        fleet = Fleet(broker.port, devices=2)  # terminals on the plain listener
        fleet.publish(per_device=5)
        wait_until(lambda: db.execute("SELECT count(*) FROM metrics").fetchone()[0] == 10, 30,
                   "records through the TLS connection")
    finally:
        if fleet is not None:
            fleet.close()
        broker.stop()
