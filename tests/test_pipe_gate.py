"""
The gate of shells without a PTY: the reviewed line is exactly the bytes
bash will read, split at newlines only.
"""

from __future__ import annotations

import os
import uuid

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from wraith_conch.approval.interfaces import CommandRequest, Decision
from wraith_conch.interception.gate import PipeGate
from wraith_conch.testing import ScriptedApprover, approve_all_except


class PipeGateUnitTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.sent: list[bytes] = []
        self.told: list[bytes] = []
        self.eofs = 0
        self.approver = ScriptedApprover()
        self.gate = PipeGate(
            approver=self.approver,
            to_target=self.sent.append,
            to_operator=self.told.append,
            to_target_eof=self._eof,
            make_request=lambda command, typed, mismatch: CommandRequest.new(
                session="s", user="u", client="c", target="t", kind="shell",
                command=command, typed=typed, created=0.0,
            ),
        )  # fmt: skip

    def _eof(self):
        self.eofs += 1

    def test_editing_keys_do_not_hide_the_command(self):
        """Without a tty, Ctrl-U is just a byte: bash would run all of it."""
        self.gate.operator_input(b"rm -rf ~/x #\x15echo hi\n")
        [request] = self.approver.requests
        self.assertEqual(request.command, "rm -rf ~/x #\x15echo hi")
        self.assertEqual(self.sent, [])

    def test_nothing_sent_before_approval_and_carriage_return_is_not_a_line_end(self):
        self.gate.operator_input(b"touch a\rtouch b\nls\n")
        [first] = self.approver.requests
        self.assertEqual(first.command, "touch a\rtouch b")
        self.assertEqual(self.sent, [])
        self.approver.decide(first.id, Decision.approve())
        self.assertEqual(self.sent, [b"touch a\rtouch b\n"])
        second = self.approver.requests[1]
        self.approver.decide(second.id, Decision.deny("no"))
        self.assertEqual(self.sent, [b"touch a\rtouch b\n"])
        self.assertIn(b"wraith: denied: no\n", self.told)

    def test_eof_waits_for_held_lines_and_drops_an_unterminated_line(self):
        self.gate.operator_input(b"echo one\necho two")
        self.gate.operator_eof()
        self.assertEqual(self.eofs, 0)
        self.approver.decide(self.approver.requests[0].id, Decision.approve())
        self.assertEqual(self.sent, [b"echo one\n"])
        self.assertEqual(self.eofs, 1)
        self.assertIn(b"wraith: the last line had no newline and was discarded\n", self.told)

    def test_blank_lines_pass_and_close_cancels(self):
        self.gate.operator_input(b"\n  \nsleep 1\n")
        self.assertEqual(self.sent, [b"\n", b"  \n"])
        self.gate.close()
        self.assertEqual(self.approver.cancelled[0][1], "session closed")


class PipedShellTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)

    @defer.inlineCallbacks
    def test_piped_script_each_line_reviewed(self):
        tag = uuid.uuid4().hex[:8]
        home = home_of(self.sshd)
        ran, denied = os.path.join(home, f"ran-{tag}"), os.path.join(home, f"denied-{tag}")
        script = f"touch {ran}\ntouch {denied} # DENYME\necho done\n".encode()
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv(extra=["-T"]), stdin=script)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), b"done")
        self.assertIn(b"wraith: denied: contains 'DENYME'", err)
        self.assertTrue(os.path.exists(ran))
        self.assertFalse(os.path.exists(denied))
        self.assertEqual(
            [r.command for r in self.approver.requests],
            [f"touch {ran}", f"touch {denied} # DENYME", "echo done"],
        )
