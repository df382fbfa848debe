"""The audit trail file and the auditing approver around the real approver."""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wraith_conch.approval.interfaces import CommandRequest, Decision, IApprover, Risk
from wraith_conch.approval.policy import DEFAULT_POLICY, parse_policy
from wraith_conch.audit.trail import (
    POLICY_REVIEWER,
    AuditError,
    AuditingApprover,
    AuditTrail,
    iso_utc,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH = 1_795_000_000.0  # 2026-11-17T...Z
FIELDS = {
    "event",
    "time",
    "id",
    "session",
    "user",
    "client",
    "target",
    "kind",
    "command",
    "typed",
    "mismatch",
    "risk",
    "decision",
    "reason",
    "reviewer",
    "rule",
}


def request(command: str = "ls -la", kind: str = "exec", **kwargs) -> CommandRequest:
    fields = dict(
        session="s-1.0",
        user="alice",
        client="127.0.0.1:5000",
        target="db1.internal:22",
        kind=kind,
        command=command,
        created=EPOCH,
    )
    fields.update(kwargs)
    return CommandRequest.new(**fields)


def read_records(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


@implementer(IApprover)
class FakeApprover:
    """Leaves requests pending until the test decides them."""

    description = "fake approver"

    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []
        self.pending: dict[str, defer.Deferred] = {}
        self.cancelled: list[tuple[str, str]] = []

    def request_decision(self, request: CommandRequest) -> defer.Deferred[Decision]:
        self.requests.append(request)
        d: defer.Deferred[Decision] = defer.Deferred()
        self.pending[request.id] = d
        return d

    def decide(self, request_id: str, decision) -> None:
        d = self.pending.pop(request_id)
        if isinstance(decision, Failure):
            d.errback(decision)
        else:
            d.callback(decision)

    def cancel(self, request_id: str, reason: str) -> None:
        self.cancelled.append((request_id, reason))
        if request_id in self.pending:
            self.decide(request_id, Decision.deny(reason))


class TrailFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "audit.jsonl")

    def trail(self) -> AuditTrail:
        trail = AuditTrail(self.path, self.clock)
        self.addCleanup(trail.close)
        return trail

    def test_created_0600_whatever_the_umask(self) -> None:
        old = os.umask(0)
        try:
            self.trail()
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_existing_loose_mode_is_tightened(self) -> None:
        with open(self.path, "w") as f:
            f.write('{"event": "request"}\n')
        os.chmod(self.path, 0o666)
        self.trail().record_cancel("x", "test")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        # Appended, not truncated.
        self.assertEqual([r["event"] for r in read_records(self.path)], ["request", "cancel"])

    def test_symlink_refused(self) -> None:
        real = os.path.join(self.dir, "real")
        os.symlink(real, self.path)
        with self.assertRaises(AuditError) as caught:
            AuditTrail(self.path, self.clock)
        self.assertIn("symbolic link", str(caught.exception))
        self.assertFalse(os.path.exists(real))

    def test_directory_refused(self) -> None:
        os.mkdir(self.path)
        with self.assertRaises(AuditError) as caught:
            AuditTrail(self.path, self.clock)
        self.assertTrue(str(caught.exception).startswith(f"audit trail {self.path}: "))

    def test_missing_directory(self) -> None:
        with self.assertRaises(AuditError):
            AuditTrail(os.path.join(self.dir, "nope", "audit.jsonl"), self.clock)

    def test_partial_last_line_is_closed(self) -> None:
        with open(self.path, "w") as f:
            f.write('{"event": "request"}\n{"event": "deci')
        self.trail().record_cancel("x", "test")
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[1], b'{"event": "deci')
        self.assertEqual(json.loads(lines[2])["event"], "cancel")

    def test_records(self) -> None:
        trail = self.trail()
        req = request("rm -rf /tmp/x", risk=Risk(score=80, reasons=("recursive delete",)))
        trail.record_request(req)
        self.clock.advance(1.5)
        trail.record_decision(req, Decision.approve("looks fine", reviewer="bob"))
        trail.record_cancel(req.id, "session closed", req)
        records = read_records(self.path)
        self.assertEqual([set(r) for r in records], [FIELDS] * 3)
        first, second, third = records
        self.assertEqual(
            first,
            {
                "event": "request",
                "time": iso_utc(EPOCH),
                "id": req.id,
                "session": "s-1.0",
                "user": "alice",
                "client": "127.0.0.1:5000",
                "target": "db1.internal:22",
                "kind": "exec",
                "command": "rm -rf /tmp/x",
                "typed": "rm -rf /tmp/x",
                "mismatch": False,
                "risk": {"score": 80, "reasons": ["recursive delete"]},
                "decision": None,
                "reason": None,
                "reviewer": None,
                "rule": None,
            },
        )
        self.assertTrue(first["time"].endswith("Z"))
        self.assertEqual(second["event"], "decision")
        self.assertEqual(second["time"], iso_utc(EPOCH + 1.5))
        self.assertEqual(
            (second["decision"], second["reason"], second["reviewer"]),
            ("approve", "looks fine", "bob"),
        )
        self.assertEqual((third["event"], third["reason"]), ("cancel", "session closed"))

    def test_iso_utc(self) -> None:
        self.assertEqual(iso_utc(0.25), "1970-01-01T00:00:00.250Z")

    def test_one_line_per_record_whatever_the_text(self) -> None:
        trail = self.trail()
        nasty = 'echo "x"\n\r\x1b[2J\u2028\ud800 done'
        trail.record_request(request(nasty, kind="shell", typed=nasty + "\t"))
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(read_records(self.path)[0]["command"], nasty)

    def test_forward_destinations_not_written(self) -> None:
        self.trail().record_request(request("secret.internal:5432", kind="forward"))
        record = read_records(self.path)[0]
        self.assertIsNone(record["command"])
        self.assertIsNone(record["typed"])
        with open(self.path) as f:
            self.assertNotIn("secret.internal", f.read())

    def test_write_failure_raises_and_leaves_whole_lines(self) -> None:
        trail = self.trail()
        trail.record_cancel("first", "ok")
        real_write = os.write

        def half_then_fail(fd, data):
            if len(data) > 10:
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        trail._write = half_then_fail
        with self.assertRaises(AuditError) as caught:
            trail.record_cancel("second", "lost")
        self.assertIn("No space left on device", str(caught.exception))
        self.assertEqual([r["id"] for r in read_records(self.path)], ["first"])
        # Writable again: the next record is whole.
        del trail._write
        trail.record_cancel("third", "ok")
        self.assertEqual([r["id"] for r in read_records(self.path)], ["first", "third"])

    def test_fsync_failure_raises_and_takes_the_record_back(self) -> None:
        trail = self.trail()

        def fail(fd):
            raise OSError(errno.EIO, "Input/output error")

        trail._fsync = fail
        with self.assertRaises(AuditError):
            trail.record_cancel("x", "y")
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_closed(self) -> None:
        trail = self.trail()
        trail.close()
        trail.close()
        self.assertTrue(trail.closed)
        with self.assertRaises(AuditError):
            trail.record_cancel("x", "y")

    def test_rename_rotation_is_followed(self) -> None:
        # logrotate without copytruncate: rename, then (maybe) create.
        trail = self.trail()
        trail.record_cancel("before", "test")
        os.rename(self.path, self.path + ".1")
        trail.record_cancel("after-rename", "test")
        os.rename(self.path, self.path + ".2")
        with open(self.path, "w"):
            pass
        os.chmod(self.path, 0o644)  # what logrotate's "create 0644" would make
        trail.record_cancel("after-create", "test")
        self.assertEqual([r["id"] for r in read_records(self.path + ".1")], ["before"])
        self.assertEqual([r["id"] for r in read_records(self.path + ".2")], ["after-rename"])
        self.assertEqual([r["id"] for r in read_records(self.path)], ["after-create"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_rotation_to_something_unsafe_refuses_the_record(self) -> None:
        trail = self.trail()
        trail.record_cancel("before", "test")
        os.rename(self.path, self.path + ".1")
        os.symlink(os.path.join(self.dir, "elsewhere"), self.path)
        with self.assertRaises(AuditError):
            trail.record_cancel("after", "test")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "elsewhere")))
        # Once the path is sane again, records flow (into a new file).
        os.unlink(self.path)
        trail.record_cancel("later", "test")
        self.assertEqual([r["id"] for r in read_records(self.path)], ["later"])
        self.assertEqual([r["id"] for r in read_records(self.path + ".1")], ["before"])

    def test_every_record_is_fsynced_before_returning(self) -> None:
        trail = self.trail()
        calls = []

        def write(fd, data):
            calls.append("write")
            return os.write(fd, data)

        def fsync(fd):
            calls.append("fsync")
            os.fsync(fd)

        trail._write, trail._fsync = write, fsync
        trail.record_cancel("x", "y")
        self.assertEqual(calls, ["write", "fsync"])


class AuditingApproverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.path = self.mktemp()
        self.trail = AuditTrail(self.path, self.clock)
        self.addCleanup(self.trail.close)
        self.inner = FakeApprover()

    def approver(self, policy=None, trail="default") -> AuditingApprover:
        return AuditingApprover(self.inner, self.trail if trail == "default" else trail, policy)

    def test_provides_iapprover(self) -> None:
        approver = self.approver()
        self.assertTrue(verifyObject(IApprover, approver))
        self.assertEqual(approver.description, "fake approver")

    def test_review_by_inner(self) -> None:
        approver = self.approver()
        req = request("sudo rm -rf /var/cache/x")
        d = approver.request_decision(req)
        # Scored, and the score travels to the service.
        [sent] = self.inner.requests
        self.assertEqual(sent.id, req.id)
        self.assertEqual(sent.risk, Risk(score=95, reasons=("recursive delete", "sudo")))
        self.assertEqual([r["event"] for r in read_records(self.path)], ["request"])
        self.assertNoResult(d)
        self.inner.decide(req.id, Decision.approve("ok", reviewer="bob"))
        self.assertEqual(self.successResultOf(d), Decision.approve("ok", reviewer="bob"))
        request_record, decision_record = read_records(self.path)
        self.assertEqual(
            request_record["risk"], {"score": 95, "reasons": ["recursive delete", "sudo"]}
        )
        self.assertEqual(
            (decision_record["decision"], decision_record["reviewer"], decision_record["rule"]),
            ("approve", "bob", None),
        )

    def test_existing_risk_kept(self) -> None:
        approver = self.approver()
        approver.request_decision(request("ls", risk=Risk(score=7, reasons=("custom",))))
        self.assertEqual(self.inner.requests[0].risk, Risk(score=7, reasons=("custom",)))

    def test_policy_approves_without_asking(self) -> None:
        policy = parse_policy(
            "[[rule]]\nname = 'ls'\ncommand = { regex = 'ls( -la)?' }\ndecide = 'approve'\n",
            "p.toml",
        )
        approver = self.approver(policy)
        decision = self.successResultOf(approver.request_decision(request("ls -la")))
        self.assertEqual(decision, Decision.approve("policy rule 1 (ls)", reviewer=POLICY_REVIEWER))
        self.assertEqual(self.inner.requests, [])
        records = read_records(self.path)
        self.assertEqual([r["event"] for r in records], ["request", "decision"])
        rule = {"index": 1, "name": "ls", "policy": "p.toml"}
        self.assertEqual(records[0]["rule"], rule)
        self.assertEqual(
            (records[1]["decision"], records[1]["reviewer"], records[1]["rule"]),
            ("approve", "policy", rule),
        )

    def test_default_policy_denies_without_asking(self) -> None:
        approver = self.approver(DEFAULT_POLICY)
        decision = self.successResultOf(approver.request_decision(request("rm -rf /")))
        self.assertFalse(decision.approved)
        self.assertEqual(decision.reviewer, "policy")
        self.assertIn("built-in policy", decision.reason)
        self.assertEqual(self.inner.requests, [])
        self.assertEqual(read_records(self.path)[1]["rule"]["policy"], "<built-in policy>")

    def test_policy_review_asks_inner_and_records_rule(self) -> None:
        policy = parse_policy("[[rule]]\nname = 'all'\ndecide = 'review'\n", "p.toml")
        approver = self.approver(policy)
        req = request()
        d = approver.request_decision(req)
        self.assertEqual(read_records(self.path)[0]["rule"]["index"], 1)
        self.inner.decide(req.id, Decision.deny("no", reviewer="bob"))
        self.assertEqual(self.successResultOf(d), Decision.deny("no", reviewer="bob"))
        self.assertIsNone(read_records(self.path)[1]["rule"])

    def test_request_not_recorded_means_denied_unasked(self) -> None:
        approver = self.approver()
        self.trail._write = _failing_write
        decision = self.successResultOf(approver.request_decision(request()))
        self.assertFalse(decision.approved)
        self.assertIn("audit trail", decision.reason)
        self.assertEqual(self.inner.requests, [])
        self.flushLoggedErrors()

    def test_decision_not_recorded_means_denied(self) -> None:
        approver = self.approver()
        req = request()
        d = approver.request_decision(req)
        self.trail._write = _failing_write
        self.inner.decide(req.id, Decision.approve("ok", reviewer="bob"))
        decision = self.successResultOf(d)
        self.assertFalse(decision.approved)
        self.assertIn("audit trail", decision.reason)
        # Only the request is in the trail.
        self.assertEqual([r["event"] for r in read_records(self.path)], ["request"])

    def test_policy_decision_not_recorded_means_denied(self) -> None:
        policy = parse_policy("[[rule]]\ndecide = 'approve'\n")
        approver = self.approver(policy)
        calls = []

        def fail_second(fd, data):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.EROFS, "Read-only file system")
            return os.write(fd, data)

        self.trail._write = fail_second
        decision = self.successResultOf(approver.request_decision(request()))
        self.assertFalse(decision.approved)

    def test_inner_errback_is_a_recorded_denial(self) -> None:
        approver = self.approver()
        req = request()
        d = approver.request_decision(req)
        self.inner.decide(req.id, Failure(RuntimeError("service exploded")))
        decision = self.successResultOf(d)
        self.assertFalse(decision.approved)
        self.assertIn("service exploded", decision.reason)
        self.assertEqual(read_records(self.path)[1]["decision"], "deny")

    def test_inner_raising_is_a_denial(self) -> None:
        @implementer(IApprover)
        class Broken:
            description = "broken"

            def request_decision(self, request):
                raise RuntimeError("boom")

            def cancel(self, request_id, reason):
                pass

        approver = AuditingApprover(Broken(), self.trail)
        decision = self.successResultOf(approver.request_decision(request()))
        self.assertFalse(decision.approved)

    def test_cancel(self) -> None:
        approver = self.approver()
        req = request()
        d = approver.request_decision(req)
        approver.cancel(req.id, "session closed")
        self.assertEqual(self.inner.cancelled, [(req.id, "session closed")])
        self.assertEqual(self.successResultOf(d), Decision.deny("session closed"))
        events = [(r["event"], r["reason"]) for r in read_records(self.path)]
        self.assertEqual(
            events,
            [("request", None), ("cancel", "session closed"), ("decision", "session closed")],
        )
        # Unknown or decided ids: passed on, not recorded.
        approver.cancel(req.id, "again")
        approver.cancel("unknown", "x")
        self.assertEqual(len(read_records(self.path)), 3)

    def test_caller_cancelling_its_deferred(self) -> None:
        approver = self.approver()
        d = approver.request_decision(request())
        d.cancel()
        decision = self.successResultOf(d)
        self.assertFalse(decision.approved)
        self.assertEqual(read_records(self.path)[-1]["decision"], "deny")

    def test_without_trail(self) -> None:
        approver = self.approver(DEFAULT_POLICY, trail=None)
        self.assertFalse(
            self.successResultOf(approver.request_decision(request("rm -rf /"))).approved
        )
        req = request()
        d = approver.request_decision(req)
        self.inner.decide(req.id, Decision.approve())
        self.assertTrue(self.successResultOf(d).approved)
        self.assertEqual(read_records(self.path), [])

    def test_broken_scorer_and_policy(self) -> None:
        class BrokenPolicy:
            def evaluate(self, request, risk):
                raise RuntimeError("policy bug")

        def broken_score(command, kind):
            raise RuntimeError("scorer bug")

        approver = AuditingApprover(self.inner, self.trail, BrokenPolicy(), risk=broken_score)
        req = request()
        approver.request_decision(req)
        self.assertEqual(self.inner.requests[0].risk.reasons, ("risk scoring failed",))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_decision_takes_effect_after_fsync(self) -> None:
        """The caller's callback runs only after the decision record's fsync."""
        approver = self.approver()
        order = []

        def fsync(fd):
            os.fsync(fd)
            order.append("fsync")

        self.trail._fsync = fsync
        req = request()
        d = approver.request_decision(req)
        d.addCallback(lambda decision: order.append("effect"))
        self.inner.decide(req.id, Decision.approve())
        self.assertEqual(order, ["fsync", "fsync", "effect"])


