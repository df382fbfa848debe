"""
The embedded approval hub (L{wraith_conch.approval.hub}).

Two layers:

  - L{HubCoreTests}: the sans-IO L{Hub} with plain objects as links --
    every rule (first decision wins, idempotent re-sends, cancel, expiry,
    refusals) checked without a socket.
  - The rest: a real hub on 127.0.0.1:0 spoken to by the project's real
    gateway client (L{ApprovalClient}), real autobahn reviewer sockets,
    raw sockets that misbehave, plain HTTP for the console pages, and a
    real C{twistd wraith-hub} process.

Every wait is bounded (L{wait_until}, L{ReviewerSocket.next}); every hub,
client and socket is stopped in cleanup.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from http.cookies import SimpleCookie

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.polling import wait_until
from wraith_conch.approval import hub as hub_module
from wraith_conch.approval.client import ApprovalClient
from wraith_conch.approval.hub import (
    CLOSE_POLICY,
    HUB_REVIEWER,
    MAX_REQUEST_BYTES,
    REVIEWER_SUBPROTOCOL,
    Hub,
    make_hub_service,
)
from wraith_conch.approval.interfaces import CommandRequest, Risk
from wraith_conch.approval.protocol import SUBPROTOCOL
from wraith_conch.approval.reviewers import Reviewers, hash_password, token_digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY_TOKEN = "gw-token-5d1b7c0e-never-log-me"
BOB_TOKEN = "bob-token-8a7f3e21-never-log-me"
CAROL_TOKEN = "carol-token-61c2d9aa-never-log-me"
CAROL_PASSWORD = "carol-pw-never-log-me"
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def reviewers_for_tests(password_rounds: int = 4) -> Reviewers:
    return Reviewers.from_data(
        {
            "reviewer": [
                {"name": "bob", "token_sha256": token_digest(BOB_TOKEN)},
                {
                    "name": "carol",
                    "token_sha256": token_digest(CAROL_TOKEN),
                    "password_bcrypt": hash_password(CAROL_PASSWORD, password_rounds),
                },
            ]
        }
    )


def start_hub(testcase: TestCase, reviewers: Reviewers | None = None, **kwargs):
    """A started hub on 127.0.0.1:0; returns the service (stopped in cleanup)."""
    announced: list[str] = []
    service, _hub, url = make_hub_service(
        reactor,
        "tcp:0:interface=127.0.0.1",
        reviewers if reviewers is not None else reviewers_for_tests(),
        GATEWAY_TOKEN,
        announce=announced.append,
        **kwargs,
    )
    service.announced = announced
    service.startService()
    testcase.addCleanup(service.stopService)
    assert url == service.gateway_url
    return service


def start_gateway(testcase: TestCase, service, name: str = "gw-1", retry: float = 0.05):
    client = ApprovalClient(
        reactor,
        service.gateway_url,
        token=GATEWAY_TOKEN,
        gateway_name=name,
        timeout=60,
        retry_policy=lambda attempt: retry,
    )
    client.startService()
    testcase.addCleanup(client.stopService)
    return client


def make_request(command: str = "rm -rf /var/tmp/cache", **kw) -> CommandRequest:
    fields = dict(
        session="s-8c41",
        user="alice",
        client="127.0.0.1:53122",
        target="db1.internal:22",
        kind="shell",
        command=command,
        created=reactor.seconds(),
        timeout=60.0,
    )
    fields.update(kw)
    return CommandRequest.new(**fields)


# --- a WebSocket client that can do anything ---------------------------------------


class _SocketProtocol(WebSocketClientProtocol):
    log = txaio.make_logger(level="info")

    def onConnect(self, response):
        self.factory.socket.selected = response.protocol

    def onOpen(self):
        self.factory.socket._opened(self)

    def onMessage(self, payload, isBinary):
        sock = self.factory.socket
        if isBinary:
            sock.messages.append({"binary": payload})
        else:
            sock.messages.append(json.loads(payload.decode("utf-8")))
        sock._notify()

    def onClose(self, wasClean, code, reason):
        self.factory.socket._closed(code, reason)


class ReviewerSocket:
    """
    A WebSocket to the hub with any headers and subprotocols: a reviewer (by
    default), or a raw gateway.  C{messages} holds every frame received.
    """

    def __init__(self, url: str, headers: dict[str, str], protocols: list[str]):
        self.url = url
        self.messages: list[dict] = []
        self.protocol: _SocketProtocol | None = None
        self.selected: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = defer.Deferred()
        self._open = defer.Deferred()
        self._waiters: list[tuple[Callable[[dict], bool], defer.Deferred]] = []
        factory = WebSocketClientFactory(url, protocols=protocols, headers=headers, reactor=reactor)
        factory.protocol = _SocketProtocol
        factory.socket = self
        factory.setProtocolOptions(
            openHandshakeTimeout=5, closeHandshakeTimeout=1, maxMessagePayloadSize=0
        )
        self.factory = factory

    @classmethod
    @defer.inlineCallbacks
    def open(
        cls,
        testcase: TestCase,
        service,
        path: str = "/reviewer",
        token: str | None = BOB_TOKEN,
        headers: dict[str, str] | None = None,
        protocols: list[str] | None = None,
        expect_open: bool = True,
    ):
        host, port = service.local_address
        all_headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        all_headers.update(headers or {})
        if protocols is None:
            protocols = [REVIEWER_SUBPROTOCOL if path == "/reviewer" else SUBPROTOCOL]
        sock = cls(f"ws://{host}:{port}{path}", all_headers, protocols)
        yield TCP4ClientEndpoint(reactor, host, port, timeout=5).connect(sock.factory)
        testcase.addCleanup(sock.close)
        try:
            yield sock._open.addTimeout(5, reactor)
        except ConnectionError:
            if expect_open:
                raise
            return sock
        if not expect_open:
            raise AssertionError(f"the hub accepted {path} with {sorted(all_headers)}")
        return sock

    def _opened(self, protocol):
        self.protocol = protocol
        self._open.callback(self)

    def _closed(self, code, reason):
        self.protocol = None
        self.close_code, self.close_reason = code, reason
        if not self._open.called:
            self._open.errback(ConnectionError(str(reason)))
        if not self.closed.called:
            self.closed.callback(None)
        self._notify()

    def _notify(self):
        for waiter in list(self._waiters):
            predicate, d = waiter
            found = [m for m in self.messages if predicate(m)]
            if found:
                self._waiters.remove(waiter)
                d.callback(found[0])
            elif self.protocol is None:
                self._waiters.remove(waiter)
                d.errback(ConnectionError(f"closed: {self.close_code} {self.close_reason}"))

    def next(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> defer.Deferred:
        """The first message (received so far or later) matching C{predicate}."""
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((predicate, d))
        self._notify()
        if not d.called:
            d.addTimeout(timeout, reactor)
        return d

    def of_type(self, kind: str, **fields) -> defer.Deferred:
        return self.next(
            lambda m: m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())
        )

    def send_json(self, message) -> None:
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        self.protocol.sendMessage(payload, isBinary=binary)

    def decide(
        self, request_id: str, decision: str = "approve", reason: str = ""
    ) -> defer.Deferred:
        """Send C{decide}; fires with the hub's C{ack} for that id."""
        self.send_json({"type": "decide", "id": request_id, "decision": decision, "reason": reason})
        return self.of_type("ack", id=request_id)

    def close(self) -> defer.Deferred:
        if self.protocol is None:
            return defer.succeed(None)
        self.protocol.sendClose(code=1000)
        return self.closed


