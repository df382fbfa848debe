"""
An HTTP CONNECT client endpoint: tunnel through an HTTP proxy.

Twisted has none.  L{HTTPConnectEndpoint} wraps any inner endpoint (the
connection to the proxy), sends::

    CONNECT host:port HTTP/1.1
    Host: host:port

and reads the proxy's answer with L{ConnectResponseParser}, a sans-IO parser:
status line, headers (obsolete line folding, LF or CRLF line ends, interim
1xx answers skipped), at most L{MAX_HEADER_BYTES} bytes in all.  A 2xx answer
opens the tunnel (RFC 9110 section 9.3.6: a 2xx answer to CONNECT has no
body), and every byte after the answer's header goes to the application's
protocol: the server behind the proxy may speak first, in the same packet as
the proxy's C{200}.
"""

from __future__ import annotations

import re

import attrs
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from wraith_conch.outbound._destination import Destination, check_destination
from wraith_conch.outbound._tunnel import Step, TunnelEndpoint
from wraith_conch.outbound.errors import (
    InvalidDestination,
    ProxyProtocolError,
    ProxyRefused,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "ConnectResponse",
    "ConnectResponseParser",
    "HTTPConnectEndpoint",
    "connect_request",
]

#: The most bytes of answer header (all interim answers included) read from the proxy.
MAX_HEADER_BYTES = 16 * 1024
#: The most interim (1xx) answers skipped before the final one.
MAX_INTERIM_RESPONSES = 8
DEFAULT_TIMEOUT = 30.0

_STATUS_LINE = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: (.*))?$")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen
class ConnectResponse:
    """The proxy's final answer: status, reason phrase, headers (lower-cased names)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The value of the last header called C{name} (any case), or None."""
        name = name.lower()
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


def connect_request(destination: Destination) -> bytes:
    """The C{CONNECT} request for C{destination}."""
    authority = destination.authority.encode("ascii")
    return b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"


class ConnectResponseParser:
    """
    Sans-IO parser of the answer to C{CONNECT}.

    L{feed} bytes as they arrive: it returns None while the answer's header
    is incomplete, then C{(response, leftover)} where C{leftover} is every byte
    after the header.  It raises L{ProxyProtocolError} for anything that is not
    an HTTP/1.x answer or that exceeds L{MAX_HEADER_BYTES}.  It does not judge
    the status.
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._max = max_header_bytes
        self._buffer = b""
        self._consumed = 0  # bytes of header (interim answers included) parsed so far
        self._interim = 0
        self._done = False

    def feed(self, data: bytes) -> tuple[ConnectResponse, bytes] | None:
        if self._done:
            raise RuntimeError("the answer was already parsed")
        self._buffer += data
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            prefix = self._buffer[:5]
            if prefix != b"HTTP/"[: len(prefix)]:
                raise ProxyProtocolError("proxy sent an invalid status line")
            end = _header_end(self._buffer, self._max - self._consumed)
            if end is None:
                if self._consumed + len(self._buffer) > self._max:
                    raise ProxyProtocolError("proxy answer header too large")
                return None
            header, self._buffer = self._buffer[:end], self._buffer[end:]
            self._consumed += end
            response = _parse_header(header)
            if 100 <= response.status < 200 and response.status != 101:
                self._interim += 1
                if self._interim > MAX_INTERIM_RESPONSES:
                    break
                continue
            self._done = True
            leftover, self._buffer = self._buffer, b""
            return response, leftover
        raise ProxyProtocolError("proxy sent too many interim answers")


def _header_end(buffer: bytes, limit: int) -> int | None:
    """
    The offset just after the empty line that ends the header in C{buffer}
    (lines end in LF, optionally preceded by CR), or None if there is none
    within the first C{limit} bytes.
    """
    start = 0
    window = buffer[: max(limit, 0)]
    while True:
        newline = window.find(b"\n", start)
        if newline == -1:
            return None
        line = window[start:newline]
        if line in (b"", b"\r"):
            return newline + 1
        start = newline + 1


def _parse_header(header: bytes) -> ConnectResponse:
    lines = [line[:-1] if line.endswith(b"\r") else line for line in header.split(b"\n")]
    # The header ends with LF + empty line: drop the two trailing empties.
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ProxyProtocolError("proxy sent an invalid status line")
    match = _STATUS_LINE.match(lines[0])
    if match is None or match.group(1) != b"1":
        raise ProxyProtocolError("proxy sent an invalid status line")
    status = int(match.group(3))
    if not 100 <= status <= 599:
        raise ProxyProtocolError("proxy sent an invalid status code")
    reason = _CONTROL.sub("", (match.group(4) or b"").decode("latin-1")).strip()
    headers: list[list[bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 section 5.2): continues the previous value.
            if not headers:
                raise ProxyProtocolError("proxy sent a folded line before any header")
            headers[-1][1] = headers[-1][1] + b" " + line.strip(b" \t")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ProxyProtocolError("proxy sent an invalid header line")
        headers.append([name, value.strip(b" \t")])
    return ConnectResponse(
        status=status,
        reason=reason,
        headers=tuple(
            (name.decode("ascii").lower(), _CONTROL.sub("", value.decode("latin-1")))
            for name, value in headers
        ),
    )


class _HTTPConnectNegotiator:
    """The sans-IO CONNECT handshake: one request, one answer."""

    log = Logger()

    def __init__(self, destination: Destination, max_header_bytes: int) -> None:
        self._request = connect_request(destination)
        self._parser = ConnectResponseParser(max_header_bytes)

    def start(self) -> bytes:
        return self._request

    def feed(self, data: bytes) -> Step:
        parsed = self._parser.feed(data)
        if parsed is None:
            return Step()
        response, leftover = parsed
        if not 200 <= response.status < 300:
            self.log.debug("HTTP CONNECT proxy refused: status {status}", status=response.status)
            raise ProxyRefused(response.status, response.reason)
        return Step(done=True, leftover=leftover)


class HTTPConnectEndpoint(TunnelEndpoint):
    """
    An C{IStreamClientEndpoint} that reaches C{host}:C{port} through an HTTP
    proxy reached with C{inner_endpoint} (for example a C{HostnameEndpoint}
    to the proxy).

    C{connect} fails with L{ProxyRefused} for a non-2xx answer,
    L{ProxyProtocolError} for one that is not HTTP (or a proxy that closes
    mid-answer), L{ProxyTimeout} when the answer takes more than C{timeout}
    seconds (connecting to the proxy included), L{ProxyUnavailable} when the
    proxy cannot be reached.  A host that cannot be put in a request line
    (control characters, spaces...) raises L{InvalidDestination} (a
    L{ValueError}) here.
    """

    log = Logger()

    def __init__(
        self,
        inner_endpoint: IStreamClientEndpoint,
        host: str | bytes,
        port: int,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        reactor: IReactorTime,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        super().__init__(inner_endpoint, timeout=timeout, reactor=reactor)
        try:
            self._destination = check_destination(host, port)
        except ValueError as e:
            raise InvalidDestination(str(e)) from None
        self._max_header_bytes = max_header_bytes

    def _negotiator(self) -> _HTTPConnectNegotiator:
        return _HTTPConnectNegotiator(self._destination, self._max_header_bytes)
