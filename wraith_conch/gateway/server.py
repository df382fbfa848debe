"""
The SSH server the operators connect to: factory, transport and user auth.

This module logs the transport and authentication events (and nothing about
what a session does, which is the audit trail's job).
"""

from __future__ import annotations

import signal

from twisted.application.service import Service
from twisted.conch.ssh import factory, keys, transport, userauth
from twisted.conch.ssh.common import getNS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wraith_conch.algorithms import no_delay, prefer_fast_algorithms
from wraith_conch.fastpath import FastPacketTransportMixin
from wraith_conch.gateway.admission import AdmissionTransportMixin, SerialAuthMixin
from wraith_conch.gateway.auth import ClientAddressPortal
from wraith_conch.gateway.cert_userauth import (
    CertificatePublicKeyAuth,
    UserAuthSignatureAlgorithms,
)
from wraith_conch.gateway.certificates import describe_key_blob
from wraith_conch.gateway.forwarding import ForwardingConnectionMixin
from wraith_conch.gateway.limits import Admission, AdmissionLimits
from wraith_conch.gateway.listeners import transport_label
from wraith_conch.relay import RelayConnection
from wraith_conch.upstream.client import UpstreamError


def format_address(address) -> str:
    """C{127.0.0.1:2222} / C{[::1]:2222} for an IPv4/IPv6 address object."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class GatewayUserAuth(SerialAuthMixin, CertificatePublicKeyAuth, userauth.SSHUserAuthServer):
    """User auth that logs every attempt and explains upstream failures."""

    _log = Logger()

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.portal = ClientAddressPortal(self.portal, self.transport.client_address)
        self.attemptsBeforeDisconnect = self.transport.factory.max_auth_attempts - 1

    def tryAuth(self, kind, user, data):
        self._attempt_fingerprint = None
        self._attempt_fields = {}
        self._attempt_signed = True
        if kind == b"publickey":
            try:
                self._attempt_signed = bool(data[:1] and data[0])
                _, blob, _ = getNS(data[1:], 2)
                # A certificate's own key, plus cert_serial/cert_key_id.
                self._attempt_fields = describe_key_blob(blob)
                self._attempt_fingerprint = self._attempt_fields.pop("key_fingerprint")
            except Exception:
                self._attempt_fingerprint = "unparseable"
        return super().tryAuth(kind, user, data)

    def _log_attempt(self, result: str, **extra) -> None:
        if self.method == b"none":
            return
        self._log.info(
            "auth {result}: user={user} method={method} key={key_fingerprint} from {remote_addr}",
            event_kind="auth",
            result=result,
            user=self.user.decode("utf-8", "backslashreplace"),
            method=self.method.decode("ascii", "replace"),
            key_fingerprint=self._attempt_fingerprint or "-",
            remote_addr=self.transport.client_address,
            **getattr(self, "_attempt_fields", {}),
            **extra,
        )

    def _cbFinishedAuth(self, result):
        self._log_attempt("accepted")
        self.transport.identity = result[1].identity
        return super()._cbFinishedAuth(result)

    def _ebBadAuth(self, reason):
        upstream = reason.check(UpstreamError)
        if upstream:
            self._log_attempt("target-error")
            self.transport.sendDisconnect(
                transport.DISCONNECT_SERVICE_NOT_AVAILABLE,
                f"wraith: {reason.value}".encode("utf-8", "replace"),
            )
            return None
        # Why, for the operator's admin (checkers' reasons never hold secrets).
        why = str(reason.value)[:200] if reason.check(UnauthorizedLogin) else None
        if not self._attempt_signed:
            # A key query (no signature yet) is not a failed login.
            self._log_attempt(
                "key-refused" if reason.check(UnauthorizedLogin) else "key-ok", reason=why
            )
        else:
            self._log_attempt("rejected", reason=why)
        return super()._ebBadAuth(reason)


class GatewayConnection(ForwardingConnectionMixin, RelayConnection):
    """The operator-side SSH connection; channels come from the avatar."""


class GatewayTransport(
    AdmissionTransportMixin,
    FastPacketTransportMixin,
    UserAuthSignatureAlgorithms,
    transport.SSHServerTransport,
):
    _log = Logger()

    def connectionMade(self) -> None:
        self.client_address = format_address(self.transport.getPeer())
        # tcp, tls, onion, proxy-v2...: how the operator reached the gateway.
        self.transport_label = transport_label(self)
        self.identity = None
        self._opened_at = self.factory.reactor.seconds()
        if not self.admit_connection():
            return
        self._log.info(
            "connection opened from {remote_addr}",
            event_kind="connection",
            remote_addr=self.client_address,
            transport=self.transport_label,
        )
        prefer_fast_algorithms(self)
        # Keystrokes and held Enters are tiny writes: without this, Nagle and
        # delayed ACKs add ~40 ms to every approved command.
        no_delay(self.transport)
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason=None) -> None:
        self.factory.live.discard(self)
        super().connectionLost(reason)
        duration = self.factory.reactor.seconds() - self._opened_at
        self._log.info(
            "connection closed from {remote_addr} after {duration:.1f}s",
            event_kind="connection",
            remote_addr=self.client_address,
            transport=self.transport_label,
            duration=duration,
        )


class GatewayFactory(factory.SSHFactory):
    """Builds L{GatewayTransport}s; C{portal} decides who gets in."""

    protocol = GatewayTransport
    services = {
        b"ssh-userauth": GatewayUserAuth,
        b"ssh-connection": GatewayConnection,
    }

    def __init__(
        self,
        reactor: IReactorTime,
        portal,
        host_key: keys.Key,
        *,
        max_auth_attempts: int = 6,
        limits: AdmissionLimits | None = None,
        login_grace_time: float = 60.0,
    ) -> None:
        self.reactor = reactor
        # Open operator connections, for a graceful shutdown.
        self.live: set[GatewayTransport] = set()
        self.portal = portal
        self.host_key = host_key
        self.max_auth_attempts = max_auth_attempts
        # Shared by every listener: the limits are per gateway, not per port.
        self.admission = Admission(limits or AdmissionLimits())
        self.login_grace_time = login_grace_time
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        if host_key.type() == "RSA":
            self.publicKeys[b"rsa-sha2-256"] = host_key.public()
            self.privateKeys[b"rsa-sha2-256"] = host_key

    def getPrimes(self):
        # No moduli file: the Diffie-Hellman group-exchange kex is left out
        # and curve25519 / ecdh are used, as every current client prefers.
        return None


SHUTDOWN_MESSAGE = "wraith: the gateway is shutting down"


class GracefulShutdown(Service):
    """
    On stop (SIGTERM, SIGINT): tell every connected operator, give sessions
    C{drain} seconds to finish what is in flight, then disconnect them.
    Pending approvals are denied by the approval client's own stop.
    """

    _log = Logger()

    def __init__(self, reactor, factory: GatewayFactory, drain: float = 2.0) -> None:
        self._reactor = reactor
        self._factory = factory
        self._drain = drain

    def stopService(self):
        super().stopService()
        # twistd re-raises SIGTERM/SIGINT after the reactor stops, so the
        # process would die by that signal; a stop that drained its sessions
        # is a clean exit.  (_exitSignal is Twisted's private record of it.)
        if getattr(self._reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
            self._reactor._exitSignal = None
        connections = list(self._factory.live)
        if not connections:
            return None
        self._log.info(
            "shutting down: {count} operator connection(s) to close", count=len(connections)
        )
        for connection in connections:
            avatar = getattr(connection, "avatar", None)
            if avatar is not None:
                avatar.announce(SHUTDOWN_MESSAGE)
        return deferLater(self._reactor, self._drain, self._disconnect, connections)

    def _disconnect(self, connections) -> None:
        for connection in connections:
            if connection.transport is not None and connection in self._factory.live:
                connection.sendDisconnect(
                    transport.DISCONNECT_BY_APPLICATION, SHUTDOWN_MESSAGE.encode()
                )
