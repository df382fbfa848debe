"""
An endpoint that runs a proxy handshake over an inner endpoint's connection,
then hands the connection to the application's protocol.

The handshake itself is a sans-IO L{Negotiator} (SOCKS5, HTTP CONNECT): bytes
in, a L{Step} out.  Whatever the proxy sent after the end of its answer is
given to the application's protocol right after it is connected: a server
that speaks first (an SSH server's banner) may arrive in the same read as the
proxy's answer.  The order is that of a plain TCP endpoint: C{makeConnection},
then the C{connect} Deferred fires, then those bytes arrive (unless the
Deferred's callbacks closed the connection).

The tunnel protocol provides C{IHalfCloseableProtocol}: after the handshake,
a half-close goes to the application's protocol if it provides the interface
too, and otherwise closes the connection, as TCP would.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from wraith_conch.outbound.errors import (
    ConnectionFailed,
    OutboundError,
    ProxyProtocolError,
    ProxyTimeout,
    ProxyUnavailable,
    outbound_error,
)


@attrs.frozen
class Step:
    """
    What a negotiator wants after some input: bytes to send to the proxy,
    and, once the tunnel is open, C{done} with the bytes that followed the
    proxy's answer.
    """

    send: bytes = b""
    done: bool = False
    leftover: bytes = b""


class Negotiator(TypingProtocol):
    """A sans-IO proxy handshake."""

    def start(self) -> bytes:
        """The bytes to send once connected to the proxy."""

    def feed(self, data: bytes) -> Step:
        """Consume bytes from the proxy; raise an L{OutboundError} on failure."""


@implementer(IHalfCloseableProtocol)
class _TunnelProtocol(Protocol):
    """
    Runs the negotiator; once the tunnel is open, the application's protocol
    is connected to the same transport and this one forwards to it.
    """

    def __init__(self, negotiator: Negotiator, factory: IProtocolFactory) -> None:
        self._negotiator = negotiator
        self._factory = factory
        self._wrapped: IProtocol | None = None
        self._failed = False
        self.deferred: defer.Deferred[IProtocol] = defer.Deferred()

    # -- handshake ------------------------------------------------------------

    def connectionMade(self) -> None:
        try:
            first = self._negotiator.start()
        except OutboundError as e:
            self._fail(e)
            return
        if first:
            self.transport.write(first)

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self._failed:
            return
        try:
            step = self._negotiator.feed(data)
        except OutboundError as e:
            self._fail(e)
            return
        if step.send:
            self.transport.write(step.send)
        if step.done:
            self._open(step.leftover)

    def _open(self, leftover: bytes) -> None:
        try:
            wrapped = self._factory.buildProtocol(self.transport.getPeer())
        except Exception:
            wrapped = None
            self._fail(ConnectionFailed("the local protocol factory failed"))
            return
        if wrapped is None:
            self._fail(ConnectionFailed("the local protocol factory refused the connection"))
            return
        self._wrapped = wrapped
        wrapped.makeConnection(self.transport)
        if not self.deferred.called:
            self.deferred.callback(wrapped)
        if leftover and not self._closing():
            wrapped.dataReceived(leftover)

    def _closing(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False)) or self._failed

    def _fail(self, reason: OutboundError) -> None:
        if self._failed:
            return
        self._failed = True
        self.transport.loseConnection()
        if not self.deferred.called:
            self.deferred.errback(Failure(reason))

    def abort(self, reason: BaseException) -> None:
        """Give up the handshake (timeout, cancellation)."""
        if self._wrapped is not None or self._failed:
            return
        self._failed = True
        self.transport.abortConnection()
        if not self.deferred.called:
            self.deferred.errback(Failure(reason))

    # -- after the handshake ----------------------------------------------------

    def readConnectionLost(self) -> None:
        if self._wrapped is None:
            self._fail(ProxyProtocolError("proxy closed the connection during the handshake"))
        elif IHalfCloseableProtocol.providedBy(self._wrapped):
            self._wrapped.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._wrapped is not None and IHalfCloseableProtocol.providedBy(self._wrapped):
            self._wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
            return
        self._failed = True
        if not self.deferred.called:
            self.deferred.errback(
                Failure(ProxyProtocolError("proxy closed the connection during the handshake"))
            )


class _TunnelFactory(Factory):
    noisy = False

    def __init__(self, negotiator: Negotiator, factory: IProtocolFactory) -> None:
        self._negotiator = negotiator
        self._factory = factory
        self.protocol_instance: _TunnelProtocol | None = None

    def buildProtocol(self, addr: object) -> _TunnelProtocol:
        p = _TunnelProtocol(self._negotiator, self._factory)
        p.factory = self
        self.protocol_instance = p
        return p


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Base for proxy endpoints: connect with C{inner_endpoint} (to the proxy),
    run the negotiator that L{_negotiator} makes, connect the application's
    protocol.  The whole attempt (inner connection and handshake) is bounded
    by C{timeout} seconds (L{None}: unbounded).

    The returned L{Deferred} fails only with L{OutboundError}s: the inner
    connection's failures become L{ProxyUnavailable}, a handshake that runs
    out of time L{ProxyTimeout}.  It can be cancelled.
    """

    def __init__(
        self,
        inner_endpoint: IStreamClientEndpoint,
        *,
        timeout: float | None,
        reactor: IReactorTime,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self._inner = inner_endpoint
        self._timeout = timeout
        self._reactor = reactor

    def _negotiator(self) -> Negotiator:
        raise NotImplementedError

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        try:
            negotiator = self._negotiator()
        except OutboundError as e:
            return defer.fail(e)
        tunnel_factory = _TunnelFactory(negotiator, protocolFactory)
        timer: IDelayedCall | None = None
        # Why the attempt was stopped early: a timeout or a cancellation.
        stopped: BaseException | None = None

        def stop(reason: BaseException) -> None:
            nonlocal stopped
            if stopped is not None:
                return
            stopped = reason
            tunnel = tunnel_factory.protocol_instance
            if tunnel is not None:
                tunnel.abort(reason)
            else:
                inner.cancel()

        def cancel(d: defer.Deferred[IProtocol]) -> None:
            stop(defer.CancelledError())

        def on_timeout() -> None:
            nonlocal timer
            timer = None
            if tunnel_factory.protocol_instance is not None:
                stop(ProxyTimeout())
            else:
                stop(ProxyUnavailable("proxy unreachable (timed out)"))

        def connected(proto: IProtocol) -> defer.Deferred[IProtocol]:
            tunnel = tunnel_factory.protocol_instance
            assert tunnel is not None
            return tunnel.deferred

        def inner_failed(reason: Failure) -> Failure:
            if stopped is not None:
                return Failure(stopped)
            return Failure(outbound_error(reason, via_proxy=True))

        def done(outcome: IProtocol | Failure) -> None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
                timer = None
            if result.called:
                return
            if isinstance(outcome, Failure):
                if not outcome.check(OutboundError, defer.CancelledError):
                    outcome = Failure(outbound_error(outcome))
                result.errback(outcome)
            else:
                result.callback(outcome)

        result: defer.Deferred[IProtocol] = defer.Deferred(cancel)
        inner = defer.maybeDeferred(self._inner.connect, tunnel_factory)
        if self._timeout is not None:
            timer = self._reactor.callLater(self._timeout, on_timeout)
        inner.addCallbacks(connected, inner_failed)
        inner.addBoth(done)
        return result
