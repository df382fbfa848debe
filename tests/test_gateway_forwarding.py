"""
direct-tcpip through the gateway with the real OpenSSH client (C{-L}, C{-D}):
the destination policy, data both ways, failures per channel, and that no
log event ever names a destination.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time

from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from tests.gatewayharness import Gateway, free_port
from tests.localresolver import install_local_resolver
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from wraith_conch.testing import ScriptedApprover, approve_all_except


@implementer(IHalfCloseableProtocol)
class Echo(protocol.Protocol):
    """Echoes, and closes only after its peer's EOF (so nothing echoed is lost)."""

    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class CountThenReply(protocol.Protocol):
    """Counts what it gets and answers the count after the client's EOF."""

    received = 0

    def dataReceived(self, data):
        self.received += len(data)

    def readConnectionLost(self):
        self.transport.write(str(self.received).encode())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class EchoServer:
    """A TCP echo server on a loopback address, stopped by the test."""

    def __init__(self, testcase, interface: str = "127.0.0.1", server=Echo):
        self.port = reactor.listenTCP(0, protocol.Factory.forProtocol(server), interface=interface)
        testcase.addCleanup(self.port.stopListening)
        self.number = self.port.getHost().port


def loopback_policy(base: str, ports: list[int]) -> str:
    """A policy file that lets forwards reach the test's own loopback servers."""
    path = os.path.join(base, "forward-policy.toml")
    with open(path, "w") as f:
        f.write(
            "[[rule]]\n"
            'action = "allow"\n'
            "override_builtin = true\n"
            'cidr = ["127.0.0.1/32", "::1/128"]\n'
            f"ports = {ports!r}\n"
        )
    return path


#: Seconds an C{ssh -N} gets to exit on SIGTERM before it is killed.
STOP_GRACE = 5.0


class ForwardingSSH:
    """An C{ssh -N} holding forwards open, stopped by the test."""

    def __init__(self, testcase, gateway: Gateway, *forward_args: str):
        self.stderr = b""
        self.ended: defer.Deferred = defer.Deferred()
        proto = protocol.ProcessProtocol()
        proto.errReceived = self._err
        proto.processEnded = lambda reason: self.ended.callback(None)
        argv = gateway.ssh_argv(extra=["-N", "-o", "ExitOnForwardFailure=yes", *forward_args])
        self.process = reactor.spawnProcess(proto, argv[0], argv, env=os.environ.copy())
        testcase.addCleanup(self.stop)

    def _err(self, data: bytes) -> None:
        self.stderr += data

    def stop(self):
        if not self.ended.called:
            self.process.signalProcess("TERM")
            # OpenSSH 9.2's client can miss a SIGTERM that lands while it
            # handles a failed channel open (seen under load): then KILL.
            killer = reactor.callLater(STOP_GRACE, self._kill)

            def ended(result):
                if killer.active():
                    killer.cancel()
                return result

            self.ended.addBoth(ended)
        return self.ended

    def _kill(self) -> None:
        if not self.ended.called:
            try:
                self.process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


