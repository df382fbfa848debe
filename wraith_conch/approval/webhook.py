"""
Webhook notifications: the hub POSTs each request that needs review to a URL.

The body is one JSON object, C{{"type": "request", ...}} with the fields of
the reviewer protocol's C{R} (see L{wraith_conch.approval.hub}).  A webhook
only tells people that something waits; it never decides, and a slow or
failing endpoint never holds up a request (failures are logged).  Credentials
in the URL (C{https://user:pass@host/...}) are sent as HTTP Basic auth; logs
name only the scheme, host and port, since a webhook's path often is its
secret.
"""

from __future__ import annotations

import json
from base64 import b64encode
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
MAX_IN_FLIGHT = 50
"""Notifications under way at most; more are dropped (and logged)."""


def check_webhook_url(url: str) -> str:
    """C{url} if it is a usable http(s) URL, else L{ValueError} (never echoing it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("give an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if not all(33 <= ord(c) <= 126 for c in url):
        raise ValueError("the URL must be printable ASCII without spaces")
    return url


@implementer(IBodyProducer)
class _Bytes:
    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Discard(protocol.Protocol):
    """Reads a response body into nothing (it is not used), then fires C{done}."""

    def __init__(self, done: defer.Deferred) -> None:
        self._done = done

    def connectionLost(self, reason=None):
        self._done.callback(None)


class Webhook:
    """POSTs C{{"type": "request", ...}} to one URL; L{notify} never raises nor waits."""

    log = Logger()

    def __init__(self, reactor, url: str, *, agent=None) -> None:
        check_webhook_url(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        self._url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.where = f"{parts.scheme}://{netloc}"
        """The URL without path, query or credentials: safe to log."""
        self._headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"wraith-hub"],
        }
        if parts.username is not None:
            credentials = f"{parts.username}:{parts.password or ''}".encode()
            self._headers[b"Authorization"] = [b"Basic " + b64encode(credentials)]
        self._reactor = reactor
        self._agent = agent or Agent(reactor, connectTimeout=CONNECT_TIMEOUT)
        self._in_flight: set[defer.Deferred] = set()

    def notify(self, request: dict[str, Any]) -> defer.Deferred | None:
        """Send one notification; returns its Deferred (always succeeds) or C{None} if dropped."""
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self.log.warn(
                "webhook {where}: too many notifications under way; dropped one for {request_id}",
                where=self.where,
                request_id=request.get("id"),
            )
            return None
        body = json.dumps({**request, "type": "request"}, ensure_ascii=True).encode()
        d = self._agent.request(
            b"POST", self._url.encode("ascii"), Headers(self._headers), _Bytes(body)
        )
        d.addCallback(self._got_response)
        d.addTimeout(REQUEST_TIMEOUT, self._reactor)
        d.addErrback(self._failed, request.get("id"))
        self._in_flight.add(d)
        d.addBoth(self._done, d)
        return d

    def _got_response(self, response):
        status = response.code
        if not 200 <= status < 300:
            self.log.warn(
                "webhook {where}: answered HTTP {status}", where=self.where, status=status
            )
        done: defer.Deferred = defer.Deferred()
        response.deliverBody(_Discard(done))
        return done.addBoth(lambda _: status)

    def _done(self, result, d):
        self._in_flight.discard(d)
        return result

    def _failed(self, failure, request_id):
        self.log.warn(
            "webhook {where}: notification for {request_id} failed: {error}",
            where=self.where,
            request_id=request_id,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        return None

    def stop(self) -> None:
        """Give up on notifications still under way."""
        for d in list(self._in_flight):
            d.cancel()
