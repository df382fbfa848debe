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

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import interactive_ssh, spawn_ssh
from tests.sshd import start_sshd
from wraith_conch.approval.policy import parse_policy
from wraith_conch.audit.trail import AuditingApprover, AuditTrail
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
        yield task.deferLater(reactor, 0.3, lambda: None)
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
