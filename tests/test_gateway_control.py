"""
The reserved C{wraith-*} forwarding names: C{wraith-control:0} streams the
operator's own approval events; every other C{wraith-*} name is refused.
"""

from __future__ import annotations

import json

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.gatewayharness import Gateway
from tests.sshd import start_sshd
from wraith_conch.testing import ScriptedApprover, approve_all_except


class ControlChannelTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.sshd = start_sshd(self)
        self.approver = ScriptedApprover(approve_all_except("DENYME"))
        self.gateway = Gateway(self, self.sshd, self.approver)

    def _events_for_two_commands(self) -> list[dict]:
        client = self.gateway.paramiko_client()
        try:
            transport = client.get_transport()
            control = transport.open_channel(
                "direct-tcpip", ("wraith-control", 0), ("127.0.0.1", 0), timeout=10
            )
            control.settimeout(10)
            for command in ("true", "echo DENYME"):
                channel = transport.open_session(timeout=10)
                channel.exec_command(command)
                channel.recv_exit_status()
            received = b""
            while received.count(b"\n") < 4:
                chunk = control.recv(65536)
                if not chunk:
                    break
                received += chunk
            return [json.loads(line) for line in received.splitlines()]
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_control_channel_streams_own_events(self):
        events = yield threads.deferToThread(self._events_for_two_commands)
        kinds = [(e["event"], e.get("command")) for e in events]
        self.assertEqual(
            kinds,
            [("pending", "true"), ("approved", None), ("pending", "echo DENYME"), ("denied", None)],
        )
        self.assertEqual(events[0]["id"], events[1]["id"])
        self.assertEqual(events[3]["reason"], "contains 'DENYME'")

    def _open_reserved(self, host: str, port: int):
        import paramiko

        client = self.gateway.paramiko_client()
        try:
            with self.assertRaises(paramiko.ChannelException) as caught:
                client.get_transport().open_channel(
                    "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=10
                )
            return caught.exception.code, caught.exception.text
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_other_reserved_names_prohibited(self):
        for host, port in (("wraith-admin", 22), ("WRAITH-control", 1), ("wraith-", 0)):
            code, text = yield threads.deferToThread(self._open_reserved, host, port)
            # paramiko shows its own text for the code.
            self.assertEqual(code, 1, text)
            self.assertIn("prohibited", text.lower())
