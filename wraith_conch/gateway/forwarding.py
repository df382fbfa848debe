"""
C{direct-tcpip} channels (C{ssh -L}, C{ssh -D}): an SSH channel relayed to a
TCP connection the gateway opens itself.

The channel is confirmed only once the outbound connection is up, so a
failure (refused, no such name, proxy refusal, policy) fails I{that} channel
with the matching open-failure reason and nothing else.

Backpressure runs both ways, as in L{wraith_conch.relay}: when the
operator's window is full, the TCP transport stops reading; when the TCP
transport's write buffer is full, the channel stops re-opening its window.

Nothing here logs where a tunnel goes: not the host, the port, the resolved
address, nor byte counts (ADR-006).  Errors carry generic text only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from twisted.conch.ssh import common, connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from wraith_conch.outbound import open_failure_reason
from wraith_conch.relay import RelayChannel

# Bytes a far end may send before the channel is confirmed (an HTTP CONNECT
# proxy can hand over server bytes with its 200): kept, with reading paused.
MAX_EARLY_BYTES = 256 * 1024
# Control events waiting for an operator who does not read are dropped past this.
MAX_CONTROL_BACKLOG = 64 * 1024

CONTROL_HOST = "wraith-control"


class ChannelOpenRefused(Exception):
    """A forward that is not opened: C{code} and a text free of destinations."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def unpack_direct_tcpip(data: bytes) -> tuple[str, int]:
    """The requested host and port; L{ChannelOpenRefused} if malformed."""
    try:
        host, rest = common.getNS(data)
        (port,) = struct.unpack(">L", rest[:4])
        return host.decode("utf-8"), port
    except Exception:
        raise ChannelOpenRefused(connection.OPEN_CONNECT_FAILED, "malformed request") from None


