"""
The live feed: a gateway's sessions, for reviewers who watch them read-only.

A wraith extension, I{not} part of the approval protocol (PROTOCOL.md): a
second, optional WebSocket from the gateway to the hub's C{/live-feed}
(subprotocol C{wraith.live.v1}, the gateway's bearer token), described in
docs/protocol.md.  The embedded hub gets the same frames in-process.

It is demand-driven and best-effort:

  - the gateway announces every session (C{open}/C{close} with who and
    where, no output);
  - the hub says which sessions reviewers watch (C{watch});
  - only for those does the gateway send a C{snapshot} -- rendered from the
    gate's screen model, which already follows every PTY shell -- and then
    the C{output} as it comes;
  - a slow hub never slows a session: while the connection's buffer is full
    (the transport pauses its producer) output for watched sessions is
    dropped, and once it drains the hub gets C{gap} and a fresh snapshot.
    The recordings and the audit trail are the records; this is a view.

Shape: L{LiveFeed} is the sans-IO core (the L{ISessionWatcher} the session
channels report to, and frames in and out); L{LiveFeedClient} is the
reconnecting WebSocket to a standalone hub.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import txaio
from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from wraith_conch.approval.client import parse_approval_url, retry_delay
from wraith_conch.approval.protocol import Ignored, _brief, load_frame_object
from wraith_conch.approval.wsclient import (
    connecting_request,
    reconnecting_connection,
    send_text,
)
from wraith_conch.interception.screen import Screen

FEED_SUBPROTOCOL = "wraith.live.v1"
FEED_PATH = "/live-feed"
FEED_VERSION = 1

MAX_SESSIONS = 1000
"""Sessions a gateway announces at most; later ones are not offered for watching."""

TAIL_BYTES = 8192
"""Output kept per session without a screen model, to render its snapshot from."""

MAX_HUB_MESSAGE = 256 * 1024
"""Largest frame accepted from the hub (a C{watch} list)."""

DEFAULT_SIZE = (80, 24)
"""(columns, rows) of a session without a PTY."""

_SESSION = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@attrs.frozen
class LiveSession:
    """Who and where, announced with C{open}; never any output."""

    session: str
    user: str
    client: str
    target: str
    kind: str
    pty: bool
    columns: int
    rows: int

    def open_frame(self) -> dict[str, Any]:
        return {"type": "open", **attrs.asdict(self)}


class ISessionWatcher(Interface):
    """What the gateway's session channels report to (L{SessionSettings.session_watch})."""

    def opened(session: LiveSession, screen: Callable[[], Screen | None]) -> None:
        """
        A session channel started; C{screen()} is its live screen model, if any.
        """

    def output(session: str, data: bytes, size: tuple[int, int] | None) -> None:
        """The target printed C{data}; C{size} is the PTY's (columns, rows), if any.

        Called for every chunk: must be cheap when nobody watches."""

    def closed(session: str) -> None:
        """The session channel closed."""


def _sane(size: tuple[int, int]) -> tuple[int, int]:
    """The size the gateway's screen models use (L{wraith_conch.gateway.session._sane_size})."""
    columns, rows = size
    return max(1, min(columns or 80, 1000)), max(1, min(rows or 24, 500))


@attrs.define(slots=True)
class _Session:
    info: LiveSession
    screen: Callable[[], Screen | None]
    size: tuple[int, int]
    tail: bytearray | None
    watched: bool = False
    stale: bool = False  # output was dropped since the last snapshot


def snapshot_of(info: LiveSession, screen: Screen | None, tail: bytes) -> dict[str, Any]:
    """A C{snapshot} frame: the live screen, or one rendered from the kept tail."""
    if screen is None:
        screen = Screen(info.columns, info.rows)
        screen.feed(tail if info.pty else tail.replace(b"\n", b"\r\n"))
    row, column = screen.cursor
    return {
        "type": "snapshot",
        "session": info.session,
        "columns": screen.columns,
        "rows": screen.lines,
        "lines": screen.last_screenful(),
        "cursor": [row, column],
    }