class _Collect(Protocol):
    def __init__(self, done: defer.Deferred):
        self.done, self.data = done, []

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.data))


def read_body(response) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collect(d))
    return d


def capture_log(testcase: TestCase) -> list[str]:
    """Every log event (formatted, with all its fields) while the test runs."""
    lines: list[str] = []

    def observer(event):
        lines.append(formatEvent(event) + " " + repr(event))

    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


# --- the sans-IO core -----------------------------------------------------------------


class FakeLink:
    def __init__(self, peer: str = "tcp:127.0.0.1:1"):
        self.peer = peer
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.connected = True

    def send(self, text: str) -> bool:
        if not self.connected:
            return False
        self.sent.append(json.loads(text))
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.sent if m.get("type") == kind]


def request_frame(request_id: str = "6f1c0e0a-5d5c-4d9e-9d7e-2b2f3c9e4a10", **fields) -> str:
    message = {
        "type": "request",
        "id": request_id,
        "session": "s-8c41",
        "user": "alice",
        "client": "127.0.0.1:53122",
        "target": "db1.internal:22",
        "kind": "shell",
        "command": "rm -rf /var/tmp/cache",
        "typed": "rm -rf /var/tmp/cache",
        "mismatch": False,
        "risk": {"score": 80, "reasons": ["recursive delete"]},
        "created": "2026-11-21T10:00:00.000Z",
        "expires": "2026-11-21T10:05:00.000Z",
    }
    message.update(fields)
    return json.dumps(message)


HELLO = json.dumps({"type": "hello", "role": "gateway", "gateway": "gw-1", "version": 1})
T0 = 1_795_255_200.0  # 2026-11-21T10:00:00Z


