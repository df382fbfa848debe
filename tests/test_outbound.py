"""
wraith_conch.outbound: direct, SOCKS5, HTTP CONNECT and Tor connections for
C{direct-tcpip}, against real servers: an in-process echo server and one
that speaks first, a real SOCKS5 proxy (microsocks), a real HTTP proxy
(tinyproxy), a real (offline) Tor, and in-process fake proxies for the ways
a proxy misbehaves.  Every test that connects also checks that no log event
(any level) names a destination (ADR-006).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from twisted.conch.ssh.connection import OPEN_ADMINISTRATIVELY_PROHIBITED, OPEN_CONNECT_FAILED
from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorPluggableNameResolver
from twisted.internet.process import ProcessReader, reapProcessHandlers
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from tests.localresolver import install_local_resolver
from tests.polling import wait_until
from tests.proxies import (
    BANNER,
    Echo,
    FakeHTTPProxy,
    FakeProxyFactory,
    FakeSocksProxy,
    SpeaksFirst,
    listen,
    offline_tor_wrapper,
    refused_port,
    socks_reply,
    start_microsocks,
    start_offline_tor,
    start_tinyproxy,
)
from wraith_conch.outbound import (
    DIRECT,
    ConnectionFailed,
    ConnectionRefused,
    ConnectTimeout,
    HTTPConnectEndpoint,
    InvalidDestination,
    NameNotFound,
    OutboundConnector,
    OutboundError,
    ProxyKind,
    ProxyProtocolError,
    ProxyRefused,
    ProxySpec,
    ProxyTimeout,
    ProxyUnavailable,
    Socks5Endpoint,
    TorProvider,
    TorUnavailable,
    connect_outbound,
    open_failure_reason,
    parse_proxy_url,
    resolve,
)
from wraith_conch.outbound import errors as E
from wraith_conch.outbound._destination import check_destination
from wraith_conch.outbound.http_connect import (
    MAX_HEADER_BYTES,
    ConnectResponseParser,
    connect_request,
)
from wraith_conch.outbound.socks5 import Socks5Negotiator
from wraith_conch.outbound.socks5 import connect_request as socks_request
from wraith_conch.outbound.tor import parse_bootstrap_phase, socks_listeners

WAIT = 10.0
#: Short deadlines for the cases that must time out.
SHORT = 1.0


class Collector(protocol.Protocol):
    """The application side of an outbound connection: records what arrives."""

    def __init__(self) -> None:
        self.data = b""
        self.connected = False
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for waiter in list(self._waiters):
            expected, d = waiter
            if expected in self.data:
                self._waiters.remove(waiter)
                d.callback(self.data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.connected = False
        waiters, self._waiters = self._waiters, []
        for expected, d in waiters:
            d.errback(AssertionError(f"connection lost before {expected!r}; got {self.data!r}"))
        self.lost.callback(None)

    def wait_for(self, expected: bytes, timeout: float = WAIT) -> defer.Deferred[bytes]:
        if expected in self.data:
            return defer.succeed(self.data)
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((expected, d))
        return d.addTimeout(timeout, reactor)

    async def close(self) -> None:
        if self.transport is not None and self.connected:
            self.transport.loseConnection()
            await self.lost.addTimeout(WAIT, reactor)


@implementer(IHalfCloseableProtocol)
class HalfCloseableCollector(Collector):
    def __init__(self) -> None:
        super().__init__()
        self.read_closed: defer.Deferred[None] = defer.Deferred()

    def readConnectionLost(self) -> None:
        self.read_closed.callback(None)

    def writeConnectionLost(self) -> None:
        pass


def collector_factory() -> protocol.Factory:
    factory = protocol.Factory.forProtocol(Collector)
    factory.noisy = False
    return factory


def _event_text(event: dict[str, Any]) -> str:
    """Everything an observer could write for C{event}: its text and every field."""
    parts = []
    try:
        parts.append(formatEvent(event))
    except Exception as e:  # a broken format string is text too
        parts.append(repr(e))
    for key, value in event.items():
        if key == "log_time":
            continue
        parts.append(f"{key}={value!r}")
        if isinstance(value, Failure):
            parts.append(value.getTraceback())
    return "\n".join(parts)


class OutboundTestCase(unittest.TestCase):
    """
    Base: L{watch_logs} records every log event (all levels) from then on
    and, when the test ends, fails it if any names a destination.
    """

    timeout = 60

    def watch_logs(self, *destinations: object) -> list[dict[str, Any]]:
        """
        Start recording log events; C{destinations} (hosts, addresses,
        ports) must appear in none of them.  Call it after the test's
        servers listen (their own "starting on PORT" events are not the
        gateway's).  More may be added to L{forbidden} later.
        """
        self.forbidden: set[str] = {str(d) for d in destinations}
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)

        def check() -> None:
            globalLogPublisher.removeObserver(self.events.append)
            self.assert_no_destination_logged(self.events, self.forbidden)

        self.addCleanup(check)
        return self.events

    def assert_no_destination_logged(
        self, events: list[dict[str, Any]], forbidden: set[str]
    ) -> None:
        for event in events:
            text = _event_text(event)
            for token in forbidden:
                if token.isdigit():
                    found = re.search(rf"(?<![0-9]){token}(?![0-9])", text)
                else:
                    found = re.search(
                        rf"(?<![0-9A-Za-z.:-]){re.escape(token)}(?![0-9A-Za-z-])", text
                    )
                if found:
                    self.fail(f"a log event names destination {token!r}:\n{text}")

    def echo_port(self, address: str = "127.0.0.1") -> int:
        return listen(self, reactor, protocol.Factory.forProtocol(Echo), address)

    def speaks_first_port(self, address: str = "127.0.0.1") -> int:
        return listen(self, reactor, protocol.Factory.forProtocol(SpeaksFirst), address)

    async def connect(
        self, host: str, port: int, proxy: ProxySpec = DIRECT, **kwargs: Any
    ) -> Collector:
        kwargs.setdefault("timeout", WAIT)
        proto = await connect_outbound(reactor, host, port, proxy, collector_factory(), **kwargs)
        assert isinstance(proto, Collector)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(proto.close()))
        return proto

    async def round_trip(self, proto: Collector, payload: bytes = b"ping\n") -> None:
        proto.transport.write(payload)
        data = await proto.wait_for(payload)
        self.assertIn(payload, data)

    async def connect_fails(
        self,
        host: str,
        port: int,
        proxy: ProxySpec,
        expected: type[BaseException],
        **kwargs: Any,
    ) -> OutboundError:
        kwargs.setdefault("timeout", WAIT)
        d = connect_outbound(reactor, host, port, proxy, collector_factory(), **kwargs)
        failure = await self.assertFailure(d, expected)
        self.assertIsInstance(failure, OutboundError)
        code, description = open_failure_reason(Failure(failure))
        self.assertIn(code, (OPEN_CONNECT_FAILED, OPEN_ADMINISTRATIVELY_PROHIBITED))
        for text in (description, str(failure), repr(failure)):
            self.assertNotIn(str(host), text)
            self.assertNotIn(str(port), text)
            self.assertNotIn("\n", text)
        return failure


# -- the --proxy flag -------------------------------------------------------------


class ParseProxyURLTests(unittest.TestCase):
    def test_valid(self) -> None:
        table = [
            (None, ProxySpec(ProxyKind.DIRECT)),
            ("direct", ProxySpec(ProxyKind.DIRECT)),
            ("socks5://127.0.0.1:1080", ProxySpec(ProxyKind.SOCKS5, "127.0.0.1", 1080)),
            ("SOCKS5://Proxy.Example:1080", ProxySpec(ProxyKind.SOCKS5, "proxy.example", 1080)),
            ("socks5h://proxy.example:1", ProxySpec(ProxyKind.SOCKS5, "proxy.example", 1)),
            ("socks5://[::1]:1080", ProxySpec(ProxyKind.SOCKS5, "::1", 1080)),
            ("socks5://[2001:DB8:0::1]:65535", ProxySpec(ProxyKind.SOCKS5, "2001:db8::1", 65535)),
            ("http://proxy.example:3128", ProxySpec(ProxyKind.HTTP, "proxy.example", 3128)),
            ("http://proxy.example:3128/", ProxySpec(ProxyKind.HTTP, "proxy.example", 3128)),
            ("http://10.0.0.1:08080", ProxySpec(ProxyKind.HTTP, "10.0.0.1", 8080)),
            ("tor://127.0.0.1:9050", ProxySpec(ProxyKind.TOR_SOCKS, "127.0.0.1", 9050)),
            ("tor", ProxySpec(ProxyKind.TOR)),
            (" TOR ", ProxySpec(ProxyKind.TOR)),
        ]
        for text, expected in table:
            with self.subTest(text=text):
                self.assertEqual(parse_proxy_url(text), expected)

    def test_url_round_trip(self) -> None:
        for text in (
            "direct",
            "tor",
            "socks5://127.0.0.1:1080",
            "socks5://[::1]:1080",
            "http://proxy.example:3128",
            "tor://[::1]:9050",
        ):
            with self.subTest(text=text):
                spec = parse_proxy_url(text)
                self.assertEqual(spec.url, text)
                self.assertEqual(parse_proxy_url(str(spec)), spec)

    def test_invalid(self) -> None:
        table = [
            ("", "empty"),
            ("   ", "empty"),
            ("proxy.example:3128", "must be"),
            ("ftp://proxy.example:21", "unsupported proxy scheme"),
            ("https://proxy.example:443", "https"),
            ("socks4://proxy.example:1080", "SOCKS5"),
            ("socks5://proxy.example", "needs a port"),
            ("socks5://proxy.example:", "empty port"),
            ("socks5://proxy.example:0", "out of range"),
            ("socks5://proxy.example:65536", "out of range"),
            ("socks5://proxy.example:-1", "1-65535"),
            ("socks5://proxy.example:+80", "1-65535"),
            ("socks5://proxy.example:http", "1-65535"),
            ("socks5://proxy.example:123456", "1-65535"),
            ("socks5://:1080", "no host"),
            ("socks5://", "no host"),
            ("tor://", "no host"),
            ("socks5://::1:1080", "brackets"),
            ("socks5://[::1]", "needs a port"),
            ("socks5://[::1:1080", "unclosed"),
            ("socks5://[::1]x:1080", "after the ']'"),
            ("socks5://[1.2.3.4]:1080", "IPv6"),
            ("socks5://[fe80::1%25eth0]:1080", "zone"),
            ("socks5://bad_host!:1080", "invalid host name"),
            ("socks5://1.2.3:1080", "invalid host name"),
            ("socks5://-bad.example:1080", "invalid host name"),
            ("socks5://a..b:1080", "invalid host name"),
            ("http://proxy.example:3128/path", "path"),
            ("http://proxy.example:3128?x=1", "query"),
            ("http://proxy.example:3128#top", "fragment"),
            ("http://proxy .example:3128", "spaces"),
            ("http://proxy.example:3128\nX", "control"),
            ("socks5://user:hunter2@proxy.example:1080", "credentials"),
            ("http://user@proxy.example:3128", "credentials"),
            ("tor:", "must be"),
        ]
        for text, reason in table:
            with self.subTest(text=text):
                with self.assertRaises(ValueError) as caught:
                    parse_proxy_url(text)
                message = str(caught.exception)
                self.assertIn(reason, message)
                self.assertNotIn("\n", message)
                self.assertNotIn("hunter2", message)

    def test_not_text(self) -> None:
        with self.assertRaises(ValueError):
            parse_proxy_url(b"socks5://127.0.0.1:1080")  # type: ignore[arg-type]


# -- sans-IO pieces ------------------------------------------------------------------


class DestinationEncodingTests(unittest.TestCase):
    def test_socks_ipv6_literal_is_sixteen_bytes(self) -> None:
        # txtorcon 26.6 packs this in 4 bytes ("!BBBB4sH").
        request = socks_request(check_destination("::1", 22))
        self.assertEqual(request, b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x00\x16")

    def test_socks_ipv4_and_name(self) -> None:
        self.assertEqual(
            socks_request(check_destination("10.1.2.3", 80)),
            b"\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50",
        )
        self.assertEqual(
            socks_request(check_destination("Example.COM", 443)),
            b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
        )

    def test_idna_name(self) -> None:
        self.assertEqual(check_destination("bücher.example", 1).host, "xn--bcher-kva.example")

    def test_http_request(self) -> None:
        self.assertEqual(
            connect_request(check_destination("[::1]", 2222)),
            b"CONNECT [::1]:2222 HTTP/1.1\r\nHost: [::1]:2222\r\n\r\n",
        )
        self.assertEqual(
            connect_request(check_destination("host.example", 22)),
            b"CONNECT host.example:22 HTTP/1.1\r\nHost: host.example:22\r\n\r\n",
        )

    def test_bad_destinations(self) -> None:
        inner = TCP4ClientEndpoint(reactor, "127.0.0.1", 1)
        for host, port in [
            ("evil.example\r\nX-Injected: 1", 80),
            ("evil.example 80", 80),
            ("", 80),
            ("a" * 64 + ".example", 80),
            ("x." * 130 + "example", 80),
            ("host.example", 0),
            ("host.example", 65536),
            ("fe80::1%eth0", 22),
            ("[host.example]", 22),
        ]:
            with self.subTest(host=host, port=port):
                for cls in (HTTPConnectEndpoint, Socks5Endpoint):
                    with self.assertRaises(InvalidDestination) as caught:
                        cls(inner, host, port, reactor=reactor)
                    self.assertIsInstance(caught.exception, ValueError)
                    if host:
                        self.assertNotIn(host, str(caught.exception))


class ConnectResponseParserTests(unittest.TestCase):
    def feed_all(self, data: bytes, chunk: int | None = None) -> tuple[Any, bytes]:
        parser = ConnectResponseParser()
        step = chunk or len(data)
        for i in range(0, len(data), step):
            result = parser.feed(data[i : i + step])
            if result is not None:
                return result
        self.fail("the parser wants more")

    def test_crlf_byte_by_byte_with_leftover(self) -> None:
        raw = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\nSSH-2.0-x\r\n"
        for chunk in (1, 2, 7, None):
            response, leftover = self.feed_all(raw, chunk)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.reason, "Connection established")
            self.assertEqual(response.header("proxy-agent"), "x")
            if chunk is None:
                self.assertEqual(leftover, b"SSH-2.0-x\r\n")

    def test_lf_line_ends_and_folding(self) -> None:
        raw = b"HTTP/1.0 200 OK\nX-Long: one\n  two\n\tthree\nOther:  v \n\nrest"
        response, leftover = self.feed_all(raw)
        self.assertEqual(response.header("x-long"), "one two three")
        self.assertEqual(response.header("other"), "v")
        self.assertEqual(leftover, b"rest")

    def test_mixed_line_ends_and_no_reason(self) -> None:
        response, leftover = self.feed_all(b"HTTP/1.1 204\r\nA: b\n\r\nX")
        self.assertEqual((response.status, response.reason, leftover), (204, "", b"X"))

    def test_interim_answers_are_skipped(self) -> None:
        raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nX"
        response, leftover = self.feed_all(raw, 3)
        self.assertEqual(response.status, 200)

    def test_invalid(self) -> None:
        for raw in [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded-first\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: v\r\n\r\n",
        ]:
            with self.subTest(raw=raw):
                with self.assertRaises(ProxyProtocolError):
                    self.feed_all(raw)

    def test_header_size_is_bounded(self) -> None:
        parser = ConnectResponseParser()
        self.assertIsNone(parser.feed(b"HTTP/1.1 200 OK\r\n"))
        with self.assertRaises(ProxyProtocolError) as caught:
            for _ in range(MAX_HEADER_BYTES // 1000 + 2):
                parser.feed(b"X-Pad: " + b"a" * 991 + b"\r\n")
        self.assertIn("too large", str(caught.exception))
        # Just under the limit is fine.
        body = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEADER_BYTES - 30) + b"\r\n\r\n"
        self.assertLessEqual(len(body), MAX_HEADER_BYTES)
        self.assertEqual(ConnectResponseParser().feed(body)[0].status, 200)  # type: ignore[index]

    def test_too_many_interim_answers(self) -> None:
        with self.assertRaises(ProxyProtocolError):
            self.feed_all(b"HTTP/1.1 100 Continue\r\n\r\n" * 20)


class Socks5NegotiatorTests(unittest.TestCase):
    def negotiate(self, answer: bytes, chunk: int | None = None) -> Any:
        negotiator = Socks5Negotiator(check_destination("host.example", 22))
        self.assertEqual(negotiator.start(), b"\x05\x01\x00")
        step = chunk or len(answer)
        sent = b""
        for i in range(0, len(answer), step):
            result = negotiator.feed(answer[i : i + step])
            sent += result.send
            if result.done:
                self.assertEqual(sent, b"\x05\x01\x00\x03\x0chost.example\x00\x16")
                return result
        return None

    def test_replies_with_each_address_type(self) -> None:
        for bound in (b"\x01\x7f\x00\x00\x01", b"\x04" + b"\x00" * 16, b"\x03\x04name"):
            for chunk in (1, 3, None):
                with self.subTest(bound=bound, chunk=chunk):
                    result = self.negotiate(b"\x05\x00" + socks_reply(0, bound) + b"DATA", chunk)
                    self.assertIsNotNone(result)
                    if chunk is None:
                        self.assertEqual(result.leftover, b"DATA")

    def test_reply_codes(self) -> None:
        table = {
            0x01: (E.SocksGeneralFailure, OPEN_CONNECT_FAILED),
            0x02: (E.SocksNotAllowed, OPEN_ADMINISTRATIVELY_PROHIBITED),
            0x03: (E.SocksNetworkUnreachable, OPEN_CONNECT_FAILED),
            0x04: (E.SocksHostUnreachable, OPEN_CONNECT_FAILED),
            0x05: (E.SocksConnectionRefused, OPEN_CONNECT_FAILED),
            0x06: (E.SocksTTLExpired, OPEN_CONNECT_FAILED),
            0x07: (E.SocksCommandNotSupported, OPEN_CONNECT_FAILED),
            0x08: (E.SocksAddressTypeNotSupported, OPEN_CONNECT_FAILED),
            0x09: (E.SocksError, OPEN_CONNECT_FAILED),
            0xF4: (E.SocksError, OPEN_CONNECT_FAILED),
        }
        for code, (cls, open_code) in table.items():
            with self.subTest(code=code):
                with self.assertRaises(cls) as caught:
                    self.negotiate(b"\x05\x00" + socks_reply(code))
                self.assertIs(type(caught.exception), cls)
                self.assertEqual(caught.exception.code, code)
                self.assertEqual(open_failure_reason(caught.exception)[0], open_code)

    def test_bad_answers(self) -> None:
        for answer, cls in [
            (b"\x05\xff", E.SocksAuthenticationRequired),
            (b"\x05\x02", ProxyProtocolError),
            (b"\x04\x00", ProxyProtocolError),
            (b"HTTP/1.1 400 Bad Request\r\n\r\n", ProxyProtocolError),
            (b"\x05\x00\x04\x00\x00\x01", ProxyProtocolError),
            (b"\x05\x00\x05\x00\x00\x07\x00\x00\x00\x00\x00\x00", ProxyProtocolError),
        ]:
            with self.subTest(answer=answer):
                with self.assertRaises(cls):
                    self.negotiate(answer)


class OpenFailureReasonTests(unittest.TestCase):
    def test_table(self) -> None:
        secret = "secret-host.example"
        import txtorcon.socks

        table: list[tuple[BaseException, int, str]] = [
            (error.DNSLookupError(f"Couldn't find the hostname '{secret}'"), 2, "name not found"),
            (error.ConnectionRefusedError(111, "Connection refused"), 2, "connection refused"),
            (error.TCPTimedOutError(110, "timed out"), 2, "connection timed out"),
            (error.TimeoutError(), 2, "connection timed out"),
            (error.NoRouteError(101, "unreachable"), 2, "network unreachable"),
            (error.ConnectError(osError=113, string=secret), 2, "host unreachable"),
            (error.ConnectError(string=secret), 2, "connection failed"),
            (OSError(113, secret), 2, "host unreachable"),
            (defer.CancelledError(), 2, "connection attempt cancelled"),
            (RuntimeError(f"cannot reach {secret}:22"), 2, "connection failed"),
            (ProxyRefused(407, f"go away {secret}"), 2, "proxy refused the connection (HTTP 407)"),
            (ProxyRefused(502, "Bad Gateway"), 2, "proxy refused the connection (HTTP 502)"),
            (
                ProxyRefused(403, "Forbidden"),
                1,
                "proxy does not allow the connection (HTTP 403)",
            ),
            (E.SocksNotAllowed(), 1, "SOCKS proxy: connection not allowed by ruleset"),
            (E.DestinationNotAllowed(), 1, "destination not allowed"),
            (E.SocksError(code=0x42), 2, "SOCKS proxy failure (reply code 0x42)"),
            (txtorcon.socks.HostUnreachableError(), 2, "SOCKS proxy: host unreachable"),
            (txtorcon.socks.ConnectionNotAllowedError(), 1, E.SocksNotAllowed.default_description),
            (TorUnavailable(), 2, "Tor is not available"),
            (InvalidDestination(), 2, "invalid destination"),
        ]
        for exc, code, description in table:
            with self.subTest(exc=exc):
                for reason in (exc, Failure(exc)):
                    self.assertEqual(open_failure_reason(reason), (code, description))
                    self.assertNotIn(secret, open_failure_reason(reason)[1])

    def test_typed_error_hierarchy(self) -> None:
        self.assertIsInstance(E.SocksConnectionRefused(), ConnectionRefused)
        self.assertIsInstance(E.SocksHostUnreachable(), E.HostUnreachable)
        self.assertIsInstance(ProxyTimeout(), ConnectTimeout)
        self.assertIsInstance(ProxyRefused(407), E.ProxyError)
        self.assertEqual(ProxyRefused(407, "Proxy Authentication Required").status, 407)


# -- direct -------------------------------------------------------------------------


class DirectTests(OutboundTestCase):
    def setUp(self) -> None:
        # Name lookups stay on this machine (the system resolver would not).
        install_local_resolver(self)

    async def test_ipv4(self) -> None:
        port = self.echo_port()
        self.watch_logs("127.0.0.1", port)
        proto = await self.connect("127.0.0.1", port)
        await self.round_trip(proto)

    async def test_ipv6(self) -> None:
        port = self.echo_port("::1")
        self.watch_logs("::1", port)
        proto = await self.connect("::1", port)
        await self.round_trip(proto)
        self.assertEqual(proto.transport.getPeer().host, "::1")

    async def test_name(self) -> None:
        port = self.echo_port()
        self.watch_logs("localhost", "127.0.0.1", port)
        proto = await self.connect("localhost", port)
        await self.round_trip(proto)

    async def test_speaks_first(self) -> None:
        port = self.speaks_first_port()
        self.watch_logs("127.0.0.1", port)
        proto = await self.connect("127.0.0.1", port)
        await proto.wait_for(BANNER)

    async def test_resolve_then_connect_to_that_address(self) -> None:
        port = self.echo_port()
        name = "wraith-resolve-once.invalid"
        self.watch_logs("localhost", "127.0.0.1", port, name)
        addresses = await resolve(reactor, "localhost", port)
        self.assertIn("127.0.0.1", addresses)
        self.assertEqual(len(addresses), len(set(addresses)))
        # With an address, the name is not looked up again: this one has none.
        proto = await self.connect(name, port, address="127.0.0.1")
        await self.round_trip(proto)

    async def test_resolve_literals(self) -> None:
        self.watch_logs("::1", "127.0.0.1")
        self.assertEqual(await resolve(reactor, "127.0.0.1", 22), ["127.0.0.1"])
        self.assertEqual(await resolve(reactor, "0:0::1", 22), ["::1"])
        self.assertEqual(await resolve(reactor, "[::1]", 22), ["::1"])

    async def test_resolve_name_not_found(self) -> None:
        name = "wraith-no-such-name.invalid"
        self.watch_logs(name)
        await self.assertFailure(resolve(reactor, name, 22), NameNotFound)
        await self.assertFailure(resolve(reactor, "bad name\r\n", 22), InvalidDestination)

    def test_resolve_timeout(self) -> None:
        @implementer(IReactorPluggableNameResolver)
        class StuckResolver(task.Clock):
            class nameResolver:  # noqa: N801 - the reactor attribute's name
                @staticmethod
                def resolveHostName(receiver: Any, host: str, port: int = 0) -> None:
                    receiver.resolutionBegan(None)

        clock = StuckResolver()
        d = OutboundConnector(clock, timeout=5.0).resolve("stuck.example", 22)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, ConnectTimeout)
        self.assertEqual(open_failure_reason(failure), (2, "name lookup timed out"))

    def test_address_must_be_an_address(self) -> None:
        self.assertRaises(
            ValueError,
            OutboundConnector(reactor).connect,
            "host.example",
            22,
            collector_factory(),
            address="also-a-name.example",
        )

    async def test_refused(self) -> None:
        port = refused_port()
        self.watch_logs("127.0.0.1", port)
        failure = await self.connect_fails("127.0.0.1", port, DIRECT, ConnectionRefused)
        self.assertEqual(open_failure_reason(failure), (2, "connection refused"))

    async def test_refused_ipv6(self) -> None:
        port = refused_port("::1")
        self.watch_logs("::1", port)
        await self.connect_fails("::1", port, DIRECT, ConnectionRefused)

    async def test_name_not_found(self) -> None:
        name = "wraith-direct-missing.invalid"
        self.watch_logs(name, 2222)
        failure = await self.connect_fails(name, 2222, DIRECT, NameNotFound)
        self.assertEqual(open_failure_reason(failure), (2, "name not found"))

    async def test_invalid_destination(self) -> None:
        self.watch_logs("evil", 22)
        for host, port in (("evil\r\nhost", 22), ("evil.example", 0)):
            failure = await self.connect_fails(host, port, DIRECT, InvalidDestination)
            code, description = open_failure_reason(failure)
            self.assertEqual(code, OPEN_CONNECT_FAILED)
            self.assertTrue(description.startswith("destination "), description)

    async def test_cancel(self) -> None:
        # A connection that will never complete: a proxy that never answers.
        fake = FakeProxyFactory(FakeHTTPProxy, None, after="silent")
        proxy_port = listen(self, reactor, fake)
        proxy = parse_proxy_url(f"http://127.0.0.1:{proxy_port}")
        self.watch_logs("203.0.113.9", 4022)
        d = connect_outbound(reactor, "203.0.113.9", 4022, proxy, collector_factory(), timeout=WAIT)
        # Cancel while it waits for the proxy's answer.
        await wait_until(lambda: fake.requests, "the CONNECT request at the proxy", timeout=WAIT)
        d.cancel()
        await self.assertFailure(d, defer.CancelledError)
        self.assertEqual(open_failure_reason(defer.CancelledError())[0], OPEN_CONNECT_FAILED)


# -- SOCKS5: microsocks, and fakes --------------------------------------------------------


class Socks5Tests(OutboundTestCase):
    def setUp(self) -> None:
        self.socks = start_microsocks(self)
        self.proxy = parse_proxy_url(self.socks.url)

    async def test_ipv4(self) -> None:
        port = self.echo_port()
        self.watch_logs(port)
        proto = await self.connect("127.0.0.1", port, self.proxy)
        await self.round_trip(proto)

    async def test_name(self) -> None:
        port = self.echo_port()
        self.watch_logs("localhost", port)
        proto = await self.connect("localhost", port, self.proxy)
        await self.round_trip(proto)

    async def test_ipv6_literal(self) -> None:
        port = self.echo_port("::1")
        self.watch_logs("::1", port)
        proto = await self.connect("::1", port, self.proxy)
        await self.round_trip(proto)

    async def test_speaks_first(self) -> None:
        port = self.speaks_first_port()
        self.watch_logs(port)
        proto = await self.connect("127.0.0.1", port, self.proxy)
        await proto.wait_for(BANNER)

    async def test_address_is_ignored(self) -> None:
        # Proxy modes send the name; the proxy resolves it.
        port = self.echo_port()
        self.watch_logs("localhost", port)
        proto = await self.connect("localhost", port, self.proxy, address="192.0.2.1")
        await self.round_trip(proto)

    async def test_target_refused(self) -> None:
        port = refused_port()
        self.watch_logs(port)
        failure = await self.connect_fails("127.0.0.1", port, self.proxy, E.SocksConnectionRefused)
        self.assertIsInstance(failure, ConnectionRefused)
        self.assertEqual(open_failure_reason(failure), (2, "SOCKS proxy: connection refused"))

    # No "name not found" through a real proxy: the proxy would ask the
    # system's DNS server, which is off loopback.  The fake proxies cover the
    # failure replies, and DirectTests the lookup failure itself.

    async def test_proxy_down(self) -> None:
        self.socks.stop()
        port = self.echo_port()
        self.watch_logs(port)
        failure = await self.connect_fails("127.0.0.1", port, self.proxy, ProxyUnavailable)
        self.assertEqual(
            open_failure_reason(failure), (2, "proxy unreachable (connection refused)")
        )


class FakeSocksTests(OutboundTestCase):
    def fake(self, answer: bytes | None, **kwargs: Any) -> tuple[FakeProxyFactory, ProxySpec]:
        factory = FakeProxyFactory(FakeSocksProxy, answer, **kwargs)
        port = listen(self, reactor, factory)
        return factory, parse_proxy_url(f"socks5://127.0.0.1:{port}")

    async def test_every_reply_code(self) -> None:
        self.watch_logs("192.0.2.7", 2207)
        for code, cls in [
            (0x01, E.SocksGeneralFailure),
            (0x02, E.SocksNotAllowed),
            (0x03, E.SocksNetworkUnreachable),
            (0x04, E.SocksHostUnreachable),
            (0x05, E.SocksConnectionRefused),
            (0x06, E.SocksTTLExpired),
            (0x07, E.SocksCommandNotSupported),
            (0x08, E.SocksAddressTypeNotSupported),
            (0x7E, E.SocksError),
        ]:
            _, proxy = self.fake(socks_reply(code), after="silent")
            failure = await self.connect_fails("192.0.2.7", 2207, proxy, cls)
            self.assertEqual(failure.code, code)
            expected = OPEN_ADMINISTRATIVELY_PROHIBITED if code == 2 else OPEN_CONNECT_FAILED
            self.assertEqual(open_failure_reason(failure)[0], expected)

    async def test_ipv6_request_and_reply_with_data_in_one_write(self) -> None:
        factory, proxy = self.fake(socks_reply(0, b"\x04" + b"\x00" * 16) + BANNER)
        self.watch_logs("2001:db8::5", 2205)
        proto = await self.connect("2001:db8::5", 2205, proxy)
        await proto.wait_for(BANNER)
        self.assertEqual(
            factory.requests,
            [b"\x05\x01\x00\x04\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x05\x08\x9d"],
        )
        await self.round_trip(proto)

    async def test_reply_with_a_name_and_data(self) -> None:
        _, proxy = self.fake(socks_reply(0, b"\x03\x0bproxy.local") + BANNER)
        self.watch_logs("host.example", 2206)
        proto = await self.connect("host.example", 2206, proxy)
        await proto.wait_for(BANNER)

    async def test_authentication_required(self) -> None:
        _, proxy = self.fake(None, method_reply=b"\x05\xff", after="close")
        self.watch_logs("192.0.2.7", 2207)
        failure = await self.connect_fails("192.0.2.7", 2207, proxy, E.SocksAuthenticationRequired)
        self.assertEqual(open_failure_reason(failure), (2, "SOCKS proxy requires authentication"))

    async def test_garbage(self) -> None:
        _, proxy = self.fake(None, method_reply=b"HTTP/1.1 400 Bad Request\r\n\r\n", after="close")
        self.watch_logs("192.0.2.7", 2207)
        await self.connect_fails("192.0.2.7", 2207, proxy, ProxyProtocolError)

    async def test_closed_after_greeting(self) -> None:
        _, proxy = self.fake(None, method_reply=b"", after="close")
        self.watch_logs("192.0.2.7", 2207)
        failure = await self.connect_fails("192.0.2.7", 2207, proxy, ProxyProtocolError)
        self.assertIn("closed", str(failure))

    async def test_closed_after_request(self) -> None:
        _, proxy = self.fake(b"\x05\x00\x00", after="close")
        self.watch_logs("192.0.2.7", 2207)
        await self.connect_fails("192.0.2.7", 2207, proxy, ProxyProtocolError)

    async def test_silent_proxy_times_out(self) -> None:
        factory, proxy = self.fake(None, after="silent")
        self.watch_logs("192.0.2.7", 2207)
        failure = await self.connect_fails("192.0.2.7", 2207, proxy, ProxyTimeout, timeout=SHORT)
        self.assertEqual(open_failure_reason(failure), (2, "timed out waiting for the proxy"))
        self.assertEqual(len(factory.requests), 1)


# -- HTTP CONNECT: tinyproxy, and fakes ------------------------------------------------------


class HTTPConnectTests(OutboundTestCase):
    def setUp(self) -> None:
        self.tinyproxy = start_tinyproxy(self)
        self.proxy = parse_proxy_url(self.tinyproxy.url)

    async def test_echo(self) -> None:
        port = self.echo_port()
        self.watch_logs(port)
        proto = await self.connect("127.0.0.1", port, self.proxy)
        await self.round_trip(proto)
        await self.round_trip(proto, b"x" * 100_000)

    async def test_speaks_first(self) -> None:
        port = self.speaks_first_port()
        self.watch_logs(port)
        proto = await self.connect("127.0.0.1", port, self.proxy)
        await proto.wait_for(BANNER)
        await self.round_trip(proto)

    async def test_ipv6_literal(self) -> None:
        port = self.echo_port("::1")
        self.watch_logs("::1", port)
        proto = await self.connect("::1", port, self.proxy)
        await self.round_trip(proto)

    async def test_name(self) -> None:
        port = self.echo_port()
        self.watch_logs("localhost", port)
        proto = await self.connect("localhost", port, self.proxy)
        await self.round_trip(proto)

    async def test_target_refused(self) -> None:
        port = refused_port()
        self.watch_logs(port)
        failure = await self.connect_fails("127.0.0.1", port, self.proxy, ProxyRefused)
        self.assertEqual(failure.status, 500)
        self.assertEqual(
            open_failure_reason(failure), (2, "proxy refused the connection (HTTP 500)")
        )

    # No "name not found" through a real proxy: the proxy would ask the
    # system's DNS server, which is off loopback.  The fake proxies cover the
    # failure replies, and DirectTests the lookup failure itself.

    async def test_proxy_down(self) -> None:
        self.tinyproxy.stop()
        port = self.echo_port()
        self.watch_logs(port)
        await self.connect_fails("127.0.0.1", port, self.proxy, ProxyUnavailable)


class FakeHTTPProxyTests(OutboundTestCase):
    def fake(self, answer: bytes | None, **kwargs: Any) -> tuple[FakeProxyFactory, ProxySpec]:
        factory = FakeProxyFactory(FakeHTTPProxy, answer, **kwargs)
        port = listen(self, reactor, factory)
        return factory, parse_proxy_url(f"http://127.0.0.1:{port}")

    async def test_request(self) -> None:
        factory, proxy = self.fake(b"HTTP/1.1 200 OK\r\n\r\n")
        self.watch_logs("2001:db8::5", 2205)
        proto = await self.connect("2001:db8::5", 2205, proxy)
        await self.round_trip(proto)
        self.assertEqual(
            factory.requests,
            [b"CONNECT [2001:db8::5]:2205 HTTP/1.1\r\nHost: [2001:db8::5]:2205\r\n\r\n"],
        )

    async def test_refusals(self) -> None:
        self.watch_logs("host.example", 2201)
        for answer, status, code in [
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n\r\n',
                407,
                OPEN_CONNECT_FAILED,
            ),
            (b"HTTP/1.0 502 Bad Gateway for host.example:2201\r\n\r\nbody", 502, 2),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", 403, OPEN_ADMINISTRATIVELY_PROHIBITED),
        ]:
            _, proxy = self.fake(answer, after="silent")
            failure = await self.connect_fails("host.example", 2201, proxy, ProxyRefused)
            self.assertEqual(failure.status, status)
            self.assertEqual(open_failure_reason(failure)[0], code)
            self.assertIn(f"(HTTP {status})", str(failure))
        self.assertEqual(
            open_failure_reason(failure),
            (OPEN_ADMINISTRATIVELY_PROHIBITED, "proxy does not allow the connection (HTTP 403)"),
        )

    async def test_garbage(self) -> None:
        _, proxy = self.fake(b"SSH-2.0-NotAProxy\r\n", after="silent")
        self.watch_logs("host.example", 2201)
        failure = await self.connect_fails("host.example", 2201, proxy, ProxyProtocolError)
        self.assertEqual(open_failure_reason(failure), (2, "proxy sent an invalid status line"))

    async def test_closed_before_answering(self) -> None:
        _, proxy = self.fake(b"", after="close")
        self.watch_logs("host.example", 2201)
        await self.connect_fails("host.example", 2201, proxy, ProxyProtocolError)

    async def test_closed_mid_answer(self) -> None:
        _, proxy = self.fake(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n", after="close")
        self.watch_logs("host.example", 2201)
        failure = await self.connect_fails("host.example", 2201, proxy, ProxyProtocolError)
        self.assertEqual(str(failure), "proxy closed the connection during the handshake")

    async def test_200_and_server_bytes_in_one_write(self) -> None:
        _, proxy = self.fake(b"HTTP/1.1 200 Connection established\r\n\r\n" + BANNER)
        self.watch_logs("host.example", 2201)
        proto = await self.connect("host.example", 2201, proxy)
        # Delivered without anything sent: the bytes came with the 200.
        await proto.wait_for(BANNER)
        await self.round_trip(proto)

    async def test_folded_headers_and_lf(self) -> None:
        answer = b"HTTP/1.0 200 OK\nProxy-Agent: a\n  folded\n\tmore\nX: y\n\n" + BANNER
        _, proxy = self.fake(answer)
        self.watch_logs("host.example", 2201)
        proto = await self.connect("host.example", 2201, proxy)
        await proto.wait_for(BANNER)

    async def test_huge_header(self) -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n"
        _, proxy = self.fake(answer, after="silent")
        self.watch_logs("host.example", 2201)
        failure = await self.connect_fails("host.example", 2201, proxy, ProxyProtocolError)
        self.assertEqual(str(failure), "proxy answer header too large")

    async def test_silent_proxy_times_out(self) -> None:
        _, proxy = self.fake(None, after="silent")
        self.watch_logs("host.example", 2201)
        await self.connect_fails("host.example", 2201, proxy, ProxyTimeout, timeout=SHORT)

    async def test_endpoint_directly(self) -> None:
        # HTTPConnectEndpoint wraps any inner endpoint.
        factory, proxy = self.fake(b"HTTP/1.1 200 OK\r\n\r\n" + BANNER)
        self.watch_logs("host.example", 2201)
        assert proxy.port is not None
        inner = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port)
        endpoint = HTTPConnectEndpoint(inner, "host.example", 2201, timeout=WAIT, reactor=reactor)
        proto = await endpoint.connect(collector_factory())
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(proto.close()))
        await proto.wait_for(BANNER)

    async def test_half_close_reaches_a_half_closeable_protocol(self) -> None:
        fake, proxy = self.fake(b"HTTP/1.1 200 OK\r\n\r\n" + BANNER, after="half-close")
        self.watch_logs("host.example", 2201)
        factory = protocol.Factory.forProtocol(HalfCloseableCollector)
        proto = await connect_outbound(reactor, "host.example", 2201, proxy, factory, timeout=WAIT)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(proto.close()))
        await proto.read_closed.addTimeout(WAIT, reactor)
        self.assertEqual(proto.data, BANNER)
        # Our side still writes after the proxy's end of file.
        proto.transport.write(b"after-eof")
        for _ in range(int(WAIT / 0.05)):
            if fake.received == b"after-eof":
                break
            await task.deferLater(reactor, 0.05)
        self.assertEqual(fake.received, b"after-eof")

    async def test_half_close_closes_other_protocols(self) -> None:
        _, proxy = self.fake(b"HTTP/1.1 200 OK\r\n\r\n" + BANNER, after="half-close")
        self.watch_logs("host.example", 2201)
        proto = await self.connect("host.example", 2201, proxy)
        await proto.lost.addTimeout(WAIT, reactor)
        self.assertEqual(proto.data, BANNER)

    async def test_factory_refuses(self) -> None:
        _, proxy = self.fake(b"HTTP/1.1 200 OK\r\n\r\n")
        self.watch_logs("host.example", 2201)
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        d = connect_outbound(reactor, "host.example", 2201, proxy, factory, timeout=WAIT)
        await self.assertFailure(d, ConnectionFailed)


# -- Tor --------------------------------------------------------------------------------------


def _launched_processes() -> int:
    readers = [r for r in reactor.getReaders() if isinstance(r, ProcessReader)]
    return len(readers) + len(reapProcessHandlers)


class TorTests(OutboundTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_proxy_url("tor").kind, ProxyKind.TOR)
        self.assertEqual(parse_proxy_url("tor://127.0.0.1:9050").kind, ProxyKind.TOR_SOCKS)

    def test_bootstrap_phase(self) -> None:
        self.assertEqual(
            parse_bootstrap_phase(
                'NOTICE BOOTSTRAP PROGRESS=14 TAG=handshake SUMMARY="Handshaking"'
            ),
            (14, "Handshaking"),
        )
        self.assertEqual(parse_bootstrap_phase("garbage"), (-1, ""))

    def test_socks_listeners(self) -> None:
        endpoints = socks_listeners(reactor, '"127.0.0.1:9050" "[::1]:9150" "unix:/run/tor/socks"')
        self.assertEqual(
            [type(e).__name__ for e in endpoints],
            ["TCP4ClientEndpoint", "TCP6ClientEndpoint", "UNIXClientEndpoint"],
        )
        self.assertEqual(socks_listeners(reactor, ""), [])

    async def test_tor_mode_needs_a_provider(self) -> None:
        d = connect_outbound(
            reactor, "host.example", 22, ProxySpec(ProxyKind.TOR), collector_factory()
        )
        await self.assertFailure(d, ValueError)

    async def test_socks_port_of_an_offline_tor(self) -> None:
        tor = start_offline_tor(self)
        proxy = parse_proxy_url(tor.url)
        self.assertEqual(proxy.kind, ProxyKind.TOR_SOCKS)
        port = self.echo_port()
        self.watch_logs("host.example", 2201, port)
        # Tor takes a request for a name and, without a network, never answers it.
        await self.connect_fails("host.example", 2201, proxy, ProxyTimeout, timeout=SHORT)
        # It refuses private addresses at once ("general failure").
        await self.connect_fails("127.0.0.1", port, proxy, E.SocksGeneralFailure)

    async def test_attach_to_a_tor_that_has_not_bootstrapped(self) -> None:
        tor = start_offline_tor(self)
        provider = TorProvider(
            reactor,
            control_endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", tor.control_port),
            launch=False,
            bootstrap_timeout=SHORT,
            poll_interval=0.2,
        )
        self.addCleanup(provider.stop)
        connector = OutboundConnector(reactor, parse_proxy_url("tor"), timeout=WAIT, tor=provider)
        self.watch_logs("host.example", 2201)
        d = connector.connect("host.example", 2201, collector_factory())
        failure = await self.assertFailure(d, TorUnavailable)
        code, description = open_failure_reason(failure)
        self.assertEqual(code, OPEN_CONNECT_FAILED)
        self.assertIn("has not bootstrapped", description)
        self.assertRegex(description, r"\(at [0-9]+%: ")
        await connector.stop()

    async def test_no_control_port(self) -> None:
        provider = TorProvider(
            reactor,
            control_endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", refused_port()),
            launch=False,
        )
        self.watch_logs("host.example", 2201)
        d = connect_outbound(
            reactor,
            "host.example",
            2201,
            ProxySpec(ProxyKind.TOR),
            collector_factory(),
            timeout=WAIT,
            tor=provider,
        )
        failure = await self.assertFailure(d, TorUnavailable)
        self.assertEqual(str(failure), "cannot reach Tor's control port")

    async def test_launch_without_a_network(self) -> None:
        basedir = tempfile.mkdtemp(prefix="wraith-tor-launch-")
        self.addCleanup(shutil.rmtree, basedir, True)
        provider = TorProvider(
            reactor,
            attach=False,
            bootstrap_timeout=3.0,
            data_directory=os.path.join(basedir, "data"),
            tor_binary=offline_tor_wrapper(basedir),
        )
        self.addCleanup(provider.stop)
        before = _launched_processes()
        self.watch_logs("host.example", 2201)
        d = connect_outbound(
            reactor,
            "host.example",
            2201,
            ProxySpec(ProxyKind.TOR),
            collector_factory(),
            timeout=WAIT,
            tor=provider,
        )
        failure = await self.assertFailure(d, TorUnavailable)
        self.assertEqual(str(failure), "Tor did not bootstrap within 3 s")
        # txtorcon stops the Tor it launched; wait (bounded) until it is reaped.
        for _ in range(100):
            if _launched_processes() <= before:
                break
            await task.deferLater(reactor, 0.1)
        self.assertLessEqual(_launched_processes(), before)
        # txtorcon logs as errors the exit of the Tor it stopped and, when it
        # is quicker than Tor to its control socket, its failed attempts.
        self.flushLoggedErrors(RuntimeError, error.ConnectError)


# -- logging ----------------------------------------------------------------------------------


class NoDestinationInLogsTests(OutboundTestCase):
    def setUp(self) -> None:
        install_local_resolver(self)

    async def test_no_destination_in_any_event(self) -> None:
        """
        Successes and failures of every mode, with every log event (debug
        included) recorded: the package logs, and never a destination.
        """
        socks = start_microsocks(self)
        http = start_tinyproxy(self)
        echo = self.echo_port()
        echo6 = self.echo_port("::1")
        refused = refused_port()
        fake = FakeProxyFactory(FakeHTTPProxy, b"HTTP/1.1 407 No\r\n\r\n", after="silent")
        fake_port = listen(self, reactor, fake)
        missing = "wraith-logged-missing.invalid"
        events = self.watch_logs("127.0.0.1", "::1", "localhost", missing, echo, echo6, refused)

        for proxy in (DIRECT, parse_proxy_url(socks.url), parse_proxy_url(http.url)):
            for host, port in (("127.0.0.1", echo), ("::1", echo6), ("localhost", echo)):
                proto = await self.connect(host, port, proxy)
                await self.round_trip(proto)
                await proto.close()
            # A missing name only in direct mode: a proxy would ask the DNS
            # server off loopback (direct lookups use install_local_resolver).
            failing = [("127.0.0.1", refused)] + ([(missing, echo)] if proxy is DIRECT else [])
            for host, port in failing:
                d = connect_outbound(reactor, host, port, proxy, collector_factory(), timeout=WAIT)
                await self.assertFailure(d, OutboundError)
        d = connect_outbound(
            reactor,
            "localhost",
            echo,
            parse_proxy_url(f"http://127.0.0.1:{fake_port}"),
            collector_factory(),
        )
        await self.assertFailure(d, ProxyRefused)

        ours = [e for e in events if e.get("log_namespace", "").startswith("wraith_conch.outbound")]
        self.assertTrue(ours, "the outbound package logged nothing")
        self.assertTrue(any(e["log_level"] is LogLevel.debug for e in ours))
        self.assertTrue(any("failed" in formatEvent(e) for e in ours))
        self.assertTrue(any("established" in formatEvent(e) for e in ours))

    def test_the_check_catches_a_destination(self) -> None:
        events = [{"log_format": "to {where}", "where": ("10.9.8.7", 4567), "log_time": 1.0}]
        self.assertRaises(
            self.failureException, self.assert_no_destination_logged, events, {"10.9.8.7"}
        )
        self.assertRaises(
            self.failureException, self.assert_no_destination_logged, events, {"4567"}
        )
        self.assert_no_destination_logged(events, {"456", "10.9.8.70"})
