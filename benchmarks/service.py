"""
An approval service that approves every request at once (PROTOCOL.md v1).

A real autobahn WebSocket server: it selects C{wraith.approval.v1}, answers
C{ping}, and sends a C{decision} of C{approve} for every C{request} in the
same reactor turn that received it.  It keeps no history.
"""

from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

SUBPROTOCOL = "wraith.approval.v1"


class _AutoApprove(WebSocketServerProtocol):
    def onConnect(self, request):
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, "subprotocol required")
        return SUBPROTOCOL

    def onOpen(self):
        self.factory.connections.add(self)

    def onClose(self, wasClean, code, reason):
        self.factory.connections.discard(self)

    def onMessage(self, payload, isBinary):
        if isBinary:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "request" and isinstance(message.get("id"), str):
            self.factory.decided += 1
            frame = {
                "type": "decision",
                "id": message["id"],
                "decision": "approve",
                "reason": "benchmark",
                "reviewer": "auto",
            }
            self.sendMessage(json.dumps(frame).encode("utf-8"))
        elif kind == "ping":
            self.sendMessage(b'{"type": "pong"}')


class AutoApproveService:
    """Listens on 127.0.0.1; L{stop} drops its connections and stops listening."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self.factory = WebSocketServerFactory()
        self.factory.protocol = _AutoApprove
        self.factory.connections = set()
        self.factory.decided = 0
        self.port = None

    def listen(self) -> str:
        self.port = self._reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        return f"ws://127.0.0.1:{self.port.getHost().port}/"

    @property
    def decided(self) -> int:
        return self.factory.decided

    def stop(self):
        for connection in list(self.factory.connections):
            connection.dropConnection(abort=True)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def main() -> int:
    """
    C{python -m benchmarks.service}: serve on 127.0.0.1 in a process of its
    own, print the URL on one line, and run until SIGTERM or C{MAX_SECONDS}.
    """

    from twisted.internet import reactor

    service = AutoApproveService(reactor)
    print(service.listen(), flush=True)
    reactor.callLater(MAX_SECONDS, reactor.stop)  # never outlive a forgotten run
    reactor.run()
    return 0


MAX_SECONDS = 3600.0

if __name__ == "__main__":
    raise SystemExit(main())
