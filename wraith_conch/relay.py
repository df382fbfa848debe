"""
Flow-controlled channels that relay one SSH channel to another.

Conch's L{SSHChannel.write} buffers without limit once the peer's window is
full, and L{SSHConnection} re-opens our receive window whether or not the
data was consumed.  A relay built on those defaults lets a fast sender and a
stalled reader fill the gateway's memory.  Here the two legs are coupled:

  - when a channel cannot send everything it was given (its peer's window
    is closed), the channel feeding it stops re-opening I{its} receive
    window, so the sender on that side runs out of window and stops;
  - when the stalled side adds window and the backlog drains, the feeding
    channel sends the window adjustments it held back.

So each direction holds at most one receive window of data (plus one packet)
however long the reader stalls.

EOF, close and requests that must follow the data (C{exit-status}) are
queued behind the backlog, because Conch sends them at once even while data
is still buffered, which would put an EOF ahead of data it follows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.conch.ssh import common, connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.logger import Logger

# Large windows keep throughput up over the two legs (OpenSSH uses 2 MiB);
# they are also the per-direction memory bound of a relayed channel.
RELAY_WINDOW_SIZE = 2 * 1024 * 1024
RELAY_MAX_PACKET = 32 * 1024

_TWO_UINT32 = struct.Struct(">LL")


class RelayChannel(SSHChannel):
    """
    One leg of a relayed channel.  C{peer} is the other leg, once it exists.
    """

    _log = Logger()

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("localWindow", RELAY_WINDOW_SIZE)
        kwargs.setdefault("localMaxPacket", RELAY_MAX_PACKET)
        super().__init__(*args, **kwargs)
        self.peer: RelayChannel | None = None
        self.receive_paused = False
        self._after_drain: list[Callable[[], object]] = []

    # -- receive window -------------------------------------------------

    def pause_receiving(self) -> None:
        """Stop re-opening our receive window until L{resume_receiving}."""
        self.receive_paused = True

    def resume_receiving(self) -> None:
        """Re-open our receive window if we held back an adjustment."""
        if not self.receive_paused:
            return
        self.receive_paused = False
        if self.localClosed or self.conn is None:
            return
        if self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    # -- sending, with backlog accounting --------------------------------

    @property
    def backlog(self) -> int:
        """Bytes accepted for sending that the peer's window did not admit yet."""
        if not self.extBuf:  # the common case, checked once per relayed packet
            return len(self.buf)
        return len(self.buf) + sum(len(data) for _, data in self.extBuf)

    def relay_data(self, data: bytes) -> None:
        """Send C{data}; if it does not all fit, pause the leg feeding us."""
        self.write(data)
        self._pause_feeder_if_backlogged()

    def relay_extended(self, data_type: int, data: bytes) -> None:
        self.writeExtended(data_type, data)
        self._pause_feeder_if_backlogged()

    def _pause_feeder_if_backlogged(self) -> None:
        if self.backlog and self.peer is not None:
            self.peer.pause_receiving()

    def addWindowBytes(self, amount: int) -> None:
        # Not SSHChannel.addWindowBytes: that calls startWriting before the
        # backlog is flushed and lets write() send CLOSE ahead of a queued EOF.
        self.remoteWindowLeft += amount
        closing, self.closing = self.closing, 0
        buf, self.buf = self.buf, b""
        ext, self.extBuf = self.extBuf, []
        if buf:
            self.write(buf)
        for data_type, data in ext:
            self.writeExtended(data_type, data)
        self.closing = closing
        if not self.backlog:
            self._drained()

    def _drained(self) -> None:
        actions, self._after_drain = self._after_drain, []
        for action in actions:
            action()
        if self.closing:
            self.conn.sendClose(self)
        elif self.peer is not None:
            self.peer.resume_receiving()

    def when_drained(self, action: Callable[[], object]) -> None:
        """Run C{action} once everything accepted so far has been sent."""
        if self.backlog:
            self._after_drain.append(action)
        else:
            action()

    def relay_eof(self) -> None:
        self.when_drained(lambda: self.conn.sendEOF(self))

    def relay_request_after_data(self, request_type: bytes, data: bytes) -> None:
        """Send a no-reply request (C{exit-status}) after the data before it."""
        self.when_drained(lambda: self.conn.sendRequest(self, request_type, data, 0))

    def close_after_data(self) -> None:
        """Close once the backlog is sent (Conch's loseConnection does that)."""
        if not self.localClosed:
            self.loseConnection()

    def write(self, data: bytes) -> None:
        # SSHChannel.write calls loseConnection() itself when closing; keep
        # CLOSE behind any queued EOF/requests by deferring to _drained.
        closing, self.closing = self.closing, 0
        super().write(data)
        self.closing = closing

    def writeExtended(self, dataType: int, data: bytes) -> None:
        closing, self.closing = self.closing, 0
        super().writeExtended(dataType, data)
        self.closing = closing

    def loseConnection(self) -> None:
        self.closing = 1
        if not self.backlog and not self._after_drain:
            self.conn.sendClose(self)

    def abandon_backlog(self) -> None:
        """The far side is gone: drop what we could never deliver."""
        self.buf = b""
        self.extBuf = []
        self._after_drain = []

    # -- teardown ---------------------------------------------------------

    def closeReceived(self) -> None:
        # The other end will read nothing more from this leg.
        self.abandon_backlog()
        self.loseConnection()

    def closed(self) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.resume_receiving()
            peer.close_after_data()


