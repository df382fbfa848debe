"""
Named targets end to end: two real sshd servers as C{db1} and C{db2}, real
OpenSSH clients choosing one with C{ssh -l alice@db1 gw} or
C{ssh alice%db2@gw}, and the refusals, which must happen before the gateway
connects to anything.

Which target a session reached is read from C{$SSH_CONNECTION} on the
target: its fourth field is the port of the sshd that runs the shell.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.trial import unittest

from tests.approval_service import ApprovalService
from tests.gatewayharness import Gateway, free_port, keygen
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from tests.test_gateway_auth import CapturedLog, askpass_env
from tests.test_gateway_forwarding import EchoServer, exchange, loopback_policy, wait_listening
from tests.test_twistd import REPO, operator_argv, pin_gateway_key, stop_process, twistd_argv
from wraith_conch.gateway import assembly
from wraith_conch.testing import ScriptedApprover, approve_all_except

WHERE = 'echo "port=${SSH_CONNECTION##* }"'


class _Hangup(protocol.Protocol):
    def connectionMade(self):
        self.transport.loseConnection()


class CountingListener(protocol.Factory):
    """A TCP port that counts the connections made to it (and closes them)."""

    def __init__(self, testcase) -> None:
        self.connections = 0
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.number = self.port.getHost().port

    def buildProtocol(self, addr):
        self.connections += 1
        return _Hangup()


def write_targets(base: str, text: str) -> str:
    path = os.path.join(base, "targets.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def one_line_key(sshd) -> str:
    return " ".join(sshd.host_public_key.split()[:2])


class Targets(unittest.TestCase):
    """Shared set-up: db1 pinned by its known_hosts file, db2 by an inline key."""

    timeout = 90
    password_auth = False

    def setUp(self):
        self.db1 = start_sshd(self, password_auth=self.password_auth)
        self.db2 = start_sshd(self, password_auth=self.password_auth)
        # The gateway logs in to both with one identity.
        self.db2.authorize_key(self.db1.client_public_key)
        self.user = self.db1.user
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.log = CapturedLog(self)
        self.attempts: list[tuple[str, int]] = []
        real_connect = assembly.connect_upstream

        def recording_connect(reactor_, target, known_hosts, login, **kw):
            self.attempts.append((target.host, target.port))
            return real_connect(reactor_, target, known_hosts, login, **kw)

        self.patch(assembly, "connect_upstream", recording_connect)
        # Where a bare user name goes: a port that only counts. A refused
        # alias that fell through to the default would show up here.
        self.trap = CountingListener(self)
        self.trap_known = os.path.join(self.base, "trap_known_hosts")
        with open(self.trap_known, "w") as f:
            f.write(f"[127.0.0.1]:{self.trap.number} {one_line_key(self.db1)}\n")

    def targets_text(self, extra: str = "") -> str:
        return (
            f"{extra}\n"
            f'[targets.db1]\nhost = "127.0.0.1"\nport = {self.db1.port}\n'
            f'known_hosts = "{self.db1.known_hosts_path}"\n\n'
            f'[targets.db2]\nhost = "127.0.0.1"\nport = {self.db2.port}\n'
            f'host_key = "{self.db2.host_public_key}"\n\n'
            f'[targets.ops-only]\nhost = "127.0.0.1"\nport = {self.db1.port}\n'
            f'known_hosts = "{self.db1.known_hosts_path}"\nusers = ["someone-else"]\n\n'
            # db2's address, but db1's host key: an impostor as far as the pin goes.
            f'[targets.wrongkey]\nhost = "127.0.0.1"\nport = {self.db2.port}\n'
            f'host_key = "{one_line_key(self.db1)}"\n'
        )

    def gateway(self, *, targets_extra: str = "", with_targets: bool = True, **overrides):
        options = {
            "target": f"127.0.0.1:{self.trap.number}",
            "target-known-hosts": self.trap_known,
        }
        if with_targets:
            options["targets"] = write_targets(self.base, self.targets_text(targets_extra))
        options.update(overrides)
        return Gateway(self, self.db1, ScriptedApprover(approve_all_except()), **options)

    def ssh(self, gateway, login: str, command: str = WHERE, *, style: str = "-l", env=None):
        """ssh -l LOGIN 127.0.0.1 (style -l) or ssh LOGIN@127.0.0.1 (style @)."""
        argv = gateway.ssh_argv(command)
        destination = argv.index(f"{self.user}@127.0.0.1")
        if style == "-l":
            argv[destination : destination + 1] = ["-l", login, "127.0.0.1"]
        else:
            argv[destination] = f"{login}@127.0.0.1"
        return spawn_ssh(reactor, argv, env=env)

    def connections_logged(self, sshd) -> int:
        return sshd.log().count("Connection from 127.0.0.1")

    def assertRefused(self, result, message: bytes):
        code, out, err = result
        self.assertEqual(code, 255, err)
        self.assertEqual(out, b"")
        self.assertIn(b"wraith: " + message, err)

    def route_events(self) -> list[dict]:
        return self.log.of_kind("route")


class RoutingTests(Targets):
    @defer.inlineCallbacks
    def test_dash_l_alias_reaches_db1(self):
        gateway = self.gateway()
        code, out, err = yield self.ssh(gateway, f"{self.user}@db1")
        self.assertEqual((code, out.strip()), (0, f"port={self.db1.port}".encode()), err)
        self.assertEqual(self.attempts, [("127.0.0.1", self.db1.port)])
        request = gateway.approver.requests[-1]
        self.assertEqual(request.target, f"127.0.0.1:{self.db1.port}")
        self.assertEqual(request.user, self.user)
        self.assertEqual(self.trap.connections, 0)

    @defer.inlineCallbacks
    def test_percent_alias_reaches_db2_pinned_inline(self):
        gateway = self.gateway()
        code, out, err = yield self.ssh(gateway, f"{self.user}%db2", style="@")
        self.assertEqual((code, out.strip()), (0, f"port={self.db2.port}".encode()), err)
        self.assertEqual(gateway.approver.requests[-1].target, f"127.0.0.1:{self.db2.port}")
        # The alias is matched ignoring case; the same gateway reaches db1 too.
        code, out, err = yield self.ssh(gateway, f"{self.user}@DB1")
        self.assertEqual((code, out.strip()), (0, f"port={self.db1.port}".encode()), err)
        self.assertEqual(
            self.attempts, [("127.0.0.1", self.db2.port), ("127.0.0.1", self.db1.port)]
        )

    @defer.inlineCallbacks
    def test_bare_name_goes_to_target(self):
        gateway = self.gateway(target=f"127.0.0.1:{self.db1.port}", **{
            "target-known-hosts": self.db1.known_hosts_path
        })  # fmt: skip
        code, out, err = yield self.ssh(gateway, self.user)
        self.assertEqual((code, out.strip()), (0, f"port={self.db1.port}".encode()), err)

    @defer.inlineCallbacks
    def test_bare_name_goes_to_the_default(self):
        gateway = self.gateway(targets_extra='default = "db2"', target=None)
        code, out, err = yield self.ssh(gateway, self.user)
        self.assertEqual((code, out.strip()), (0, f"port={self.db2.port}".encode()), err)

    @defer.inlineCallbacks
    def test_recording_names_the_chosen_target(self):
        record_dir = os.path.join(self.base, "recordings")
        os.makedirs(record_dir)
        gateway = self.gateway(**{"record-dir": record_dir})
        argv = gateway.ssh_argv("echo recorded", extra=["-tt"])
        argv[argv.index(f"{self.user}@127.0.0.1")] = f"{self.user}%db2@127.0.0.1"
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 0, err)
        [cast] = glob.glob(os.path.join(record_dir, "*"))
        with open(cast) as f:
            header = json.loads(f.readline())
        self.assertEqual(header["wraith"]["target"], f"127.0.0.1:{self.db2.port}")
        self.assertEqual(header["title"], f"{self.user}@127.0.0.1:{self.db2.port}")


class RefusalTests(Targets):
    """Refusals come with a message, a log event, and no TCP connection at all."""

    def assertNothingConnected(self, before: tuple[int, int]):
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.trap.connections, 0)
        self.assertEqual(
            (self.connections_logged(self.db1), self.connections_logged(self.db2)), before
        )

    def counts(self) -> tuple[int, int]:
        return self.connections_logged(self.db1), self.connections_logged(self.db2)

    @defer.inlineCallbacks
    def test_unlisted_alias(self):
        gateway = self.gateway()
        before = self.counts()
        result = yield self.ssh(gateway, f"{self.user}@db9")
        self.assertRefused(result, f"target 'db9' is unknown or not open to {self.user}".encode())
        self.assertNothingConnected(before)
        [event] = self.route_events()
        self.assertEqual(
            (event["result"], event["user"], event["target_alias"], event["reason"]),
            ("refused", self.user, "db9", "unknown"),
        )
        self.assertTrue(event["remote_addr"].startswith("127.0.0.1:"))
        results = [e["result"] for e in self.log.of_kind("auth")]
        self.assertIn("target-error", results)
        self.assertNotIn("accepted", results)

    @defer.inlineCallbacks
    def test_users_restriction(self):
        gateway = self.gateway()
        before = self.counts()
        result = yield self.ssh(gateway, f"{self.user}%ops-only", style="@")
        self.assertRefused(
            result, f"target 'ops-only' is unknown or not open to {self.user}".encode()
        )
        self.assertNothingConnected(before)
        self.assertEqual([e["reason"] for e in self.route_events()], ["not-allowed"])

    @defer.inlineCallbacks
    def test_alias_without_targets(self):
        gateway = self.gateway(with_targets=False)
        before = self.counts()
        result = yield self.ssh(gateway, f"{self.user}@db1")
        self.assertRefused(result, b"unknown target 'db1': this gateway has no named targets")
        self.assertNothingConnected(before)
        self.assertEqual([e["reason"] for e in self.route_events()], ["no-targets"])

    @defer.inlineCallbacks
    def test_bare_name_without_target_or_default(self):
        gateway = self.gateway(target=None)
        before = self.counts()
        result = yield self.ssh(gateway, self.user)
        self.assertRefused(result, f"no default target: log in as {self.user}@TARGET".encode())
        self.assertNothingConnected(before)

    @defer.inlineCallbacks
    def test_unauthenticated_operator_learns_nothing(self):
        """A stranger's key is refused as usual; the alias is never looked at."""
        gateway = self.gateway()
        stranger = os.path.join(self.base, "stranger")
        keygen(stranger)
        argv = gateway.ssh_argv(WHERE)
        argv[argv.index(gateway.operator_key)] = stranger
        argv[argv.index(f"{self.user}@127.0.0.1")] = f"{self.user}%db9@127.0.0.1"
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", err)
        self.assertNotIn(b"wraith:", err)
        self.assertEqual(self.route_events(), [])
        self.assertEqual(self.attempts, [])

    @defer.inlineCallbacks
    def test_wrong_pinned_key_for_one_target(self):
        gateway = self.gateway()
        code, out, err = yield self.ssh(gateway, f"{self.user}@wrongkey")
        self.assertEqual(code, 255)
        self.assertIn(b"TARGET HOST KEY CHANGED", err)
        self.assertIn(f"127.0.0.1:{self.db2.port}".encode(), err)
        self.assertNotIn("Accepted publickey", self.db2.log())
        # The other targets are not affected.
        code, out, err = yield self.ssh(gateway, f"{self.user}@db2")
        self.assertEqual((code, out.strip()), (0, f"port={self.db2.port}".encode()), err)


