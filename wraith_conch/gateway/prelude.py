"""
Holding a connection back from the SSH server until its first bytes decide.

A L{PreludeWrapper} sits between a listening port and the gateway's SSH
transport.  It does not connect the SSH transport (which would send the
gateway's version banner at once) until a subclass's C{examine} has looked
at what the client sent first and said L{Start} -- the bytes are then
replayed to the SSH transport -- or L{Refuse}, which writes an optional
reply and closes.  The wait is bounded in time and in buffered bytes.

Two preludes use this: the PROXY protocol header a load balancer sends
(L{wraith_conch.gateway.listeners}) and the stealth check that answers
non-SSH clients like a web server (L{wraith_conch.gateway.stealth}).
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy


@attrs.frozen
class Start:
    """Connect the wrapped protocol and replay C{replay} to it."""

    replay: bytes


@attrs.frozen
class Refuse:
    """Write C{reply} (may be empty) and close; C{reason} is for the log."""

    reason: str
    reply: bytes = b""


Decision = Start | Refuse | None  # None: not decided yet, read more


def _peer_text(transport) -> str:
    from wraith_conch.gateway.server import format_address

    try:
        return format_address(transport.getPeer())
    except Exception:  # a transport without a peer is still closed, not crashed
        return "unknown"


class PreludeWrapper(ProtocolWrapper):
    """
    Buffers the first bytes until C{examine} decides; subclasses implement
    C{examine(buffered) -> Start | Refuse | None} and may override
    C{on_timeout(buffered) -> Refuse} and C{on_overflow(buffered)}.
    """

    _log = Logger()
    factory: PreludeFactory

    started = False

    def makeConnection(self, transport) -> None:
        # ProtocolWrapper.makeConnection, minus connecting the wrapped
        # protocol: that waits for the decision.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._buffer = b""
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.disconnecting:
            return
        self._buffer += data
        decision = self.examine(self._buffer)
        if decision is None and len(self._buffer) > self.factory.max_bytes:
            decision = self.on_overflow(self._buffer)
        if decision is not None:
            self._decide(decision)

    def examine(self, buffered: bytes) -> Decision:
        raise NotImplementedError

    def on_timeout(self, buffered: bytes) -> Refuse:
        return Refuse("no data in time")

    def on_overflow(self, buffered: bytes) -> Start | Refuse:
        return Refuse(f"more than {self.factory.max_bytes} bytes without a decision")

    def _timed_out(self) -> None:
        self._timer = None
        self._decide(self.on_timeout(self._buffer))

    def _decide(self, decision: Start | Refuse) -> None:
        self._cancel_timer()
        buffered, self._buffer = self._buffer, b""
        if isinstance(decision, Start):
            self.started = True
            self.wrappedProtocol.makeConnection(self)
            # The wrapped protocol may have closed the connection already
            # (connectionLost then clears wrappedProtocol).
            if decision.replay and self.wrappedProtocol is not None and not self.disconnecting:
                self.wrappedProtocol.dataReceived(decision.replay)
            return
        self._log.info(
            "{prelude}: closed the connection from {remote_addr}: {reason}",
            event_kind="prelude",
            prelude=self.factory.name,
            remote_addr=_peer_text(self.transport),
            reason=decision.reason,
            buffered_bytes=len(buffered),
        )
        if decision.reply:
            self.transport.write(decision.reply)
        self.loseConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = getattr(self, "_timer", None), None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason) -> None:
        self._cancel_timer()
        self.factory.unregisterProtocol(self)
        if self.started and self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
        # Breaking the reference cycle, as ProtocolWrapper does.
        self.wrappedProtocol = None


class PreludeFactory(WrappingFactory):
    """Wraps a factory's protocols in C{protocol} (a L{PreludeWrapper})."""

    protocol = PreludeWrapper
    name = "prelude"

    def __init__(
        self, reactor: IReactorTime, wrappedFactory, *, timeout: float, max_bytes: int
    ) -> None:
        super().__init__(wrappedFactory)
        self.reactor = reactor
        self.timeout = timeout
        self.max_bytes = max_bytes
