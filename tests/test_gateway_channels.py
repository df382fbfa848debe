"""
Channel-level behaviour: several channels on one connection (paramiko as a
second client library) and end-to-end flow control against a stalled reader.
"""

from __future__ import annotations

import os

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.trial import unittest

from tests.gatewayharness import Gateway
from tests.sshd import start_sshd
from wraith_conch.testing import ScriptedApprover, approve_all_except


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class TwoChannelTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except())
        self.gateway = Gateway(self, self.sshd, self.approver)

    def _two_channels(self) -> tuple[bytes, bytes, int, int]:
        client = self.gateway.paramiko_client()
        try:
            transport = client.get_transport()
            first = transport.open_session(timeout=10)
            second = transport.open_session(timeout=10)
            # Both open at once: the first waits on the second's output.
            first.exec_command("read line; echo first:$line")
            second.exec_command("echo second; exit 4")
            first.sendall(b"from-paramiko\n")
            first.shutdown_write()
            outputs = []
            for channel in (first, second):
                channel.settimeout(15)
                chunks = []
                while True:
                    data = channel.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                outputs.append(b"".join(chunks))
            return outputs[0], outputs[1], first.recv_exit_status(), second.recv_exit_status()
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_two_session_channels_on_one_connection(self):
        first, second, status1, status2 = yield threads.deferToThread(self._two_channels)
        self.assertEqual(first.strip(), b"first:from-paramiko")
        self.assertEqual(second.strip(), b"second")
        self.assertEqual((status1, status2), (0, 4))
        self.assertEqual(len(self.approver.requests), 2)
        sessions = {r.session for r in self.approver.requests}
        self.assertEqual(len(sessions), 2)


class _StalledReader(protocol.ProcessProtocol):
    """An ssh client whose stdout we stop reading at once."""

    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()
        self.received = 0

    def connectionMade(self) -> None:
        self.transport.closeStdin()
        self.transport.pauseProducing()

    def outReceived(self, data: bytes) -> None:
        self.received += len(data)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class FlowControlTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except()))

    @defer.inlineCallbacks
    def test_stalled_reader_bounds_memory(self):
        """
        1 GB pushed towards a client that does not read: the target is held
        back by the SSH windows, and the gateway's memory barely moves.
        """
        before = rss_bytes()
        reader = _StalledReader()
        argv = self.gateway.ssh_argv("head -c 1000000000 /dev/zero; echo done >&2")
        process = reactor.spawnProcess(reader, argv[0], argv, env=os.environ.copy())
        peak = before
        for _ in range(40):  # 8 s of stall, sampled
            yield task.deferLater(reactor, 0.2, lambda: None)
            peak = max(peak, rss_bytes())
        growth = peak - before
        self.assertLess(growth, 16 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB")
        # And the data was held back, not dropped: reading resumes and the
        # stream carries on (64 MB more is proof enough; all of it would only
        # make the test slow on a slow machine).
        held = reader.received
        process.resumeProducing()
        for _ in range(600):  # at most 60 s
            if reader.received >= held + 64_000_000 or reader.ended.called:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertGreaterEqual(reader.received, held + 64_000_000)
        process.signalProcess("TERM")
        yield reader.ended
