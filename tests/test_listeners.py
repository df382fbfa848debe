"""
--listen: parsing, the ports kept off tunnels, PROXY protocol headers, the
transport label, onion strings (no Tor), and a real gateway listening on
tcp:, ssl: and haproxy: at once with real ssh logins through each.
"""

from __future__ import annotations

import os
import struct

import attrs
from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.trial import unittest

from tests.gatewayharness import Gateway, free_port
from tests.listenerharness import (
    add_listener,
    capture_log,
    connection_events,
    self_signed_certificate,
    through_proxy_header,
    through_tls,
    tls_listen,
)
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.proxy_header_client import V2_SIGNATURE, header
from tests.sshd import start_sshd
from wraith_conch.config import Config, ConfigError, build_config
from wraith_conch.gateway.listeners import (
    ProxyHeaderFactory,
    build_listener,
    check_listen,
    listener_factory,
    parse_listen,
    read_proxy_header,
    tcp_addresses,
    transport_label,
)
from wraith_conch.gateway.stealth import StealthFactory
from wraith_conch.testing import ScriptedApprover, approve_all_except


class ParseTests(unittest.SynchronousTestCase):
    def test_kinds_and_labels(self):
        cases = {
            "tcp:2222:interface=127.0.0.1": ("tcp", "tcp", False, False),
            "tcp6:2222": ("tcp6", "tcp", False, False),
            "ssl:2223:privateKey=k.pem:certKey=c.pem": ("ssl", "tls", True, False),
            "SSL:2223": ("ssl", "tls", True, False),
            "haproxy:tcp:2224:interface=127.0.0.1": ("tcp", "tcp", False, True),
            "HAProxy:ssl:443": ("ssl", "tls", True, True),
            "onion:22:localPort=2225": ("onion", "onion", False, False),
            "unix:/run/wraith.sock": ("unix", "unix", False, False),
        }
        for description, (kind, label, tls, proxy) in cases.items():
            spec = parse_listen(description)
            self.assertEqual(
                (spec.kind, spec.label, spec.tls, spec.proxy_header),
                (kind, label, tls, proxy),
                description,
            )

    def test_inner_description_drops_the_haproxy_prefix(self):
        spec = parse_listen("haproxy:tcp:2224:interface=127.0.0.1")
        self.assertEqual(spec.inner, "tcp:2224:interface=127.0.0.1")
        self.assertEqual(spec.args, ("2224",))
        self.assertEqual(dict(spec.kwargs), {"interface": "127.0.0.1"})

    def test_malformed_haproxy(self):
        for description in ("haproxy", "haproxy:", "haproxy:haproxy:tcp:1"):
            with self.assertRaises(ValueError, msg=description):
                parse_listen(description)


class TcpAddressesTests(unittest.SynchronousTestCase):
    def test_forms(self):
        cases = {
            "tcp:2222:interface=127.0.0.1": [("127.0.0.1", 2222)],
            "tcp:2222": [(None, 2222)],
            "tcp:port=2222:interface=10.0.0.1": [("10.0.0.1", 2222)],
            "tcp:2222:10.0.0.2": [("10.0.0.2", 2222)],
            "tcp6:2222:interface=\\:\\:1": [("::1", 2222)],
            "ssl:2223:interface=127.0.0.1:privateKey=k.pem": [("127.0.0.1", 2223)],
            "ssl:443:privateKey=k.pem:certKey=c.pem": [(None, 443)],
            "haproxy:tcp:2224:interface=127.0.0.1": [("127.0.0.1", 2224)],
            "haproxy:ssl:2226:privateKey=k.pem": [(None, 2226)],
            # txtorcon picks the local port itself (on loopback) when listening.
            "onion:22:localPort=2225": [],
            "onion:22": [],
            "unix:/run/wraith.sock": [],
            "tcp:notaport": [],
            "haproxy:": [],
        }
        for description, expected in cases.items():
            self.assertEqual(tcp_addresses(description), expected, description)

    def test_config_protects_every_listener(self):
        fields = {f.name: None for f in attrs.fields(Config) if f.default is attrs.NOTHING}
        fields.update(
            listen=(
                "tcp:2222:interface=127.0.0.1",
                "ssl:2223:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem",
                "haproxy:tcp:2224:interface=10.9.8.7",
                "onion:22:controlPort=9051",
            ),
            approval="embedded",
        )
        config = Config(**fields, hub_listen="tcp:8022:interface=127.0.0.1")
        self.assertEqual(
            config.listen_addresses(),
            [
                ("127.0.0.1", 2222),
                ("127.0.0.1", 2223),
                ("10.9.8.7", 2224),
                ("127.0.0.1", 8022),
            ],
        )


