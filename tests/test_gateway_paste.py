"""
Bracketed pastes in an interactive shell through the gateway: real C{ssh -tt}
in a real terminal (tmux, C{paste-buffer -p}), real bash 5 on a real sshd.

A multi-line paste is one line to bash (readline inserts the pasted newlines
and runs every line at the next Enter), so it is one request, and the shell
must never be left waiting for the end of a paste.  Each command has a
visible side effect (a file in the target user's home): the tests check what
actually ran, not what was printed.
"""

from __future__ import annotations

import os
import uuid

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import interactive_ssh
from tests.sshd import start_sshd
from tests.test_gateway_interactive import created
from wraith_conch.approval.interfaces import Decision
from wraith_conch.testing import ScriptedApprover

PROMPT = "wraith$ "


class PasteTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover()
        self.gateway = Gateway(self, self.sshd, self.approver)
        self.home = home_of(self.sshd)
        self.tag = uuid.uuid4().hex[:8]

    def marker(self, name: str) -> str:
        path = os.path.join(self.home, f"{name}-{self.tag}")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path

    @defer.inlineCallbacks
    def open_terminal(self):
        self.term = interactive_ssh(self, self.gateway.ssh_argv(extra=["-tt"]))
        yield self.term.wait_for_deferred(reactor, PROMPT, timeout=15)

    @defer.inlineCallbacks
    def paste_and_enter(self, data: bytes, shown: str):
        """Paste, wait until the echo shows C{shown}, press Enter: the request."""
        self.term.paste(data)
        yield self.term.wait_for_deferred(reactor, shown)
        arrived = self.approver.next_request()
        self.term.send_keys("Enter")
        request = yield arrived
        return request

    @defer.inlineCallbacks
    def test_approved_multi_line_paste_runs_every_line(self):
        first, second = self.marker("first"), self.marker("second")
        yield self.open_terminal()
        request = yield self.paste_and_enter(
            f"touch {first}\ntouch {second}\n".encode(), f"touch {second}"
        )
        self.assertEqual(request.command, f"touch {first}\ntouch {second}\n")
        self.assertEqual(request.typed, request.command)
        self.assertFalse(request.mismatch)
        self.assertFalse(os.path.exists(first) or os.path.exists(second))
        self.approver.decide(request.id, Decision.approve())
        yield created(first)
        yield created(second)
        self.assertEqual(len(self.approver.requests), 1)
        # Not wedged in paste mode: the next line is a request of its own.
        third = self.marker("third")
        arrived = self.approver.next_request()
        self.term.send_line(f"touch {third}")
        request = yield arrived
        self.assertEqual((request.command, request.mismatch), (f"touch {third}", False))
        self.approver.decide(request.id, Decision.approve())
        yield created(third)

    @defer.inlineCallbacks
    def test_denied_multi_line_paste_runs_nothing(self):
        first, second, after = self.marker("first"), self.marker("second"), self.marker("after")
        yield self.open_terminal()
        request = yield self.paste_and_enter(
            f"touch {first}\ntouch {second}".encode(), f"touch {second}"
        )
        self.assertEqual(request.command, f"touch {first}\ntouch {second}")
        self.approver.decide(request.id, Decision.deny("one line at a time"))
        yield self.term.wait_for_deferred(reactor, "wraith: denied: one line at a time")
        arrived = self.approver.next_request()
        self.term.send_line(f"touch {after}")
        request = yield arrived
        self.assertEqual((request.command, request.mismatch), (f"touch {after}", False))
        self.approver.decide(request.id, Decision.approve())
        yield created(after)
        self.assertFalse(os.path.exists(first) or os.path.exists(second))
        # Ctrl-C dropped the whole pasted line: it is not in the history either
        # (the one match is this command itself).
        arrived = self.approver.next_request()
        self.term.send_line(f"history | grep -c first-{self.tag}")
        request = yield arrived
        self.approver.decide(request.id, Decision.approve())
        yield self.term.wait_for_deferred(reactor, f"grep -c first-{self.tag}\n1\n")

    @defer.inlineCallbacks
    def test_paste_with_control_characters_is_refused(self):
        escaped, interrupted, after = (
            self.marker("escaped"),
            self.marker("interrupted"),
            self.marker("after"),
        )
        yield self.open_terminal()
        self.term.paste(f"touch {escaped}\x1b[31m\n".encode())
        self.term.paste(f"touch {interrupted}\x03\n".encode())
        # Nothing reached the target: the line is empty, Enter passes unasked.
        arrived = self.approver.next_request()
        self.term.send_line(f"touch {after}")
        request = yield arrived
        self.assertEqual((request.command, request.typed), (f"touch {after}",) * 2)
        self.approver.decide(request.id, Decision.approve())
        yield created(after)
        self.assertEqual(len(self.approver.requests), 1)
        self.assertFalse(os.path.exists(escaped) or os.path.exists(interrupted))
        self.assertNotIn("touch", self.term.screen().split(f"touch {after}")[0])

    @defer.inlineCallbacks
    def test_single_line_paste(self):
        marker = self.marker("single")
        yield self.open_terminal()
        request = yield self.paste_and_enter(f"touch {marker}".encode(), f"touch {marker}")
        self.assertEqual((request.command, request.typed), (f"touch {marker}",) * 2)
        self.assertFalse(request.mismatch)
        self.approver.decide(request.id, Decision.approve())
        yield created(marker)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(self.approver.requests), 1)

    @defer.inlineCallbacks
    def test_forged_paste_to_a_program_without_bracketed_paste_is_refused(self):
        """
        sh (dash) reads lines from the tty: a pasted CR would run a line there.
        Its terminal is not in bracketed paste mode, so the terminal never
        brackets a paste: markers sent anyway are refused with the paste.
        """
        first, second, after = self.marker("first"), self.marker("second"), self.marker("after")
        yield self.open_terminal()
        arrived = self.approver.next_request()
        self.term.send_line("PS1='dash> ' sh")
        request = yield arrived
        self.approver.decide(request.id, Decision.approve())
        yield self.term.wait_for_deferred(reactor, "dash> ")
        self.term.send_bytes(f"\x1b[200~touch {first}\rtouch {second}\r\x1b[201~".encode())
        arrived = self.approver.next_request()
        self.term.send_line(f"touch {after}")
        request = yield arrived
        self.assertEqual(request.command, f"touch {after}")
        self.approver.decide(request.id, Decision.approve())
        yield created(after)
        self.assertFalse(os.path.exists(first) or os.path.exists(second))
