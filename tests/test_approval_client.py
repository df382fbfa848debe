"""
L{ApprovalClient} against a real autobahn WebSocket server on 127.0.0.1.

The server here is written from PROTOCOL.md alone (as outside tests will
write theirs): it checks the bearer token in C{onConnect}, selects the
subprotocol, records every frame, and lets each test send whatever it
likes -- valid decisions, junk, pings -- or drop the connection.

Synchronising without sleeps: frames on one connection are handled in
order, so after sending junk a test sends C{ping} and waits for the
C{pong}; when it arrives, the client has handled everything before it.
Every wait is bounded by L{wait_until}'s timeout.

Pure timing (expiry, the timeout cap) runs on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import datetime
import json

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, ssl
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.polling import wait_until
from wraith_conch.approval.client import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    STOPPING,
    TIMED_OUT,
    ApprovalClient,
    retry_delay,
)
from wraith_conch.approval.interfaces import CommandRequest, Decision, IApprover
from wraith_conch.approval.protocol import SUBPROTOCOL

TOKEN = "tok-3b9f0c1e-never-log-me"
FAST_RETRY = 0.05


def make_request(clock, command: str = "rm -rf /var/tmp/cache", timeout: float = 30.0, **kw):
    fields = dict(
        session="s-8c41",
        user="alice",
        client="127.0.0.1:53122",
        target="db1.internal:22",
        kind="shell",
        command=command,
        created=clock.seconds(),
        timeout=timeout,
    )
    fields.update(kw)
    return CommandRequest.new(**fields)


# --- the approval service, from PROTOCOL.md --------------------------------


class ServiceProtocol(WebSocketServerProtocol):
    # The service's own autobahn debug logging would show the token it
    # receives; the token tests are about what the gateway logs.
    log = txaio.make_logger(level="info")

    def onConnect(self, request):
        service: ApprovalService = self.factory.service
        service.handshakes.append(request)
        if service.token is not None:
            if request.headers.get("authorization") != f"Bearer {service.token}":
                service.denied += 1
                raise ConnectionDeny(401, "Unauthorized")
        if service.select_subprotocol and SUBPROTOCOL in request.protocols:
            return SUBPROTOCOL
        return None

    def onOpen(self):
        self.factory.service.sessions.append(self)
        self.factory.service.opened += 1

    def onMessage(self, payload, isBinary):
        service = self.factory.service
        assert not isBinary, "the gateway sends text frames only"
        frame = json.loads(payload.decode("utf-8"))
        service.frames.append(frame)
        if frame.get("type") == "ping":
            self.sendMessage(b'{"type": "pong"}')

    def onClose(self, wasClean, code, reason):
        service = self.factory.service
        if self in service.sessions:
            service.sessions.remove(self)
            service.closed += 1


class ApprovalService:
    """A real WebSocket approval service on 127.0.0.1 for one test."""

    def __init__(self, testcase: TestCase, token: str | None = TOKEN, select_subprotocol=True):
        self.token = token
        self.select_subprotocol = select_subprotocol
        self.handshakes: list = []
        self.denied = 0
        self.opened = 0
        self.closed = 0
        self.frames: list[dict] = []
        self.sessions: list[ServiceProtocol] = []
        self.factory = WebSocketServerFactory(reactor=reactor)
        self.factory.protocol = ServiceProtocol
        self.factory.service = self
        self.port = None
        self.port_number = 0
        self.interface = "127.0.0.1"
        testcase.addCleanup(self.stop)

    def listen(self, interface: str = "127.0.0.1", context_factory=None) -> str:
        self.interface = interface
        if context_factory is None:
            self.port = reactor.listenTCP(self.port_number, self.factory, interface=interface)
        else:
            self.port = reactor.listenSSL(
                self.port_number, self.factory, context_factory, interface=interface
            )
        self.port_number = self.port.getHost().port
        host = f"[{interface}]" if ":" in interface else interface
        return f"ws://{host}:{self.port_number}/approval"

    async def stop(self) -> None:
        """Stop listening and drop every connection (a crash, not a goodbye)."""
        for session in list(self.sessions):
            session.dropConnection(abort=True)
        await wait_until(lambda: not self.sessions, "the service's connections to close")
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    def of_type(self, kind: str) -> list[dict]:
        return [frame for frame in self.frames if frame.get("type") == kind]

    def send(self, payload: str | bytes | dict, binary: bool = False) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        assert self.sessions, "no gateway connected"
        for session in self.sessions:
            session.sendMessage(payload, isBinary=binary)

    def decide(self, request_id: str, verdict: str, reason: str = "", reviewer="bob") -> None:
        self.send(
            {
                "type": "decision",
                "id": request_id,
                "decision": verdict,
                "reason": reason,
                "reviewer": reviewer,
            }
        )

    async def sync(self) -> None:
        """Return once the gateway has handled every frame sent before this."""
        pongs = len(self.of_type("pong"))
        self.send({"type": "ping"})
        await wait_until(lambda: len(self.of_type("pong")) > pongs, "pong")

    async def next_frame(self, kind: str, after: int = 0) -> dict:
        await wait_until(lambda: len(self.of_type(kind)) > after, f"a {kind!r} frame")
        return self.of_type(kind)[after]


class LogCapture:
    """Every log event while a test runs, with autobahn's debug logging on."""

    def __init__(self, testcase: TestCase, debug: bool = True) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        if debug:
            level = txaio.get_global_log_level()
            txaio.set_global_log_level("debug")
            testcase.addCleanup(txaio.set_global_log_level, level)

    def ours(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace", "").startswith("wraith_conch")]

    def text(self) -> str:
        return "\n".join(f"{formatEvent(e)}\n{e!r}" for e in self.events)


class ClientTestCase(TestCase):
    timeout = 20

    def make_client(self, url: str, token: str | None = TOKEN, **kw) -> ApprovalClient:
        kw.setdefault("retry_policy", lambda attempt: FAST_RETRY)
        client = ApprovalClient(reactor, url, token=token, gateway_name="gw-test", **kw)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    async def connected_pair(self, **kw) -> tuple[ApprovalService, ApprovalClient]:
        service = ApprovalService(self)
        client = self.make_client(service.listen(), **kw)
        await client.when_open()
        await service.next_frame("hello")
        return service, client


# --- the tests ---------------------------------------------------------------


class HandshakeTests(ClientTestCase):
    async def test_hello_then_request(self) -> None:
        service = ApprovalService(self)
        client = self.make_client(service.listen())
        self.assertTrue(verifyObject(IApprover, client))
        # Made before the connection opens: queued, then sent after hello.
        request = make_request(reactor, risk=None)
        d = client.request_decision(request)
        await client.when_open()
        frame = await service.next_frame("request")
        self.assertEqual(
            service.frames[0],
            {"type": "hello", "role": "gateway", "gateway": "gw-test", "version": 1},
        )
        self.assertEqual(frame, request.to_message())
        self.assertEqual(frame["id"], request.id)
        self.assertFalse(d.called)

        handshake = service.handshakes[0]
        self.assertEqual(handshake.headers["authorization"], f"Bearer {TOKEN}")
        self.assertEqual(handshake.protocols, [SUBPROTOCOL])
        self.assertEqual(handshake.path, "/approval")
        self.assertEqual(handshake.headers["host"], f"127.0.0.1:{service.port_number}")

        # Made while connected: sent at once.
        second = make_request(reactor, "ls")
        client.request_decision(second)
        self.assertEqual((await service.next_frame("request", after=1))["id"], second.id)
        self.assertEqual(client.pending_ids(), [request.id, second.id])
        self.assertEqual(len(service.of_type("hello")), 1)

    async def test_no_token_no_authorization_header(self) -> None:
        service = ApprovalService(self, token=None)
        client = self.make_client(service.listen(), token=None)
        await client.when_open()
        self.assertNotIn("authorization", service.handshakes[0].headers)

    async def test_wrong_token_is_refused_and_retried(self) -> None:
        logs = LogCapture(self)
        attempts: list[int] = []

        def policy(attempt: int) -> float:
            attempts.append(attempt)
            return FAST_RETRY

        service = ApprovalService(self)
        client = self.make_client(service.listen(), token="wrong-token", retry_policy=policy)
        # Expiry well after the three retries, even on a loaded machine.
        d = client.request_decision(make_request(reactor, timeout=3.0))
        await wait_until(lambda: len(attempts) >= 3, "three retries after refused handshakes")
        self.assertEqual(service.opened, 0)
        self.assertEqual(service.frames, [])
        self.assertFalse(client.connected)
        self.assertFalse(d.called)
        # Refused handshakes count as failures: the back-off keeps growing
        # although every TCP connection succeeded.
        self.assertEqual(attempts[:3], [2, 3, 4])
        self.assertEqual(await d, Decision.deny(TIMED_OUT))
        self.assertIn("401", logs.text())
        self.assertNotIn("wrong-token", logs.text())

    async def test_missing_token_is_refused(self) -> None:
        service = ApprovalService(self)
        client = self.make_client(service.listen(), token=None)
        await wait_until(lambda: service.denied >= 2, "two refused handshakes")
        self.assertFalse(client.connected)
        self.assertEqual(service.frames, [])

    async def test_token_never_logged(self) -> None:
        logs = LogCapture(self)
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        service.decide(request.id, "approve", "ok")
        await d
        self.assertTrue(logs.ours())
        self.assertNotIn(TOKEN, logs.text())
        self.assertNotIn(TOKEN, repr(client))

    async def test_subprotocol_not_selected_is_refused(self) -> None:
        logs = LogCapture(self, debug=False)
        service = ApprovalService(self, select_subprotocol=False)
        client = self.make_client(service.listen())
        d = client.request_decision(make_request(reactor))
        # The service thinks the handshake worked; the gateway hangs up
        # without a word, and tries again later.
        await wait_until(lambda: service.opened >= 2, "two attempts")
        await wait_until(lambda: service.closed >= 2, "the gateway to hang up twice")
        self.assertEqual(service.frames, [])
        self.assertFalse(client.connected)
        self.assertFalse(d.called)
        refusals = [e for e in logs.ours() if "subprotocol" in formatEvent(e)]
        self.assertTrue(refusals)
        self.assertIsNone(refusals[0]["selected"])

    async def test_ipv6(self) -> None:
        service = ApprovalService(self)
        try:
            url = service.listen(interface="::1")
        except CannotListenError:
            self.skipTest("no IPv6 loopback here")
        client = self.make_client(url)
        await client.when_open()
        self.assertEqual(service.handshakes[0].headers["host"], f"[::1]:{service.port_number}")
        self.assertIn("[::1]", client.description)

    async def test_wss(self) -> None:
        key_pem, cert_pem = self_signed("localhost")
        server_options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        service = ApprovalService(self)
        service.listen(context_factory=server_options)
        url = f"wss://localhost:{service.port_number}/approval"
        trust = ssl.Certificate.loadPEM(cert_pem)
        client = self.make_client(
            url, tls_options=ssl.optionsForClientTLS("localhost", trustRoot=trust)
        )
        request = make_request(reactor)
        d = client.request_decision(request)
        await client.when_open()
        await service.next_frame("request")
        service.decide(request.id, "approve")
        self.assertTrue((await d).approved)

    async def test_wss_untrusted_certificate_is_refused(self) -> None:
        key_pem, cert_pem = self_signed("localhost")
        server_options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        service = ApprovalService(self)
        service.listen(context_factory=server_options)
        logs = LogCapture(self, debug=False)
        client = self.make_client(f"wss://localhost:{service.port_number}/approval")

        def failures() -> int:
            return sum("could not open" in e.get("log_format", "") for e in logs.ours())

        await wait_until(lambda: failures() >= 2, "two failed TLS handshakes")
        self.assertEqual(service.handshakes, [])
        self.assertFalse(client.connected)


class DecisionTests(ClientTestCase):
    async def test_approve(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        service.decide(request.id, "approve", "looks fine", reviewer="bob")
        self.assertEqual(await d, Decision.approve("looks fine", reviewer="bob"))
        self.assertEqual(client.pending_ids(), [])

    async def test_deny(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        service.decide(request.id, "deny", "not today", reviewer="carol")
        self.assertEqual(await d, Decision.deny("not today", reviewer="carol"))

    async def test_decisions_go_to_their_own_request(self) -> None:
        service, client = await self.connected_pair()
        first, second = make_request(reactor, "one"), make_request(reactor, "two")
        d1, d2 = client.request_decision(first), client.request_decision(second)
        await service.next_frame("request", after=1)
        service.decide(second.id, "approve")
        await service.sync()
        self.assertFalse(d1.called)
        self.assertTrue(self.successResultOf(d2).approved)
        service.decide(first.id, "deny")
        self.assertFalse((await d1).approved)

    async def test_junk_is_ignored_and_nothing_is_approved(self) -> None:
        logs = LogCapture(self, debug=False)
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        rid = request.id
        junk: list[tuple[bytes | str | dict, bool]] = [
            ({"type": "decision", "id": "some-other-id", "decision": "approve"}, False),
            ("this is not json", False),
            (json.dumps({"type": "decision", "id": rid, "decision": "approve"}).encode(), True),
            ({"type": "verdict", "id": rid, "decision": "approve"}, False),
            ({"type": "decision", "id": rid, "decision": "APPROVE"}, False),
            ({"type": "decision", "id": rid, "decision": "approved"}, False),
            ({"type": "decision", "id": rid, "decision": True}, False),
            ({"type": "decision", "decision": "approve"}, False),
            ({"type": "decision", "id": [rid], "decision": "approve"}, False),
            ({"type": "decision", "id": rid, "decision": "approve", "reason": 5}, False),
            ({"decision": "approve", "id": rid}, False),
            (
                '{"type":"decision","id":"' + rid + '","decision":"deny","decision":"approve"}',
                False,
            ),
            ("[1, 2, 3]", False),
            (b"\x00\x01\x02", True),
        ]
        for payload, binary in junk:
            service.send(payload, binary=binary)
        await service.sync()
        self.assertFalse(d.called)
        self.assertEqual(client.pending_ids(), [rid])
        # Junk never closes anything.
        self.assertTrue(client.connected)
        self.assertEqual((service.opened, service.closed), (1, 0))
        ignored = [e for e in logs.ours() if "ignored" in e.get("log_format", "")]
        self.assertEqual(len(ignored), len(junk))
        # The request is still alive and a real decision still works.
        service.decide(rid, "approve", "ok")
        self.assertTrue((await d).approved)

    async def test_duplicate_decision_first_wins(self) -> None:
        logs = LogCapture(self, debug=False)
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        service.decide(request.id, "deny", "first")
        service.decide(request.id, "approve", "second")
        await service.sync()
        self.assertEqual(self.successResultOf(d), Decision.deny("first", reviewer="bob"))
        stale = [e for e in logs.ours() if e.get("status") == "decided"]
        self.assertEqual(len(stale), 1)
        self.assertTrue(client.connected)

    async def test_ping_pong(self) -> None:
        service, client = await self.connected_pair()
        service.send({"type": "ping"})
        self.assertEqual(await service.next_frame("pong"), {"type": "pong"})
        # A pong from the service is fine too, and changes nothing.
        service.send({"type": "pong"})
        await service.sync()
        self.assertTrue(client.connected)


class ReconnectTests(ClientTestCase):
    async def test_restart_resends_pending_with_same_id(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")

        await service.stop()
        await wait_until(lambda: not client.connected, "the client to notice")
        self.assertEqual(client.pending_ids(), [request.id])
        self.assertFalse(d.called)
        # Made while disconnected: queued behind the first.
        later = make_request(reactor, "ls")
        d_later = client.request_decision(later)

        service.frames.clear()
        service.listen()  # same port
        await client.when_open()
        await service.next_frame("request", after=1)
        self.assertEqual(
            [(f["type"], f.get("id")) for f in service.frames],
            [("hello", None), ("request", request.id), ("request", later.id)],
        )
        self.assertEqual(service.frames[1], request.to_message())
        service.decide(request.id, "approve", "after the restart")
        self.assertEqual(await d, Decision.approve("after the restart", reviewer="bob"))
        self.assertFalse(d_later.called)

    async def test_cancel_while_away_reaches_the_service_on_reconnect(self) -> None:
        service, client = await self.connected_pair()
        seen = make_request(reactor)
        d_seen = client.request_decision(seen)
        await service.next_frame("request")
        await service.stop()
        await wait_until(lambda: not client.connected, "the client to notice")
        never_sent = make_request(reactor, "ls")
        d_never = client.request_decision(never_sent)
        client.cancel(seen.id, "the operator pressed Ctrl-C")
        client.cancel(never_sent.id, "session closed")
        self.assertEqual(self.successResultOf(d_seen), Decision.deny("the operator pressed Ctrl-C"))
        self.assertEqual(self.successResultOf(d_never), Decision.deny("session closed"))

        service.frames.clear()
        service.listen()  # same port
        await client.when_open()
        await service.next_frame("cancel")
        await service.sync()
        # The service learns the request it still shows is void; the one it
        # never saw is neither sent nor cancelled.
        self.assertEqual(
            [
                (f["type"], f.get("id"), f.get("reason"))
                for f in service.frames
                if f["type"] != "pong"
            ],
            [("hello", None, None), ("cancel", seen.id, "the operator pressed Ctrl-C")],
        )
        # Sent once: the next reconnect does not repeat it.
        await service.stop()
        await wait_until(lambda: not client.connected, "the client to notice")
        service.frames.clear()
        service.listen()
        await client.when_open()
        await service.sync()
        self.assertEqual([f["type"] for f in service.frames if f["type"] != "pong"], ["hello"])

    async def test_connection_loss_leaves_requests_pending_until_expiry(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor, timeout=0.5)
        d = client.request_decision(request)
        await service.next_frame("request")
        await service.stop()
        self.assertEqual(await d, Decision.deny(TIMED_OUT))
        self.assertEqual(client.pending_ids(), [])


class EndingTests(ClientTestCase):
    async def test_expiry_denies_and_cancels(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor, timeout=0.3)
        d = client.request_decision(request)
        await service.next_frame("request")
        self.assertEqual(await d, Decision.deny(TIMED_OUT))
        self.assertEqual(
            await service.next_frame("cancel"),
            {"type": "cancel", "id": request.id, "reason": "expired"},
        )
        # Too late: ignored, and not an error.
        service.decide(request.id, "approve")
        await service.sync()
        self.assertTrue(client.connected)

    async def test_client_timeout_caps_request_expiry(self) -> None:
        service = ApprovalService(self)
        client = self.make_client(service.listen(), timeout=0.3)
        await client.when_open()
        d = client.request_decision(make_request(reactor, timeout=300))
        self.assertEqual(await d, Decision.deny(TIMED_OUT))

    async def test_cancel_denies_and_tells_the_service(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        client.cancel(request.id, "session closed")
        self.assertEqual(self.successResultOf(d), Decision.deny("session closed"))
        self.assertEqual(
            await service.next_frame("cancel"),
            {"type": "cancel", "id": request.id, "reason": "session closed"},
        )
        client.cancel(request.id, "again")  # already over: ignored
        client.cancel("never-heard-of-it", "x")
        service.decide(request.id, "approve")
        await service.sync()
        self.assertEqual(len(service.of_type("cancel")), 1)

    async def test_cancelling_the_deferred(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(
            await service.next_frame("cancel"),
            {"type": "cancel", "id": request.id, "reason": "cancelled"},
        )
        self.assertEqual(client.pending_ids(), [])

    async def test_stopping_denies_pending(self) -> None:
        service, client = await self.connected_pair()
        request = make_request(reactor)
        d = client.request_decision(request)
        await service.next_frame("request")
        await client.stopService()
        self.assertEqual(self.successResultOf(d), Decision.deny(STOPPING))
        self.assertEqual((await service.next_frame("cancel"))["id"], request.id)
        await wait_until(lambda: service.closed == 1, "the connection to close")
        self.assertFalse(client.connected)


# --- pure timing and construction, no network -------------------------------


class ClockTests(SynchronousTestCase):
    """Expiry on a fake clock; the client is never started, so never connects."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_795_255_200.0)
        self.client = ApprovalClient(self.clock, "ws://127.0.0.1:9/", timeout=60)

    def test_expires_at_the_deadline(self) -> None:
        d = self.client.request_decision(make_request(self.clock, timeout=10))
        self.clock.advance(9.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(d), Decision.deny(TIMED_OUT))
        self.assertEqual(self.client.pending_ids(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_awkward_float_deadlines(self) -> None:
        # created + timeout computed one way, the timer another: the timer
        # must still expire its request even if rounding puts it a hair early.
        self.clock = MemoryReactorClock()
        client = ApprovalClient(self.clock, "ws://127.0.0.1:9/", timeout=60)
        results = []
        for start, timeout in [(0.1, 0.2), (0.7, 0.1), (1e9 + 0.1, 0.3)]:
            self.clock.rightNow = start
            d = client.request_decision(make_request(self.clock, timeout=timeout))
            self.clock.advance(timeout)
            results.append(self.successResultOf(d))
        self.assertEqual(results, [Decision.deny(TIMED_OUT)] * 3)

    def test_client_timeout_caps_the_request(self) -> None:
        d = self.client.request_decision(make_request(self.clock, timeout=300))
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(d), Decision.deny(TIMED_OUT))

    def test_already_expired(self) -> None:
        request = make_request(self.clock, timeout=5)
        self.clock.advance(5)
        self.assertEqual(
            self.successResultOf(self.client.request_decision(request)), Decision.deny(TIMED_OUT)
        )
        self.assertEqual(self.client.pending_ids(), [])

    def test_duplicate_id_is_denied(self) -> None:
        request = make_request(self.clock)
        first = self.client.request_decision(request)
        self.assertEqual(
            self.successResultOf(self.client.request_decision(request)),
            Decision.deny("duplicate request id"),
        )
        self.assertNoResult(first)
        self.client.cancel(request.id, "done")
        self.assertEqual(self.successResultOf(first), Decision.deny("done"))

    def test_cancel_stops_the_timer(self) -> None:
        request = make_request(self.clock)
        d = self.client.request_decision(request)
        self.client.cancel(request.id, "operator pressed Ctrl-C")
        self.assertEqual(self.successResultOf(d), Decision.deny("operator pressed Ctrl-C"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_simultaneous_expiry(self) -> None:
        ds = [self.client.request_decision(make_request(self.clock, timeout=5)) for _ in range(3)]
        self.clock.advance(5)
        self.assertEqual([self.successResultOf(d) for d in ds], [Decision.deny(TIMED_OUT)] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_callback_reentrancy(self) -> None:
        # A caller reacting to one denial by cancelling or asking again.
        first = make_request(self.clock, timeout=5)
        second = make_request(self.clock, timeout=5)
        third = make_request(self.clock, timeout=50)
        d1 = self.client.request_decision(first)
        d2 = self.client.request_decision(second)
        d1.addCallback(lambda _: self.client.cancel(second.id, "gone"))
        d1.addCallback(lambda _: self.client.request_decision(third))
        self.clock.advance(5)
        self.assertTrue(d2.called)
        self.assertEqual(self.client.pending_ids(), [third.id])

    def test_stop_without_start(self) -> None:
        d = self.client.request_decision(make_request(self.clock))
        waiting = self.client.when_open()
        self.client.startService()
        self.successResultOf(self.client.stopService())
        self.assertEqual(self.successResultOf(d), Decision.deny(STOPPING))
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConstructionTests(SynchronousTestCase):
    def test_bad_urls(self) -> None:
        for url in [
            "",
            "http://example.com/",
            "https://example.com/",
            "ws://",
            "ws:/path",
            "ws://host:99999/",
            "ws://host:port/",
            "ws://user:secret@host/",
            "ws://host/with space",
            "ws://host/\r\nX-Evil: 1",
            "ws://host/#fragment",
            "example.com:8080",
        ]:
            with self.subTest(url):
                with self.assertRaises(ValueError) as caught:
                    ApprovalClient(MemoryReactorClock(), url)
                self.assertIn("URL", str(caught.exception))

    def test_credentials_in_url_are_not_echoed(self) -> None:
        with self.assertRaises(ValueError) as caught:
            ApprovalClient(MemoryReactorClock(), "ws://user:secret@host/")
        self.assertNotIn("secret", str(caught.exception))

    def test_bad_tokens_are_not_echoed(self) -> None:
        for token in ["two words", "line\nbreak", "tab\there", "caf\u00e9"]:
            with self.subTest(token):
                with self.assertRaises(ValueError) as caught:
                    ApprovalClient(MemoryReactorClock(), "ws://host/", token=token)
                self.assertNotIn(token, str(caught.exception))

    def test_bad_timeouts(self) -> None:
        for timeout in [0, -1, float("nan"), float("inf")]:
            with self.subTest(timeout):
                self.assertRaises(
                    ValueError, ApprovalClient, MemoryReactorClock(), "ws://host/", timeout=timeout
                )

    def test_good_urls(self) -> None:
        for url, description in [
            ("ws://approvals.internal/", "approval service at ws://approvals.internal:80/"),
            ("wss://approvals.internal/", "approval service at wss://approvals.internal:443/"),
            ("ws://127.0.0.1:8080/a?key=v", "approval service at ws://127.0.0.1:8080/a"),
            ("ws://[::1]:8080/", "approval service at ws://[::1]:8080/"),
        ]:
            with self.subTest(url):
                client = ApprovalClient(MemoryReactorClock(), url, token=TOKEN)
                self.assertEqual(client.description, description)
                self.assertTrue(verifyObject(IApprover, client))

    def test_is_a_service_with_a_connector(self) -> None:
        clock = MemoryReactorClock()
        client = ApprovalClient(clock, "ws://127.0.0.1:4567/", token=TOKEN)
        client.startService()
        self.assertEqual(
            [(host, port) for host, port, *_ in clock.tcpClients], [("127.0.0.1", 4567)]
        )
        self.successResultOf(client.stopService())


class RetryDelayTests(SynchronousTestCase):
    @given(st.integers(min_value=-5, max_value=10_000), st.floats(0, 1))
    def test_bounds(self, attempt: int, jitter: float) -> None:
        delay = retry_delay(attempt, jitter=lambda: jitter)
        self.assertGreater(delay, 0)
        self.assertLessEqual(delay, RETRY_MAX_DELAY)
        if attempt <= 1:
            self.assertLessEqual(delay, RETRY_FIRST_DELAY)

    def test_grows_then_caps(self) -> None:
        delays = [retry_delay(n, jitter=lambda: 1.0) for n in range(1, 10)]
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30, 30])
        self.assertEqual(retry_delay(1, jitter=lambda: 0.0), 0.5)


def self_signed(hostname: str) -> tuple[bytes, bytes]:
    """A throwaway key and certificate for C{hostname}, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
