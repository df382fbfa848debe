"""
The gateway's side of PROTOCOL.md: a reconnecting WebSocket client that
turns C{request} frames into Deferreds of L{Decision}.

Shape: L{ApprovalClient} is a L{MultiService} holding a L{ClientService}
(autobahn has no reconnecting WebSocket client of its own) that dials the
service with capped exponential back-off for as long as the gateway runs.
Each WebSocket connection is a thin L{_ApprovalSession} that hands frames
to the client; the client keeps all state -- which requests are pending
(L{PendingRequests}), their expiry timers, and the Deferreds callers wait
on -- so a lost connection loses nothing: the next session says C{hello}
and re-sends every pending request with its original id.

Fail closed throughout: only a valid C{approve} for a pending id fires a
Deferred with an approval.  Expiry, L{ApprovalClient.cancel}, a caller
cancelling its Deferred, and stopping the service all end in denial, and a
frame the client cannot use is logged and dropped -- never acted on, and
never a reason to drop the connection.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest, ConnectionResponse
from autobahn.websocket.util import parse_url
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from zope.interface import implementer

from wraith_conch.approval.interfaces import (
    DEFAULT_TIMEOUT_SECONDS,
    CommandRequest,
    Decision,
    IApprover,
)
from wraith_conch.approval.protocol import (
    SUBPROTOCOL,
    DecisionMessage,
    Ignored,
    PendingRequests,
    Ping,
    Pong,
    Stale,
    cancel_frame,
    hello_frame,
    parse_service_frame,
    pong_frame,
    request_frame,
)
from wraith_conch.approval.wsclient import (
    connecting_request,
    reconnecting_connection,
    send_text,
)
from wraith_conch.fastpath import send_now

RETRY_FIRST_DELAY = 1.0
"""Upper bound of the first reconnection delay, in seconds (PROTOCOL.md: <= 1 s)."""

RETRY_MAX_DELAY = 30.0
"""Upper bound of every reconnection delay, in seconds (PROTOCOL.md: <= 30 s)."""

MAX_FRAME_BYTES = 1 << 20
"""Largest message accepted from the service; a decision is a few hundred bytes."""

TIMED_OUT = "approval timed out"

#: Cancels kept for a service that is away (then the oldest are dropped):
#: each is a request the service saw and still shows its reviewers.
MAX_UNSENT_CANCELS = 10_000
STOPPING = "the gateway is stopping"


def retry_delay(attempt: int, jitter: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before reconnection attempt C{attempt} (1 is the first).

    Doubles from L{RETRY_FIRST_DELAY} up to L{RETRY_MAX_DELAY}, then takes a
    random 50-100 % of that.  The jitter only ever shortens the wait, so
    the bounds PROTOCOL.md promises hold exactly -- unlike
    C{twisted.application.internet.backoffPolicy}, which adds up to a
    second on top of its cap -- while gateways restarted together still
    spread out their reconnects.
    """
    exponent = min(max(attempt, 1), 32) - 1
    ceiling = min(RETRY_MAX_DELAY, RETRY_FIRST_DELAY * 2.0**exponent)
    return ceiling * (0.5 + 0.5 * jitter())


def parse_approval_url(url: str) -> tuple[bool, str, int, str, str]:
    """
    Check a C{ws://} / C{wss://} URL of an approval service.

    Returns C{(is_secure, host, port, resource, path)}; raises L{ValueError}
    with a one-line reason.  The configuration checks URLs with this too, so
    a URL accepted at start-up is one the client can use.
    """
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(f"bad approval service URL {url!r}: it contains spaces or controls")
    try:
        is_secure, host, port, resource, path, _params = parse_url(url)
    except Exception as e:
        raise ValueError(f"bad approval service URL {url!r}: {e}") from None
    split = urlsplit(url)
    if split.username is not None or split.password is not None:
        raise ValueError("bad approval service URL: it must not carry credentials; use the token")
    return is_secure, host, port, resource, path


class SubprotocolNotSelected(Exception):
    """The service did not select C{wraith.approval.v1}; the connection is refused."""


def _check_token(token: str | None) -> str | None:
    if token is None or token == "":
        return None
    if not all(33 <= ord(c) <= 126 for c in token):
        # It goes into an HTTP header verbatim.  Never echo it: error
        # messages end up in logs.
        raise ValueError("the approval token must be printable ASCII without spaces")
    return token


