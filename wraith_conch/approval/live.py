"""
The hub's view of live sessions, for reviewers to watch read-only.

Gateways announce their sessions over the live feed (L{wraith_conch.approval.live_feed},
a wraith extension beside PROTOCOL.md; the embedded hub gets the same frames
in-process).  The hub lists them with who and where, and keeps a screen only
for a session somebody watches: it starts from the gateway's C{snapshot} and
follows the C{output} that comes after it.  Unwatched sessions cost the hub
one small record each.

Sans-IO: L{parse_feed_frame} reads the gateway's frames, L{LiveSessions}
holds the state; L{wraith_conch.approval.hub.Hub} does the talking.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import attrs

from wraith_conch.approval.protocol import Ignored, _brief, load_frame_object
from wraith_conch.interception.screen import MAX_COLUMNS, MAX_LINES, Screen

MAX_SESSIONS = 10_000
"""Sessions the hub lists at most (over all gateways); further ones are not kept."""

MAX_FIELD = 256
"""Longest user, client, target or kind the hub keeps (longer is cut)."""

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# --- frames from the gateway ------------------------------------------------------


@attrs.frozen
class FeedHello:
    gateway: str


@attrs.frozen
class FeedOpen:
    session: str
    info: dict[str, Any]
    pty: bool
    columns: int
    rows: int


@attrs.frozen
class FeedClose:
    session: str


@attrs.frozen
class FeedSnapshot:
    session: str
    columns: int
    rows: int
    lines: list[str]
    cursor: tuple[int, int]


@attrs.frozen
class FeedOutput:
    session: str
    data: bytes


@attrs.frozen
class FeedResize:
    session: str
    columns: int
    rows: int


@attrs.frozen
class FeedGap:
    session: str


FeedMessage = FeedHello | FeedOpen | FeedClose | FeedSnapshot | FeedOutput | FeedResize | FeedGap


def _size(message: dict[str, Any]) -> tuple[int, int] | None:
    columns, rows = message.get("columns"), message.get("rows")
    for value, limit in ((columns, MAX_COLUMNS), (rows, MAX_LINES)):
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit):
            return None
    return columns, rows  # type: ignore[return-value]


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return _CONTROL.sub("?", value[:MAX_FIELD])


def parse_feed_frame(payload: bytes | str, is_binary: bool) -> FeedMessage | Ignored:
    """Read one frame from a gateway's live feed; anything malformed is L{Ignored}."""
    message = load_frame_object(payload, is_binary)
    if isinstance(message, Ignored):
        return message
    kind = message.get("type")
    if kind == "hello":
        name = message.get("gateway")
        if message.get("version") != 1 or not (isinstance(name, str) and _ID.fullmatch(name)):
            return Ignored("hello without version 1 and a usable gateway name")
        return FeedHello(name)
    session = message.get("session")
    if kind not in ("open", "close", "snapshot", "output", "resize", "gap"):
        return Ignored(f"unknown type {_brief(kind)}")
    if not (isinstance(session, str) and _ID.fullmatch(session)):
        return Ignored(f"{kind} without a usable session id")
    if kind == "close":
        return FeedClose(session)
    if kind == "gap":
        return FeedGap(session)
    if kind == "output":
        data = message.get("data")
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            return Ignored("output without base64 data")
        return FeedOutput(session, raw)
    size = _size(message)
    if size is None:
        return Ignored(f"{kind} without a usable terminal size")
    if kind == "resize":
        return FeedResize(session, *size)
    if kind == "open":
        info = {}
        for field in ("user", "client", "target", "kind"):
            value = _text(message.get(field))
            if value is None:
                return Ignored(f"open without a usable {field}")
            info[field] = value
        pty = message.get("pty")
        if not isinstance(pty, bool):
            return Ignored("open without a usable pty")
        return FeedOpen(session, info, pty, *size)
    lines, cursor = message.get("lines"), message.get("cursor")
    if not (
        isinstance(lines, list)
        and len(lines) <= size[1]
        and all(isinstance(line, str) and len(line) <= 4 * size[0] for line in lines)
    ):
        return Ignored("snapshot without usable lines")
    if not (
        isinstance(cursor, list)
        and len(cursor) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in cursor)
    ):
        return Ignored("snapshot without a usable cursor")
    return FeedSnapshot(session, *size, lines, (cursor[0], cursor[1]))


# --- the state ----------------------------------------------------------------------


@attrs.define
class _Live:
    view: dict[str, Any]
    source: Any
    pty: bool
    size: tuple[int, int]
    screen: Screen | None = None