class HubCoreTests(SynchronousTestCase):
    def setUp(self):
        self.hub = Hub(history_limit=5)
        self.gateway = FakeLink("tcp:10.0.0.1:5000")
        self.hub.gateway_connected(self.gateway)
        self.hub.gateway_frame(self.gateway, HELLO, False, T0)
        self.reviewer = FakeLink()
        self.hub.reviewer_connected(self.reviewer, "bob")

    def test_snapshot_on_connect(self):
        [snapshot] = self.reviewer.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "bob")
        self.assertEqual(snapshot["pending"], [])
        self.assertEqual(snapshot["gateways"], [{"name": "gw-1", "peer": "tcp:10.0.0.1:5000"}])

    def test_request_decide(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        [event] = self.reviewer.of_type("request")
        request = event["request"]
        self.assertEqual(request["command"], "rm -rf /var/tmp/cache")
        self.assertEqual(request["gateway"], "gw-1")
        self.assertEqual(request["risk"], {"score": 80, "reasons": ["recursive delete"]})
        self.assertIsNone(self.hub.decide(request["id"], True, "ok", "bob", T0 + 1))
        [decision] = self.gateway.of_type("decision")
        self.assertEqual(
            decision,
            {
                "type": "decision",
                "id": request["id"],
                "decision": "approve",
                "reason": "ok",
                "reviewer": "bob",
            },
        )
        [resolved] = self.reviewer.of_type("resolved")
        self.assertEqual((resolved["outcome"], resolved["reviewer"]), ("approve", "bob"))
        # The first decision won; a second one changes nothing.
        error = self.hub.decide(request["id"], False, "no", "carol", T0 + 2)
        self.assertIn("approved, not pending", error)
        self.assertEqual(len(self.gateway.of_type("decision")), 1)
        self.assertEqual([h["outcome"] for h in self.hub.history()], ["approve"])

    def test_resend_is_idempotent(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0 + 1)
        self.assertEqual(len(self.hub.pending()), 1)
        self.assertEqual(len(self.reviewer.of_type("request")), 1)

    def test_resend_with_other_content_is_refused(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        self.hub.gateway_frame(self.gateway, request_frame(command="reboot"), False, T0)
        [pending] = self.hub.pending()
        self.assertEqual(pending["command"], "rm -rf /var/tmp/cache")
        self.assertEqual(self.hub.stats["id_conflict"], 1)

    def test_decision_kept_for_a_reconnecting_gateway(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        request_id = self.hub.pending()[0]["id"]
        self.hub.gateway_disconnected(self.gateway)
        self.assertIsNone(self.hub.decide(request_id, False, "not now", "bob", T0 + 1))
        self.assertEqual(self.gateway.of_type("decision"), [])
        again = FakeLink()
        self.hub.gateway_connected(again)
        self.hub.gateway_frame(again, HELLO, False, T0 + 2)
        self.hub.gateway_frame(again, request_frame(), False, T0 + 2)
        [decision] = again.of_type("decision")
        self.assertEqual((decision["decision"], decision["reason"]), ("deny", "not now"))
        # ...but only for the same content.
        other = FakeLink()
        self.hub.gateway_connected(other)
        self.hub.gateway_frame(other, HELLO, False, T0 + 3)
        self.hub.gateway_frame(other, request_frame(command="id"), False, T0 + 3)
        self.assertEqual(other.of_type("decision"), [])

    def test_cancel(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        request_id = self.hub.pending()[0]["id"]
        cancel = {"type": "cancel", "id": request_id, "reason": "session closed"}
        stranger = FakeLink()
        self.hub.gateway_connected(stranger)
        self.hub.gateway_frame(stranger, HELLO.replace("gw-1", "gw-2"), False, T0)
        self.hub.gateway_frame(stranger, json.dumps(cancel), False, T0)
        self.assertEqual(len(self.hub.pending()), 1, "another gateway cannot cancel it")
        self.hub.gateway_frame(self.gateway, json.dumps(cancel), False, T0 + 1)
        self.assertEqual(self.hub.pending(), [])
        [resolved] = self.reviewer.of_type("resolved")
        self.assertEqual((resolved["outcome"], resolved["reason"]), ("cancelled", "session closed"))
        self.assertIn("cancelled", self.hub.decide(request_id, True, "", "bob", T0 + 2))
        self.assertEqual(self.gateway.of_type("decision"), [])
        # A cancelled id does not come back.
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0 + 3)
        self.assertEqual(self.hub.pending(), [])

    def test_expiry(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        self.assertEqual(self.hub.expire(T0 + 300), [])
        [request_id] = self.hub.expire(T0 + 300 + 31)
        self.assertEqual(self.hub.status(request_id), "expired")
        self.assertEqual(self.reviewer.of_type("resolved")[0]["outcome"], "expired")
        self.assertEqual(self.gateway.of_type("decision"), [])

    def test_hello_required_first(self):
        link = FakeLink()
        self.hub.gateway_connected(link)
        self.hub.gateway_frame(link, request_frame(), False, T0)
        self.assertEqual(link.closed, (CLOSE_POLICY, "hello required first"))
        self.assertEqual(self.hub.pending(), [])

    def test_bad_hello(self):
        for hello in (
            {"type": "hello", "role": "gateway", "version": 2},
            {"type": "hello", "role": "reviewer", "version": 1},
            {"type": "hello", "role": "gateway", "version": True},
        ):
            link = FakeLink()
            self.hub.gateway_connected(link)
            self.hub.gateway_frame(link, json.dumps(hello), False, T0)
            self.assertEqual(link.closed[0], CLOSE_POLICY, hello)

    def test_gateway_decisions_are_ignored(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        request_id = self.hub.pending()[0]["id"]
        decision = {"type": "decision", "id": request_id, "decision": "approve", "reviewer": "x"}
        self.hub.gateway_frame(self.gateway, json.dumps(decision), False, T0)
        self.assertEqual(self.hub.status(request_id), "pending")
        self.assertEqual(self.hub.stats["gateway_decision"], 1)

    def test_junk_from_gateway_is_ignored(self):
        for payload, binary in (
            (b"\xff\xfe", False),
            (b"not json", False),
            (b"[1, 2]", False),
            (b'{"type": "request"}', False),
            (b'{"type": "launch"}', False),
            (request_frame().encode(), True),
            (b'{"type": "request", "id": "x", "id": "y"}', False),
        ):
            self.hub.gateway_frame(self.gateway, payload, binary, T0)
        self.assertEqual(self.hub.pending(), [])
        self.assertIsNone(self.gateway.closed)
        self.assertEqual(self.gateway.of_type("decision"), [])

    def test_malformed_request_is_denied(self):
        for n, bad in enumerate(
            (
                {"risk": {"score": 101}},
                {"risk": {"score": True}},
                {"command": 5},
                {"screen": "not a list"},
                {"kind": "SHELL; rm"},
                {"mismatch": "yes"},
            )
        ):
            request_id = f"bad-{n}"
            self.hub.gateway_frame(self.gateway, request_frame(request_id, **bad), False, T0)
            decision = self.gateway.of_type("decision")[-1]
            self.assertEqual((decision["id"], decision["decision"]), (request_id, "deny"), bad)
            self.assertEqual(decision["reviewer"], HUB_REVIEWER)
            self.assertIn("malformed request", decision["reason"])
        self.assertEqual(self.hub.pending(), [])

    def test_oversized_request_is_denied(self):
        frame = request_frame("big-1", command="x" * MAX_REQUEST_BYTES)
        self.hub.gateway_frame(self.gateway, frame.encode(), False, T0)
        [decision] = self.gateway.of_type("decision")
        self.assertEqual((decision["id"], decision["decision"]), ("big-1", "deny"))
        self.assertIn("too large", decision["reason"])
        # The same frame re-sent after a reconnect gets the same answer.
        self.hub.gateway_frame(self.gateway, frame.encode(), False, T0)
        self.assertEqual(len(self.gateway.of_type("decision")), 2)

    def test_mismatch_and_screen(self):
        frame = request_frame(
            command="ls", typed="rm -rf /", mismatch=False, screen=["$ echo hi", "hi", "$ ls"]
        )
        self.hub.gateway_frame(self.gateway, frame, False, T0)
        [request] = self.hub.pending()
        self.assertTrue(request["mismatch"], "typed != command is always shown as a mismatch")
        self.assertEqual(request["screen"], ["$ echo hi", "hi", "$ ls"])

    def test_reviewer_frames(self):
        self.hub.gateway_frame(self.gateway, request_frame(), False, T0)
        request_id = self.hub.pending()[0]["id"]
        for payload, binary in (
            (request_frame("r-2").encode(), False),
            (json.dumps({"type": "cancel", "id": request_id}).encode(), False),
            (json.dumps({"type": "decision", "id": request_id, "decision": "approve"}), False),
            (json.dumps({"type": "decide", "id": request_id, "decision": "yes"}), False),
            (json.dumps({"type": "decide", "id": request_id, "decision": "approve"}), True),
            (
                json.dumps(
                    {"type": "decide", "id": request_id, "decision": "approve", "reason": 1}
                ),
                False,
            ),
            (
                json.dumps(
                    {
                        "type": "decide",
                        "id": request_id,
                        "decision": "approve",
                        "reason": "a\x1b[2Kb",
                    }
                ),
                False,
            ),
            (b"junk", False),
        ):
            self.hub.reviewer_frame(self.reviewer, payload, binary, T0)
        self.assertEqual(self.hub.status(request_id), "pending")
        self.assertEqual(len(self.hub.pending()), 1)
        errors = self.reviewer.of_type("error") + [
            m for m in self.reviewer.of_type("ack") if not m["ok"]
        ]
        self.assertEqual(len(errors), 8)
        self.reviewer.sent.clear()
        self.hub.reviewer_frame(
            self.reviewer,
            json.dumps({"type": "decide", "id": request_id, "decision": "deny", "reason": "no"}),
            False,
            T0,
        )
        self.assertEqual(
            self.reviewer.of_type("ack"), [{"type": "ack", "id": request_id, "ok": True}]
        )

    def test_history_is_bounded(self):
        for n in range(8):
            self.hub.gateway_frame(self.gateway, request_frame(f"id-{n}"), False, T0)
            self.hub.decide(f"id-{n}", True, "", "bob", T0)
        self.assertEqual([h["id"] for h in self.hub.history()], [f"id-{n}" for n in range(3, 8)])

    def test_full_hub_denies(self):
        hub = Hub(max_pending=2)
        gateway = FakeLink()
        hub.gateway_connected(gateway)
        hub.gateway_frame(gateway, HELLO, False, T0)
        for n in range(3):
            hub.gateway_frame(gateway, request_frame(f"id-{n}"), False, T0)
        self.assertEqual(len(hub.pending()), 2)
        [decision] = gateway.of_type("decision")
        self.assertEqual((decision["id"], decision["decision"]), ("id-2", "deny"))


# --- a real hub, the real gateway client ---------------------------------------------


class HubEndToEndTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_request_review_decide(self):
        service = start_hub(self)
        client = start_gateway(self, service)
        yield client.when_open()
        reviewer = yield ReviewerSocket.open(self, service)
        snapshot = yield reviewer.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "bob")
        request = make_request(risk=Risk(80, ("recursive delete",)))
        d = client.request_decision(request)
        event = yield reviewer.of_type("request")
        self.assertEqual(event["request"]["id"], request.id)
        self.assertEqual(event["request"]["command"], request.command)
        self.assertEqual(event["request"]["gateway"], "gw-1")
        self.assertEqual(event["request"]["risk"], {"score": 80, "reasons": ["recursive delete"]})
        ack = yield reviewer.decide(request.id, "approve", "looks fine")
        self.assertTrue(ack["ok"])
        decision = yield d
        self.assertTrue(decision.approved)
        self.assertEqual((decision.reason, decision.reviewer), ("looks fine", "bob"))
        resolved = yield reviewer.of_type("resolved", id=request.id)
        self.assertEqual(resolved["outcome"], "approve")
        d = client.request_decision(make_request("reboot"))
        event = yield reviewer.next(
            lambda m: m.get("type") == "request" and m["request"]["command"] == "reboot"
        )
        yield reviewer.decide(event["request"]["id"], "deny", "not today")
        decision = yield d
        self.assertFalse(decision.approved)
        self.assertEqual(decision.reason, "not today")

    @defer.inlineCallbacks
    def test_two_gateways(self):
        service = start_hub(self)
        one = start_gateway(self, service, "gw-1")
        two = start_gateway(self, service, "gw-2")
        yield defer.gatherResults([one.when_open(), two.when_open()])
        reviewer = yield ReviewerSocket.open(self, service)
        r1, r2 = make_request("echo one"), make_request("echo two")
        d1, d2 = one.request_decision(r1), two.request_decision(r2)
        yield wait_until(lambda: len(service.hub.pending()) == 2, "both requests")
        gateways = {p["id"]: p["gateway"] for p in service.hub.pending()}
        self.assertEqual(gateways, {r1.id: "gw-1", r2.id: "gw-2"})
        yield reviewer.decide(r2.id, "deny", "two no")
        yield reviewer.decide(r1.id, "approve", "one yes")
        decision1, decision2 = yield defer.gatherResults([d1, d2])
        self.assertEqual((decision1.approved, decision1.reason), (True, "one yes"))
        self.assertEqual((decision2.approved, decision2.reason), (False, "two no"))

    @defer.inlineCallbacks
    def test_reviewer_reconnects_and_sees_pending(self):
        service = start_hub(self)
        client = start_gateway(self, service)
        yield client.when_open()
        reviewer = yield ReviewerSocket.open(self, service)
        yield reviewer.of_type("snapshot")
        request = make_request()
        d = client.request_decision(request)
        yield reviewer.of_type("request")
        yield reviewer.close()
        again = yield ReviewerSocket.open(self, service, token=CAROL_TOKEN)
        snapshot = yield again.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "carol")
        self.assertEqual([p["id"] for p in snapshot["pending"]], [request.id])
        yield again.decide(request.id, "approve")
        decision = yield d
        self.assertEqual((decision.approved, decision.reviewer), (True, "carol"))

    @defer.inlineCallbacks
    def test_cancel_from_gateway(self):
        service = start_hub(self)
        client = start_gateway(self, service)
        yield client.when_open()
        reviewer = yield ReviewerSocket.open(self, service)
        request = make_request()
        d = client.request_decision(request)
        yield reviewer.of_type("request")
        client.cancel(request.id, "operator pressed Ctrl-C")
        decision = yield d
        self.assertFalse(decision.approved)
        resolved = yield reviewer.of_type("resolved", id=request.id)
        self.assertEqual(
            (resolved["outcome"], resolved["reason"]), ("cancelled", "operator pressed Ctrl-C")
        )
        self.assertEqual(service.hub.pending(), [])
        ack = yield reviewer.decide(request.id, "approve")
        self.assertFalse(ack["ok"])
        self.assertIn("cancelled", ack["error"])

    @defer.inlineCallbacks
    def test_first_decision_wins(self):
        service = start_hub(self)
        client = start_gateway(self, service)
        yield client.when_open()
        bob = yield ReviewerSocket.open(self, service, token=BOB_TOKEN)
        carol = yield ReviewerSocket.open(self, service, token=CAROL_TOKEN)
        request = make_request()
        d = client.request_decision(request)
        yield defer.gatherResults([bob.of_type("request"), carol.of_type("request")])
        # Both send at once; the hub handles one first.
        bob.send_json({"type": "decide", "id": request.id, "decision": "deny", "reason": "b"})
        carol.send_json({"type": "decide", "id": request.id, "decision": "approve", "reason": "c"})
        ack_bob, ack_carol = yield defer.gatherResults(
            [bob.of_type("ack", id=request.id), carol.of_type("ack", id=request.id)]
        )
        self.assertEqual(sorted([ack_bob["ok"], ack_carol["ok"]]), [False, True])
        winner = "bob" if ack_bob["ok"] else "carol"
        decision = yield d
        self.assertEqual(decision.reviewer, winner)
        self.assertEqual(decision.approved, winner == "carol")
        [entry] = service.hub.history()
        self.assertEqual(entry["reviewer"], winner)

    @defer.inlineCallbacks
    def test_gateway_reconnects_and_gets_a_decision_made_meanwhile(self):
        service = start_hub(self)
        client = start_gateway(self, service, retry=0.5)
        yield client.when_open()
        reviewer = yield ReviewerSocket.open(self, service)
        request = make_request()
        d = client.request_decision(request)
        yield reviewer.of_type("request")
        # Drop the gateway's connection from the hub's side; decide while it is away.
        [link] = [link for link in service.hub._gateways]
        link.transport.abortConnection()
        yield wait_until(lambda: not client.connected, "the gateway to notice")
        ack = yield reviewer.decide(request.id, "approve", "while you were out")
        self.assertTrue(ack["ok"])
        self.assertFalse(d.called)
        decision = yield d.addTimeout(10, reactor)
        self.assertEqual((decision.approved, decision.reason), (True, "while you were out"))
        self.assertEqual(len(service.hub.history()), 1)


# --- refusals ---------------------------------------------------------------------------


class HubRefusalTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.log = capture_log(self)
        self.service = start_hub(self)
        self.client = start_gateway(self, self.service)
        yield self.client.when_open()
        self.request = make_request()
        self.decision = self.client.request_decision(self.request)
        yield wait_until(lambda: self.service.hub.pending(), "the request at the hub")

    def assertNothingApproved(self):
        self.assertFalse(self.decision.called, "the request was resolved")
        self.assertEqual(self.service.hub.status(self.request.id), "pending")
        self.assertEqual(self.client.pending_ids(), [self.request.id])

    def assertNoSecretsLogged(self):
        text = "\n".join(self.log)
        for secret in (GATEWAY_TOKEN, BOB_TOKEN, CAROL_TOKEN, "wrong-token-xyz"):
            self.assertNotIn(secret, text)

    @defer.inlineCallbacks
    def raw_gateway(self, **kw):
        sock = yield ReviewerSocket.open(
            self, self.service, path="/gateway", token=GATEWAY_TOKEN, **kw
        )
        return sock

    @defer.inlineCallbacks
    def round_trip(self, sock):
        """Frames are handled in order: after a pong, the hub has handled what came before."""
        before = len([m for m in sock.messages if m.get("type") == "pong"])
        sock.send_json({"type": "ping"})
        yield sock.next(
            lambda m: (
                m.get("type") == "pong"
                and len([x for x in sock.messages if x.get("type") == "pong"]) > before
            )
        )

    @defer.inlineCallbacks
    def test_gateway_without_or_with_wrong_token(self):
        for token in (None, "wrong-token-xyz", ""):
            sock = yield ReviewerSocket.open(
                self, self.service, path="/gateway", token=token, expect_open=False
            )
            self.assertIn("401", sock.close_reason)
        sock = yield ReviewerSocket.open(
            self,
            self.service,
            path="/gateway",
            token=None,
            headers={"Authorization": "Basic " + GATEWAY_TOKEN},
            expect_open=False,
        )
        self.assertIn("401", sock.close_reason)
        self.assertGreaterEqual(self.service.hub.stats["gateway_unauthorized"], 4)
        self.assertNothingApproved()
        self.assertNoSecretsLogged()

    @defer.inlineCallbacks
    def test_debug_logging_never_shows_credentials(self):
        previous = txaio.get_global_log_level()
        txaio.set_global_log_level("debug")
        self.addCleanup(txaio.set_global_log_level, previous)
        cookie, _session = self.service.sessions.create("carol")
        host, port = self.service.local_address
        gateway = yield self.raw_gateway()
        gateway.send_raw(HELLO.encode())
        yield self.round_trip(gateway)
        reviewer = yield ReviewerSocket.open(self, self.service)
        yield reviewer.of_type("snapshot")
        browser = yield ReviewerSocket.open(
            self,
            self.service,
            token=None,
            headers={"Cookie": f"wraith_session={cookie}", "Origin": f"http://{host}:{port}"},
        )
        yield browser.of_type("snapshot")
        yield ReviewerSocket.open(self, self.service, token="wrong-token-xyz", expect_open=False)
        text = "\n".join(self.log)
        self.assertNoSecretsLogged()
        self.assertNotIn(cookie, text)

    @defer.inlineCallbacks
    def test_gateway_without_subprotocol(self):
        sock = yield ReviewerSocket.open(
            self,
            self.service,
            path="/gateway",
            token=GATEWAY_TOKEN,
            protocols=[],
            expect_open=False,
        )
        self.assertIn("400", sock.close_reason)

    @defer.inlineCallbacks
    def test_gateway_sending_decisions(self):
        sock = yield self.raw_gateway()
        self.assertEqual(sock.selected, SUBPROTOCOL)
        sock.send_raw(b'{"type": "hello", "role": "gateway", "gateway": "evil", "version": 1}')
        for verdict in ("approve", "deny"):
            sock.send_json(
                {"type": "decision", "id": self.request.id, "decision": verdict, "reviewer": "me"}
            )
        yield self.round_trip(sock)
        self.assertEqual(self.service.hub.stats["gateway_decision"], 2)
        self.assertNothingApproved()

    @defer.inlineCallbacks
    def test_gateway_junk_and_binary(self):
        sock = yield self.raw_gateway()
        sock.send_raw(b'{"type": "hello", "role": "gateway", "gateway": "junk", "version": 1}')
        for junk in (b"junk", b"[]", b"{}", b'{"type": "approve", "id": "x"}', b"\xff"):
            try:
                sock.send_raw(junk)
            except Exception:
                pass
        sock.send_raw(json.dumps({"type": "decision", "id": self.request.id}).encode(), binary=True)
        sock.send_raw(b'{"type": "cancel", "id": "' + self.request.id.encode() + b'"}', binary=True)
        yield self.round_trip(sock)
        self.assertNothingApproved()

    @defer.inlineCallbacks
    def test_gateway_hello_required(self):
        sock = yield self.raw_gateway()
        sock.send_raw(request_frame("before-hello").encode())
        yield sock.closed.addTimeout(5, reactor)
        self.assertEqual(sock.close_code, CLOSE_POLICY)
        self.assertNotIn("before-hello", [p["id"] for p in self.service.hub.pending()])

    @defer.inlineCallbacks
    def test_huge_frames(self):
        sock = yield self.raw_gateway()
        sock.send_raw(HELLO.encode())
        # Over the soft limit: the hub denies that request at once.
        sock.send_raw(request_frame("big-1", command="y" * (MAX_REQUEST_BYTES + 10)).encode())
        decision = yield sock.of_type("decision", id="big-1")
        self.assertEqual(decision["decision"], "deny")
        # Over the hard limit: the connection is failed.
        sock.send_raw(request_frame("huge-1", command="z" * (2 << 20)).encode())
        yield sock.closed.addTimeout(5, reactor)
        self.assertNotIn("huge-1", [p["id"] for p in self.service.hub.pending()])
        # A reviewer frame over its limit too.
        reviewer = yield ReviewerSocket.open(self, self.service)
        yield reviewer.of_type("snapshot")
        reviewer.send_json(
            {"type": "decide", "id": self.request.id, "decision": "approve", "reason": "r" * 40000}
        )
        yield reviewer.closed.addTimeout(5, reactor)
        self.assertNothingApproved()

    @defer.inlineCallbacks
    def test_unauthenticated_reviewer(self):
        for token in (None, "wrong-token-xyz", GATEWAY_TOKEN):
            sock = yield ReviewerSocket.open(self, self.service, token=token, expect_open=False)
            self.assertIn("401", sock.close_reason)
        self.assertEqual(self.service.hub.reviewer_count, 0)
        self.assertNothingApproved()
        self.assertNoSecretsLogged()

    @defer.inlineCallbacks
    def test_reviewer_sending_requests(self):
        reviewer = yield ReviewerSocket.open(self, self.service)
        yield reviewer.of_type("snapshot")
        reviewer.send_raw(request_frame("from-a-reviewer").encode())
        reviewer.send_json({"type": "cancel", "id": self.request.id, "reason": "x"})
        reviewer.send_json({"type": "decision", "id": self.request.id, "decision": "approve"})
        reviewer.send_json({"type": "decide", "id": self.request.id, "decision": "APPROVE"})
        reviewer.send_raw(b"junk")
        reviewer.send_raw(b"\x00\x01", binary=True)
        yield reviewer.next(
            lambda m: len([x for x in reviewer.messages if x.get("type") in ("error", "ack")]) >= 6
        )
        errors = [m for m in reviewer.messages if m.get("type") in ("error", "ack")]
        self.assertTrue(all(not m.get("ok", False) for m in errors), errors)
        self.assertIn("reviewers cannot send request frames", errors[0]["error"])
        self.assertEqual([p["id"] for p in self.service.hub.pending()], [self.request.id])
        self.assertNothingApproved()

    @defer.inlineCallbacks
    def test_cookie_needs_own_origin(self):
        cookie, _session = self.service.sessions.create("carol")
        host, port = self.service.local_address
        for origin in (None, "http://evil.example", f"http://{host}:{port + 1}", "null"):
            headers = {"Cookie": f"wraith_session={cookie}"}
            if origin is not None:
                headers["Origin"] = origin
            sock = yield ReviewerSocket.open(
                self, self.service, token=None, headers=headers, expect_open=False
            )
            # autobahn itself refuses the "null" origin (400); the hub the others.
            self.assertIn("400" if origin == "null" else "403", sock.close_reason, origin)
        self.assertEqual(self.service.hub.stats["reviewer_bad_origin"], 3)
        sock = yield ReviewerSocket.open(
            self,
            self.service,
            token=None,
            headers={"Cookie": "wraith_session=forged", "Origin": f"http://{host}:{port}"},
            expect_open=False,
        )
        self.assertIn("401", sock.close_reason)
        self.assertNothingApproved()
        # The right origin with a real session works.
        sock = yield ReviewerSocket.open(
            self,
            self.service,
            token=None,
            headers={"Cookie": f"wraith_session={cookie}", "Origin": f"http://{host}:{port}"},
        )
        snapshot = yield sock.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "carol")

    @defer.inlineCallbacks
    def test_logout_closes_reviewer_sockets(self):
        cookie, session = self.service.sessions.create("carol")
        host, port = self.service.local_address
        sock = yield ReviewerSocket.open(
            self,
            self.service,
            token=None,
            headers={"Cookie": f"wraith_session={cookie}", "Origin": f"http://{host}:{port}"},
        )
        yield sock.of_type("snapshot")
        self.service.sessions.end(session.key)
        yield sock.closed.addTimeout(5, reactor)
        self.assertEqual(sock.close_code, 4001)


# --- the console over plain HTTP ----------------------------------------------------------


class ConsoleHttpTests(TestCase):
    timeout = 60

    def setUp(self):
        self.log = capture_log(self)
        self.service = start_hub(self)
        host, port = self.service.local_address
        self.base = f"http://{host}:{port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(self.pool.closeCachedConnections)

    @defer.inlineCallbacks
    def get(self, path, headers=None, method=b"GET", body=None):
        producer = None if body is None else FileBodyProducer(io.BytesIO(body))
        response = yield self.agent.request(
            method, (self.base + path).encode(), Headers(headers or {}), producer
        )
        content = yield read_body(response)
        return response, content

    @defer.inlineCallbacks
    def test_security_headers_and_login_redirect(self):
        response, _ = yield self.get("/")
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/login"])
        response, body = yield self.get("/login")
        self.assertEqual(response.code, 200)
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'self'", csp)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertEqual(response.headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        self.assertIn(b'name="csrf"', body)
        self.assertNotIn(b"<script>", body)

    @defer.inlineCallbacks
    def test_token_link_sets_a_strict_cookie(self):
        response, body = yield self.get(f"/login?token={BOB_TOKEN}")
        self.assertEqual(response.code, 200)
        cookies = response.headers.getRawHeaders(b"set-cookie")
        [session] = [c for c in cookies if c.startswith(b"wraith_session=")]
        self.assertIn(b"HttpOnly", session)
        self.assertIn(b"SameSite=Strict", session)
        self.assertNotIn(b"Secure", session)  # plain http here
        value = SimpleCookie(session.decode())["wraith_session"].value
        response, body = yield self.get("/", {b"Cookie": [f"wraith_session={value}".encode()]})
        self.assertEqual(response.code, 200)
        self.assertIn(b"bob", body)
        csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1)
        # Logout needs the CSRF token and a same-origin form.
        cookie_header = {b"Cookie": [f"wraith_session={value}".encode()]}
        form = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        response, _ = yield self.get(
            "/logout", {**cookie_header, **form}, method=b"POST", body=b"csrf=wrong"
        )
        self.assertEqual(response.code, 403)
        response, _ = yield self.get(
            "/logout",
            {**cookie_header, **form, b"Origin": [b"http://evil.example"]},
            method=b"POST",
            body=b"csrf=" + csrf,
        )
        self.assertEqual(response.code, 403)
        response, _ = yield self.get("/session", cookie_header)
        self.assertEqual(response.code, 200)
        response, _ = yield self.get(
            "/logout", {**cookie_header, **form}, method=b"POST", body=b"csrf=" + csrf
        )
        self.assertEqual(response.code, 303)
        response, _ = yield self.get("/session", cookie_header)
        self.assertEqual(response.code, 401)
        log = "\n".join(self.log)
        self.assertIn('"GET /login" 200', log, "no access log line for the login link")
        self.assertNotIn(BOB_TOKEN, log, "the token link reached a log")

    @defer.inlineCallbacks
    def test_bad_token_link(self):
        response, body = yield self.get("/login?token=wrong-token-xyz")
        self.assertEqual(response.code, 403)
        self.assertIn(b"not valid", body)
        cookies = response.headers.getRawHeaders(b"set-cookie") or []
        self.assertFalse([c for c in cookies if c.startswith(b"wraith_session=")])

    @defer.inlineCallbacks
    def test_password_login_needs_csrf(self):
        form = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        body = f"name=carol&password={CAROL_PASSWORD}&csrf=abc".encode()
        response, _ = yield self.get("/login", form, method=b"POST", body=body)
        self.assertEqual(response.code, 403)
        response, _ = yield self.get(
            "/login", {**form, b"Cookie": [b"wraith_csrf=abc"]}, method=b"POST", body=body
        )
        self.assertEqual(response.code, 200)
        self.assertTrue(
            [
                c
                for c in response.headers.getRawHeaders(b"set-cookie")
                if c.startswith(b"wraith_session=") and len(c) > 40
            ]
        )
        self.assertNotIn(CAROL_PASSWORD, "\n".join(self.log))

    @defer.inlineCallbacks
    def test_static_files(self):
        response, body = yield self.get("/static/console.js")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/javascript", response.headers.getRawHeaders(b"content-type")[0])
        self.assertNotIn(b".innerHTML", body)
        response, _ = yield self.get("/static/index.html")
        self.assertEqual(response.code, 404)
        response, _ = yield self.get("/static/../hub.py")
        self.assertEqual(response.code, 404)


# --- embedding and twistd ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddingTests(TestCase):
    def test_fixed_port_url(self):
        port = free_port()
        service, hub, url = make_hub_service(
            reactor, f"tcp:{port}:interface=0.0.0.0", reviewers_for_tests(), GATEWAY_TOKEN
        )
        self.assertEqual(url, f"ws://127.0.0.1:{port}/gateway")
        self.assertIs(service.hub, hub)
        self.assertIsNone(service.port)  # binds when started

    def test_refuses_empty_token(self):
        self.assertRaises(ValueError, make_hub_service, reactor, "tcp:0", reviewers_for_tests(), "")

    @defer.inlineCallbacks
    def test_admin_link_is_announced_once(self):
        announced: list[str] = []
        service, _hub, _url = make_hub_service(
            reactor, "tcp:0:interface=127.0.0.1", None, GATEWAY_TOKEN, announce=announced.append
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_until(lambda: announced, "the login link")
        [text] = announced
        host, port = service.local_address
        token = re.search(rf"http://{host}:{port}/login\?token=(\S+)", text).group(1)
        self.assertEqual(service.reviewers.authenticate_token(token), "admin")
        sock = yield ReviewerSocket.open(self, service, token=token)
        snapshot = yield sock.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "admin")


class AnnounceTests(TestCase):
    """Where the admin's login link goes when nobody set up --reviewers."""

    def in_temporary_directory(self) -> str:
        path = tempfile.mkdtemp(prefix="wraith-announce-test-")
        self.addCleanup(shutil.rmtree, path, True)
        here = os.getcwd()
        os.chdir(path)
        self.addCleanup(os.chdir, here)
        return path

    def test_a_real_stdout_gets_the_link(self):
        base = self.in_temporary_directory()
        with open(os.path.join(base, "out"), "w+") as out:
            self.patch(sys, "__stdout__", out)
            where = hub_module._announce_to_stdout("the link")
            out.seek(0)
            self.assertEqual(out.read(), "the link\n")
        self.assertEqual(where, "printed once to stdout")
        self.assertFalse(os.path.exists(os.path.join(base, hub_module.LOGIN_LINK_FILE)))

    def test_a_stdout_on_dev_null_sends_the_link_to_a_private_file(self):
        base = self.in_temporary_directory()
        path = os.path.join(base, hub_module.LOGIN_LINK_FILE)
        with open(path, "w") as old:  # left by an earlier run, readable by all
            old.write("an older, longer link that must not survive\n")
        os.chmod(path, 0o644)
        with open(os.devnull, "w") as devnull:
            self.patch(sys, "__stdout__", devnull)
            where = hub_module._announce_to_stdout("the link")
        self.assertIn(path, where)
        with open(path) as f:
            self.assertEqual(f.read(), "the link\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_no_stdout_at_all(self):
        base = self.in_temporary_directory()
        self.patch(sys, "__stdout__", None)
        hub_module._announce_to_stdout("the link")
        with open(os.path.join(base, hub_module.LOGIN_LINK_FILE)) as f:
            self.assertEqual(f.read(), "the link\n")

    @defer.inlineCallbacks
    def test_a_link_that_cannot_be_shown_is_an_error_in_the_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def unwritable(text):
            raise PermissionError(13, "Permission denied", "/run/wraith/x")

        service, _hub, _url = make_hub_service(
            reactor, "tcp:0:interface=127.0.0.1", None, GATEWAY_TOKEN, announce=unwritable
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_until(
            lambda: any(e.get("log_level") == LogLevel.error for e in events), "the error line"
        )
        [error] = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertIn("nobody can log in", error["log_format"])
        self.assertEqual(error["error"], "/run/wraith/x: Permission denied")
        self.assertIsNotNone(service.port)  # the hub still serves gateways


class TwistdHubTests(TestCase):
    """A real C{twistd -n wraith-hub} process."""

    timeout = 90

    def temporary_directory(self) -> str:
        # Not self.mktemp(): under pytest that lands in the working tree.
        path = tempfile.mkdtemp(prefix="wraith-hub-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def run_twistd(self, *args, **kw):
        return subprocess.run(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "wraith-hub", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

    def test_help(self):
        result = self.run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in ("--hub-listen", "--gateway-token", "--gateway-token-file", "--reviewers"):
            self.assertIn(flag + "=", result.stdout)

    def test_usage_errors(self):
        result = self.run_twistd()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--gateway-token", result.stdout + result.stderr)
        base = self.temporary_directory()
        bad = os.path.join(base, "reviewers.toml")
        with open(bad, "w") as f:
            f.write('[[reviewer]]\nname = "x"\npasword_bcrypt = "typo"\n')
        result = self.run_twistd(f"--gateway-token={GATEWAY_TOKEN}", f"--reviewers={bad}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown key 'pasword_bcrypt'", result.stdout + result.stderr)
        result = self.run_twistd("--gateway-token-file=/nonexistent/token")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("/nonexistent/token", result.stdout + result.stderr)

    @defer.inlineCallbacks
    def test_daemon_writes_the_login_link_to_a_private_file(self):
        # A daemonized twistd points stdout at /dev/null: the link goes to a
        # 0600 file in its --rundir, and the log says where (not the token).
        base = self.temporary_directory()
        logfile, pidfile = os.path.join(base, "hub.log"), os.path.join(base, "hub.pid")
        port = free_port()
        started = subprocess.run(
            [
                sys.executable,
                "-c",
                TWISTD,
                f"--pidfile={pidfile}",
                f"--logfile={logfile}",
                f"--rundir={base}",
                "wraith-hub",
                f"--hub-listen=tcp:{port}:interface=127.0.0.1",
                f"--gateway-token={GATEWAY_TOKEN}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        self.assertEqual(started.returncode, 0, started.stdout + started.stderr)
        self.assertNotIn("login?token=", started.stdout + started.stderr)

        def daemon_pid():
            try:
                with open(pidfile) as f:
                    return int(f.read().strip() or 0) or None
            except (OSError, ValueError):
                return None

        def stop():
            pid = daemon_pid()
            if pid is None:
                return
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):  # up to 10 s for a clean exit
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        self.addCleanup(stop)
        link_file = os.path.join(base, hub_module.LOGIN_LINK_FILE)
        yield wait_until(lambda: os.path.exists(link_file), "the login link file", timeout=30)
        yield wait_until(lambda: os.path.getsize(link_file) > 0, "the link written", timeout=10)
        self.assertEqual(os.stat(link_file).st_mode & 0o777, 0o600)
        with open(link_file) as f:
            match = re.search(rf"http://127\.0\.0\.1:{port}/login\?token=(\S+)", f.read())
        self.assertIsNotNone(match)

        class Remote:
            local_address = ("127.0.0.1", port)

        reviewer = yield ReviewerSocket.open(self, Remote, token=match.group(1))
        snapshot = yield reviewer.of_type("snapshot")
        self.assertEqual(snapshot["reviewer"], "admin")
        yield reviewer.close()
        with open(logfile) as f:
            log = f.read()
        self.assertIn(f"written to {link_file} (mode 0600), because stdout is closed", log)
        self.assertNotIn(match.group(1), log)
        self.assertNotIn(GATEWAY_TOKEN, log)

    @defer.inlineCallbacks
    def test_standalone_hub(self):
        base = self.temporary_directory()
        token_file = os.path.join(base, "gateway_token")
        with open(token_file, "w") as f:
            f.write(GATEWAY_TOKEN + "\n")
        logfile = os.path.join(base, "hub.log")
        out_path = os.path.join(base, "stdout")
        port = free_port()
        with open(out_path, "wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    f"--logfile={logfile}",
                    "wraith-hub",
                    f"--hub-listen=tcp:{port}:interface=127.0.0.1",
                    f"--gateway-token-file={token_file}",
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def stop():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        self.addCleanup(stop)

        def link():
            with open(out_path) as f:
                return re.search(r"/login\?token=(\S+)", f.read())

        for _ in range(300):  # up to 30 s: a loaded machine is slow to start twistd
            if process.poll() is not None or link():
                break
            yield sleep(0.1)
        with open(out_path) as f:
            output = f.read()
        match = link()
        self.assertIsNotNone(match, output)
        admin_token = match.group(1)
        self.assertEqual(output.count("login?token="), 1)

        class Remote:
            gateway_url = f"ws://127.0.0.1:{port}/gateway"
            local_address = ("127.0.0.1", port)

        client = start_gateway(self, Remote)
        yield client.when_open()
        reviewer = yield ReviewerSocket.open(self, Remote, token=admin_token)
        request = make_request("uptime")
        d = client.request_decision(request)
        yield reviewer.of_type("request")
        yield reviewer.decide(request.id, "approve", "via twistd")
        decision = yield d
        self.assertEqual((decision.approved, decision.reviewer), (True, "admin"))
        yield reviewer.close()
        yield client.stopService()
        stop()
        with open(logfile) as f:
            log = f.read()
        self.assertIn("reviewer admin connected", log)
        self.assertNotIn(admin_token, log)
        self.assertNotIn(GATEWAY_TOKEN, log)
