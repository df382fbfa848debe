"""Log observers: twistd's text format, or one JSON object per line."""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer


def json_observer_for_twistd(logfile: str | None, nodaemon: bool) -> ILogObserver:
    """
    The JSON observer, writing where twistd would have written text:
    C{--logfile}, stdout for C{-} or for C{-n} without a log file, else
    C{twistd.log}.
    """
    if logfile == "-" or (nodaemon and not logfile):
        return json_observer(sys.stdout)
    return json_observer(LogFile.fromFullPath(logfile or "twistd.log"))


@implementer(ILogObserver)
def silent_observer(event: dict) -> None:
    """Drops events: twistd's own observer while the JSON one does the work."""


def silent_observer_factory() -> ILogObserver:
    """For twistd's C{--logger}, which takes the dotted name of a factory."""
    return silent_observer


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """
    One JSON object per event, for log shippers: every named field of an
    event (C{remote_addr}, C{user}, C{key_fingerprint}, C{result}, ...)
    becomes a key.
    """
    return jsonFileLogObserver(out or sys.stdout, recordSeparator="")