@implementer(ISessionWatcher)
class LiveFeed:
    """
    The gateway's end of the live feed, sans-IO.

    Session channels call the L{ISessionWatcher} methods; the glue calls
    L{connected} with a C{send(text) -> bool} once a hub listens,
    L{hub_frame} for each frame from it, L{pause}/L{resume} when the
    connection's buffer fills and drains, and L{disconnected}.

    @ivar stats: counters for tests and operators: C{frames}, C{output_frames},
        C{pauses}, C{gaps}, C{hub_junk}, C{not_announced}.
    """

    log = Logger()

    def __init__(self, gateway_name: str = "wraith", *, max_sessions: int = MAX_SESSIONS) -> None:
        self._name = gateway_name
        self._max = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._send: Callable[[str], bool] | None = None
        self._paused = False
        self.stats: Counter[str] = Counter()

    # --- ISessionWatcher (hot path: output) ----------------------------------

    def opened(self, session: LiveSession, screen: Callable[[], Screen | None]) -> None:
        if session.session in self._sessions:
            return
        if len(self._sessions) >= self._max:
            self.stats["not_announced"] += 1
            return
        # A shell's screen model renders its snapshot; anything else keeps a
        # short tail of output instead (an sftp subsystem: nothing at all).
        tail = None if session.kind in ("shell", "subsystem") else bytearray()
        size = (session.columns, session.rows)
        self._sessions[session.session] = _Session(session, screen, size, tail)
        self._emit(session.open_frame())

    def output(self, session: str, data: bytes, size: tuple[int, int] | None) -> None:
        state = self._sessions.get(session)
        if state is None:
            return
        tail = state.tail
        if tail is not None:
            tail += data
            if len(tail) > 2 * TAIL_BYTES:
                del tail[:-TAIL_BYTES]
        if size is not None and size != state.size:
            state.size = size  # as given: compared on every chunk, so kept raw
            columns, rows = _sane(size)
            state.info = attrs.evolve(state.info, columns=columns, rows=rows)
            if state.watched:
                self._emit({"type": "resize", "session": session, "columns": columns, "rows": rows})
        if not state.watched or state.info.kind == "subsystem":
            return
        if self._paused or state.stale:
            state.stale = True
            return
        self.stats["output_frames"] += 1
        self._emit(
            {"type": "output", "session": session, "data": base64.b64encode(data).decode("ascii")}
        )

    def closed(self, session: str) -> None:
        if self._sessions.pop(session, None) is not None:
            self._emit({"type": "close", "session": session})

    # --- the connection ------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._send is not None

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def watched(self) -> list[str]:
        return [name for name, state in self._sessions.items() if state.watched]

    def connected(self, send: Callable[[str], bool]) -> None:
        """A hub listens: say hello and announce every open session."""
        self._send = send
        self._paused = False
        self._emit({"type": "hello", "version": FEED_VERSION, "gateway": self._name})
        for state in self._sessions.values():
            state.watched = state.stale = False
            self._emit(state.info.open_frame())

    def disconnected(self) -> None:
        self._send = None
        self._paused = False
        for state in self._sessions.values():
            state.watched = state.stale = False

    def pause(self) -> None:
        """The connection's buffer is full: drop output until L{resume}."""
        if not self._paused:
            self.stats["pauses"] += 1
        self._paused = True

    def resume(self) -> None:
        """The buffer drained: each watched session that lost output gets a gap and a snapshot."""
        self._paused = False
        for state in list(self._sessions.values()):
            if state.watched and state.stale and not self._paused:
                state.stale = False
                self.stats["gaps"] += 1
                self._emit({"type": "gap", "session": state.info.session})
                self._snapshot(state)

    def hub_frame(self, payload: bytes | str, is_binary: bool) -> None:
        """One frame from the hub; anything but a valid C{watch} is logged and ignored."""
        message = load_frame_object(payload, is_binary)
        why = None
        if isinstance(message, Ignored):
            why = message.why
        elif message.get("type") != "watch":
            why = f"unknown type {_brief(message.get('type'))}"
        else:
            wanted = message.get("sessions")
            if not (
                isinstance(wanted, list)
                and len(wanted) <= MAX_SESSIONS
                and all(isinstance(s, str) and _SESSION.fullmatch(s) for s in wanted)
            ):
                why = "watch without a list of session ids"
        if why is not None:
            self.stats["hub_junk"] += 1
            self.log.warn("ignored a frame from the live-feed hub: {why}", why=why)
            return
        self._watch(set(wanted))

    # --- internals -------------------------------------------------------------

    def _watch(self, wanted: set[str]) -> None:
        for name, state in list(self._sessions.items()):
            if name in wanted and not state.watched:
                state.watched = True
                state.stale = self._paused
                if not self._paused:
                    self._snapshot(state)
            elif name not in wanted and state.watched:
                state.watched = state.stale = False

    def _snapshot(self, state: _Session) -> None:
        try:
            screen = state.screen()
        except Exception:
            screen = None
        tail = bytes(state.tail[-TAIL_BYTES:]) if state.tail is not None else b""
        self._emit(snapshot_of(state.info, screen, tail))

    def _emit(self, frame: dict[str, Any]) -> None:
        send = self._send
        if send is None:
            return
        self.stats["frames"] += 1
        try:
            send(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
        except Exception:
            # Best-effort: whatever goes wrong here must not reach the
            # session channel that is reporting its output.
            self.stats["send_errors"] += 1
            self.log.failure("sending a {type} frame on the live feed", type=frame.get("type"))


# --- Twisted glue: the reconnecting WebSocket to a standalone hub ---------------------


@implementer(IPushProducer)
class _Backpressure:
    """The transport's producer: tells the feed when its buffer fills and drains."""

    def __init__(self, feed: LiveFeed) -> None:
        self._feed = feed

    def pauseProducing(self) -> None:
        self._feed.pause()

    def resumeProducing(self) -> None:
        self._feed.resume()

    def stopProducing(self) -> None:
        pass


class _FeedSession(WebSocketClientProtocol):
    # Pinned at info: autobahn logs the handshake (Authorization included) at debug.
    log = txaio.make_logger(level="info")

    client: LiveFeedClient
    was_opened = False

    def __init__(self) -> None:
        super().__init__()
        self.close_waiters: list[defer.Deferred] = []

    def onConnecting(self, transport_details) -> ConnectingRequest:
        return self.client._connecting_request()

    def onConnect(self, response) -> None:
        if response.protocol != FEED_SUBPROTOCOL:
            raise ValueError(f"the hub selected {response.protocol!r}, not {FEED_SUBPROTOCOL!r}")

    def onOpen(self) -> None:
        self.was_opened = True
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client.feed.hub_frame(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(self, code, reason)
        waiters, self.close_waiters = self.close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send_text(self, text: str) -> bool:
        return send_text(self, text)


class LiveFeedClient(MultiService):
    """
    Keeps a L{LiveFeed} connected to a hub's C{/live-feed}, reconnecting
    with the approval client's capped back-off (L{retry_delay}).

    @param url: C{ws://} or C{wss://} URL of the hub's C{/live-feed}.
    @param token: the gateway's bearer token for that hub (never logged).
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        url: str,
        feed: LiveFeed,
        token: str | None = None,
        *,
        retry_policy: Callable[[int], float] | None = None,
        tls_options=None,
    ) -> None:
        super().__init__()
        is_secure, host, port, resource, path = parse_approval_url(url)
        if token is not None and not all(33 <= ord(c) <= 126 for c in token):
            raise ValueError("the live-feed token must be printable ASCII without spaces")
        self.feed = feed
        self._token = token or None
        self._retry_policy = retry_policy or retry_delay
        self._host_header = f"[{host}]" if ":" in host else host
        self._port = port
        self._resource = resource
        self._failed_handshakes = 0
        self._session: _FeedSession | None = None
        scheme = "wss" if is_secure else "ws"
        self.description = f"live feed at {scheme}://{self._host_header}:{port}{path}"
        self._connector = reconnecting_connection(
            reactor,
            owner=self,
            protocol=_FeedSession,
            url=url,
            subprotocol=FEED_SUBPROTOCOL,
            max_message_bytes=MAX_HUB_MESSAGE,
            host=host,
            port=port,
            secure=is_secure,
            tls_options=tls_options,
            retry_policy=lambda attempt: self._retry_policy(attempt + self._failed_handshakes),
        )
        self._connector.setServiceParent(self)

    @property
    def connected(self) -> bool:
        return self._session is not None

    def stopService(self) -> defer.Deferred:
        """Say goodbye (a close handshake, bounded by autobahn's timeout), then stop."""
        session = self._session
        if session is None:
            return defer.maybeDeferred(MultiService.stopService, self)
        closed: defer.Deferred = defer.Deferred()
        session.close_waiters.append(closed)
        session.sendClose(code=1000, reason="the gateway is stopping")
        return closed.addCallback(lambda _: MultiService.stopService(self))

    def _connecting_request(self) -> ConnectingRequest:
        return connecting_request(
            host_header=self._host_header,
            port=self._port,
            resource=self._resource,
            token=self._token,
            subprotocol=FEED_SUBPROTOCOL,
        )

    def _opened(self, session: _FeedSession) -> None:
        self._session = session
        self._failed_handshakes = 0
        session.registerProducer(_Backpressure(self.feed), True)
        self.feed.connected(session.send_text)
        self.log.info(
            "connected to the {service}; {count} session(s) announced",
            service=self.description,
            count=len(self.feed.sessions()),
        )

    def _closed(self, session: _FeedSession, code: int | None, reason: str | None) -> None:
        if session is not self._session:
            if not session.was_opened:
                self._failed_handshakes += 1
                self.log.warn(
                    "could not open the {service}: {reason}",
                    service=self.description,
                    reason=reason,
                )
            return
        self._session = None
        self.feed.disconnected()
        self.log.warn(
            "lost the {service} ({code}: {reason}); sessions go on unwatched",
            service=self.description,
            code=code,
            reason=reason,
        )
