"""
The embedded approval hub: the service side of PROTOCOL.md, with reviewers.

Gateways connect to C{/gateway} and send C{request}s; reviewers -- the web
console in a browser, or C{wraith-review} -- connect to C{/reviewer}, see
every pending request, and send C{decide}; the first valid decision for a
pending id goes back to the gateway that asked.  One L{twisted.web} L{Site}
serves both WebSockets and the console pages (L{wraith_conch.approval.console}).

Shape:

  - L{Hub} is the state, sans-IO: frames in (with the I{link} they came
    from and the time), text out through the links' C{send}.  It knows no
    reactor and no socket; its tests use plain objects as links.
  - L{HubService} is the Twisted glue: autobahn protocols that hand frames
    to the hub, a timer that expires requests, the listening port.
  - L{make_hub_service} builds one, for C{twistd wraith-hub}
    (L{wraith_conch.hub_tap}) and for embedding in C{twistd wraith}.

Nothing is lost while the hub runs: a request stays pending until a
reviewer decides, the gateway cancels it, or it expires; a decision made
while its gateway is disconnected is kept and sent when the gateway comes
back and re-sends the request (same id, same content).  A repeated id is
idempotent; a repeated id with I{different} content is refused -- the
reviewer approves exactly what was shown.

Reviewer protocol v1 (subprotocol C{wraith.reviewer.v1}, JSON text frames)
=========================================================================

Authentication: the console's session cookie (and then the C{Origin} must be
the hub's own), or C{Authorization: Bearer <reviewer token>} (C{wraith-review}).
Refused with HTTP 401 (no or wrong credentials) or 403 (foreign Origin).

Server to reviewer::

    {"type": "snapshot", "version": 1, "reviewer": "bob",
     "pending": [R, ...], "history": [H, ...], "gateways": [G, ...],
     "sessions": [S, ...]}                           # first frame
    {"type": "request", "request": R}                # a new pending request
    {"type": "resolved", "id": ..., "outcome": ..., "reason": ..., "reviewer": ...,
     "at": ..., "request": R}                        # = H; it is no longer pending
    {"type": "gateways", "gateways": [G, ...]}       # gateways connected now
    {"type": "sessions", "sessions": [S, ...]}       # live sessions now
    {"type": "session", "session": S, "live": bool, "lines": [str, ...]}
        # the screen of the session you watch: on watch, then on every change
        # (gathered for 0.1 s); live false: it ended (last screen) or is unknown ([])
    {"type": "ack", "id": ..., "ok": true}           # your decide counted
    {"type": "ack", "id": ..., "ok": false, "error": "request ... is approved"}
    {"type": "error", "error": "..."}                # a frame of yours was refused
    {"type": "pong"}

    R = {"id", "gateway", "received", "session", "user", "client", "target",
         "kind", "command", "typed", "mismatch", "risk": {"score", "reasons"} | null,
         "created", "expires", "screen": [str, ...] | null}
    H = {"id", "outcome": "approve" | "deny" | "cancelled" | "expired",
         "reason", "reviewer" (null unless decided), "at", "request": R}
    G = {"name", "peer"}
    S = {"session": the session id of a channel, as in R's "session" ("s-1a2b3c4d.0"),
         "gateway", "user", "client", "target", "kind", "pty": bool,
         "columns", "rows", "started"}

Reviewer to server::

    {"type": "decide", "id": ..., "decision": "approve" | "deny", "reason": "..."}
    {"type": "watch", "session": ID | null}         # follow one session's screen; null: stop
    {"type": "ping"}

Live sessions come from the gateways' live feeds (C{/live-feed}, subprotocol
C{wraith.live.v1}, the gateway token; L{wraith_conch.approval.live_feed}), a
wraith extension beside PROTOCOL.md, never on C{/gateway}.  The embedded hub
gets its gateway's feed in-process (L{HubService.local_feed}); a standalone
hub lists the sessions of gateways run with C{--live-feed}.  The hub keeps a
screen only for watched sessions (L{LiveSessions}) and tells each gateway
which of its sessions are watched; only those send output.  Watching is
read-only: there is no frame that sends input to a session.

Anything else (a C{request}, C{cancel} or C{decision} frame, junk, binary)
is answered with C{error} and changes nothing.  History (C{H}) lists the
newest L{DEFAULT_HISTORY} outcomes, oldest first; times are ISO 8601 UTC.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource

from wraith_conch.approval.console import (
    ConsoleRoot,
    Sessions,
    console_site,
    normal_origin,
    own_origin,
)
from wraith_conch.approval.live import (
    FeedClose,
    FeedGap,
    FeedHello,
    FeedOpen,
    FeedOutput,
    FeedResize,
    FeedSnapshot,
    LiveSessions,
    parse_feed_frame,
)
from wraith_conch.approval.live_feed import FEED_PATH, FEED_SUBPROTOCOL, LiveFeed
from wraith_conch.approval.protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Ignored,
    _brief,
    _dump,
    load_frame_object,
    pong_frame,
)
from wraith_conch.approval.reviewers import Reviewers
from wraith_conch.approval.webhook import Webhook
from wraith_conch.approval.wsclient import send_text

REVIEWER_SUBPROTOCOL = "wraith.reviewer.v1"
REVIEWER_PROTOCOL_VERSION = 1
GATEWAY_PATH = "/gateway"
REVIEWER_PATH = "/reviewer"

MAX_REQUEST_BYTES = 64 * 1024
"""A C{request} frame larger than this is denied at once by the hub itself."""

MAX_GATEWAY_MESSAGE = 1 << 20
"""A gateway message larger than this fails the connection (WebSocket 1009)."""

MAX_REVIEWER_MESSAGE = 16 * 1024
"""A reviewer message larger than this fails the connection (WebSocket 1009)."""

MAX_FEED_MESSAGE = 4 << 20
"""A live-feed message larger than this fails the connection (a snapshot of the largest screen
the gateway models, 2000 by 1000 cells, fits)."""

MAX_REASON = 1000
"""Longest decision reason, in characters."""

MAX_SCREEN_LINES = 500

DEFAULT_HISTORY = 100
"""Outcomes kept for reviewers (snapshot C{history})."""

MAX_PENDING = 10_000
"""Pending requests the hub holds at most; more are denied at once."""

REMEMBERED_IDS = 10_000
"""Finished ids remembered to answer re-sends and late decisions."""

DEFAULT_TIMEOUT = 300.0
EXPIRY_GRACE = 30.0
"""Seconds past a request's C{expires} before the hub drops it (the gateway cancels first)."""

