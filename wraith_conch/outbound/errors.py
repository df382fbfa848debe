"""
Why an outbound connection failed, as typed errors whose text never names the
destination.

ADR-006: a tunnel destination must never appear in a log line or in an error
string the gateway might log.  Every error here therefore carries only a fixed
description (and, for proxies, a status or reply code); nothing the SSH client
asked for and nothing the proxy said in free text.  L{open_failure_reason}
turns any failure of an outbound connection, typed or not, into the reason
code and description of an SSH C{CHANNEL_OPEN_FAILURE}.
"""

from __future__ import annotations

import errno
from http import HTTPStatus

from twisted.conch.ssh.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
)
from twisted.internet import defer, error
from twisted.python.failure import Failure

__all__ = [
    "OPEN_ADMINISTRATIVELY_PROHIBITED",
    "OPEN_CONNECT_FAILED",
    "ConnectTimeout",
    "ConnectionFailed",
    "ConnectionRefused",
    "DestinationNotAllowed",
    "HostUnreachable",
    "InvalidDestination",
    "NameNotFound",
    "NetworkUnreachable",
    "OutboundError",
    "ProxyError",
    "ProxyProtocolError",
    "ProxyRefused",
    "ProxyTimeout",
    "ProxyUnavailable",
    "SocksAddressTypeNotSupported",
    "SocksAuthenticationRequired",
    "SocksCommandNotSupported",
    "SocksConnectionRefused",
    "SocksError",
    "SocksGeneralFailure",
    "SocksHostUnreachable",
    "SocksNetworkUnreachable",
    "SocksNotAllowed",
    "SocksTTLExpired",
    "TorUnavailable",
    "open_failure_reason",
    "outbound_error",
    "socks_error",
]


class OutboundError(Exception):
    """
    An outbound connection failed.  C{str()} is L{description}: a short,
    fixed text that never names the destination.

    @cvar open_failure_code: the SSH channel-open failure reason.
    """

    open_failure_code: int = OPEN_CONNECT_FAILED
    default_description: str = "connection failed"

    def __init__(self, description: str | None = None) -> None:
        self.description = description or self.default_description
        super().__init__(self.description)

    def __str__(self) -> str:
        return self.description


class ConnectionFailed(OutboundError):
    """Any other failure to connect."""


class InvalidDestination(OutboundError, ValueError):
    """The requested host or port cannot be connected to (empty, malformed, port 0...)."""

    default_description = "invalid destination"


class DestinationNotAllowed(OutboundError):
    """Policy forbids the destination (for the destination policy to raise or subclass)."""

    open_failure_code = OPEN_ADMINISTRATIVELY_PROHIBITED
    default_description = "destination not allowed"


class ConnectionRefused(OutboundError):
    default_description = "connection refused"


class HostUnreachable(OutboundError):
    default_description = "host unreachable"


class NetworkUnreachable(OutboundError):
    default_description = "network unreachable"


class NameNotFound(OutboundError):
    default_description = "name not found"


class ConnectTimeout(OutboundError):
    default_description = "connection timed out"


class ProxyError(OutboundError):
    """The proxy (SOCKS5, HTTP CONNECT or Tor) failed or refused the connection."""

    default_description = "proxy failure"


class ProxyUnavailable(ProxyError):
    """The proxy itself could not be reached."""

    default_description = "proxy unreachable"


class ProxyTimeout(ProxyError, ConnectTimeout):
    """The proxy did not finish its handshake in time."""

    default_description = "timed out waiting for the proxy"


class ProxyProtocolError(ProxyError):
    """The proxy answered with something that is not its protocol, or closed mid-handshake."""

    default_description = "invalid response from the proxy"


