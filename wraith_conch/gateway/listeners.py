"""
The gateway's listeners: one per C{--listen} endpoint string.

Any Twisted server endpoint string works (C{tcp:}, C{tcp6:}, C{ssl:},
C{unix:}, ...), plus two forms with special handling here:

  - C{haproxy:<endpoint>}: the connection starts with a PROXY protocol v1
    or v2 header (HAProxy's C{send-proxy} / C{send-proxy-v2}) naming the
    real client.  Twisted's own wrapper starts the SSH transport before the
    header is read, so C{getPeer()} in C{connectionMade} would be the load
    balancer; L{ProxyHeaderWrapper} holds the SSH transport back until the
    header is parsed, so the logs and per-address limits see the client.
  - C{onion:<public port>[:controlPort=...]...}: a Tor onion
    service (txtorcon's endpoint).  Parsing that string with Twisted
    launches or contacts Tor, so it is checked here without Tor and only
    built when the service starts listening.

L{parse_listen} and L{tcp_addresses} are pure; L{build_listener} returns the
endpoint and the factory for one listener; L{transport_label} names what a
connection came in over, for the connection log line.
"""

from __future__ import annotations

import ipaddress
import re

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface import implementer

from wraith_conch.gateway.prelude import Decision, PreludeFactory, PreludeWrapper, Refuse, Start
from wraith_conch.gateway.stealth import StealthFactory

PROXY_PREFIX = "haproxy"
TLS_KINDS = ("ssl",)
TCP_KINDS = ("tcp", "tcp6", "ssl")
# txtorcon's onion endpoint arguments (see its TCPHiddenServiceEndpointParser).
ONION_OPTIONS = frozenset(
    {
        "localPort",
        "controlPort",
        "hiddenServiceDir",
        "privateKey",
        "privateKeyFile",
        "version",
        "singleHop",
    }
)

# PROXY protocol: a v1 header is one line of at most 107 bytes; a v2 one is
# 16 bytes plus addresses and TLVs.  Load balancers send it at once.
PROXY_HEADER_TIMEOUT = 10.0
PROXY_HEADER_MAX = 4096
_V1_START = b"PROXY "


@attrs.frozen
class ListenSpec:
    """One C{--listen} string, understood."""

    description: str
    # The endpoint string without the haproxy: wrapper, and its type.
    inner: str
    kind: str
    proxy_header: bool
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()

    @property
    def tls(self) -> bool:
        return self.kind in TLS_KINDS

    @property
    def label(self) -> str:
        """What connections on it are, before any PROXY header: tcp, tls, onion..."""
        if self.tls:
            return "tls"
        if self.kind in ("tcp", "tcp6"):
            return "tcp"
        return self.kind


def _split(description: str) -> list[str]:
    # Twisted's syntax: ':' separates, '\:' is a literal colon.
    return [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]


def parse_listen(description: str) -> ListenSpec:
    """Understand a C{--listen} string (syntax only); L{ValueError} if malformed."""
    parts = _split(description)
    proxy_header = parts[0].lower() == PROXY_PREFIX
    if proxy_header:
        parts = parts[1:]
        if not parts or not parts[0]:
            raise ValueError("haproxy: needs an endpoint after it, e.g. haproxy:tcp:2222")
        if parts[0].lower() == PROXY_PREFIX:
            raise ValueError("haproxy: given twice")
    inner = description.split(":", 1)[1] if proxy_header else description
    kind = parts[0].lower()
    positional = tuple(p for p in parts[1:] if "=" not in p)
    named = tuple(tuple(p.split("=", 1)) for p in parts[1:] if "=" in p)
    return ListenSpec(description, inner, kind, proxy_header, positional, named)


def check_listen(reactor, description: str) -> ListenSpec:
    """
    L{parse_listen} and check the endpoint can be built (key files read,
    options known), without listening.  L{ValueError} with the reason if not.
    """
    spec = parse_listen(description)
    if spec.kind == "onion":
        _check_onion(spec)
        return spec
    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return spec


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what} must be a port number 1-65535, not {text!r}")
    return int(text)


