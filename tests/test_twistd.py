"""
C{twistd wraith} as users run it: the plugin, its flags, its errors, and a
real gateway process in front of a real sshd with an approval service
written from PROTOCOL.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.approval_service import ApprovalService
from tests.gatewayharness import home_of, keygen
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from tests.test_hub import ReviewerSocket, make_request
from wraith_conch.approval.client import ApprovalClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = [
    "--listen",
    "--host-key",
    "--target",
    "--target-known-hosts",
    "--target-identity",
    "--authorized-keys",
    "--auth",
    "--log-format",
    "--approval",
    "--approval-token",
    "--approval-token-file",
    "--approval-timeout",
    "--on-mismatch",
]


# At least 16 characters, as any hub asks of a gateway token.
JOIN_TOKEN = "embedded-hub-join-token-4f1e9a"
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def twistd_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", TWISTD, *args]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s; close its stdout."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def pin_gateway_key(path: str, port: int, host_key_path: str) -> None:
    """A known_hosts file for the operator, pinning the gateway's generated key."""
    from twisted.conch.ssh import keys

    public = keys.Key.fromFile(host_key_path).public().toString("openssh").decode()
    with open(path, "w") as f:
        f.write(f"[127.0.0.1]:{port} {public}\n")


def operator_argv(port: int, key: str, known_hosts: str, user: str, *command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-p", str(port), "-i", key,
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        f"{user}@127.0.0.1", *command,
    ]  # fmt: skip


