"""
Many interactive sessions from one process: C{python -m benchmarks.scale_client CONFIG_JSON}.

A Twisted Conch SSH client (aes128-ctr + hmac-sha2-256 pinned, TCP_NODELAY)
opens C{connections} connections with C{channels} PTY shell sessions each, in
batches of C{batch} connections, each batch waiting for every prompt before
the next starts.  It prints C{{"opened": N, ...}} and waits for a C{go} line on
stdin; then C{typists} of the sessions (spread over the connections) each type
one key every C{interval} seconds for C{seconds} seconds -- C{x} and DEL in
turn, so the line never grows -- and it prints C{{"echo_us": [...], ...}}: for
each key, the time from its write to the session's next output (its echo).
It then waits for stdin to close (or C{close}) and drops every connection.
It stops by itself after C{max_seconds}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.internet import defer, protocol, stdio, task
from twisted.protocols.basic import LineReceiver

PROMPT = b"wraith$ "
KEYS = (b"x", b"\x7f")

now = time.perf_counter_ns


class Shell(channel.SSHChannel):
    name = b"session"

    def __init__(self, client: Client, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.client = client
        self.ready: defer.Deferred = defer.Deferred()
        self.seen = b""
        self.sent_at: int | None = None
        self.next_key = 0

    def channelOpen(self, data: bytes) -> None:
        pty = session.packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addErrback(self._failed)

    def openFailed(self, reason) -> None:
        self._failed(reason)

    def _failed(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        at = now()
        if not self.ready.called:
            self.seen += data
            if PROMPT in self.seen:
                self.seen = b""
                self.ready.callback(self)
            return
        if self.sent_at is not None:
            self.client.echoes.append((at - self.sent_at) // 1000)
            self.sent_at = None

    def type_key(self) -> None:
        if self.sent_at is not None:
            self.client.skipped += 1  # the last key's echo is still out
            return
        key = KEYS[self.next_key % len(KEYS)]
        self.next_key += 1
        self.sent_at = now()
        self.write(key)

    def closed(self) -> None:
        self._failed(Exception("the session closed"))
        if self.client.typing:
            self.client.lost += 1


class UserAuth(userauth.SSHUserAuthClient):
    def __init__(self, user: bytes, instance, key: keys.Key) -> None:
        super().__init__(user, instance)
        self._key = key
        self._offered = False

    def getPublicKey(self):
        if self._offered:
            return None
        self._offered = True
        return self._key.public()

    def getPrivateKey(self):
        return defer.succeed(self._key)


class Connection(connection.SSHConnection):
    def __init__(self, ready: defer.Deferred) -> None:
        super().__init__()
        self._ready = ready

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self._ready.callback(self)


class Transport(transport.SSHClientTransport):
    supportedCiphers = [b"aes128-ctr"]
    supportedMACs = [b"hmac-sha2-256"]

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def verifyHostKey(self, blob: bytes, fingerprint):
        if keys.Key.fromString(blob) != self.factory.host_key:
            return defer.fail(Exception("host key mismatch"))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        conn = Connection(self.factory.connected)
        self.requestService(UserAuth(self.factory.user, conn, self.factory.key))

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        if not self.factory.connected.called:
            self.factory.connected.errback(reason)


class Factory(protocol.ClientFactory):
    protocol = Transport

    def __init__(self, user: bytes, key: keys.Key, host_key: keys.Key) -> None:
        self.user = user
        self.key = key
        self.host_key = host_key
        self.connected: defer.Deferred = defer.Deferred()

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.connected.called:
            self.connected.errback(reason)


class Client:
    def __init__(self, reactor, config: dict[str, Any]) -> None:
        self.reactor = reactor
        self.config = config
        self.connections: list[Connection] = []
        self.shells: list[Shell] = []
        self.echoes: list[int] = []
        self.skipped = 0
        self.lost = 0
        self.typing = False
        self.key = keys.Key.fromFile(config["key"])
        self.host_key = keys.Key.fromString(config["host_key"].encode("ascii"))

    async def connect_one(self) -> None:
        factory = Factory(self.config["user"].encode(), self.key, self.host_key)
        self.reactor.connectTCP("127.0.0.1", self.config["port"], factory, timeout=30)
        conn = await factory.connected
        self.connections.append(conn)
        shells = []
        for _ in range(self.config["channels"]):
            shell = Shell(self, conn=conn)
            conn.openChannel(shell)
            shells.append(shell)
        self.shells.extend(shells)
        await defer.gatherResults([s.ready for s in shells], consumeErrors=True)

    async def open_all(self) -> float:
        started = time.monotonic()
        remaining = self.config["connections"]
        while remaining > 0:
            batch = min(self.config["batch"], remaining)
            waiting = defer.gatherResults(
                [defer.ensureDeferred(self.connect_one()) for _ in range(batch)],
                consumeErrors=True,
            )
            waiting.addTimeout(self.config["batch_timeout"], self.reactor)
            await waiting
            remaining -= batch
        return time.monotonic() - started

    async def type_for(self, seconds: float) -> None:
        count = min(self.config["typists"], len(self.shells))
        stride = max(1, len(self.shells) // max(1, count))
        typists = self.shells[::stride][:count]
        interval = self.config["interval"]
        self.typing = True
        loops = []
        for number, shell in enumerate(typists):
            loop = task.LoopingCall(shell.type_key)
            loop.clock = self.reactor
            loops.append(loop)
            # Spread the typists over the interval, not all on one tick.
            self.reactor.callLater(interval * number / count, loop.start, interval, now=True)
        await task.deferLater(self.reactor, seconds + interval, lambda: None)
        for loop in loops:
            if loop.running:
                loop.stop()
        # Let the last echoes come home.
        await task.deferLater(self.reactor, 1.0, lambda: None)
        self.typing = False

    def close(self) -> None:
        for conn in self.connections:
            conn.transport.loseConnection()


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, client: Client) -> None:
        self.client = client
        self.state = "opening"

    def send(self, message: dict) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def connectionMade(self) -> None:
        d = defer.ensureDeferred(self.client.open_all())
        d.addCallbacks(self._opened, self._failed)

    def _opened(self, seconds: float) -> None:
        self.state = "open"
        self.send(
            {"opened": len(self.client.shells), "connections": len(self.client.connections),
             "seconds": round(seconds, 1)}
        )  # fmt: skip

    def _failed(self, failure) -> None:
        self.send({"error": f"{failure.type.__name__}: {failure.getErrorMessage()}",
                   "opened": sum(1 for s in self.client.shells if s.ready.called)})  # fmt: skip
        self.client.close()
        self.client.reactor.callLater(0.5, self.client.reactor.stop)

    def lineReceived(self, line: bytes) -> None:
        command = line.strip()
        if command == b"go" and self.state == "open":
            self.state = "typing"
            d = defer.ensureDeferred(self.client.type_for(self.client.config["seconds"]))
            d.addCallbacks(self._typed, self._failed)
        elif command == b"close":
            self.connectionLost(None)

    def _typed(self, _) -> None:
        self.state = "typed"
        client = self.client
        self.send({"echo_us": client.echoes, "skipped": client.skipped, "lost": client.lost})

    def connectionLost(self, reason) -> None:
        if self.state == "closing":
            return
        self.state = "closing"
        self.client.close()
        self.client.reactor.callLater(0.5, self.client.reactor.stop)


def main() -> int:
    from twisted.internet import reactor

    config = json.loads(sys.argv[1])
    client = Client(reactor, config)
    stdio.StandardIO(Control(client), reactor=reactor)
    reactor.callLater(config.get("max_seconds", 600), reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