def exchange(port: int, payload: bytes, family=socket.AF_INET, host="127.0.0.1") -> bytes:
    """Send payload through a local forward and read back as much (blocking; run in a thread)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect((host, port))
        return _send_and_read(s, payload)


def _send_and_read(s: socket.socket, payload: bytes) -> bytes:
    """Send everything, half-close, read to EOF; a reset (refused forward) reads as nothing."""
    chunks = []
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        # Reset, broken pipe, or already closed (ENOTCONN): the forward was refused.
        pass
    return b"".join(chunks)


def exchange_then_close(port: int, payload: bytes) -> bytes:
    """Send and read the whole echo before closing: proxies need not carry a half-close."""
    received = bytearray()
    deadline = time.monotonic() + 60
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        view = memoryview(payload)
        sent = 0
        while len(received) < len(payload) and time.monotonic() < deadline:
            if sent < len(payload):
                sent += s.send(view[sent : sent + (1 << 16)])
            s.settimeout(0.01 if sent < len(payload) else 1)
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
    return bytes(received)


def socks5_exchange(socks_port: int, host: str, port: int, payload: bytes) -> bytes:
    """A SOCKS5 CONNECT through C{ssh -D}, then an exchange (blocking)."""
    with socket.create_connection(("127.0.0.1", socks_port), timeout=20) as s:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise OSError("no SOCKS5 greeting")
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        reply = b""
        while len(reply) < 10:  # IPv4-form reply: 10 bytes
            chunk = s.recv(10 - len(reply))
            if not chunk:
                raise OSError(f"SOCKS5 closed after {reply!r}")
            reply += chunk
        if reply[1] != 0:
            raise OSError(f"SOCKS5 refused: {reply!r}")
        return _send_and_read(s, payload)


@defer.inlineCallbacks
def wait_listening(port: int, family=socket.AF_INET, host="127.0.0.1", tries=400):
    # Up to 20 s: ssh -L listens only after its key exchange and login, which
    # take seconds on a loaded machine.
    for _ in range(tries):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if s.connect_ex((host, port)) == 0:
                return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise TimeoutError(f"nothing listening on {port}")


class ForwardingTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        install_local_resolver(self)  # no DNS query may leave the machine
        self.sshd = start_sshd(self)
        self.echo = EchoServer(self)
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def gateway(self, **overrides) -> Gateway:
        return Gateway(self, self.sshd, ScriptedApprover(approve_all_except()), **overrides)

    @defer.inlineCallbacks
    def forward(self, gateway, host: str, port: int):
        local = free_port()
        fwd = ForwardingSSH(self, gateway, "-L", f"{local}:{host}:{port}")
        yield wait_listening(local)
        return fwd, local

    @defer.inlineCallbacks
    def test_ten_megabytes_each_way(self):
        policy = loopback_policy(self.base, [self.echo.number])
        gateway = self.gateway(**{"forward-policy": policy})
        fwd, local = yield self.forward(gateway, "127.0.0.1", self.echo.number)
        payload = os.urandom(10_000_000)
        echoed = yield threads.deferToThread(exchange, local, payload)
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())
        self.assertNoDestinationLogged([str(self.echo.number)])

    @defer.inlineCallbacks
    def test_upload_then_reply_after_eof_through_rekeying(self):
        """
        A large upload while the TCP side pushes back, then EOF, then the
        server's answer: the half-close must reach the server (and OpenSSH's
        re-keying in between must not matter).
        """
        counter = EchoServer(self, server=CountThenReply)
        policy = loopback_policy(self.base, [counter.number])
        gateway = self.gateway(**{"forward-policy": policy})
        local = free_port()
        ForwardingSSH(
            self, gateway, "-o", "RekeyLimit=4M", "-L", f"{local}:127.0.0.1:{counter.number}"
        )
        yield wait_listening(local)
        size = 48 * 1024 * 1024
        reply = yield threads.deferToThread(exchange, local, b"\0" * size)
        self.assertEqual(reply, str(size).encode())

    @defer.inlineCallbacks
    def test_ipv6_direct(self):
        try:
            echo6 = EchoServer(self, interface="::1")
        except Exception as e:
            raise unittest.SkipTest(f"no IPv6 loopback: {e}")
        policy = loopback_policy(self.base, [echo6.number])
        gateway = self.gateway(**{"forward-policy": policy})
        fwd, local = yield self.forward(gateway, "[::1]", echo6.number)
        echoed = yield threads.deferToThread(exchange, local, b"over six")
        self.assertEqual(echoed, b"over six")

    @defer.inlineCallbacks
    def test_dynamic_forward_and_hundred_concurrent(self):
        policy = loopback_policy(self.base, [self.echo.number])
        gateway = self.gateway(**{"forward-policy": policy})
        socks = free_port()
        ForwardingSSH(self, gateway, "-D", f"127.0.0.1:{socks}")
        yield wait_listening(socks)
        payloads = [os.urandom(20_000) for _ in range(100)]
        results = yield defer.gatherResults(
            [
                threads.deferToThread(socks5_exchange, socks, "127.0.0.1", self.echo.number, p)
                for p in payloads
            ]
        )
        self.assertEqual(results, payloads)

    @defer.inlineCallbacks
    def test_default_policy_refuses_approval_bypass_and_internal_addresses(self):
        gateway = self.gateway()
        for host, port in (
            ("127.0.0.1", self.sshd.port),  # the target's sshd: would bypass approval
            ("127.0.0.1", self.echo.number),  # loopback
            ("169.254.169.254", 80),  # cloud metadata
            ("127.0.0.1", gateway.port_number),  # the gateway itself
        ):
            fwd, local = yield self.forward(gateway, host, port)
            echoed = yield threads.deferToThread(exchange, local, b"x")
            self.assertEqual(echoed, b"")
            yield fwd.stop()
            self.assertIn(b"administratively prohibited", fwd.stderr)
        self.assertNoDestinationLogged([str(self.sshd.port), str(self.echo.number), "169.254"])

    @defer.inlineCallbacks
    def test_failures_fail_only_that_channel(self):
        closed = free_port()
        policy = loopback_policy(self.base, [closed])
        gateway = self.gateway(**{"forward-policy": policy})
        # One connection carries a failing forward and a shell command.
        local, unknown = free_port(), free_port()
        fwd = ForwardingSSH(
            self,
            gateway,
            "-L",
            f"{local}:127.0.0.1:{closed}",
            "-L",
            f"{unknown}:no-such-host.invalid:80",
        )
        yield wait_listening(local)
        for port in (local, unknown):
            echoed = yield threads.deferToThread(exchange, port, b"x")
            self.assertEqual(echoed, b"")
        # ssh reports each failure on its stderr, read a moment later here.
        yield wait_until(
            lambda: b"name not found" in fwd.stderr and b"connection refused" in fwd.stderr,
            "both open failures on ssh's stderr",
            timeout=10,
        )
        self.assertIn(b"open failed: connect failed: connection refused", fwd.stderr)
        self.assertIn(b"open failed: connect failed: name not found", fwd.stderr)
        # The gateway still serves this operator.
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("echo still-here"))
        self.assertEqual((code, out.strip()), (0, b"still-here"), err)
        self.assertNoDestinationLogged([str(closed), "no-such-host"])

    def test_forwarding_off(self):
        gateway = self.gateway(forwarding="off")

        @defer.inlineCallbacks
        def run():
            fwd, local = yield self.forward(gateway, "127.0.0.1", self.echo.number)
            echoed = yield threads.deferToThread(exchange, local, b"x")
            self.assertEqual(echoed, b"")
            yield fwd.stop()
            self.assertIn(b"disabled", fwd.stderr)

        return run()

    def assertNoDestinationLogged(self, needles: list[str]) -> None:
        """ADR-006: no event, at any level, carries a forward's destination."""
        from twisted.logger import formatEvent

        for event in self.events:
            text = (
                formatEvent(event)
                + " "
                + " ".join(repr(v) for k, v in event.items() if not k.startswith("log_"))
            )
            for needle in needles:
                if needle == "127.0.0.1":
                    continue
                self.assertNotIn(needle, text, f"destination in log event: {text[:300]}")


