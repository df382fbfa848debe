"""
Who gets in, and what the operator is told when the target cannot be used.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.gatewayharness import Gateway, keygen
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from wraith_conch.config import ConfigError, build_config
from wraith_conch.testing import ScriptedApprover, approve_all_except


def askpass_env(base: str, password: str) -> dict[str, str]:
    """Make OpenSSH read the password from a script instead of a terminal."""
    script = os.path.join(base, "askpass.sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nprintf '%s\\n' '{password}'\n")
    os.chmod(script, 0o700)
    return {"SSH_ASKPASS": script, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


class CapturedLog:
    def __init__(self, testcase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def of_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event_kind") == kind]


class OperatorKeyTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        self.log = CapturedLog(self)
        self.gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except()))

    @defer.inlineCallbacks
    def test_authorized_key_accepted_and_logged(self):
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv("id -un"))
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)
        accepted = [e for e in self.log.of_kind("auth") if e["result"] == "accepted"]
        self.assertEqual(len(accepted), 1)
        self.assertEqual(accepted[0]["user"], self.sshd.user)
        self.assertEqual(accepted[0]["method"], "publickey")
        self.assertTrue(accepted[0]["key_fingerprint"].startswith("SHA256:"))
        self.assertTrue(accepted[0]["remote_addr"].startswith("127.0.0.1:"))
        # The gateway sees the close a moment after ssh exits.
        yield wait_until(
            lambda: [e for e in self.log.of_kind("connection") if "duration" in e],
            "the connection-closed line",
            timeout=10,
        )

    @defer.inlineCallbacks
    def test_wrong_key_rejected(self):
        other = os.path.join(self.gateway.base, "stranger_key")
        keygen(other)
        argv = self.gateway.ssh_argv("id -un")
        argv[argv.index(self.gateway.operator_key)] = other
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", err)
        self.assertEqual(out, b"")
        self.assertTrue(any(e["result"] == "key-refused" for e in self.log.of_kind("auth")))

    @defer.inlineCallbacks
    def test_no_pty_option_refuses_pty(self):
        pub = open(self.gateway.operator_key + ".pub").read().strip()
        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            authorized_keys_text=f"no-pty {pub}\n",
        )
        # Reuse the operator key of the first gateway for the second.
        argv = gateway.ssh_argv("tty", extra=["-tt"])
        argv[argv.index(gateway.operator_key)] = self.gateway.operator_key
        code, out, err = yield spawn_ssh(reactor, argv)
        # OpenSSH's client gives up when a forced (-tt) PTY is refused.
        self.assertIn(b"PTY allocation request failed", err)

    @defer.inlineCallbacks
    def test_from_option_refuses_other_addresses(self):
        pub = open(self.gateway.operator_key + ".pub").read().strip()
        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            authorized_keys_text=f'from="10.0.0.0/8" {pub}\n',
        )
        argv = gateway.ssh_argv("true")
        argv[argv.index(gateway.operator_key)] = self.gateway.operator_key
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", err)


class UserNameBindingTests(unittest.TestCase):
    """A key is not a licence to log in under any name."""

    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.key = os.path.join(self.base, "alice")
        self.pub = keygen(self.key)

    def login_as(self, gateway, user: str):
        argv = gateway.ssh_argv("id -un", user=user)
        argv[argv.index(gateway.operator_key)] = self.key
        return spawn_ssh(reactor, argv)

    @defer.inlineCallbacks
    def test_principals_bind_a_shared_file_line_to_user_names(self):
        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            authorized_keys_text=f'principals="{self.sshd.user}" {self.pub}\n',
        )
        code, out, err = yield self.login_as(gateway, self.sshd.user)
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)
        code, out, err = yield self.login_as(gateway, "root")
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", err)

    @defer.inlineCallbacks
    def test_per_user_files(self):
        keys_dir = os.path.join(self.base, "keys")
        os.makedirs(keys_dir)
        with open(os.path.join(keys_dir, self.sshd.user), "w") as f:
            f.write(self.pub + "\n")
        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            **{"authorized-keys": os.path.join(keys_dir, "%u")},
        )
        code, out, err = yield self.login_as(gateway, self.sshd.user)
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)
        for other in ("root", "nobody-here"):
            code, out, err = yield self.login_as(gateway, other)
            self.assertEqual(code, 255, other)
            self.assertIn(b"Permission denied", err)


class PassthroughTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self, password_auth=True)
        self.gateway = Gateway(
            self, self.sshd, ScriptedApprover(approve_all_except()), auth="passthrough"
        )

    def argv(self):
        argv = self.gateway.ssh_argv("id -un")
        # No keys: password only, read through SSH_ASKPASS.
        argv[argv.index("BatchMode=yes")] = "BatchMode=no"
        return argv + []

    @defer.inlineCallbacks
    def test_right_password_accepted(self):
        env = askpass_env(self.gateway.base, self.sshd.password)
        code, out, err = yield spawn_ssh(reactor, self.argv(), env=env)
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)

    @defer.inlineCallbacks
    def test_wrong_password_rejected(self):
        env = askpass_env(self.gateway.base, "not-the-password")
        argv = self.argv()
        argv[1:1] = ["-o", "NumberOfPasswordPrompts=1"]
        code, out, err = yield spawn_ssh(reactor, argv, env=env)
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", err)
        self.assertEqual(out, b"")


class TargetProblemTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)

    @defer.inlineCallbacks
    def test_unknown_host_key_refused_with_message(self):
        empty = os.path.join(self.mktemp())
        open(empty, "w").close()
        gateway = Gateway(
            self, self.sshd, ScriptedApprover(approve_all_except()), **{"target-known-hosts": empty}
        )
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("id -un"))
        self.assertEqual(code, 255)
        self.assertIn(b"not in the known_hosts file", err)
        # Nothing but the key exchange reached the target: no auth attempt.
        log = self.sshd.log()
        self.assertNotIn("Accepted publickey", log)
        self.assertNotIn("userauth-request", log)

    @defer.inlineCallbacks
    def test_changed_host_key_refused(self):
        fake = os.path.join(self.mktemp())
        os.makedirs(fake)
        other_pub = keygen(os.path.join(fake, "k"))
        known = os.path.join(fake, "known_hosts")
        with open(known, "w") as f:
            f.write(f"[127.0.0.1]:{self.sshd.port} {other_pub}\n")
        gateway = Gateway(
            self, self.sshd, ScriptedApprover(approve_all_except()), **{"target-known-hosts": known}
        )
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("id -un"))
        self.assertEqual(code, 255)
        self.assertIn(b"CHANGED", err)

    @defer.inlineCallbacks
    def test_only_the_pinned_key_type_is_needed(self):
        """The target also serves ECDSA; known_hosts pins only its ed25519 key."""
        sshd = start_sshd(self, extra_host_key=True)
        with open(sshd.known_hosts_path) as f:
            pinned = f.read()
        self.assertIn("ssh-ed25519", pinned)
        self.assertNotIn("ecdsa", pinned)
        gateway = Gateway(self, sshd, ScriptedApprover(approve_all_except()))
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("id -un"))
        self.assertEqual((code, out.strip()), (0, sshd.user.encode()), err)

    @defer.inlineCallbacks
    def test_target_down(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            target=f"127.0.0.1:{dead_port}",
        )
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("id -un"))
        self.assertEqual(code, 255)
        self.assertIn(b"cannot reach the target", err)
        self.assertIn(b"connection refused", err)


class ConfigErrorTests(unittest.TestCase):
    def test_malformed_authorized_keys_line_reported_with_line_number(self):
        sshd_like = self.mktemp()
        os.makedirs(sshd_like)
        keys_path = os.path.join(sshd_like, "authorized_keys")
        pub = keygen(os.path.join(sshd_like, "op"))
        with open(keys_path, "w") as f:
            f.write(f"# operators\n{pub}\nssh-ed25519 AAAA!!notbase64 broken\n")
        identity = os.path.join(sshd_like, "id")
        keygen(identity)
        known = os.path.join(sshd_like, "known_hosts")
        open(known, "w").close()
        with self.assertRaises(ConfigError) as caught:
            build_config(
                {
                    "host-key": os.path.join(sshd_like, "hk"),
                    "target": "127.0.0.1:22",
                    "target-known-hosts": known,
                    "target-identity": identity,
                    "authorized-keys": keys_path,
                    "approval": "ws://127.0.0.1:9/",
                },
                reactor,
            )
        self.assertIn("--authorized-keys", str(caught.exception))
        self.assertIn(":3:", str(caught.exception))
