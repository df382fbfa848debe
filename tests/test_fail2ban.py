"""
The shipped fail2ban filters, run by Debian's fail2ban-regex over real log
output of failed and successful logins, in both log formats.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher, jsonFileLogObserver, textFileLogObserver
from twisted.trial import unittest

from tests.gatewayharness import Gateway, keygen
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from wraith_conch.testing import ScriptedApprover, approve_all_except

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = os.path.join(REPO, "contrib", "fail2ban", "filter.d")


def banned_addresses(log_path: str, filter_name: str) -> list[str]:
    """The address of every line the filter counts as a failure (fail2ban-regex --out ip)."""
    result = subprocess.run(
        ["fail2ban-regex", "--out", "ip", log_path, os.path.join(FILTERS, filter_name)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result.stdout.split()


class Fail2banFilterTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        if shutil.which("fail2ban-regex") is None:
            raise unittest.SkipTest("fail2ban-regex is missing (Debian package fail2ban)")
        self.sshd = start_sshd(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.text_log = os.path.join(base, "twistd.log")
        self.json_log = os.path.join(base, "twistd.json")
        self.files = [open(self.text_log, "w"), open(self.json_log, "w")]
        self.observers = [
            textFileLogObserver(self.files[0]),
            jsonFileLogObserver(self.files[1], recordSeparator=""),
        ]
        for observer in self.observers:
            globalLogPublisher.addObserver(observer)
        self.addCleanup(self._close)
        self.stranger = os.path.join(base, "stranger")
        keygen(self.stranger)
        self.gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except()))

    def _close(self):
        for observer in self.observers:
            if observer in globalLogPublisher._observers:
                globalLogPublisher.removeObserver(observer)
        for f in self.files:
            f.close()

    @defer.inlineCallbacks
    def test_filters_count_failures_not_successes(self):
        attempts = 3
        for _ in range(attempts):
            argv = self.gateway.ssh_argv("true")
            argv[argv.index(self.gateway.operator_key)] = self.stranger
            code, out, err = yield spawn_ssh(reactor, argv)
            self.assertEqual(code, 255, err)
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv("true"))
        self.assertEqual(code, 0, err)
        self._close()
        for log_path, filter_name in (
            (self.text_log, "wraith.conf"),
            (self.json_log, "wraith-json.conf"),
        ):
            # One per failed attempt; the successful login is not counted.
            self.assertEqual(
                banned_addresses(log_path, filter_name), ["127.0.0.1"] * attempts, filter_name
            )

    @defer.inlineCallbacks
    def test_filters_count_connection_limits(self):
        from tests.polling import wait_until
        from tests.rawclients import connect_raw

        gateway = Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            **{"max-connections-per-ip": "2", "max-startups": "3", "login-grace-time": "3"},
        )
        port = gateway.port_number
        # The grace time leaves a loaded machine time to make every refused
        # connection below while the held ones still hold their slots.
        # 127.0.0.2: two held, three refused per address (counted).
        held = [connect_raw(reactor, self, port, source="127.0.0.2") for _ in range(2)]
        yield wait_until(lambda: all(c.got_banner for c in held), "banners", timeout=10)
        refused = [connect_raw(reactor, self, port, source="127.0.0.2") for _ in range(3)]
        yield wait_until(lambda: all(c.lost for c in refused), "per-address refusals", timeout=10)
        # 127.0.0.3: one held, then the startups are full (not counted).
        crowd = [connect_raw(reactor, self, port, source="127.0.0.3")]
        yield wait_until(lambda: crowd[0].got_banner, "banner", timeout=10)
        crowd += [connect_raw(reactor, self, port, source="127.0.0.3") for _ in range(2)]
        yield wait_until(lambda: all(c.lost for c in crowd[1:]), "startups refusals", timeout=10)
        # Every held one outlives the grace time (counted).
        yield wait_until(lambda: all(c.lost for c in held + crowd), "grace", timeout=15)
        self._close()
        for log_path, filter_name in (
            (self.text_log, "wraith.conf"),
            (self.json_log, "wraith-json.conf"),
        ):
            self.assertEqual(
                sorted(banned_addresses(log_path, filter_name)),
                ["127.0.0.2"] * 5 + ["127.0.0.3"],
                filter_name,
            )