MAX_LIFETIME = 24 * 3600.0

SESSION_FLUSH_INTERVAL = 0.1
"""Seconds a live session's screen changes gather before watchers get them."""

CLOSE_POLICY = 4008
"""Close code for a peer that broke the protocol (4000 + RFC 6455's 1008)."""

CLOSE_LOGGED_OUT = 4001
CLOSE_GOING_AWAY = 1000

HUB_REVIEWER = "wraith-hub"
"""The C{reviewer} of decisions the hub makes itself (it only ever denies)."""

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def iso_time(seconds: float) -> str:
    """C{2026-11-21T10:00:00.000Z} for a time in seconds since the epoch."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_time(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- links: what the hub sends through ------------------------------------


class Link(Protocol):
    """One connected gateway or reviewer, as the hub sees it."""

    peer: str

    def send(self, text: str) -> bool:
        """Send one text frame; C{False} if the connection is gone."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection (code 1000 or 3000-4999)."""


# --- frames from gateways --------------------------------------------------


@attrs.frozen
class Hello:
    gateway: str


@attrs.frozen
class RequestMessage:
    """A valid C{request}: C{view} holds its known fields, checked and defaulted."""

    id: str
    view: dict[str, Any]
    deadline: float | None


@attrs.frozen
class BadRequest:
    """A C{request} frame with a usable id but unusable content: the hub denies it."""

    id: str
    why: str


@attrs.frozen
class CancelMessage:
    id: str
    reason: str


@attrs.frozen
class GatewayDecision:
    """A gateway sent a C{decision}: never acted on."""


@attrs.frozen
class PingMessage:
    pass


@attrs.frozen
class PongMessage:
    pass


@attrs.frozen
class BadHello:
    why: str


GatewayMessage = (
    Hello
    | BadHello
    | RequestMessage
    | BadRequest
    | CancelMessage
    | GatewayDecision
    | PingMessage
    | PongMessage
    | Ignored
)


def _request_id(message: dict[str, Any]) -> str | None:
    request_id = message.get("id")
    if isinstance(request_id, str) and _ID.fullmatch(request_id):
        return request_id
    return None