def _failing_write(fd, data):
    raise OSError(errno.ENOSPC, "No space left on device")


# The child of the crash test: a burst of approvals through AuditingApprover,
# each id printed once its decision took effect (the Deferred fired).
CHILD = r"""
import os, sys
from twisted.internet import reactor, defer, task
from zope.interface import implementer
from wraith_conch.approval.interfaces import CommandRequest, Decision, IApprover
from wraith_conch.audit.trail import AuditTrail, AuditingApprover

@implementer(IApprover)
class Approves:
    description = "approves everything, a moment later"
    def request_decision(self, request):
        return task.deferLater(reactor, 0, lambda: Decision.approve("ok", reviewer="bot"))
    def cancel(self, request_id, reason):
        pass

approver = AuditingApprover(Approves(), AuditTrail(sys.argv[1], reactor))

@defer.inlineCallbacks
def burst():
    try:
        # Far more than the test reads before its SIGKILL (50), so that a
        # loaded machine slow to send it does not see the burst finish.
        for i in range(5000):
            req = CommandRequest.new(
                session="s-crash.0", user="alice", client="127.0.0.1:1", target="t:22",
                kind="exec", command=f"echo {i}", created=reactor.seconds())
            decision = yield approver.request_decision(req)
            if decision.approved:
                os.write(1, (req.id + "\n").encode())
            yield task.deferLater(reactor, 0.005, lambda: None)
        os.write(1, b"done\n")
    finally:
        reactor.stop()

reactor.callWhenRunning(burst)
reactor.run()
"""


