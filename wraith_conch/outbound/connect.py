"""
Outbound connections for C{direct-tcpip}: directly, or through the proxy of
the gateway's C{--proxy} setting.

L{connect_outbound} connects and returns the connected protocol, or fails
with an L{OutboundError}; L{open_failure_reason} turns that into an SSH
channel-open failure.  For the destination policy, direct mode can "resolve
once, connect to that address": L{resolve} the name, check the addresses,
then pass the chosen one as C{address=}.  Proxy modes send the requested name
to the proxy (which resolves it) and ignore C{address}.

Nothing here logs the destination (ADR-006): events carry the mode and the
failure's fixed description only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wraith_conch.outbound._destination import Destination, check_destination
from wraith_conch.outbound.errors import (
    ConnectTimeout,
    InvalidDestination,
    NameNotFound,
    OutboundError,
    TorUnavailable,
    outbound_error,
)
from wraith_conch.outbound.http_connect import HTTPConnectEndpoint
from wraith_conch.outbound.proxy import DIRECT, ProxyKind, ProxySpec
from wraith_conch.outbound.socks5 import Socks5Endpoint
from wraith_conch.outbound.tor import TorProvider

__all__ = [
    "DEFAULT_TIMEOUT",
    "IOutboundConnector",
    "OutboundConnector",
    "connect_outbound",
    "outbound_endpoint",
    "resolve",
]

#: Seconds for a whole outbound connection: lookup, connect, proxy handshake.
DEFAULT_TIMEOUT = 30.0


class IOutboundConnector(Interface):
    """Opens the gateway's outbound connections (swappable for tests)."""

    def connect(
        host: str, port: int, protocol_factory: IProtocolFactory, *, address: str | None = None
    ) -> defer.Deferred[IProtocol]:
        """Connect to C{host}:C{port}; fail with an L{OutboundError}."""

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        """The addresses C{host} resolves to (direct mode's "resolve once")."""


def resolve(
    reactor: Any, host: str, port: int = 0, *, timeout: float | None = None
) -> defer.Deferred[list[str]]:
    """
    Look C{host} up with the reactor's name resolver
    (L{IReactorPluggableNameResolver}) and return its TCP addresses as text,
    IPv6 and IPv4 alike, in the resolver's order without repeats.  An IP
    literal is returned as it is (normalised).  Fails with L{NameNotFound}
    when the name has no address, L{InvalidDestination} when C{host} is not
    a valid name, L{ConnectTimeout} when the lookup takes more than
    C{timeout} seconds.
    """
    try:
        destination = check_destination(host, port or 1, allow_scope=True)
    except ValueError as e:
        return defer.fail(InvalidDestination(str(e)))
    if destination.kind != "name":
        return defer.succeed([destination.host])
    addresses: list[str] = []
    result: defer.Deferred[list[str]] = defer.Deferred()

    @implementer(IResolutionReceiver)
    class Receiver:
        @staticmethod
        def resolutionBegan(resolution: IHostResolution) -> None:
            pass

        @staticmethod
        def addressResolved(address: IAddress) -> None:
            text = getattr(address, "host", None)
            if isinstance(text, str) and text not in addresses:
                addresses.append(text)

        @staticmethod
        def resolutionComplete() -> None:
            if result.called:
                return
            if addresses:
                result.callback(list(addresses))
            else:
                result.errback(NameNotFound())

    try:
        resolver = IReactorPluggableNameResolver(reactor).nameResolver
        resolver.resolveHostName(Receiver(), destination.host, port)
    except Exception:
        if not result.called:
            result.errback(NameNotFound("name lookup failed"))
    if timeout is not None and not result.called:
        result.addTimeout(
            timeout,
            reactor,
            onTimeoutCancel=lambda value, seconds: Failure(ConnectTimeout("name lookup timed out")),
        )
    return result


@implementer(IStreamClientEndpoint)
class _TorSocksPort:
    """The SOCKS port of a L{TorProvider}'s Tor, once it has bootstrapped."""

    def __init__(self, tor: TorProvider) -> None:
        self._tor = tor

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        d = self._tor.socks_endpoint()
        d.addCallback(lambda endpoint: endpoint.connect(protocolFactory))
        return d


def outbound_endpoint(
    reactor: Any,
    host: str,
    port: int,
    proxy: ProxySpec = DIRECT,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    address: str | None = None,
    tor: TorProvider | None = None,
) -> IStreamClientEndpoint:
    """
    The endpoint that reaches C{host}:C{port} as C{proxy} says.  Direct mode
    connects to C{address} (an IP address from L{resolve}) when given, else
    looks C{host} up (C{HostnameEndpoint}, IPv4 and IPv6).  C{tor} is
    required for L{ProxyKind.TOR}.  Raise L{InvalidDestination} (a
    L{ValueError}) for an unusable host or port.
    """
    try:
        destination = check_destination(host, port, allow_scope=proxy.is_direct)
    except ValueError as e:
        raise InvalidDestination(str(e)) from None
    if proxy.kind is ProxyKind.DIRECT:
        return _direct_endpoint(reactor, destination, timeout, address)
    if proxy.kind is ProxyKind.TOR:
        if tor is None:
            raise ValueError("the tor proxy mode needs a TorProvider")
        return Socks5Endpoint(
            _TorSocksPort(tor),
            destination.host,
            destination.port,
            timeout=timeout,
            reactor=reactor,
        )
    assert proxy.host is not None and proxy.port is not None
    to_proxy = HostnameEndpoint(
        reactor, proxy.host, proxy.port, timeout=int(timeout) if timeout else 30
    )
    if proxy.kind is ProxyKind.HTTP:
        return HTTPConnectEndpoint(
            to_proxy, destination.host, destination.port, timeout=timeout, reactor=reactor
        )
    return Socks5Endpoint(
        to_proxy, destination.host, destination.port, timeout=timeout, reactor=reactor
    )