def _check_request(message: dict[str, Any]) -> tuple[dict[str, Any], float | None] | str:
    """The display view and deadline of a C{request}, or why it is unusable."""
    view: dict[str, Any] = {"id": message["id"]}
    for name in ("session", "user", "client", "target"):
        value = message.get(name, "")
        if not isinstance(value, str):
            return f"{name} is not a string"
        view[name] = value
    kind = message.get("kind")
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        return f"kind {_brief(kind)} is not a kind"
    view["kind"] = kind
    command = message.get("command")
    if not isinstance(command, str):
        return "command is not a string"
    view["command"] = command
    typed = message.get("typed", command)
    if typed is None:
        typed = command
    if not isinstance(typed, str):
        return "typed is not a string"
    view["typed"] = typed
    mismatch = message.get("mismatch", False)
    if mismatch is None:
        mismatch = False
    if not isinstance(mismatch, bool):
        return "mismatch is not a boolean"
    # Shown side by side whenever they differ, whatever the flag says.
    view["mismatch"] = mismatch or typed != command
    risk = message.get("risk")
    if risk is not None:
        if not isinstance(risk, dict):
            return "risk is not an object"
        score = risk.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
            return "risk score is not an integer 0-100"
        reasons = risk.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            return "risk reasons is not a list of strings"
        risk = {"score": score, "reasons": list(reasons)}
    view["risk"] = risk
    deadline = None
    for name in ("created", "expires"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is not a string"
        view[name] = value
    if view["expires"] is not None:
        deadline = _parse_time(view["expires"])
    screen = message.get("screen")
    if screen is not None:
        if not isinstance(screen, list) or not all(isinstance(line, str) for line in screen):
            return "screen is not a list of strings"
        if len(screen) > MAX_SCREEN_LINES:
            return f"screen has more than {MAX_SCREEN_LINES} lines"
        screen = list(screen)
    view["screen"] = screen
    return view, deadline


def parse_gateway_frame(payload: bytes | str, is_binary: bool) -> GatewayMessage:
    """
    Read one frame from a gateway.  Never raises; junk comes back as L{Ignored}.

    A C{request} larger than L{MAX_REQUEST_BYTES}, or with a usable id but
    fields of the wrong type, is a L{BadRequest}: the hub denies it rather
    than leave the operator waiting for a timeout.
    """
    message = load_frame_object(payload, is_binary)
    if isinstance(message, Ignored):
        return message
    kind = message.get("type")
    if kind == "ping":
        return PingMessage()
    if kind == "pong":
        return PongMessage()
    if kind == "hello":
        if message.get("role") != "gateway":
            return BadHello(f"role {_brief(message.get('role'))} is not 'gateway'")
        version = message.get("version")
        if isinstance(version, bool) or version != PROTOCOL_VERSION:
            return BadHello(f"unsupported version {_brief(version)}")
        name = message.get("gateway", "gateway")
        if not isinstance(name, str) or not name:
            return BadHello("gateway name is not a string")
        return Hello(name[:128])
    if kind == "decision":
        return GatewayDecision()
    if kind == "cancel":
        request_id = _request_id(message)
        if request_id is None:
            return Ignored("cancel without a usable id")
        reason = message.get("reason", "")
        if not isinstance(reason, str):
            reason = ""
        return CancelMessage(request_id, reason[:MAX_REASON])
    if kind == "request":
        request_id = _request_id(message)
        if request_id is None:
            return Ignored("request without a usable id")
        if len(payload) > MAX_REQUEST_BYTES:
            return BadRequest(
                request_id, f"request too large for the approval hub ({len(payload)} bytes)"
            )
        checked = _check_request(message)
        if isinstance(checked, str):
            return BadRequest(request_id, f"malformed request: {checked}")
        view, deadline = checked
        return RequestMessage(request_id, view, deadline)
    if kind is None:
        return Ignored("no type")
    return Ignored(f"unknown type {_brief(kind)}")


# --- frames from reviewers --------------------------------------------------


@attrs.frozen
class Decide:
    id: str
    approved: bool
    reason: str


@attrs.frozen
class Watch:
    """Watch a live session's screen (C{None}: stop watching)."""

    session: str | None


@attrs.frozen
class Refused:
    """A reviewer frame that is answered with an error and does nothing."""

    why: str
    id: str | None = None


def parse_reviewer_frame(
    payload: bytes | str, is_binary: bool
) -> Decide | Watch | PingMessage | Refused:
    """Read one frame from a reviewer; anything but C{decide}, C{watch} or C{ping} is L{Refused}."""
    message = load_frame_object(payload, is_binary)
    if isinstance(message, Ignored):
        return Refused(message.why)
    kind = message.get("type")
    if kind == "ping":
        return PingMessage()
    if kind == "watch":
        session = message.get("session")
        if session is not None and not (isinstance(session, str) and _ID.fullmatch(session)):
            return Refused("watch without a usable session")
        return Watch(session)
    if kind in ("request", "cancel", "hello", "decision"):
        return Refused(f"reviewers cannot send {kind} frames")
    if kind != "decide":
        return Refused(f"unknown type {_brief(kind)}")
    request_id = _request_id(message)
    if request_id is None:
        return Refused("decide without a usable id")
    verdict = message.get("decision")
    if verdict not in ("approve", "deny") or not isinstance(verdict, str):
        return Refused(f"decision {_brief(verdict)} is neither 'approve' nor 'deny'", request_id)
    reason = message.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        return Refused("reason is not a string", request_id)
    if len(reason) > MAX_REASON:
        return Refused(f"reason longer than {MAX_REASON} characters", request_id)
    if _CONTROL.search(reason):
        return Refused("reason contains control characters", request_id)
    return Decide(request_id, verdict == "approve", reason)


# --- the state --------------------------------------------------------------


def _fingerprint(view: dict[str, Any]) -> str:
    text = json.dumps(view, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _raw_fingerprint(payload: bytes | str) -> str:
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    return "raw:" + hashlib.sha256(raw).hexdigest()


@attrs.define
class _Pending:
    view: dict[str, Any]
    fingerprint: str
    gateway: str
    link: Any
    received: float
    deadline: float


@attrs.define
class _GatewayState:
    name: str | None = None


@attrs.define
class _FeedState:
    name: str | None = None
    watched: set[str] = attrs.field(factory=set)  # as last told to the gateway


@attrs.frozen
class _Decided:
    fingerprint: str
    frame: str
    verdict: str


class Hub:
    """
    The hub's state: pending requests, who is connected, recent outcomes.

    Sans-IO: the glue calls C{gateway_*} and C{reviewer_*} with a L{Link}
    and the current time, and L{expire} about once a second; the hub
    answers through the links.  L{decide} is the one way to resolve a
    request (reviewer frames call it too).

    @ivar stats: counters of refused and ignored input, for tests and
        operators (e.g. C{stats["gateway_decision"]}).
    """

    log = Logger()

    def __init__(
        self,
        *,
        history_limit: int = DEFAULT_HISTORY,
        max_pending: int = MAX_PENDING,
        remember: int = REMEMBERED_IDS,
        on_request: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self._max_pending = max_pending
        self._on_request = on_request
        self._remember = remember
        self._pending: dict[str, _Pending] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=history_limit)
        self._decided: OrderedDict[str, _Decided] = OrderedDict()
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._gateways: dict[Any, _GatewayState] = {}
        self._reviewers: dict[Any, str] = {}
        self._watching: dict[Any, str] = {}
        self._feeds: dict[Any, _FeedState] = {}
        self.live = LiveSessions()
        self.stats: Counter[str] = Counter()

    # --- reading ------------------------------------------------------------

    def pending(self) -> list[dict[str, Any]]:
        """Views (C{R}) of the pending requests, oldest first."""
        return [self._view(entry) for entry in self._pending.values()]

    def history(self) -> list[dict[str, Any]]:
        """Recent outcomes (C{H}), oldest first."""
        return list(self._history)

    def status(self, request_id: str) -> str:
        """pending, approved, denied, cancelled, expired or unknown."""
        if request_id in self._pending:
            return "pending"
        decided = self._decided.get(request_id)
        if decided is not None:
            return "approved" if decided.verdict == "approve" else "denied"
        return self._finished.get(request_id, "unknown")

    def gateways(self) -> list[dict[str, str]]:
        return [
            {"name": state.name, "peer": str(getattr(link, "peer", ""))}
            for link, state in self._gateways.items()
            if state.name is not None
        ]

    @property
    def reviewer_count(self) -> int:
        return len(self._reviewers)

    # --- gateways -------------------------------------------------------------

    def gateway_connected(self, link: Link) -> None:
        self._gateways[link] = _GatewayState()

    def gateway_disconnected(self, link: Link) -> None:
        state = self._gateways.pop(link, None)
        if state is not None and state.name is not None:
            held = sum(1 for entry in self._pending.values() if entry.link is link)
            self.log.info(
                "gateway {gateway} disconnected; {count} request(s) stay pending",
                gateway=state.name,
                count=held,
            )
            self._broadcast(self._gateways_event())

    def gateway_frame(self, link: Link, payload: bytes | str, is_binary: bool, now: float) -> None:
        state = self._gateways.get(link)
        if state is None:
            return
        message = parse_gateway_frame(payload, is_binary)
        if isinstance(message, PingMessage):
            link.send(pong_frame())
            return
        if state.name is None:
            if isinstance(message, Hello):
                state.name = message.gateway
                self.log.info(
                    "gateway {gateway} connected from {peer}",
                    gateway=message.gateway,
                    peer=str(getattr(link, "peer", "")),
                )
                self._broadcast(self._gateways_event())
                return
            self.stats["gateway_no_hello"] += 1
            why = message.why if isinstance(message, BadHello | Ignored) else "hello required first"
            self.log.warn("refused a gateway connection: {why}", why=why)
            link.close(
                CLOSE_POLICY, why if isinstance(message, BadHello) else "hello required first"
            )
            return
        if isinstance(message, RequestMessage):
            self._request(link, state.name, message, now)
        elif isinstance(message, BadRequest):
            self._bad_request(link, state.name, message, payload, now)
        elif isinstance(message, CancelMessage):
            self._cancel(link, state.name, message, now)
        elif isinstance(message, GatewayDecision):
            self.stats["gateway_decision"] += 1
            self.log.warn(
                "ignored a decision frame from gateway {gateway}: gateways cannot decide",
                gateway=state.name,
            )
        elif isinstance(message, PongMessage):
            pass
        elif isinstance(message, Hello | BadHello):
            self.stats["gateway_junk"] += 1
            self.log.warn("ignored a second hello from gateway {gateway}", gateway=state.name)
        elif isinstance(message, Ignored):
            self.stats["gateway_junk"] += 1
            self.log.warn(
                "ignored a frame from gateway {gateway}: {why}",
                gateway=state.name,
                why=message.why,
                size=len(payload),
            )

    def _request(self, link: Link, gateway: str, message: RequestMessage, now: float) -> None:
        request_id = message.id
        fingerprint = _fingerprint(message.view)
        existing = self._pending.get(request_id)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                self.stats["id_conflict"] += 1
                self.log.warn(
                    "ignored request {request_id} from gateway {gateway}: the id is pending"
                    " with different content",
                    request_id=request_id,
                    gateway=gateway,
                )
                return
            # The gateway reconnected and re-sent it: answers go to the new link.
            existing.link = link
            existing.gateway = gateway
            return
        if self._redeliver(link, gateway, request_id, fingerprint):
            return
        if len(self._pending) >= self._max_pending:
            why = "the approval hub has too many pending requests"
            self.stats["hub_full"] += 1
            self.log.warn("denied request {request_id}: {why}", request_id=request_id, why=why)
            self._hub_denies(link, gateway, request_id, fingerprint, message.view, now, why)
            return
        expires = message.deadline if message.deadline is not None else now + DEFAULT_TIMEOUT
        deadline = min(max(expires, now) + EXPIRY_GRACE, now + MAX_LIFETIME)
        self._finished.pop(request_id, None)  # an id the hub itself expired comes back
        entry = _Pending(message.view, fingerprint, gateway, link, now, deadline)
        self._pending[request_id] = entry
        self.log.info(
            "request {request_id} ({kind}) from gateway {gateway} for {user} is pending",
            request_id=request_id,
            kind=message.view["kind"],
            gateway=gateway,
            user=message.view["user"],
        )
        self._broadcast(_dump({"type": "request", "request": self._view(entry)}))
        if self._on_request is not None:
            try:
                self._on_request(self._view(entry))
            except Exception:
                self.log.failure("notifying about request {request_id}", request_id=request_id)

    def _redeliver(self, link: Link, gateway: str, request_id: str, fingerprint: str) -> bool:
        """A re-sent id that is finished: re-send its decision, or ignore it."""
        decided = self._decided.get(request_id)
        if decided is not None:
            if decided.fingerprint == fingerprint:
                link.send(decided.frame)
            else:
                self.stats["id_conflict"] += 1
                self.log.warn(
                    "ignored request {request_id} from gateway {gateway}: the id was decided"
                    " for different content",
                    request_id=request_id,
                    gateway=gateway,
                )
            return True
        if self._finished.get(request_id) == "cancelled":
            self.stats["id_reused"] += 1
            self.log.warn(
                "ignored request {request_id} from gateway {gateway}: it was cancelled",
                request_id=request_id,
                gateway=gateway,
            )
            return True
        return False

    def _bad_request(
        self, link: Link, gateway: str, message: BadRequest, payload: bytes | str, now: float
    ) -> None:
        self.stats["bad_request"] += 1
        self.log.warn(
            "denied request {request_id} from gateway {gateway}: {why}",
            request_id=message.id,
            gateway=gateway,
            why=message.why,
        )
        if message.id in self._pending:
            return  # never touch a pending request on the word of a broken frame
        fingerprint = _raw_fingerprint(payload)
        if self._redeliver(link, gateway, message.id, fingerprint):
            return
        view = {"id": message.id, "kind": "?", "command": "", "note": message.why}
        self._hub_denies(link, gateway, message.id, fingerprint, view, now, message.why)

    def _hub_denies(
        self,
        link: Link,
        gateway: str,
        request_id: str,
        fingerprint: str,
        view: dict[str, Any],
        now: float,
        why: str,
    ) -> None:
        entry = _Pending(view, fingerprint, gateway, link, now, now)
        self._resolve(entry, "deny", why, HUB_REVIEWER, now)

    def _cancel(self, link: Link, gateway: str, message: CancelMessage, now: float) -> None:
        entry = self._pending.get(message.id)
        if entry is None:
            return
        if entry.link is not link and entry.gateway != gateway:
            self.stats["foreign_cancel"] += 1
            self.log.warn(
                "ignored gateway {gateway}'s cancel of request {request_id}: not its request",
                gateway=gateway,
                request_id=message.id,
            )
            return
        del self._pending[message.id]
        self._remember_finished(message.id, "cancelled")
        self.log.info(
            "request {request_id} cancelled by gateway {gateway}: {reason}",
            request_id=message.id,
            gateway=gateway,
            reason=message.reason,
        )
        self._record(entry, "cancelled", message.reason, None, now)

    # --- reviewers ------------------------------------------------------------

    def reviewer_connected(self, link: Link, reviewer: str) -> None:
        self._reviewers[link] = reviewer
        self.log.info("reviewer {reviewer} connected", reviewer=reviewer)
        link.send(
            _dump(
                {
                    "type": "snapshot",
                    "version": REVIEWER_PROTOCOL_VERSION,
                    "reviewer": reviewer,
                    "pending": self.pending(),
                    "history": self.history(),
                    "gateways": self.gateways(),
                    "sessions": self.live.sessions(),
                }
            )
        )

    def reviewer_disconnected(self, link: Link) -> None:
        reviewer = self._reviewers.pop(link, None)
        if self._watching.pop(link, None) is not None:
            self._update_watches()
        if reviewer is not None:
            self.log.info("reviewer {reviewer} disconnected", reviewer=reviewer)

    def reviewer_frame(self, link: Link, payload: bytes | str, is_binary: bool, now: float) -> None:
        reviewer = self._reviewers.get(link)
        if reviewer is None:
            return
        message = parse_reviewer_frame(payload, is_binary)
        if isinstance(message, PingMessage):
            link.send(pong_frame())
        elif isinstance(message, Refused):
            self.stats["reviewer_refused"] += 1
            self.log.warn(
                "refused a frame from reviewer {reviewer}: {why}",
                reviewer=reviewer,
                why=message.why,
            )
            if message.id is None:
                link.send(_dump({"type": "error", "error": message.why}))
            else:
                link.send(
                    _dump({"type": "ack", "id": message.id, "ok": False, "error": message.why})
                )
        elif isinstance(message, Watch):
            if message.session is None:
                self._watching.pop(link, None)
            else:
                self._watching[link] = message.session
            # The gateway hears first: in-process, its snapshot arrives before
            # the answer below, so that answer shows the screen at once.
            self._update_watches()
            if message.session is not None:
                link.send(self._session_event(message.session))
        elif isinstance(message, Decide):
            error = self.decide(message.id, message.approved, message.reason, reviewer, now)
            ack: dict[str, Any] = {"type": "ack", "id": message.id, "ok": error is None}
            if error is not None:
                ack["error"] = error
            link.send(_dump(ack))

    def decide(
        self, request_id: str, approved: bool, reason: str, reviewer: str, now: float
    ) -> str | None:
        """
        Resolve a pending request; the first call for an id wins.

        Returns C{None} if this decision counted, else why not (one line).
        """
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return f"request {request_id} is {self.status(request_id)}, not pending"
        self._resolve(entry, "approve" if approved else "deny", reason, reviewer, now)
        return None

    def _resolve(
        self, entry: _Pending, verdict: str, reason: str, reviewer: str, now: float
    ) -> None:
        request_id = entry.view["id"]
        frame = _dump(
            {
                "type": "decision",
                "id": request_id,
                "decision": verdict,
                "reason": reason,
                "reviewer": reviewer,
            }
        )
        self._decided[request_id] = _Decided(entry.fingerprint, frame, verdict)
        while len(self._decided) > self._remember:
            self._decided.popitem(last=False)
        self._finished.pop(request_id, None)
        delivered = entry.link in self._gateways and entry.link.send(frame)
        self.log.info(
            "request {request_id} {result} by {reviewer}{later}",
            request_id=request_id,
            result="approved" if verdict == "approve" else "denied",
            reviewer=reviewer,
            reason=reason,
            gateway=entry.gateway,
            later="" if delivered else " (sent when the gateway re-sends it)",
        )
        self._record(entry, verdict, reason, reviewer, now)

    # --- time -----------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Drop requests past their deadline (their gateway is gone); returns their ids."""
        due = [rid for rid, entry in self._pending.items() if entry.deadline <= now]
        for request_id in due:
            entry = self._pending.pop(request_id)
            self._remember_finished(request_id, "expired")
            self.log.info("request {request_id} expired", request_id=request_id)
            self._record(entry, "expired", "expired", None, now)
        return due

    # --- live sessions: the gateways' live feeds -----------------------------------

    def feed_connected(self, link: Link) -> None:
        self._feeds[link] = _FeedState()

    def feed_disconnected(self, link: Link) -> None:
        state = self._feeds.pop(link, None)
        if state is not None:
            self.live.source_gone(link)
            if state.name is not None:
                self.log.info("live feed of gateway {gateway} closed", gateway=state.name)

    def feed_frame(self, link: Link, payload: bytes | str, is_binary: bool, now: float) -> None:
        """
        One frame of a gateway's live feed; what changes goes out at L{flush_sessions}.

        Malformed frames are logged and ignored; the connection stays.
        """
        state = self._feeds.get(link)
        if state is None:
            return
        message = parse_feed_frame(payload, is_binary)
        if isinstance(message, Ignored):
            self.stats["feed_junk"] += 1
            self.log.warn(
                "ignored a live-feed frame from gateway {gateway}: {why}",
                gateway=state.name or "?",
                why=message.why,
                size=len(payload),
            )
        elif isinstance(message, FeedHello):
            if state.name is None:
                state.name = message.gateway
                self.log.info(
                    "live feed of gateway {gateway} connected from {peer}",
                    gateway=message.gateway,
                    peer=str(getattr(link, "peer", "")),
                )
            else:
                self.stats["feed_junk"] += 1
        elif state.name is None:
            self.stats["feed_no_hello"] += 1
            self.log.warn("refused a live feed: hello required first")
            link.close(CLOSE_POLICY, "hello required first")
        elif isinstance(message, FeedOpen):
            why = self.live.open(link, state.name, message, iso_time(now))
            if why is not None:
                self.stats["feed_session_refused"] += 1
                self.log.warn(
                    "not listing session {session} of gateway {gateway}: {why}",
                    session=message.session,
                    gateway=state.name,
                    why=why,
                )
        elif isinstance(message, FeedClose):
            self.live.close(link, message.session)
        elif isinstance(message, FeedSnapshot):
            if message.session in state.watched:
                self.live.snapshot(link, message)
        elif isinstance(message, FeedOutput):
            self.live.output(link, message.session, message.data)
        elif isinstance(message, FeedResize):
            self.live.resize(link, message.session, message.columns, message.rows)
        elif isinstance(message, FeedGap):
            self.stats["feed_gap"] += 1

    def flush_sessions(self) -> None:
        """Send watchers the screens that changed, and everyone the list if it did."""
        changed, ended, listed = self.live.take_changes()
        for link, session in list(self._watching.items()):
            if session in changed or session in ended:
                link.send(self._session_event(session, ended.get(session)))
                if session in ended:
                    del self._watching[link]
        if ended:
            self._update_watches()
        if listed:
            self._broadcast(_dump({"type": "sessions", "sessions": self.live.sessions()}))

    def _update_watches(self) -> None:
        """Tell each gateway which of its sessions are watched now, if that changed."""
        watched = set(self._watching.values())
        for session in self.live.ids():
            if session not in watched and self.live.has_screen(session):
                self.live.unwatch(session)
        for link, state in list(self._feeds.items()):
            if state.name is None:
                continue
            wanted = {s for s in self.live.of_source(link) if s in watched}
            if wanted != state.watched:
                state.watched = wanted
                link.send(_dump({"type": "watch", "sessions": sorted(wanted)}))

    def _session_event(self, session: str, final: list[str] | None = None) -> str:
        lines = self.live.lines(session)
        live = lines is not None
        return _dump(
            {
                "type": "session",
                "session": session,
                "live": live,
                "lines": lines if live else (final or []),
            }
        )

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "the hub is stopping") -> None:
        for link in [*self._gateways, *self._reviewers, *self._feeds]:
            link.close(code, reason)

    # --- internals --------------------------------------------------------------

    def _remember_finished(self, request_id: str, outcome: str) -> None:
        self._finished[request_id] = outcome
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)

    def _view(self, entry: _Pending) -> dict[str, Any]:
        view = dict(entry.view)
        view["gateway"] = entry.gateway
        view["received"] = iso_time(entry.received)
        return view

    def _record(
        self, entry: _Pending, outcome: str, reason: str, reviewer: str | None, now: float
    ) -> None:
        record = {
            "id": entry.view["id"],
            "outcome": outcome,
            "reason": reason,
            "reviewer": reviewer,
            "at": iso_time(now),
            "request": self._view(entry),
        }
        self._history.append(record)
        self._broadcast(_dump({"type": "resolved", **record}))

    def _gateways_event(self) -> str:
        return _dump({"type": "gateways", "gateways": self.gateways()})

    def _broadcast(self, text: str) -> None:
        for link in list(self._reviewers):
            link.send(text)


