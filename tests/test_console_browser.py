"""
The reviewer console in a real browser: Debian's headless Chromium driven by
Playwright, against a real hub on 127.0.0.1 fed by the project's real
gateway client (L{ApprovalClient}).

Playwright's sync API blocks, and its objects must stay on the thread that
made them, so every browser step runs on one dedicated thread
(L{BrowserThread}) while the reactor -- with the hub and the client in it
-- keeps running here.  Every browser wait has a timeout; the browser, the
thread, the hub and the client are stopped in cleanup.

The last test saves a screenshot to C{/tmp/wraith-console.png}.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.test_hub import (
    BOB_TOKEN,
    CAROL_PASSWORD,
    make_request,
    start_gateway,
    start_hub,
    wait_until,
)
from wraith_conch.approval.interfaces import CommandRequest, Risk

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = "/tmp/wraith-console.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Chromium looks names up itself (its own services, even with the flags
    # above), which would send DNS queries off loopback: resolve nothing but
    # the console's address.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
STEP_TIMEOUT_MS = 15_000

# Only a missing browser skips; a missing playwright package (a test
# dependency) fails loudly in setUp.
SKIP = None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is missing (apt-get install chromium)"


class BrowserThread:
    """Chromium through Playwright's sync API, on one thread of its own."""

    def __init__(self) -> None:
        self._pool = ThreadPool(1, 1, name="playwright")
        self._playwright = None
        self.browser = None

    def call(self, function, *args) -> defer.Deferred:
        """Run C{function(*args)} on the browser thread; fires with its result."""
        return threads.deferToThreadPool(reactor, self._pool, function, *args)

    def start(self) -> defer.Deferred:
        self._pool.start()
        return self.call(self._launch)

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=STEP_TIMEOUT_MS * 2
        )

    def _close(self) -> None:
        try:
            if self.browser is not None:
                self.browser.close()
        finally:
            if self._playwright is not None:
                self._playwright.stop()

    @defer.inlineCallbacks
    def stop(self):
        try:
            yield self.call(self._close)
        finally:
            self._pool.stop()

    def new_page(self):
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        return page


