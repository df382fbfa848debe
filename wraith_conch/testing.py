"""
In-memory fakes for tests of code built on wraith_conch (like C{treq.testing}).

L{ScriptedApprover} stands in for the approval service: it records every
request and decides by a rule the test gives, or leaves requests pending for
the test to decide by hand.  It is a fake for tests, not a mode of the
gateway: C{twistd wraith} always talks to a real approval service.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from wraith_conch.approval.interfaces import CommandRequest, Decision, IApprover


@implementer(IApprover)
class ScriptedApprover:
    """
    Decide each request with C{rule(request)}: a L{Decision}, or C{None} to
    leave it pending until L{decide} is called.
    """

    description = "scripted approver (tests only)"

    def __init__(self, rule: Callable[[CommandRequest], Decision | None] | None = None) -> None:
        self._rule = rule or (lambda request: None)
        self.requests: list[CommandRequest] = []
        self.cancelled: list[tuple[str, str]] = []
        self._pending: dict[str, defer.Deferred[Decision]] = {}
        self.arrived: defer.Deferred | None = None

    def request_decision(self, request: CommandRequest) -> defer.Deferred[Decision]:
        self.requests.append(request)
        d: defer.Deferred[Decision] = defer.Deferred()
        self._pending[request.id] = d
        decision = self._rule(request)
        if decision is not None:
            self.decide(request.id, decision)
        waiting, self.arrived = self.arrived, None
        if waiting is not None:
            waiting.callback(request)
        return d

    def next_request(self) -> defer.Deferred[CommandRequest]:
        """Fires with the next request to arrive."""
        self.arrived = defer.Deferred()
        return self.arrived

    def decide(self, request_id: str, decision: Decision) -> None:
        d = self._pending.pop(request_id, None)
        if d is not None:
            d.callback(decision)

    def cancel(self, request_id: str, reason: str) -> None:
        self.cancelled.append((request_id, reason))
        self.decide(request_id, Decision.deny(reason))

    @property
    def pending(self) -> list[str]:
        return list(self._pending)


def approve_all_except(*words: str) -> Callable[[CommandRequest], Decision]:
    """A rule for tests: deny commands containing any of C{words}."""

    def rule(request: CommandRequest) -> Decision:
        for word in words:
            if word in request.command:
                return Decision.deny(f"contains {word!r}", reviewer="test")
        return Decision.approve("ok", reviewer="test")

    return rule
