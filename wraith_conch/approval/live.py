"""
The last screenful of each live session, for reviewers to watch read-only.

Only an embedded hub has these: the gateway in the same process reports what
the target prints on each session channel (L{LiveScreens.output}); nothing
crosses the gateway protocol.  Sans-IO, bounded: at most L{MAX_SESSIONS}
screens, each a L{Screen} of at most the operator's terminal size.
"""

from __future__ import annotations

from wraith_conch.interception.screen import Screen

MAX_SESSIONS = 1000
"""Sessions tracked at most; output of further ones is not kept."""

DEFAULT_SIZE = (80, 24)
"""(columns, rows) for a channel without a PTY."""


class LiveScreens:
    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._screens: dict[str, Screen] = {}
        self._changed: set[str] = set()
        self._ended: dict[str, list[str]] = {}
        self._listed = False
        self.dropped = 0

    def output(self, session: str, data: bytes | None, size: tuple[int, int] | None) -> None:
        """Bytes the target printed on C{session}, or C{None} when the channel closed."""
        screen = self._screens.get(session)
        if data is None:
            if screen is not None:
                del self._screens[session]
                self._changed.discard(session)
                self._ended[session] = screen.last_screenful()
                self._listed = True
            return
        columns, rows = size or DEFAULT_SIZE
        if screen is None:
            if len(self._screens) >= self._max:
                self.dropped += 1
                return
            screen = self._screens[session] = Screen(columns, rows)
            self._ended.pop(session, None)
            self._listed = True
        elif (screen.columns, screen.lines) != (columns, rows):
            screen.resize(columns, rows)
        if size is None:
            # No PTY, so no terminal turned "\n" into "\r\n" on the way.
            data = data.replace(b"\n", b"\r\n")
        screen.feed(data)
        self._changed.add(session)

    def sessions(self) -> list[str]:
        """The live sessions, oldest first."""
        return list(self._screens)

    def lines(self, session: str) -> list[str] | None:
        """The screen of a live session, or C{None} if it is not live."""
        screen = self._screens.get(session)
        return None if screen is None else screen.last_screenful()

    def take_changes(self) -> tuple[set[str], dict[str, list[str]], bool]:
        """(sessions whose screen changed, ended sessions with their last screen, list changed)."""
        changes = (self._changed, self._ended, self._listed)
        self._changed, self._ended, self._listed = set(), {}, False
        return changes
