"""
What happened, kept: the audit trail of requests and decisions
(L{wraith_conch.audit.trail}) and asciicast recordings of PTY sessions
(L{wraith_conch.audit.recorder}).  See docs/audit.md.
"""

from wraith_conch.audit.recorder import SessionRecorder
from wraith_conch.audit.trail import AuditError, AuditingApprover, AuditTrail

__all__ = ["AuditError", "AuditTrail", "AuditingApprover", "SessionRecorder"]
