"""
The approval benchmark runs end to end (C{python -m benchmarks.approval --quick}).

Only that it runs and reports: the figures depend on the machine and what
else runs on it, so nothing here judges speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 120.0
STOP_GRACE = 30.0

FIGURES = ("p50", "p99", "n")
APPROVAL_FIGURES = (
    "a_to_b",
    "a_to_b_wire",
    "c_to_d",
    "c_to_d_wire",
    "overhead",
    "overhead_wire",
    "settle",
    "enter_to_prompt_gateway",
    "enter_to_prompt_direct",
)


class ApprovalBenchmarkTests(TestCase):
    timeout = RUN_TIMEOUT + STOP_GRACE + 30

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("the benchmark runs as root (it creates the target's login user)")
        if not os.path.exists("/usr/sbin/sshd"):
            raise SkipTest("the benchmark needs OpenSSH's /usr/sbin/sshd")
        if importlib.util.find_spec("paramiko") is None:
            raise SkipTest("the benchmark needs paramiko")
        if shutil.which("ssh-keygen") is None:
            raise SkipTest("the benchmark needs OpenSSH's ssh-keygen")

    def run_quick(self) -> tuple[str, dict]:
        # A session of its own, so that a benchmark that overruns is stopped
        # together with everything it started.
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.approval", "--quick"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the benchmark then stops its sshd and gateway.
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
            self.fail(
                f"still running after {RUN_TIMEOUT} s\nstdout:\n{stdout[-3000:]}"
                f"\nstderr:\n{stderr[-3000:]}"
            )
        self.assertEqual(
            process.returncode,
            0,
            f"exit {process.returncode}\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}",
        )
        json_lines = [line for line in stdout.splitlines() if line.startswith("{")]
        self.assertEqual(len(json_lines), 1, stdout)
        return stdout, json.loads(json_lines[0])

    def test_quick_run_reports_every_figure(self) -> None:
        stdout, result = self.run_quick()
        self.assertEqual(result["benchmark"], "wraith_conch.approval")
        self.assertEqual(result["units"], "microseconds")
        self.assertTrue(result["quick"])
        self.assertEqual(result["probes_missing"], [])
        for phase in ("interactive", "typeahead", "recalled"):
            figures = result["approval"][phase]
            for name in APPROVAL_FIGURES:
                for key in FIGURES:
                    self.assertIn(key, figures[name], f"approval.{phase}.{name}")
                self.assertGreater(figures[name]["n"], 0, f"approval.{phase}.{name}")
                self.assertTrue(math.isfinite(figures[name]["p99"]), f"approval.{phase}.{name}")
            self.assertEqual(figures["approved"], figures["a_to_b"]["n"])
        for name in ("gateway", "direct"):
            for key in FIGURES:
                self.assertIn(key, result["echo"][name])
            self.assertGreaterEqual(result["echo"][name]["n"], 50)
        self.assertEqual(set(result["echo"]["added"]), {"p50", "p99"})
        self.assertEqual(
            set(result["goals"]),
            {
                "approval_overhead_p99_us",
                "approval_overhead_goal_us",
                "approval_overhead_met",
                "echo_added_p99_us",
                "echo_added_goal_us",
                "echo_added_met",
            },
        )
        self.assertIsInstance(result["goals"]["approval_overhead_met"], bool)
        self.assertIsInstance(result["goals"]["echo_added_met"], bool)
        for key in ("nproc", "python", "sshd", "ssh"):
            self.assertIn(key, result["machine"])
        # The table comes first, for people.
        self.assertIn("Keystroke echo", stdout)
        self.assertIn("Approval overhead", stdout)
