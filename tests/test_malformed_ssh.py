"""
Malformed SSH traffic against the in-process gateway: junk, truncated and
oversized packets, before and after a real key exchange, and a bounded
seeded fuzz loop.  Each bad connection must be dropped, the gateway must
keep running (a real OpenSSH login works afterwards; trial fails a test on
any logged unhandled error), nothing may stay counted, and memory must stay
bounded.  tests/fuzz/fuzz_gateway.py runs the long version.
"""

from __future__ import annotations

import random
import struct

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from tests.fuzz.cases import (
    SOURCE,
    VERSION,
    after_kex,
    fuzz_case,
    kexinit_payload,
    plain_packet,
    rss_kib,
)
from tests.gatewayharness import Gateway
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.rawclients import connect_raw
from tests.sshd import start_sshd
from tests.test_gateway_auth import CapturedLog
from wraith_conch.testing import ScriptedApprover, approve_all_except
from wraith_conch.upstream.client import (
    TargetAddress,
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
)
from wraith_conch.upstream.known_hosts import KnownHosts

FUZZ_SEED = 20261121
FUZZ_CASES = 300


class MalformedTrafficTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.sshd = start_sshd(self)
        self.log = CapturedLog(self)
        self.gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except()))
        self.factory = self.gateway.port.factory

    @defer.inlineCallbacks
    def legit_login(self):
        code, out, err = yield spawn_ssh(reactor, self.gateway.ssh_argv("echo alive"))
        self.assertEqual((code, out.strip()), (0, b"alive"), err)

    @defer.inlineCallbacks
    def assert_nothing_left(self):
        yield wait_until(
            lambda: (
                not self.factory.live
                and self.factory.admission.startups == 0
                and self.factory.admission.connections_from(SOURCE) == 0
            ),
            "every bad connection closed and uncounted",
            timeout=15,
        )

    def malformed_problems(self) -> list[str]:
        return [
            e["problem"] for e in self.log.of_kind("connection") if e.get("result") == "malformed"
        ]

    @defer.inlineCallbacks
    def send(self, payload: bytes, half_close: bool = False):
        client = connect_raw(
            reactor,
            self,
            self.gateway.port_number,
            source=SOURCE,
            payload=payload,
            close_after_write=half_close,
        )
        yield wait_until(lambda: client.lost, "the gateway to drop it", timeout=10)
        return client

    @defer.inlineCallbacks
    def test_ten_kilobyte_banner(self):
        yield self.send(b"SSH-2.0-" + b"x" * 10240 + b"\r\n")
        self.assertEqual(self.malformed_problems(), ["identification line longer than 255 bytes"])
        yield self.assert_nothing_left()
        yield self.legit_login()

    @defer.inlineCallbacks
    def test_junk_without_newline(self):
        # 64 KiB and no newline: dropped after 255 bytes, never buffered.
        yield self.send(b"SSH-2.0-" + b"A" * 65536)
        yield self.send(b"A" * 65536)
        self.assertEqual(
            self.malformed_problems(),
            ["identification line longer than 255 bytes", "not an SSH client"],
        )
        yield self.assert_nothing_left()
        yield self.legit_login()

    @defer.inlineCallbacks
    def test_http_request(self):
        client = yield self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.got_banner)
        self.assertEqual(self.malformed_problems(), ["not an SSH client"])
        yield self.assert_nothing_left()

    @defer.inlineCallbacks
    def test_oversized_packet_length_before_kex(self):
        rng = random.Random(1)
        # Beyond Conch's 1 MiB, and between 256 KiB and 1 MiB (the gateway's
        # own limit, reached once that much has been buffered).
        yield self.send(VERSION + struct.pack("!LB", 0x7FFFFFF0, 4) + rng.randbytes(64))
        yield self.send(VERSION + struct.pack("!LB", 1000 * 1024, 4) + b"\x00" * (300 * 1024))
        self.assertEqual(self.malformed_problems(), ["packet longer than 256 KiB"])
        yield self.assert_nothing_left()
        yield self.legit_login()

    @defer.inlineCallbacks
    def test_truncated_and_random_before_kex(self):
        rng = random.Random(2)
        valid = VERSION + plain_packet(kexinit_payload(rng))
        for cut in (1, 5, len(VERSION), len(VERSION) + 3, len(valid) - 1):
            yield self.send(valid[:cut], half_close=True)
        for _ in range(5):
            yield self.send(VERSION + rng.randbytes(512), half_close=True)
        # A packet too short for its message type makes Conch's parser raise.
        yield self.send(VERSION + plain_packet(bytes([20]) + b"\x00" * 3))
        problems = self.malformed_problems()
        self.assertTrue(problems and problems[-1].endswith(" while parsing"), problems)
        yield self.assert_nothing_left()
        yield self.legit_login()

    @defer.inlineCallbacks
    def test_after_key_exchange(self):
        modes = ["garbage", "bad-mac", "truncated", "oversized", "huge-length", "bit-flip"]
        for seed, mode in enumerate(modes):
            closed = yield threads.deferToThread(after_kex, self.gateway.port_number, mode, seed)
            self.assertTrue(closed, mode)
        self.assertIn("packet longer than 256 KiB", self.malformed_problems())
        yield self.assert_nothing_left()
        yield self.legit_login()

    @defer.inlineCallbacks
    def test_bounded_fuzz_loop(self):
        rng = random.Random(FUZZ_SEED)
        cases = [fuzz_case(rng) for _ in range(FUZZ_CASES)]

        @defer.inlineCallbacks
        def run(batch):
            clients = [
                connect_raw(
                    reactor,
                    self,
                    self.gateway.port_number,
                    source=SOURCE,
                    payload=payload,
                    close_after_write=True,
                )
                for payload in batch
            ]
            yield wait_until(lambda: all(c.lost for c in clients), "a fuzz wave", timeout=15)

        # Warm up (first-use allocations), then measure.
        yield run(cases[:25])
        yield self.assert_nothing_left()
        before = rss_kib()
        for start in range(25, len(cases), 25):
            yield run(cases[start : start + 25])
        yield self.assert_nothing_left()
        growth = rss_kib() - before
        self.assertLess(growth, 20 * 1024, f"RSS grew by {growth} KiB")
        # Post-kex fuzz: real key exchanges, then seeded garbage.
        for n in range(10):
            closed = yield threads.deferToThread(
                after_kex, self.gateway.port_number, "garbage", FUZZ_SEED + n
            )
            self.assertTrue(closed)
        yield self.assert_nothing_left()
        yield self.legit_login()