class CrashTests(SynchronousTestCase):
    def test_sigkill_mid_burst_loses_nothing_that_took_effect(self) -> None:
        path = os.path.abspath(self.mktemp())
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self.addCleanup(lambda: child.poll() is None and child.kill())
        output = b""
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while output.count(b"\n") < 50 and time.monotonic() < deadline:
                if selector.select(timeout=1):
                    chunk = os.read(child.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    output += chunk
        child.send_signal(signal.SIGKILL)
        rest, errors = child.communicate(timeout=30)
        output += rest
        self.assertEqual(child.returncode, -signal.SIGKILL, errors.decode(errors="replace"))
        printed = output.split(b"\n")
        self.assertNotIn(b"done", printed, "the burst finished before the kill")
        took_effect = [line.decode() for line in printed if line]
        self.assertGreaterEqual(len(took_effect), 50)

        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        complete, last = lines[:-1], lines[-1]
        records = [json.loads(line) for line in complete]  # every whole line parses
        if last:  # at most the final line is partial
            self.assertRaises(ValueError, json.loads, last)
        decided = {
            r["id"] for r in records if r["event"] == "decision" and r["decision"] == "approve"
        }
        requested = {r["id"] for r in records if r["event"] == "request"}
        missing = [i for i in took_effect if i not in decided or i not in requested]
        self.assertEqual(missing, [])
        self.assertGreaterEqual(len(decided), len(took_effect))