@implementer(IHalfCloseableProtocol, IPushProducer)
class TCPLeg(Protocol):
    """
    The TCP side of a forwarded channel; speaks the same small interface as
    a L{RelayChannel} so the channel can treat it as its peer.
    """

    def __init__(self) -> None:
        self.peer: RelayChannel | None = None
        self.connected_deferred: defer.Deferred[TCPLeg] = defer.Deferred()
        self._early: list[bytes] = []
        self._early_size = 0
        self._reading_paused = False

    # -- from the network

    def connectionMade(self) -> None:
        # We produce for the TCP transport's write buffer: when it fills, the
        # channel holds its window.
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.relay_data(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= MAX_EARLY_BYTES:
            self.pause_receiving()

    def attach(self, channel: RelayChannel) -> None:
        self.peer = channel
        early, self._early = self._early, []
        for data in early:
            channel.relay_data(data)
        if not channel.backlog:
            self.resume_receiving()

    def readConnectionLost(self) -> None:
        if self.peer is not None:
            self.peer.relay_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.resume_receiving()
            peer.close_after_data()

    # -- the interface a RelayChannel expects of its peer

    def pause_receiving(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def resume_receiving(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()

    def relay_data(self, data: bytes) -> None:
        self.transport.write(data)

    def relay_eof(self) -> None:
        # No more data for the transport: stop producing for it first.  A
        # transport whose buffer drains while its streaming producer is
        # paused resumes the producer *instead of* the pending half-close,
        # and the far end would wait for an EOF that never comes.
        self.transport.unregisterProducer()
        if hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()

    def close_after_data(self) -> None:
        # Twisted sends what is buffered before it closes (once no producer
        # is registered, for the same reason as above).
        if self.transport is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- IPushProducer, for the TCP transport's write buffer

    def pauseProducing(self) -> None:
        if self.peer is not None:
            self.peer.pause_receiving()

    def resumeProducing(self) -> None:
        if self.peer is not None:
            self.peer.resume_receiving()

    def stopProducing(self) -> None:
        pass


class DirectTCPIPChannel(RelayChannel):
    """The SSH side of a forwarded connection; C{peer} is its L{TCPLeg}."""

    name = b"direct-tcpip"

    def channelOpen(self, specificData: bytes) -> None:
        self.peer.attach(self)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.relay_data(data)

    def eofReceived(self) -> None:
        if self.peer is not None:
            self.peer.relay_eof()


class ControlChannel(SSHChannel):
    """
    C{wraith-control:0}: JSON lines of the operator's own session events
    (approval pending, approved, denied), for a client tool to show.
    """

    name = b"direct-tcpip"

    def __init__(self, subscribe: Callable, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._unsubscribe = subscribe(self.publish)
        self.dropped = 0

    def publish(self, event: dict) -> None:
        if self.localClosed:
            return
        if len(self.buf) > MAX_CONTROL_BACKLOG:
            self.dropped += 1
            return
        self.write(json.dumps(event, sort_keys=True).encode("utf-8") + b"\n")

    def dataReceived(self, data: bytes) -> None:
        # The channel is one-way; input is ignored.
        return None

    def closed(self) -> None:
        self._unsubscribe()


class ForwardingConnectionMixin:
    """
    For the operator-side connection: open C{direct-tcpip} channels only
    after the outbound connection is up (Conch confirms every open at once).
    """

    def ssh_CHANNEL_OPEN(self, packet: bytes):
        channel_type, rest = common.getNS(packet)
        if channel_type != b"direct-tcpip":
            return super().ssh_CHANNEL_OPEN(packet)  # type: ignore[misc]
        sender, window, max_packet = struct.unpack(">3L", rest[:12])
        avatar = self.transport.avatar  # type: ignore[attr-defined]
        d = defer.maybeDeferred(avatar.open_direct_tcpip, rest[12:], window, max_packet)
        d.addCallbacks(self._confirm_open, self._refuse_open, (sender,), None, (sender,), None)
        return d

    def _confirm_open(self, channel: SSHChannel, sender: int) -> None:
        transport = self.transport  # type: ignore[attr-defined]
        if transport is None or getattr(transport, "transport", None) is None:
            channel.closed()
            return
        local = self.localChannelID  # type: ignore[attr-defined]
        self.localChannelID += 1  # type: ignore[attr-defined]
        channel.id = local
        channel.conn = self
        self.channels[local] = channel  # type: ignore[attr-defined]
        self.channelsToRemoteChannel[channel] = sender  # type: ignore[attr-defined]
        self.localToRemoteChannel[local] = sender  # type: ignore[attr-defined]
        transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(">4L", sender, local, channel.localWindowSize, channel.localMaxPacket),
        )
        channel.channelOpen(b"")

    def _refuse_open(self, failure, sender: int) -> None:
        if failure.check(ChannelOpenRefused):
            code, text = failure.value.code, failure.value.description
        else:
            # Unexpected: say nothing specific (it could name the destination).
            code, text = connection.OPEN_CONNECT_FAILED, "connection failed"
        transport = self.transport  # type: ignore[attr-defined]
        if transport is not None:
            transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", sender, code) + common.NS(text.encode("utf-8")) + common.NS(b""),
            )


class Forwarder:
    """
    Opens the outbound connection of a forward, after the destination policy.

    Direct mode resolves the name once and connects to that address, which
    the policy checks, so a DNS answer cannot change between check and
    connect.  Proxy modes check the requested name (the proxy resolves it).
    """

    def __init__(self, connector, policy, *, proxied: bool) -> None:
        self._connector = connector
        self._policy = policy
        self._proxied = proxied

    def open(self, host: str, port: int, key_options) -> defer.Deferred[TCPLeg]:
        verdict = self._policy.check_request(
            host, port, key_options=key_options, proxied=self._proxied
        )
        if not verdict.allowed:
            return defer.fail(_prohibited(verdict.reason))
        factory = Factory.forProtocol(TCPLeg)
        if self._proxied:
            d = self._connector.connect(host, port, factory)
        else:
            d = self._connector.resolve(host, port)

            def checked(addresses: list[str]):
                if not addresses:
                    raise ChannelOpenRefused(connection.OPEN_CONNECT_FAILED, "name not found")
                address = addresses[0]
                final = self._policy.check_address(host, address, port, key_options=key_options)
                if not final.allowed:
                    raise _prohibited(final.reason)
                return self._connector.connect(host, port, factory, address=address)

            d.addCallback(checked)

        def failed(failure):
            if failure.check(ChannelOpenRefused):
                return failure
            code, description = open_failure_reason(failure)
            raise ChannelOpenRefused(code, description)

        return d.addErrback(failed)


def _prohibited(reason: str) -> ChannelOpenRefused:
    return ChannelOpenRefused(connection.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