class _Babbler(Protocol):
    """A fake target that sends C{payload} and then waits."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload)


class UpstreamIdentificationTests(unittest.TestCase):
    """The gateway's SSH client bounds what a target sends before its version."""

    timeout = 30

    @defer.inlineCallbacks
    def connect_to(self, payload: bytes):
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _Babbler(payload)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        started = reactor.seconds()
        with self.assertRaises(UpstreamError) as caught:
            yield connect_upstream(
                reactor,
                TargetAddress("127.0.0.1", port.getHost().port),
                KnownHosts(),
                UpstreamLogin(user="nobody"),
                timeout=10,
            )
        self.assertLess(reactor.seconds() - started, 5)
        return str(caught.exception)

    @defer.inlineCallbacks
    def test_long_line_without_newline(self):
        message = yield self.connect_to(b"A" * 10000)
        self.assertIn("identification line longer than 255 bytes", message)

    @defer.inlineCallbacks
    def test_ten_kilobyte_banner(self):
        message = yield self.connect_to(b"SSH-2.0-" + b"x" * 10240 + b"\r\n")
        self.assertIn("identification line longer than 255 bytes", message)

    @defer.inlineCallbacks
    def test_endless_short_lines(self):
        message = yield self.connect_to(b"hello\r\n" * 1000)
        self.assertIn("lines before the identification", message)

    @defer.inlineCallbacks
    def test_ssh_inside_a_preamble_line(self):
        message = yield self.connect_to(b"motd SSH-2.0-x\r\n" + b"\x00" * 64)
        self.assertIn("SSH- inside a line", message)