class RelayConnectionMixin:
    """
    For an L{SSHConnection} carrying L{RelayChannel}s: hold back window
    adjustments of paused channels, and give channels the C{want reply}
    flag that Conch's C{requestReceived} drops.
    """

    def adjustWindow(self, channel: SSHChannel, bytesToAdd: int) -> None:
        if getattr(channel, "receive_paused", False):
            return
        super().adjustWindow(channel, bytesToAdd)  # type: ignore[misc]

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        # Conch's, with the data sliced once (it copies it twice): this is
        # the per-packet path of every relayed byte.
        local_channel, length = _TWO_UINT32.unpack_from(packet)
        channel = self.channels[local_channel]  # type: ignore[attr-defined]
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            self._log.error("too much data")  # type: ignore[attr-defined]
            self.sendClose(channel)  # type: ignore[attr-defined]
            return
        data = packet[8 : 8 + length]
        channel.localWindowLeft -= length
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        channel.dataReceived(data)

    def sendData(self, channel: SSHChannel, data: bytes) -> None:
        # Conch's, without copying the data to put its header in front.
        if channel.localClosed:
            return
        header = _TWO_UINT32.pack(self.channelsToRemoteChannel[channel], len(data))  # type: ignore[attr-defined]
        send_parts = getattr(self.transport, "send_packet_parts", None)  # type: ignore[attr-defined]
        if send_parts is not None:
            send_parts(connection.MSG_CHANNEL_DATA, (header, data))
        else:
            self.transport.sendPacket(connection.MSG_CHANNEL_DATA, header + data)  # type: ignore[attr-defined]

    def ssh_CHANNEL_REQUEST(self, packet: bytes):
        local_channel = struct.unpack(">L", packet[:4])[0]
        channel = self.channels.get(local_channel)  # type: ignore[attr-defined]
        handler = getattr(channel, "relay_request", None)
        if handler is None:
            return super().ssh_CHANNEL_REQUEST(packet)  # type: ignore[misc]
        request_type, rest = common.getNS(packet[4:])
        want_reply = bool(rest[:1] and rest[0])
        d = handler(request_type, rest[1:], want_reply)
        if want_reply:
            d.addErrback(lambda _: False)
            d.addCallback(self._reply_to_request, local_channel)
        return d

    def _reply_to_request(self, succeeded: object, local_channel: int) -> None:
        # Conch's own reply raises KeyError when the channel closed while
        # the request was being decided; such a reply has nobody to go to.
        remote = self.localToRemoteChannel.get(local_channel)  # type: ignore[attr-defined]
        if remote is None or self.transport is None:  # type: ignore[attr-defined]
            return
        message = connection.MSG_CHANNEL_SUCCESS if succeeded else connection.MSG_CHANNEL_FAILURE
        self.transport.sendPacket(message, struct.pack(">L", remote))  # type: ignore[attr-defined]


class RelayConnection(RelayConnectionMixin, connection.SSHConnection):
    """An SSHConnection whose relay channels get flow control."""