class PassthroughRoutingTests(Targets):
    """Passthrough checks the password at the chosen target, and only there."""

    password_auth = True

    def passthrough(self, **overrides):
        return self.gateway(auth="passthrough", **overrides)

    def run_with_password(self, gateway, login: str, password: str):
        argv = gateway.ssh_argv(WHERE)
        argv[argv.index("BatchMode=yes")] = "BatchMode=no"
        argv[1:1] = ["-o", "NumberOfPasswordPrompts=1", "-o", "PubkeyAuthentication=no"]
        destination = argv.index(f"{self.user}@127.0.0.1")
        argv[destination : destination + 1] = ["-l", login, "127.0.0.1"]
        return spawn_ssh(reactor, argv, env=askpass_env(self.base, password))

    @defer.inlineCallbacks
    def test_alias_reaches_its_target(self):
        gateway = self.passthrough()
        code, out, err = yield self.run_with_password(
            gateway, f"{self.user}@db2", self.db2.password
        )
        self.assertEqual((code, out.strip()), (0, f"port={self.db2.port}".encode()), err)
        self.assertEqual(self.attempts, [("127.0.0.1", self.db2.port)])
        self.assertIn("Accepted password", self.db2.log())
        self.assertNotIn("Accepted password", self.db1.log())
        self.assertNotIn("Failed password", self.db1.log())

    @defer.inlineCallbacks
    def test_unknown_alias_refused_before_the_password_goes_anywhere(self):
        gateway = self.passthrough()
        before = self.counts()
        result = yield self.run_with_password(gateway, f"{self.user}@db9", self.db1.password)
        self.assertRefused(result, f"target 'db9' is unknown or not open to {self.user}".encode())
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.trap.connections, 0)
        self.assertEqual(self.counts(), before)
        self.assertEqual([e["reason"] for e in self.route_events()], ["unknown"])

    def counts(self) -> tuple[int, int]:
        return self.connections_logged(self.db1), self.connections_logged(self.db2)


