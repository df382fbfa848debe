"""
Unit tests of the admission limits (sans-IO) and of how the gateway's
transport applies them, over an in-memory transport and a fake clock.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from wraith_conch.gateway.admission import DISCONNECT_DRAIN
from wraith_conch.gateway.limits import (
    MAX_IDENTIFICATION_LINE,
    MAX_PREAMBLE_LINES,
    Admission,
    AdmissionLimits,
    Refusal,
    Ticket,
    address_key,
    identification_problem,
)
from wraith_conch.gateway.server import GatewayFactory, GatewayUserAuth


class AdmissionLimitsTests(unittest.SynchronousTestCase):
    def test_defaults(self):
        limits = AdmissionLimits()
        self.assertEqual((limits.max_connections_per_ip, limits.max_startups), (0, 100))

    def test_negative_refused(self):
        with self.assertRaises(ValueError):
            AdmissionLimits(max_connections_per_ip=-1)
        with self.assertRaises(ValueError):
            AdmissionLimits(max_startups=-1)


class AdmissionTests(unittest.SynchronousTestCase):
    def test_per_ip_limit(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=2, max_startups=0))
        first, second = admission.admit("10.0.0.1"), admission.admit("10.0.0.1")
        self.assertIsInstance(first, Ticket)
        self.assertIsInstance(second, Ticket)
        self.assertIs(admission.admit("10.0.0.1"), Refusal.PER_IP)
        # Another address is not affected.
        self.assertIsInstance(admission.admit("10.0.0.2"), Ticket)
        self.assertEqual(admission.connections_from("10.0.0.1"), 2)

    def test_per_ip_counts_authenticated_connections_too(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=1))
        ticket = admission.admit("10.0.0.1")
        ticket.authenticated()
        self.assertIs(admission.admit("10.0.0.1"), Refusal.PER_IP)

    def test_release_frees_the_slot(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=1))
        ticket = admission.admit("10.0.0.1")
        ticket.release()
        self.assertEqual(admission.connections_from("10.0.0.1"), 0)
        self.assertIsInstance(admission.admit("10.0.0.1"), Ticket)

    def test_table_forgets_addresses(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=1))
        for n in range(50):
            admission.admit(f"10.0.0.{n}").release()
        self.assertEqual(admission._per_key, {})
        self.assertEqual(admission.startups, 0)

    def test_zero_is_unlimited(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=0, max_startups=0))
        tickets = [admission.admit("10.0.0.1") for _ in range(500)]
        self.assertTrue(all(isinstance(t, Ticket) for t in tickets))
        self.assertEqual(admission.startups, 500)

    def test_startups_limit(self):
        admission = Admission(AdmissionLimits(max_startups=3))
        tickets = [admission.admit(f"10.0.0.{n}") for n in range(3)]
        self.assertIs(admission.admit("10.0.0.9"), Refusal.STARTUPS)
        # Authenticating leaves the startups...
        tickets[0].authenticated()
        self.assertEqual(admission.startups, 2)
        fourth = admission.admit("10.0.0.9")
        self.assertIsInstance(fourth, Ticket)
        self.assertIs(admission.admit("10.0.0.10"), Refusal.STARTUPS)
        # ...and so does closing before authenticating.
        tickets[1].release()
        self.assertIsInstance(admission.admit("10.0.0.10"), Ticket)

    def test_authenticated_connections_do_not_count_as_startups(self):
        admission = Admission(AdmissionLimits(max_startups=1))
        for n in range(10):
            ticket = admission.admit(f"10.0.0.{n}")
            self.assertIsInstance(ticket, Ticket)
            ticket.authenticated()
        self.assertEqual(admission.startups, 0)

    def test_per_ip_checked_before_startups(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=1, max_startups=1))
        admission.admit("10.0.0.1")
        self.assertIs(admission.admit("10.0.0.1"), Refusal.PER_IP)
        self.assertIs(admission.admit("10.0.0.2"), Refusal.STARTUPS)

    def test_refusal_takes_nothing(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=1, max_startups=1))
        admission.admit("10.0.0.1")
        for _ in range(10):
            admission.admit("10.0.0.1")
            admission.admit("10.0.0.2")
        self.assertEqual(admission.connections_from("10.0.0.1"), 1)
        self.assertEqual(admission.connections_from("10.0.0.2"), 0)
        self.assertEqual(admission.startups, 1)

    def test_ticket_calls_are_idempotent(self):
        admission = Admission(AdmissionLimits(max_connections_per_ip=5, max_startups=5))
        ticket = admission.admit("10.0.0.1")
        other = admission.admit("10.0.0.1")
        ticket.authenticated()
        ticket.authenticated()
        self.assertEqual(admission.startups, 1)
        ticket.release()
        ticket.release()
        ticket.authenticated()
        self.assertEqual(admission.startups, 1)
        self.assertEqual(admission.connections_from("10.0.0.1"), 1)
        other.release()
        self.assertEqual(admission.startups, 0)
        self.assertEqual(admission.connections_from("10.0.0.1"), 0)

    def test_refusal_results(self):
        self.assertEqual(Refusal.PER_IP.result, "refused-per-ip")
        self.assertEqual(Refusal.STARTUPS.result, "refused-startups")


class AddressKeyTests(unittest.SynchronousTestCase):
    def test_tcp_ignores_port(self):
        self.assertEqual(address_key(IPv4Address("TCP", "192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(address_key(IPv4Address("TCP", "192.0.2.1", 2)), "192.0.2.1")

    def test_ipv6(self):
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8::1", 22)), "2001:db8::1")

    def test_ipv4_mapped(self):
        self.assertEqual(address_key(IPv6Address("TCP", "::ffff:192.0.2.1", 22)), "192.0.2.1")

    def test_unix(self):
        self.assertEqual(address_key(UNIXAddress(None)), str(UNIXAddress(None)))


class IdentificationTests(unittest.SynchronousTestCase):
    def test_good_client(self):
        self.assertIsNone(identification_problem(b"SSH-2.0-OpenSSH_9.6\r\n", server=True))
        # Packets after the line are not looked at.
        self.assertIsNone(identification_problem(b"SSH-2.0-x\r\n" + b"\x00" * 10000, server=True))

    def test_partial_lines_wait(self):
        for partial in (b"", b"S", b"SS", b"SSH", b"SSH-", b"SSH-2.0-Open"):
            self.assertIsNone(identification_problem(partial, server=True), partial)
            self.assertIsNone(identification_problem(partial, server=False), partial)

    def test_client_junk_refused_at_once(self):
        for junk in (b"GET / HTTP/1.1\r\n", b"x", b"\x00\x00\x00\x14", b"SSX", b"\r\n"):
            self.assertEqual(identification_problem(junk, server=True), "not an SSH client")

    def test_client_lines_before_version_refused(self):
        self.assertEqual(
            identification_problem(b"hello\r\nSSH-2.0-x\r\n", server=True), "not an SSH client"
        )

    def test_long_line_without_newline(self):
        long = b"SSH-2.0-" + b"a" * 300
        self.assertEqual(
            identification_problem(long, server=True),
            "identification line longer than 255 bytes",
        )
        self.assertEqual(
            identification_problem(b"a" * 300, server=False),
            "identification line longer than 255 bytes",
        )

    def test_line_length_boundary(self):
        exact = b"SSH-2.0-" + b"a" * (MAX_IDENTIFICATION_LINE - 10) + b"\r\n"
        self.assertEqual(len(exact), MAX_IDENTIFICATION_LINE)
        self.assertIsNone(identification_problem(exact, server=True))
        longer = b"SSH-2.0-" + b"a" * (MAX_IDENTIFICATION_LINE - 9) + b"\r\n"
        self.assertEqual(
            identification_problem(longer, server=True),
            "identification line longer than 255 bytes",
        )
        # Incomplete: 254 bytes may still end in "\n"; 255 cannot.
        self.assertIsNone(identification_problem(b"SSH-" + b"a" * 250, server=True))
        self.assertIsNotNone(identification_problem(b"SSH-" + b"a" * 251, server=True))

    def test_ten_kilobyte_banner(self):
        banner = b"SSH-2.0-" + b"x" * 10240 + b"\r\n"
        self.assertIsNotNone(identification_problem(banner, server=True))
        self.assertIsNotNone(identification_problem(banner, server=False))

    def test_server_may_send_lines_first(self):
        self.assertIsNone(identification_problem(b"welcome\r\nhello\nSSH-2.0-x\r\n", server=False))
        self.assertIsNone(identification_problem(b"welcome\r\nhel", server=False))

    def test_preamble_lines_are_bounded(self):
        lines = b"motd\r\n" * MAX_PREAMBLE_LINES
        self.assertIsNone(identification_problem(lines + b"SSH-2.0-x\r\n", server=False))
        self.assertEqual(
            identification_problem(lines + b"motd\r\nSSH-2.0-x\r\n", server=False),
            f"more than {MAX_PREAMBLE_LINES} lines before the identification",
        )
        self.assertEqual(
            identification_problem(b"a" * 256 + b"\nSSH-2.0-x\r\n", server=False),
            "identification line longer than 255 bytes",
        )

    def test_preamble_line_with_ssh_inside(self):
        self.assertEqual(
            identification_problem(b"not SSH-2.0\r\nSSH-2.0-x\r\n", server=False),
            "SSH- inside a line before the identification",
        )


def _factory(clock, **kwargs) -> GatewayFactory:
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    factory = GatewayFactory(clock, Portal(None, []), key, **kwargs)
    factory.startFactory()
    return factory


class Events:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def results(self, kind="connection"):
        return [e["result"] for e in self.events if e.get("event_kind") == kind and "result" in e]


class TransportAdmissionTests(unittest.SynchronousTestCase):
    """The gateway transport over an in-memory connection."""

    def setUp(self):
        self.clock = Clock()
        self.events = Events(self)

    def connect(self, factory, host="192.0.2.7", port=40000):
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        wire = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(wire)
        return protocol, wire

    def lose(self, protocol, wire):
        wire.disconnecting = True
        protocol.connectionLost(None)

    def test_refused_before_the_banner(self):
        factory = _factory(self.clock, limits=AdmissionLimits(max_connections_per_ip=1))
        self.connect(factory)
        protocol, wire = self.connect(factory)
        self.assertEqual(wire.value(), b"")
        self.assertTrue(wire.disconnecting)
        self.assertIs(protocol.refusal, Refusal.PER_IP)
        self.assertIn("refused-per-ip", self.events.results())
        refused = [e for e in self.events.events if e.get("result") == "refused-per-ip"][0]
        self.assertEqual(refused["remote_addr"], "192.0.2.7:40000")
        self.lose(protocol, wire)
        # The refused connection held nothing.
        self.assertEqual(factory.admission.connections_from("192.0.2.7"), 1)
        self.assertNotIn(protocol, factory.live)

    def test_startups_refused_and_freed(self):
        factory = _factory(self.clock, limits=AdmissionLimits(max_startups=2))
        first = self.connect(factory, "192.0.2.1")
        self.connect(factory, "192.0.2.2")
        protocol, wire = self.connect(factory, "192.0.2.3")
        self.assertEqual(wire.value(), b"")
        self.assertIs(protocol.refusal, Refusal.STARTUPS)
        self.lose(*first)
        protocol, wire = self.connect(factory, "192.0.2.3")
        self.assertTrue(wire.value().startswith(b"SSH-2.0-"))

    def test_grace_time(self):
        factory = _factory(self.clock, login_grace_time=2.0)
        protocol, wire = self.connect(factory)
        self.assertTrue(wire.value().startswith(b"SSH-2.0-"))
        self.clock.advance(1.9)
        self.assertFalse(wire.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(wire.disconnecting)
        self.assertIn("grace-timeout", self.events.results())
        # A peer that never reads is aborted after the drain time.
        self.clock.advance(DISCONNECT_DRAIN)
        self.assertTrue(wire.disconnected)
        self.lose(protocol, wire)
        self.assertEqual(factory.admission.startups, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_cancels_timers(self):
        factory = _factory(self.clock)
        protocol, wire = self.connect(factory)
        self.lose(protocol, wire)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(factory.admission.startups, 0)

    def test_authentication_leaves_startups(self):
        factory = _factory(self.clock, limits=AdmissionLimits(max_startups=1))
        protocol, wire = self.connect(factory)
        protocol.avatar = object()
        protocol.logoutFunction = lambda: None
        from twisted.conch.ssh.service import SSHService

        protocol.setService(SSHService())
        self.assertEqual(factory.admission.startups, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.connect(factory, "192.0.2.99")
        self.assertEqual(factory.admission.startups, 1)

    def assertMalformed(self, data, problem=None):
        factory = _factory(self.clock)
        protocol, wire = self.connect(factory)
        protocol.dataReceived(data)
        self.assertTrue(wire.disconnecting)
        events = [e for e in self.events.events if e.get("result") == "malformed"]
        self.assertEqual(len(events), 1)
        if problem is not None:
            self.assertEqual(events[0]["problem"], problem)
        # Nothing more is parsed after the disconnect.
        protocol.dataReceived(b"\x00" * 100)
        self.lose(protocol, wire)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return events[0]

    def test_junk_instead_of_version(self):
        self.assertMalformed(b"GET / HTTP/1.0\r\n\r\n", "not an SSH client")

    def test_junk_without_newline(self):
        self.assertMalformed(b"SSH-2.0-" + b"A" * 1000, "identification line longer than 255 bytes")

    def test_oversized_packet(self):
        # Conch would buffer up to 1 MiB for this packet; the gateway stops
        # at 256 KiB.
        header = struct.pack("!LB", 1024 * 1024 - 4, 4)
        factory = _factory(self.clock)
        protocol, wire = self.connect(factory)
        protocol.dataReceived(b"SSH-2.0-test\r\n" + header)
        self.assertFalse(wire.disconnecting)
        fed = 0
        for _ in range(1024 // 4):
            if wire.disconnecting:
                break
            protocol.dataReceived(b"\x00" * 4096)
            fed += 4096
        self.assertTrue(wire.disconnecting)
        # Refused by its declared length, as soon as its first block is in.
        self.assertLessEqual(fed, 4096)
        events = [e for e in self.events.events if e.get("result") == "malformed"]
        self.assertEqual([e["problem"] for e in events], ["packet longer than 256 KiB"])
        self.lose(protocol, wire)

    def test_exception_while_parsing_is_a_disconnect(self):
        # A KEXINIT with nothing in it makes Conch's parser raise.
        payload = bytes([transport.MSG_KEXINIT]) + b"\x00" * 3
        padding = 8 - (5 + len(payload)) % 8
        padding += 8 if padding < 4 else 0
        packet = struct.pack("!LB", 1 + len(payload) + padding, padding) + payload
        packet += b"\x00" * padding
        event = self.assertMalformed(b"SSH-2.0-test\r\n" + packet)
        self.assertIn("while parsing", event["problem"])


@implementer(ICredentialsChecker)
class HeldChecker:
    """Password checks that wait until the test decides them."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self):
        self.pending: list[defer.Deferred] = []

    def requestAvatarId(self, credentials):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class NoRealm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        raise AssertionError("no login should succeed here")


