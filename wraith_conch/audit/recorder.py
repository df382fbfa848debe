"""
asciicast v2 recordings of PTY sessions.

L{SessionRecorder.open} creates C{<record_dir>/<session>.cast} (mode 0600,
never overwriting) and writes the header at once; L{SessionRecorder.output},
L{SessionRecorder.input} and L{SessionRecorder.resize} add C{"o"}, C{"i"} and
C{"r"} events.  Events are buffered and written when the buffer reaches
L{MAX_BUFFER} bytes, by a timer at most L{FLUSH_INTERVAL} seconds after the
first unwritten event, and on L{SessionRecorder.close}: a crash loses at most
about a second of the session, and memory stays bounded however fast the
target writes.  Bytes are decoded as UTF-8 incrementally (a character split
across two packets stays whole), invalid bytes become U+FFFD.

A failure to write does not touch the session: it is logged once and the
recording stops (L{SessionRecorder.failed} says why).  Play recordings with
C{asciinema play FILE} or C{wraith-replay FILE} (L{wraith_conch.replay}).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

FILE_MODE = 0o600
FLUSH_INTERVAL = 1.0
MAX_BUFFER = 64 * 1024
#: Larger writes become several events, so no one event is huge.
MAX_EVENT = 16 * 1024

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: Header keys C{meta} may set; any other key goes under C{"wraith"}.
_HEADER_KEYS = ("title", "command", "idle_time_limit")


class SessionRecorder:
    """One session's asciicast v2 file; make it with L{SessionRecorder.open}."""

    _log = Logger()

    def __init__(self, fd: int, path: str, clock: IReactorTime, start: float) -> None:
        self.path = path
        self._fd: int | None = fd
        self._clock = clock
        self._start = start
        self._last = 0.0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._timer: IDelayedCall | None = None
        self._output = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._input = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.failed: str | None = None

    @classmethod
    def open(
        cls,
        record_dir: str,
        session_id: str,
        width: int,
        height: int,
        clock: IReactorTime,
        meta: Mapping[str, object] | None = None,
    ) -> SessionRecorder:
        """
        Start recording to C{<record_dir>/<session_id>.cast}.

        @param meta: C{term} (the header's C{env.TERM}), C{title}, C{command},
            C{idle_time_limit}; other keys (C{user}, C{target}, ...) are kept
            in the header under C{"wraith"}.
        @raise ValueError: C{session_id} is not a plain file name.
        @raise OSError: the file cannot be created (it exists, the directory
            is missing, ...).
        """
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError(f"session id {session_id!r} cannot name a recording file")
        meta = dict(meta or {})
        start = clock.seconds()
        header: dict[str, object] = {
            "version": 2,
            "width": int(width),
            "height": int(height),
            "timestamp": int(start),
            "env": {"TERM": str(meta.pop("term", None) or "xterm")},
            "title": str(meta.pop("title", None) or session_id),
        }
        for key in _HEADER_KEYS[1:]:
            if key in meta:
                header[key] = meta.pop(key)
        if meta:
            header["wraith"] = {str(k): v for k, v in meta.items()}
        path = os.path.join(record_dir, session_id + ".cast")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            _write_all(fd, (json.dumps(header, default=str) + "\n").encode("utf-8"))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, clock, start)

    # -- events -----------------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """What the target wrote to the terminal."""
        self._feed("o", self._output, data)

    def input(self, data: bytes) -> None:
        """What the operator typed (includes anything typed without echo)."""
        self._feed("i", self._input, data)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{int(width)}x{int(height)}")

    def _feed(self, code: str, decoder, data: bytes) -> None:
        if self._fd is None:
            return
        for offset in range(0, len(data), MAX_EVENT):
            text = decoder.decode(data[offset : offset + MAX_EVENT])
            if text:
                self._event(code, text)

    def _event(self, code: str, text: str) -> None:
        if self._fd is None:
            return
        # Monotonic even if the wall clock steps back.
        self._last = max(self._last, round(self._clock.seconds() - self._start, 6))
        line = (json.dumps([self._last, code, text], ensure_ascii=False) + "\n").encode("utf-8")
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= MAX_BUFFER:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    # -- writing ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered event now."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._fd is None or not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        try:
            _write_all(self._fd, data)
        except OSError as e:
            self._give_up(e)

    def _give_up(self, error: OSError) -> None:
        self.failed = f"cannot write {self.path}: {error.strerror or error}"
        self._log.error("session recording stopped: {error}", error=self.failed)
        self._buffer = []
        self._buffered = 0
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Write what is left and close the file; later events are ignored."""
        if self._fd is None:
            return
        for code, decoder in (("o", self._output), ("i", self._input)):
            rest = decoder.decode(b"", final=True)
            if rest:
                self._event(code, rest)
        self.flush()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            self._log.warn("session recording {path} not synced: {error}", path=self.path, error=e)
        finally:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