class ForwardProtectionTests(Targets):
    """A tunnel to any routed target's sshd would bypass approval: refused."""

    @defer.inlineCallbacks
    def test_every_target_sshd_is_protected(self):
        echo = EchoServer(self)
        # The rules open all four loopback ports; the target layer must still hold.
        destinations = [self.db1.port, self.db2.port, self.trap.number, echo.number]
        gateway = self.gateway(**{"forward-policy": loopback_policy(self.base, destinations)})
        locals_ = [free_port() for _ in destinations]
        forwards = [
            arg
            for local, port in zip(locals_, destinations, strict=True)
            for arg in ("-L", f"{local}:127.0.0.1:{port}")
        ]
        argv = gateway.ssh_argv(extra=["-N", "-o", "ExitOnForwardFailure=yes", *forwards])
        destination = argv.index(f"{self.user}@127.0.0.1")
        argv[destination : destination + 1] = ["-l", f"{self.user}@db1", "127.0.0.1"]
        stderr = []
        ended = defer.Deferred()
        proto = protocol.ProcessProtocol()
        proto.errReceived = stderr.append
        proto.processEnded = lambda reason: ended.callback(None)
        process = reactor.spawnProcess(proto, argv[0], argv, env=os.environ.copy())

        def stop():
            if not ended.called:
                process.signalProcess("TERM")
            return ended

        self.addCleanup(stop)
        for local in locals_:
            yield wait_listening(local)
        echoed = []
        for local in locals_:
            echoed.append((yield threads.deferToThread(exchange, local, b"x")))
        self.assertEqual(echoed, [b"", b"", b"", b"x"])
        yield stop()
        err = b"".join(stderr)
        # Each refused port was opened twice (wait_listening's probe, then
        # the exchange), and every refusal was for being a target's sshd.
        refused = err.count(b"open failed: administratively prohibited")
        self.assertEqual(refused, 6, err)
        self.assertEqual(err.count(b"destination not allowed: target SSH server"), refused)
        self.assertEqual(self.trap.connections, 0)