class CheckListenTests(unittest.SynchronousTestCase):
    def test_onion_checked_without_tor(self):
        # A reactor that fails if used: checking must not launch or contact Tor.
        spec = check_listen(object(), "onion:22:localPort=2225:controlPort=9051")
        self.assertEqual((spec.kind, spec.label), ("onion", "onion"))
        check_listen(object(), "onion:22:localPort=2225:hiddenServiceDir=/var/lib/wraith/hs")
        check_listen(object(), "onion:22:localPort=2225:version=3:singleHop=false")
        check_listen(object(), "onion:22")

    def test_bad_onion_strings(self):
        cases = {
            "onion:localPort=2225": "one public port",
            "onion:22:23:localPort=2225": "one public port",
            "onion:99999:localPort=2225": "public port",
            "onion:22:localPort=x": "localPort",
            "onion:22:localPort=2225:bogus=1": "unknown option(s) bogus",
            "onion:22:localPort=2225:version=4": "version",
            "onion:22:localPort=2225:hiddenServiceDir=/x:privateKey=abc": "exclude",
        }
        for description, words in cases.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                check_listen(object(), description)
            self.assertIn(words, str(caught.exception), description)

    def test_other_strings_go_through_twisted(self):
        self.assertEqual(check_listen(reactor, "haproxy:tcp:2224").kind, "tcp")
        for description in ("bogus:what", "tcp:notaport", "ssl:2223:privateKey=/nonexistent"):
            with self.assertRaises(ValueError, msg=description):
                check_listen(reactor, description)


def v2_header(command: int = 0x21, family: int = 0x11, addresses: bytes | None = None) -> bytes:
    if addresses is None:
        addresses = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 50123, 2222)
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(addresses)) + addresses


