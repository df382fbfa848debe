"""
OpenSSH user certificates through the gateway, end to end: certificates
signed by the real C{ssh-keygen -s}, offered by the real C{ssh} client
(C{-o CertificateFile=}), a real sshd behind the gateway.
"""

from __future__ import annotations

import os
import subprocess

from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import formatEvent
from twisted.trial import unittest

from tests.gatewayharness import Gateway, free_port, keygen
from tests.operator import spawn_ssh
from tests.sshd import start_sshd
from tests.test_gateway_auth import CapturedLog
from tests.test_gateway_forwarding import EchoServer, exchange, loopback_policy, wait_listening
from tests.test_twistd import REPO, twistd_argv
from wraith_conch.testing import ScriptedApprover, approve_all_except


def fingerprint(pub_path: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", pub_path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


class CertificateAuthority:
    """A CA key made with ssh-keygen, signing user keys with ssh-keygen -s."""

    def __init__(self, base: str, name: str = "ca", kind: str = "ed25519") -> None:
        self.base = base
        self.key = os.path.join(base, name)
        self.public_line = keygen(self.key, kind)
        self.public_path = self.key + ".pub"

    def sign(
        self,
        key: str,
        principals: str,
        *,
        identity: str = "operator@example",
        serial: int | None = None,
        validity: str | None = None,
        options: tuple[str, ...] = (),
    ) -> str:
        """Sign C{key}.pub; the certificate lands in C{key}-cert.pub (returned)."""
        argv = ["ssh-keygen", "-q", "-s", self.key, "-I", identity, "-n", principals]
        if serial is not None:
            argv += ["-z", str(serial)]
        if validity is not None:
            argv += ["-V", validity]
        for option in options:
            argv += ["-O", option]
        subprocess.run(
            [*argv, key + ".pub"], check=True, capture_output=True, stdin=subprocess.DEVNULL
        )
        return key + "-cert.pub"


class _Base(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.sshd = start_sshd(self)
        self.log = CapturedLog(self)
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.ca = CertificateAuthority(self.base)
        self.user_key = os.path.join(self.base, "operator")
        keygen(self.user_key)
        self.approver = ScriptedApprover(approve_all_except("forbidden"))

    def gateway(self, authorized_keys_text: str = "# certificates only\n", **flags) -> Gateway:
        flags.setdefault("trusted-user-ca-keys", self.ca.public_path)
        return Gateway(
            self, self.sshd, self.approver, authorized_keys_text=authorized_keys_text, **flags
        )

    def ssh(self, gateway: Gateway, *command: str, key: str | None = None, extra=()):
        key = key or self.user_key
        argv = gateway.ssh_argv(*command, extra=["-o", f"CertificateFile={key}-cert.pub", *extra])
        argv[argv.index(gateway.operator_key)] = key
        return spawn_ssh(reactor, argv)

    def auth_events(self, result: str) -> list[dict]:
        return [e for e in self.log.of_kind("auth") if e["result"] == result]

    @defer.inlineCallbacks
    def assertRefused(self, gateway: Gateway, reason: str):
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual(code, 255, err)
        self.assertIn(b"Permission denied", err)
        self.assertEqual(out, b"")
        reasons = [e.get("reason") or "" for e in self.log.of_kind("auth")]
        self.assertTrue(any(reason in r for r in reasons), reasons)
        self.assertEqual(self.auth_events("accepted"), [])
        self.assertEqual(self.approver.requests, [])


class CertificateLoginTests(_Base):
    @defer.inlineCallbacks
    def test_valid_certificate_logs_in_and_is_logged(self):
        self.ca.sign(self.user_key, self.sshd.user, identity="alice-laptop", serial=4242)
        gateway = self.gateway()
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)
        [accepted] = self.auth_events("accepted")
        self.assertEqual(accepted["key_fingerprint"], fingerprint(self.user_key + ".pub"))
        self.assertEqual(accepted["cert_serial"], 4242)
        self.assertEqual(accepted["cert_key_id"], "alice-laptop")
        self.assertEqual([r.command for r in self.approver.requests], ["id -un"])

    @defer.inlineCallbacks
    def test_rsa_certificate_signed_by_ecdsa_ca(self):
        # rsa-sha2-512-cert-v01 in the userauth request, ECDSA CA signature.
        ca = CertificateAuthority(self.base, "ecdsa_ca", "ecdsa")
        rsa_key = os.path.join(self.base, "rsa_operator")
        keygen(rsa_key, "rsa")
        ca.sign(rsa_key, self.sshd.user)
        gateway = self.gateway(**{"trusted-user-ca-keys": ca.public_path})
        code, out, err = yield self.ssh(gateway, "id -un", key=rsa_key)
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)

    def test_expired(self):
        self.ca.sign(self.user_key, self.sshd.user, validity="20200101:20200102")
        return self.assertRefused(self.gateway(), "certificate has expired")

    def test_not_yet_valid(self):
        self.ca.sign(self.user_key, self.sshd.user, validity="+1d:+2d")
        return self.assertRefused(self.gateway(), "not yet valid")

    def test_wrong_principal(self):
        self.ca.sign(self.user_key, "somebody-else,root")
        return self.assertRefused(self.gateway(), "not among the certificate's principals")

    def test_untrusted_ca(self):
        other = CertificateAuthority(self.base, "other_ca")
        other.sign(self.user_key, self.sshd.user)
        return self.assertRefused(self.gateway(), "untrusted CA")

    def test_source_address_mismatch(self):
        self.ca.sign(self.user_key, self.sshd.user, options=("source-address=10.0.0.0/8,::2",))
        return self.assertRefused(self.gateway(), "source-address")

    @defer.inlineCallbacks
    def test_source_address_match(self):
        self.ca.sign(
            self.user_key, self.sshd.user, options=("source-address=10.0.0.0/8,127.0.0.1",)
        )
        code, out, err = yield self.ssh(self.gateway(), "id -un")
        self.assertEqual(code, 0, err)

    def test_unknown_critical_option(self):
        self.ca.sign(self.user_key, self.sshd.user, options=("critical:frobnicate@example.com=x",))
        return self.assertRefused(self.gateway(), "unknown critical option")

    def test_plain_key_of_a_certificate_is_not_a_login(self):
        # The CA key itself on a cert-authority line is no login key.
        self.ca.sign(self.user_key, self.sshd.user)
        ca_as_key = f"cert-authority {self.ca.public_line}\n"
        gateway = self.gateway(ca_as_key, **{"trusted-user-ca-keys": ""})
        argv = gateway.ssh_argv("id -un", extra=["-o", "CertificateFile=/dev/null"])
        argv[argv.index(gateway.operator_key)] = self.ca.key
        return self._refused_plain(argv)

    @defer.inlineCallbacks
    def _refused_plain(self, argv):
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255, err)
        self.assertEqual(self.auth_events("accepted"), [])


