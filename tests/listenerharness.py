"""
Helpers for listener tests: a self-signed certificate made by openssl, the
gateway's log events captured, extra listeners on an in-process gateway, and
ssh command lines through TLS or a PROXY-header-sending ProxyCommand.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from tests.gatewayharness import Gateway, free_port
from wraith_conch.gateway.listeners import build_listener

HERE = os.path.dirname(os.path.abspath(__file__))


def self_signed_certificate(base: str) -> tuple[str, str]:
    """C{(key path, certificate path)} for CN=localhost, made by the openssl tool."""
    key, cert = os.path.join(base, "tls_key.pem"), os.path.join(base, "tls_cert.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    os.chmod(key, 0o600)
    return key, cert


def tls_listen(port: int, key: str, cert: str, prefix: str = "") -> str:
    return f"{prefix}ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"


def capture_log(testcase) -> list[dict]:
    """Every log event from now until the test ends."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def connection_events(events: list[dict], opened: bool = True) -> list[dict]:
    word = "opened" if opened else "closed"
    return [
        e for e in events if e.get("event_kind") == "connection" and word in e.get("log_format", "")
    ]


@defer.inlineCallbacks
def add_listener(testcase, gateway: Gateway, description: str, **kwargs):
    """Listen on C{description} too, with the in-process gateway's factory."""
    endpoint, factory = build_listener(reactor, description, gateway.port.factory, **kwargs)
    port = yield endpoint.listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


def through_tls(gateway: Gateway, port: int, *command: str) -> list[str]:
    """ssh to the gateway over TLS (openssl s_client as the ProxyCommand)."""
    proxy = f"openssl s_client -quiet -verify_quiet -connect 127.0.0.1:{port}"
    return gateway.ssh_argv(*command, extra=["-o", f"ProxyCommand={proxy}"])


def through_proxy_header(
    gateway: Gateway, port: int, version: str, client_ip: str, *command: str
) -> list[str]:
    """ssh to the gateway as if behind a load balancer sending a PROXY header."""
    script = os.path.join(HERE, "proxy_header_client.py")
    proxy = shlex.join([sys.executable, script, version, "127.0.0.1", str(port), client_ip])
    return gateway.ssh_argv(*command, extra=["-o", f"ProxyCommand={proxy}"])


__all__ = ["free_port"]