class PluginInstallTests(unittest.TestCase):
    """C{pip install .} into a fresh virtualenv puts the plugin where twistd finds it."""

    timeout = 300

    def test_help_from_fresh_virtualenv(self):
        with tempfile.TemporaryDirectory() as venv:
            subprocess.run(
                [sys.executable, "-m", "venv", "--system-site-packages", venv],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            # Dependencies come from the system site; the project itself must
            # be installed for real (not found on sys.path by accident).
            build = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, build, True)
            shutil.copytree(
                REPO,
                os.path.join(build, "src"),
                ignore=shutil.ignore_patterns(
                    ".git",
                    "_trial_temp*",
                    "*.egg-info",
                    "build",
                    "__pycache__",
                    "tests.*",
                    ".hypothesis",
                    ".benchmarks",
                ),
                symlinks=True,
            )
            subprocess.run(
                [
                    os.path.join(venv, "bin", "pip"),
                    "install",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    os.path.join(build, "src"),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            # The venv shares the system site, so its twistd script is the
            # system's; run twistd with the venv's interpreter instead.
            venv_python = os.path.join(venv, "bin", "python")
            result = subprocess.run(
                [venv_python, "-c", TWISTD, "wraith", "--help"],
                cwd=venv,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        for flag in FLAGS:
            [line] = [line for line in lines if line.strip().startswith(flag + "=")] or [None]
            self.assertIsNotNone(line, f"{flag} missing from --help")
            # A one-line description follows the flag.
            self.assertGreater(len(line.split(flag, 1)[1].strip()), 10, line)


class CommandLineErrorTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.identity = os.path.join(self.base, "id")
        pub = keygen(self.identity)
        self.keys = os.path.join(self.base, "authorized_keys")
        with open(self.keys, "w") as f:
            f.write(pub + "\n")
        self.known = os.path.join(self.base, "known_hosts")
        open(self.known, "w").close()

    def assertFlagError(self, result, flag: str, words: str):
        self.assertNotEqual(result.returncode, 0)
        last = result.stdout.strip().splitlines()[-1] + result.stderr
        self.assertIn(flag, last)
        self.assertIn(words, last)

    def run_parse(self, *extra: str) -> subprocess.CompletedProcess:
        args = {
            "--host-key": os.path.join(self.base, "hk"),
            "--target": "127.0.0.1:22",
            "--target-known-hosts": self.known,
            "--target-identity": self.identity,
            "--authorized-keys": self.keys,
            "--approval": "ws://127.0.0.1:9/",
        }
        overridden = {e.split("=", 1)[0] for e in extra}
        argv = [f"{k}={v}" for k, v in args.items() if k not in overridden]
        return subprocess.run(
            twistd_argv("-n", "--pidfile=", "wraith", *argv, *extra),
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )

    def test_unknown_flag(self):
        result = self.run_parse("--no-such-flag")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no-such-flag", result.stdout + result.stderr)

    def test_missing_known_hosts(self):
        result = self.run_parse("--target-known-hosts=/nonexistent/known_hosts")
        self.assertFlagError(result, "--target-known-hosts", "/nonexistent/known_hosts")

    def test_unreadable_identity(self):
        result = self.run_parse("--target-identity=/nonexistent/id")
        self.assertFlagError(result, "--target-identity", "/nonexistent/id")

    def test_bad_endpoint(self):
        result = self.run_parse("--listen=bogus:what")
        self.assertFlagError(result, "--listen", "bogus:what")

    def test_malformed_key(self):
        bad = os.path.join(self.base, "bad_identity")
        with open(bad, "w") as f:
            f.write(
                "-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n"
            )
        os.chmod(bad, 0o600)
        result = self.run_parse(f"--target-identity={bad}")
        self.assertFlagError(result, "--target-identity", "not a usable private key")

    def test_bad_target(self):
        result = self.run_parse("--target=host:notaport")
        self.assertFlagError(result, "--target", "bad port")

    def test_bad_approval_url(self):
        result = self.run_parse("--approval=http://127.0.0.1/")
        self.assertFlagError(result, "--approval", "embedded")

    def test_port_in_use_stops_twistd(self):
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            result = self.run_parse(f"--listen=tcp:{port}:interface=127.0.0.1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Address already in use", result.stdout + result.stderr)


class TwistdGatewayTests(unittest.TestCase):
    """A real C{twistd -n wraith} process, a real sshd, real ssh."""

    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.service = ApprovalService(
            rule=lambda r: (
                None
                if "HOLD" in r["command"]
                else ("deny", "not today")
                if "DENYME" in r["command"]
                else ("approve", "ok")
            ),
            token="s3cret-token",
        )
        self.approval_url = self.service.listen(reactor, self)
        self.operator_key = os.path.join(self.base, "operator")
        pub = keygen(self.operator_key)
        self.keys = os.path.join(self.base, "authorized_keys")
        with open(self.keys, "w") as f:
            f.write(pub + "\n")

    @defer.inlineCallbacks
    def start_gateway(self, *extra: str):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host_key = os.path.join(self.base, "gateway_host_key")
        self.logfile = os.path.join(self.base, "twistd.log")
        argv = twistd_argv(
            "-n",
            "--pidfile=",
            f"--logfile={self.logfile}",
            "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--host-key={self.host_key}",
            f"--target=127.0.0.1:{self.sshd.port}",
            f"--target-known-hosts={self.sshd.known_hosts_path}",
            f"--target-identity={self.sshd.client_key_path}",
            f"--authorized-keys={self.keys}",
            f"--approval={self.approval_url}",
            "--approval-token=s3cret-token",
            *extra,
        )
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop_gateway)
        # Up to 30 s for the key file and the connection: a loaded machine
        # can take seconds just to import and start twistd.
        for _ in range(300):
            if self.process.poll() is not None:
                self.fail(f"twistd exited: {self.process.stdout.read().decode()}")
            if os.path.exists(self.host_key) and self.service.connections:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("gateway did not start and connect to the approval service")
        self.known = os.path.join(self.base, "known_hosts")
        pin_gateway_key(self.known, self.port, self.host_key)

    def stop_gateway(self):
        stop_process(self.process)

    def ssh(self, *command: str):
        argv = operator_argv(self.port, self.operator_key, self.known, self.sshd.user, *command)
        return spawn_ssh(reactor, argv)

    @defer.inlineCallbacks
    def test_exec_approved_and_denied_through_twistd(self):
        yield self.start_gateway()
        self.assertEqual(os.stat(self.host_key).st_mode & 0o777, 0o600)
        code, out, err = yield self.ssh("echo approved-run; exit 5")
        self.assertEqual((code, out.strip()), (5, b"approved-run"), err)
        code, out, err = yield self.ssh("echo never DENYME")
        self.assertEqual(code, 1)
        self.assertIn(b"denied: not today", err)
        self.assertEqual(out, b"")
        hello = self.service.frames[0]
        self.assertEqual((hello["type"], hello["role"], hello["version"]), ("hello", "gateway", 1))
        commands = [r["command"] for r in self.service.requests]
        self.assertEqual(commands, ["echo approved-run; exit 5", "echo never DENYME"])
        with open(self.logfile) as f:
            log = f.read()
        self.assertIn("auth accepted", log)
        self.assertNotIn("s3cret-token", log)

    @defer.inlineCallbacks
    def test_sigterm_denies_pending_tells_operators_and_exits_cleanly(self):
        yield self.start_gateway()
        marker = os.path.join(home_of(self.sshd), f"held-{os.getpid()}-{self.port}")
        waiting = self.service.next_request()
        running = self.ssh(f"touch {marker} # HOLD")
        yield waiting
        self.process.send_signal(signal.SIGTERM)
        code, out, err = yield running
        self.assertEqual(code, 1, err)
        self.assertIn(b"wraith: denied: the gateway is stopping", err)
        exit_code = yield threads.deferToThread(self.process.wait, 20)
        self.assertEqual(exit_code, 0)
        self.assertFalse(os.path.exists(marker))
        # The process may exit before this reactor has read its last frames.
        yield wait_until(lambda: self.service.cancels, "the cancel frame", timeout=10)
        cancels = [c["id"] for c in self.service.cancels]
        self.assertEqual(cancels, [self.service.requests[-1]["id"]])

    @defer.inlineCallbacks
    def test_json_logs(self):
        yield self.start_gateway("--log-format=json")
        code, out, err = yield self.ssh("true")
        self.assertEqual(code, 0, err)
        import json

        # Every line up to the close, once the gateway has seen the client go.
        def closed_logged() -> bool:
            with open(self.logfile) as f:
                return "connection closed" in f.read()

        yield wait_until(
            closed_logged,
            "the connection-closed line in the log",
            timeout=10,
        )
        events = []
        with open(self.logfile) as f:
            for line in f:
                line = line.strip()
                if line:
                    events.append(json.loads(line))
        accepted = [
            e for e in events if e.get("event_kind") == "auth" and e.get("result") == "accepted"
        ]
        self.assertEqual(len(accepted), 1, events)
        self.assertEqual(accepted[0]["user"], self.sshd.user)
        self.assertEqual(accepted[0]["method"], "publickey")
        self.assertTrue(accepted[0]["key_fingerprint"].startswith("SHA256:"))


class EmbeddedHubTests(unittest.TestCase):
    """C{twistd -n wraith} without C{--approval}: the gateway and its hub."""

    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.operator_key = os.path.join(self.base, "operator")
        keys_path = os.path.join(self.base, "authorized_keys")
        with open(keys_path, "w") as f:
            f.write(keygen(self.operator_key) + "\n")
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.port, self.hub_port = ports
        self.host_key = os.path.join(self.base, "gateway_host_key")
        self.audit = os.path.join(self.base, "audit.jsonl")
        self.recordings = os.path.join(self.base, "recordings")
        os.makedirs(self.recordings)
        # The token other gateways send to join this embedded hub.
        token_file = os.path.join(self.base, "gateway_token")
        with open(token_file, "w") as f:
            f.write(JOIN_TOKEN + "\n")
        argv = twistd_argv(
            "-n", "--pidfile=", f"--logfile={os.path.join(self.base, 'twistd.log')}", "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--hub-listen=tcp:{self.hub_port}:interface=127.0.0.1",
            f"--host-key={self.host_key}", f"--target=127.0.0.1:{self.sshd.port}",
            f"--target-known-hosts={self.sshd.known_hosts_path}",
            f"--target-identity={self.sshd.client_key_path}", f"--authorized-keys={keys_path}",
            f"--audit-log={self.audit}", f"--record-dir={self.recordings}",
            f"--approval-token-file={token_file}",
        )  # fmt: skip
        self.process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        self.addCleanup(self.stop)

    def stop(self):
        stop_process(self.process)

    @defer.inlineCallbacks
    def admin_token(self):
        """The admin's token, from the login link the hub prints once."""
        login = yield threads.deferToThread(self.process.stdout.readline)
        for _ in range(5):
            if "/login?token=" in login:
                break
            login = yield threads.deferToThread(self.process.stdout.readline)
        match = re.search(r"/login\?token=(\S+)", login)
        self.assertIsNotNone(match, login)
        return match.group(1)

    def review_cli(self, token: str) -> list[str]:
        return [sys.executable, "-m", "wraith_conch.review_cli",
                "--hub", f"http://127.0.0.1:{self.hub_port}", "--token", token]  # fmt: skip

    @defer.inlineCallbacks
    def test_reviewer_approves_through_the_embedded_hub(self):
        token = yield self.admin_token()
        yield wait_until(lambda: os.path.exists(self.host_key), "the host key", timeout=30)
        known = os.path.join(self.base, "known_hosts")
        pin_gateway_key(known, self.port, self.host_key)

        # The hub prints the link when it starts, which can be before the
        # gateway's own listener is up: an ssh sent now could be refused.
        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        yield wait_until(listening, "the gateway's listener", timeout=30)
        marker = os.path.join(home_of(self.sshd), f"hub-{os.getpid()}-{self.port}")
        self.addCleanup(lambda: os.path.exists(marker) and os.unlink(marker))
        argv = operator_argv(self.port, self.operator_key, known, self.sshd.user, f"touch {marker}")
        running = spawn_ssh(reactor, argv)
        review = self.review_cli(token)
        env = {"PYTHONPATH": REPO}
        request_id = None
        for _ in range(50):
            code, out, err = yield spawn_ssh(reactor, [*review, "list", "--json"], env=env)
            pending = json.loads(out or b"[]") if code == 0 else []
            if pending:
                request_id = pending[0]["id"]
                self.assertEqual(pending[0]["command"], f"touch {marker}")
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertIsNotNone(
            request_id, f"the request never reached the hub: {code} {out!r} {err!r}"
        )
        self.assertFalse(os.path.exists(marker))
        code, out, err = yield spawn_ssh(
            reactor, [*review, "approve", request_id, "--reason", "ok"]
        )
        self.assertEqual(code, 0, err)
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(marker))
        # Audited, with the reviewer, in a 0600 file.
        self.assertEqual(os.stat(self.audit).st_mode & 0o777, 0o600)
        with open(self.audit) as f:
            records = [json.loads(line) for line in f]
        decisions = [r for r in records if r.get("event") == "decision"]
        self.assertEqual(decisions[-1]["decision"], "approve")
        self.assertEqual(decisions[-1]["id"], request_id)

    @defer.inlineCallbacks
    def test_other_gateways_join_with_the_approval_token(self):
        # --approval-token on an embedded gateway is the token its hub asks
        # of other gateways, so a second gateway can share the reviewers.
        admin = yield self.admin_token()
        yield wait_until(lambda: os.path.exists(self.host_key), "the gateway to start", timeout=30)

        class Hub:
            local_address = ("127.0.0.1", self.hub_port)

        refused = yield ReviewerSocket.open(
            self, Hub, path="/gateway", token="wrong-token-for-this-hub", expect_open=False
        )
        self.assertIn("401", refused.close_reason)
        second = ApprovalClient(
            reactor,
            f"ws://127.0.0.1:{self.hub_port}/gateway",
            token=JOIN_TOKEN,
            gateway_name="gw-2",
            timeout=60,
            retry_policy=lambda attempt: 0.1,
        )
        second.startService()
        self.addCleanup(second.stopService)
        yield second.when_open().addTimeout(30, reactor)
        decided = second.request_decision(make_request("uptime", session="gw2-session"))
        env = {"PYTHONPATH": REPO}
        pending = []
        for _ in range(50):
            code, out, err = yield spawn_ssh(
                reactor, [*self.review_cli(admin), "list", "--json"], env=env
            )
            pending = json.loads(out or b"[]") if code == 0 else []
            if pending:
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([p["command"] for p in pending], ["uptime"])
        code, out, err = yield spawn_ssh(
            reactor, [*self.review_cli(admin), "approve", pending[0]["id"]], env=env
        )
        self.assertEqual(code, 0, err)
        decision = yield decided
        self.assertEqual((decision.approved, decision.reviewer), (True, "admin"))
        with open(os.path.join(self.base, "twistd.log")) as f:
            self.assertNotIn(JOIN_TOKEN, f.read())
