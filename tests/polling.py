"""Bounded polling on the real reactor, for tests that wait for a condition."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> defer.Deferred:
    """Poll C{predicate} on the real reactor; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if predicate():
            loop.stop()
        elif reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    loop = LoopingCall(check)
    return loop.start(0.01, now=True)
