"""
An approval service written from PROTOCOL.md alone, for integration tests.

It is a real WebSocket server on 127.0.0.1: it checks the bearer token and
the subprotocol, records every frame, and answers each request with the
test's rule (or leaves it pending for the test to decide).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer

SUBPROTOCOL = "wraith.approval.v1"


class _ServiceProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        service = self.factory.service
        if service.token is not None:
            if request.headers.get("authorization") != f"Bearer {service.token}":
                service.refused += 1
                raise ConnectionDeny(401, "bad token")
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, "subprotocol required")
        return SUBPROTOCOL

    def onOpen(self):
        self.factory.service.connections.append(self)

    def onClose(self, wasClean, code, reason):
        service = self.factory.service
        if self in service.connections:
            service.connections.remove(self)

    def onMessage(self, payload, isBinary):
        service = self.factory.service
        if isBinary:
            return
        message = json.loads(payload.decode("utf-8"))
        service.frames.append(message)
        kind = message.get("type")
        if kind == "ping":
            self.sendMessage(b'{"type": "pong"}')
        elif kind == "request":
            service.requests.append(message)
            waiting, service._waiting = service._waiting, []
            for d in waiting:
                d.callback(message)
            decision = service.rule(message)
            if decision is not None:
                service.decide(message["id"], *decision)
        elif kind == "cancel":
            service.cancels.append(message)


class ApprovalService:
    """
    C{rule(request_dict)} returns C{("approve"|"deny", reason)} or C{None}
    to leave the request pending.
    """

    def __init__(self, rule: Callable[[dict], tuple[str, str] | None] | None = None, token=None):
        self.rule = rule or (lambda request: None)
        self.token = token
        self.frames: list[dict] = []
        self.requests: list[dict] = []
        self.cancels: list[dict] = []
        self.connections: list[_ServiceProtocol] = []
        self.refused = 0
        self._waiting: list[defer.Deferred] = []
        self.factory = WebSocketServerFactory()
        self.factory.protocol = _ServiceProtocol
        self.factory.service = self
        self.port = None

    def listen(self, reactor, testcase, port: int = 0) -> str:
        self.port = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
        testcase.addCleanup(self.stop)
        return f"ws://127.0.0.1:{self.port.getHost().port}/"

    def stop(self):
        for connection in list(self.connections):
            connection.dropConnection(abort=True)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    def next_request(self) -> defer.Deferred[dict]:
        d: defer.Deferred[dict] = defer.Deferred()
        self._waiting.append(d)
        return d

    def decide(self, request_id: str, decision: str, reason: str = "") -> None:
        frame = json.dumps(
            {
                "type": "decision",
                "id": request_id,
                "decision": decision,
                "reason": reason,
                "reviewer": "test-service",
            }
        ).encode()
        for connection in self.connections:
            connection.sendMessage(frame)
