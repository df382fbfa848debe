"""
L{ShellGate} with in-memory fakes: a L{Clock}, a L{ScriptedApprover}, and the
target's output fed by hand as bash 5.2 prints it.  The end-to-end tests with
a real sshd, bash and ssh are in tests/test_gateway_interactive.py.
"""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.approval.interfaces import CommandRequest, Decision
from wraith_conch.interception.gate import CTRL_C, PASTE_QUIET_LIMIT, SETTLE_LIMIT, ShellGate
from wraith_conch.interception.linebuffer import MAX_PASTE, PASTE_BEGIN, PASTE_END
from wraith_conch.interception.screen import Screen
from wraith_conch.testing import ScriptedApprover

PROMPT = b"\x1b[?2004hP$ "


def paste(text: bytes) -> bytes:
    return PASTE_BEGIN + text + PASTE_END


def paste_echo(*lines: bytes) -> bytes:
    """What bash 5.2 prints for a pasted text: each line in reverse video, newlines as CR LF."""
    return b"\r\n\r".join(b"\x1b[7m" + line + b"\x1b[27m" if line else b"" for line in lines)


class ShellGatePasteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.approver = ScriptedApprover()
        self.sent: list[bytes] = []
        self.told: list[bytes] = []
        self.mismatches: list[bool] = []
        self.gate = self.make_gate(self.approver)

    def make_gate(self, approver: ScriptedApprover, **extra) -> ShellGate:
        gate = ShellGate(
            clock=self.clock,
            approver=approver,
            to_target=self.sent.append,
            to_operator=self.told.append,
            make_request=self._request,
            to_target_eof=lambda: None,
            screen=Screen(80, 24),
            **extra,
        )
        gate.target_output(PROMPT)
        return gate

    def _request(self, command: str, typed: str, mismatch: bool) -> CommandRequest:
        self.mismatches.append(mismatch)
        request = CommandRequest.new(
            session="s", user="u", client="c", target="t", kind="shell",
            command=command, typed=typed, created=0.0,
        )  # fmt: skip
        return attrs.evolve(request, mismatch=mismatch)

    def settle(self) -> None:
        self.clock.advance(SETTLE_LIMIT)

    def test_multi_line_paste_is_one_request_and_approval_runs_it(self) -> None:
        self.gate.operator_input(paste(b"echo one\recho two\r"))
        self.assertEqual(self.sent, [paste(b"echo one\recho two\r")])
        self.gate.target_output(paste_echo(b"echo one", b"echo two", b""))
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual(request.command, "echo one\necho two\n")
        self.assertEqual(request.typed, "echo one\necho two\n")
        self.assertEqual(self.mismatches, [False])
        self.assertEqual(len(self.sent), 1)  # Enter held
        self.approver.decide(request.id, Decision.approve())
        self.assertEqual(self.sent[1:], [b"\r"])

    def test_denied_paste_is_discarded_and_the_shell_stays_usable(self) -> None:
        self.gate.operator_input(paste(b"touch a\ntouch b"))
        self.gate.target_output(paste_echo(b"touch a", b"touch b"))
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual((request.command, self.mismatches), ("touch a\ntouch b", [False]))
        self.approver.decide(request.id, Decision.deny("no pastes"))
        self.assertEqual(self.sent[1:], [CTRL_C])
        self.assertIn(b"\r\nwraith: denied: no pastes\r\n", self.told)
        # bash prints ^C and a fresh prompt; the next line is a line of its own.
        self.gate.target_output(b"^C\r\r\n" + PROMPT)
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\r")
        self.assertEqual(self.approver.requests[1].command, "ls")
        self.assertEqual(self.mismatches, [False, False])

    def test_paste_split_across_packets(self) -> None:
        data = paste(b"echo one\necho two")
        for i in range(len(data) - 1):
            self.gate.operator_input(data[i : i + 1])
            self.assertEqual(self.sent, [])
        self.gate.operator_input(data[-1:])
        self.assertEqual(self.sent, [data])

    def test_single_line_paste_as_before(self) -> None:
        self.gate.operator_input(paste(b"echo hi"))
        self.gate.target_output(paste_echo(b"echo hi"))
        self.gate.operator_input(b"\r")
        [request] = self.approver.requests  # the model is sure: no settling
        self.assertEqual((request.command, request.typed), ("echo hi", "echo hi"))
        self.assertEqual(self.mismatches, [False])

    def test_paste_with_control_characters_is_refused(self) -> None:
        for content in (b"echo a\x1b[31m\nrm x", b"echo a\x03\nrm x", b"a\x7f", b"\xff"):
            self.gate.operator_input(paste(content))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.told, [b"\x07"] * 4)
        self.gate.operator_input(b"\r")  # the line is still empty: passes unasked
        self.assertEqual((self.sent, self.approver.requests), ([b"\r"], []))

    def test_over_long_paste_is_refused(self) -> None:
        self.gate.operator_input(PASTE_BEGIN + b"x" * (MAX_PASTE + 10))
        self.gate.operator_input(b"y\ry" * 1000 + PASTE_END + b"ls")
        self.assertEqual(self.sent, [b"ls"])
        self.assertEqual(self.told, [b"\x07"])

    def test_tab_in_a_paste_is_a_mismatch(self) -> None:
        """readline shows a pasted TAB as spaces up to the next tab stop."""
        self.gate.operator_input(paste(b"ec\tho a\nls"))
        self.gate.target_output(paste_echo(b"ec   ho a", b"ls"))
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual((request.command, request.typed), ("ec   ho a\nls", "ec\tho a\nls"))
        self.assertEqual(self.mismatches, [True])

    def test_screen_that_differs_from_the_paste_is_a_mismatch(self) -> None:
        self.gate.operator_input(paste(b"echo one\necho two"))
        self.gate.target_output(paste_echo(b"echo one", b"echo TWO"))
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual(request.command, "echo one\necho TWO")
        self.assertEqual(self.mismatches, [True])

    def test_paste_inserted_at_the_cursor(self) -> None:
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\x01" + paste(b"cd /\n"))
        # bash 5.2: back to the start, the paste, then the rest of the line redrawn.
        self.gate.target_output(b"\r\x1b[C\x1b[C\x1b[C" + paste_echo(b"cd /", b"") + b"ls\r")
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual((request.command, request.typed), ("cd /\nls", "cd /\nls"))
        self.assertEqual(self.mismatches, [False])

    def test_unfinished_paste_is_given_up(self) -> None:
        self.gate.operator_input(PASTE_BEGIN + b"echo one\necho")
        self.clock.advance(PASTE_QUIET_LIMIT - 1)
        self.gate.operator_input(b" two")  # still arriving
        self.clock.advance(PASTE_QUIET_LIMIT - 1)
        self.assertEqual(self.told, [])
        self.clock.advance(1)
        self.assertEqual((self.sent, self.told), ([], [b"\x07"]))
        self.gate.operator_input(b"pwd")
        self.assertEqual(self.sent, [b"pwd"])

    def test_paste_after_a_held_enter_does_not_swallow_later_keys(self) -> None:
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\r" + PASTE_BEGIN + b"rm")
        [request] = self.approver.requests
        self.gate.operator_input(b" -rf x\n" + PASTE_END)  # type-ahead: discarded
        self.approver.decide(request.id, Decision.approve())
        self.assertEqual(self.sent, [b"ls", b"\r"])
        self.gate.target_output(b"\r\nfile\r\n" + PROMPT)
        self.gate.operator_input(b"pwd")
        self.assertEqual(self.sent[2:], [b"pwd"])

    def test_empty_paste(self) -> None:
        self.gate.operator_input(paste(b""))
        self.assertEqual(self.sent, [paste(b"")])
        self.gate.operator_input(b"\r")
        self.settle()
        # Keys reached the target, the screen shows an empty line: nothing to ask.
        self.assertEqual((self.sent[1:], self.approver.requests), ([b"\r"], []))

    def test_close_cancels_the_paste_timer(self) -> None:
        self.gate.operator_input(PASTE_BEGIN + b"x")
        self.gate.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paste_refused_while_the_target_does_not_read_bracketed_pastes(self) -> None:
        """bash leaves bracketed paste mode when it runs a line; sh, cat, read never enter it."""
        self.gate.operator_input(b"sh")
        self.gate.target_output(b"sh")
        self.gate.operator_input(b"\r")
        [request] = self.approver.requests
        self.approver.decide(request.id, Decision.approve())
        self.gate.target_output(b"\r\n\x1b[?2004l\r$ ")
        self.gate.operator_input(paste(b"touch a\rtouch b\r"))
        self.assertEqual(self.sent, [b"sh", b"\r"])
        self.assertEqual(self.told[-1:], [b"\x07"])
        self.assertEqual(self.approver.requests, [request])

    def test_keys_typed_without_echo_stay_hidden_above_old_rows(self) -> None:
        """Rows left below a password prompt are read too; the keys are still not sent."""
        self.gate.target_output(b"\r\nPassword: \r\n\r\nold output\x1b[2;11H")
        self.gate.operator_input(b"secret")
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual(request.command, "\n\nold output")
        self.assertEqual(request.typed, "<6 characters typed without echo>")
        self.assertEqual(self.mismatches, [True])

    def test_output_below_a_waiting_line_does_not_void_its_approval(self) -> None:
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\r")
        [request] = self.approver.requests
        # A background job writes two rows down and puts the cursor back.
        self.gate.target_output(b"\x1b7\r\n\r\nbackground noise\x1b8")
        self.approver.decide(request.id, Decision.approve())
        self.assertEqual(self.sent, [b"ls", b"\r"])

    def test_a_changed_row_of_a_waiting_line_voids_its_approval(self) -> None:
        self.gate.operator_input(paste(b"echo one\necho two"))
        self.gate.target_output(paste_echo(b"echo one", b"echo two"))
        self.gate.operator_input(b"\r")
        self.settle()
        [request] = self.approver.requests
        self.assertEqual(request.command, "echo one\necho two")
        # Something rewrites the second row while the line waits.
        self.gate.target_output(b"\rrm -rf ~\x1b[K")
        self.approver.decide(request.id, Decision.approve())
        self.assertEqual(self.sent[1:], [CTRL_C])
        self.assertIn(
            b"\r\nwraith: denied: the line changed while it waited for approval\r\n", self.told
        )

    def test_a_decision_made_at_once_paints_no_waiting_notice(self) -> None:
        # As the policy decides: the Deferred has fired when it is returned.
        self.gate = self.make_gate(
            ScriptedApprover(lambda request: Decision.approve(reviewer="policy"))
        )
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\r")
        self.assertEqual(self.sent, [b"ls", b"\r"])
        self.assertEqual(self.told, [])

    def test_a_waiting_request_paints_the_notice_and_clears_it(self) -> None:
        self.gate.operator_input(b"ls")
        self.gate.target_output(b"ls")
        self.gate.operator_input(b"\r")
        [notice] = self.told
        self.assertIn(b"waiting for approval", notice)
        self.approver.decide(self.approver.requests[0].id, Decision.approve())
        self.assertEqual(self.sent, [b"ls", b"\r"])
        self.assertEqual(self.told[1:], [b"\r\x1b[K\x1b8"])

    def test_an_approved_key_is_flushed_to_the_target_a_denial_is_not(self) -> None:
        flushed: list[list[bytes]] = []
        self.gate = self.make_gate(
            self.approver, flush_target=lambda: flushed.append(list(self.sent))
        )
        for command, decision in (("ls", Decision.approve()), ("rm x", Decision.deny("no"))):
            self.gate.operator_input(command.encode())
            self.gate.target_output(command.encode())
            self.gate.operator_input(b"\r")
            self.approver.decide(self.approver.requests[-1].id, decision)
            self.gate.target_output(b"\r\n" + PROMPT)
        # Flushed once, right after the released Enter was written.
        self.assertEqual(flushed, [[b"ls", b"\r"]])