class _ApprovalSession(WebSocketClientProtocol):
    """
    One WebSocket connection to the service; all state lives in the client.
    """

    # autobahn logs the whole opening handshake -- Authorization header
    # included -- at debug level.  A level set explicitly here does not
    # follow txaio.set_global_log_level(), so turning on autobahn debug
    # logging for the process cannot put the token in a log.
    log = txaio.make_logger(level="info")

    client: ApprovalClient
    was_opened = False

    def __init__(self) -> None:
        super().__init__()
        self._closed_waiters: list[defer.Deferred[None]] = []

    def onConnecting(self, transport_details) -> ConnectingRequest:
        return self.client._connecting_request()

    def onConnect(self, response: ConnectionResponse) -> None:
        if response.protocol != SUBPROTOCOL:
            self.client._subprotocol_refused(response.protocol)
            raise SubprotocolNotSelected(
                f"the approval service selected {response.protocol!r}, not {SUBPROTOCOL!r}"
            )

    def onOpen(self) -> None:
        self.was_opened = True
        self.client._session_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._session_closed(self, code, reason)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_closed(self) -> defer.Deferred[None]:
        """Fires once the connection is gone."""
        d: defer.Deferred[None] = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    def send_text(self, text: str) -> bool:
        """Send one text frame; C{False} if the connection is no longer open."""
        return send_text(self, text)


