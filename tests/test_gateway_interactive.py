"""
Interactive shells through the gateway: real C{ssh -tt} in a real terminal
(tmux), real bash on a real sshd, every line held by the gate.

Each command under test has a visible side effect (a file in the target
user's home) so the tests check what actually ran, not what was printed.
"""

from __future__ import annotations

import os
import uuid

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import interactive_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from wraith_conch.approval.interfaces import Decision
from wraith_conch.testing import ScriptedApprover, approve_all_except

PROMPT = "wraith$ "


def pause(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


def terminal_sizes(gateway: Gateway) -> list[tuple[int, int]]:
    """The (columns, rows) the gateway holds for every PTY session channel."""
    return [
        channel.terminal_size
        for connection in gateway.port.factory.live
        for channel in getattr(connection.service, "channels", {}).values()
        if getattr(channel, "terminal_size", None) is not None
    ]


def last_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def created(path: str) -> defer.Deferred:
    return wait_until(lambda: os.path.exists(path), f"{path} to be created", timeout=15)


class InteractiveTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)
        self.home = home_of(self.sshd)
        self.tag = uuid.uuid4().hex[:8]

    def marker(self, name: str) -> str:
        path = os.path.join(self.home, f"{name}-{self.tag}")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path

    def open_terminal(self, width=100, height=30):
        self.term = interactive_ssh(
            self, self.gateway.ssh_argv(extra=["-tt"]), width=width, height=height
        )
        return self.term.wait_for_deferred(reactor, PROMPT, timeout=15)

    @defer.inlineCallbacks
    def test_prompt_echo_resize_and_exit_status(self):
        yield self.open_terminal()
        self.term.send_line("echo hello-$((6*7))")
        yield self.term.wait_for_deferred(reactor, "hello-42")
        self.term.resize(120, 40)
        # The gateway relays the window-change before the next line's bytes.
        yield wait_until(
            lambda: terminal_sizes(self.gateway) == [(120, 40)], "the resize", timeout=10
        )
        self.term.send_line("stty size")
        yield self.term.wait_for_deferred(reactor, "40 120")
        self.term.send_line("exit 3")
        status = yield self.term.wait_exit_deferred(reactor, timeout=15)
        self.assertEqual(status, 3)
        commands = [r.command for r in self.approver.requests]
        self.assertEqual(commands, ["echo hello-$((6*7))", "stty size", "exit 3"])
        self.assertTrue(all(r.kind == "shell" for r in self.approver.requests))

    @defer.inlineCallbacks
    def test_approve_deny_approve(self):
        first, denied, third = self.marker("one"), self.marker("denied"), self.marker("three")
        yield self.open_terminal()
        self.term.send_line(f"touch {first}")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}")
        yield created(first)
        self.term.send_line(f"touch {denied} # DENYME")
        yield self.term.wait_for_deferred(reactor, "wraith: denied: contains 'DENYME'")
        self.term.send_line(f"touch {third}")
        yield created(third)
        self.assertFalse(os.path.exists(denied))
        # The denied line is not in the shell's history.
        self.term.send_line("history | grep -c DENYME > /dev/null || echo no-denied-in-history")
        yield self.term.wait_for_deferred(reactor, "no-denied-in-history")

    @defer.inlineCallbacks
    def test_denied_line_discarded_with_cursor_in_middle(self):
        denied = self.marker("middle")
        yield self.open_terminal()
        self.term.send_text(f"touch {denied} # DENYME")
        for _ in range(len(" # DENYME")):
            self.term.send_keys("Left")
        yield pause(0.2)
        self.term.send_keys("Enter")
        yield self.term.wait_for_deferred(reactor, "wraith: denied")
        yield wait_until(
            lambda: last_line(self.term.screen()).rstrip() == PROMPT.rstrip(),
            "the fresh prompt",
            timeout=10,
        )
        # Enter on the fresh prompt runs nothing left over from the denied line.
        self.term.send_keys("Enter")
        yield pause(0.5)
        self.assertFalse(os.path.exists(denied))
        self.assertEqual(
            len(self.approver.requests), 1, [(r.command, r.typed) for r in self.approver.requests]
        )
        [request] = self.approver.requests
        self.assertEqual(request.command, f"touch {denied} # DENYME")

    @defer.inlineCallbacks
    def test_history_recall_is_reviewed_as_shown(self):
        marker = self.marker("recalled")
        yield self.open_terminal()
        self.term.send_line(f"touch {marker}")
        yield created(marker)
        # Recall only once the shell is back at its prompt.
        yield self.term.wait_for_deferred(reactor, f"touch {marker}\n{PROMPT}")
        os.unlink(marker)
        self.term.send_keys("Up")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}touch {marker}")
        self.term.send_keys("Enter")
        yield created(marker)
        recalled = self.approver.requests[-1]
        self.assertEqual(recalled.command, f"touch {marker}")
        self.assertEqual(recalled.typed, "")
        self.assertTrue(recalled.mismatch)

    @defer.inlineCallbacks
    def test_pending_request_holds_and_ctrl_c_cancels(self):
        approver = ScriptedApprover()
        gateway = Gateway(self, self.sshd, approver)
        marker = self.marker("pending")
        self.term = interactive_ssh(self, gateway.ssh_argv(extra=["-tt"]))
        yield self.term.wait_for_deferred(reactor, PROMPT, timeout=15)
        arrived = approver.next_request()
        self.term.send_line(f"touch {marker}")
        request = yield arrived
        self.term.send_text("echo typed-ahead")
        yield self.term.wait_for_deferred(reactor, "discarded")
        self.term.send_keys("C-c")
        yield self.term.wait_for_deferred(reactor, "wraith: denied")
        self.assertEqual(approver.cancelled[0][0], request.id)
        yield pause(0.3)
        self.assertFalse(os.path.exists(marker))
        # A late approval of the cancelled request changes nothing.
        approver.decide(request.id, Decision.approve("late"))
        yield pause(0.3)
        self.assertFalse(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_changed_prompt_and_alternate_screen_open_no_passthrough(self):
        """
        An approved command that changes PS1 and leaves the terminal in the
        alternate screen must not let the next line through unreviewed.
        """
        marker = self.marker("after-ps1")
        yield self.open_terminal()
        self.term.send_line("PS1='other$ '; printf '\\033[?1049h'")
        yield self.term.wait_for_deferred(reactor, "other$ ")
        arrived = len(self.approver.requests)
        self.term.send_line(f"touch {marker}")
        yield wait_until(
            lambda: len(self.approver.requests) > arrived, "the next request", timeout=15
        )
        self.assertEqual(self.approver.requests[-1].command, f"touch {marker}")
