"""
The example deployment C{tac/wraith.tac} as users run it: C{twistd -ny}
with settings from the environment, in front of a real sshd, with an
approval service written from PROTOCOL.md, driven by the real ssh client.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from twisted.conch.ssh import keys
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.approval_service import ApprovalService
from tests.gatewayharness import keygen
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from tests.test_twistd import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAC = os.path.join("tac", "wraith.tac")
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
TOKEN = "tac-s3cret-token"


def tac_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without WRAITH_* variables, plus C{settings}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRAITH_")}
    env.update(settings)
    return env


def run_tac(base: str, settings: dict[str, str], *twistd_flags: str) -> subprocess.Popen:
    """Start C{twistd -ny tac/wraith.tac} from the repository root; output goes to a file."""
    with open(os.path.join(base, "twistd.out"), "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", TWISTD, "--pidfile=", *twistd_flags, "-ny", TAC],
            cwd=REPO,
            env=tac_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TacGatewayTests(unittest.TestCase):
    """A real C{twistd -ny tac/wraith.tac} process, a real sshd, real ssh."""

    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.service = ApprovalService(
            rule=lambda r: (
                ("deny", "not via tac") if "DENYME" in r["command"] else ("approve", "ok")
            ),
            token=TOKEN,
        )
        self.approval_url = self.service.listen(reactor, self)
        self.operator_key = os.path.join(self.base, "operator")
        pub = keygen(self.operator_key)
        self.keys = os.path.join(self.base, "authorized_keys")
        with open(self.keys, "w") as f:
            f.write(pub + "\n")
        self.port = free_port()
        self.host_key = os.path.join(self.base, "gateway_host_key")
        self.logfile = os.path.join(self.base, "twistd.log")

    def settings(self) -> dict[str, str]:
        """Every setting as its own WRAITH_* variable."""
        return {
            "WRAITH_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "WRAITH_HOST_KEY": self.host_key,
            "WRAITH_TARGET": f"127.0.0.1:{self.sshd.port}",
            "WRAITH_TARGET_KNOWN_HOSTS": self.sshd.known_hosts_path,
            "WRAITH_TARGET_IDENTITY": self.sshd.client_key_path,
            "WRAITH_AUTHORIZED_KEYS": self.keys,
            "WRAITH_APPROVAL": self.approval_url,
            "WRAITH_APPROVAL_TOKEN": TOKEN,
            "WRAITH_GATEWAY_NAME": "tac-gateway",
        }

    @defer.inlineCallbacks
    def start_gateway(self, settings: dict[str, str], *twistd_flags: str):
        self.process = run_tac(self.base, settings, *twistd_flags)
        self.addCleanup(stop_process, self.process)
        # Up to 30 s for the key file and the approval connection: a loaded
        # machine can take seconds just to import and start twistd.
        for _ in range(300):
            if self.process.poll() is not None:
                self.fail(f"twistd exited with {self.process.returncode}: {self.output()}")
            if os.path.exists(self.host_key) and self.service.connections:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail(f"the gateway did not connect to the approval service: {self.output()}")
        self.known = os.path.join(self.base, "known_hosts")
        public = keys.Key.fromFile(self.host_key).public().toString("openssh").decode()
        with open(self.known, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {public}\n")

    def output(self) -> str:
        with open(os.path.join(self.base, "twistd.out"), errors="replace") as f:
            return f.read()

    def ssh(self, command: str):
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            self.operator_key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"{self.sshd.user}@127.0.0.1",
            command,
        ]
        return spawn_ssh(reactor, argv)

    @defer.inlineCallbacks
    def test_exec_through_tac_configured_by_environment(self):
        yield self.start_gateway(self.settings(), f"--logfile={self.logfile}")
        self.assertEqual(os.stat(self.host_key).st_mode & 0o777, 0o600)

        code, out, err = yield self.ssh("echo ok")
        self.assertEqual((code, out), (0, b"ok\n"), err)

        code, out, err = yield self.ssh("echo never DENYME")
        self.assertEqual((code, out), (1, b""), err)
        self.assertIn(b"wraith: denied: not via tac", err)

        hello = self.service.frames[0]
        self.assertEqual(
            (hello["type"], hello["role"], hello["gateway"], hello["version"]),
            ("hello", "gateway", "tac-gateway", 1),
        )
        requests = [(r["kind"], r["command"], r["user"]) for r in self.service.requests]
        self.assertEqual(
            requests,
            [("exec", "echo ok", self.sshd.user), ("exec", "echo never DENYME", self.sshd.user)],
        )
        self.assertEqual(self.service.refused, 0)
        with open(self.logfile) as f:
            log = f.read()
        self.assertIn("auth accepted", log)
        self.assertNotIn(TOKEN, log)

    @defer.inlineCallbacks
    def test_json_logs_with_flags_from_wraith_args(self):
        settings = self.settings()
        token = settings.pop("WRAITH_APPROVAL_TOKEN")
        token_file = os.path.join(self.base, "token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
        listen = settings.pop("WRAITH_LISTEN")
        json_log = os.path.join(self.base, "wraith.json")
        settings["WRAITH_ARGS"] = (
            f"--listen '{listen}' --approval-token-file={token_file} --log-format json"
        )
        settings["WRAITH_LOG_FILE"] = json_log
        yield self.start_gateway(settings)

        code, out, err = yield self.ssh("echo ok")
        self.assertEqual((code, out), (0, b"ok\n"), err)
        self.assertEqual([r["command"] for r in self.service.requests], ["echo ok"])

        def log_text() -> str:
            with open(json_log) as f:
                return f.read()

        # Every line up to the close, once the gateway has seen the client go.
        yield wait_until(
            lambda: "connection closed" in log_text(), "the connection-closed line", timeout=10
        )
        text = log_text()
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        accepted = [
            e for e in events if e.get("event_kind") == "auth" and e.get("result") == "accepted"
        ]
        self.assertEqual(len(accepted), 1, events)
        self.assertEqual(accepted[0]["user"], self.sshd.user)
        self.assertEqual(accepted[0]["method"], "publickey")
        self.assertTrue(accepted[0]["key_fingerprint"].startswith("SHA256:"))
        self.assertTrue(accepted[0]["remote_addr"].startswith("127.0.0.1:"))
        decisions = [e for e in events if e.get("event_kind") == "decision"]
        self.assertEqual([(e["kind"], e["result"]) for e in decisions], [("exec", "approved")])
        self.assertNotIn(token, text)


class TacSettingErrorTests(unittest.TestCase):
    """A bad setting stops C{twistd -ny tac/wraith.tac} with the plugin's one-line message."""

    timeout = 60

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        identity = os.path.join(self.base, "id")
        pub = keygen(identity)
        authorized_keys = os.path.join(self.base, "authorized_keys")
        with open(authorized_keys, "w") as f:
            f.write(pub + "\n")
        known_hosts = os.path.join(self.base, "known_hosts")
        open(known_hosts, "w").close()
        self.settings = {
            "WRAITH_HOST_KEY": os.path.join(self.base, "hk"),
            "WRAITH_TARGET": "127.0.0.1:22",
            "WRAITH_TARGET_KNOWN_HOSTS": known_hosts,
            "WRAITH_TARGET_IDENTITY": identity,
            "WRAITH_AUTHORIZED_KEYS": authorized_keys,
            "WRAITH_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
        }

    def run_to_exit(self, settings: dict[str, str]) -> tuple[int, str]:
        process = run_tac(self.base, settings)
        try:
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        with open(os.path.join(self.base, "twistd.out"), errors="replace") as f:
            return code, f.read()

    def test_bad_approval_url(self):
        code, output = self.run_to_exit(dict(self.settings, WRAITH_APPROVAL="http://127.0.0.1/"))
        self.assertNotEqual(code, 0)
        self.assertIn("wraith.tac: --approval: ", output)
        self.assertIn("embedded", output)

    def test_bad_value_from_wraith_args(self):
        settings = dict(self.settings, WRAITH_APPROVAL="ws://127.0.0.1:9/")
        settings["WRAITH_ARGS"] = "--on-mismatch=sometimes"
        code, output = self.run_to_exit(settings)
        self.assertNotEqual(code, 0)
        self.assertIn("wraith.tac: --on-mismatch: must be one of review, deny", output)