@implementer(IApprover)
class ApprovalClient(MultiService):
    """
    L{IApprover} backed by an approval service at C{url} (PROTOCOL.md).

    Start it (or give it a parent service) to connect; it reconnects until
    stopped.  Requests made while disconnected wait, and are sent when a
    connection opens.  Stopping denies everything still pending.

    @param reactor: used for connections, retry delays and expiry timers.
    @param url: C{ws://} or C{wss://} URL of the service.
    @param token: sent as C{Authorization: Bearer <token>}; never logged.
    @param gateway_name: the C{gateway} field of C{hello}.
    @param timeout: the longest this client waits for any decision; a
        request expires at C{request.expires} or C{timeout} seconds after
        it was made, whichever is sooner.
    @param retry_policy: seconds to wait before reconnection attempt C{n};
        default L{retry_delay}.
    @param tls_options: for C{wss://}, the TLS client options (e.g. a
        private CA via C{optionsForClientTLS(host, trustRoot=...)}); the
        default verifies the URL's host name against the system trust store.

    @raise ValueError: the URL, token or timeout is unusable.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        token: str | None = None,
        gateway_name: str = "wraith",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        retry_policy: Callable[[int], float] | None = None,
        tls_options: IOpenSSLClientConnectionCreator | None = None,
    ) -> None:
        super().__init__()
        is_secure, host, port, resource, path = parse_approval_url(url)
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"the approval timeout must be a positive number, not {timeout!r}")
        self._token = _check_token(token)
        self._reactor = reactor
        self._gateway_name = gateway_name
        self._timeout = float(timeout)
        self._retry_policy = retry_policy or retry_delay
        self._host_header = f"[{host}]" if ":" in host else host
        self._port = port
        self._resource = resource
        scheme = "wss" if is_secure else "ws"
        self.description = f"approval service at {scheme}://{self._host_header}:{port}{path}"

        self._pending = PendingRequests()
        self._waiting: dict[str, defer.Deferred[Decision]] = {}
        # Ids the service has been sent (so a cancel means something to it),
        # and cancels for those that could not be sent: they go out first
        # on the next connection, so reviewers stop seeing void requests.
        self._delivered: set[str] = set()
        self._unsent_cancels: dict[str, str] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._session: _ApprovalSession | None = None
        self._open_waiters: list[defer.Deferred[None]] = []
        # Connections that closed before the WebSocket opened (401, wrong
        # subprotocol, handshake timeout).  ClientService counts those as
        # successes -- TCP connected -- and would retry a refusing service
        # at the first-retry delay forever; adding them keeps the back-off
        # growing until a session actually opens.
        self._failed_handshakes = 0
        self._stopping = False
        self._stop_waiters: list[defer.Deferred[None]] | None = None

        self._connector = reconnecting_connection(
            reactor,
            owner=self,
            protocol=_ApprovalSession,
            url=url,
            subprotocol=SUBPROTOCOL,
            max_message_bytes=MAX_FRAME_BYTES,
            host=host,
            port=port,
            secure=is_secure,
            tls_options=tls_options,
            retry_policy=self._next_delay,
        )
        self._connector.setServiceParent(self)

    # --- IApprover ---------------------------------------------------------

    def request_decision(self, request: CommandRequest) -> defer.Deferred[Decision]:
        """
        Send C{request} (now, or when a connection opens) and wait for the
        first valid decision on it, or its expiry.
        """
        if self._stopping:
            return defer.succeed(Decision.deny(STOPPING))
        now = self._reactor.seconds()
        deadline = min(request.expires, now + self._timeout)
        if deadline <= now:
            self.log.warn(
                "approval request {request_id} expired before it was sent",
                request_id=request.id,
                kind=request.kind,
            )
            return defer.succeed(Decision.deny(TIMED_OUT))
        try:
            self._pending.add(request, deadline)
        except ValueError:
            self.log.error(
                "approval request {request_id} reuses an id; denied", request_id=request.id
            )
            return defer.succeed(Decision.deny("duplicate request id"))
        d: defer.Deferred[Decision] = defer.Deferred(lambda _: self._abandon(request.id))
        self._waiting[request.id] = d
        self._timers[request.id] = self._reactor.callLater(
            deadline - now, self._expire_due, request.id
        )
        if self._send(request_frame(request)):
            self._delivered.add(request.id)
            send_now(self._session.transport)  # a person waits on this one
        else:
            # A request that was sent is logged once, with its decision (the
            # gateway's decision line; the audit trail has both): a line per
            # send cost a tenth of the approval overhead.  A queued one is news.
            self.log.info(
                "approval request {request_id} for {kind} queued until the approval"
                " service is connected",
                request_id=request.id,
                kind=request.kind,
                session=request.session,
                expires_in=deadline - now,
            )
        return d

    def cancel(self, request_id: str, reason: str) -> None:
        """Deny a pending request with C{reason} and tell the service."""
        if self._pending.cancel(request_id) is None:
            return
        self.log.info(
            "approval request {request_id} cancelled: {reason}",
            request_id=request_id,
            reason=reason,
        )
        self._finish(request_id, Decision.deny(reason), cancel_reason=reason)

    # --- for the gateway and tests ------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a WebSocket session with the service is open now."""
        return self._session is not None

    def when_open(self) -> defer.Deferred[None]:
        """
        Fires when a session is open and C{hello} (plus re-sends) went out:
        at once if one is open now, else at the next one.  Fails with
        L{defer.CancelledError} if the service stops first.
        """
        if self._session is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._open_waiters.remove)
        self._open_waiters.append(d)
        return d

    def pending_ids(self) -> list[str]:
        """Ids waiting for a decision, oldest first."""
        return [request.id for request in self._pending.outstanding()]

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """
        Deny every pending request, say goodbye, and stop reconnecting.

        The goodbye is a WebSocket close handshake, bounded by autobahn's
        C{closeHandshakeTimeout}; the reconnecting service stops after it,
        so the service sees a clean close rather than a dropped socket.
        Safe to call again while stopping or once stopped.
        """
        if self._stop_waiters is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._stop_waiters.append(waiter)
            return waiter
        if not self.running:
            return defer.succeed(None)
        self._stopping = True
        self._stop_waiters = []
        for request in self._pending.outstanding():
            self._pending.cancel(request.id)
            self._finish(request.id, Decision.deny(STOPPING), cancel_reason=STOPPING)
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.errback(defer.CancelledError("the approval client stopped"))
        session = self._session
        if session is None:
            stopped = defer.maybeDeferred(MultiService.stopService, self)
        else:
            closed = session.when_closed()
            session.sendClose(code=1000, reason=STOPPING)
            stopped = closed.addCallback(lambda _: MultiService.stopService(self))

        def done(result: object) -> object:
            waiting, self._stop_waiters = self._stop_waiters or [], None
            for waiter in waiting:
                waiter.callback(None)
            return result

        return stopped.addBoth(done)

    # --- the session's callbacks --------------------------------------------

    def _connecting_request(self) -> ConnectingRequest:
        return connecting_request(
            host_header=self._host_header,
            port=self._port,
            resource=self._resource,
            token=self._token,
            subprotocol=SUBPROTOCOL,
        )

    def _subprotocol_refused(self, selected: str | None) -> None:
        self.log.warn(
            "refusing the approval service: it selected subprotocol {selected!r}, not {expected!r}",
            selected=selected,
            expected=SUBPROTOCOL,
            service=self.description,
        )

    def _session_opened(self, session: _ApprovalSession) -> None:
        self._session = session
        self._failed_handshakes = 0
        session.send_text(hello_frame(self._gateway_name))
        cancels, self._unsent_cancels = self._unsent_cancels, {}
        for request_id, reason in cancels.items():
            session.send_text(cancel_frame(request_id, reason))
        outstanding = self._pending.outstanding()
        for request in outstanding:
            if session.send_text(request_frame(request)):
                self._delivered.add(request.id)
        self.log.info(
            "connected to the {service}; {count} pending request(s) sent",
            service=self.description,
            count=len(outstanding),
        )
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _session_closed(
        self, session: _ApprovalSession, code: int | None, reason: str | None
    ) -> None:
        if session is self._session:
            self._session = None
        if session.was_opened:
            self.log.warn(
                "lost the connection to the {service} ({code}: {reason});"
                " {count} request(s) stay pending",
                service=self.description,
                code=code,
                reason=reason,
                count=len(self._pending),
            )
        else:
            self._failed_handshakes += 1
            self.log.warn(
                "could not open a session with the {service}: {reason}",
                service=self.description,
                code=code,
                reason=reason,
                attempts=self._failed_handshakes,
            )

    def _frame_received(self, session: _ApprovalSession, payload: bytes, is_binary: bool) -> None:
        message = parse_service_frame(payload, is_binary)
        if isinstance(message, Ignored):
            self.log.warn(
                "ignored a frame from the approval service: {why}",
                why=message.why,
                size=len(payload),
                binary=is_binary,
            )
        elif isinstance(message, Ping):
            session.send_text(pong_frame())
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, DecisionMessage):
            self._decision_received(message)

    def _decision_received(self, message: DecisionMessage) -> None:
        result = self._pending.resolve(message)
        if isinstance(result, Stale):
            self.log.warn(
                "ignored a decision for request {request_id}: the request is {status}",
                request_id=message.id,
                status=str(result.status),
                reviewer=message.reviewer,
            )
            return
        decision = result.decision
        self.log.info(
            "approval request {request_id} {result} by {reviewer}",
            request_id=message.id,
            result="approved" if decision.approved else "denied",
            reviewer=decision.reviewer,
            reason=decision.reason,
        )
        self._finish(message.id, decision)

    # --- internals ----------------------------------------------------------

    def _next_delay(self, attempt: int) -> float:
        return self._retry_policy(attempt + self._failed_handshakes)

    def _send(self, text: str) -> bool:
        session = self._session
        return session is not None and session.send_text(text)

    def _expire_due(self, request_id: str) -> None:
        # The timer may fire a hair before the deadline it was computed
        # from (float rounding); its own request is due regardless.
        now = max(self._reactor.seconds(), self._pending.deadline(request_id) or 0.0)
        for expired in self._pending.expire(now):
            self.log.info("approval request {request_id} expired", request_id=expired)
            self._finish(expired, Decision.deny(TIMED_OUT), cancel_reason="expired")

    def _queue_cancel(self, request_id: str, reason: str) -> None:
        if len(self._unsent_cancels) >= MAX_UNSENT_CANCELS:
            oldest = next(iter(self._unsent_cancels))
            del self._unsent_cancels[oldest]
            self.log.warn(
                "too many cancels waiting for the {service}; dropped the one for {request_id}",
                service=self.description,
                request_id=oldest,
            )
        self._unsent_cancels[request_id] = reason

    def _abandon(self, request_id: str) -> None:
        # The caller cancelled its Deferred (which then fails with
        # CancelledError): forget the request and tell the service.
        self._waiting.pop(request_id, None)
        if self._pending.cancel(request_id) is not None:
            self.log.info("approval request {request_id} abandoned", request_id=request_id)
            self._finish(request_id, None, cancel_reason="cancelled")

    def _finish(
        self, request_id: str, decision: Decision | None, cancel_reason: str | None = None
    ) -> None:
        """
        The request has left L{PendingRequests}: stop its timer, tell the
        service if it is void, then (last, since callbacks may call back
        into us) fire the caller's Deferred.
        """
        timer = self._timers.pop(request_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        delivered = request_id in self._delivered
        self._delivered.discard(request_id)
        if cancel_reason is not None and not self._send(cancel_frame(request_id, cancel_reason)):
            if delivered:
                self._queue_cancel(request_id, cancel_reason)
        d = self._waiting.pop(request_id, None)
        if d is not None and decision is not None:
            d.callback(decision)
