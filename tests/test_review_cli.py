"""
C{wraith-review} as users run it: a subprocess
(C{python -m wraith_conch.review_cli}) against a real hub on 127.0.0.1 with
requests from the project's real gateway client.

The hub runs in this process, so the CLI runs through the reactor's own
process support (never a blocking C{subprocess.run}, which would stop the
hub from answering).
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import defer, error, protocol, reactor, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_hub import (
    BOB_TOKEN,
    make_request,
    start_gateway,
    start_hub,
    wait_until,
)
from wraith_conch.review_cli import reviewer_url, shown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WRAITH_REVIEW_TOKEN"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class ReviewCliTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.service = start_hub(self)
        host, port = self.service.local_address
        self.hub_url = f"http://{host}:{port}"
        self.client = start_gateway(self, self.service)
        yield self.client.when_open()

    @defer.inlineCallbacks
    def review(self, *args: str, token: str | None = BOB_TOKEN, env_token: str | None = None):
        argv = ["-m", "wraith_conch.review_cli", "--hub", self.hub_url]
        if token is not None:
            argv += ["--token", token]
        env = cli_env()
        if env_token is not None:
            env["WRAITH_REVIEW_TOKEN"] = env_token
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, [*argv, *args], env=env, path=REPO
        )
        return code, out.decode("utf-8"), err.decode("utf-8")

    @defer.inlineCallbacks
    def pending(self, command: str):
        request = make_request(command)
        d = self.client.request_decision(request)
        yield wait_until(
            lambda: request.id in [p["id"] for p in self.service.hub.pending()], "the request"
        )
        return request, d

    @defer.inlineCallbacks
    def test_list(self):
        code, out, err = yield self.review("list")
        self.assertEqual((code, out.strip()), (0, "No pending requests."), err)
        request, _d = yield self.pending("rm\x1b[2K -rf /tmp/x\u200b")
        code, out, err = yield self.review("list")
        self.assertEqual(code, 0, err)
        self.assertIn(request.id, out)
        self.assertIn("alice -> db1.internal:22", out)
        self.assertIn("command: rm\\x1b[2K -rf /tmp/xU+200B", out)
        self.assertNotIn("\x1b", out)
        code, out, err = yield self.review("list", "--json")
        self.assertEqual(code, 0, err)
        import json

        [listed] = json.loads(out)
        self.assertEqual((listed["id"], listed["command"]), (request.id, request.command))

    @defer.inlineCallbacks
    def test_approve_and_deny(self):
        request, d = yield self.pending("uptime")
        code, out, err = yield self.review("approve", request.id[:8], "--reason", "routine")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), f"approved {request.id}")
        decision = yield d
        self.assertEqual(
            (decision.approved, decision.reason, decision.reviewer), (True, "routine", "bob")
        )
        # Decided already: refused, exit 1.
        code, out, err = yield self.review("deny", request.id)
        self.assertEqual(code, 1)
        self.assertIn("approved, not pending", err)

        request, d = yield self.pending("reboot")
        code, out, err = yield self.review(
            "deny", request.id, "--reason", "not now", env_token=None
        )
        self.assertEqual(code, 0, err)
        decision = yield d
        self.assertEqual((decision.approved, decision.reason), (False, "not now"))

    @defer.inlineCallbacks
    def test_token_from_environment(self):
        request, d = yield self.pending("id")
        code, out, err = yield self.review("approve", request.id, token=None, env_token=BOB_TOKEN)
        self.assertEqual(code, 0, err)
        decision = yield d
        self.assertTrue(decision.approved)

    @defer.inlineCallbacks
    def test_refusals(self):
        request, d = yield self.pending("uptime")
        code, out, err = yield self.review("approve", request.id, token="wrong-token-123")
        self.assertEqual(code, 1)
        self.assertIn("refused the token (HTTP 401)", err)
        self.assertNotIn("wrong-token-123", err)
        code, out, err = yield self.review("approve", "no-such-request-id")
        self.assertEqual(code, 1)
        self.assertIn("unknown, not pending", err)
        self.assertFalse(d.called)
        self.assertEqual(self.service.hub.status(request.id), "pending")

    @defer.inlineCallbacks
    def test_usage_errors(self):
        for args, token, words in (
            ((), BOB_TOKEN, "COMMAND"),
            (("frobnicate",), BOB_TOKEN, "invalid choice"),
            (("approve",), BOB_TOKEN, "id"),
            (("list",), None, "token is required"),
        ):
            code, out, err = yield self.review(*args, token=token)
            self.assertEqual(code, 2, (args, err))
            self.assertIn(words, err)
        self.hub_url = "ftp://127.0.0.1:1"
        code, out, err = yield self.review("list")
        self.assertEqual(code, 2)
        self.assertIn("--hub", err)

    @defer.inlineCallbacks
    def test_unreachable_hub(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.hub_url = f"http://127.0.0.1:{port}"
        code, out, err = yield self.review("list")
        self.assertEqual(code, 1)
        self.assertIn("cannot connect to the hub", err)

    @defer.inlineCallbacks
    def test_watch(self):
        output = _Output()
        process = reactor.spawnProcess(
            output,
            sys.executable,
            [
                sys.executable,
                "-u",
                "-m",
                "wraith_conch.review_cli",
                "--hub",
                self.hub_url,
                "--token",
                BOB_TOKEN,
                "watch",
            ],
            env=cli_env(),
            path=REPO,
        )

        def stop():
            if output.ended.called:
                return None
            try:
                process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                return None
            return output.ended

        self.addCleanup(stop)
        yield wait_until(lambda: "watching as bob" in output.text(), "watch to start", 20)
        request, d = yield self.pending("ls /srv")
        # Another process's output: generous bounds for a loaded machine.
        yield wait_until(lambda: f"new {request.id}" in output.text(), "the new request", 15)
        yield self.service.hub.decide(request.id, False, "nope", "carol", reactor.seconds())
        yield wait_until(
            lambda: f"{request.id} denied by carol: nope" in output.text(), "the decision", 15
        )
        process.signalProcess(signal.SIGINT)
        code = yield output.ended.addTimeout(10, reactor)
        self.assertEqual(code, 0, output.text())


class _Output(protocol.ProcessProtocol):
    def __init__(self):
        self.chunks: list[bytes] = []
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data):
        self.chunks.append(data)

    errReceived = outReceived

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class HelperTests(SynchronousTestCase):
    def test_reviewer_url(self):
        self.assertEqual(reviewer_url("http://h:8022"), "ws://h:8022/reviewer")
        self.assertEqual(reviewer_url("https://h/wraith/"), "wss://h/wraith/reviewer")
        self.assertEqual(reviewer_url("ws://[::1]:8022/reviewer"), "ws://[::1]:8022/reviewer")

    def test_shown(self):
        self.assertEqual(shown("rm\x1b[2K -rf\u200b"), "rm\\x1b[2K -rfU+200B")
        self.assertEqual(shown("a\\x1b"), "a\\\\x1b")
        self.assertEqual(shown("caf\u00e9 \u202e", strict=False), "caf\u00e9 U+202E")
        self.assertEqual(shown("tab\there\n"), "tab\\there\\n")