class RevocationTests(_Base):
    def krl(self, spec: str, *, ca: bool = True) -> str:
        spec_path = os.path.join(self.base, "krl.spec")
        with open(spec_path, "w") as f:
            f.write(spec)
        krl = os.path.join(self.base, "revoked.krl")
        argv = ["ssh-keygen", "-q", "-k", "-f", krl]
        if ca:
            argv += ["-s", self.ca.public_path]
        subprocess.run([*argv, spec_path], check=True, capture_output=True)
        return krl

    @defer.inlineCallbacks
    def test_revoked_serial_in_krl(self):
        krl = self.krl("serial: 7\nserial: 100-200\n")
        gateway = self.gateway(**{"revoked-keys": krl})
        self.ca.sign(self.user_key, self.sshd.user, serial=7)
        yield self.assertRefused(gateway, "the certificate is revoked")
        # Another serial of the same CA still logs in.
        self.ca.sign(self.user_key, self.sshd.user, serial=8)
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual(code, 0, err)

    def test_revoked_key_id_in_krl(self):
        krl = self.krl("id: lost-laptop\n")
        self.ca.sign(self.user_key, self.sshd.user, identity="lost-laptop", serial=3)
        return self.assertRefused(
            self.gateway(**{"revoked-keys": krl}), "the certificate is revoked"
        )

    def test_revoked_key_in_plain_list(self):
        revoked = os.path.join(self.base, "revoked_keys")
        with open(self.user_key + ".pub") as src, open(revoked, "w") as f:
            f.write("# lost on 2026-11-20\n" + src.read())
        self.ca.sign(self.user_key, self.sshd.user, serial=1)
        return self.assertRefused(
            self.gateway(**{"revoked-keys": revoked}), "the certificate's key is revoked"
        )

    def test_revoked_ca_key(self):
        revoked = os.path.join(self.base, "revoked_keys")
        with open(revoked, "w") as f:
            f.write(self.ca.public_line + "\n")
        self.ca.sign(self.user_key, self.sshd.user, serial=1)
        return self.assertRefused(self.gateway(**{"revoked-keys": revoked}), "CA key is revoked")

    @defer.inlineCallbacks
    def test_revoked_plain_authorized_key(self):
        with open(self.user_key + ".pub") as f:
            pub = f.read()
        revoked = os.path.join(self.base, "revoked.krl")
        with open(revoked, "w") as f:
            f.write(pub)
        gateway = self.gateway(pub, **{"revoked-keys": revoked})
        argv = gateway.ssh_argv("id -un")
        argv[argv.index(gateway.operator_key)] = self.user_key
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual(code, 255, err)
        self.assertTrue(
            any(e.get("reason") == "the key is revoked" for e in self.log.of_kind("auth"))
        )


