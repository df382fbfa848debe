"""
A SOCKS5 client endpoint (RFC 1928, C{CONNECT}, no authentication).

txtorcon's C{TorSocksEndpoint} speaks plain SOCKS5 to any server, but (as of
txtorcon 26.6) it packs an IPv6 literal into 4 bytes, and it holds back the
bytes that arrive in the same read as the proxy's reply until more data comes
(so the banner of a server that speaks first is not delivered).  This small
client does both right, maps every reply code to a typed error, and sends
names as names (the proxy resolves them; nothing is looked up here).
L{Socks5Negotiator} is the sans-IO handshake.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from wraith_conch.outbound._destination import Destination, check_destination
from wraith_conch.outbound._tunnel import Step, TunnelEndpoint
from wraith_conch.outbound.errors import (
    InvalidDestination,
    ProxyProtocolError,
    SocksAuthenticationRequired,
    socks_error,
)

__all__ = ["Socks5Endpoint", "Socks5Negotiator", "connect_request"]

DEFAULT_TIMEOUT = 30.0

VERSION = 0x05
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_NAME = 0x03
ATYP_IPV6 = 0x04
REPLY_SUCCEEDED = 0x00

_ADDRESS_LENGTH = {ATYP_IPV4: 4, ATYP_IPV6: 16}


def connect_request(destination: Destination) -> bytes:
    """The SOCKS5 C{CONNECT} request for C{destination}."""
    if destination.kind == "ipv4":
        address = bytes([ATYP_IPV4]) + ipaddress.IPv4Address(destination.host).packed
    elif destination.kind == "ipv6":
        address = bytes([ATYP_IPV6]) + ipaddress.IPv6Address(destination.host).packed
    else:
        name = destination.host_bytes
        if len(name) > 255:
            raise InvalidDestination("destination host name is too long for SOCKS5")
        address = bytes([ATYP_NAME, len(name)]) + name
    return bytes([VERSION, CMD_CONNECT, 0x00]) + address + struct.pack("!H", destination.port)


class Socks5Negotiator:
    """
    Sans-IO SOCKS5 C{CONNECT}: L{start} gives the greeting, L{feed} the
    proxy's bytes; it returns the request to send after the method choice,
    then C{done} with the bytes after the reply.  Failures raise typed
    errors: L{SocksAuthenticationRequired}, a L{SocksError} subclass per
    reply code, L{ProxyProtocolError} for anything else.
    """

    log = Logger()

    def __init__(self, destination: Destination) -> None:
        self._request = connect_request(destination)
        self._buffer = b""
        self._state = "method"

    def start(self) -> bytes:
        return bytes([VERSION, 1, METHOD_NO_AUTH])

    def feed(self, data: bytes) -> Step:
        self._buffer += data
        if self._state == "method":
            if len(self._buffer) < 2:
                return Step()
            version, method = self._buffer[0], self._buffer[1]
            self._buffer = self._buffer[2:]
            if version != VERSION:
                raise ProxyProtocolError("proxy is not a SOCKS5 proxy")
            if method == METHOD_NONE_ACCEPTABLE:
                raise SocksAuthenticationRequired()
            if method != METHOD_NO_AUTH:
                raise ProxyProtocolError("SOCKS5 proxy chose a method that was not offered")
            self._state = "reply"
            step = self._reply()
            return Step(send=self._request, done=step.done, leftover=step.leftover)
        if self._state == "reply":
            return self._reply()
        raise RuntimeError("the SOCKS5 handshake is over")

    def _reply(self) -> Step:
        buffer = self._buffer
        if len(buffer) < 2:
            return Step()
        if buffer[0] != VERSION:
            raise ProxyProtocolError("SOCKS5 proxy sent an invalid reply")
        if buffer[1] != REPLY_SUCCEEDED:
            self.log.debug("SOCKS5 proxy refused: reply code {code}", code=buffer[1])
            raise socks_error(buffer[1])
        if len(buffer) < 5:
            return Step()
        atyp = buffer[3]
        if atyp == ATYP_NAME:
            # VER REP RSV ATYP LEN NAME PORT
            length = 4 + 1 + buffer[4] + 2
        elif atyp in _ADDRESS_LENGTH:
            length = 4 + _ADDRESS_LENGTH[atyp] + 2
        else:
            raise ProxyProtocolError("SOCKS5 proxy sent an invalid reply")
        if len(buffer) < length:
            return Step()
        self._state = "done"
        self._buffer = b""
        return Step(done=True, leftover=buffer[length:])


class Socks5Endpoint(TunnelEndpoint):
    """
    An C{IStreamClientEndpoint} that reaches C{host}:C{port} through a SOCKS5
    proxy reached with C{inner_endpoint}: IPv4 and IPv6 literals are sent as
    addresses, names as names.  Works with any SOCKS5 server without
    authentication, Tor's SOCKS port included.

    C{connect} fails with a L{SocksError} subclass for a failure reply,
    L{SocksAuthenticationRequired}, L{ProxyProtocolError},
    L{ProxyTimeout} or L{ProxyUnavailable}.  A destination that SOCKS5 cannot
    carry raises L{InvalidDestination} (a L{ValueError}) here.
    """

    def __init__(
        self,
        inner_endpoint: IStreamClientEndpoint,
        host: str | bytes,
        port: int,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        reactor: IReactorTime,
    ) -> None:
        super().__init__(inner_endpoint, timeout=timeout, reactor=reactor)
        try:
            self._destination = check_destination(host, port)
        except ValueError as e:
            raise InvalidDestination(str(e)) from None
        connect_request(self._destination)  # too long a name fails here

    def _negotiator(self) -> Socks5Negotiator:
        return Socks5Negotiator(self._destination)