def _check_onion(spec: ListenSpec) -> None:
    if len(spec.args) != 1:
        raise ValueError("onion: give one public port, e.g. onion:22")
    _port(spec.args[0], "the onion service's public port")
    named = dict(spec.kwargs)
    unknown = sorted(set(named) - ONION_OPTIONS)
    if unknown:
        raise ValueError(f"onion: unknown option(s) {', '.join(unknown)}")
    if "localPort" in named:
        _port(named["localPort"], "localPort")
    if "controlPort" in named and named["controlPort"].isdigit():
        _port(named["controlPort"], "controlPort")
    if named.get("version", "3") not in ("2", "3"):
        raise ValueError("onion: version must be 2 or 3")
    if "hiddenServiceDir" in named and ("privateKey" in named or "privateKeyFile" in named):
        raise ValueError("onion: hiddenServiceDir and privateKey(File) exclude each other")


def tcp_addresses(description: str) -> list[tuple[str | None, int]]:
    """
    The local TCP C{(interface, port)} a listener binds (C{None}: all
    interfaces), for keeping tunnels off the gateway's own ports; C{[]} for
    non-TCP listeners (C{unix:}) and strings that do not parse.
    """
    try:
        spec = parse_listen(description)
    except ValueError:
        return []
    named = dict(spec.kwargs)
    # onion: txtorcon (26.x) listens on 127.0.0.1 port 0 whatever localPort
    # says, so its port is known only once listening; forwards to loopback
    # are refused by the forward policy's built-in layer instead.
    if spec.kind not in TCP_KINDS:
        return []
    port_text = named.get("port", spec.args[0] if spec.args else "")
    if not port_text.isdigit():
        return []
    interface = named.get("interface", spec.args[1] if len(spec.args) > 1 else "") or None
    return [(interface, int(port_text))]


# -- PROXY protocol -----------------------------------------------------------


@attrs.frozen
class ProxyHeader:
    version: str  # "v1" or "v2"
    source: object  # an IAddress, or None (v1 UNKNOWN, v2 LOCAL: health checks)
    destination: object
    rest: bytes  # what followed the header: the client's first bytes


def read_proxy_header(data: bytes) -> ProxyHeader | None:
    """
    The PROXY header at the start of C{data}; L{None} while incomplete.
    L{InvalidProxyHeader} if C{data} does not start with one.
    """
    signature = V2Parser.PREFIX
    if len(data) < len(signature) + 4 and signature.startswith(data[: len(signature)]):
        return None
    if data.startswith(signature):
        if data[12] & 0xF0 != 0x20:
            raise InvalidProxyHeader()
        version, parser = "v2", V2Parser()
    elif data.startswith(_V1_START):
        end = data.find(b"\r\n", 0, 108)
        if end >= 0 and data[:end].split(b" ")[1:2] == [b"UNKNOWN"]:
            # Health checks and unknown families: no address (Twisted's
            # parser wants words after UNKNOWN, which HAProxy does not send).
            return ProxyHeader("v1", None, None, data[end + 2 :])
        version, parser = "v1", V1Parser()
    elif _V1_START.startswith(data):
        return None
    else:
        raise InvalidProxyHeader()
    info, rest = parser.feed(data)
    if info is None:
        return None
    source, destination = _checked(info.source), _checked(info.destination)
    return ProxyHeader(version, source, destination, rest or b"")


def _checked(address):
    # Twisted's v1 parser takes any word for a host and any number for a
    # port; the source goes into logs and per-address limits, so it must be
    # a real address of the family the header declares, written the usual
    # way (the v2 parser spells IPv6 out in full).
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None  # none, or AF_UNIX (v2): no IP address to speak of
    try:
        parsed = ipaddress.ip_address(address.host)
    except ValueError:
        raise InvalidProxyHeader() from None
    family = 6 if isinstance(address, IPv6Address) else 4
    if parsed.version != family or not 0 <= address.port <= 65535:
        raise InvalidProxyHeader()
    return attrs.evolve(address, host=str(parsed))


class ProxyHeaderWrapper(PreludeWrapper):
    """Reads the PROXY header, then starts SSH with the client's address as peer."""

    header: ProxyHeader | None = None

    def examine(self, buffered: bytes) -> Decision:
        try:
            header = read_proxy_header(buffered)
        except InvalidProxyHeader:
            return Refuse("PROXY protocol header missing or invalid")
        if header is None:
            return None
        self.header = header
        return Start(header.rest)

    def on_timeout(self, buffered: bytes) -> Refuse:
        return Refuse("no PROXY protocol header in time")

    def getPeer(self):
        if self.header is not None and self.header.source is not None:
            return self.header.source
        return self.transport.getPeer()

    def getHost(self):
        if self.header is not None and self.header.destination is not None:
            return self.header.destination
        return self.transport.getHost()