# --- Twisted glue --------------------------------------------------------------


class _HubProtocol(WebSocketServerProtocol):
    # autobahn logs the opening handshake -- Authorization and Cookie
    # headers included -- at debug level.  Pinned here at info, so turning
    # on debug logging for the process cannot put a token in a log.
    log = txaio.make_logger(level="info")

    service: HubService

    def send(self, text: str) -> bool:
        return send_text(self, text)

    def _accept_gateway_token(self, request, subprotocol: str, stat: str, what: str) -> str:
        """The opening handshake of a gateway's connection: its bearer token, then C{subprotocol}."""
        service = self.service
        if not service.gateway_token_ok(request.headers.get("authorization")):
            service.hub.stats[f"{stat}_unauthorized"] += 1
            service.log.warn("refused {what} from {peer}: bad token", what=what, peer=self.peer)
            raise ConnectionDeny(401, "Unauthorized")
        if subprotocol not in request.protocols:
            raise ConnectionDeny(400, f"subprotocol {subprotocol} required")
        return subprotocol

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code=code, reason=reason)

    def _is_secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)


class _GatewayProtocol(_HubProtocol):
    def onConnect(self, request):
        return self._accept_gateway_token(request, SUBPROTOCOL, "gateway", "a gateway connection")

    def onOpen(self):
        self.service.hub.gateway_connected(self)

    def onMessage(self, payload, isBinary):
        self.service.hub.gateway_frame(self, payload, isBinary, self.service.reactor.seconds())

    def onClose(self, wasClean, code, reason):
        self.service.hub.gateway_disconnected(self)


