"""
The gateway's C{--proxy} setting: how C{direct-tcpip} destinations are reached.

    (absent) / direct       connect directly
    socks5://HOST:PORT      a SOCKS5 proxy (no authentication)
    http://HOST:PORT        an HTTP proxy, with CONNECT
    tor://HOST:PORT         a running Tor's SOCKS port
    tor                     attach to a running Tor's control port, or launch one

IPv6 proxy addresses go in brackets (C{socks5://[::1]:1080}).  The port is
required.  Credentials, paths, queries and fragments are refused, and no
error message repeats the URL (it could hold a password).
"""

from __future__ import annotations

import enum
import ipaddress
import re

import attrs

from wraith_conch.outbound._destination import check_name, parse_ip

__all__ = ["DIRECT", "ProxyKind", "ProxySpec", "parse_proxy_url"]


class ProxyKind(enum.Enum):
    DIRECT = "direct"
    SOCKS5 = "socks5"
    HTTP = "http"
    #: SOCKS5 to a given Tor SOCKS port (C{tor://HOST:PORT}).
    TOR_SOCKS = "tor-socks"
    #: A Tor found through its control port, or launched (C{tor}).
    TOR = "tor"


_SCHEMES = {
    "socks5": ProxyKind.SOCKS5,
    # curl's name for "the proxy resolves names", which is what socks5 does here.
    "socks5h": ProxyKind.SOCKS5,
    "http": ProxyKind.HTTP,
    "tor": ProxyKind.TOR_SOCKS,
}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)


@attrs.frozen
class ProxySpec:
    """
    A parsed C{--proxy}: the kind, and for the URL forms the proxy's host
    (a name, or an address without brackets) and port.
    """

    kind: ProxyKind
    host: str | None = None
    port: int | None = None

    @property
    def is_direct(self) -> bool:
        return self.kind is ProxyKind.DIRECT

    @property
    def sends_names(self) -> bool:
        """Whether destinations go to a proxy by name (it resolves them, not the gateway)."""
        return self.kind is not ProxyKind.DIRECT

    @property
    def url(self) -> str:
        """The canonical text of this setting (what L{parse_proxy_url} reads back)."""
        if self.kind in (ProxyKind.DIRECT, ProxyKind.TOR):
            return self.kind.value
        scheme = {ProxyKind.SOCKS5: "socks5", ProxyKind.HTTP: "http"}.get(self.kind, "tor")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


DIRECT = ProxySpec(ProxyKind.DIRECT)


def parse_proxy_url(text: str | None) -> ProxySpec:
    """
    Parse a C{--proxy} value; None (the flag is absent) and C{"direct"} mean
    direct connections.  Raise L{ValueError} with a one-line reason for
    anything else that is not one of the forms above.
    """
    if text is None:
        return DIRECT
    if not isinstance(text, str):
        raise ValueError("proxy URL must be text")
    value = text.strip()
    if not value:
        raise ValueError("proxy URL is empty")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError("proxy URL contains spaces or control characters")
    lowered = value.lower()
    if lowered == "direct":
        return DIRECT
    if lowered == "tor":
        return ProxySpec(ProxyKind.TOR)
    match = _URL.match(value)
    if match is None:
        raise ValueError(
            "proxy URL must be socks5://HOST:PORT, http://HOST:PORT, tor://HOST:PORT or tor"
        )
    scheme = match.group("scheme").lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        if scheme == "https":
            raise ValueError("https:// proxies (TLS to the proxy) are not supported; use http://")
        if scheme in ("socks4", "socks4a", "socks"):
            raise ValueError("only SOCKS5 proxies are supported; use socks5://HOST:PORT")
        raise ValueError(
            f"unsupported proxy scheme {scheme!r}: use socks5://, http://, tor:// or tor"
        )
    rest = match.group("rest")
    if "@" in rest:
        raise ValueError(
            "proxy URL must not contain credentials (proxy authentication is not supported)"
        )
    if rest.endswith("/"):
        rest = rest[:-1]
    for char, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment")):
        if char in rest:
            raise ValueError(f"proxy URL must not contain {what}")
    host, port = _split_host_port(rest)
    return ProxySpec(kind, host, port)


def _split_host_port(authority: str) -> tuple[str, int]:
    if not authority:
        raise ValueError("proxy URL has no host")
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise ValueError("proxy URL has an unclosed '[' in its host")
        host_text, after = authority[1:end], authority[end + 1 :]
        if "%" in host_text:
            raise ValueError("proxy URL: IPv6 zone identifiers are not supported")
        try:
            host = str(ipaddress.IPv6Address(host_text))
        except ValueError:
            raise ValueError("proxy URL has an invalid IPv6 address in brackets") from None
        if not after:
            raise ValueError("proxy URL needs a port (HOST:PORT)")
        if not after.startswith(":"):
            raise ValueError("proxy URL has text after the ']' of its host")
        port_text = after[1:]
    else:
        if authority.count(":") > 1:
            raise ValueError("proxy URL: IPv6 addresses must be in brackets, e.g. [::1]:1080")
        host_text, colon, port_text = authority.partition(":")
        if not colon:
            raise ValueError("proxy URL needs a port (HOST:PORT)")
        if not host_text:
            raise ValueError("proxy URL has no host")
        address = parse_ip(host_text)
        if address is not None:
            host = str(address)
        else:
            try:
                host = check_name(host_text)
            except ValueError:
                raise ValueError("proxy URL has an invalid host name") from None
    return host, _parse_port(port_text)


def _parse_port(text: str) -> int:
    if not text:
        raise ValueError("proxy URL has an empty port")
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError("proxy URL port must be a number in 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"proxy URL port {port} is out of range (1-65535)")
    return port