class ReadProxyHeaderTests(unittest.SynchronousTestCase):
    def test_v1_tcp4(self):
        parsed = read_proxy_header(b"PROXY TCP4 203.0.113.7 127.0.0.1 50123 2222\r\nSSH-2.0-x\r\n")
        self.assertEqual(parsed.version, "v1")
        self.assertEqual(parsed.source, IPv4Address("TCP", "203.0.113.7", 50123))
        self.assertEqual(parsed.destination, IPv4Address("TCP", "127.0.0.1", 2222))
        self.assertEqual(parsed.rest, b"SSH-2.0-x\r\n")

    def test_v1_tcp6(self):
        parsed = read_proxy_header(b"PROXY TCP6 2001:db8::7 ::1 50123 2222\r\n")
        self.assertEqual(parsed.source, IPv6Address("TCP", "2001:db8::7", 50123))
        self.assertEqual(parsed.rest, b"")

    def test_v1_unknown_has_no_source(self):
        parsed = read_proxy_header(b"PROXY UNKNOWN\r\nSSH-")
        self.assertEqual((parsed.version, parsed.source, parsed.rest), ("v1", None, b"SSH-"))
        parsed = read_proxy_header(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n")
        self.assertEqual((parsed.version, parsed.source), ("v1", None))

    def test_v2_tcp4(self):
        parsed = read_proxy_header(v2_header() + b"SSH-2.0-x\r\n")
        self.assertEqual(parsed.version, "v2")
        self.assertEqual(parsed.source, IPv4Address("TCP", "203.0.113.7", 50123))
        self.assertEqual(parsed.rest, b"SSH-2.0-x\r\n")

    def test_v2_local_has_no_source(self):
        parsed = read_proxy_header(v2_header(command=0x20, family=0x00, addresses=b""))
        self.assertEqual((parsed.version, parsed.source), ("v2", None))

    def test_v2_unix_socket_addresses_are_not_used(self):
        paths = b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")
        parsed = read_proxy_header(v2_header(family=0x31, addresses=paths))
        self.assertEqual((parsed.version, parsed.source, parsed.destination), ("v2", None, None))

    def test_the_test_client_headers_parse(self):
        for version in ("v1", "v2"):
            parsed = read_proxy_header(header(version, "203.0.113.7", 1, "127.0.0.1", 2))
            self.assertEqual(parsed.source, IPv4Address("TCP", "203.0.113.7", 1), version)
            parsed = read_proxy_header(header(version, "2001:db8::7", 1, "::1", 2))
            self.assertEqual(parsed.source, IPv6Address("TCP", "2001:db8::7", 1), version)

    def test_every_prefix_is_incomplete(self):
        for whole in (b"PROXY TCP4 203.0.113.7 127.0.0.1 50123 2222\r\n", v2_header()):
            for cut in range(len(whole)):
                self.assertIsNone(read_proxy_header(whole[:cut]), whole[:cut])
            self.assertIsNotNone(read_proxy_header(whole))

    def test_not_a_header(self):
        for data in (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"PROXX",
            b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 2\r\n",
            b"PROXY TCP4 2001:db8::7 127.0.0.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n",
            b"PROXY " + b"1" * 200,
            V2_SIGNATURE + b"\x11\x11\x00\x00",  # version 1 in a v2 signature
            b"\r\n\r\nX",
        ):
            with self.assertRaises(InvalidProxyHeader, msg=data):
                read_proxy_header(data)


class Recording(Protocol):
    """Stands in for the SSH transport: what it saw, and its peer at connect."""

    peer_at_connect = None
    label_at_connect = None
    data = b""
    lost = False

    def connectionMade(self):
        self.peer_at_connect = self.transport.getPeer()
        self.label_at_connect = transport_label(self)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class ProxyHeaderWrapperTests(unittest.SynchronousTestCase):
    def connect(self, description: str = "haproxy:tcp:2224", stealth: bool = False):
        self.clock = Clock()
        self.inner = Recording()
        gateway = Factory.forProtocol(lambda: self.inner)
        factory = listener_factory(self.clock, description, gateway, stealth=stealth)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 40000))
        self.protocol.makeConnection(self.transport)
        return factory

    def test_ssh_starts_after_the_header_with_the_client_as_peer(self):
        factory = self.connect()
        self.assertIsInstance(factory, ProxyHeaderFactory)
        self.assertIsNone(self.inner.peer_at_connect)  # nothing started yet
        self.protocol.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 50123 2222\r\nSSH-2")
        self.assertEqual(self.inner.peer_at_connect, IPv4Address("TCP", "203.0.113.7", 50123))
        self.assertEqual(self.inner.label_at_connect, "proxy-v1")
        self.assertEqual(self.inner.data, b"SSH-2")
        self.protocol.dataReceived(b".0-x\r\n")
        self.assertEqual(self.inner.data, b"SSH-2.0-x\r\n")
        self.assertEqual(self.transport.value(), b"")  # the wrapper never writes itself

    def test_header_in_pieces_v2(self):
        self.connect()
        whole = v2_header()
        for i in range(len(whole)):
            self.protocol.dataReceived(whole[i : i + 1])
        self.assertEqual(self.inner.peer_at_connect, IPv4Address("TCP", "203.0.113.7", 50123))
        self.assertEqual(self.inner.label_at_connect, "proxy-v2")
        self.assertEqual(self.protocol.getHost(), IPv4Address("TCP", "127.0.0.1", 2222))

    def test_local_command_keeps_the_balancer_as_peer(self):
        self.connect()
        self.protocol.dataReceived(v2_header(command=0x20, family=0x00, addresses=b""))
        self.assertEqual(self.inner.peer_at_connect, IPv4Address("TCP", "10.0.0.5", 40000))

    def test_no_header_closes_without_starting_ssh(self):
        self.connect()
        self.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.inner.peer_at_connect)
        self.protocol.connectionLost(error.ConnectionDone())
        self.assertFalse(self.inner.lost)  # never started, never told

    def test_silence_times_out(self):
        self.connect()
        self.protocol.dataReceived(b"PROXY TCP4 ")
        self.clock.advance(9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oversized_v2_header_is_refused(self):
        self.connect()
        self.protocol.dataReceived(V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 5000)
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.inner.peer_at_connect)

    def test_connection_lost_after_start_reaches_ssh(self):
        self.connect()
        self.protocol.dataReceived(v2_header())
        self.protocol.connectionLost(error.ConnectionDone())
        self.assertTrue(self.inner.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stealth_is_not_applied_to_plain_tcp(self):
        factory = self.connect("tcp:2222", stealth=True)
        self.assertNotIsInstance(factory, (StealthFactory, ProxyHeaderFactory))
        # No wrapper: the SSH transport is connected at once, and labelled.
        self.assertEqual(self.inner.label_at_connect, "tcp")

    def test_stealth_inside_proxy_header_on_tls(self):
        factory = self.connect("haproxy:ssl:2226:privateKey=k.pem", stealth=True)
        self.assertIsInstance(factory.wrappedFactory, StealthFactory)


class TransportLabelTests(unittest.SynchronousTestCase):
    def test_without_a_listener_label(self):
        protocol = Protocol()
        protocol.makeConnection(StringTransport())
        self.assertEqual(transport_label(protocol), "tcp")

    def test_tls_detected_from_the_transport(self):
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        protocol = Protocol()
        protocol.makeConnection(transport)
        self.assertEqual(transport_label(protocol), "tls")

    def test_listener_labels(self):
        for description, expected in {
            "tcp:1": "tcp",
            "ssl:1": "tls",
            "onion:22:localPort=1": "onion",
            "unix:/x": "unix",
        }.items():
            inner = Recording()
            factory = listener_factory(Clock(), description, Factory.forProtocol(lambda i=inner: i))
            factory.buildProtocol(None).makeConnection(StringTransport())
            self.assertEqual(inner.label_at_connect, expected, description)

    def test_proxy_over_tls(self):
        inner = Recording()
        factory = listener_factory(
            Clock(), "haproxy:ssl:1:privateKey=k", Factory.forProtocol(lambda: inner)
        )
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(v2_header())
        self.assertEqual(inner.label_at_connect, "tls+proxy-v2")


class ConfigTests(unittest.TestCase):
    def options(self, **extra):
        from tests.gatewayharness import keygen

        base = self.mktemp()
        os.makedirs(base)
        identity = os.path.join(base, "id")
        pub = keygen(identity)
        keys = os.path.join(base, "authorized_keys")
        known = os.path.join(base, "known_hosts")
        with open(keys, "w") as f:
            f.write(pub + "\n")
        open(known, "w").close()
        options = {
            "host-key": os.path.join(base, "hk"),
            "target": "127.0.0.1:22",
            "target-known-hosts": known,
            "target-identity": identity,
            "authorized-keys": keys,
            "approval": "ws://127.0.0.1:9/",
        }
        options.update(extra)
        return base, options

    def test_onion_accepted_and_built_lazily(self):
        _, options = self.options(listen=["onion:22:localPort=2225:controlPort=9"])
        config = build_config(options, reactor)
        self.assertEqual(config.listen, ("onion:22:localPort=2225:controlPort=9",))

    def test_bad_onion_is_a_listen_error(self):
        _, options = self.options(listen=["onion:22:localPort=http"])
        with self.assertRaises(ConfigError) as caught:
            build_config(options, reactor)
        self.assertEqual(caught.exception.flag, "listen")
        self.assertIn("localPort", str(caught.exception))

    def test_several_listeners(self):
        base, options = self.options()
        key, cert = self_signed_certificate(base)
        options["listen"] = [
            "tcp:2222:interface=127.0.0.1",
            tls_listen(2223, key, cert),
            "haproxy:tcp:2224:interface=127.0.0.1",
        ]
        config = build_config(options, reactor)
        self.assertEqual(
            config.listen_addresses(),
            [("127.0.0.1", 2222), ("127.0.0.1", 2223), ("127.0.0.1", 2224)],
        )

    def test_stealth_needs_tls(self):
        for listen in ([], ["tcp:2222"], ["haproxy:tcp:2224", "onion:22:localPort=2225"]):
            _, options = self.options(listen=listen, stealth=1)
            with self.assertRaises(ConfigError) as caught:
                build_config(options, reactor)
            self.assertEqual(caught.exception.flag, "stealth", listen)
            self.assertIn("--stealth: needs a TLS listener", str(caught.exception))

    def test_stealth_with_tls(self):
        base, options = self.options(stealth=1)
        key, cert = self_signed_certificate(base)
        options["listen"] = ["tcp:2222", tls_listen(2223, key, cert)]
        self.assertTrue(build_config(options, reactor).stealth)
        del options["stealth"]
        self.assertFalse(build_config(options, reactor).stealth)


class OnionEndpointTests(unittest.TestCase):
    """The onion endpoint is built only when listening; no Tor is needed to test that."""

    timeout = 30

    @defer.inlineCallbacks
    def test_listen_contacts_the_control_port_then(self):
        control = free_port()  # nothing listens there: no Tor
        description = f"onion:22:localPort={free_port()}:controlPort={control}"
        endpoint, _ = build_listener(reactor, description, Factory.forProtocol(Protocol))
        self.assertEqual(type(endpoint).__name__, "_DeferredEndpoint")
        with self.assertRaises(error.ConnectionRefusedError):
            yield endpoint.listen(Factory.forProtocol(Protocol))


class SeveralListenersTests(unittest.TestCase):
    """One in-process gateway on tcp:, ssl: and haproxy:tcp: at once; real ssh through each."""

    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)
        self.events = capture_log(self)

    @defer.inlineCallbacks
    def login(self, argv, expected: bytes):
        code, out, err = yield spawn_ssh(reactor, argv, timeout=60)
        self.assertEqual((code, out.strip()), (0, expected), err)

    @defer.inlineCallbacks
    def test_tcp_tls_and_proxy_headers_together(self):
        key, cert = self_signed_certificate(self.gateway.base)
        tls_port, proxy_port = free_port(), free_port()
        yield add_listener(self, self.gateway, tls_listen(tls_port, key, cert))
        yield add_listener(self, self.gateway, f"haproxy:tcp:{proxy_port}:interface=127.0.0.1")

        yield self.login(self.gateway.ssh_argv("echo over-tcp"), b"over-tcp")
        yield self.login(through_tls(self.gateway, tls_port, "echo over-tls"), b"over-tls")
        yield self.login(
            through_proxy_header(self.gateway, proxy_port, "v1", "203.0.113.7", "echo v1"), b"v1"
        )
        yield self.login(
            through_proxy_header(self.gateway, proxy_port, "v2", "2001:db8::7", "echo v2"), b"v2"
        )
        opened = [
            (e["transport"], e["remote_addr"].rsplit(":", 1)[0])
            for e in connection_events(self.events)
        ]
        self.assertEqual(
            opened,
            [
                ("tcp", "127.0.0.1"),
                ("tls", "127.0.0.1"),
                ("proxy-v1", "203.0.113.7"),
                ("proxy-v2", "[2001:db8::7]"),
            ],
        )
        # ssh exits when it has its output; the gateway logs the close when
        # it sees the TCP connection go, a moment later.
        yield wait_until(
            lambda: len(connection_events(self.events, opened=False)) >= 4,
            "four connection-closed lines",
            timeout=10,
        )
        closed = [e["transport"] for e in connection_events(self.events, opened=False)]
        self.assertEqual(sorted(closed), ["proxy-v1", "proxy-v2", "tcp", "tls"])
        # The auth lines name the client behind the balancer too.
        auth = [
            e["remote_addr"]
            for e in self.events
            if e.get("event_kind") == "auth" and e.get("result") == "accepted"
        ]
        self.assertIn("203.0.113.7:50123", auth)
        self.assertIn("[2001:db8::7]:50123", auth)

    @defer.inlineCallbacks
    def test_proxy_listener_refuses_a_direct_client(self):
        proxy_port = free_port()
        yield add_listener(self, self.gateway, f"haproxy:tcp:{proxy_port}:interface=127.0.0.1")
        argv = self.gateway.ssh_argv("echo never")
        argv[argv.index("-p") + 1] = str(proxy_port)
        code, out, err = yield spawn_ssh(reactor, argv, timeout=60)
        self.assertEqual(code, 255)
        self.assertEqual(out, b"")
        self.assertEqual(connection_events(self.events), [])
        self.assertEqual(self.approver.requests, [])
