"""The policy engine: loading rules files and deciding with them."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.approval.interfaces import KINDS, CommandRequest, Risk
from wraith_conch.approval.policy import (
    APPROVE,
    DEFAULT_POLICY,
    DEFAULT_POLICY_TOML,
    DENY,
    NO_RULE_REASON,
    REVIEW,
    Policy,
    PolicyDecision,
    PolicyError,
    load_policy,
    parse_policy,
)
from wraith_conch.approval.risk import score

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def request(
    command: str = "ls",
    *,
    user: str = "alice",
    target: str = "db1.internal:22",
    kind: str = "exec",
    typed: str | None = None,
    risk: Risk | None = None,
) -> CommandRequest:
    return CommandRequest.new(
        session="s-1.0",
        user=user,
        client="127.0.0.1:5000",
        target=target,
        kind=kind,
        command=command,
        typed=typed,
        created=1_700_000_000.0,
        risk=risk,
    )


EXAMPLE = """\
[[rule]]
name = "interns never"
user = { glob = "intern-*" }
decide = "deny"
reason = "interns use the staging gateway"

[[rule]]
name = "read-only"
kind = { exact = ["shell", "exec"] }
command = { regex = 'ls( -[alh]+)?( [\\w./-]+)*' }
decide = "approve"

[[rule]]
target = { exact = "db1.internal:22" }
command = { glob = "psql *" }
risk_at_least = 70
decide = "deny"

