"""
--stealth: the classification and the decoy (sans-IO), the wrapper on an
in-memory transport, then real TLS listeners: curl gets nginx's 404, real
ssh over TLS logs in, a silent client is closed, and twistd refuses
--stealth without a TLS listener.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time

from twisted.internet import defer, error, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.approval_service import ApprovalService
from tests.gatewayharness import Gateway, free_port, keygen
from tests.listenerharness import (
    add_listener,
    capture_log,
    connection_events,
    self_signed_certificate,
    through_tls,
    tls_listen,
)
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from tests.test_twistd import REPO, operator_argv, pin_gateway_key, stop_process, twistd_argv
from wraith_conch.gateway.listeners import listener_factory
from wraith_conch.gateway.stealth import (
    DEFAULT_TIMEOUT,
    MAX_PEEK,
    NGINX_404_BODY,
    StealthFactory,
    Verdict,
    classify,
    decoy_response,
)
from wraith_conch.testing import ScriptedApprover, approve_all_except


class ClassifyTests(unittest.SynchronousTestCase):
    def test_ssh_banner(self):
        for data in (b"SSH-", b"SSH-2.0-OpenSSH_9.2p1\r\n", b"SSH-1.99-x\r\n", b"SSH-2.0-x"):
            self.assertIs(classify(data), Verdict.SSH, data)

    def test_every_prefix_of_a_banner_waits(self):
        for cut in range(4):
            self.assertIs(classify(b"SSH-2.0-x\r\n"[:cut]), Verdict.WAIT, cut)

    def test_http_request_waits_for_its_head(self):
        request = b"GET / HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/7.88.1\r\n\r\n"
        for cut in range(1, len(request)):
            self.assertIs(classify(request[:cut]), Verdict.WAIT, request[:cut])
        self.assertIs(classify(request), Verdict.DECOY)
        self.assertIs(classify(b"GET /\n\n"), Verdict.DECOY)  # bare-LF clients

    def test_not_ssh_but_looks_close(self):
        for data in (b"ssh-2.0-x\r\n\r\n", b"SSH 2.0\n\n", b"SSx\n\n", b" SSH-2.0-x\n\n"):
            self.assertIs(classify(data), Verdict.DECOY, data)

    def test_binary_waits_until_the_limit(self):
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a TLS ClientHello (TLS in TLS)
        self.assertIs(classify(hello), Verdict.WAIT)
        self.assertIs(classify(b"\x00" * (MAX_PEEK - 1)), Verdict.WAIT)
        self.assertIs(classify(b"\x00" * MAX_PEEK), Verdict.DECOY)
        self.assertIs(classify(b"\x00" * 10, limit=10), Verdict.DECOY)


class DecoyTests(unittest.SynchronousTestCase):
    def parse(self, response: bytes):
        head, _, body = response.partition(b"\r\n\r\n")
        status, *lines = head.decode("ascii").split("\r\n")
        return status, dict(line.split(": ", 1) for line in lines), body

    def test_get(self):
        status, headers, body = self.parse(decoy_response(b"GET / HTTP/1.1\r\n\r\n", 0))
        self.assertEqual(status, "HTTP/1.1 404 Not Found")
        self.assertEqual(headers["Server"], "nginx")
        self.assertEqual(headers["Date"], "Thu, 01 Jan 1970 00:00:00 GMT")
        self.assertEqual(headers["Content-Type"], "text/html")
        self.assertEqual(headers["Content-Length"], str(len(body)))
        self.assertEqual(headers["Connection"], "close")
        self.assertEqual(body, NGINX_404_BODY)
        self.assertIn(b"<center>nginx</center>", body)
        self.assertIn(b"<title>404 Not Found</title>", body)

    def test_head_has_no_body(self):
        status, headers, body = self.parse(decoy_response(b"HEAD / HTTP/1.1\r\n\r\n", 0))
        self.assertEqual((status, body), ("HTTP/1.1 404 Not Found", b""))
        self.assertEqual(headers["Content-Length"], str(len(NGINX_404_BODY)))

    def test_garbage_gets_the_same_page(self):
        self.assertEqual(
            decoy_response(b"\x00\x01", 1e9), decoy_response(b"POST /x HTTP/1.0\r\n\r\n", 1e9)
        )


class Recording(Protocol):
    data = b""
    connected_at = None
    lost = False

    def connectionMade(self):
        self.connected_at = True

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class StealthWrapperTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1e9)
        self.inner = Recording()
        factory = listener_factory(
            self.clock,
            "ssl:2223:privateKey=k.pem",
            Factory.forProtocol(lambda: self.inner),
            stealth=True,
        )
        self.assertIsInstance(factory, StealthFactory)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def test_silent_until_the_client_speaks(self):
        self.assertIsNone(self.inner.connected_at)
        self.assertEqual(self.transport.value(), b"")

    def test_ssh_banner_starts_ssh_and_is_replayed(self):
        self.protocol.dataReceived(b"SS")
        self.assertIsNone(self.inner.connected_at)
        self.protocol.dataReceived(b"H-2.0-OpenSSH_9.2\r\n")
        self.assertTrue(self.inner.connected_at)
        self.assertEqual(self.inner.data, b"SSH-2.0-OpenSSH_9.2\r\n")
        self.protocol.dataReceived(b"\x00\x00\x01")
        self.assertEqual(self.inner.data, b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timeout is gone
        self.protocol.connectionLost(error.ConnectionDone())
        self.assertTrue(self.inner.lost)

    def test_http_gets_404_and_is_closed(self):
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.protocol.dataReceived(b"\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertTrue(self.transport.value().endswith(NGINX_404_BODY))
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.inner.connected_at)
        self.protocol.dataReceived(b"SSH-2.0-late\r\n")  # too late: ignored
        self.assertIsNone(self.inner.connected_at)
        self.protocol.connectionLost(error.ConnectionDone())
        self.assertFalse(self.inner.lost)

    def test_silent_client_closed_after_the_timeout(self):
        self.clock.advance(DEFAULT_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")  # nothing to tell a scanner
        self.assertIsNone(self.inner.connected_at)

    def test_half_a_request_gets_404_at_the_timeout(self):
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(DEFAULT_TIMEOUT + 0.1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_half_a_banner_at_the_timeout_gets_404(self):
        self.protocol.dataReceived(b"SS")
        self.clock.advance(DEFAULT_TIMEOUT + 0.1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404"))
        self.assertIsNone(self.inner.connected_at)

    def test_endless_binary_is_bounded(self):
        for _ in range(MAX_PEEK // 1000 + 1):
            self.protocol.dataReceived(b"\x00" * 1000)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404"))
        self.assertIsNone(self.inner.connected_at)

    def test_answers_alpn_like_nginx(self):
        from twisted.internet.interfaces import IProtocolNegotiationFactory

        factory = self.protocol.factory
        self.assertTrue(IProtocolNegotiationFactory.providedBy(factory))
        self.assertEqual(factory.acceptableProtocols(), [b"http/1.1"])
        # Behind haproxy:ssl: the outer factory passes the answer on.
        outer = listener_factory(
            self.clock, "haproxy:ssl:1:privateKey=k", Factory.forProtocol(Protocol), stealth=True
        )
        self.assertEqual(IProtocolNegotiationFactory(outer).acceptableProtocols(), [b"http/1.1"])

    def test_lost_before_deciding(self):
        self.protocol.dataReceived(b"GE")
        self.protocol.connectionLost(error.ConnectionLost())
        self.assertFalse(self.inner.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def tls_session(port: int, send: bytes | None, quiet_for: float = 0.5, wait: float = 15.0):
    """
    (blocking, for a thread) Open TLS to 127.0.0.1:port; read for
    C{quiet_for} s, send C{send} (if any), then read until the server closes.
    Returns (bytes before sending, bytes after, seconds from connect to close).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(quiet_for)
            try:
                before = tls.recv(4096)
            except TimeoutError:
                before = b""
            if send is not None:
                tls.sendall(send)
            tls.settimeout(wait)
            after = b""
            deadline = started + wait
            while time.monotonic() < deadline:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, ConnectionResetError, TimeoutError):
                    break  # closed, or (an SSH server) still open after C{wait}
                if not chunk:
                    break
                after += chunk
            return before, after, time.monotonic() - started


