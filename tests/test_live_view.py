"""
The read-only live view of sessions (embedded hub only): the gateway in the
same process feeds the hub what the target prints; reviewers C{watch} a
session and get its screen as C{session} frames.  There is no input path.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.gatewayharness import Gateway
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from tests.test_hub import FakeLink, ReviewerSocket, start_hub
from wraith_conch.approval.hub import Hub
from wraith_conch.approval.interfaces import Decision
from wraith_conch.approval.live import LiveScreens
from wraith_conch.testing import ScriptedApprover


def of_type(link: FakeLink, kind: str) -> list[dict]:
    return [m for m in link.sent if m["type"] == kind]


class HubLiveViewTests(SynchronousTestCase):
    def setUp(self):
        self.hub = Hub()
        self.bob = FakeLink()
        self.hub.reviewer_connected(self.bob, "bob")
        self.carol = FakeLink()
        self.hub.reviewer_connected(self.carol, "carol")

    def watch(self, link, session):
        self.hub.reviewer_frame(link, f'{{"type": "watch", "session": {session}}}', False, 0.0)

    def test_snapshot_lists_live_sessions(self):
        self.assertEqual(self.bob.sent[0]["sessions"], [])
        self.hub.session_output("s-1.0", b"$ ", (80, 24))
        late = FakeLink()
        self.hub.reviewer_connected(late, "dave")
        self.assertEqual(late.sent[0]["sessions"], ["s-1.0"])

    def test_watch_follows_the_screen_until_the_session_ends(self):
        self.hub.session_output("s-1.0", b"alice@db1:~$ ls\r\nfile\r\nalice@db1:~$ ", (40, 5))
        self.hub.flush_sessions()
        self.assertEqual(of_type(self.bob, "sessions")[-1]["sessions"], ["s-1.0"])
        self.watch(self.bob, '"s-1.0"')
        [first] = of_type(self.bob, "session")
        self.assertEqual(first["session"], "s-1.0")
        self.assertTrue(first["live"])
        self.assertEqual(first["lines"], ["alice@db1:~$ ls", "file", "alice@db1:~$", "", ""])

        self.hub.session_output("s-1.0", b"uptime", (40, 5))
        self.hub.session_output("s-1.0", b"\r\n up 3 days\r\n", (40, 5))
        self.hub.flush_sessions()  # changes gather: one frame
        [_, second] = of_type(self.bob, "session")
        self.assertEqual(second["lines"][2:4], ["alice@db1:~$ uptime", " up 3 days"])
        self.assertEqual(of_type(self.carol, "session"), [])  # not watching

        self.hub.session_output("s-1.0", None)
        self.hub.flush_sessions()
        last = of_type(self.bob, "session")[-1]
        self.assertFalse(last["live"])
        self.assertEqual(last["lines"][3], " up 3 days")
        self.assertEqual(of_type(self.carol, "sessions")[-1]["sessions"], [])
        # The watch ended with the session.
        self.hub.session_output("s-1.0", b"again", None)
        self.hub.flush_sessions()
        self.assertEqual(len(of_type(self.bob, "session")), 3)

    def test_unknown_session_and_unwatch(self):
        self.watch(self.bob, '"s-nope.0"')
        self.assertEqual(
            of_type(self.bob, "session"),
            [{"type": "session", "session": "s-nope.0", "live": False, "lines": []}],
        )
        self.hub.session_output("s-2.0", b"x", None)
        self.watch(self.bob, '"s-2.0"')
        self.watch(self.bob, "null")
        self.hub.session_output("s-2.0", b"y", None)
        self.hub.flush_sessions()
        self.assertEqual(len(of_type(self.bob, "session")), 2)

    def test_bad_watch_and_no_input_path(self):
        self.watch(self.bob, '"bad session!"')
        self.watch(self.bob, "42")
        self.hub.reviewer_frame(
            self.bob, '{"type": "input", "session": "s-1.0", "data": "rm -rf /"}', False, 0.0
        )
        errors = of_type(self.bob, "error")
        self.assertEqual(len(errors), 3)
        self.assertIn("session", errors[0]["error"])
        self.assertEqual(of_type(self.bob, "session"), [])

    def test_resize_and_limit(self):
        live = LiveScreens(max_sessions=1)
        live.output("a", b"hi", (10, 2))
        live.output("a", b"", (20, 3))
        self.assertEqual(live.lines("a"), ["hi", "", ""])
        live.output("b", b"dropped", None)
        self.assertIsNone(live.lines("b"))
        self.assertEqual(live.dropped, 1)


class GatewayLiveViewTests(TestCase):
    """A real gateway and sshd in this process, a real hub, a real reviewer socket."""

    timeout = 60

    @defer.inlineCallbacks
    def test_reviewer_watches_an_exec_session(self):
        sshd = start_sshd(self)
        service = start_hub(self)
        approver = ScriptedApprover(lambda request: Decision.approve("ok", "test"))
        gateway = Gateway(self, sshd, approver, session_watch=service.session_watch)
        reviewer = yield ReviewerSocket.open(self, service)
        yield reviewer.of_type("snapshot")
        running = spawn_ssh(
            reactor, gateway.ssh_argv("echo first-line; sleep 2; echo second-line; sleep 1")
        )
        listed = yield reviewer.next(lambda m: m.get("type") == "sessions" and m["sessions"])
        [session] = listed["sessions"]
        self.assertRegex(session, r"^s-[0-9a-f]{8}\.\d+$")
        reviewer.protocol.sendMessage(
            f'{{"type": "watch", "session": "{session}"}}'.encode(), isBinary=False
        )
        seen = yield reviewer.next(
            lambda m: m.get("type") == "session" and "second-line" in m["lines"], timeout=10
        )
        self.assertTrue(seen["live"])
        self.assertEqual(seen["lines"][0], "first-line")
        ended = yield reviewer.next(
            lambda m: m.get("type") == "session" and not m["live"], timeout=10
        )
        self.assertEqual(ended["lines"][:2], ["first-line", "second-line"])
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertEqual(service.hub.live.sessions(), [])