class _ReviewerProtocol(_HubProtocol):
    session_key: str | None = None

    def onConnect(self, request):
        service = self.service
        authorization = request.headers.get("authorization")
        if authorization is not None:
            token = _bearer(authorization)
            name = None if token is None else service.reviewers.authenticate_token(token)
            if name is None:
                service.hub.stats["reviewer_unauthorized"] += 1
                service.log.warn(
                    "refused a reviewer connection from {peer}: bad token", peer=self.peer
                )
                raise ConnectionDeny(401, "Unauthorized")
        else:
            session = service.sessions.from_cookie_header(request.headers.get("cookie"))
            if session is None:
                service.hub.stats["reviewer_unauthorized"] += 1
                raise ConnectionDeny(401, "Unauthorized")
            expected = own_origin(self._is_secure(), request.headers.get("host", ""))
            if not request.origin or normal_origin(request.origin) != expected:
                service.hub.stats["reviewer_bad_origin"] += 1
                service.log.warn(
                    "refused a reviewer connection from {peer}: foreign Origin", peer=self.peer
                )
                raise ConnectionDeny(403, "Forbidden")
            name = session.reviewer
            self.session_key = session.key
        if REVIEWER_SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, f"subprotocol {REVIEWER_SUBPROTOCOL} required")
        self.reviewer = name
        return REVIEWER_SUBPROTOCOL

    def onOpen(self):
        if self.session_key is not None:
            if not self.service.sessions.attach(self.session_key, self):
                self.close(CLOSE_LOGGED_OUT, "logged out")
                return
        self.service.hub.reviewer_connected(self, self.reviewer)

    def onMessage(self, payload, isBinary):
        self.service.hub.reviewer_frame(self, payload, isBinary, self.service.reactor.seconds())

    def onClose(self, wasClean, code, reason):
        self.service.hub.reviewer_disconnected(self)
        if self.session_key is not None:
            self.service.sessions.detach(self.session_key, self)