class RestrictionTests(_Base):
    @defer.inlineCallbacks
    def test_force_command_is_the_only_command_and_needs_approval(self):
        self.ca.sign(self.user_key, self.sshd.user, options=("force-command=echo forced-$((6*7))",))
        gateway = self.gateway()
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual((code, out.strip()), (0, b"forced-42"), err)
        self.assertEqual([r.command for r in self.approver.requests], ["echo forced-$((6*7))"])
        # Still subject to approval: a denial runs nothing.
        self.approver = ScriptedApprover(approve_all_except("forced"))
        denied_gateway = self.gateway()
        code, out, err = yield self.ssh(denied_gateway, "id -un")
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"forced-42", out)
        self.assertEqual([r.command for r in self.approver.requests], ["echo forced-$((6*7))"])

    @defer.inlineCallbacks
    def test_no_pty_without_permit_pty(self):
        self.ca.sign(self.user_key, self.sshd.user, options=("no-pty",))
        code, out, err = yield self.ssh(self.gateway(), "tty", extra=["-tt"])
        self.assertIn(b"PTY allocation request failed", err)
        # With permit-pty (the default), the same request gets a terminal.
        self.ca.sign(self.user_key, self.sshd.user)
        code, out, err = yield self.ssh(self.gateway(), "tty", extra=["-tt"])
        self.assertEqual(code, 0, err)
        self.assertIn(b"/dev/pts/", out)

    @defer.inlineCallbacks
    def forwarded_echo(self, gateway: Gateway, echo: EchoServer) -> bytes:
        """What a local forward (ssh -N -L) to the echo server gives back."""
        local = free_port()
        proto = protocol.ProcessProtocol()
        ended = defer.Deferred()
        proto.processEnded = lambda reason: ended.callback(None)
        argv = gateway.ssh_argv(
            extra=["-N", "-o", f"CertificateFile={self.user_key}-cert.pub"]
            + ["-L", f"{local}:127.0.0.1:{echo.number}"]
        )
        argv[argv.index(gateway.operator_key)] = self.user_key
        process = reactor.spawnProcess(proto, argv[0], argv, env=os.environ.copy())
        try:
            yield wait_listening(local, tries=400)  # ssh must log in first
            echoed = yield threads.deferToThread(exchange, local, b"through the tunnel")
        finally:
            if not ended.called:
                process.signalProcess("TERM")
            yield ended
        return echoed

    @defer.inlineCallbacks
    def test_no_forwarding_without_permit_port_forwarding(self):
        echo = EchoServer(self)
        policy = {"forward-policy": loopback_policy(self.base, [echo.number])}
        self.ca.sign(self.user_key, self.sshd.user, options=("clear", "permit-pty"))
        echoed = yield self.forwarded_echo(self.gateway(**policy), echo)
        self.assertEqual(echoed, b"")
        # The same forward with permit-port-forwarding (ssh-keygen's default).
        self.ca.sign(self.user_key, self.sshd.user)
        echoed = yield self.forwarded_echo(self.gateway(**policy), echo)
        self.assertEqual(echoed, b"through the tunnel")


class CertAuthorityLineTests(_Base):
    def line(self, options: str = "") -> str:
        prefix = "cert-authority" + ("," + options if options else "")
        return f"{prefix} {self.ca.public_line}\n"

    @defer.inlineCallbacks
    def test_principals_option_needs_a_listed_principal(self):
        gateway = self.gateway(self.line('principals="ops,admins"'), **{"trusted-user-ca-keys": ""})
        self.ca.sign(self.user_key, f"{self.sshd.user},ops")
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)
        self.ca.sign(self.user_key, self.sshd.user)
        yield self.assertRefusedAgain(gateway, "cert-authority line's principals")

    @defer.inlineCallbacks
    def assertRefusedAgain(self, gateway, reason):
        before = len(self.auth_events("accepted"))
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual(code, 255, err)
        reasons = [e.get("reason") or "" for e in self.log.of_kind("auth")]
        self.assertTrue(any(reason in r for r in reasons), reasons)
        self.assertEqual(len(self.auth_events("accepted")), before)

    @defer.inlineCallbacks
    def test_line_options_apply_to_certificates(self):
        gateway = self.gateway(self.line('no-pty,from="127.0.0.1"'), **{"trusted-user-ca-keys": ""})
        self.ca.sign(self.user_key, self.sshd.user)
        code, out, err = yield self.ssh(gateway, "tty", extra=["-tt"])
        self.assertIn(b"PTY allocation request failed", err)
        other = self.gateway(self.line('from="10.0.0.0/8"'), **{"trusted-user-ca-keys": ""})
        yield self.assertRefusedAgain(other, "untrusted CA")