def _seeded(snapshot: FeedSnapshot) -> Screen:
    """A screen showing the snapshot's lines, cursor where the gateway's was."""
    screen = Screen(snapshot.columns, snapshot.rows)
    text = "\r\n".join(_CONTROL.sub("?", line) for line in snapshot.lines)
    row, column = snapshot.cursor
    screen.feed(text.encode("utf-8") + f"\x1b[{row + 1};{column + 1}H".encode())
    return screen


class LiveSessions:
    """
    Announced sessions (from any number of sources: feed connections), and a
    screen for each one that is watched (L{watch}/L{unwatch}).

    @ivar dropped: announcements not kept (the hub was full, or the id was
        another source's).
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: dict[str, _Live] = {}
        self._changed: set[str] = set()
        self._ended: dict[str, list[str]] = {}
        self._listed = False
        self.dropped = 0

    # --- reading ----------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        """The live sessions (who, where, since when), oldest first."""
        return [dict(live.view) for live in self._sessions.values()]

    def ids(self) -> list[str]:
        return list(self._sessions)

    def lines(self, session: str) -> list[str] | None:
        """The screen of a live session (C{[]} before its snapshot), or C{None} if not live."""
        live = self._sessions.get(session)
        if live is None:
            return None
        return [] if live.screen is None else live.screen.last_screenful()

    def source_of(self, session: str) -> Any:
        live = self._sessions.get(session)
        return None if live is None else live.source

    def of_source(self, source: Any) -> list[str]:
        return [name for name, live in self._sessions.items() if live.source is source]

    def has_screen(self, session: str) -> bool:
        live = self._sessions.get(session)
        return live is not None and live.screen is not None

    def take_changes(self) -> tuple[set[str], dict[str, list[str]], bool]:
        """(sessions whose screen changed, ended sessions with their last screen, list changed)."""
        changes = (self._changed, self._ended, self._listed)
        self._changed, self._ended, self._listed = set(), {}, False
        return changes

    # --- changes ----------------------------------------------------------------

    def open(self, source: Any, gateway: str, message: FeedOpen, started: str) -> str | None:
        """Announce a session; returns why not, or C{None}."""
        existing = self._sessions.get(message.session)
        if existing is not None:
            if existing.source is not source:
                self.dropped += 1
                return "the session id is another gateway's"
            return None
        if len(self._sessions) >= self._max:
            self.dropped += 1
            return "the hub lists too many sessions"
        view = {
            "session": message.session,
            "gateway": gateway,
            **message.info,
            "pty": message.pty,
            "columns": message.columns,
            "rows": message.rows,
            "started": started,
        }
        self._sessions[message.session] = _Live(
            view, source, message.pty, (message.columns, message.rows)
        )
        self._ended.pop(message.session, None)
        self._listed = True
        return None

    def close(self, source: Any, session: str) -> None:
        live = self._own(source, session)
        if live is None:
            return
        del self._sessions[session]
        self._changed.discard(session)
        self._ended[session] = [] if live.screen is None else live.screen.last_screenful()
        self._listed = True

    def source_gone(self, source: Any) -> None:
        """A feed connection closed: its sessions are no longer live (to the hub)."""
        for session in self.of_source(source):
            self.close(source, session)

    def snapshot(self, source: Any, message: FeedSnapshot) -> None:
        live = self._own(source, message.session)
        if live is None:
            return
        live.size = (message.columns, message.rows)
        live.screen = _seeded(message)
        self._changed.add(message.session)

    def output(self, source: Any, session: str, data: bytes) -> None:
        live = self._own(source, session)
        if live is None or live.screen is None:
            return  # not watched (or no snapshot yet): nothing to follow
        if not live.pty:
            # No PTY, so no terminal turned "\n" into "\r\n" on the way.
            data = data.replace(b"\n", b"\r\n")
        live.screen.feed(data)
        self._changed.add(session)

    def resize(self, source: Any, session: str, columns: int, rows: int) -> None:
        live = self._own(source, session)
        if live is None:
            return
        live.size = (columns, rows)
        live.view.update(columns=columns, rows=rows)
        if live.screen is not None:
            live.screen.resize(columns, rows)
            self._changed.add(session)

    def unwatch(self, session: str) -> None:
        """Nobody watches any more: drop the screen (the next watch starts from a snapshot)."""
        live = self._sessions.get(session)
        if live is not None:
            live.screen = None
        self._changed.discard(session)

    def _own(self, source: Any, session: str) -> _Live | None:
        live = self._sessions.get(session)
        return live if live is not None and live.source is source else None
