"""
The approval protocol of PROTOCOL.md as pure functions and one state holder.

Nothing here touches a socket or a clock: frames come in as bytes or text
and go out as text, and time is a number the caller passes in.  That keeps
the rules that decide whether a command may run -- what counts as a valid
decision, and that a request gets at most one -- small enough to test
exhaustively (see C{tests/test_approval_protocol.py}), apart from the
reconnecting WebSocket plumbing in L{wraith_conch.approval.client}.

Fail closed is the design rule: L{parse_service_frame} turns anything that
is not exactly a valid frame into L{Ignored} instead of guessing, and
L{PendingRequests} releases a decision only for an id that is pending now.
"""

from __future__ import annotations

import enum
import json
import re
from collections import OrderedDict
from typing import Any

import attrs

from wraith_conch.approval.interfaces import CommandRequest, Decision

SUBPROTOCOL = "wraith.approval.v1"
"""The WebSocket subprotocol the gateway offers and insists on."""

PROTOCOL_VERSION = 1
"""The C{version} of the C{hello} frame."""

# --- service -> gateway ----------------------------------------------------


@attrs.frozen
class DecisionMessage:
    """A well-formed C{decision} frame; C{approved} is true only for C{"approve"}."""

    id: str
    approved: bool
    reason: str = ""
    reviewer: str | None = None

    def to_decision(self) -> Decision:
        """The L{Decision} the gateway hands to whoever waits for C{id}."""
        return Decision(approved=self.approved, reason=self.reason, reviewer=self.reviewer)


@attrs.frozen
class Ping:
    """The service asks for a C{pong}."""


@attrs.frozen
class Pong:
    """The service answers a C{ping}."""


@attrs.frozen
class Ignored:
    """
    A frame the gateway must ignore (and log); C{why} is one line for that log.

    C{why} never quotes more than a few characters of the frame: the log
    is for spotting a broken service, not for copying its traffic.
    """

    why: str


ServiceMessage = DecisionMessage | Ping | Pong

_DECISIONS = {"approve": True, "deny": False}


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"decision": "deny", "decision": "approve"} means different things to
    # different parsers; a frame that two readers could disagree on is junk.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not JSON")


