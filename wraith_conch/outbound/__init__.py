"""
Outbound connections for C{direct-tcpip}: direct, SOCKS5, HTTP CONNECT, Tor.

    from wraith_conch.outbound import connect_outbound, open_failure_reason, parse_proxy_url

    proxy = parse_proxy_url(options["proxy"])          # ValueError: bad --proxy
    d = connect_outbound(reactor, host, port, proxy, factory)
    d.addErrback(lambda f: channel_open_failed(*open_failure_reason(f)))

No error text and no log event of this package names a destination (ADR-006).
"""

from wraith_conch.outbound.connect import (
    DEFAULT_TIMEOUT,
    IOutboundConnector,
    OutboundConnector,
    connect_outbound,
    outbound_endpoint,
    resolve,
)
from wraith_conch.outbound.errors import (
    ConnectionFailed,
    ConnectionRefused,
    ConnectTimeout,
    DestinationNotAllowed,
    HostUnreachable,
    InvalidDestination,
    NameNotFound,
    NetworkUnreachable,
    OutboundError,
    ProxyError,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnavailable,
    SocksError,
    TorUnavailable,
    open_failure_reason,
)
from wraith_conch.outbound.http_connect import HTTPConnectEndpoint
from wraith_conch.outbound.proxy import DIRECT, ProxyKind, ProxySpec, parse_proxy_url
from wraith_conch.outbound.socks5 import Socks5Endpoint
from wraith_conch.outbound.tor import TorProvider

__all__ = [
    "DEFAULT_TIMEOUT",
    "DIRECT",
    "ConnectTimeout",
    "ConnectionFailed",
    "ConnectionRefused",
    "DestinationNotAllowed",
    "HTTPConnectEndpoint",
    "HostUnreachable",
    "IOutboundConnector",
    "InvalidDestination",
    "NameNotFound",
    "NetworkUnreachable",
    "OutboundConnector",
    "OutboundError",
    "ProxyError",
    "ProxyKind",
    "ProxyProtocolError",
    "ProxyRefused",
    "ProxySpec",
    "ProxyTimeout",
    "ProxyUnavailable",
    "Socks5Endpoint",
    "SocksError",
    "TorProvider",
    "TorUnavailable",
    "connect_outbound",
    "open_failure_reason",
    "outbound_endpoint",
    "parse_proxy_url",
    "resolve",
]