[[rule]]
kind = { exact = "subsystem" }
command = { exact = "sftp" }
decide = "review"
reason = "file transfers are always reviewed"
"""


class EvaluateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = parse_policy(EXAMPLE, "example.toml")

    def evaluate(self, req: CommandRequest) -> PolicyDecision:
        return self.policy.evaluate(req, score(req.command, req.kind))

    def test_first_match_wins(self) -> None:
        got = self.evaluate(request("ls -la", user="intern-bob"))
        self.assertEqual(got.action, DENY)
        self.assertEqual(got.rule_index, 1)
        self.assertEqual(got.rule_name, "interns never")
        self.assertEqual(got.reason, "interns use the staging gateway")
        self.assertEqual(got.source, "example.toml")

    def test_regex_fullmatch(self) -> None:
        self.assertEqual(self.evaluate(request("ls -la /tmp")).action, APPROVE)
        self.assertEqual(self.evaluate(request("ls -la /tmp")).rule_index, 2)
        # fullmatch: a matching prefix is not enough.
        self.assertEqual(self.evaluate(request("ls; rm -rf x")).action, REVIEW)
        self.assertEqual(self.evaluate(request("ls\nreboot")).action, REVIEW)

    def test_generated_reason(self) -> None:
        self.assertEqual(self.evaluate(request("ls")).reason, "policy rule 2 (read-only)")
        got = self.evaluate(request("psql -c 'DROP TABLE users'"))
        self.assertEqual((got.action, got.rule_index, got.reason), (DENY, 3, "policy rule 3"))

    def test_risk_at_least(self) -> None:
        got = self.evaluate(request("psql -c 'select 1'"))
        self.assertEqual((got.action, got.rule_index), (REVIEW, None))
        self.assertEqual(got.reason, NO_RULE_REASON)

    def test_glob_is_case_sensitive(self) -> None:
        got = self.evaluate(request("PSQL -c 'DROP TABLE users'"))
        self.assertEqual(got.action, REVIEW)
        got = self.evaluate(request("ls", user="Intern-bob"))
        self.assertEqual(got.action, APPROVE)

    def test_exact_and_lists(self) -> None:
        got = self.evaluate(request("sftp", kind="subsystem"))
        self.assertEqual((got.action, got.rule_index), (REVIEW, 4))
        self.assertEqual(got.reason, "file transfers are always reviewed")
        # kind exact list: a forward is not matched by rule 2.
        self.assertEqual(self.evaluate(request("ls", kind="forward")).rule_index, None)

    def test_default_is_review(self) -> None:
        got = self.evaluate(request("make install"))
        self.assertEqual(got, PolicyDecision(REVIEW, None, NO_RULE_REASON, None, "example.toml"))
        self.assertFalse(got.automatic)
        self.assertIsNone(got.rule_record())

    def test_mismatch_is_never_approved_automatically(self) -> None:
        req = request("ls", kind="shell", typed="ls -la")
        self.assertTrue(req.mismatch)
        got = self.evaluate(req)
        self.assertEqual((got.action, got.rule_index), (REVIEW, 2))
        self.assertIn("differ", got.reason)
        # A deny still applies.
        req = request("ls", kind="shell", typed="ls -l", user="intern-x")
        self.assertEqual(self.evaluate(req).action, DENY)

    def test_risk_defaults(self) -> None:
        policy = parse_policy("[[rule]]\nrisk_at_least = 50\ndecide = 'deny'\n")
        # No risk given: the request's own, else 0.
        self.assertEqual(policy.evaluate(request("x")).action, REVIEW)
        self.assertEqual(policy.evaluate(request("x", risk=Risk(score=60))).action, DENY)

    def test_risk_reason(self) -> None:
        policy = parse_policy(
            "[[rule]]\nrisk_reason = { glob = 'SQL *' }\ndecide = 'deny'\n", "p.toml"
        )
        self.assertEqual(
            policy.evaluate(request("x"), score("psql -c 'drop table x'")).action, DENY
        )
        self.assertEqual(policy.evaluate(request("x"), Risk(score=0)).action, REVIEW)

    def test_rule_record(self) -> None:
        got = self.evaluate(request("ls"))
        self.assertTrue(got.automatic)
        self.assertEqual(
            got.rule_record(), {"index": 2, "name": "read-only", "policy": "example.toml"}
        )

    def test_empty_policy(self) -> None:
        policy = parse_policy("")
        self.assertEqual(policy, Policy((), "<policy>"))
        self.assertEqual(policy.evaluate(request()).action, REVIEW)

    def test_catch_all_rule(self) -> None:
        policy = parse_policy("[[rule]]\ndecide = 'deny'\n")
        self.assertEqual(policy.evaluate(request()).rule_index, 1)

    def test_glob_spans_everything(self) -> None:
        # * matches "/", spaces and newlines (documented).
        policy = parse_policy("[[rule]]\ncommand = { glob = 'cat *' }\ndecide = 'approve'\n")
        self.assertEqual(policy.evaluate(request("cat /etc/x; rm -rf /\nx")).action, APPROVE)
        policy = parse_policy("[[rule]]\ncommand = { glob = 'cat [ab]?' }\ndecide = 'approve'\n")
        self.assertEqual(policy.evaluate(request("cat ax")).action, APPROVE)
        self.assertEqual(policy.evaluate(request("cat cx")).action, REVIEW)


class DefaultPolicyTests(SynchronousTestCase):
    def decide(self, command: str, kind: str = "exec") -> PolicyDecision:
        return DEFAULT_POLICY.evaluate(request(command, kind=kind), score(command, kind))

    def test_denies_rm_root(self) -> None:
        for command in (
            "rm -rf /",
            "sudo rm -fr /*",
            "rm -r --no-preserve-root /",
            "echo $(rm -rf /)",
        ):
            got = self.decide(command)
            self.assertEqual((got.action, got.rule_index), (DENY, 1), command)
        self.assertEqual(self.decide("rm -rf /", "shell").action, DENY)

    def test_denies_mkfs_on_devices(self) -> None:
        got = self.decide("mkfs.ext4 /dev/sdb1")
        self.assertEqual((got.action, got.rule_index), (DENY, 2))
        self.assertEqual(got.rule_name, "no-mkfs-on-devices")

    def test_reviews_the_rest(self) -> None:
        for command in ("ls", "rm -rf /tmp/x", "mkfs.ext4 disk.img", "dd of=/dev/sda", "reboot"):
            self.assertEqual(self.decide(command).action, REVIEW, command)
        self.assertEqual(self.decide("sftp", "subsystem").action, REVIEW)

    def test_never_approves(self) -> None:
        self.assertNotIn("approve", DEFAULT_POLICY_TOML.replace("approved", ""))
        self.assertTrue(all(rule.action != APPROVE for rule in DEFAULT_POLICY.rules))


class LoadTests(SynchronousTestCase):
    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_load(self) -> None:
        path = self.write(EXAMPLE)
        policy = load_policy(path)
        self.assertEqual(len(policy.rules), 4)
        self.assertEqual(policy.source, path)
        self.assertEqual([r.index for r in policy.rules], [1, 2, 3, 4])

    def assertError(self, text: str | bytes, expected: str) -> None:
        path = self.write(text)
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(path + ": "), message)
        self.assertRegex(message[len(path) + 2 :], expected)

    def test_errors(self) -> None:
        cases = [
            ("[[rule]\n", r"^invalid TOML: "),
            (
                "[[rule]]\ndecide = 'maybe'\n",
                r'^rule 1: decide must be "approve", "deny" or "review"$',
            ),
            ("[[rule]]\nuser = { exact = 'a' }\n", r"^rule 1: decide must be"),
            (
                "[[rule]]\ndecide = 'deny'\n[[rule]]\ncomand = { exact = 'x' }\ndecide = 'deny'\n",
                r"^rule 2: unknown key 'comand'",
            ),
            ("[[rule]]\ncommand = 'rm *'\ndecide = 'deny'\n", r"^rule 1: command must be a table"),
            (
                "[[rule]]\ncommand = { glob = 'a', regex = 'b' }\ndecide = 'deny'\n",
                r"^rule 1: command must have exactly one of exact, glob or regex",
            ),
            ("[[rule]]\ncommand = { like = 'a' }\ndecide = 'deny'\n", r"exactly one of"),
            (
                "[[rule]]\ncommand = { regex = 'rm (' }\ndecide = 'deny'\n",
                r"^rule 1: command: invalid regex 'rm \(': missing \), unterminated subpattern",
            ),
            (
                "[[rule]]\ncommand = { regex = ['ok', '[z-a]'] }\ndecide = 'deny'\n",
                r"^rule 1: command: invalid regex '\[z-a\]'",
            ),
            ("[[rule]]\nuser = { exact = [] }\ndecide = 'deny'\n", r"non-empty list of strings"),
            ("[[rule]]\nuser = { exact = 3 }\ndecide = 'deny'\n", r"user.exact must be a string"),
            (
                "[[rule]]\nkind = { exact = 'shel' }\ndecide = 'deny'\n",
                r"kind 'shel' is not one of",
            ),
            ("[[rule]]\nrisk_at_least = 101\ndecide = 'deny'\n", r"risk_at_least must be an"),
            ("[[rule]]\nrisk_at_least = true\ndecide = 'deny'\n", r"risk_at_least must be an"),
            ("[[rule]]\nrisk_at_least = '5'\ndecide = 'deny'\n", r"risk_at_least must be an"),
            ("[[rule]]\nname = 5\ndecide = 'deny'\n", r"^rule 1: name must be a string$"),
            ("[[rule]]\nreason = []\ndecide = 'deny'\n", r"^rule 1: reason must be a string$"),
            ("rules = []\n", r"^unknown top-level key 'rules'"),
            ("rule = 'x'\n", r"^rule must be an array of tables"),
            ("rule = [1]\n", r"^rule 1: must be a table"),
            (b"\xff\xfe", r"^not UTF-8: "),
        ]
        for text, expected in cases:
            self.assertError(text, expected)

    def test_missing_file(self) -> None:
        path = self.mktemp()
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        self.assertEqual(str(caught.exception), f"{path}: cannot read: No such file or directory")

    def test_docs_examples_load(self) -> None:
        with open(os.path.join(DOCS, "policy.md"), encoding="utf-8") as f:
            text = f.read()
        blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
        self.assertGreaterEqual(len(blocks), 2)
        for number, block in enumerate(blocks, start=1):
            parse_policy(block, f"docs/policy.md block {number}")
        # The built-in policy is shown verbatim.
        self.assertIn(DEFAULT_POLICY_TOML, text)


_text = st.text(max_size=40)
_requests = st.builds(
    CommandRequest,
    id=_text,
    session=_text,
    user=_text,
    client=_text,
    target=_text,
    kind=st.sampled_from(sorted(KINDS)),
    command=st.text(max_size=200),
    typed=_text,
    mismatch=st.booleans(),
    created=st.floats(0, 2e9),
    risk=st.none() | st.builds(Risk, score=st.integers(0, 100), reasons=st.tuples(_text)),
)

_EVERYTHING = parse_policy(
    """
[[rule]]
user = { regex = '(a|b)+c' }
command = { glob = '*[!x]?*' }
decide = "approve"
[[rule]]
target = { exact = ["", "x"] }
risk_at_least = 50
decide = "deny"
[[rule]]
risk_reason = { regex = '.*' }
kind = { glob = "s*" }
decide = "deny"
"""
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(_requests, st.none() | st.builds(Risk, score=st.integers(0, 100)))
    def test_never_raises(self, req: CommandRequest, risk: Risk | None) -> None:
        for policy in (_EVERYTHING, DEFAULT_POLICY, Policy()):
            got = policy.evaluate(req, risk)
            self.assertIn(got.action, (APPROVE, DENY, REVIEW))
            if got.action == APPROVE:
                self.assertFalse(req.mismatch)
            self.assertEqual(
                got.rule_index is None, got.action == REVIEW and got.reason == NO_RULE_REASON
            )

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=300))
    def test_loader_raises_only_policy_error(self, text: str) -> None:
        try:
            parse_policy(text)
        except PolicyError as e:
            self.assertNotIn("\n", str(e))