def _brief(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "<deeply nested value>"
    return text if len(text) <= 40 else text[:37] + "..."


def load_frame_object(payload: bytes | str, is_binary: bool) -> dict[str, Any] | Ignored:
    """
    The JSON object in one WebSocket frame, or L{Ignored} saying why not:
    binary frames, text that is not UTF-8, not JSON (NaN and Infinity
    included), an object that repeats a key, or JSON that is not an object.
    Both ends of the protocol read frames with this.  Never raises.
    """
    if is_binary:
        return Ignored("binary frame")
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            return Ignored("text frame is not UTF-8")
    elif isinstance(payload, str):
        text = payload
    else:
        return Ignored(f"payload of type {type(payload).__name__}")
    try:
        message = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except _DuplicateKey as e:
        return Ignored(f"object repeats the key {_brief(e.args[0])}")
    except (ValueError, RecursionError):
        return Ignored("not JSON")
    if not isinstance(message, dict):
        return Ignored(f"JSON {type(message).__name__}, not an object")
    return message


def parse_service_frame(payload: bytes | str, is_binary: bool) -> ServiceMessage | Ignored:
    """
    Read one frame from the approval service.

    Returns L{DecisionMessage}, L{Ping} or L{Pong} for a valid frame and
    L{Ignored} for anything else -- including a C{decision} whose value is
    not exactly C{"approve"} or C{"deny"}, or whose C{id}, C{reason} or
    C{reviewer} has the wrong type.  Unknown extra fields are allowed.  An
    absent or C{null} C{reason} reads as C{""} and an absent or C{null}
    C{reviewer} as C{None}.  Never raises: the caller's only job with junk
    is to log it.
    """
    message = load_frame_object(payload, is_binary)
    if isinstance(message, Ignored):
        return message
    kind = message.get("type")
    if kind is None:
        return Ignored("no type")
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind != "decision":
        return Ignored(f"unknown type {_brief(kind)}")
    request_id = message.get("id")
    if not isinstance(request_id, str):
        return Ignored("decision without a string id")
    verdict = message.get("decision")
    if not isinstance(verdict, str) or verdict not in _DECISIONS:
        return Ignored(f"decision {_brief(verdict)} is neither 'approve' nor 'deny'")
    reason = message.get("reason")
    if reason is None:
        reason = ""
    elif not isinstance(reason, str):
        return Ignored("decision reason is not a string")
    reviewer = message.get("reviewer")
    if reviewer is not None and not isinstance(reviewer, str):
        return Ignored("decision reviewer is not a string")
    return DecisionMessage(
        id=request_id, approved=_DECISIONS[verdict], reason=reason, reviewer=reviewer
    )


# --- gateway -> service ----------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _dump(message: dict[str, Any]) -> str:
    """
    Compact JSON that always encodes to UTF-8.

    A command decoded with C{surrogateescape} can hold lone surrogates,
    which UTF-8 cannot carry: sent raw they would make the service drop
    the connection, and the re-send after every reconnect would repeat
    that forever.  They become U+FFFD, which a reviewer sees as "not text".
    """
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _SURROGATE.sub("\ufffd", text)


def hello_frame(gateway_name: str) -> str:
    """The first frame after every (re)connect."""
    return _dump(
        {"type": "hello", "role": "gateway", "gateway": gateway_name, "version": PROTOCOL_VERSION}
    )


def request_frame(request: CommandRequest) -> str:
    """The C{request} frame for C{request}; the same text on every re-send."""
    return _dump(request.to_message())


def cancel_frame(request_id: str, reason: str) -> str:
    """Tell the service a request is void."""
    return _dump({"type": "cancel", "id": request_id, "reason": reason})


def ping_frame() -> str:
    return _dump({"type": "ping"})


def pong_frame() -> str:
    return _dump({"type": "pong"})


# --- one decision per request ----------------------------------------------


class Outcome(enum.StrEnum):
    """What became of a request id, as far as L{PendingRequests} remembers."""

    PENDING = "pending"
    DECIDED = "decided"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@attrs.frozen
class Resolved:
    """A decision that counts: the first valid one for a pending request."""

    request: CommandRequest
    decision: Decision


@attrs.frozen
class Stale:
    """A decision that does not count, and why (C{status} is never PENDING)."""

    request_id: str
    status: Outcome


@attrs.frozen
class _Entry:
    request: CommandRequest
    deadline: float


@attrs.define
class PendingRequests:
    """
    The requests waiting for a decision, and what became of recent others.

    This is where "one decision per request; the first valid one wins"
    lives: a request leaves the pending set exactly once -- decided,
    cancelled or expired -- and a decision for an id that is not pending
    comes back as L{Stale}.  Finished ids are remembered (the newest
    C{history_limit}) only to say why a late decision was ignored;
    forgetting one changes that report to UNKNOWN, never the outcome.

    Pure state: the caller brings the time (L{expire}) and does the I/O.
    """

    history_limit: int = 10_000
    _pending: dict[str, _Entry] = attrs.field(factory=dict, init=False)
    _finished: OrderedDict[str, Outcome] = attrs.field(factory=OrderedDict, init=False)

    def add(self, request: CommandRequest, deadline: float | None = None) -> None:
        """
        Start waiting for a decision on C{request} until C{deadline}
        (default C{request.expires}).

        @raise ValueError: the id was used before; ids are never reused.
        """
        if request.id in self._pending or request.id in self._finished:
            raise ValueError(f"request id {request.id!r} is already in use")
        when = request.expires if deadline is None else deadline
        self._pending[request.id] = _Entry(request, when)

    def resolve(self, message: DecisionMessage) -> Resolved | Stale:
        """Apply a decision: L{Resolved} if its id was pending, else L{Stale}."""
        entry = self._pending.pop(message.id, None)
        if entry is None:
            return Stale(message.id, self.status(message.id))
        self._finish(message.id, Outcome.DECIDED)
        return Resolved(entry.request, message.to_decision())

    def cancel(self, request_id: str) -> CommandRequest | None:
        """Void a pending request; C{None} if it was not pending."""
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return None
        self._finish(request_id, Outcome.CANCELLED)
        return entry.request

    def expire(self, now: float) -> list[str]:
        """Remove and return the ids whose deadline is at or before C{now}."""
        due = [request_id for request_id, entry in self._pending.items() if entry.deadline <= now]
        for request_id in due:
            del self._pending[request_id]
            self._finish(request_id, Outcome.EXPIRED)
        return due

    def outstanding(self) -> list[CommandRequest]:
        """Pending requests in the order they were added, for re-sending."""
        return [entry.request for entry in self._pending.values()]

    def deadline(self, request_id: str) -> float | None:
        """When a pending request expires; C{None} if it is not pending."""
        entry = self._pending.get(request_id)
        return None if entry is None else entry.deadline

    def status(self, request_id: str) -> Outcome:
        if request_id in self._pending:
            return Outcome.PENDING
        return self._finished.get(request_id, Outcome.UNKNOWN)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def _finish(self, request_id: str, outcome: Outcome) -> None:
        self._finished[request_id] = outcome
        while len(self._finished) > self.history_limit:
            self._finished.popitem(last=False)
