"""
The one seam every command passes through on its way to the target.

The relay builds a L{CommandRequest} for each shell line, C{exec} and
C{subsystem}, hands it to an L{IApprover}, and lets the command through only
when the returned Deferred fires with a L{Decision} whose C{approved} is
true.  Errbacks, timeouts and anything else count as denial: callers must
treat every outcome except an explicit approval as "no".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

KINDS = frozenset({"shell", "exec", "subsystem", "forward"})

DEFAULT_TIMEOUT_SECONDS = 300.0


def _utc_timestamp(moment: datetime) -> str:
    """Format like PROTOCOL.md: C{2026-11-21T10:00:00.000Z}."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@attrs.frozen
class Risk:
    """A 0-100 risk score with the reasons that produced it."""

    score: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(100))
    )
    reasons: tuple[str, ...] = ()


@attrs.frozen
class CommandRequest:
    """
    One command waiting for a decision; the fields of a protocol C{request}.

    @ivar created: seconds since the epoch when the request was made.
    @ivar timeout: seconds after C{created} at which the request expires.
    """

    id: str
    session: str
    user: str
    client: str
    target: str
    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    command: str
    typed: str
    mismatch: bool
    created: float
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    risk: Risk | None = None
    #: The last screenful of the session (shell lines), as context for reviewers.
    screen: tuple[str, ...] | None = None

    @classmethod
    def new(
        cls,
        *,
        session: str,
        user: str,
        client: str,
        target: str,
        kind: str,
        command: str,
        typed: str | None = None,
        created: float,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        risk: Risk | None = None,
    ) -> CommandRequest:
        """Make a request with a fresh UUID4 id; C{typed} defaults to C{command}."""
        typed = command if typed is None else typed
        return cls(
            id=str(uuid.uuid4()),
            session=session,
            user=user,
            client=client,
            target=target,
            kind=kind,
            command=command,
            typed=typed,
            mismatch=typed != command,
            created=created,
            timeout=timeout,
            risk=risk,
        )

    @property
    def expires(self) -> float:
        return self.created + self.timeout

    def to_message(self) -> dict:
        """The protocol C{request} frame for this request, as a dict."""
        created = datetime.fromtimestamp(self.created, UTC)
        message = {
            "type": "request",
            "id": self.id,
            "session": self.session,
            "user": self.user,
            "client": self.client,
            "target": self.target,
            "kind": self.kind,
            "command": self.command,
            "typed": self.typed,
            "mismatch": self.mismatch,
            "created": _utc_timestamp(created),
            "expires": _utc_timestamp(created + timedelta(seconds=self.timeout)),
        }
        if self.risk is not None:
            message["risk"] = {"score": self.risk.score, "reasons": list(self.risk.reasons)}
        if self.screen is not None:
            # An extra field (PROTOCOL.md lets services ignore it).
            message["screen"] = list(self.screen)
        return message


@attrs.frozen
class Decision:
    """The answer to a L{CommandRequest}."""

    approved: bool
    reason: str = ""
    reviewer: str | None = None

    @classmethod
    def deny(cls, reason: str, reviewer: str | None = None) -> Decision:
        return cls(approved=False, reason=reason, reviewer=reviewer)

    @classmethod
    def approve(cls, reason: str = "", reviewer: str | None = None) -> Decision:
        return cls(approved=True, reason=reason, reviewer=reviewer)


class IApprover(Interface):
    """
    Something that decides whether a command may reach the target.

    Implementations: the WebSocket client of PROTOCOL.md
    (L{wraith_conch.approval.client}), and in-memory fakes in
    L{wraith_conch.testing}.
    """

    def request_decision(request: CommandRequest) -> Deferred[Decision]:
        """
        Ask for a decision on C{request}.

        The Deferred fires exactly once, with a L{Decision}; on expiry it fires
        with a denial.  It never errbacks for ordinary outcomes, but callers
        must still treat an errback as a denial.
        """

    def cancel(request_id: str, reason: str) -> None:
        """
        The request is void (the operator pressed Ctrl-C, the session closed).

        A pending Deferred for it fires with a denial carrying C{reason}; an
        unknown or already decided id is ignored.
        """

    description = Attribute("One line naming the service, for logs and the operator.")


#: C{reviewer} of decisions the gateway made itself (see L{IGatewayDecisions}).
GATEWAY_REVIEWER = "gateway"


class IGatewayDecisions(Interface):
    """
    An approver that also keeps a record of what the gateway decided without
    asking it: the audit trail must hold every command that was refused, not
    only those a reviewer saw.
    """

    def record_gateway_decision(request: CommandRequest, decision: Decision, asked: bool) -> None:
        """
        The gateway decided C{request} itself.  C{asked} false: the request
        never went to the approver (a malformed command, C{--on-mismatch
        deny}), so it is recorded as well as the decision.  C{asked} true: the
        approver's decision on it was replaced (an approved line changed on
        screen before it could run), and only the new decision is recorded.
        """


def record_gateway_decision(
    approver: object, request: CommandRequest, decision: Decision, *, asked: bool
) -> None:
    """Tell C{approver} of a decision the gateway made, if it keeps such records."""
    if IGatewayDecisions.providedBy(approver):
        approver.record_gateway_decision(request, decision, asked)


def denial_from_failure(failure) -> Decision:
    """Map any errback of L{IApprover.request_decision} to a denial."""
    return Decision.deny(f"approval failed: {failure.getErrorMessage()}")
