"""
The issue-3 test list, end to end: real C{ssh}/C{sftp} (in tmux for shells),
the gateway in this process with the real L{ApprovalClient} as its approver,
a real WebSocket approval service written from PROTOCOL.md
(L{tests.approval_service}), and a real sshd with real bash behind it.

Every command under test creates a file in the target user's home, so the
tests check what actually ran, not what was printed.  The service decides by
hand unless a test gives it a rule, so each test controls when a command may
run.  Every wait is bounded; "it did not run" checks give a wrongly released
command L{GRACE} seconds, after a ping/pong round trip where frames matter.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.approval_service import ApprovalService
from tests.gatewayharness import approval_client_gateway, home_of
from tests.operator import interactive_ssh, spawn_ssh
from tests.sshd import start_sshd

PROMPT = "wraith$ "
DISCARDED = "wraith: input typed while waiting for approval is discarded"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# How long a negative check ("it did not run") gives a wrongly released command.
GRACE = 0.3


def approve_all(request: dict) -> tuple[str, str]:
    return ("approve", "ok")


def pause(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(predicate, what: str, timeout: float = 10.0):
    """Poll C{predicate} on the reactor until it returns something true; return that."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield pause(0.05)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class EndToEndTestCase(unittest.TestCase):
    timeout = 45
    sshd_log_level = "DEBUG1"

    def setUp(self):
        self.sshd = start_sshd(self, log_level=self.sshd_log_level)
        self.home = home_of(self.sshd)
        self.tag = uuid.uuid4().hex[:8]
        self.service = ApprovalService()
        self.url = self.service.listen(reactor, self)

    def start_gateway(self, url: str | None = None, token: str | None = None, **overrides):
        self.gateway, self.client = approval_client_gateway(
            self, self.sshd, url or self.url, token=token, **overrides
        )
        return self.gateway

    # -- files on the target

    def marker(self, stem: str) -> str:
        """A file name unique to this test, relative to the login user's home."""
        name = f"{self.tag}-{stem}"
        path = os.path.join(self.home, name)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return name

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.home, name))

    def content(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.home, name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def created(self, name: str) -> defer.Deferred:
        return wait_until(lambda: self.exists(name), f"{name} to be created on the target")

    # -- the approval service

    def request(self, index: int, timeout: float = 10.0) -> defer.Deferred[dict]:
        """The request frame number C{index} the service received (0 is the first)."""
        d = wait_until(lambda: len(self.service.requests) > index, f"request #{index}", timeout)
        return d.addCallback(lambda _: self.service.requests[index])

    def decide(self, request: dict, decision: str, reason: str = "ok") -> None:
        self.service.decide(request["id"], decision, reason)

    # -- the operator's terminal

    @defer.inlineCallbacks
    def open_terminal(self, connected: bool = True):
        if connected:
            yield wait_until(lambda: self.client.connected, "the approval client to connect")
        self.term = interactive_ssh(self, self.gateway.ssh_argv(extra=["-tt"]))
        yield self.idle_prompt(timeout=15)

    def idle_prompt(self, timeout: float = 10.0) -> defer.Deferred:
        """Wait until the terminal's last line is an empty prompt."""
        d = wait_until(
            lambda: last_line(self.term.screen()).rstrip() == PROMPT.rstrip(),
            "an empty prompt",
            timeout,
        )

        def show_screen(failure):
            failure.trap(AssertionError)
            raise AssertionError(f"{failure.value}; screen:\n{self.term.screen().rstrip()}")

        return d.addErrback(show_screen)

    def tmux(self, *args: str, input: bytes | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.term.socket_name, *args],
            input=input,
            capture_output=True,
            timeout=10,
            check=True,
        )
        return done.stdout.decode().strip()

    def tmux_format(self, template: str) -> str:
        return self.tmux("display-message", "-p", "-t", "wraith", template)

    def paste(self, text: str) -> None:
        """Paste C{text} as a terminal does: bracketed, if the target asked for it."""
        self.tmux("load-buffer", "-b", "e2e", "-", input=text.encode())
        self.tmux("paste-buffer", "-p", "-d", "-b", "e2e", "-t", "wraith")

    @defer.inlineCallbacks
    def run_approved(self, line: str, index: int, name: str):
        """Type C{line}, check it is held until approved, approve it, see C{name} appear."""
        self.term.send_line(line)
        request = yield self.request(index)
        self.assertEqual(request["command"], line)
        self.assertFalse(self.exists(name))
        self.decide(request, "approve")
        yield self.created(name)
        yield self.idle_prompt()
        return request


class ShellTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_approve_deny_approve(self):
        one, denied, three = self.marker("one"), self.marker("denied"), self.marker("three")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(f"touch {one}")
        first = yield self.request(0)
        yield pause(GRACE)
        self.assertFalse(self.exists(one), "ran before its approval")
        self.decide(first, "approve")
        yield self.created(one)
        yield self.idle_prompt()

        self.term.send_line(f"touch {denied}")
        second = yield self.request(1)
        self.decide(second, "deny", "not this one")
        yield self.term.wait_for_deferred(reactor, "wraith: denied: not this one")
        yield self.idle_prompt()

        yield self.run_approved(f"touch {three}", 2, three)
        self.assertFalse(self.exists(denied))
        self.assertEqual(len(self.service.requests), 3)

        hello = self.service.frames[0]
        self.assertEqual(
            hello, {"type": "hello", "role": "gateway", "gateway": "gw-test", "version": 1}
        )
        self.assertEqual(
            (first["kind"], first["command"], first["typed"], first["mismatch"]),
            ("shell", f"touch {one}", f"touch {one}", False),
        )
        self.assertEqual(first["user"], self.sshd.user)
        self.assertEqual(first["target"], f"127.0.0.1:{self.sshd.port}")
        ids = [r["id"] for r in self.service.requests]
        self.assertEqual(len(set(ids)), 3)
        for request_id in ids:
            self.assertRegex(request_id, UUID4)

    @defer.inlineCallbacks
    def test_operator_sees_the_line_then_the_waiting_notice(self):
        shown = self.marker("shown")
        self.start_gateway()
        yield self.open_terminal()
        # Line and Enter in one write: Enter reaches the gate before the
        # target's echo, so the gate reads the line once the echo arrives.
        self.term.send_text(f"touch {shown}\r")
        request = yield self.request(0)
        self.assertEqual(request["command"], f"touch {shown}")
        # The notice goes below the echoed line, not ahead of it.
        yield self.term.wait_for_deferred(
            reactor, f"{PROMPT}touch {shown}\n[wraith] waiting for approval"
        )
        self.decide(request, "approve")
        yield self.created(shown)
        yield self.idle_prompt()
        screen = self.term.screen()
        self.assertIn(f"{PROMPT}touch {shown}\n{PROMPT}", screen)
        self.assertNotIn("waiting for approval", screen)

    @defer.inlineCallbacks
    def test_up_arrow_recall_then_edit(self):
        first, second = self.marker("up1"), self.marker("up2")
        self.start_gateway()
        yield self.open_terminal()
        yield self.run_approved(f"touch {first}", 0, first)
        self.term.send_keys("Up")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}touch {first}")
        self.term.send_keys("BSpace")
        self.term.send_text("2")
        self.term.send_keys("Enter")
        recalled = yield self.request(1)
        # What bash runs, as its line shows it; the keys alone cannot tell.
        self.assertEqual(recalled["command"], f"touch {second}")
        self.assertNotEqual(recalled["typed"], recalled["command"])
        self.assertTrue(recalled["mismatch"])
        self.assertFalse(self.exists(second))
        self.decide(recalled, "approve")
        yield self.created(second)

    @defer.inlineCallbacks
    def test_tab_completion(self):
        source, copy = self.marker("tabsource.txt"), self.marker("tabcopy")
        with open(os.path.join(self.home, source), "w") as f:
            f.write("completed\n")
        os.chmod(os.path.join(self.home, source), 0o644)
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_text(f"cp {self.tag}-tabs")
        self.term.send_keys("Tab")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}cp {source} ")
        self.term.send_text(copy)
        self.term.send_keys("Enter")
        request = yield self.request(0)
        self.assertEqual(request["command"], f"cp {source} {copy}")
        self.assertEqual(request["typed"], f"cp {self.tag}-tabs{copy}")
        self.assertTrue(request["mismatch"])
        self.assertFalse(self.exists(copy))
        self.decide(request, "approve")
        yield self.created(copy)
        self.assertEqual(self.content(copy), "completed\n")

    @defer.inlineCallbacks
    def test_ctrl_r_is_refused_with_a_bell(self):
        ran = self.marker("after-ctrl-r")
        self.start_gateway()
        yield self.open_terminal()
        self.assertEqual(self.tmux_format("#{window_bell_flag}"), "0")
        self.term.send_keys("C-r")
        yield wait_until(lambda: self.tmux_format("#{window_bell_flag}") == "1", "the bell")
        self.assertNotIn("reverse-i-search", self.term.screen())
        # Not forwarded: bash is not searching, so these keys are a plain line.
        yield self.run_approved(f"touch {ran}", 0, ran)
        self.assertFalse(self.service.requests[0]["mismatch"])
        self.assertEqual(len(self.service.requests), 1)

    @defer.inlineCallbacks
    def test_left_arrow_and_insert(self):
        inserted = self.marker("inserted")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_text(f"touch {self.tag}-insed")
        self.term.send_keys("Left", "Left")
        self.term.send_text("ert")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}touch {inserted}")
        self.term.send_keys("Enter")
        request = yield self.request(0)
        self.assertEqual(
            (request["command"], request["typed"], request["mismatch"]),
            (f"touch {inserted}", f"touch {inserted}", False),
        )
        self.decide(request, "approve")
        yield self.created(inserted)
        self.assertFalse(self.exists(f"{self.tag}-insed"))


class TypeAheadTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_pasted_lines_each_wait_and_the_second_is_discarded(self):
        first, second, later = self.marker("paste1"), self.marker("paste2"), self.marker("later")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_text(f"touch {first}\ntouch {second}\n")
        request = yield self.request(0)
        self.assertEqual(request["command"], f"touch {first}")
        yield self.term.wait_for_deferred(reactor, DISCARDED)
        yield pause(GRACE)
        self.assertFalse(self.exists(first), "the first pasted line ran before its approval")
        self.assertFalse(self.exists(second), "the second pasted line ran")
        self.decide(request, "approve")
        yield self.created(first)
        yield self.idle_prompt()
        yield pause(GRACE)
        self.assertFalse(self.exists(second), "the discarded line ran")
        self.assertEqual(len(self.service.requests), 1)
        # Nothing of the second line is left in the shell's line.
        yield self.run_approved(f"touch {later}", 1, later)

    @defer.inlineCallbacks
    def test_bracketed_paste_of_two_lines_runs_nothing_unreviewed(self):
        first, second, later = self.marker("bpaste1"), self.marker("bpaste2"), self.marker("later")
        self.start_gateway()
        yield self.open_terminal()
        # readline takes pasted newlines as text: nothing runs, nothing is
        # asked, until the Enter after the paste.
        self.paste(f"touch {first}\ntouch {second}\n")
        yield self.term.wait_for_deferred(reactor, f"touch {second}")
        yield pause(GRACE)
        self.assertEqual(self.service.requests, [])
        self.assertFalse(self.exists(first) or self.exists(second), "a pasted line ran")
        self.term.send_keys("Enter")
        request = yield self.request(0)
        # One request shows both lines, as the target's screen shows them.
        self.assertEqual(request["command"], f"touch {first}\ntouch {second}\n")
        self.assertFalse(request["mismatch"])
        yield pause(GRACE)
        self.assertFalse(self.exists(first) or self.exists(second), "ran before its approval")
        self.decide(request, "approve")
        yield self.created(first)
        yield self.created(second)
        yield self.idle_prompt()
        yield self.run_approved(f"touch {later}", 1, later)
        self.assertEqual(len(self.service.requests), 2)

    @defer.inlineCallbacks
    def test_type_ahead_during_a_pending_request_is_discarded(self):
        held, ahead = self.marker("held"), self.marker("ahead")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(f"touch {held}")
        request = yield self.request(0)
        self.term.send_line(f"touch {ahead}")
        # The notice takes the place of the waiting line, below the held line.
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}touch {held}\n{DISCARDED}")
        self.decide(request, "approve")
        yield self.created(held)
        yield self.idle_prompt()
        # ...and goes with it: nothing is left on the operator's new prompt line.
        self.assertIn(f"{PROMPT}touch {held}\n{PROMPT}\n", self.term.screen())
        # Enter on the (empty) line passes without a request and runs nothing.
        self.term.send_keys("Enter")
        yield pause(GRACE)
        yield self.idle_prompt()
        self.assertFalse(self.exists(ahead))
        self.assertEqual(len(self.service.requests), 1)

    @defer.inlineCallbacks
    def test_ctrl_c_cancels_the_pending_request(self):
        cancelled, after = self.marker("cancelled"), self.marker("after")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(f"touch {cancelled}")
        request = yield self.request(0)
        self.term.send_keys("C-c")
        yield wait_until(lambda: self.service.cancels, "a cancel frame")
        [cancel] = self.service.cancels
        self.assertEqual((cancel["type"], cancel["id"]), ("cancel", request["id"]))
        yield self.term.wait_for_deferred(reactor, "wraith: denied: the operator pressed Ctrl-C")
        yield self.idle_prompt()
        # A late approval of the cancelled request changes nothing.
        self.decide(request, "approve")
        yield self.service.round_trip()
        yield pause(GRACE)
        self.assertFalse(self.exists(cancelled))
        yield self.run_approved(f"touch {after}", 1, after)
        self.assertFalse(self.exists(cancelled))


