"""
The gateway's own SSH client to the target.

Conch's C{SSHCommandClientEndpoint} runs one C{exec} over IPv4; a relay
needs PTYs, shells, subsystems, several channels on one connection and any
address family, so this module wires L{SSHClientTransport},
L{SSHUserAuthClient} and a relay connection together itself.

Nothing but the key exchange reaches the target before its host key is
checked against the pinned C{known_hosts}: L{verifyHostKey} runs before any
service request, and a refusal disconnects.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from wraith_conch.algorithms import no_delay, prefer_fast_algorithms
from wraith_conch.fastpath import FastPacketTransportMixin
from wraith_conch.gateway.limits import identification_problem
from wraith_conch.relay import RelayConnection
from wraith_conch.upstream.known_hosts import HostKeyVerdict, KnownHosts, sha256_fingerprint


class UpstreamError(Exception):
    """The target could not be reached or refused us; C{str()} is for the operator."""


class HostKeyRefused(UpstreamError):
    pass


class UpstreamAuthFailed(UpstreamError):
    pass


class TargetUnreachable(UpstreamError):
    pass


@attrs.frozen
class TargetAddress:
    host: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> TargetAddress:
        """C{host}, C{host:port}, C{[v6]:port} or a bare IPv6 literal."""
        text = text.strip()
        if not text:
            raise ValueError("empty target")
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not host:
                raise ValueError(f"bad IPv6 target {text!r}: expected [ADDRESS]:PORT")
            if rest and not rest.startswith(":"):
                raise ValueError(f"bad target {text!r}")
            port_text = rest[1:] if rest else "22"
        elif text.count(":") > 1:
            host, port_text = text, "22"
        else:
            host, _, port_text = text.partition(":")
            port_text = port_text or "22"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in target {text!r}")
        if any(c.isspace() or c in "/@" for c in host):
            raise ValueError(f"bad host in target {text!r}")
        return cls(host, int(port_text))


@attrs.frozen
class UpstreamLogin:
    """Who the gateway logs in as, and how: a key, or a password (passthrough)."""

    user: str
    identity: keys.Key | None = None
    password: bytes | None = attrs.field(default=None, repr=False)


def _signature_algorithm(key: keys.Key) -> bytes:
    # Conch signs RSA with ssh-rsa (SHA-1), which OpenSSH >= 8.8 refuses.
    if key.type() == "RSA":
        return b"rsa-sha2-256"
    return key.sshType()


class UpstreamUserAuth(userauth.SSHUserAuthClient):
    """Tries exactly the one method the login allows, once."""

    def __init__(self, login: UpstreamLogin, instance) -> None:
        super().__init__(login.user.encode("utf-8"), instance)
        self._login = login
        self._tried: set[bytes] = set()
        self.preferredOrder = [b"publickey"] if login.identity else [b"password"]

    def tryAuth(self, kind: bytes):
        if kind not in self.preferredOrder or kind in self._tried:
            return None
        self._tried.add(kind)
        return super().tryAuth(kind)

    def auth_publickey(self):
        key = self._login.identity
        algorithm = _signature_algorithm(key)
        public = key.public()
        to_sign = (
            NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(public.blob())
        )
        signature = key.sign(to_sign, signatureType=algorithm)
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(public.blob()) + NS(signature))
        return True

    def auth_password(self):
        if self._login.password is None:
            return False
        self.askForAuth(b"password", b"\x00" + NS(self._login.password))
        return True

    def auth_keyboard_interactive(self):
        return False


class UpstreamConnection(RelayConnection):
    """The target-side SSH connection of one operator connection."""

    def __init__(self, ready: defer.Deferred) -> None:
        super().__init__()
        self._ready = ready
        self.lost = defer.Deferred()

    def serviceStarted(self) -> None:
        super().serviceStarted()
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(self)

    def gotGlobalRequest(self, requestType: bytes, data: bytes):
        # hostkeys-00@openssh.com, keepalives: a failure reply is what
        # OpenSSH's own client gives for requests it does not act on.
        return 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class UpstreamTransport(FastPacketTransportMixin, transport.SSHClientTransport):
    _log = Logger()

    def __init__(
        self,
        target: TargetAddress,
        known_hosts: KnownHosts,
        login: UpstreamLogin,
        ready: defer.Deferred,
    ) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self.login = login
        self.ready = ready
        self.failure_reason: UpstreamError | None = None
        self.connection: UpstreamConnection | None = None
        prefer_fast_algorithms(self)
        self.supportedPublicKeys = pinned_host_key_algorithms(
            self.supportedPublicKeys, known_hosts.entries_for(target.host, target.port)
        )

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred:
        try:
            key = keys.Key.fromString(hostKey)
        except keys.BadKeyError:
            return self._refuse_host_key("the target sent a host key of an unknown type")
        verdict = self.known_hosts.check(self.target.host, self.target.port, key)
        if verdict is HostKeyVerdict.TRUSTED:
            return defer.succeed(True)
        sha = sha256_fingerprint(key)
        self._log.warn(
            "target host key refused: {verdict} {fingerprint}",
            verdict=verdict.name.lower(),
            fingerprint=sha,
            target=str(self.target),
        )
        return self._refuse_host_key(
            {
                HostKeyVerdict.UNKNOWN: f"target host key {sha} is not in the known_hosts file",
                HostKeyVerdict.CHANGED: f"TARGET HOST KEY CHANGED: {sha} does not match known_hosts",
                HostKeyVerdict.REVOKED: f"target host key {sha} is revoked",
            }[verdict]
        )

    def _refuse_host_key(self, message: str) -> defer.Deferred:
        self.failure_reason = HostKeyRefused(f"{message} (target {self.target})")
        return defer.fail(self.failure_reason)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # The target's lines before its version: each at most 255 bytes and
        # a bounded number of them (RFC 4253 4.2), as on the operators' side.
        if not self.gotVersion:
            problem = identification_problem(self.buf + data, server=False)
            if problem is not None:
                self.failure_reason = UpstreamError(f"the target is not an SSH server: {problem}")
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, problem.encode())
                return
        super().dataReceived(data)

    def connectionSecure(self) -> None:
        self.connection = UpstreamConnection(self.ready)
        self.requestService(UpstreamUserAuth(self.login, self.connection))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if self.connection is None or self.connection.transport is None:
            text = description.decode("utf-8", "replace")
            if reasonCode == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE:
                self.failure_reason = UpstreamAuthFailed(f"the target refused the login: {text}")
            else:
                self.failure_reason = UpstreamError(f"the target disconnected: {text}")

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if (
            reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
            and self.failure_reason is None
        ):
            self.failure_reason = UpstreamAuthFailed(
                f"the target refused the login as {self.login.user!r}"
            )
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self.ready is not None and not self.ready.called:
            error = self.failure_reason or UpstreamError(
                f"the connection to the target {self.target} closed during the handshake"
            )
            self.ready.errback(error)
        if self.connection is not None and not self.connection.lost.called:
            self.connection.lost.callback(None)


def pinned_host_key_algorithms(available: list[bytes], entries) -> list[bytes]:
    """
    Ask only for host key types pinned for this target, as OpenSSH does.
    Conch would otherwise ask for ECDSA first and then refuse the server's
    ECDSA key as "changed" when known_hosts pins its ed25519 key.
    """
    wanted: set[bytes] = set()
    for entry in entries:
        key_type = entry.key.sshType()
        wanted.add(key_type)
        if key_type == b"ssh-rsa":
            wanted.update((b"rsa-sha2-512", b"rsa-sha2-256"))
    narrowed = [name for name in available if name in wanted]
    return narrowed or available


def connect_upstream(
    reactor: IReactorTime,
    target: TargetAddress,
    known_hosts: KnownHosts,
    login: UpstreamLogin,
    *,
    timeout: float = 30.0,
    endpoint_factory: Callable[[TargetAddress], object] | None = None,
) -> defer.Deferred[UpstreamConnection]:
    """
    Connect and authenticate to the target; fire with the ready connection.

    Errbacks with an L{UpstreamError} whose text is fit to show the operator.
    """
    ready: defer.Deferred[UpstreamConnection] = defer.Deferred()
    endpoint = (
        endpoint_factory(target)
        if endpoint_factory is not None
        else HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    )
    factory = Factory.forProtocol(lambda: UpstreamTransport(target, known_hosts, login, ready))
    connecting = endpoint.connect(factory)

    def connect_failed(failure: Failure) -> None:
        if ready.called:
            return None
        if failure.check(ierror.ConnectionRefusedError):
            why = "connection refused"
        elif failure.check(ierror.DNSLookupError):
            why = "host name not found"
        elif failure.check(ierror.TimeoutError, defer.TimeoutError):
            why = "timed out"
        else:
            why = failure.getErrorMessage()
        ready.errback(TargetUnreachable(f"cannot reach the target {target}: {why}"))
        return None

    connecting.addErrback(connect_failed)

    def handshake_timeout() -> None:
        if not ready.called:
            connecting.addCallback(lambda proto: proto.transport.abortConnection())
            ready.errback(
                TargetUnreachable(f"the target {target} did not finish the SSH handshake")
            )

    timer = reactor.callLater(timeout, handshake_timeout)

    def stop_timer(result):
        if timer.active():
            timer.cancel()
        return result

    ready.addBoth(stop_timer)
    return ready