class FakeGatewayTransport:
    def __init__(self, factory):
        self.factory = factory
        self.client_address = "192.0.2.5:4000"
        self.packets: list[int] = []
        self.disconnects: list[bytes] = []
        self.service = None
        self._admission_closing = False

    def isEncrypted(self, direction):
        return True

    def sendPacket(self, kind, payload):
        self.packets.append(kind)

    def sendDisconnect(self, reason, desc):
        if not self._admission_closing:
            self._admission_closing = True
            self.disconnects.append(desc)


class SerialAuthTests(unittest.SynchronousTestCase):
    """Pipelined authentication requests are checked one at a time."""

    def setUp(self):
        self.clock = Clock()
        self.checker = HeldChecker()
        factory = _factory(self.clock, max_auth_attempts=3)
        # No check succeeds in these tests, so the realm is never asked.
        factory.portal = Portal(NoRealm(), [self.checker])
        self.wire = FakeGatewayTransport(factory)
        self.auth = GatewayUserAuth()
        self.auth.clock = self.clock
        self.auth.transport = self.wire
        self.wire.service = self.auth
        self.auth.serviceStarted()
        self.addCleanup(self.auth.serviceStopped)
        self.events = Events(self)

    def request(self, password: bytes) -> None:
        self.auth.ssh_USERAUTH_REQUEST(
            NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\x00" + NS(password)
        )

    def test_pipelined_guesses_are_cut_at_the_limit(self):
        # As many guesses as allowed, and one more, without waiting.
        for n in range(3 + 1):
            self.request(b"guess%d" % n)
        # Only the first one is being checked; the others wait their turn.
        self.assertEqual(len(self.checker.pending), 1)
        checked = 0
        for _ in range(20):
            if not self.checker.pending:
                break
            self.checker.pending.pop(0).errback(UnauthorizedLogin("no"))
            checked += 1
            self.clock.advance(self.auth.passwordDelay)
        self.assertEqual(checked, 3)
        self.assertEqual(self.wire.disconnects, [b"too many bad auths"])
        self.assertIn("too-many-attempts", self.events.results("auth"))
        self.assertEqual(self.events.results("auth").count("rejected"), 3)

    def test_queue_is_bounded(self):
        for n in range(3 + 1 + 1):
            self.request(b"guess%d" % n)
        # One in flight, three waiting, the fifth is one too many.
        self.assertEqual(len(self.checker.pending), 1)
        self.assertEqual(self.wire.disconnects, [b"too many bad auths"])
        self.checker.pending.pop().errback(UnauthorizedLogin("no"))
        self.clock.advance(self.auth.passwordDelay)
        # Nothing queued is checked after the disconnect.
        self.assertEqual(self.checker.pending, [])

    def test_sequential_attempts_still_work(self):
        self.request(b"one")
        self.checker.pending.pop().errback(UnauthorizedLogin("no"))
        self.clock.advance(self.auth.passwordDelay)
        self.request(b"two")
        self.assertEqual(len(self.checker.pending), 1)
        self.assertEqual(self.wire.disconnects, [])
        self.checker.pending.pop().errback(UnauthorizedLogin("no"))
        self.clock.advance(self.auth.passwordDelay)
        self.assertEqual(self.wire.packets, [userauth.MSG_USERAUTH_FAILURE] * 2)