class TwistdFlagTests(unittest.TestCase):
    """The two flags through the real twistd command line: a bad file stops it."""

    timeout = 120

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())  # twistd runs in REPO
        os.makedirs(self.base)
        self.ca = CertificateAuthority(self.base)
        self.identity = os.path.join(self.base, "id")
        keygen(self.identity)
        self.known = os.path.join(self.base, "known_hosts")
        open(self.known, "w").close()

    def run_twistd(self, *extra: str) -> subprocess.CompletedProcess:
        argv = [
            f"--host-key={os.path.join(self.base, 'hk')}",
            "--target=127.0.0.1:22",
            f"--target-known-hosts={self.known}",
            f"--target-identity={self.identity}",
            "--approval=ws://127.0.0.1:9/",
            *extra,
        ]
        return subprocess.run(
            twistd_argv("-n", "--pidfile=", "wraith", *argv),
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

    def test_bad_files_stop_twistd(self):
        junk = os.path.join(self.base, "junk")
        with open(junk, "w") as f:
            f.write("this is not a key\n")
        for flag, value, words in (
            ("--revoked-keys", junk, "junk:1: not a public key line"),
            ("--trusted-user-ca-keys", junk, "junk:1:"),
        ):
            result = self.run_twistd(
                f"--trusted-user-ca-keys={self.ca.public_path}", f"{flag}={value}"
            )
            self.assertNotEqual(result.returncode, 0)
            output = result.stdout + result.stderr
            self.assertIn(f"{flag}: ", output)
            self.assertIn(words, output)


class FilesChangedWhileRunningTests(_Base):
    """
    As with sshd, a key or CA removed from its file is refused at the next
    login, without a restart; a file broken meanwhile lets nobody in by it.
    """

    def replace(self, path: str, text: str) -> None:
        tmp = path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    @defer.inlineCallbacks
    def assertLogsIn(self, gateway: Gateway, *, certificate: bool):
        if certificate:
            code, out, err = yield self.ssh(gateway, "id -un")
        else:
            argv = gateway.ssh_argv("id -un")
            argv[argv.index(gateway.operator_key)] = self.user_key
            code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual((code, out.strip()), (0, self.sshd.user.encode()), err)

    def refusals(self) -> list[str]:
        # ssh asks about a key before signing with it: a refused key is
        # refused at that query.
        return [e.get("reason") for e in self.auth_events("key-refused")]

    def log_texts(self) -> list[str]:
        return [formatEvent(e) for e in self.log.events]

    @defer.inlineCallbacks
    def test_authorized_keys(self):
        with open(self.user_key + ".pub") as f:
            pub = f.read()
        gateway = self.gateway(pub, **{"trusted-user-ca-keys": ""})
        yield self.assertLogsIn(gateway, certificate=False)
        self.replace(gateway.authorized_keys, "# alice left\n")
        argv = gateway.ssh_argv("id -un")
        argv[argv.index(gateway.operator_key)] = self.user_key
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual((code, out), (255, b""), err)
        self.assertIn("key not authorized", self.refusals())
        self.assertIn(f"reloaded --authorized-keys {gateway.authorized_keys}", self.log_texts())
        # Broken: nobody gets in by it, and the log says why.
        self.replace(gateway.authorized_keys, pub + "ssh-ed25519 AAAA!!notbase64 broken\n")
        code, out, err = yield spawn_ssh(reactor, argv)
        self.assertEqual((code, out), (255, b""), err)
        self.assertTrue(
            any("--authorized-keys unusable, letting no key in" in t for t in self.log_texts())
        )
        self.replace(gateway.authorized_keys, pub)
        yield self.assertLogsIn(gateway, certificate=False)
        self.assertEqual(len(self.approver.requests), 2)

    @defer.inlineCallbacks
    def test_trusted_user_ca_keys(self):
        trusted = os.path.join(self.base, "trusted_user_ca_keys")
        self.replace(trusted, self.ca.public_line + "\n")
        self.ca.sign(self.user_key, self.sshd.user, serial=1)
        gateway = self.gateway(**{"trusted-user-ca-keys": trusted})
        yield self.assertLogsIn(gateway, certificate=True)
        self.replace(trusted, "# that CA was retired\n")
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual((code, out), (255, b""), err)
        self.assertIn("certificate signed by an untrusted CA", self.refusals())
        self.replace(trusted, "not a key\n")
        code, out, err = yield self.ssh(gateway, "id -un")
        self.assertEqual((code, out), (255, b""), err)
        self.assertTrue(
            any("--trusted-user-ca-keys unusable, trusting no CA" in t for t in self.log_texts())
        )
        self.replace(trusted, self.ca.public_line + "\n")
        yield self.assertLogsIn(gateway, certificate=True)
