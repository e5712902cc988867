"""Checks over the network: the broker step by step, the live sinks, the clock.

The broker is tried the way the agent will use it, one step after the other, so the first step
that fails names the cause: the name resolves, the port accepts TCP, TLS verifies the
certificate (with the configured CA, for the configured host name; its expiry is read), and the
MQTT login is accepted. The login uses a client id of its own (``{school}.{device}-doctor``), so
it never pushes the running agent's session off the broker.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from agent.config import Config
from agent.doctor import sntp
from agent.doctor.report import Finding, passed, problem, skipped
from agent.doctor.runner import Context
from agent.i18n import N_

T_DNS = N_("Broker name")
T_TCP = N_("Broker port")
T_TLS = N_("Broker TLS")
T_LOGIN = N_("Broker login")
T_LIVE = N_("Live sink")
T_CLOCK = N_("Clock")

STEP_S = 4.0
CERT_WARN_DAYS = 21
CLOCK_WARN_S = 2.0
CLOCK_FAIL_S = 60.0


def _error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def broker(ctx: Context) -> list[Finding]:
    assert ctx.cfg is not None
    m = ctx.cfg.mqtt
    address = f"{m.host}:{m.port}"
    later = [(T_TCP, "broker.tcp"), (T_TLS, "broker.tls"), (T_LOGIN, "broker.login")]
    try:
        infos = socket.getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return [problem("broker.dns", T_DNS, "broker_name_unresolved", host=m.host,
                        error=_error(exc)),
                *_not_tried(later, N_("not tried: the name does not resolve."))]
    addrs = sorted({i[4][0] for i in infos})
    out = [passed("broker.dns", T_DNS, N_("{host} is {addresses}."), host=m.host,
                  addresses=", ".join(addrs[:4]))]
    started = time.monotonic()
    try:
        sock = socket.create_connection((m.host, m.port), timeout=STEP_S)
    except OSError as exc:
        return [*out, problem("broker.tcp", T_TCP, "broker_port_closed", address=address,
                              port=m.port, error=_error(exc)),
                *_not_tried(later[1:], N_("not tried: the port does not accept "
                                                         "connections."))]
    sock.close()
    out.append(passed("broker.tcp", T_TCP, N_("{address} accepts connections ({ms:.0f} ms)."),
                      address=address, ms=(time.monotonic() - started) * 1000))
    if m.tls.active:
        tls = _tls(ctx.cfg)
        out.extend(tls)
        if any(f.status == "fail" for f in tls):
            return [*out, *_not_tried(later[2:], N_("not tried: TLS failed."))]
    else:
        out.append(skipped("broker.tls", T_TLS, N_("TLS is off (mqtt.tls); the link is not "
                                                   "encrypted.")))
    out.append(_login(ctx.cfg))
    return out


def _not_tried(steps: list[tuple[str, str]], text: str) -> list[Finding]:
    return [skipped(check, title, text) for title, check in steps]


def _tls(cfg: Config) -> list[Finding]:
    m = cfg.mqtt
    address = f"{m.host}:{m.port}"
    try:
        context = ssl.create_default_context(cafile=m.tls.ca_file)
        if m.tls.cert_file:
            context.load_cert_chain(m.tls.cert_file, m.tls.key_file)
        with socket.create_connection((m.host, m.port), timeout=STEP_S) as raw, \
                context.wrap_socket(raw, server_hostname=m.host) as tls:
            cert = tls.getpeercert() or {}
            version = tls.version()
    except (OSError, ssl.SSLError, ValueError) as exc:
        return [problem("broker.tls", T_TLS, "broker_tls_failed", address=address,
                        error=_error(exc))]
    not_after = cert.get("notAfter")
    days = ((ssl.cert_time_to_seconds(not_after) - time.time()) / 86400 if not_after
            else float("inf"))
    expiry = (datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
              .strftime("%Y-%m-%d") if not_after else "?")
    if days < CERT_WARN_DAYS:
        return [problem("broker.tls", T_TLS, "broker_cert_expiring", days=days,
                        not_after=expiry)]
    return [passed("broker.tls", T_TLS, N_("{version}, certificate valid for {host} until "
                                           "{not_after}."),
                   version=version, host=m.host, not_after=expiry)]


def _login(cfg: Config) -> Finding:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.mqttauth import apply_credentials
    from agent.publisher import PASSWORD_ENV

    m = cfg.mqtt
    v5 = m.protocol != "3.1.1"
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"{cfg.device.school}.{cfg.device.id}-doctor",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False)
    client.connect_timeout = STEP_S
    got = threading.Event()
    answer: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        answer["reason"] = reason
        got.set()

    def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        answer.setdefault("reason", reason)
        got.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    user = m.username or "(anonymous)"
    try:
        apply_credentials(client, username=m.username, password_file=m.password_file,
                          password_env=PASSWORD_ENV, tls=m.tls)
        client.connect(m.host, m.port, keepalive=10)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return problem("broker.login", T_LOGIN, "broker_no_answer", address=f"{m.host}:{m.port}",
                       port=m.port, error=_error(exc))
    client.loop_start()
    try:
        got.wait(STEP_S)
    finally:
        client.disconnect()
        client.loop_stop()
    reason = answer.get("reason")
    if reason is None:
        return problem("broker.login", T_LOGIN, "broker_no_answer", address=f"{m.host}:{m.port}",
                       port=m.port, error="no CONNACK")
    if getattr(reason, "is_failure", False) or (isinstance(reason, int) and reason):
        return problem("broker.login", T_LOGIN, "broker_auth_failed", username=user,
                       reason=str(reason))
    return passed("broker.login", T_LOGIN, N_("{username} logged in (MQTT {protocol})."),
                  username=user, protocol="5" if v5 else "3.1.1")


def live(ctx: Context) -> list[Finding]:
    """Each live sink's server: RTMP(S) must accept TCP; SRT runs over UDP, so only its name
    is resolved (a caller handshake would put the URL, which may hold a passphrase, on an
    FFmpeg command line)."""
    from agent.urls import redact_host as redact

    assert ctx.cfg is not None
    sinks = ctx.cfg.media.live
    if not sinks:
        return [skipped("live", T_LIVE, N_("No live sink is configured (media.live)."))]
    out = []
    for i, s in enumerate(sinks, 1):
        name, shown = s.name or f"sink{i}", redact(s.url)
        try:
            parts = urlsplit(s.url)
            host = parts.hostname or ""
            port = parts.port or {"rtmp": 1935, "rtmps": 443, "http": 80,
                                  "https": 443}.get(parts.scheme, 0)
        except ValueError as exc:
            out.append(problem("live", T_LIVE, "live_unreachable", name=name, url=shown,
                               error=str(exc)))
            continue
        try:
            if parts.scheme == "srt":
                socket.getaddrinfo(host, port or None, type=socket.SOCK_DGRAM)
                out.append(passed("live", T_LIVE, N_("{name} ({url}): the name resolves; SRT "
                                                     "runs over UDP and is tried by the first "
                                                     "lesson."), name=name, url=shown))
                continue
            with socket.create_connection((host, port), timeout=STEP_S):
                pass
        except (OSError, UnicodeError) as exc:
            out.append(problem("live", T_LIVE, "live_unreachable", name=name, url=shown,
                               error=_error(exc)))
            continue
        out.append(passed("live", T_LIVE, N_("{name} ({url}) accepts connections."),
                          name=name, url=shown))
    return out


def clock(ctx: Context) -> list[Finding]:
    server = ctx.ntp
    if not server or server == "off":
        return [skipped("clock", T_CLOCK, N_("not checked (--ntp off)."))]
    try:
        r = sntp.query(server, timeout=STEP_S / 2)
    except (OSError, ValueError, UnicodeError) as exc:
        return [problem("clock", T_CLOCK, "clock_unchecked", server=server, error=_error(exc))]
    if abs(r.offset_s) >= CLOCK_FAIL_S:
        return [problem("clock", T_CLOCK, "clock_wrong", server=server, offset_s=r.offset_s)]
    if abs(r.offset_s) >= CLOCK_WARN_S:
        return [problem("clock", T_CLOCK, "clock_off", server=server, offset_s=r.offset_s)]
    return [passed("clock", T_CLOCK, N_("{offset_ms:+.0f} ms off {server} (stratum "
                                        "{stratum})."),
                   offset_ms=r.offset_s * 1000, server=server, stratum=r.stratum)]