def _direct_endpoint(
    reactor: Any, destination: Destination, timeout: float | None, address: str | None
) -> IStreamClientEndpoint:
    seconds = max(1, int(timeout)) if timeout else 30
    if address is not None:
        try:
            target = check_destination(address, destination.port, allow_scope=True)
        except ValueError:
            raise ValueError("address must be an IP address (from resolve())") from None
        if target.kind == "name":
            raise ValueError("address must be an IP address (from resolve())")
        destination = target
    if destination.kind == "ipv4":
        return TCP4ClientEndpoint(reactor, destination.host, destination.port, timeout=seconds)
    if destination.kind == "ipv6":
        return TCP6ClientEndpoint(reactor, destination.host, destination.port, timeout=seconds)
    return HostnameEndpoint(reactor, destination.host, destination.port, timeout=seconds)


@implementer(IOutboundConnector)
class OutboundConnector:
    """
    The gateway's outbound connections for one C{--proxy} setting.  It owns
    the L{TorProvider} of the C{tor} mode (made on first use unless given);
    L{stop} stops it.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        proxy: ProxySpec = DIRECT,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        tor: TorProvider | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self.reactor = reactor
        self.proxy = proxy
        self.timeout = timeout
        self._tor = tor

    @property
    def tor(self) -> TorProvider | None:
        if self.proxy.kind is ProxyKind.TOR and self._tor is None:
            self._tor = TorProvider(self.reactor)
        return self._tor

    def resolve(self, host: str, port: int = 0) -> defer.Deferred[list[str]]:
        """L{resolve}, within this connector's timeout."""
        return resolve(self.reactor, host, port, timeout=self.timeout)

    def connect(
        self,
        host: str,
        port: int,
        protocol_factory: IProtocolFactory,
        *,
        address: str | None = None,
    ) -> defer.Deferred[IProtocol]:
        """
        Connect to C{host}:C{port} and fire with the protocol
        C{protocol_factory} built, connected; or fail with an
        L{OutboundError} (or L{defer.CancelledError} if cancelled).
        C{address}: see L{outbound_endpoint}.
        """
        mode = self.proxy.kind.value
        try:
            endpoint = outbound_endpoint(
                self.reactor,
                host,
                port,
                self.proxy,
                timeout=self.timeout,
                address=address,
                tor=self.tor,
            )
        except InvalidDestination as e:
            self.log.debug("outbound connection ({mode}) refused: {reason}", mode=mode, reason=e)
            return defer.fail(e)
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            attempt.cancel()

        def succeeded(protocol: IProtocol) -> IProtocol:
            if timer is not None and timer.active():
                timer.cancel()
            self.log.debug("outbound connection ({mode}) established", mode=mode)
            return protocol

        def failed(reason: Failure) -> Failure:
            if timer is not None and timer.active():
                timer.cancel()
            if reason.check(defer.CancelledError) and not timed_out:
                return reason
            if timed_out and not reason.check(OutboundError):
                error: OutboundError = ConnectTimeout()
            elif self.proxy.kind is ProxyKind.TOR and not reason.check(OutboundError):
                error = TorUnavailable()
            else:
                error = outbound_error(reason)
            self.log.debug(
                "outbound connection ({mode}) failed: {reason}", mode=mode, reason=error.description
            )
            return Failure(error)

        attempt = defer.maybeDeferred(endpoint.connect, protocol_factory)
        timer = None
        if self.timeout is not None and not attempt.called:
            # The proxy endpoints keep their own deadline; this one bounds a
            # direct connection's name lookup, and backs the others up.
            timer = self.reactor.callLater(self.timeout + 1.0, on_timeout)
        attempt.addCallbacks(succeeded, failed)
        return attempt

    def stop(self) -> defer.Deferred[None]:
        """Stop what this connector started (a launched Tor)."""
        if self._tor is None:
            return defer.succeed(None)
        return self._tor.stop()


def connect_outbound(
    reactor: Any,
    host: str,
    port: int,
    proxy: ProxySpec,
    protocol_factory: IProtocolFactory,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    address: str | None = None,
    tor: TorProvider | None = None,
) -> defer.Deferred[IProtocol]:
    """
    Connect to C{host}:C{port} directly or through C{proxy}, and fire with
    the connected protocol that C{protocol_factory} built; or fail with an
    L{OutboundError} whose text never names the destination (see
    L{open_failure_reason}).  The attempt (lookup, connection, proxy
    handshake) takes at most about C{timeout} seconds.

    In direct mode C{address} (an IP address, from L{resolve}) is connected
    to instead of looking C{host} up again.  Proxy modes send C{host} itself
    (the proxy resolves names) and ignore C{address}.  The C{tor} mode
    needs C{tor}, the gateway's one L{TorProvider} (or use
    L{OutboundConnector}, which owns one).
    """
    if proxy.kind is ProxyKind.TOR and tor is None:
        return defer.fail(ValueError("the tor proxy mode needs a TorProvider"))
    connector = OutboundConnector(reactor, proxy, timeout=timeout, tor=tor)
    return connector.connect(host, port, protocol_factory, address=address)
