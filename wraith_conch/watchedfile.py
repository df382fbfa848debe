"""
A file the gateway reads at start-up and again whenever it changes.

sshd reads C{AuthorizedKeysFile}, C{TrustedUserCAKeys} and C{RevokedKeys} at
every authentication, so removing a key or a CA takes effect at the next
login.  Operators expect the same of a gateway: a key deleted from the file
must stop working without a restart that would cut every session.
L{WatchedFile} keeps the parsed contents and compares the file's inode,
size and modification time at each use (one C{stat}); only a change re-reads
and re-parses it.

Loading at start-up raises, so the caller can refuse to start with a clear
error.  A file that becomes unreadable or malformed later does not keep the
old contents: it gives the caller's C{unusable} value (no keys, no CAs,
everything revoked) until it is fixed, and says so in the log, because the
change may have been the removal of a compromised key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.logger import Logger

__all__ = ["WatchedFile"]

T = TypeVar("T")

_Stamp = tuple[int, int, int, int]


class WatchedFile(Generic[T]):
    """
    @param path: the file.
    @param load: reads and parses it; raises one of C{errors} when it cannot.
    @param flag: the command-line flag, for the log lines (C{"--revoked-keys"}).
    @param errors: what C{load} raises for a file that cannot be used.
    @param unusable: what L{current} gives while the file cannot be used.
    @param consequence: what that means, for the log (C{"refusing every key"}).
    @param on_reload: told of each successful re-read (start-up excluded), to
        log warnings about its contents.

    @raise: the C{load} error, at start-up.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        load: Callable[[str], T],
        *,
        flag: str,
        errors: tuple[type[Exception], ...],
        unusable: T,
        consequence: str,
        on_reload: Callable[[T], None] | None = None,
    ) -> None:
        self.path = path
        self._load = load
        self._flag = flag
        self._errors = errors
        self._unusable = unusable
        self._consequence = consequence
        self._on_reload = on_reload or (lambda value: None)
        # The stamp first: a change between the stat and the read is seen
        # at the next use and only costs one more read.
        self._stamp = self._stat()
        self._value: T = load(path)
        self.usable = True

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> T:
        """The contents in force: re-read first if the file changed."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reload()
        return self._value

    def _reload(self) -> None:
        try:
            value = self._load(self.path)
        except self._errors as e:
            self._value, self.usable = self._unusable, False
            self._log.error(
                "{flag} unusable, {consequence} until fixed: {error}",
                flag=self._flag,
                consequence=self._consequence,
                error=str(e),
            )
            return
        self._value, self.usable = value, True
        self._log.info("reloaded {flag} {path}", flag=self._flag, path=self.path)
        self._on_reload(value)
