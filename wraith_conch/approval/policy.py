"""
Automatic decisions from a rules file (sans-IO).

A policy is an ordered list of rules read from TOML (C{--policy PATH}); the
first rule that matches a request decides C{approve}, C{deny} or C{review}
(ask the approval service).  When no rule matches, the answer is C{review}.
Every answer names the rule that gave it, so an automatic decision can be
audited like a reviewer's.  The file format is in docs/policy.md::

    [[rule]]
    name = "read-only tools"
    kind = { exact = ["shell", "exec"] }
    command = { regex = 'ls( -[alh]+)?( [\\w./-]+)*' }
    decide = "approve"

    [[rule]]
    risk_at_least = 90
    decide = "deny"
    reason = "too dangerous for this gateway"

Matchers: C{exact} (string equality), C{glob} (C{fnmatch} syntax, always
case-sensitive, C{*} matches any characters including C{/}, spaces and
newlines) or C{regex} (Python C{re}, matched with C{fullmatch}, compiled once
at load time).  Each takes one string or a list of strings (any may match).

One rule is never bent: an C{approve} for a shell line whose screen and
keystrokes differ (C{mismatch}) becomes C{review}, because the line a rule
was written for may not be the line the target runs.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping

import attrs

from wraith_conch.approval.interfaces import KINDS, CommandRequest, Risk

APPROVE = "approve"
DENY = "deny"
REVIEW = "review"
ACTIONS = (APPROVE, DENY, REVIEW)

#: Request fields a rule can match, plus C{risk_reason} (any reason of the risk).
MATCH_FIELDS = ("user", "target", "kind", "command", "risk_reason")
_RULE_KEYS = frozenset(MATCH_FIELDS) | {"name", "risk_at_least", "decide", "reason"}
_HOWS = ("exact", "glob", "regex")

NO_RULE_REASON = "no policy rule matched"


class PolicyError(Exception):
    """A policy file that cannot be used; the message is one line naming where."""


@attrs.frozen
class Matcher:
    """One C{field = {how = pattern(s)}} of a rule."""

    field: str
    how: str
    patterns: tuple[str, ...]
    _compiled: tuple[re.Pattern[str], ...] = attrs.field(default=(), repr=False, eq=False)

    @classmethod
    def build(cls, field: str, how: str, patterns: tuple[str, ...]) -> Matcher:
        """Compile once; raises C{re.error} (or C{ValueError}) for a bad pattern."""
        if how == "regex":
            compiled = tuple(re.compile(p) for p in patterns)
        elif how == "glob":
            compiled = tuple(re.compile(fnmatch.translate(p)) for p in patterns)
        else:
            compiled = ()
        return cls(field, how, patterns, compiled)

    def matches(self, value: str) -> bool:
        if self.how == "exact":
            return value in self.patterns
        if self.how == "glob":
            return any(p.match(value) is not None for p in self._compiled)
        return any(p.fullmatch(value) is not None for p in self._compiled)


@attrs.frozen
class Rule:
    """One C{[[rule]]}; C{index} counts from 1 in file order."""

    index: int
    action: str
    matchers: tuple[Matcher, ...] = ()
    risk_at_least: int | None = None
    name: str | None = None
    reason: str | None = None

    def matches(self, request: CommandRequest, risk: Risk) -> bool:
        if self.risk_at_least is not None and risk.score < self.risk_at_least:
            return False
        for matcher in self.matchers:
            if matcher.field == "risk_reason":
                if not any(matcher.matches(r) for r in risk.reasons):
                    return False
            elif not matcher.matches(str(getattr(request, matcher.field))):
                return False
        return True

    @property
    def label(self) -> str:
        """C{rule 3} or C{rule 3 (name)}, as in messages and the audit trail."""
        return f"rule {self.index}" + (f" ({self.name})" if self.name else "")

    def decision_reason(self) -> str:
        return self.reason or f"policy {self.label}"


@attrs.frozen
class PolicyDecision:
    """
    What a policy says about one request.

    @ivar action: C{approve}, C{deny} or C{review}.
    @ivar rule_index: the deciding rule, counted from 1; C{None} when no rule
        matched.
    @ivar reason: for the operator and the audit trail.
    @ivar rule_name: the rule's C{name}, if it has one.
    @ivar source: the policy file (or C{<built-in policy>}).
    """

    action: str
    rule_index: int | None
    reason: str
    rule_name: str | None = None
    source: str | None = None

    @property
    def automatic(self) -> bool:
        """True when the policy decided without a reviewer."""
        return self.action in (APPROVE, DENY)

    def rule_record(self) -> dict | None:
        """The rule as the audit trail records it, or C{None}."""
        if self.rule_index is None:
            return None
        return {"index": self.rule_index, "name": self.rule_name, "policy": self.source}


@attrs.frozen
class Policy:
    """An ordered list of rules; the first match decides, else C{review}."""

    rules: tuple[Rule, ...] = ()
    source: str = "<policy>"

    def evaluate(self, request: CommandRequest, risk: Risk | None = None) -> PolicyDecision:
        """
        The decision for C{request} whose risk is C{risk} (default: the
        request's own, else 0).  Never raises for any request.
        """
        if risk is None:
            risk = request.risk if request.risk is not None else Risk(score=0)
        for rule in self.rules:
            if not rule.matches(request, risk):
                continue
            if rule.action == APPROVE and request.mismatch:
                return PolicyDecision(
                    REVIEW,
                    rule.index,
                    f"{rule.label} would approve, but the screen and the keystrokes differ",
                    rule.name,
                    self.source,
                )
            return PolicyDecision(
                rule.action, rule.index, rule.decision_reason(), rule.name, self.source
            )
        return PolicyDecision(REVIEW, None, NO_RULE_REASON, None, self.source)


# -- loading -------------------------------------------------------------------------


def _patterns(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _matcher(field: str, spec: object) -> Matcher:
    if not isinstance(spec, Mapping):
        raise ValueError(
            f'{field} must be a table with one of exact, glob or regex, like {field} = {{ glob = "..." }}'
        )
    keys = list(spec)
    if len(keys) != 1 or keys[0] not in _HOWS:
        raise ValueError(
            f"{field} must have exactly one of exact, glob or regex (got {', '.join(keys) or 'none'})"
        )
    how = keys[0]
    patterns = _patterns(spec[how])
    if patterns is None:
        raise ValueError(f"{field}.{how} must be a string or a non-empty list of strings")
    if field == "kind" and how == "exact":
        unknown = [p for p in patterns if p not in KINDS]
        if unknown:
            raise ValueError(f"kind {unknown[0]!r} is not one of {', '.join(sorted(KINDS))}")
    try:
        return Matcher.build(field, how, patterns)
    except (re.error, ValueError, OverflowError, RecursionError) as e:
        bad = next((p for p in patterns if not _compiles(how, p)), patterns[0])
        raise ValueError(f"{field}: invalid {how} {bad!r}: {e}") from None


def _compiles(how: str, pattern: str) -> bool:
    try:
        re.compile(pattern if how == "regex" else fnmatch.translate(pattern))
    except Exception:
        return False
    return True


def _rule(index: int, table: object) -> Rule:
    if not isinstance(table, Mapping):
        raise ValueError("must be a table ([[rule]])")
    unknown = sorted(set(table) - _RULE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {', '.join(sorted(_RULE_KEYS))})")
    action = table.get("decide")
    if action not in ACTIONS:
        raise ValueError('decide must be "approve", "deny" or "review"')
    name = table.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError("name must be a string")
    reason = table.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason must be a string")
    risk_at_least = table.get("risk_at_least")
    if risk_at_least is not None and (
        isinstance(risk_at_least, bool)
        or not isinstance(risk_at_least, int)
        or not 0 <= risk_at_least <= 100
    ):
        raise ValueError("risk_at_least must be an integer from 0 to 100")
    matchers = tuple(_matcher(field, table[field]) for field in MATCH_FIELDS if field in table)
    return Rule(index, action, matchers, risk_at_least, name, reason)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """A L{Policy} from TOML text; raises L{PolicyError} naming C{source}."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: invalid TOML: {e}") from None
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise PolicyError(
            f"{source}: unknown top-level key {unknown[0]!r} (rules are [[rule]] tables)"
        )
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise PolicyError(f"{source}: rule must be an array of tables ([[rule]])")
    rules = []
    for index, table in enumerate(tables, start=1):
        try:
            rules.append(_rule(index, table))
        except ValueError as e:
            raise PolicyError(f"{source}: rule {index}: {e}") from None
    return Policy(tuple(rules), source)


def load_policy(path: str) -> Policy:
    """Read the policy file at C{path}; raises L{PolicyError} with a one-line reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8: {e.reason} at byte {e.start}") from None
    return parse_policy(text, str(path))


#: The built-in policy's text (used when no C{--policy} is given).
DEFAULT_POLICY_TOML = """\
# wraith_conch's built-in policy, used when --policy is not given.
#
# Nothing is approved automatically: every command goes to a reviewer.  Two
# kinds of command are denied without asking, because a reviewer approving
# one by mistake cannot be undone and no routine work needs them through a
# gateway; a deployment that does need them gives its own --policy.

[[rule]]
name = "no-recursive-delete-of-root"
kind = { exact = ["shell", "exec"] }
risk_reason = { exact = "recursive delete of /" }
decide = "deny"
reason = "recursive delete of / is denied by the built-in policy"

[[rule]]
name = "no-mkfs-on-devices"
kind = { exact = ["shell", "exec"] }
risk_reason = { exact = "make filesystem on a device" }
decide = "deny"
reason = "making a filesystem on a device is denied by the built-in policy"
"""

DEFAULT_POLICY = parse_policy(DEFAULT_POLICY_TOML, "<built-in policy>")
