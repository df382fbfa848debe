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
from twisted.internet import defer, task

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
        elif kind == "pong":
            waiting, service._pongs = service._pongs, []
            for d in waiting:
                d.callback(None)


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
        self._pongs: list[defer.Deferred] = []
        self.port_number: int | None = None
        self._listening_for = None
        self.factory = WebSocketServerFactory()
        self.factory.protocol = _ServiceProtocol
        self.factory.service = self
        self.port = None

    def listen(self, reactor, testcase, port: int = 0) -> str:
        self.port = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        if self._listening_for is not testcase:
            self._listening_for = testcase
            testcase.addCleanup(self.stop)
        return f"ws://127.0.0.1:{self.port_number}/"

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

    # -- more ways to misbehave, for end-to-end tests ------------------------------

    @defer.inlineCallbacks
    def restart(self, reactor, testcase, down_for: float = 0.0):
        """
        Drop every connection and stop listening, stay down for C{down_for}
        seconds, then listen again on the same port (a service restart, as
        the gateway sees it).  Fires with the URL once listening again.
        """
        if self.port_number is None:
            raise RuntimeError("listen() first")
        port_number = self.port_number
        yield self.stop()
        if down_for > 0:
            yield task.deferLater(reactor, down_for, lambda: None)
        return self.listen(reactor, testcase, port_number)

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        """Send one frame, exactly C{payload}, to every connected gateway."""
        for connection in self.connections:
            connection.sendMessage(payload, isBinary=binary)

    def send_json(self, message) -> None:
        """Send C{message} (any JSON value, valid for the protocol or not) as a text frame."""
        self.send_raw(json.dumps(message).encode())

    def round_trip(self) -> defer.Deferred[None]:
        """
        Send C{ping}; fires at the next C{pong}.  Frames on one connection are
        handled in order, so by then the gateway has handled every frame
        sent before the ping.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._pongs.append(d)
        self.send_json({"type": "ping"})
        return d
