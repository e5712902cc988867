"""Broker login and TLS for a paho client, the same way for the agent and the collector.

The password comes from a file named in the config or from an environment variable, never from
the config itself or a command line; TLS always verifies the server's certificate.
"""

from __future__ import annotations

import ssl
from typing import Any

from agent.typedconfig import read_secret


def apply_credentials(client: Any, *, username: str | None, password_file: str | None,
                      password_env: str, tls: Any) -> None:
    """Set the login (``username`` with the secret from ``password_file`` or ``password_env``)
    and TLS (``tls``: a config with ``active``, ``ca_file``, ``cert_file``, ``key_file``)."""
    if username:
        client.username_pw_set(username, read_secret(password_file, password_env))
    if tls.active:
        client.tls_set(
            ca_certs=tls.ca_file,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
