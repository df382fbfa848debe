"""
C{--webhook}: the hub POSTs each request awaiting review to a real
L{twisted.web} server on 127.0.0.1; failures are logged (without the URL's
secrets) and never decide or hold up anything.
"""

from __future__ import annotations

import json
from base64 import b64encode

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from tests.gatewayharness import minimal_options
from tests.test_hub import make_request, start_gateway, start_hub, wait_until
from wraith_conch import hub_tap
from wraith_conch.approval.webhook import Webhook, check_webhook_url
from wraith_conch.config import ConfigError, build_config


class Receiver(resource.Resource):
    isLeaf = True

    def __init__(self, code: int = 204) -> None:
        super().__init__()
        self.code = code
        self.received: list[tuple[bytes, dict, bytes]] = []

    def render_POST(self, request):
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((request.path, headers, request.content.read()))
        request.setResponseCode(self.code)
        return b""


@defer.inlineCallbacks
def start_receiver(testcase: TestCase, code: int = 204):
    receiver = Receiver(code)
    site = server.Site(receiver)
    site.log = lambda request: None  # the access log is this test's, not the hub's
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    testcase.addCleanup(port.stopListening)
    return receiver, port.getHost().port


def capture_log(testcase: TestCase) -> list[str]:
    lines: list[str] = []

    def observer(event):
        lines.append(formatEvent(event) or "")
        failure = event.get("log_failure")
        if failure is not None:
            lines.append(failure.getTraceback())

    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class WebhookTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_request_is_posted_and_stays_pending(self):
        receiver, port = yield start_receiver(self)
        service = start_hub(self, webhook=f"http://hook:s3cret@127.0.0.1:{port}/hooks/T0KEN")
        client = start_gateway(self, service)
        yield client.when_open()
        request = make_request("systemctl restart nginx", kind="exec")
        d = client.request_decision(request)
        yield wait_until(lambda: receiver.received, "the webhook POST")
        path, headers, body = receiver.received[0]
        self.assertEqual(path, b"/hooks/T0KEN")
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"authorization"], b"Basic " + b64encode(b"hook:s3cret"))
        posted = json.loads(body)
        self.assertEqual(posted["type"], "request")
        self.assertEqual(posted["id"], request.id)
        self.assertEqual(posted["command"], "systemctl restart nginx")
        self.assertEqual(posted["kind"], "exec")
        self.assertEqual(posted["gateway"], "gw-1")
        # A notification decides nothing.
        self.assertEqual([r["id"] for r in service.hub.pending()], [request.id])
        self.assertFalse(d.called)
        service.hub.decide(request.id, True, "ok", "bob", reactor.seconds())
        decision = yield d
        self.assertTrue(decision.approved)
        self.assertEqual(len(receiver.received), 1)

    @defer.inlineCallbacks
    def test_failures_are_logged_without_secrets_and_block_nothing(self):
        log = capture_log(self)
        receiver, port = yield start_receiver(self, code=500)
        service = start_hub(self, webhook=f"http://hook:pa55word@127.0.0.1:{port}/x/SECRETPATH")
        client = start_gateway(self, service)
        yield client.when_open()
        first = make_request("uptime", kind="exec")
        d = client.request_decision(first)
        yield wait_until(lambda: any("HTTP 500" in line for line in log), "the HTTP 500 log")
        service.hub.decide(first.id, False, "no", "bob", reactor.seconds())
        self.assertFalse((yield d).approved)

        # Nobody listening at all.
        service = start_hub(self, webhook="http://u:pa55word@127.0.0.1:1/x/SECRETPATH?k=v")
        client = start_gateway(self, service)
        yield client.when_open()
        second = make_request("id", kind="exec")
        d = client.request_decision(second)
        yield wait_until(lambda: any("failed" in line for line in log), "the failure log")
        self.assertEqual([r["id"] for r in service.hub.pending()], [second.id])
        service.hub.decide(second.id, True, "fine", "bob", reactor.seconds())
        self.assertTrue((yield d).approved)
        text = "\n".join(log)
        self.assertIn("http://127.0.0.1:1", text)
        self.assertIn(f"http://127.0.0.1:{port}", text)
        for secret in ("pa55word", "SECRETPATH", "k=v"):
            self.assertNotIn(secret, text)

    def test_stop_cancels_notifications_under_way(self):
        from twisted.internet.task import Clock

        pending: list[defer.Deferred] = []

        class Agent:
            def request(self, *args):
                d = defer.Deferred()
                pending.append(d)
                return d

        hook = Webhook(Clock(), "https://example.invalid/hook", agent=Agent())
        d = hook.notify({"id": "r1", "command": "ls"})
        hook.stop()
        self.assertTrue(pending[0].called)
        self.assertIsNone(self.successResultOf(d))
        self.flushLoggedErrors()


class WebhookFlagTests(TestCase):
    def test_url_checks(self):
        self.assertEqual(check_webhook_url("https://h.example/x"), "https://h.example/x")
        for bad in ("ftp://h/x", "http:///x", "https://h:99999/", "http://h/a b", "h.example"):
            with self.assertRaises(ValueError):
                check_webhook_url(bad)

    def test_hub_tap_flag(self):
        options = hub_tap.Options()
        token = "t" * 32
        options.parseOptions(["--gateway-token", token, "--webhook", "https://h.example/x"])
        self.assertEqual(options["webhook"], "https://h.example/x")
        with self.assertRaises(usage.UsageError) as caught:
            hub_tap.Options().parseOptions(
                ["--gateway-token", token, "--webhook", "ftp://u:SECRET@h/"]
            )
        self.assertIn("--webhook", str(caught.exception))
        self.assertNotIn("SECRET", str(caught.exception))

    def _options(self, **extra):
        return minimal_options(self.mktemp(), **extra)

    def test_wraith_flag(self):
        config = build_config(self._options(webhook="http://127.0.0.1:9/h"), reactor)
        self.assertEqual(config.webhook, "http://127.0.0.1:9/h")
        self.assertNotIn("127.0.0.1:9/h", repr(config))
        with self.assertRaises(ConfigError) as caught:
            build_config(self._options(webhook="gopher://u:SECRET@h/"), reactor)
        self.assertEqual(caught.exception.flag, "webhook")
        self.assertNotIn("SECRET", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            build_config(self._options(webhook="http://h/", approval="ws://127.0.0.1:9/"), reactor)
        self.assertIn("embedded", str(caught.exception))