class TwistdTargetsTests(unittest.TestCase):
    """C{twistd wraith --targets} without C{--target}, as an operator runs it."""

    timeout = 90

    def setUp(self):
        self.db1 = start_sshd(self)
        self.db2 = start_sshd(self)
        self.db2.authorize_key(self.db1.client_public_key)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.service = ApprovalService(rule=lambda r: ("approve", "ok"), token="tok-en")
        self.approval_url = self.service.listen(reactor, self)
        self.operator_key = os.path.join(self.base, "operator")
        self.keys = os.path.join(self.base, "authorized_keys")
        with open(self.keys, "w") as f:
            f.write(keygen(self.operator_key) + "\n")
        self.targets = write_targets(
            self.base,
            f'[targets.db1]\nhost = "127.0.0.1"\nport = {self.db1.port}\n'
            f'known_hosts = "{self.db1.known_hosts_path}"\n'
            f'[targets.db2]\nhost = "127.0.0.1"\nport = {self.db2.port}\n'
            f'host_key = "{self.db2.host_public_key}"\n',
        )

    def argv(self, *extra: str) -> list[str]:
        self.port = free_port()
        self.host_key = os.path.join(self.base, "gateway_host_key")
        self.logfile = os.path.join(self.base, "twistd.log")
        return twistd_argv(
            "-n",
            "--pidfile=",
            f"--logfile={self.logfile}",
            "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--host-key={self.host_key}",
            f"--targets={self.targets}",
            f"--target-identity={self.db1.client_key_path}",
            f"--authorized-keys={self.keys}",
            f"--approval={self.approval_url}",
            "--approval-token=tok-en",
            *extra,
        )

    @defer.inlineCallbacks
    def test_alias_through_twistd(self):
        process = subprocess.Popen(
            self.argv(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(stop_process, process)
        # Up to 30 s for the key file and the approval connection: a loaded
        # machine can take seconds just to import and start twistd.
        for _ in range(300):
            if process.poll() is not None:
                self.fail(f"twistd exited: {process.stdout.read().decode()}")
            if os.path.exists(self.host_key) and self.service.connections:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("gateway did not start")
        known = os.path.join(self.base, "known_hosts")
        pin_gateway_key(known, self.port, self.host_key)
        user = self.db1.user
        argv = operator_argv(self.port, self.operator_key, known, f"{user}%db2", WHERE)
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual((code, out.strip()), (0, f"port={self.db2.port}".encode()), err)
        self.assertEqual(
            [r["target"] for r in self.service.requests], [f"127.0.0.1:{self.db2.port}"]
        )
        argv = operator_argv(self.port, self.operator_key, known, user, WHERE)
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255)
        self.assertIn(f"wraith: no default target: log in as {user}@TARGET".encode(), err)
        with open(self.logfile) as f:
            log = f.read()
        self.assertIn("wraith gateway for targets db1, db2 on", log)
        self.assertIn(f"target refused for {user}: - (no-default)", log)

    def test_config_error_from_twistd(self):
        with open(self.targets, "a") as f:
            f.write('[targets.db3]\nhost = "127.0.0.1"\n')
        result = subprocess.run(
            self.argv(),
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
        self.assertNotEqual(result.returncode, 0)
        last = result.stdout.strip().splitlines()[-1] + result.stderr
        self.assertIn(f"--targets: {self.targets}: targets.db3: give exactly one of", last)
