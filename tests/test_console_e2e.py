"""
The whole path as people use it: a real sshd, a real C{twistd -n wraith} with
its embedded hub, the operator's real C{ssh}, and a reviewer in headless
Chromium who logs in with the link the gateway printed and decides there.

Saves screenshots to C{/tmp/wraith-console-e2e.png} (a pending request) and
C{/tmp/wraith-console-live.png} (a session watched read-only).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess

from twisted.conch.ssh import keys
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from tests.gatewayharness import home_of, keygen
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from tests.test_console_browser import SKIP, BrowserThread
from tests.test_twistd import REPO, stop_process, twistd_argv

SCREENSHOT = "/tmp/wraith-console-e2e.png"
LIVE_SCREENSHOT = "/tmp/wraith-console-live.png"


def _free_ports(count: int) -> list[int]:
    ports = []
    for _ in range(count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


class ConsoleEndToEndTests(TestCase):
    skip = SKIP
    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.operator_key = os.path.join(self.base, "operator")
        keys_path = os.path.join(self.base, "authorized_keys")
        with open(keys_path, "w") as f:
            f.write(keygen(self.operator_key) + "\n")
        self.port, self.hub_port = _free_ports(2)
        self.host_key = os.path.join(self.base, "gateway_host_key")
        argv = twistd_argv(
            "-n", "--pidfile=", f"--logfile={os.path.join(self.base, 'twistd.log')}", "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--hub-listen=tcp:{self.hub_port}:interface=127.0.0.1",
            f"--host-key={self.host_key}", f"--target=127.0.0.1:{self.sshd.port}",
            f"--target-known-hosts={self.sshd.known_hosts_path}",
            f"--target-identity={self.sshd.client_key_path}", f"--authorized-keys={keys_path}",
        )  # fmt: skip
        self.process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        self.addCleanup(stop_process, self.process)
        self.browser = BrowserThread()

    @defer.inlineCallbacks
    def login_link(self):
        for _ in range(10):
            line = yield threads.deferToThread(self.process.stdout.readline)
            match = re.search(r"(http://\S+/login\?token=\S+)", line)
            if match:
                return match.group(1)
            if not line:
                break
        self.fail("twistd printed no login link")

    @defer.inlineCallbacks
    def operator_argv(self, command: str):
        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        # The hub prints the link when it starts, which can be before the
        # gateway's own listener is up: an ssh sent then could be refused.
        yield wait_until(
            lambda: os.path.exists(self.host_key) and listening(),
            "the gateway's key and listener",
            timeout=30,
        )
        known = os.path.join(self.base, "known_hosts")
        with open(known, "w") as f:
            public = keys.Key.fromFile(self.host_key).public().toString("openssh").decode()
            f.write(f"[127.0.0.1]:{self.port} {public}\n")
        return [
            "ssh", "-F", "/dev/null", "-p", str(self.port), "-i", self.operator_key,
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            f"{self.sshd.user}@127.0.0.1", command,
        ]  # fmt: skip

    # --- on the browser thread ---------------------------------------------------

    def _login(self, link: str):
        page = self.browser.new_page()
        page.goto(link)
        page.wait_for_url(re.compile(r"http://[^/]+/$"))
        page.wait_for_selector("#status.live")
        return page

    @staticmethod
    def _decide(page, command: str, action: str, reason: str, screenshot: str | None = None):
        card = page.locator("article.request", has_text=command)
        card.wait_for()
        card.locator("input.reason").fill(reason)
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        card.locator(f'button[data-action="{action}"]').click()
        card.wait_for(state="detached")

    # --- the test ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_approve_then_deny_in_the_browser(self):
        link = yield self.login_link()
        self.addCleanup(self.browser.stop)
        yield self.browser.start()
        page = yield self.browser.call(self._login, link)

        home = home_of(self.sshd)
        approved = os.path.join(home, f"e2e-approved-{os.getpid()}-{self.port}")
        denied = os.path.join(home, f"e2e-denied-{os.getpid()}-{self.port}")
        for marker in (approved, denied):
            self.addCleanup(lambda m=marker: os.path.exists(m) and os.unlink(m))

        argv = yield self.operator_argv(f"touch {approved}")
        running = spawn_ssh(reactor, argv)
        yield self.browser.call(
            self._decide, page, f"touch {approved}", "approve", "planned change", SCREENSHOT
        )
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(approved))

        argv = yield self.operator_argv(f"touch {denied}")
        running = spawn_ssh(reactor, argv)
        yield self.browser.call(self._decide, page, f"touch {denied}", "deny", "not today")
        code, out, err = yield running
        self.assertNotEqual(code, 0)
        self.assertIn(b"wraith: denied: not today", err)
        self.assertFalse(os.path.exists(denied))

        row = yield self.browser.call(
            lambda: page.locator("#history-rows tr", has_text="not today").inner_text()
        )
        self.assertIn("denied", row)
        self.assertTrue(os.path.getsize(SCREENSHOT) > 10_000)

    @defer.inlineCallbacks
    def test_watch_a_session_read_only(self):
        link = yield self.login_link()
        self.addCleanup(self.browser.stop)
        yield self.browser.start()
        page = yield self.browser.call(self._login, link)
        # The session stays live until the browser has seen its first line
        # (bounded: 30 s), however slowly the browser gets there.
        go = os.path.join(home_of(self.sshd), f"e2e-go-{os.getpid()}-{self.port}")
        self.addCleanup(lambda: os.path.exists(go) and os.unlink(go))
        command = (
            f"echo e2e-first; for i in $(seq 300); do [ -e {go} ] && break; sleep 0.1; done;"
            " echo e2e-second"
        )
        argv = yield self.operator_argv(command)
        running = spawn_ssh(reactor, argv)
        yield self.browser.call(self._decide, page, command, "approve", "watching it")

        def watch():
            page.locator("#live-sessions li button.watch").first.click()
            screen = page.locator("#live-screen")
            # Locators, not wait_for_function: the console's CSP forbids eval.
            page.locator("#live-screen", has_text="e2e-first").wait_for()
            first = screen.inner_text()
            page.screenshot(path=LIVE_SCREENSHOT, full_page=True)
            open(go, "w").close()
            page.locator("#live-state", has_text="ended").wait_for()
            inputs = page.locator("#live-view textarea, #live-view input").count()
            return first, screen.inner_text(), inputs

        first, last, inputs = yield self.browser.call(watch)
        self.assertIn("e2e-first", first)
        self.assertIn("e2e-second", last)
        self.assertEqual(inputs, 0)  # nothing to type into
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertIn(b"e2e-second", out)