@implementer(IProtocolNegotiationFactory)
class ProxyHeaderFactory(PreludeFactory):
    protocol = ProxyHeaderWrapper
    name = "proxy-protocol"

    def acceptableProtocols(self) -> list[bytes]:
        # haproxy:ssl: with --stealth: the TLS layer asks this factory.
        inner = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return list(inner.acceptableProtocols()) if inner is not None else []

    def __init__(
        self,
        reactor,
        wrappedFactory,
        *,
        timeout: float = PROXY_HEADER_TIMEOUT,
        max_bytes: int = PROXY_HEADER_MAX,
    ) -> None:
        super().__init__(reactor, wrappedFactory, timeout=timeout, max_bytes=max_bytes)


# -- building -------------------------------------------------------------------


class _LabellingFactory(Factory):
    """
    Passes through to the gateway factory, marking each protocol with the
    listener's label (the only place an onion connection is known as one:
    Tor connects from loopback).
    """

    def __init__(self, wrapped, label: str) -> None:
        self._wrapped = wrapped
        self._label = label

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def logPrefix(self) -> str:
        return f"{type(self._wrapped).__name__} ({self._label})"

    def buildProtocol(self, addr):
        protocol = self._wrapped.buildProtocol(addr)
        if protocol is not None:
            protocol.listener_label = self._label
        return protocol


class _DeferredEndpoint:
    """An endpoint string parsed only when listening starts (see module doc)."""

    def __init__(self, reactor, description: str) -> None:
        self.reactor = reactor
        self.description = description

    def listen(self, factory) -> defer.Deferred:
        return defer.maybeDeferred(
            lambda: serverFromString(self.reactor, self.description).listen(factory)
        )


def listener_factory(
    reactor,
    description: str,
    factory,
    *,
    stealth: bool = False,
    stealth_timeout: float | None = None,
):
    """
    The factory one C{--listen} string's endpoint is given: the gateway
    C{factory}, stealth-wrapped on TLS listeners when C{stealth}, behind a
    PROXY header reader for C{haproxy:}.
    """
    spec = parse_listen(description)
    wrapped = _LabellingFactory(factory, spec.label)
    if stealth and spec.tls:
        extra = {} if stealth_timeout is None else {"timeout": stealth_timeout}
        wrapped = StealthFactory(reactor, wrapped, **extra)
    if spec.proxy_header:
        wrapped = ProxyHeaderFactory(reactor, wrapped)
    return wrapped


def listener_endpoint(reactor, description: str):
    """
    The server endpoint for one C{--listen} string: for C{haproxy:} the
    endpoint it wraps (L{listener_factory} reads the header instead of
    Twisted's wrapper), for C{onion:} one that starts Tor only on listen.
    """
    spec = parse_listen(description)
    if spec.kind == "onion":
        return _DeferredEndpoint(reactor, spec.inner)
    return serverFromString(reactor, spec.inner)


def build_listener(reactor, description: str, factory, **kwargs):
    """C{(endpoint, factory)} for one C{--listen} string; see L{listener_factory}."""
    return (
        listener_endpoint(reactor, description),
        listener_factory(reactor, description, factory, **kwargs),
    )


def transport_label(protocol) -> str:
    """
    What C{protocol}'s connection came in over: C{tcp}, C{tls}, C{onion},
    C{unix}..., with C{+proxy-v1}/C{+proxy-v2} when a PROXY header named
    the client (C{proxy-v2} alone for a plain TCP listener).
    """
    transport = getattr(protocol, "transport", None)
    label = getattr(protocol, "listener_label", None)
    if label is None:
        label = "tls" if ISSLTransport.providedBy(transport) else "tcp"
    version = None
    for _ in range(8):  # the wrappers between the port and the SSH transport
        if transport is None:
            break
        if isinstance(transport, ProxyHeaderWrapper) and transport.header is not None:
            version = transport.header.version
            break
        transport = transport.__dict__.get("transport")
    if version is None:
        return label
    return f"proxy-{version}" if label == "tcp" else f"{label}+proxy-{version}"