class ProxyForwardingTests(unittest.TestCase):
    """C{ssh -L} through the gateway with C{--proxy}: real microsocks and tinyproxy."""

    timeout = 120

    def setUp(self):
        install_local_resolver(self)
        self.sshd = start_sshd(self)
        self.echo = EchoServer(self)
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.policy = loopback_policy(self.base, [self.echo.number])

    def gateway(self, proxy: str) -> Gateway:
        return Gateway(
            self,
            self.sshd,
            ScriptedApprover(approve_all_except()),
            **{"forward-policy": self.policy, "proxy": proxy},
        )

    @defer.inlineCallbacks
    def check_round_trip(self, proxy: str):
        gateway = self.gateway(proxy)
        local = free_port()
        ForwardingSSH(self, gateway, "-L", f"{local}:127.0.0.1:{self.echo.number}")
        yield wait_listening(local)
        payload = os.urandom(2_000_000)
        echoed = yield threads.deferToThread(exchange_then_close, local, payload)
        self.assertEqual(len(echoed), len(payload))
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())

    def test_socks5(self):
        from tests.proxies import start_microsocks

        socks = start_microsocks(self)
        return self.check_round_trip(f"socks5://127.0.0.1:{socks.port}")

    def test_tor_socks_port(self):
        """tor://HOST:PORT speaks SOCKS5 to Tor's SOCKS port; microsocks stands in."""
        from tests.proxies import start_microsocks

        socks = start_microsocks(self)
        return self.check_round_trip(f"tor://127.0.0.1:{socks.port}")

    def test_http_connect(self):
        from tests.proxies import start_tinyproxy

        http = start_tinyproxy(self)
        return self.check_round_trip(f"http://127.0.0.1:{http.port}")

    @defer.inlineCallbacks
    def test_proxy_down_fails_only_that_channel(self):
        gateway = self.gateway(f"socks5://127.0.0.1:{free_port()}")
        local = free_port()
        fwd = ForwardingSSH(self, gateway, "-L", f"{local}:127.0.0.1:{self.echo.number}")
        yield wait_listening(local)
        echoed = yield threads.deferToThread(exchange, local, b"x")
        self.assertEqual(echoed, b"")
        # ssh reports the failure on its stderr, read a moment later here.
        yield wait_until(
            lambda: b"open failed" in fwd.stderr, "the open failure on ssh's stderr", timeout=10
        )
        self.assertIn(b"open failed: connect failed", fwd.stderr)
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("echo shell-still-works"))
        self.assertEqual((code, out.strip()), (0, b"shell-still-works"), err)


class ProtectedPortsTests(unittest.TestCase):
    def test_embedded_hub_port_is_protected(self):
        import attrs

        from wraith_conch.config import Config

        fields = {f.name: None for f in attrs.fields(Config) if f.default is attrs.NOTHING}
        fields.update(listen=("tcp:2222:interface=10.1.2.3",), approval="embedded")
        config = Config(**fields, hub_listen="tcp:8022:interface=10.1.2.4")
        self.assertEqual(config.listen_addresses(), [("10.1.2.3", 2222), ("10.1.2.4", 8022)])
        outside = attrs.evolve(config, approval="ws://127.0.0.1:9/")
        self.assertEqual(outside.listen_addresses(), [("10.1.2.3", 2222)])