class ConsoleBrowserTests(TestCase):
    skip = SKIP
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.service = start_hub(self)
        host, port = self.service.local_address
        self.base = f"http://{host}:{port}"
        self.client = start_gateway(self, self.service)
        self.browser = BrowserThread()
        self.addCleanup(self.browser.stop)
        yield defer.gatherResults([self.client.when_open(), self.browser.start()])

    def in_browser(self, function, *args) -> defer.Deferred:
        return self.browser.call(function, *args)

    # --- steps that run on the browser thread -----------------------------------------

    def _login_with_link(self, token: str):
        page = self.browser.new_page()
        page.goto(f"{self.base}/login?token={token}")
        page.wait_for_url(f"{self.base}/")
        page.wait_for_selector("#status.live")
        return page

    def _login_with_password(self, name: str, password: str):
        page = self.browser.new_page()
        page.goto(f"{self.base}/login")
        page.fill("#name", name)
        page.fill("#password", password)
        page.click("#login")
        page.wait_for_load_state()
        return page

    @staticmethod
    def _decide(page, request_id: str, action: str, reason: str) -> None:
        card = page.locator(f'article.request[data-id="{request_id}"]')
        card.wait_for()
        card.locator("input.reason").fill(reason)
        card.locator(f'button[data-action="{action}"]').click()
        card.wait_for(state="detached")

    # --- tests ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_token_link_login_and_approve(self):
        page = yield self.in_browser(self._login_with_link, BOB_TOKEN)
        reviewer = yield self.in_browser(lambda: page.inner_text("#reviewer"))
        self.assertEqual(reviewer, "bob")
        request = make_request("systemctl restart nginx", kind="exec")
        d = self.client.request_decision(request)
        yield self.in_browser(self._decide, page, request.id, "approve", "planned restart")
        decision = yield d
        self.assertEqual(
            (decision.approved, decision.reason, decision.reviewer),
            (True, "planned restart", "bob"),
        )
        row = yield self.in_browser(
            lambda: page.locator(f'#history-rows tr[data-id="{request.id}"]').inner_text()
        )
        self.assertIn("approved", row)
        self.assertIn("planned restart", row)

    @defer.inlineCallbacks
    def test_password_login_and_deny(self):
        page = yield self.in_browser(self._login_with_password, "carol", CAROL_PASSWORD)
        yield self.in_browser(lambda: page.wait_for_selector("#status.live"))
        request = make_request("rm -rf /var/lib/postgresql")
        d = self.client.request_decision(request)
        yield self.in_browser(self._decide, page, request.id, "deny", "not on a weekday")
        decision = yield d
        self.assertEqual(
            (decision.approved, decision.reason, decision.reviewer),
            (False, "not on a weekday", "carol"),
        )

    @defer.inlineCallbacks
    def test_wrong_password(self):
        page = yield self.in_browser(self._login_with_password, "carol", "not-her-password")

        def outcome():
            error = page.inner_text(".error")
            page.goto(f"{self.base}/")
            return error, page.url, page.context.cookies()

        error, url, cookies = yield self.in_browser(outcome)
        self.assertIn("Wrong name or password", error)
        self.assertEqual(url, f"{self.base}/login")
        self.assertEqual([c for c in cookies if c["name"] == "wraith_session"], [])
        self.assertEqual(self.service.hub.reviewer_count, 0)
        # Nor does a made-up login link.
        page = yield self.in_browser(self.browser.new_page)
        text = yield self.in_browser(
            lambda: (page.goto(f"{self.base}/login?token=guess"), page.inner_text(".error"))[1]
        )
        self.assertIn("not valid", text)

    @defer.inlineCallbacks
    def test_logout(self):
        page = yield self.in_browser(self._login_with_link, BOB_TOKEN)
        yield wait_until(lambda: self.service.hub.reviewer_count == 1, "the console's socket")

        def logout():
            page.click("#logout")
            page.wait_for_url(f"{self.base}/login")
            page.goto(f"{self.base}/")
            return page.url

        url = yield self.in_browser(logout)
        self.assertEqual(url, f"{self.base}/login")
        yield wait_until(lambda: self.service.hub.reviewer_count == 0, "the socket to close")

    @defer.inlineCallbacks
    def test_commands_are_shown_escaped(self):
        """
        Nothing hides: ESC, zero-width and other non-ASCII characters are
        shown as marks, typed and rendered lines side by side; and a
        screenshot of the page for the docs (and for a human to look at).
        """
        page = yield self.in_browser(self._login_with_link, BOB_TOKEN)

        # History first: one approved, one denied.
        for command, action in (("uptime", "approve"), ("shutdown -h now", "deny")):
            request = make_request(command, kind="exec")
            d = self.client.request_decision(request)
            yield self.in_browser(self._decide, page, request.id, action, f"{action} for the docs")
            yield d

        tricky = make_request(
            "rm\x1b[2K -rf /srv/data\u200b",
            typed="ls /srv/data",
            risk=Risk(90, ("recursive delete", "line differs from keystrokes")),
        )
        if "screen" in attrs.fields_dict(CommandRequest):
            tricky = attrs.evolve(
                tricky,
                screen=(
                    "alice@db1:~$ cd /srv",
                    "alice@db1:/srv$ ls",
                    "data  backups  caf\u00e9.txt",
                    "alice@db1:/srv$ rm -rf /srv/data",
                ),
            )
        d_tricky = self.client.request_decision(tricky)
        other = make_request("sftp", kind="subsystem", user="bob-ops", target="files.internal:22")
        d_other = self.client.request_decision(other)

        def inspect():
            card = page.locator(f'article.request[data-id="{tricky.id}"]')
            card.wait_for()
            page.locator(f'article.request[data-id="{other.id}"]').wait_for()
            command = card.locator("pre.command")
            marks = command.locator("span.esc").all_inner_texts()
            found = {
                "command": command.inner_text(),
                "command_html": command.inner_html(),
                "marks": marks,
                "typed": card.locator("pre.typed").inner_text(),
                "warning": card.locator(".mismatch-warning").inner_text(),
                "risk": card.locator(".risk").inner_text(),
                "reasons": card.locator(".risk-reasons li").all_inner_texts(),
                "screen": card.locator("pre.screen").all_inner_texts(),
                "pending": page.inner_text("#pending-count"),
            }
            page.screenshot(path=SCREENSHOT, full_page=True)
            return found

        found = yield self.in_browser(inspect)
        self.assertEqual(found["command"], "rm\\x1b[2K -rf /srv/dataU+200B")
        self.assertEqual(found["marks"], ["\\x1b", "U+200B"])
        self.assertNotIn("\x1b", found["command_html"])
        self.assertNotIn("\u200b", found["command_html"])
        self.assertEqual(found["typed"], "ls /srv/data")
        self.assertIn("differs", found["warning"])
        self.assertEqual(found["risk"], "risk 90")
        self.assertEqual(found["reasons"], ["recursive delete", "line differs from keystrokes"])
        if "screen" in attrs.fields_dict(CommandRequest):
            [screen] = found["screen"]
            self.assertIn("alice@db1:/srv$ rm -rf /srv/data", screen)
            self.assertIn("caf\u00e9.txt", screen)  # context: printable non-ASCII kept
        self.assertEqual(found["pending"], "2")
        self.assertTrue(os.path.getsize(SCREENSHOT) > 10_000)
        # Clean up the two pending requests through the page.
        yield self.in_browser(self._decide, page, tricky.id, "deny", "mismatch")
        yield self.in_browser(self._decide, page, other.id, "approve", "")
        decisions = yield defer.gatherResults([d_tricky, d_other])
        self.assertEqual([x.approved for x in decisions], [False, True])

    @defer.inlineCallbacks
    def test_multi_line_command_is_shown_line_by_line(self):
        # A pasted script: each newline is marked and also breaks the line.
        page = yield self.in_browser(self._login_with_link, BOB_TOKEN)
        script = make_request("cd /srv\nrm -rf data\n")
        decided = self.client.request_decision(script)

        def inspect():
            command = page.locator(f'article.request[data-id="{script.id}"] pre.command')
            command.wait_for()
            return (
                command.locator("span.esc").all_inner_texts(),
                command.locator("br").count(),
                command.inner_text(),
            )

        marks, breaks, text = yield self.in_browser(inspect)
        self.assertEqual((marks, breaks), (["\\n", "\\n"], 2))
        self.assertEqual(text.splitlines(), ["cd /srv\\n", "rm -rf data\\n"])
        yield self.in_browser(self._decide, page, script.id, "deny", "one at a time")
        self.assertFalse((yield decided).approved)
