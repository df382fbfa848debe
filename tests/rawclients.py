"""
Raw TCP clients for abuse tests: connections that send nothing, junk, or a
real SSH handshake followed by junk, on the test's reactor or in a thread.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol


class RawClient(Protocol):
    """Records what the server sends and when it closes; optionally sends C{payload}."""

    def __init__(self, payload: bytes = b"", close_after_write: bool = False) -> None:
        self.payload = payload
        self.close_after_write = close_after_write
        self.received = bytearray()
        self.connected_once = False
        self.closed = defer.Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        self.connected_once = True
        if self.payload:
            self.transport.write(self.payload)
        if self.close_after_write:
            # Half-close: the server still answers what it read, then closes.
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        if len(self.received) < 65536:  # bounded: only the start matters
            self.received += data[: 65536 - len(self.received)]

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self.closed.callback(None)

    @property
    def got_banner(self) -> bool:
        return bytes(self.received).startswith(b"SSH-2.0-")

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()


class _OneShot(ClientFactory):
    def __init__(self, protocol: RawClient) -> None:
        self.protocol_instance = protocol
        self.failed = False

    def buildProtocol(self, addr):
        return self.protocol_instance

    def clientConnectionFailed(self, connector, reason) -> None:
        self.failed = True
        self.protocol_instance.lost = True
        self.protocol_instance.closed.callback(None)


def connect_raw(
    reactor,
    testcase,
    port: int,
    *,
    source: str = "127.0.0.1",
    payload: bytes = b"",
    close_after_write: bool = False,
) -> RawClient:
    """A raw connection to 127.0.0.1:C{port} from C{source}; aborted in cleanup."""
    client = RawClient(payload, close_after_write)
    reactor.connectTCP("127.0.0.1", port, _OneShot(client), timeout=10, bindAddress=(source, 0))
    testcase.addCleanup(client.close)
    return client


def blocking_socket(port: int, source: str, timeout: float = 10.0) -> socket.socket:
    """A connected blocking socket from C{source} (for paramiko, in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock
