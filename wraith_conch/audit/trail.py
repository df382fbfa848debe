"""
The audit trail: one JSON object per line for every request, decision and
cancellation, on disk before the decision takes effect.

L{AuditTrail} is the file.  Each record is serialised whole, written with one
C{write()} (looping only if the kernel takes less) and C{os.fsync}ed before
the method returns; if any of that fails the method raises L{AuditError}
and the caller must deny.  A crash can therefore leave at most one partial
line, at the end; the next L{AuditTrail} on that file starts a fresh line.

L{AuditingApprover} wraps any L{IApprover}: it scores the risk, applies the
policy (automatic decisions are recorded with the rule that made them), asks
the wrapped approver otherwise, and records the request and the decision.  A
decision whose record cannot be written is a denial.

See docs/audit.md for the record format.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wraith_conch.approval.interfaces import (
    CommandRequest,
    Decision,
    IApprover,
    IGatewayDecisions,
    Risk,
    denial_from_failure,
)
from wraith_conch.approval.policy import APPROVE, REVIEW, Policy, PolicyDecision
from wraith_conch.approval.risk import score

#: C{reviewer} of decisions a policy rule made.
POLICY_REVIEWER = "policy"

#: Kinds whose C{command} is not written to the trail (forwarding
#: destinations never appear in any log).
REDACTED_KINDS = frozenset({"forward"})

FILE_MODE = 0o600

_FIELDS = (
    "event",
    "time",
    "id",
    "session",
    "user",
    "client",
    "target",
    "kind",
    "command",
    "typed",
    "mismatch",
    "risk",
    "decision",
    "reason",
    "reviewer",
    "rule",
)


class AuditError(Exception):
    """The trail cannot be opened or a record cannot be made durable."""


def iso_utc(seconds: float) -> str:
    """C{2026-11-21T10:00:00.000Z} for seconds since the epoch."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _risk_record(risk: Risk | None) -> dict | None:
    if risk is None:
        return None
    return {"score": risk.score, "reasons": list(risk.reasons)}