class StealthGatewayTests(unittest.TestCase):
    """An in-process gateway with a stealth TLS listener; real curl, ssh and TLS clients."""

    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)
        self.events = capture_log(self)
        self.key, self.cert = self_signed_certificate(self.gateway.base)
        self.tls_port = free_port()
        return add_listener(
            self,
            self.gateway,
            tls_listen(self.tls_port, self.key, self.cert),
            stealth=True,
            stealth_timeout=1.0,
        )

    @defer.inlineCallbacks
    def test_curl_gets_nginx_404(self):
        argv = ["curl", "-k", "-s", "-i", "--max-time", "10", f"https://127.0.0.1:{self.tls_port}/"]
        code, out, err = yield spawn_ssh(reactor, argv, timeout=30)
        self.assertEqual(code, 0, err)
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 404 Not Found\r\n"), out)
        self.assertIn(b"\r\nServer: nginx\r\n", head)
        self.assertEqual(body, NGINX_404_BODY)
        self.assertNotIn(b"SSH", out)
        self.assertEqual(connection_events(self.events), [])  # no SSH connection was made
        [closed] = [e for e in self.events if e.get("event_kind") == "prelude"]
        self.assertEqual(closed["prelude"], "stealth")

    @defer.inlineCallbacks
    def test_ssh_over_tls_still_works(self):
        argv = through_tls(self.gateway, self.tls_port, "echo stealthy; exit 3")
        code, out, err = yield spawn_ssh(reactor, argv, timeout=60)
        self.assertEqual((code, out.strip()), (3, b"stealthy"), err)
        [opened] = connection_events(self.events)
        self.assertEqual(opened["transport"], "tls")
        [request] = self.approver.requests
        self.assertEqual(request.command, "echo stealthy; exit 3")

    @defer.inlineCallbacks
    def test_silent_client_is_closed_and_hears_nothing(self):
        before, after, elapsed = yield threads.deferToThread(tls_session, self.tls_port, None)
        self.assertEqual((before, after), (b"", b""))  # no SSH banner, no page
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 8)

    @defer.inlineCallbacks
    def test_server_waits_for_the_client_then_answers_http(self):
        request = b"GET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        before, after, elapsed = yield threads.deferToThread(
            tls_session, self.tls_port, request, 0.5
        )
        self.assertEqual(before, b"")  # the gateway did not speak first
        self.assertTrue(after.startswith(b"HTTP/1.1 404 Not Found\r\n"), after)
        self.assertTrue(after.endswith(NGINX_404_BODY))

    @defer.inlineCallbacks
    def test_banner_then_ssh_server_banner(self):
        before, after, _ = yield threads.deferToThread(
            tls_session, self.tls_port, b"SSH-2.0-probe\r\n", 0.3, 3.0
        )
        self.assertEqual(before, b"")
        self.assertTrue(after.startswith(b"SSH-2.0-"), after)

    @defer.inlineCallbacks
    def test_stealth_behind_a_proxy_header(self):
        port = free_port()
        yield add_listener(
            self,
            self.gateway,
            tls_listen(port, self.key, self.cert, prefix="haproxy:"),
            stealth=True,
        )
        # haproxy:ssl: reads the header inside TLS, then stealth looks at what follows.
        request = b"PROXY TCP4 203.0.113.9 127.0.0.1 5 6\r\nGET / HTTP/1.0\r\n\r\n"
        _, after, _ = yield threads.deferToThread(tls_session, port, request, 0.2)
        self.assertTrue(after.startswith(b"HTTP/1.1 404 Not Found\r\n"), after)
        [closed] = [e for e in self.events if e.get("event_kind") == "prelude"]
        self.assertTrue(closed["remote_addr"].startswith("203.0.113.9:"), closed)