class ProxyRefused(ProxyError):
    """
    An HTTP proxy answered C{CONNECT} with a status other than 2xx.

    @ivar status: the status code (407, 502, ...).
    @ivar reason: the proxy's reason phrase, for debugging only: it is free
        text from the proxy (which may repeat the destination), so it is
        never part of C{str()}.
    """

    def __init__(self, status: int, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        if status == HTTPStatus.FORBIDDEN:
            self.open_failure_code = OPEN_ADMINISTRATIVELY_PROHIBITED
            text = f"proxy does not allow the connection (HTTP {status})"
        else:
            text = f"proxy refused the connection (HTTP {status})"
        super().__init__(text)

    def __reduce__(self):  # pragma: no cover - pickling keeps the fields
        return (type(self), (self.status, self.reason))


class TorUnavailable(ProxyError):
    """Tor could not be reached, launched or bootstrapped."""

    default_description = "Tor is not available"


class SocksError(ProxyError):
    """
    A SOCKS5 proxy replied to C{CONNECT} with a failure code.

    @ivar code: the SOCKS5 reply code (RFC 1928 section 6), or L{None} for a
        failure outside the reply (such as refused authentication).
    """

    code: int | None = None
    default_description = "SOCKS proxy failure"

    def __init__(self, description: str | None = None, code: int | None = None) -> None:
        if code is not None:
            self.code = code
        if description is None and self.code is not None and type(self) is SocksError:
            description = f"SOCKS proxy failure (reply code {self.code:#04x})"
        super().__init__(description)


class SocksAuthenticationRequired(SocksError):
    """The SOCKS5 proxy accepts none of the offered methods (we offer no authentication)."""

    default_description = "SOCKS proxy requires authentication"


class SocksGeneralFailure(SocksError):
    code = 0x01
    default_description = "SOCKS proxy: general failure"


class SocksNotAllowed(SocksError, DestinationNotAllowed):
    code = 0x02
    open_failure_code = OPEN_ADMINISTRATIVELY_PROHIBITED
    default_description = "SOCKS proxy: connection not allowed by ruleset"


class SocksNetworkUnreachable(SocksError, NetworkUnreachable):
    code = 0x03
    default_description = "SOCKS proxy: network unreachable"


class SocksHostUnreachable(SocksError, HostUnreachable):
    code = 0x04
    default_description = "SOCKS proxy: host unreachable"


class SocksConnectionRefused(SocksError, ConnectionRefused):
    code = 0x05
    default_description = "SOCKS proxy: connection refused"


class SocksTTLExpired(SocksError):
    code = 0x06
    default_description = "SOCKS proxy: TTL expired"


class SocksCommandNotSupported(SocksError):
    code = 0x07
    default_description = "SOCKS proxy: command not supported"


class SocksAddressTypeNotSupported(SocksError):
    code = 0x08
    default_description = "SOCKS proxy: address type not supported"


_SOCKS_REPLY_ERRORS: dict[int, type[SocksError]] = {
    cls.code: cls  # type: ignore[misc]
    for cls in (
        SocksGeneralFailure,
        SocksNotAllowed,
        SocksNetworkUnreachable,
        SocksHostUnreachable,
        SocksConnectionRefused,
        SocksTTLExpired,
        SocksCommandNotSupported,
        SocksAddressTypeNotSupported,
    )
}


def socks_error(code: int) -> SocksError:
    """The typed error for SOCKS5 reply code C{code} (a plain L{SocksError} if unknown)."""
    cls = _SOCKS_REPLY_ERRORS.get(code)
    if cls is None:
        return SocksError(code=code)
    return cls()


def _from_txtorcon(exc: BaseException) -> SocksError | None:
    """txtorcon's own SOCKS errors (should a txtorcon endpoint be used) by their code."""
    try:
        from txtorcon.socks import SocksError as TxtorconSocksError
    except ImportError:  # pragma: no cover - txtorcon is a dependency
        return None
    if not isinstance(exc, TxtorconSocksError):
        return None
    if isinstance(exc.code, int):
        return socks_error(exc.code)
    return SocksError()


def outbound_error(reason: Failure | BaseException, *, via_proxy: bool = False) -> OutboundError:
    """
    Classify any failure of an outbound connection as an L{OutboundError}.

    The original exception is dropped, not chained: its text may name the
    destination (Twisted's L{error.DNSLookupError} does).  With C{via_proxy},
    a connection-level failure is the proxy's (the connection that failed was
    the one to the proxy), and becomes L{ProxyUnavailable}.
    """
    exc = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exc, OutboundError):
        return exc
    typed = _from_txtorcon(exc)
    if typed is not None:
        return typed
    if isinstance(exc, defer.CancelledError | error.ConnectingCancelledError):
        result: OutboundError = ConnectionFailed("connection attempt cancelled")
    elif isinstance(exc, error.DNSLookupError | error.UnknownHostError):
        result = NameNotFound()
    elif isinstance(exc, error.ConnectionRefusedError):
        result = ConnectionRefused()
    elif isinstance(exc, error.TCPTimedOutError | error.TimeoutError | defer.TimeoutError):
        result = ConnectTimeout()
    elif isinstance(exc, error.NoRouteError):
        result = NetworkUnreachable()
    elif isinstance(exc, error.ConnectError):
        number = exc.osError if isinstance(exc.osError, int) else None
        result = {
            errno.EHOSTUNREACH: HostUnreachable,
            errno.ENETUNREACH: NetworkUnreachable,
            errno.ECONNREFUSED: ConnectionRefused,
            errno.ETIMEDOUT: ConnectTimeout,
        }.get(number, ConnectionFailed)()  # type: ignore[arg-type]
    elif isinstance(exc, OSError):
        result = {
            errno.EHOSTUNREACH: HostUnreachable,
            errno.ENETUNREACH: NetworkUnreachable,
            errno.ECONNREFUSED: ConnectionRefused,
            errno.ETIMEDOUT: ConnectTimeout,
        }.get(exc.errno, ConnectionFailed)()  # type: ignore[arg-type]
    else:
        result = ConnectionFailed()
    if via_proxy:
        if isinstance(result, ConnectTimeout):
            return ProxyUnavailable("proxy unreachable (timed out)")
        return ProxyUnavailable(f"proxy unreachable ({result.description})")
    return result


def open_failure_reason(reason: Failure | BaseException) -> tuple[int, str]:
    """
    The SSH channel-open failure for a failed outbound connection:
    C{(code, description)} with conch's C{OPEN_CONNECT_FAILED} (2) or
    C{OPEN_ADMINISTRATIVELY_PROHIBITED} (1), and a description that never
    names the destination, e.g. C{(2, "connection refused")} or
    C{(2, "proxy refused the connection (HTTP 407)")}.
    """
    typed = outbound_error(reason)
    return typed.open_failure_code, typed.description