class ExecTests(EndToEndTestCase):
    # At DEBUG3 sshd logs each command it runs.
    sshd_log_level = "DEBUG3"

    @defer.inlineCallbacks
    def test_exec_approved_and_denied(self):
        ran, denied = self.marker("exec-ran"), self.marker("exec-denied")
        self.service.rule = lambda r: (
            ("deny", "no exec today") if "DENYME" in r["command"] else ("approve", "fine")
        )
        gateway = self.start_gateway()
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv(f"touch {ran} && echo ran"))
        self.assertEqual((code, out), (0, b"ran\n"), err)
        self.assertTrue(self.exists(ran))
        # The log does show commands that reach the target...
        self.assertIn(f"touch {ran}", self.sshd.log())
        sessions_before = self.sshd.log().count("ctype session")
        self.assertGreater(sessions_before, 0)

        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv(f"touch {denied} # DENYME"))
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertIn(b"wraith: denied: no exec today", err)
        self.assertFalse(self.exists(denied))
        # ...and has no trace of the denied one: not even a session channel opened.
        log = self.sshd.log()
        self.assertNotIn(denied, log)
        self.assertNotIn("DENYME", log)
        self.assertEqual(log.count("ctype session"), sessions_before)

        kinds = [(r["kind"], r["command"], r["mismatch"]) for r in self.service.requests]
        self.assertEqual(
            kinds,
            [
                ("exec", f"touch {ran} && echo ran", False),
                ("exec", f"touch {denied} # DENYME", False),
            ],
        )

    def sftp(self, local: str, remote: str) -> defer.Deferred:
        options = self.gateway.ssh_argv()[1:-1]
        options[options.index("-p")] = "-P"
        argv = ["sftp", "-b", "-", *options, f"{self.sshd.user}@127.0.0.1"]
        return spawn_ssh(reactor, argv, stdin=f"put {local} {remote}\n".encode())

    @defer.inlineCallbacks
    def test_sftp_denied_then_approved(self):
        remote = self.marker("sftp-upload")
        local = os.path.abspath(self.mktemp())
        with open(local, "w") as f:
            f.write("uploaded\n")
        self.start_gateway()

        running = self.sftp(local, remote)
        request = yield self.request(0)
        self.assertEqual((request["kind"], request["command"]), ("subsystem", "sftp"))
        self.decide(request, "deny", "no file transfers")
        code, out, err = yield running
        self.assertNotEqual(code, 0)
        self.assertIn(b"wraith: denied: no file transfers", err)
        self.assertFalse(self.exists(remote))
        self.assertNotIn("subsystem request for sftp", self.sshd.log())

        running = self.sftp(local, remote)
        request = yield self.request(1)
        self.assertEqual((request["kind"], request["command"]), ("subsystem", "sftp"))
        self.assertFalse(self.exists(remote))
        self.decide(request, "approve")
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertEqual(self.content(remote), "uploaded\n")
        self.assertIn("subsystem request for sftp", self.sshd.log())


class ServiceFailureTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_unreachable_service_denies_at_expiry(self):
        shell, exec_ = self.marker("unreachable-shell"), self.marker("unreachable-exec")
        gateway = self.start_gateway(
            url=f"ws://127.0.0.1:{closed_port()}/", **{"approval-timeout": "2"}
        )
        yield self.open_terminal(connected=False)
        started = reactor.seconds()
        running = spawn_ssh(reactor, gateway.ssh_argv(f"touch {exec_}"))
        self.term.send_line(f"touch {shell}")
        yield self.term.wait_for_deferred(reactor, "wraith: denied: approval timed out")
        self.assertGreaterEqual(reactor.seconds() - started, 1.5)
        code, out, err = yield running
        self.assertEqual(code, 1)
        self.assertIn(b"wraith: denied: approval timed out", err)
        yield self.idle_prompt()
        self.assertFalse(self.exists(shell))
        self.assertFalse(self.exists(exec_))
        self.assertFalse(self.client.connected)
        # The session stays usable: typing reaches the shell.
        self.term.send_text("echo still-here")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}echo still-here")

    @defer.inlineCallbacks
    def test_restart_resends_the_pending_request(self):
        held = self.marker("across-restart")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(f"touch {held}")
        before = yield self.request(0)
        restarted = self.service.restart(reactor, self, down_for=0.3)
        yield wait_until(lambda: not self.client.connected, "the client to notice")
        yield restarted
        after = yield self.request(1)
        self.assertEqual(after, before)
        self.assertEqual(
            [frame["type"] for frame in self.service.frames],
            ["hello", "request", "hello", "request"],
        )
        self.assertFalse(self.exists(held))
        self.assertNotIn("denied", self.term.screen())
        self.decide(after, "approve")
        yield self.created(held)

    @defer.inlineCallbacks
    def test_junk_and_duplicate_decisions_change_nothing(self):
        counted = self.marker("counted")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(f"echo one >> {counted}")
        request = yield self.request(0)
        request_id = request["id"]
        [connection] = self.service.connections
        approve = {"type": "decision", "id": request_id, "decision": "approve", "reason": "x"}
        self.service.send_raw(b"this is not JSON {")
        self.service.send_raw(b"\x00\xff binary", binary=True)
        self.service.send_raw(json.dumps(approve).encode(), binary=True)
        self.service.send_json({**approve, "id": str(uuid.uuid4())})
        self.service.send_json({**approve, "decision": "APPROVE"})
        self.service.send_json({**approve, "decision": "approved"})
        self.service.send_json({**approve, "decision": True})
        self.service.send_json({"type": "decision", "id": request_id})
        self.service.send_json({"type": "decision", "decision": "approve"})
        self.service.send_json({**approve, "type": "Decision"})
        self.service.send_json({**approve, "reason": 5})
        self.service.send_json([approve])
        self.service.send_raw(
            f'{{"type": "decision", "id": "{request_id}", "decision": "deny",'
            f' "decision": "approve"}}'.encode()
        )
        yield self.service.round_trip()
        yield pause(GRACE)
        self.assertIsNone(self.content(counted), "junk approved the command")
        self.assertEqual(self.client.pending_ids(), [request_id])
        self.assertEqual(self.service.connections, [connection])
        self.assertNotIn("denied", self.term.screen())

        self.decide(request, "approve")
        yield self.created(counted)
        yield self.idle_prompt()
        # A second line waits; decisions for the first (already decided) id
        # neither release nor deny it.
        self.term.send_line(f"echo two >> {counted}")
        second = yield self.request(1)
        self.decide(request, "approve")
        self.decide(request, "deny")
        yield self.service.round_trip()
        yield pause(GRACE)
        self.assertEqual(self.content(counted), "one\n")
        self.assertEqual(self.client.pending_ids(), [second["id"]])
        # The first valid decision wins; later ones are ignored.
        self.decide(second, "approve")
        self.decide(second, "approve")
        self.decide(second, "deny")
        yield wait_until(lambda: self.content(counted) == "one\ntwo\n", "the second line to run")
        yield self.service.round_trip()
        yield self.idle_prompt()
        self.assertEqual(self.content(counted), "one\ntwo\n")
        self.assertNotIn("denied", self.term.screen())
        self.assertEqual(len(self.service.requests), 2)

    @defer.inlineCallbacks
    def test_wrong_token_is_refused_and_commands_expire(self):
        never = self.marker("wrong-token")
        self.service.token = "the-right-token"
        gateway = self.start_gateway(token="a-wrong-token", **{"approval-timeout": "2"})
        yield wait_until(lambda: self.service.refused >= 1, "the handshake to be refused")
        started = reactor.seconds()
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv(f"touch {never}"))
        self.assertGreaterEqual(reactor.seconds() - started, 1.5)
        self.assertEqual(code, 1)
        self.assertIn(b"wraith: denied: approval timed out", err)
        self.assertFalse(self.exists(never))
        self.assertFalse(self.client.connected)
        self.assertEqual((self.service.frames, self.service.connections), ([], []))


class MismatchPolicyTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_on_mismatch_deny_refuses_a_recalled_line_without_asking(self):
        recalled, after = self.marker("recalled"), self.marker("after")
        self.service.rule = approve_all
        self.start_gateway(**{"on-mismatch": "deny"})
        yield self.open_terminal()
        self.term.send_line(f"touch {recalled}")
        yield self.created(recalled)
        yield self.idle_prompt()
        os.unlink(os.path.join(self.home, recalled))
        self.term.send_keys("Up")
        yield self.term.wait_for_deferred(reactor, f"{PROMPT}touch {recalled}")
        self.term.send_keys("Enter")
        yield self.term.wait_for_deferred(
            reactor, "wraith: denied: the line on screen differs from the keys typed"
        )
        yield self.idle_prompt()
        yield self.service.round_trip()
        self.assertEqual(len(self.service.requests), 1)
        self.assertFalse(self.exists(recalled))
        # Typed lines still go to the service and run.
        self.term.send_line(f"touch {after}")
        yield self.created(after)
        self.assertEqual(len(self.service.requests), 2)


class FullScreenTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_pager_gets_keys_then_the_prompt_is_gated_again(self):
        after = self.marker("after-less")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line("less /etc/hostname")
        request = yield self.request(0)
        self.decide(request, "approve")
        yield self.term.wait_for_deferred(reactor, "(END)")
        self.term.send_keys("q")
        yield self.idle_prompt()
        self.assertNotIn("(END)", self.term.screen())
        self.assertEqual(len(self.service.requests), 1)
        yield self.run_approved(f"touch {after}", 1, after)

    @defer.inlineCallbacks
    def test_switching_to_the_alternate_screen_opens_no_passthrough(self):
        after = self.marker("after-printf")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(r"printf '\033[?1049h'")
        request = yield self.request(0)
        self.decide(request, "approve")
        yield wait_until(lambda: self.tmux_format("#{alternate_on}") == "1", "the alternate screen")
        yield self.idle_prompt()
        self.term.send_line(f"touch {after}")
        held = yield self.request(1)
        self.assertEqual(held["command"], f"touch {after}")
        yield pause(GRACE)
        self.assertFalse(self.exists(after), "ran without approval after the screen switch")
        self.decide(held, "approve")
        yield self.created(after)

    @defer.inlineCallbacks
    def test_prompt_that_switches_screens_opens_no_passthrough(self):
        # The same, with the switch and the prompt in one write (so in one
        # chunk of output): the prompt still ends the approved command.
        after = self.marker("after-ps1")
        self.start_gateway()
        yield self.open_terminal()
        self.term.send_line(r"PS1='\[\e[?1049h\]wraith$ '")
        request = yield self.request(0)
        self.decide(request, "approve")
        yield wait_until(lambda: self.tmux_format("#{alternate_on}") == "1", "the alternate screen")
        yield self.idle_prompt()
        self.term.send_line(f"touch {after}")
        held = yield self.request(1)
        self.assertEqual(held["command"], f"touch {after}")
        yield pause(GRACE)
        self.assertFalse(self.exists(after), "ran without approval after the screen switch")
        self.decide(held, "approve")
        yield self.created(after)