class LimitFlagTests(unittest.SynchronousTestCase):
    """The four flags, through build_config and twistd's option parser."""

    def setUp(self):
        import os
        import subprocess

        from twisted.internet import reactor

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        identity = os.path.join(base, "identity")
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", identity],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        known = os.path.join(base, "known_hosts")
        open(known, "w").close()
        keys_file = os.path.join(base, "authorized_keys")
        with open(keys_file, "w") as f, open(identity + ".pub") as pub:
            f.write(pub.read())
        self.options = {
            "host-key": os.path.join(base, "host_key"),
            "target": "127.0.0.1:22",
            "target-known-hosts": known,
            "target-identity": identity,
            "authorized-keys": keys_file,
            "approval": "ws://127.0.0.1:9/",
        }
        self.reactor = reactor

    def build(self, **flags):
        from wraith_conch.config import build_config

        return build_config({**self.options, **flags}, self.reactor)

    def assertConfigError(self, flag: str, needle: str, **flags) -> None:
        from wraith_conch.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            self.build(**flags)
        self.assertEqual(caught.exception.flag, flag)
        self.assertIn(needle, str(caught.exception))
        self.assertTrue(str(caught.exception).startswith(f"--{flag}: "))

    def test_defaults(self):
        config = self.build()
        self.assertEqual(
            (
                config.max_connections_per_ip,
                config.max_auth_attempts,
                config.login_grace_time,
                config.max_startups,
            ),
            (0, 6, 60.0, 100),
        )

    def test_values(self):
        config = self.build(
            **{
                "max-connections-per-ip": "4",
                "max-auth-attempts": "3",
                "login-grace-time": "2.5",
                "max-startups": "0",
            }
        )
        self.assertEqual(config.max_connections_per_ip, 4)
        self.assertEqual(config.max_auth_attempts, 3)
        self.assertEqual(config.login_grace_time, 2.5)
        self.assertEqual(config.max_startups, 0)

    def test_bad_values(self):
        self.assertConfigError("max-startups", "negative", **{"max-startups": "-1"})
        self.assertConfigError("max-startups", "not a whole number", **{"max-startups": "lots"})
        self.assertConfigError(
            "max-connections-per-ip", "negative", **{"max-connections-per-ip": "-3"}
        )
        self.assertConfigError(
            "max-connections-per-ip", "not a whole number", **{"max-connections-per-ip": "1.5"}
        )
        self.assertConfigError("max-auth-attempts", "at least 1", **{"max-auth-attempts": "0"})
        self.assertConfigError("login-grace-time", "between", **{"login-grace-time": "0"})
        self.assertConfigError("login-grace-time", "between", **{"login-grace-time": "-1"})
        self.assertConfigError("login-grace-time", "not a number", **{"login-grace-time": "x"})

    def test_twistd_options_reach_the_factory(self):
        from wraith_conch.gateway.assembly import build_gateway_factory
        from wraith_conch.tap import Options
        from wraith_conch.testing import ScriptedApprover

        options = Options()
        argv = [f"--{name}={value}" for name, value in self.options.items()]
        argv += [
            "--max-connections-per-ip=7",
            "--max-auth-attempts=2",
            "--login-grace-time=9",
            "--max-startups=11",
        ]
        options.parseOptions(argv)
        factory = build_gateway_factory(self.reactor, options.config, ScriptedApprover())
        self.assertEqual(factory.admission.limits, AdmissionLimits(7, 11))
        self.assertEqual(factory.max_auth_attempts, 2)
        self.assertEqual(factory.login_grace_time, 9.0)
