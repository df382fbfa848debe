"""
Policy, audit trail and recordings, wired into a gateway in front of a real
sshd and driven by the real OpenSSH client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import interactive_ssh, spawn_ssh
from tests.sshd import start_sshd
from wraith_conch.approval.interfaces import (
    GATEWAY_REVIEWER,
    CommandRequest,
    Decision,
    record_gateway_decision,
)
from wraith_conch.approval.policy import parse_policy
from wraith_conch.audit.trail import AuditingApprover, AuditTrail
from wraith_conch.gateway.session import PublishingApprover
from wraith_conch.testing import ScriptedApprover, approve_all_except

POLICY = """
[[rule]]
name = "no cleanups here"
kind = { exact = "exec" }
command = { glob = "*cleanup*" }
decide = "deny"
reason = "cleanups run from the job runner"
"""


class PolicyAndAuditTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        base = self.mktemp()
        os.makedirs(base)
        self.audit = os.path.join(base, "audit.jsonl")
        self.trail = AuditTrail(self.audit, reactor)
        self.addCleanup(self.trail.close)
        self.reviewer = ScriptedApprover(approve_all_except())
        approver = AuditingApprover(self.reviewer, self.trail, parse_policy(POLICY, "test"))
        self.gateway = Gateway(self, self.sshd, approver)

    @defer.inlineCallbacks
    def test_auto_denied_command_never_reaches_target_and_is_audited(self):
        marker = os.path.join(home_of(self.sshd), f"cleanup-{uuid.uuid4().hex[:8]}")
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv(f"touch {marker}"))
        self.assertEqual(code, 1)
        self.assertIn(b"wraith: denied: cleanups run from the job runner", err)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(self.reviewer.requests, [])  # no human was asked
        with open(self.audit) as f:
            records = [json.loads(line) for line in f]
        decision = [r for r in records if r["event"] == "decision"][-1]
        self.assertEqual((decision["decision"], decision["command"]), ("deny", f"touch {marker}"))
        self.assertEqual(decision["reviewer"], "policy")
        self.assertTrue(decision["rule"])
        self.assertEqual(os.stat(self.audit).st_mode & 0o777, 0o600)

    def records(self) -> list[dict]:
        with open(self.audit) as f:
            return [json.loads(line) for line in f]

    @defer.inlineCallbacks
    def test_non_utf8_exec_refused_without_asking_and_audited(self):
        marker = os.path.join(home_of(self.sshd), f"latin1-{uuid.uuid4().hex[:8]}")
        argv = self.gateway.ssh_argv()
        # os.fsencode keeps the \xff byte: the real ssh client sends it as is.
        argv.append(os.fsencode(f"touch {marker}") + b"\xff")
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 1)
        self.assertIn(b"wraith: denied: the exec request is not UTF-8", err)
        self.assertFalse(os.path.exists(marker + "\udcff"))
        self.assertEqual(os.listdir(home_of(self.sshd)).count(os.path.basename(marker)), 0)
        self.assertEqual(self.reviewer.requests, [])  # no human was asked
        records = self.records()
        request = [r for r in records if r["event"] == "request"][-1]
        decision = [r for r in records if r["event"] == "decision"][-1]
        self.assertEqual(request["command"], f"touch {marker}\\xff")
        self.assertEqual(request["id"], decision["id"])
        self.assertEqual(
            (decision["decision"], decision["reviewer"], decision["reason"]),
            ("deny", "gateway", "the exec request is not UTF-8"),
        )


class GatewayDecisionRecordTests(unittest.SynchronousTestCase):
    """What the gateway decides itself reaches the trail through the approver chain."""

    def setUp(self):
        base = self.mktemp()
        os.makedirs(base)
        self.audit = os.path.join(base, "audit.jsonl")
        self.trail = AuditTrail(self.audit, reactor)
        self.addCleanup(self.trail.close)
        self.reviewer = ScriptedApprover(approve_all_except())
        self.approver = AuditingApprover(self.reviewer, self.trail, None)

    def records(self) -> list[dict]:
        with open(self.audit) as f:
            return [json.loads(line) for line in f]

    def request(self, command: str = "rm -rf /srv/cache") -> CommandRequest:
        return CommandRequest.new(
            session="s-1.0",
            user="alice",
            client="127.0.0.1:5000",
            target="db1:22",
            kind="shell",
            command=command,
            typed="ls",
            created=1_795_000_000.0,
        )

    def test_not_asked_records_request_and_denial(self):
        request = self.request()
        denial = Decision.deny("screen differs", reviewer=GATEWAY_REVIEWER)
        record_gateway_decision(self.approver, request, denial, asked=False)
        records = self.records()
        self.assertEqual([r["event"] for r in records], ["request", "decision"])
        self.assertEqual(records[0]["command"], "rm -rf /srv/cache")
        self.assertTrue(records[0]["risk"]["score"] > 0)  # scored like any request
        self.assertEqual(
            (records[1]["decision"], records[1]["reviewer"], records[1]["reason"]),
            ("deny", "gateway", "screen differs"),
        )
        self.assertEqual(self.reviewer.requests, [])

    def test_override_records_only_the_new_decision(self):
        request = self.request("ls")
        approved = self.successResultOf(self.approver.request_decision(request))
        self.assertTrue(approved.approved)
        record_gateway_decision(
            self.approver,
            request,
            Decision.deny("the line changed while it waited for approval", GATEWAY_REVIEWER),
            asked=True,
        )
        events = [(r["event"], r["decision"], r["reviewer"]) for r in self.records()]
        self.assertEqual(
            events,
            [
                ("request", None, None),
                ("decision", "approve", approved.reviewer),
                ("decision", "deny", "gateway"),
            ],
        )

    def test_publishing_approver_passes_it_on_and_tells_the_operator(self):
        events = []
        publishing = PublishingApprover(self.approver, events.append)
        request = self.request()
        denial = Decision.deny("screen differs", reviewer=GATEWAY_REVIEWER)
        record_gateway_decision(publishing, request, denial, asked=False)
        self.assertEqual([e["event"] for e in events], ["pending", "denied"])
        self.assertEqual([r["event"] for r in self.records()], ["request", "decision"])

    def test_approvers_without_records_are_left_alone(self):
        # ScriptedApprover keeps no trail: nothing to call, nothing raised.
        record_gateway_decision(self.reviewer, self.request(), Decision.deny("x"), asked=False)
        self.assertEqual(self.reviewer.requests, [])


class RecordingTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_pty_session_recorded_as_asciicast_that_plays(self):
        sshd = start_sshd(self)
        record_dir = os.path.abspath(self.mktemp())
        os.makedirs(record_dir)
        gateway = Gateway(
            self, sshd, ScriptedApprover(approve_all_except()), **{"record-dir": record_dir}
        )
        term = interactive_ssh(self, gateway.ssh_argv(extra=["-tt"]))
        yield term.wait_for_deferred(reactor, "wraith$ ", timeout=15)
        term.send_line("echo recorded-$((40+2))")
        yield term.wait_for_deferred(reactor, "recorded-42")
        term.send_line("exit")
        yield term.wait_exit_deferred(reactor, timeout=15)
        # The recorder writes its last events when the gateway closes the session.
        yield gateway.all_closed()
        [name] = os.listdir(record_dir)
        path = os.path.join(record_dir, name)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            header, *events = [json.loads(line) for line in f]
        self.assertEqual(header["version"], 2)
        output = "".join(e[2] for e in events if e[1] == "o")
        self.assertIn("recorded-42", output)
        self.assertIn("i", {e[1] for e in events})
        played = subprocess.run(
            [sys.executable, "-m", "wraith_conch.replay", "--cat", path],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.assertIn("recorded-42", played.stdout)