class StealthTwistdTests(unittest.TestCase):
    """A real C{twistd -n wraith --stealth} process."""

    timeout = 120

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def run_twistd(self, *extra: str, sshd=None, approval_url="ws://127.0.0.1:9/"):
        identity = os.path.join(self.base, "id")
        if not os.path.exists(identity):
            pub = keygen(identity)
            with open(os.path.join(self.base, "authorized_keys"), "w") as f:
                f.write(pub + "\n")
            open(os.path.join(self.base, "known_hosts"), "w").close()
        return [
            "-n",
            "--pidfile=",
            "wraith",
            f"--host-key={os.path.join(self.base, 'hk')}",
            f"--target=127.0.0.1:{sshd.port if sshd else 22}",
            "--target-known-hosts="
            + (sshd.known_hosts_path if sshd else os.path.join(self.base, "known_hosts")),
            f"--target-identity={sshd.client_key_path if sshd else identity}",
            f"--authorized-keys={os.path.join(self.base, 'authorized_keys')}",
            f"--approval={approval_url}",
            *extra,
        ]

    def test_stealth_without_tls_is_refused(self):
        for listen in ([], ["--listen=tcp:2222:interface=127.0.0.1"]):
            result = subprocess.run(
                twistd_argv(*self.run_twistd("--stealth", *listen)),
                cwd=REPO,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            )
            self.assertNotEqual(result.returncode, 0)
            last = result.stdout.strip().splitlines()[-1] + result.stderr
            self.assertIn("--stealth: needs a TLS listener", last)

    @defer.inlineCallbacks
    def test_twistd_with_tls_stealth_and_proxy_listeners(self):
        sshd = start_sshd(self)
        service = ApprovalService(rule=lambda r: ("approve", "ok"), token="tok")
        url = service.listen(reactor, self)
        key, cert = self_signed_certificate(self.base)
        tcp_port, tls_port, proxy_port = free_port(), free_port(), free_port()
        logfile = os.path.join(self.base, "twistd.log")
        argv = self.run_twistd(
            f"--listen=tcp:{tcp_port}:interface=127.0.0.1",
            f"--listen={tls_listen(tls_port, key, cert)}",
            f"--listen=haproxy:tcp:{proxy_port}:interface=127.0.0.1",
            "--stealth",
            "--approval-token=tok",
            "--log-format=json",
            sshd=sshd,
            approval_url=url,
        )
        argv.insert(0, f"--logfile={logfile}")
        process = subprocess.Popen(
            twistd_argv(*argv),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(stop_process, process)
        host_key = os.path.join(self.base, "hk")
        # Up to 30 s for the key file and the approval connection: a loaded
        # machine can take seconds just to import and start twistd.
        for _ in range(300):
            if process.poll() is not None:
                self.fail(f"twistd exited: {process.stdout.read().decode()}")
            if os.path.exists(host_key) and service.connections:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("gateway did not start")
        known = os.path.join(self.base, "gateway_known_hosts")
        pin_gateway_key(known, tcp_port, host_key)
        operator = os.path.join(self.base, "id")
        base_argv = operator_argv(tcp_port, operator, known, sshd.user)
        user_host = base_argv[-1]

        def ssh(proxy_command: str | None, command: str):
            extra = ["-o", f"ProxyCommand={proxy_command}"] if proxy_command else []
            return spawn_ssh(reactor, [*base_argv[:-1], *extra, user_host, command], timeout=60)

        code, out, err = yield ssh(None, "echo plain")
        self.assertEqual((code, out.strip()), (0, b"plain"), err)
        tls_proxy = f"openssl s_client -quiet -verify_quiet -connect 127.0.0.1:{tls_port}"
        code, out, err = yield ssh(tls_proxy, "echo tls")
        self.assertEqual((code, out.strip()), (0, b"tls"), err)
        header_proxy = shlex.join(
            [
                sys.executable,
                os.path.join(REPO, "tests", "proxy_header_client.py"),
                "v2",
                "127.0.0.1",
                str(proxy_port),
                "203.0.113.7",
            ]
        )
        code, out, err = yield ssh(header_proxy, "echo proxied")
        self.assertEqual((code, out.strip()), (0, b"proxied"), err)
        curl = ["curl", "-k", "-s", "-i", "--max-time", "10", f"https://127.0.0.1:{tls_port}/"]
        code, out, err = yield spawn_ssh(reactor, curl, timeout=30)
        self.assertIn(b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n", out)

        def logged() -> list[dict]:
            with open(logfile) as f:
                return [json.loads(line) for line in f if line.startswith("{")]

        def ssh_closes() -> int:
            return sum(
                1 for e in logged() if e.get("event_kind") == "connection" and "duration" in e
            )

        # Each ssh exits before the gateway notices its connection go: wait
        # for the three close lines, so that the log is complete.
        yield wait_until(lambda: ssh_closes() >= 3, "three connection-closed lines", timeout=10)
        events = logged()
        opened = [
            (e.get("transport"), e.get("remote_addr", "").rsplit(":", 1)[0])
            for e in events
            if e.get("event_kind") == "connection" and "duration" not in e
        ]
        self.assertEqual(
            opened, [("tcp", "127.0.0.1"), ("tls", "127.0.0.1"), ("proxy-v2", "203.0.113.7")]
        )
