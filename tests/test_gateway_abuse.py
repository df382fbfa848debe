"""
Rate limits against real abuse: a real sshd behind the in-process gateway,
real OpenSSH clients for the legitimate user, paramiko and raw sockets for
the abuser.  The abuser connects from another loopback address (127.0.0.2,
127.0.0.3) so that the per-address limits do not hit the legitimate user.
"""

from __future__ import annotations

import collections
import os

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.gatewayharness import Gateway, keygen
from tests.operator import spawn_ssh
from tests.polling import wait_until
from tests.rawclients import blocking_socket, connect_raw
from tests.sshd import start_sshd
from tests.test_gateway_auth import CapturedLog
from wraith_conch.testing import ScriptedApprover, approve_all_except

ABUSER = "127.0.0.2"
CROWD = "127.0.0.3"


def guess_keys(port: int, user: str, key_path: str, total: int, source: str) -> list[int]:
    """
    Try C{total} signed public-key logins with a key the gateway does not
    know, as many per connection as the gateway allows, from C{source}.
    Blocking (paramiko): run it in a thread.  Returns the attempts made on
    each connection.
    """
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(key_path)
    made = 0
    per_connection: list[int] = []
    for _ in range(total):  # at least one attempt per connection: bounded
        if made >= total:
            break
        sock = blocking_socket(port, source)
        client = paramiko.Transport(sock)
        attempts = 0
        try:
            client.start_client(timeout=10)
            for _ in range(total):
                if made >= total or not client.is_active():
                    break
                try:
                    client.auth_publickey(user, key)
                except (paramiko.SSHException, EOFError, OSError):
                    pass
                else:
                    raise AssertionError("the gateway accepted a stranger's key")
                attempts += 1
                made += 1
        finally:
            client.close()
            sock.close()
        per_connection.append(attempts)
    return per_connection


class AbuseTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.log = CapturedLog(self)

    def gateway(self, **overrides) -> Gateway:
        gateway = Gateway(self, self.sshd, ScriptedApprover(approve_all_except()), **overrides)
        self.factory = gateway.port.factory
        return gateway

    def results(self, kind: str, result: str) -> list[dict]:
        return [e for e in self.log.of_kind(kind) if e.get("result") == result]

    @defer.inlineCallbacks
    def legit_login(self, gateway: Gateway, word: str = "still-works") -> defer.Deferred:
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv(f"echo {word}"))
        self.assertEqual((code, out.strip()), (0, word.encode()), err)

    @defer.inlineCallbacks
    def test_failed_authentications_cut_per_connection(self):
        gateway = self.gateway(**{"max-auth-attempts": "3"})
        stranger = os.path.join(gateway.base, "stranger")
        keygen(stranger)
        abuse = threads.deferToThread(
            guess_keys, gateway.port_number, self.sshd.user, stranger, 50, ABUSER
        )
        # The legitimate user logs in, again and again, while it goes on.
        logins = 0
        for _ in range(30):
            yield self.legit_login(gateway, f"login{logins}")
            logins += 1
            if abuse.called:
                break
        per_connection = yield abuse
        self.assertGreaterEqual(logins, 1)
        self.assertEqual(sum(per_connection), 50)
        # The gateway's own count: never more than 3 checked per connection.
        rejected = collections.Counter(e["remote_addr"] for e in self.results("auth", "rejected"))
        self.assertEqual(sum(rejected.values()), 50)
        self.assertTrue(all(addr.startswith(ABUSER + ":") for addr in rejected), rejected)
        self.assertEqual(max(rejected.values()), 3)
        self.assertEqual(len(rejected), 17)  # 16 connections of 3, one of 2
        too_many = self.results("auth", "too-many-attempts")
        self.assertEqual(len(too_many), 16)
        self.assertTrue(all(e["remote_addr"].startswith(ABUSER + ":") for e in too_many))
        # What the client saw matches.
        self.assertEqual(sorted(per_connection), [2] + [3] * 16)
        yield self.legit_login(gateway)

    @defer.inlineCallbacks
    def test_connections_per_address(self):
        gateway = self.gateway(**{"max-connections-per-ip": "5"})
        held = [connect_raw(reactor, self, gateway.port_number, source=ABUSER) for _ in range(5)]
        yield wait_until(lambda: all(c.got_banner for c in held), "5 banners", timeout=10)
        # The abuser keeps trying while the legitimate user logs in: every
        # further connection is closed at accept, without even the banner.
        login = self.legit_login(gateway)
        extra = [connect_raw(reactor, self, gateway.port_number, source=ABUSER) for _ in range(30)]
        started = reactor.seconds()
        yield wait_until(lambda: all(c.lost for c in extra), "refusals", timeout=10)
        self.assertLess(reactor.seconds() - started, 5)
        yield login
        self.assertEqual([c for c in extra if c.received], [])
        refused = self.results("connection", "refused-per-ip")
        self.assertEqual(len(refused), 30)
        self.assertTrue(all(e["remote_addr"].startswith(ABUSER + ":") for e in refused))
        self.assertFalse(any(c.lost for c in held))
        # Another address is not affected, while the abuser is at its limit.
        yield self.legit_login(gateway)
        # A slot freed is a slot the abuser can use again.
        held[0].close()
        yield held[0].closed
        yield wait_until(
            lambda: self.factory.admission.connections_from(ABUSER) == 4, "slot freed", timeout=10
        )
        again = connect_raw(reactor, self, gateway.port_number, source=ABUSER)
        yield wait_until(lambda: again.got_banner, "banner again", timeout=10)

    @defer.inlineCallbacks
    def test_startups_bounded_and_dropped_after_grace(self):
        # Long enough that the 200 connections below are all answered before
        # the first admitted one's grace runs out, even on a loaded machine.
        grace = 5.0
        gateway = self.gateway(**{"max-startups": "20", "login-grace-time": str(grace)})
        started = reactor.seconds()
        crowd = []
        # In waves below the listen backlog (50): past it, the kernel itself
        # holds connections back, which is not what is tested here.
        for _ in range(200 // 25):
            wave = [
                connect_raw(reactor, self, gateway.port_number, source=CROWD) for _ in range(25)
            ]
            crowd += wave
            yield wait_until(
                lambda wave=wave: all(c.got_banner or c.lost for c in wave), "answers", timeout=10
            )
        self.assertLess(reactor.seconds() - started, grace - 1)
        admitted = [c for c in crowd if c.got_banner]
        refused = [c for c in crowd if not c.got_banner]
        self.assertEqual(len(admitted), 20)
        self.assertTrue(all(c.lost and not c.received for c in refused))
        self.assertEqual(self.factory.admission.startups, 20)
        self.assertEqual(len(self.results("connection", "refused-startups")), 180)
        # While the startups are full, everyone is refused: the price of
        # the limit (fail2ban bans the crowd; see docs/security.md).
        code, out, err = yield spawn_ssh(reactor, gateway.ssh_argv("true"))
        self.assertEqual(code, 255, err)
        self.assertIn(b"closed by remote host", err)
        # The gateway drops the idle ones after the grace time...
        yield wait_until(lambda: all(c.lost for c in admitted), "grace drop", timeout=grace + 8)
        self.assertGreaterEqual(reactor.seconds() - started, grace - 0.5)
        self.assertEqual(len(self.results("connection", "grace-timeout")), 20)
        yield wait_until(
            lambda: self.factory.admission.startups == 0, "startups drained", timeout=10
        )
        # ...and then the legitimate user gets in again.
        yield self.legit_login(gateway)
        self.assertEqual(self.factory.admission.startups, 0)

    @defer.inlineCallbacks
    def test_authenticated_sessions_do_not_count_as_startups(self):
        gateway = self.gateway(**{"max-startups": "1"})
        # Sequential logins each pass through the single startup slot.
        for n in range(3):
            yield self.legit_login(gateway, f"n{n}")
        # An open, authenticated session leaves the slot free for the next login.
        import paramiko  # noqa: F401  (the harness's paramiko_client needs it)

        client = yield threads.deferToThread(gateway.paramiko_client)
        self.addCleanup(client.close)
        yield wait_until(lambda: self.factory.admission.startups == 0, "authenticated", timeout=10)
        yield self.legit_login(gateway)
        yield task.deferLater(reactor, 0, lambda: None)