class _FeedProtocol(_HubProtocol):
    """A gateway's live feed: same bearer token as C{/gateway}, its own subprotocol."""

    def onConnect(self, request):
        return self._accept_gateway_token(request, FEED_SUBPROTOCOL, "feed", "a live feed")

    def onOpen(self):
        self.service.hub.feed_connected(self)

    def onMessage(self, payload, isBinary):
        self.service.feed_frame(self, payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.service.hub.feed_disconnected(self)
        self.service.schedule_flush()


class _LocalFeedLink:
    """The embedded hub's end of an in-process live feed: frames are method calls."""

    peer = "in-process"

    def __init__(self, service: HubService, feed: LiveFeed) -> None:
        self._service = service
        self._feed = feed
        self._open = True

    def send(self, text: str) -> bool:
        if self._open:
            try:
                self._feed.hub_frame(text, False)
            except Exception:  # the gateway's trouble must not break the hub
                self._service.log.failure("in-process live feed")
        return self._open

    def close(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            self._feed.disconnected()
            self._service.hub.feed_disconnected(self)

    def from_gateway(self, text: str) -> bool:
        if self._open:
            self._service.feed_frame(self, text, False)
        return self._open


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class _HubFactory(WebSocketServerFactory):
    def __init__(self, service: HubService, protocol: type[_HubProtocol], max_message: int):
        super().__init__(server="wraith-hub", reactor=service.reactor)
        self.protocol = protocol
        self.service = service
        self.setProtocolOptions(
            webStatus=False,
            # Invalid UTF-8 is the hub's to ignore (and log), not a reason
            # to drop a gateway's connection.
            utf8validateIncoming=False,
            maxFramePayloadSize=max_message,
            maxMessagePayloadSize=max_message,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            autoPingInterval=20,
            autoPingTimeout=10,
        )

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.service = self.service
        return protocol


#: Where the admin login link goes when stdout is closed (a daemonized twistd):
#: this name in the working directory, which is twistd's C{--rundir}.
LOGIN_LINK_FILE = "wraith-admin-login.txt"


def _announce_to_stdout(text: str) -> str:
    """
    Show the login link once; return where it went, for the log line.

    The real stdout, not twistd's log-redirected C{sys.stdout}: the link
    carries the admin token and must never reach a log file.  A daemonized
    twistd has pointed stdout at /dev/null, where the link would be lost, so
    it goes to a 0600 file instead.
    """
    out = sys.__stdout__
    if out is not None and not _goes_nowhere(out):
        out.write(text + "\n")
        out.flush()
        return "printed once to stdout"
    path = os.path.abspath(LOGIN_LINK_FILE)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of that name may have had another mode
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)
    return f"written to {path} (mode 0600), because stdout is closed"


def _goes_nowhere(stream: Any) -> bool:
    """Is C{stream} closed, or /dev/null (where twistd points a daemon's stdout)?"""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return True


class HubService(MultiService):
    """
    The hub on one listening endpoint: C{/gateway}, C{/reviewer}, the console.

    Start it (or give it a parent) to listen; stopping closes every
    connection.  Build it with L{make_hub_service}.

    @ivar hub: the L{Hub}.
    @ivar port: the L{IListeningPort} once listening, else C{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        endpoint,
        reviewers: Reviewers,
        gateway_token: str,
        *,
        hub: Hub | None = None,
        admin_token: str | None = None,
        announce: Callable[[str], str | None] | None = _announce_to_stdout,
        local_host: str = "127.0.0.1",
    ) -> None:
        super().__init__()
        if not isinstance(gateway_token, str) or not gateway_token:
            raise ValueError("the hub needs a gateway token")
        self.reactor = reactor
        self.hub = hub or Hub()
        self.reviewers = reviewers
        self._gateway_digest = hashlib.sha256(gateway_token.encode()).digest()
        self._endpoint = endpoint
        self._admin_token = admin_token
        self._announce = announce
        self._local_host = local_host
        self.sessions = Sessions(reactor.seconds)
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred | None = None
        self._expiry: task.LoopingCall | None = None
        self.webhook: Webhook | None = None
        self._flush: Any = None

        self.gateway_factory = _HubFactory(self, _GatewayProtocol, MAX_GATEWAY_MESSAGE)
        self.reviewer_factory = _HubFactory(self, _ReviewerProtocol, MAX_REVIEWER_MESSAGE)
        self.feed_factory = _HubFactory(self, _FeedProtocol, MAX_FEED_MESSAGE)
        root = ConsoleRoot(reactor, reviewers, self.sessions, reviewer_path=REVIEWER_PATH)
        root.putChild(GATEWAY_PATH.strip("/").encode(), WebSocketResource(self.gateway_factory))
        root.putChild(REVIEWER_PATH.strip("/").encode(), WebSocketResource(self.reviewer_factory))
        root.putChild(FEED_PATH.strip("/").encode(), WebSocketResource(self.feed_factory))
        self.root: Resource = root
        self.site = console_site(root)
        # Every connection, HTTP or WebSocket, to close them all on stop.
        self._connections = WrappingFactory(self.site)

    def gateway_token_ok(self, header: str | None) -> bool:
        token = None if header is None else _bearer(header)
        if token is None:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._gateway_digest)

    # --- listening --------------------------------------------------------------

    def listen_now(self) -> defer.Deferred:
        """Start listening (once); fires with the port."""
        if self._listening is None:
            self._listening = self._endpoint.listen(self._connections)
            self._listening.addCallback(self._listened)
        d: defer.Deferred = defer.Deferred()
        self._listening.addBoth(lambda result: (d.callback(result), result)[1])
        return d

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list = []
        self.listen_now().addErrback(failures.append)
        if failures:  # e.g. the port is in use: stop twistd with the reason
            failures[0].raiseException()

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()
        self._expiry = task.LoopingCall(self._tick)
        self._expiry.clock = self.reactor
        self._expiry.start(1.0, now=False)
        if self._admin_token is not None and self._announce is not None:
            token, self._admin_token = self._admin_token, None  # printed once
            self._listening.addCallback(self._announce_login, token)

    def _announce_login(self, port: IListeningPort, token: str) -> IListeningPort:
        try:
            where = self._announce(
                "wraith-hub: reviewer console for 'admin' (this link is shown once):\n"
                f"    {self.console_url}/login?token={token}"
            )
        except OSError as e:
            self.log.error(
                "no reviewers file, and the console login link for reviewer 'admin' could not"
                " be shown: {error}; nobody can log in to the console (use --reviewers)",
                error=f"{e.filename}: {e.strerror}" if e.filename else str(e),
            )
            return port
        self.log.info(
            "no reviewers file: the console login link for reviewer 'admin' was {where}"
            " (use --reviewers for lasting accounts)",
            where=where or "handed to the announcer",
        )
        return port

    def local_feed(self, gateway_name: str = "wraith") -> LiveFeed:
        """
        A live feed for a gateway in this process (the embedded hub): the
        same frames as over C{/live-feed}, as method calls.  Give it to the
        gateway as its L{SessionSettings.session_watch}.
        """
        feed = LiveFeed(gateway_name)
        link = _LocalFeedLink(self, feed)
        self.hub.feed_connected(link)
        feed.connected(link.from_gateway)
        return feed

    def feed_frame(self, link: Any, payload: bytes | str, is_binary: bool) -> None:
        self.hub.feed_frame(link, payload, is_binary, self.reactor.seconds())
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Screen changes gather for L{SESSION_FLUSH_INTERVAL}, then go to watchers."""
        if self.running and (self._flush is None or not self._flush.active()):
            self._flush = self.reactor.callLater(SESSION_FLUSH_INTERVAL, self.hub.flush_sessions)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        self.hub.expire(now)
        self.sessions.expire(now)

    @property
    def local_address(self) -> tuple[str, int]:
        """The (host, port) local clients reach the hub at (wildcards become loopback)."""
        if self.port is None:
            raise RuntimeError("the hub is not listening yet")
        return _reachable(self.port.getHost().host, self._local_host), self.port.getHost().port

    @property
    def console_url(self) -> str:
        host, port = self.local_address
        scheme = "https" if isinstance(self._endpoint, SSL4ServerEndpoint) else "http"
        return f"{scheme}://{_url_host(host)}:{port}"

    @property
    def gateway_url(self) -> str:
        host, port = self.local_address
        scheme = "wss" if isinstance(self._endpoint, SSL4ServerEndpoint) else "ws"
        return f"{scheme}://{_url_host(host)}:{port}{GATEWAY_PATH}"

    def stopService(self) -> defer.Deferred:
        """Stop listening, close every connection, and wait until they are gone."""
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        waits = []
        if self._listening is not None:
            listening, self._listening = self._listening, None
            listening.addErrback(lambda _: None)
            waits.append(listening.addCallback(lambda port: port and port.stopListening()))
        self.port = None
        if self.webhook is not None:
            self.webhook.stop()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self.hub.close_all()
        waits.append(self._drop_connections())
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def _drop_connections(self) -> defer.Deferred:
        # A WebSocket close handshake gets a moment; anything left is aborted.
        wrappers = list(self._connections.protocols)
        if not wrappers:
            return defer.succeed(None)
        gone: list[defer.Deferred] = []
        for wrapper in wrappers:
            d: defer.Deferred = defer.Deferred()
            original = wrapper.connectionLost

            def lost(reason, original=original, d=d):
                try:
                    original(reason)
                finally:
                    if not d.called:
                        d.callback(None)

            wrapper.connectionLost = lost
            gone.append(d)

        def abort(websockets_too: bool) -> None:
            for wrapper in wrappers:
                if wrapper not in self._connections.protocols or wrapper.transport is None:
                    continue
                if websockets_too or not isinstance(wrapper.wrappedProtocol, _HubProtocol):
                    wrapper.transport.abortConnection()

        abort(websockets_too=False)  # plain HTTP (keep-alive) connections: now

        delayed = self.reactor.callLater(0.5, abort, True)
        all_gone = defer.DeferredList(gone)

        def done(result):
            if delayed.active():
                delayed.cancel()
            return None

        return all_gone.addBoth(done)


def _reachable(host: str, local: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 and local == "127.0.0.1" else local
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _static_address(endpoint) -> tuple[str, int] | None:
    """(interface, port) of a TCP/SSL endpoint with a fixed port, else C{None}."""
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | SSL4ServerEndpoint):
        port = getattr(endpoint, "_port", 0)
        interface = getattr(endpoint, "_interface", "") or "0.0.0.0"
        if port:
            return interface, port
    return None


def make_hub_service(
    reactor,
    listen: str,
    reviewers: Reviewers | None,
    gateway_token: str,
    *,
    history: int = DEFAULT_HISTORY,
    announce: Callable[[str], str | None] | None = _announce_to_stdout,
    webhook: str | None = None,
) -> tuple[HubService, Hub, str]:
    """
    Build the hub: returns C{(service, hub, gateway_url)}.

    @param listen: a server endpoint description, e.g.
        C{tcp:8022:interface=127.0.0.1} (C{ssl:...} serves HTTPS/WSS).
    @param reviewers: the accounts (L{Reviewers.load}), or C{None} for one
        C{admin} with a random token whose console login link is passed
        once to C{announce} when the service starts (default: printed to
        the process's real stdout, or a 0600 file when that is /dev/null;
        never logged).
    @param gateway_token: the bearer token gateways must send.  To embed
        the hub in C{twistd wraith}, pass the C{--approval-token} (other
        gateways may then join) or a random token, and give the same to the
        L{ApprovalClient} together with C{gateway_url}.
    @return: the service (start it or give it a parent), the L{Hub} and
        the C{ws://} URL of C{/gateway} as reachable from this machine.
        With port 0 the port is bound at once, so the URL is known.

    @param webhook: an http(s) URL the hub POSTs C{{"type": "request", ...R}}
        to for every request that waits for review (L{Webhook}).

    @raise ValueError: unusable endpoint description, token or webhook URL.
    """
    endpoint = serverFromString(reactor, listen)
    notifier = Webhook(reactor, webhook) if webhook else None
    admin_token = None
    if reviewers is None:
        reviewers, admin_token = Reviewers.with_random_admin()
    service = HubService(
        reactor,
        endpoint,
        reviewers,
        gateway_token,
        hub=Hub(history_limit=history, on_request=notifier and notifier.notify),
        admin_token=admin_token,
        announce=announce,
    )
    service.webhook = notifier
    fixed = _static_address(endpoint)
    if fixed is None:
        failures: list = []
        service.listen_now().addErrback(failures.append)
        if failures:
            failures[0].raiseException()
        url = service.gateway_url
    else:
        host, port = _reachable(fixed[0], "127.0.0.1"), fixed[1]
        scheme = "wss" if isinstance(endpoint, SSL4ServerEndpoint) else "ws"
        url = f"{scheme}://{_url_host(host)}:{port}{GATEWAY_PATH}"
    return service, service.hub, url