class AuditTrail:
    """
    An append-only JSON-lines file of requests and decisions.

    The file is created with mode 0600.  An existing file with a looser mode
    is tightened to 0600 (with a warning): the trail holds every command
    operators ran, and a group- or world-writable trail could be forged.  A
    path that is a symbolic link or not a regular file is refused.

    @param path: the file to append to.
    @param clock: C{seconds()} gives the time of each record.
    """

    _log = Logger()
    # The system calls, as attributes so tests can make them fail.
    _write = staticmethod(os.write)
    _fsync = staticmethod(os.fsync)

    def __init__(self, path: str, clock: IReactorTime) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._fd: int | None = None
        self._open()

    def _fail(self, doing: str, e: OSError) -> AuditError:
        return AuditError(f"audit trail {self.path}: {doing}: {e.strerror or e}")

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        existed = os.path.lexists(self.path)
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise AuditError(
                    f"audit trail {self.path}: is a symbolic link; give the real path"
                ) from None
            raise self._fail("cannot open", e) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditError(f"audit trail {self.path}: not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, FILE_MODE)
                self._log.warn(
                    "audit trail {path} had mode {old_mode}; changed to 0600",
                    path=self.path,
                    old_mode=oct(stat.S_IMODE(st.st_mode)),
                )
            if not existed:
                self._fsync_directory()
            elif st.st_size > 0 and not self._ends_with_newline():
                # A partial record from a crash: start the next on its own line.
                self._append(fd, b"\n")
        except OSError as e:
            os.close(fd)
            raise self._fail("cannot prepare", e) from None
        except AuditError:
            os.close(fd)
            raise
        self._fd = fd

    def _fsync_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _append(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "write wrote nothing")
            view = view[written:]
        self._fsync(fd)

    # -- records ---------------------------------------------------------------------

    def write(self, record: dict) -> None:
        """
        Append C{record} as one line and C{fsync} it; returns only once it is
        durable.  Raises L{AuditError} if it is not (the caller must deny).
        """
        if self._fd is None:
            raise AuditError(f"audit trail {self.path}: closed")
        self._follow_rotation()
        fd = self._fd
        line = (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
        try:
            before = os.fstat(fd).st_size
        except OSError as e:
            raise self._fail("cannot write", e) from None
        try:
            self._append(fd, line)
        except OSError as e:
            # Take back whatever part of the line got in, so the file holds
            # only whole records (best effort: the disk may be gone).
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise self._fail("cannot write", e) from None

    def record(
        self,
        event: str,
        request: CommandRequest | None = None,
        *,
        request_id: str | None = None,
        decision: Decision | None = None,
        reason: str | None = None,
        rule: dict | None = None,
    ) -> dict:
        """Build and L{write} one record; returns it."""
        record = dict.fromkeys(_FIELDS)
        record["event"] = event
        record["time"] = iso_utc(self._clock.seconds())
        if request is not None:
            redacted = request.kind in REDACTED_KINDS
            record.update(
                id=request.id,
                session=request.session,
                user=request.user,
                client=request.client,
                target=request.target,
                kind=request.kind,
                command=None if redacted else request.command,
                typed=None if redacted else request.typed,
                mismatch=request.mismatch,
                risk=_risk_record(request.risk),
            )
        if request_id is not None:
            record["id"] = request_id
        if decision is not None:
            record["decision"] = "approve" if decision.approved else "deny"
            record["reason"] = decision.reason
            record["reviewer"] = decision.reviewer
        if reason is not None:
            record["reason"] = reason
        record["rule"] = rule
        self.write(record)
        return record

    def record_request(self, request: CommandRequest, rule: dict | None = None) -> dict:
        """A request arrived (C{rule}: the policy rule that matched it, if any)."""
        return self.record("request", request, rule=rule)

    def record_decision(
        self, request: CommandRequest, decision: Decision, rule: dict | None = None
    ) -> dict:
        """C{request} was decided, by a reviewer or by the policy C{rule}."""
        return self.record("decision", request, decision=decision, rule=rule)

    def record_cancel(
        self, request_id: str, reason: str, request: CommandRequest | None = None
    ) -> dict:
        """The request is void (Ctrl-C, session closed)."""
        return self.record("cancel", request, request_id=request_id, reason=reason)

    def _follow_rotation(self) -> None:
        """
        If the path no longer names the open file (logrotate renamed it, with
        or without C{create}), open the path afresh before writing, so rotation
        needs neither C{copytruncate} (which can lose a record) nor a restart.
        The renamed file has every record up to now; it was fsynced per record.
        """
        try:
            current = os.stat(self.path, follow_symlinks=False)
            opened = os.fstat(self._fd)
        except FileNotFoundError:
            current = None
        except OSError as e:
            raise self._fail("cannot check for rotation", e) from None
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            return
        old = self._fd
        self._open()  # raises AuditError (the caller denies) and keeps the old fd
        os.close(old)
        self._log.info("audit trail {path} was rotated; writing a new file", path=self.path)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None


@implementer(IApprover, IGatewayDecisions)
class AuditingApprover:
    """
    An L{IApprover} that scores, applies a policy and records, around another.

    For each request: compute its risk (unless it has one) and attach it to
    the request; evaluate C{policy}; record the request; then either decide
    at once by the policy rule (C{approve}/C{deny}, with C{reviewer}
    C{"policy"}) or ask C{inner}; record the decision.  The returned Deferred
    fires only after the decision's record is durable.  If a record cannot be
    written the answer is a denial, whatever was decided.

    @param inner: asked for every request the policy sends to review.
    @param trail: where records go; C{None} records nothing (policy only).
    @param policy: C{None} for no automatic decisions (everything reviewed).
    @param risk: C{(command, kind) -> Risk}.
    """

    _log = Logger()

    def __init__(
        self,
        inner: IApprover,
        trail: AuditTrail | None,
        policy: Policy | None = None,
        risk: Callable[[str, str], Risk] = score,
    ) -> None:
        self._inner = inner
        self._trail = trail
        self._policy = policy
        self._risk = risk
        self._pending: dict[str, CommandRequest] = {}
        self.description = inner.description

    def _score(self, request: CommandRequest) -> CommandRequest:
        if request.risk is not None:
            return request
        try:
            risk = self._risk(request.command, request.kind)
            if not isinstance(risk, Risk):
                raise TypeError(f"risk scorer returned {type(risk).__name__}")
        except Exception:
            self._log.failure("risk scoring failed for request {request_id}", request_id=request.id)
            risk = Risk(score=50, reasons=("risk scoring failed",))
        return attrs.evolve(request, risk=risk)

    def _evaluate(self, request: CommandRequest) -> PolicyDecision | None:
        if self._policy is None:
            return None
        try:
            return self._policy.evaluate(request, request.risk)
        except Exception:
            self._log.failure("policy failed for request {request_id}", request_id=request.id)
            return PolicyDecision(REVIEW, None, "policy evaluation failed")

    def request_decision(self, request: CommandRequest) -> defer.Deferred[Decision]:
        request = self._score(request)
        verdict = self._evaluate(request)
        rule = verdict.rule_record() if verdict is not None else None
        if self._trail is not None:
            try:
                self._trail.record_request(request, rule=rule)
            except AuditError as e:
                self._log.error(
                    "request {request_id} denied: {error}", request_id=request.id, error=str(e)
                )
                return defer.succeed(Decision.deny("the audit trail cannot be written"))
        if verdict is not None and verdict.automatic:
            decision = Decision(
                approved=verdict.action == APPROVE,
                reason=verdict.reason,
                reviewer=POLICY_REVIEWER,
            )
            self._log.info(
                "{kind} request {request_id} {result} by policy {rule_index}",
                kind=request.kind,
                request_id=request.id,
                session=request.session,
                user=request.user,
                result="approved" if decision.approved else "denied",
                rule_index=verdict.rule_index,
                rule_name=verdict.rule_name,
            )
            return defer.succeed(self._decided(decision, request, rule))
        self._pending[request.id] = request
        d = defer.maybeDeferred(self._inner.request_decision, request)
        d.addErrback(denial_from_failure)
        d.addCallback(self._decided, request)
        return d

    def _decided(
        self, decision: object, request: CommandRequest, rule: dict | None = None
    ) -> Decision:
        """Record C{decision} on C{request}; what the caller gets to act on."""
        self._pending.pop(request.id, None)
        if not isinstance(decision, Decision):
            decision = Decision.deny("the approver gave no decision")
        if self._trail is not None:
            try:
                self._trail.record_decision(request, decision, rule)
            except AuditError as e:
                self._log.error(
                    "decision on {request_id} not recorded, so denied: {error}",
                    request_id=request.id,
                    error=str(e),
                )
                if decision.approved:
                    return Decision.deny("the audit trail cannot be written")
        return decision

    def record_gateway_decision(
        self, request: CommandRequest, decision: Decision, asked: bool
    ) -> None:
        """
        Record what the gateway decided without the approver (always a
        denial in practice).  A record that cannot be written is logged: the
        command is refused either way.
        """
        if self._trail is None:
            return
        try:
            if not asked:
                self._trail.record_request(self._score(request))
            self._trail.record_decision(request, decision)
        except AuditError as e:
            self._log.error(
                "gateway decision on {request_id} not recorded: {error}",
                request_id=request.id,
                error=str(e),
            )

    def cancel(self, request_id: str, reason: str) -> None:
        request = self._pending.get(request_id)
        if request is not None and self._trail is not None:
            try:
                self._trail.record_cancel(request_id, reason, request)
            except AuditError as e:
                # The cancel still happens: it ends in a denial, recorded or not.
                self._log.error(
                    "cancel of {request_id} not recorded: {error}",
                    request_id=request_id,
                    error=str(e),
                )
        self._inner.cancel(request_id, reason)
