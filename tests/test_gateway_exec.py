"""
exec, sftp and scp through an in-process gateway to a real sshd, driven by
the real OpenSSH client.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.gatewayharness import Gateway, home_of
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from wraith_conch.testing import ScriptedApprover, approve_all_except


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path: str, size: int) -> str:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 1 << 20))
            f.write(chunk)
            remaining -= len(chunk)
    return sha256_file(path)


class ExecTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)

    @defer.inlineCallbacks
    def test_exit_status(self):
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv("exit 7"))
        self.assertEqual(code, 7, err)
        [request] = self.approver.requests
        self.assertEqual((request.kind, request.command), ("exec", "exit 7"))
        self.assertEqual(request.user, self.sshd.user)
        self.assertFalse(request.mismatch)

    @defer.inlineCallbacks
    def test_stdout_and_stderr_stay_apart(self):
        code, out, err = yield spawn_ssh(
            reactor, self.gateway.ssh_argv("echo to-out; echo to-err >&2; id -un")
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split(), [b"to-out", self.sshd.user.encode()])
        self.assertIn(b"to-err", err)
        self.assertNotIn(b"to-err", out)

    @defer.inlineCallbacks
    def test_ten_megabytes_through_stdin(self):
        data = os.urandom(10_000_000)
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv("sha256sum"), stdin=data)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split()[0].decode(), hashlib.sha256(data).hexdigest())

    @defer.inlineCallbacks
    def test_rekeying_client(self):
        """OpenSSH re-keys after RekeyLimit bytes; the relay must carry on through it."""
        data = os.urandom(8_000_000)
        argv = self.gateway.ssh_argv(
            "sha256sum; head -c 8000000 /dev/zero | wc -c", extra=["-o", "RekeyLimit=1M"]
        )
        code, out, err = yield spawn_ssh(reactor, argv, stdin=data, timeout=60)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split()[0].decode(), hashlib.sha256(data).hexdigest())
        self.assertEqual(out.split()[-1], b"8000000")

    @defer.inlineCallbacks
    def test_denied_exec_never_reaches_target(self):
        marker = os.path.join(home_of(self.sshd), f"denied-{os.getpid()}")
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv(f"touch {marker} # DENYME"))
        self.assertEqual(code, 1)
        self.assertIn(b"wraith: denied: contains 'DENYME'", err)
        self.assertFalse(os.path.exists(marker))
        self.assertNotIn("DENYME", self.sshd.log())
        # The session stays usable: the next command on a new connection runs.
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv(f"touch {marker}"))
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_exec_waits_for_decision(self):
        approver = ScriptedApprover()
        gateway = Gateway(self, self.sshd, approver)
        marker = os.path.join(home_of(self.sshd), f"waited-{os.getpid()}")
        arrived = approver.next_request()
        running = spawn_ssh(reactor, gateway.ssh_argv(f"touch {marker}"))
        request = yield arrived
        self.assertFalse(os.path.exists(marker))
        approver.decide(request.id, approver_decision(True))
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_env_only_locale_passes(self):
        argv = self.gateway.ssh_argv(
            'echo "lang=$LANG lc=$LC_TIME other=$WRAITH_TEST_OTHER"',
            extra=["-o", "SendEnv=LANG LC_TIME WRAITH_TEST_OTHER"],
        )
        env = {"LANG": "C.UTF-8", "LC_TIME": "C", "WRAITH_TEST_OTHER": "leaked"}
        code, out, err = yield spawn_ssh(reactor, argv, env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), b"lang=C.UTF-8 lc=C other=")


def approver_decision(approved: bool):
    from wraith_conch.approval.interfaces import Decision

    return Decision.approve("ok", "test") if approved else Decision.deny("no", "test")


class FileTransferTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)
        self.local = self.mktemp()
        os.makedirs(self.local)
        self.size = 20 * 1024 * 1024

    def client_options(self) -> list[str]:
        return self.gateway.ssh_argv()[1:-1]  # everything between "ssh" and user@host

    @defer.inlineCallbacks
    def test_sftp_up_and_down(self):
        src = os.path.join(self.local, "up.bin")
        digest = random_file(src, self.size)
        remote = f"sftp-{os.getpid()}.bin"
        back = os.path.join(self.local, "down.bin")
        batch = f"put {src} {remote}\nget {remote} {back}\n".encode()
        argv = ["sftp", "-b", "-", *self.sftp_options(), f"{self.sshd.user}@127.0.0.1"]
        code, out, err = yield spawn_ssh(reactor, argv, stdin=batch)
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(os.path.join(home_of(self.sshd), remote)), digest)
        self.assertEqual(sha256_file(back), digest)
        [request] = self.approver.requests
        self.assertEqual((request.kind, request.command), ("subsystem", "sftp"))

    def sftp_options(self) -> list[str]:
        options = self.client_options()
        # sftp spells the port -P.
        i = options.index("-p")
        options[i] = "-P"
        return options

    @defer.inlineCallbacks
    def test_scp_both_protocols(self):
        src = os.path.join(self.local, "scp.bin")
        digest = random_file(src, self.size)
        for protocol in (["-O"], []):
            name = f"scp{''.join(protocol)}-{os.getpid()}.bin"
            dest = f"{self.sshd.user}@127.0.0.1:{name}"
            code, out, err = yield spawn_ssh(
                reactor, ["scp", *protocol, *self.sftp_options(), src, dest]
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(sha256_file(os.path.join(home_of(self.sshd), name)), digest)
            back = os.path.join(self.local, name)
            code, out, err = yield spawn_ssh(
                reactor, ["scp", *protocol, *self.sftp_options(), dest, back]
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(sha256_file(back), digest)
        kinds = [(r.kind, r.command.split()[0]) for r in self.approver.requests]
        self.assertIn(("exec", "scp"), kinds)
        self.assertIn(("subsystem", "sftp"), kinds)

    @defer.inlineCallbacks
    def test_denied_sftp_fails(self):
        gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except("sftp")))
        options = gateway.ssh_argv()[1:-1]
        options[options.index("-p")] = "-P"
        code, out, err = yield spawn_ssh(
            reactor, ["sftp", "-b", "-", *options, f"{self.sshd.user}@127.0.0.1"], stdin=b"ls\n"
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"wraith: denied", err)
