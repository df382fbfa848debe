"""
The benchmark suite runs end to end (C{python -m benchmarks --quick --json PATH}).

Only that it runs and reports every figure with a sane shape: the figures
depend on the machine and what else runs on it, so nothing here judges speed.
Fast unit tests of the suite's goal judging and table run without root.
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
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmarks are not installed with the package: the `trial` script
# (unlike `python -m pytest`) does not put the checkout on sys.path.
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from benchmarks import suite  # noqa: E402

RUN_TIMEOUT = 300.0
STOP_GRACE = 30.0

PERCENTILES = ("p50", "p99", "n")
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


def _positive(testcase, value, where: str) -> None:
    testcase.assertIsInstance(value, (int, float), where)
    testcase.assertTrue(math.isfinite(value) and value > 0, f"{where}: {value!r}")


class QuickRunTests(TestCase):
    """C{python -m benchmarks --quick}: every figure, both paths, in one run."""

    timeout = RUN_TIMEOUT + STOP_GRACE + 30

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("the benchmarks run as root (they create the target's login user)")
        if not os.path.exists("/usr/sbin/sshd"):
            raise SkipTest("the benchmarks need OpenSSH's /usr/sbin/sshd")
        for tool in ("ssh", "sftp", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise SkipTest(f"the benchmarks need OpenSSH's {tool}")
        if importlib.util.find_spec("paramiko") is None:
            raise SkipTest("the benchmarks need paramiko")

    def run_quick(self) -> tuple[str, dict]:
        workdir = tempfile.mkdtemp(prefix="wraith-test-benchmarks-")
        self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
        json_path = os.path.join(workdir, "result.json")
        # A session of its own, so that a benchmark that overruns is stopped
        # together with everything it started.
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks", "--quick", "--json", json_path],
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
            # SIGTERM first: the suite then stops what it started.
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
        finally:
            # Whatever the group still holds.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.assertEqual(
            process.returncode,
            0,
            f"exit {process.returncode}\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}",
        )
        with open(json_path, encoding="utf-8") as f:
            return stdout, json.load(f)

    def test_quick_run_reports_every_figure(self) -> None:
        stdout, result = self.run_quick()
        self.assertEqual(result["benchmark"], "wraith_conch")
        self.assertTrue(result["quick"])
        self.assertEqual(
            (result["cipher"], result["mac"], result["kex"]),
            ("aes128-ctr", "hmac-sha2-256", "curve25519-sha256"),
        )
        self.assertEqual(len(result["load_average"]["start"]), 3)
        for key in ("cpu", "cores", "python", "sshd", "ssh"):
            self.assertIn(key, result["machine"])
        self.assertIn("commit", result["code"])
        self.assertIn("T", result["date"])
        figures = result["figures"]
        self.assertEqual(set(figures), set(suite.FIGURES))
        self.assertEqual(set(result["goals_met"]), set(suite.FIGURES))
        for name, figure in figures.items():
            self.assertIsInstance(figure["met"], bool, name)
            self.assertEqual(figure["goal"], suite.GOALS[name])
            self.assertEqual(result["goals_met"][name], figure["met"])
            self.assertEqual(len(figure["load_average_at_start"]), 3, name)
            _positive(self, figure["seconds"], f"{name}.seconds")

        quick = suite.SIZES
        for name in ("exec", "sftp", "forward"):
            figure = figures[name]
            self.assertEqual(figure["bytes"], quick[name]["quick"]["bytes"])
            for path in ("gateway", "direct"):
                _positive(self, figure[path], f"{name}.{path}")
                self.assertEqual(len(figure[f"{path}_all"]), quick[name]["quick"]["rounds"])
            _positive(self, figure["ratio"], f"{name}.ratio")

        keys = quick["interactive"]["quick"]["keys"]
        for path in ("gateway", "direct"):
            for name, n in (
                ("echo", keys),
                ("login", quick["login"]["quick"]["count"]),
            ):
                figure = figures[name][path]
                self.assertEqual(figure["n"], n, f"{name}.{path}")
                _positive(self, figure["p50"], f"{name}.{path}.p50")
                self.assertGreaterEqual(figure["p99"], figure["p50"], f"{name}.{path}")
        self.assertIsInstance(figures["echo"]["added_p99"], float)
        _positive(self, figures["login"]["ratio"], "login.ratio")

        approval = figures["approval"]
        self.assertEqual(approval["overhead"]["n"], quick["interactive"]["quick"]["commands"])
        _positive(self, approval["overhead"]["p50"], "approval.overhead.p50")
        self.assertEqual(approval["probes_missing"], [])
        details = approval["details"]["approval"]
        for phase in ("interactive", "typeahead", "recalled"):
            for name in APPROVAL_FIGURES:
                for key in PERCENTILES:
                    self.assertIn(key, details[phase][name], f"{phase}.{name}")
                self.assertGreater(details[phase][name]["n"], 0, f"{phase}.{name}")
            self.assertEqual(details[phase]["approved"], details[phase]["a_to_b"]["n"])

        scale = figures["scale"]
        shape = quick["scale"]["quick"]
        self.assertEqual(scale["sessions"], shape["sessions"])
        self.assertEqual(scale["connections"] * scale["channels_per_connection"], shape["sessions"])
        _positive(self, scale["rss_idle_kb"], "scale.rss_idle_kb")
        self.assertGreaterEqual(scale["rss_loaded_kb"], scale["rss_idle_kb"] * 0.5)
        self.assertIsInstance(scale["rss_per_session_kb"], (int, float))
        self.assertEqual(scale["lost_sessions"], {"gateway": 0, "direct": 0})
        for path in ("gateway", "direct"):
            # Each typist types every 100 ms; a loaded machine skips a few.
            expected = shape["typists"] * shape["seconds"] / 0.1
            self.assertGreaterEqual(scale[path]["n"], expected * 0.5, f"scale.{path}")
            _positive(self, scale[path]["p99"], f"scale.{path}.p99")

        slow = figures["slow"]
        _positive(self, slow["rss_before_kb"], "slow.rss_before_kb")
        self.assertGreaterEqual(slow["rss_peak_kb"], slow["rss_before_kb"])
        self.assertEqual(slow["rss_growth_kb"], slow["rss_peak_kb"] - slow["rss_before_kb"])
        # The stalled stream was held back, not dropped: it resumed.
        self.assertGreaterEqual(slow["resumed_bytes"], 64_000_000)

        # The table comes first, for people.
        self.assertIn("gateway", stdout)
        self.assertIn("direct OpenSSH", stdout)
        for label in ("ssh exec", "sftp get", "ssh -L", "echo", "login", "approval", "scale"):
            self.assertIn(label, stdout)


def _figures(**overrides) -> dict:
    base = {
        "exec": {"ratio": 0.6},
        "sftp": {"ratio": 0.4},
        "forward": {"ratio": 0.5},
        "echo": {"added_p99": 1000.0},
        "login": {"gateway": {"p50": 30.0}, "direct": {"p50": 10.0}},
        "approval": {"overhead": {"p99": 1999.0}},
        "scale": {"rss_per_session_kb": 200.0, "gateway": {"p99": 12000.0}},
        "slow": {"rss_growth_kb": 100},
    }
    base.update(overrides)
    return base


class JudgeTests(SynchronousTestCase):
    """The goals, as issue 7 states them; a missing number never meets one."""

    def test_each_goal(self) -> None:
        figures = _figures()
        met = {name: suite.judge(name, figure) for name, figure in figures.items()}
        self.assertEqual(
            met,
            {
                "exec": True,
                "sftp": False,
                "forward": True,
                "echo": True,
                "login": False,
                "approval": True,
                "scale": False,
                "slow": True,
            },
        )

    def test_missing_numbers_fail(self) -> None:
        self.assertFalse(suite.judge("echo", {"added_p99": None}))
        self.assertFalse(suite.judge("approval", {"overhead": {"p99": None}}))
        self.assertFalse(suite.judge("exec", {}))

    def test_unknown_figure(self) -> None:
        self.assertRaises(ValueError, suite.judge, "nothing", {})

    def test_only_accepts_known_names(self) -> None:
        args = suite.parse_args(["--quick", "--only", "exec", "--only", "scale"])
        self.assertEqual(args.only, ["exec", "scale"])
        with self.assertRaises(SystemExit):
            suite.parse_args(["--only", "nothing"])
