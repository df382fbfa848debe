"""
Checking and encoding a requested destination (host, port).

The host comes from the SSH client (a C{direct-tcpip} request), so it is
checked before it reaches a proxy request: a name that could smuggle a CR/LF
into an HTTP request line, or a SOCKS name longer than its length byte, never
leaves the gateway.  The messages of the L{ValueError}s raised here never
include the host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import attrs

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
MAX_NAME_LENGTH = 253


@attrs.frozen
class Destination:
    """
    A checked destination.

    @ivar kind: C{"ipv4"}, C{"ipv6"} or C{"name"}.
    @ivar host: the host as text: a normalised address, or the ASCII (IDNA)
        form of a name.
    @ivar port: 1-65535.
    """

    kind: Literal["ipv4", "ipv6", "name"]
    host: str
    port: int

    @property
    def host_bytes(self) -> bytes:
        return self.host.encode("ascii")

    @property
    def authority(self) -> str:
        """C{host:port}, IPv6 in brackets: the form of an HTTP C{CONNECT} target."""
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError("destination port must be an integer in 1-65535")
    return port


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{text} as an IP address (IPv6 without brackets), or None if it is not one."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_destination(host: str | bytes, port: int, *, allow_scope: bool = False) -> Destination:
    """
    Check C{host} and C{port} and return the normalised L{Destination}.

    C{host} may be an IPv4 address, an IPv6 address (brackets optional), or a
    DNS name (non-ASCII names are IDNA-encoded).  IPv6 scope ids
    (C{fe80::1%eth0}) are accepted only with C{allow_scope} (a proxy cannot
    be told one).  Raise L{ValueError} (whose text omits the host) if either
    is unusable.
    """
    port = check_port(port)
    if isinstance(host, bytes):
        try:
            host = host.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("destination host is not valid UTF-8") from None
    if not isinstance(host, str):
        raise ValueError("destination host must be text")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if parse_ip(host) is None or ":" not in host:
            raise ValueError("destination host in brackets is not an IPv6 address")
    if not host:
        raise ValueError("destination host is empty")
    address = parse_ip(host)
    if isinstance(address, ipaddress.IPv4Address):
        return Destination("ipv4", str(address), port)
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None and not allow_scope:
            raise ValueError("destination IPv6 address has a scope id")
        return Destination("ipv6", str(address), port)
    return Destination("name", check_name(host), port)


def check_name(host: str) -> str:
    """The ASCII form of DNS name C{host}; L{ValueError} if it is not a usable name."""
    try:
        ascii_name = host.encode("ascii").decode("ascii")
    except UnicodeEncodeError:
        try:
            import idna

            ascii_name = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise ValueError("destination host is not a valid internationalised name") from None
    name = ascii_name[:-1] if ascii_name.endswith(".") else ascii_name
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError("destination host name has a bad length")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError("destination host is not a valid host name")
    if all(label.isdigit() for label in labels):
        raise ValueError("destination host looks like an IPv4 address but is not one")
    return ascii_name.lower()
