"""
The sans-IO certificate checks: certificates made by the real
C{ssh-keygen -s}, checked at injected times and addresses, plus malformed
blobs made by hand.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from datetime import UTC, datetime, timedelta

from twisted.conch.ssh import keys
from twisted.trial import unittest

from wraith_conch.gateway.authorized_keys import KeyOptions, parse_authorized_keys
from wraith_conch.gateway.cert_userauth import USERAUTH_SIGNATURE_ALGORITHMS
from wraith_conch.gateway.certificates import (
    Certificate,
    CertificateError,
    TrustedCAKeysError,
    authorize_certificate,
    check_certificate,
    describe_key_blob,
    is_certificate_blob,
    load_trusted_ca_keys,
    merge_options,
    parse_certificate,
    parse_trusted_ca_keys,
    verify_userauth_signature,
)

# 2026-06-01 12:00 UTC: certificates below are valid around it.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def _ns(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class KeyMaker:
    """Keys and certificates from the real ssh-keygen, in a test's temp dir."""

    def __init__(self, base: str) -> None:
        self.base = base
        os.makedirs(base, exist_ok=True)

    def key(self, name: str, kind: str = "ed25519") -> str:
        path = os.path.join(self.base, name)
        if not os.path.exists(path):
            argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", path]
            if kind == "rsa":
                argv += ["-b", "2048"]
            subprocess.run(argv, check=True, capture_output=True)
        return path

    def pub(self, name: str) -> str:
        with open(os.path.join(self.base, name + ".pub")) as f:
            return f.read().strip()

    def sign(
        self,
        ca: str,
        user: str,
        principals: str = "alice",
        *,
        identity: str = "alice@laptop",
        serial: int = 0,
        validity: str = "20260101:20270101",
        options: tuple[str, ...] = (),
        host: bool = False,
        ca_kind: str = "ed25519",
        user_kind: str = "ed25519",
        extra: tuple[str, ...] = (),
    ) -> bytes:
        self.key(ca, ca_kind)
        self.key(user, user_kind)
        argv = ["ssh-keygen", "-q", "-s", os.path.join(self.base, ca), "-I", identity]
        argv += ["-n", principals, "-z", str(serial), "-V", validity, *extra]
        if host:
            argv.append("-h")
        for option in options:
            argv += ["-O", option]
        subprocess.run(
            [*argv, os.path.join(self.base, user + ".pub")], check=True, capture_output=True
        )
        with open(os.path.join(self.base, user + "-cert.pub")) as f:
            return blob_of(f.read())


class _Base(unittest.SynchronousTestCase):
    def setUp(self):
        self.keys = KeyMaker(self.mktemp())

    def cert(self, **kw) -> Certificate:
        return parse_certificate(self.keys.sign("ca", "user", **kw))

    def check(self, cert: Certificate, **kw) -> KeyOptions:
        kw.setdefault("user", "alice")
        kw.setdefault("client_address", "127.0.0.1")
        kw.setdefault("now", NOW)
        return check_certificate(cert, **kw)

    def refused(self, reason: str, cert: Certificate, **kw) -> None:
        with self.assertRaises(CertificateError) as caught:
            self.check(cert, **kw)
        self.assertIn(reason, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))


class ParseTests(_Base):
    def test_fields(self):
        cert = self.cert(principals="alice,bob", identity="alice@laptop", serial=77)
        self.assertEqual(cert.key_type, "ssh-ed25519-cert-v01@openssh.com")
        self.assertEqual(cert.principals, ("alice", "bob"))
        self.assertEqual(cert.key_id, "alice@laptop")
        self.assertEqual(cert.key_id_bytes, b"alice@laptop")
        self.assertEqual(cert.serial, 77)
        self.assertTrue(cert.user_certificate)
        self.assertEqual(cert.ca_blob, blob_of(self.keys.pub("ca")))
        self.assertEqual(cert.key_blob, blob_of(self.keys.pub("user")))
        self.assertEqual(cert.ca_signature_algorithm, "ssh-ed25519")
        self.assertEqual(
            cert.extensions,
            {
                "permit-X11-forwarding",
                "permit-agent-forwarding",
                "permit-port-forwarding",
                "permit-pty",
                "permit-user-rc",
            },
        )
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", os.path.join(self.keys.base, "user.pub")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        self.assertEqual(cert.fingerprint, fingerprint)

    def test_key_and_ca_types(self):
        for ca_kind, user_kind, sig in (
            ("ecdsa", "rsa", "ecdsa-sha2-nistp256"),
            ("rsa", "ecdsa", "rsa-sha2-512"),
        ):
            blob = self.keys.sign(
                f"ca_{ca_kind}", f"u_{user_kind}", ca_kind=ca_kind, user_kind=user_kind
            )
            cert = parse_certificate(blob)
            self.assertEqual(cert.ca_signature_algorithm, sig)
            self.assertEqual(self.check(cert).no_pty, False)

    def test_rsa_sha1_ca_signature_refused(self):
        blob = self.keys.sign("ca_rsa", "user", ca_kind="rsa", extra=("-t", "ssh-rsa"))
        with self.assertRaises(CertificateError) as caught:
            parse_certificate(blob)
        self.assertIn("'ssh-rsa' is not accepted", str(caught.exception))

    def test_tampered_certificate_refused(self):
        blob = bytearray(self.keys.sign("ca", "user", principals="alice"))
        i = bytes(blob).index(_ns(_ns(b"alice"))) + 8
        blob[i] = ord("b")  # "blice": the CA never signed that
        with self.assertRaises(CertificateError) as caught:
            parse_certificate(bytes(blob))
        self.assertEqual(str(caught.exception), "the CA signature does not verify")
        # Unverified parsing (for logs only) still reads it.
        self.assertEqual(parse_certificate(bytes(blob), verify=False).principals, ("blice",))

    def test_malformed_blobs(self):
        good = self.keys.sign("ca", "user")
        for blob, reason in (
            (b"", "unsupported certificate type"),
            (_ns(b"ssh-ed25519") + b"x" * 40, "unsupported certificate type"),
            (_ns(b"ssh-dss-cert-v01@openssh.com") + b"x", "unsupported certificate type"),
            (good[:-10], "malformed"),
            (good + b"\0", "malformed"),
            (_ns(b"ssh-ed25519-cert-v01@openssh.com"), "malformed"),
        ):
            with self.assertRaises(CertificateError) as caught:
                parse_certificate(blob)
            self.assertIn(reason, str(caught.exception), blob[:40])

    def test_mutations_never_crash(self):
        # Every truncation and many single-byte changes of real certificates
        # either parse or raise CertificateError; nothing else escapes.
        for user_kind in ("ed25519", "ecdsa", "rsa"):
            good = self.keys.sign("ca", f"m_{user_kind}", user_kind=user_kind)
            variants = [good[:n] for n in range(0, len(good), 3)]
            for i in range(0, len(good), 2):
                for value in (0x00, 0xFF, good[i] ^ 0x01):
                    variants.append(good[:i] + bytes([value]) + good[i + 1 :])
            for variant in variants:
                for verify in (True, False):
                    try:
                        parse_certificate(variant, verify=verify)
                    except CertificateError:
                        pass
                describe_key_blob(variant)

    def test_is_certificate_blob(self):
        self.assertTrue(is_certificate_blob(self.keys.sign("ca", "user")))
        self.assertFalse(is_certificate_blob(blob_of(self.keys.pub("user"))))
        for junk in (b"", b"\0\0\0", b"\xff\xff\xff\xff", _ns(b"\xff-cert-v01@openssh.com")):
            self.assertFalse(is_certificate_blob(junk))

    def test_describe_key_blob(self):
        blob = self.keys.sign("ca", "user", serial=9, identity="id\nwith\x1bescape")
        fields = describe_key_blob(blob)
        self.assertEqual(fields["key_fingerprint"], parse_certificate(blob).fingerprint)
        self.assertEqual(fields["cert_serial"], 9)
        self.assertEqual(fields["cert_key_id"], "id\\nwith\\x1bescape")
        plain = describe_key_blob(blob_of(self.keys.pub("user")))
        self.assertEqual(plain, {"key_fingerprint": fields["key_fingerprint"]})
        self.assertEqual(describe_key_blob(b"junk"), {"key_fingerprint": "unparseable"})
        bad_cert = _ns(b"ssh-ed25519-cert-v01@openssh.com") + b"\0"
        self.assertEqual(describe_key_blob(bad_cert), {"key_fingerprint": "unparseable"})


class CheckTests(_Base):
    def test_valid(self):
        options = self.check(self.cert())
        self.assertEqual(options, KeyOptions())

    def test_validity_window_with_skew(self):
        cert = self.cert(validity="20260601120000:20260601130000")
        start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        end = datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
        # ssh-keygen -V takes local time unless TZ says otherwise.
        offset = timedelta(seconds=cert.valid_after - start.timestamp())
        start, end = start + offset, end + offset
        self.check(cert, now=start - timedelta(seconds=60))
        self.refused("not yet valid", cert, now=start - timedelta(seconds=61))
        self.check(cert, now=end + timedelta(seconds=59))
        self.refused("expired", cert, now=end + timedelta(seconds=60))
        self.refused("expired", cert, now=end, skew=timedelta(0))
        self.check(cert, now=end - timedelta(seconds=1), skew=timedelta(0))

    def test_forever(self):
        cert = self.cert(validity="always:forever")
        self.check(cert, now=datetime(2999, 1, 1, tzinfo=UTC))
        self.check(cert, now=datetime(1971, 1, 1, tzinfo=UTC))

    def test_host_certificate_refused(self):
        self.refused("not a user certificate", self.cert(host=True, principals="alice"))

    def test_principals(self):
        cert = self.cert(principals="alice,ops")
        self.check(cert, user="alice")
        self.refused("not among the certificate's principals", cert, user="bob")
        self.refused("not among", cert, user="ops,alice")
        # A cert-authority line's principals=: one must be shared.
        self.check(cert, authority_principals=("ops", "dba"))
        self.refused("cert-authority line's principals", cert, authority_principals=("dba",))
        # Even a shared principal does not let in a user the cert does not name.
        self.refused("not among", cert, user="ops2", authority_principals=("ops",))

    def test_no_principals_refused(self):
        blob = self.keys.sign("ca", "user", principals="alice")
        cert = parse_certificate(blob)
        import attrs

        self.refused("has no principals", attrs.evolve(cert, principals=()))

    def test_force_command(self):
        cert = self.cert(options=("force-command=uptime; echo 'quoted'",))
        self.assertEqual(self.check(cert).command, "uptime; echo 'quoted'")

    def test_source_address(self):
        cert = self.cert(options=("source-address=192.0.2.0/24,2001:db8::/32,127.0.0.1",))
        for address in (
            "192.0.2.7",
            "127.0.0.1",
            "2001:db8::1",
            "::ffff:192.0.2.9",
            "[2001:db8::5]",
        ):
            self.check(cert, client_address=address)
        for address in ("192.0.3.1", "::1", "10.0.0.1", "not-an-address", ""):
            self.refused("source-address", cert, client_address=address)

    def test_malformed_source_address_refuses(self):
        cert = self.cert()
        for value in (b"", b"10.0.0.0/33", b"*.example.com", b"10.0.0.1,", b"\xff"):
            broken = attrs_evolve(cert, critical_options=(("source-address", value),))
            self.refused("source-address", broken)

    def test_unknown_critical_option(self):
        cert = self.cert(options=("critical:verify-required@example.com=x",))
        self.refused("unknown critical option 'verify-required@example.com'", cert)
        # A bare "verify-required" (FIDO) is not honoured either, so refused.
        self.refused(
            "unknown critical option",
            attrs_evolve(self.cert(), critical_options=(("verify-required", b""),)),
        )

    def test_unknown_extension_ignored(self):
        cert = self.cert(options=("extension:frob@example.com",))
        self.assertEqual(self.check(cert), KeyOptions())

    def test_extensions_map_to_restrictions(self):
        options = self.check(self.cert(options=("clear",)))
        self.assertEqual(
            (
                options.no_pty,
                options.no_port_forwarding,
                options.no_agent_forwarding,
                options.no_x11_forwarding,
                options.no_user_rc,
            ),
            (True, True, True, True, True),
        )
        options = self.check(self.cert(options=("no-pty", "no-port-forwarding")))
        self.assertTrue(options.no_pty and options.no_port_forwarding)
        self.assertFalse(options.no_agent_forwarding or options.no_x11_forwarding)
        options = self.check(self.cert(options=("clear", "permit-port-forwarding")))
        self.assertTrue(options.no_pty)
        self.assertFalse(options.no_port_forwarding)


def attrs_evolve(cert: Certificate, **changes) -> Certificate:
    import attrs

    return attrs.evolve(cert, **changes)


class MergeTests(unittest.SynchronousTestCase):
    def test_every_restriction_of_either_holds(self):
        line = KeyOptions(no_pty=True, from_patterns=("127.0.0.1",), principals=("ops",))
        cert = KeyOptions(no_port_forwarding=True, command="uptime")
        merged = merge_options(line, cert)
        self.assertTrue(merged.no_pty and merged.no_port_forwarding)
        self.assertEqual(merged.command, "uptime")
        self.assertEqual(merged.from_patterns, ("127.0.0.1",))

    def test_commands(self):
        self.assertEqual(merge_options(KeyOptions(command="a"), KeyOptions()).command, "a")
        self.assertEqual(
            merge_options(KeyOptions(command="a"), KeyOptions(command="a")).command, "a"
        )
        self.assertEqual(merge_options(KeyOptions(command=""), KeyOptions()).command, "")
        with self.assertRaises(CertificateError):
            merge_options(KeyOptions(command="a"), KeyOptions(command="b"))


class AuthorizeTests(_Base):
    def lines(self, text: str):
        return parse_authorized_keys(text.encode(), "keys").entries

    def test_trusted_ca(self):
        cert = self.cert(options=("no-pty",))
        options = authorize_certificate(
            cert, user="alice", client_address="127.0.0.1", now=NOW, trusted_ca_blobs={cert.ca_blob}
        )
        self.assertTrue(options.no_pty)

    def test_untrusted(self):
        cert = self.cert()
        self.keys.key("other")
        other_line = f"cert-authority {self.keys.pub('other')}\n"
        with self.assertRaises(CertificateError) as caught:
            authorize_certificate(
                cert,
                user="alice",
                client_address="127.0.0.1",
                now=NOW,
                trusted_ca_blobs={blob_of(self.keys.pub("other"))},
                authority_lines=self.lines(other_line),
            )
        self.assertEqual(str(caught.exception), "certificate signed by an untrusted CA")

    def test_plain_line_with_the_ca_key_is_no_authority(self):
        cert = self.cert()
        with self.assertRaises(CertificateError):
            authorize_certificate(
                cert,
                user="alice",
                client_address="127.0.0.1",
                now=NOW,
                authority_lines=self.lines(self.keys.pub("ca") + "\n"),
            )

    def test_cert_authority_line_options_merge(self):
        cert = self.cert(principals="alice,ops", options=("force-command=uptime",))
        line = f'cert-authority,no-port-forwarding,principals="ops" {self.keys.pub("ca")}\n'
        options = authorize_certificate(
            cert,
            user="alice",
            client_address="127.0.0.1",
            now=NOW,
            authority_lines=self.lines(line),
        )
        self.assertTrue(options.no_port_forwarding)
        self.assertFalse(options.no_pty)
        self.assertEqual(options.command, "uptime")
        conflicting = f'cert-authority,command="id" {self.keys.pub("ca")}\n'
        with self.assertRaises(CertificateError) as caught:
            authorize_certificate(
                cert,
                user="alice",
                client_address="127.0.0.1",
                now=NOW,
                authority_lines=self.lines(conflicting),
            )
        self.assertIn("force-command differs", str(caught.exception))

    def test_first_reason_and_later_line_wins(self):
        cert = self.cert(principals="alice")
        ca = self.keys.pub("ca")
        lines = self.lines(f'cert-authority,principals="dba" {ca}\ncert-authority,no-pty {ca}\n')
        options = authorize_certificate(
            cert, user="alice", client_address="127.0.0.1", now=NOW, authority_lines=lines
        )
        self.assertTrue(options.no_pty)
        with self.assertRaises(CertificateError) as caught:
            authorize_certificate(
                cert, user="alice", client_address="127.0.0.1", now=NOW, authority_lines=lines[:1]
            )
        self.assertIn("principals=", str(caught.exception))

    def test_trusted_ca_refusal_falls_back_to_lines(self):
        # As sshd: TrustedUserCAKeys first, then authorized_keys.
        cert = self.cert(principals="alice,ops")
        lines = self.lines(f'cert-authority,principals="ops" {self.keys.pub("ca")}\n')
        options = authorize_certificate(
            cert,
            user="alice",
            client_address="127.0.0.1",
            now=NOW,
            trusted_ca_blobs={cert.ca_blob},
            authority_lines=lines,
        )
        self.assertEqual(options.principals, ())  # the trusted CA admitted it first


class SignatureTests(_Base):
    def setUp(self):
        super().setUp()
        self.data = b"session id and userauth request"

    def private(self, name: str) -> keys.Key:
        return keys.Key.fromFile(os.path.join(self.keys.base, name))

    def test_ed25519(self):
        cert = self.cert()
        signature = self.private("user").sign(self.data)
        algorithm = b"ssh-ed25519-cert-v01@openssh.com"
        self.assertTrue(verify_userauth_signature(cert, algorithm, signature, self.data))
        self.assertFalse(verify_userauth_signature(cert, algorithm, signature, self.data + b"x"))
        self.assertFalse(verify_userauth_signature(cert, b"ssh-ed25519", signature, self.data))
        self.assertFalse(
            verify_userauth_signature(
                cert, b"ecdsa-sha2-nistp256-cert-v01@openssh.com", signature, self.data
            )
        )
        other = self.keys.key("other")
        forged = keys.Key.fromFile(other).sign(self.data)
        self.assertFalse(verify_userauth_signature(cert, algorithm, forged, self.data))
        for junk in (b"", b"\0\0\0\x0bssh-ed25519", b"\xff" * 8):
            self.assertFalse(verify_userauth_signature(cert, algorithm, junk, self.data))

    def test_rsa_algorithm_names(self):
        cert = parse_certificate(self.keys.sign("ca", "rsa_user", user_kind="rsa"))
        key = self.private("rsa_user")
        for name, sig_type in (
            (b"rsa-sha2-256-cert-v01@openssh.com", b"rsa-sha2-256"),
            (b"rsa-sha2-512-cert-v01@openssh.com", b"rsa-sha2-512"),
        ):
            signature = key.sign(self.data, signatureType=sig_type)
            self.assertTrue(verify_userauth_signature(cert, name, signature, self.data))
            # The signature must use the algorithm the request names.
            other = b"rsa-sha2-512" if sig_type == b"rsa-sha2-256" else b"rsa-sha2-256"
            mismatched = key.sign(self.data, signatureType=other)
            self.assertFalse(verify_userauth_signature(cert, name, mismatched, self.data))
        sha1 = key.sign(self.data, signatureType=b"ssh-rsa")
        for name in (b"ssh-rsa-cert-v01@openssh.com", b"rsa-sha2-256-cert-v01@openssh.com"):
            self.assertFalse(verify_userauth_signature(cert, name, sha1, self.data))

    def test_ecdsa(self):
        cert = parse_certificate(self.keys.sign("ca", "ec_user", user_kind="ecdsa"))
        signature = self.private("ec_user").sign(self.data)
        name = b"ecdsa-sha2-nistp256-cert-v01@openssh.com"
        self.assertTrue(verify_userauth_signature(cert, name, signature, self.data))

    def test_server_sig_algs_lists_what_is_verified(self):
        self.assertIn(b"rsa-sha2-512", USERAUTH_SIGNATURE_ALGORITHMS)
        self.assertNotIn(b"ssh-rsa", USERAUTH_SIGNATURE_ALGORITHMS)


class TrustedCAKeysTests(_Base):
    def test_parse(self):
        self.keys.key("ca")
        self.keys.key("ca2", "ecdsa")
        text = f"# CAs\n\n{self.keys.pub('ca')}\n{self.keys.pub('ca2')} second\n"
        blobs = parse_trusted_ca_keys(text.encode(), "cas")
        self.assertEqual(blobs, {blob_of(self.keys.pub("ca")), blob_of(self.keys.pub("ca2"))})

    def test_errors(self):
        self.keys.key("ca")
        cert_line = (
            "ssh-ed25519-cert-v01@openssh.com "
            + base64.b64encode(self.keys.sign("ca", "user")).decode()
        )
        for text, reason in (
            (f"no-pty {self.keys.pub('ca')}\n", "cas:1: options are not allowed"),
            (f"cert-authority {self.keys.pub('ca')}\n", "cas:1: options are not allowed"),
            (f"\n{cert_line}\n", "cas:2: a certificate is not a CA key"),
            ("ssh-ed25519 AAAA!!\n", "cas:1: bad base64"),
            ("garbage\n", "cas:1:"),
        ):
            with self.assertRaises(TrustedCAKeysError) as caught:
                parse_trusted_ca_keys(text.encode(), "cas")
            self.assertIn(reason, str(caught.exception))

    def test_load(self):
        path = os.path.join(self.keys.base, "cas")
        with self.assertRaises(TrustedCAKeysError) as caught:
            load_trusted_ca_keys(path)
        self.assertIn("cannot read", str(caught.exception))
        with open(path, "w") as f:
            f.write("# nothing yet\n")
        with self.assertRaises(TrustedCAKeysError) as caught:
            load_trusted_ca_keys(path)
        self.assertIn("has no CA keys", str(caught.exception))
        self.keys.key("ca")
        with open(path, "w") as f:
            f.write(self.keys.pub("ca") + "\n")
        self.assertEqual(load_trusted_ca_keys(path), {blob_of(self.keys.pub("ca"))})


class CheckerTests(_Base):
    """L{AuthorizedKeysChecker} with certificate credentials, in memory."""

    def setUp(self):
        super().setUp()
        self.blob = self.keys.sign("ca", "user", principals="alice", serial=12, identity="lap")
        self.cert = parse_certificate(self.blob)
        self.data = b"signed userauth request"
        self.signature = keys.Key.fromFile(os.path.join(self.keys.base, "user")).sign(self.data)
        self.revoked_path = os.path.join(self.keys.base, "revoked")
        with open(self.revoked_path, "w") as f:
            f.write("# nothing revoked\n")

    def checker(self, authorized: str = "", trusted=True, revoked=None):
        from wraith_conch.gateway.auth import AuthorizedKeysChecker

        parsed = parse_authorized_keys(authorized.encode(), "keys")
        return AuthorizedKeysChecker(
            lambda user: parsed,
            now=lambda: NOW,
            trusted_ca_keys=frozenset({self.cert.ca_blob}) if trusted else frozenset(),
            revoked=revoked,
        )

    def credentials(
        self, user=b"alice", algorithm=b"ssh-ed25519-cert-v01@openssh.com", signed=True
    ):
        from types import SimpleNamespace

        return SimpleNamespace(
            username=user,
            algName=algorithm,
            blob=self.blob,
            sigData=self.data if signed else None,
            signature=self.signature if signed else None,
            client_address="127.0.0.1:50000",
        )

    def test_accepted_identity(self):
        identity = self.successResultOf(
            self.checker().requestAvatarId(self.credentials(b"alice%db1"))
        )
        self.assertEqual((identity.user, identity.target), ("alice", "db1"))
        self.assertEqual(identity.key_fingerprint, self.cert.fingerprint)
        self.assertEqual((identity.cert_serial, identity.cert_key_id), (12, "lap"))
        self.assertEqual(identity.method, "publickey")

    def test_query_answers_valid_public_key(self):
        from twisted.conch.error import ValidPublicKey

        failure = self.failureResultOf(
            self.checker().requestAvatarId(self.credentials(signed=False)), ValidPublicKey
        )
        self.assertIsNotNone(failure)

    def test_refusals(self):
        from twisted.cred.error import UnauthorizedLogin

        from wraith_conch.gateway.revocation import RevokedKeysFile

        revoked = RevokedKeysFile(self.revoked_path)
        cases = [
            (self.checker(trusted=False), self.credentials(), "untrusted CA"),
            (self.checker(), self.credentials(user=b"bob"), "not among"),
            (self.checker(), self.credentials(algorithm=b"ssh-ed25519"), "bad signature"),
            (
                self.checker(),
                self.credentials(algorithm=b"rsa-sha2-256-cert-v01@openssh.com"),
                "bad signature",
            ),
        ]
        for checker, credentials, reason in cases:
            failure = self.failureResultOf(checker.requestAvatarId(credentials), UnauthorizedLogin)
            self.assertIn(reason, str(failure.value))
        # A revocation file that breaks later refuses everyone (fail closed).
        checker = self.checker(revoked=revoked)
        self.successResultOf(checker.requestAvatarId(self.credentials()))
        with open(self.revoked_path + ".new", "w") as f:
            f.write("broken\n")
        os.replace(self.revoked_path + ".new", self.revoked_path)
        failure = self.failureResultOf(
            checker.requestAvatarId(self.credentials()), UnauthorizedLogin
        )
        self.assertIn("unusable", str(failure.value))


class UserAuthMixinTests(_Base):
    """What L{CertificatePublicKeyAuth} hands the portal, from raw packets."""

    def auth(self):
        from types import SimpleNamespace

        from twisted.conch.ssh.userauth import SSHUserAuthServer
        from twisted.internet import defer

        from wraith_conch.gateway.cert_userauth import CertificatePublicKeyAuth

        class Auth(CertificatePublicKeyAuth, SSHUserAuthServer):
            pass

        logins = []

        def login(credentials, mind, *interfaces):
            logins.append(credentials)
            return defer.succeed("avatar")

        auth = Auth()
        auth.user, auth.nextService = b"alice", b"ssh-connection"
        auth.transport = SimpleNamespace(sessionID=b"session")
        auth.portal = SimpleNamespace(login=login)
        return auth, logins

    def test_certificate_credentials(self):
        from twisted.conch.ssh.common import NS

        blob = self.keys.sign("ca", "user")
        algorithm = b"ssh-ed25519-cert-v01@openssh.com"
        auth, logins = self.auth()
        self.successResultOf(auth.auth_publickey(b"\x01" + NS(algorithm) + NS(blob) + NS(b"sig")))
        [credentials] = logins
        self.assertEqual((credentials.blob, credentials.signature), (blob, b"sig"))
        self.assertEqual(credentials.algName, algorithm)
        # RFC 4252 section 7: what the client signed.
        expected = (
            NS(b"session") + b"\x32" + NS(b"alice") + NS(b"ssh-connection") + NS(b"publickey")
        )
        expected += b"\x01" + NS(algorithm) + NS(blob)
        self.assertEqual(credentials.sigData, expected)
        # A query carries neither.
        self.successResultOf(auth.auth_publickey(b"\x00" + NS(algorithm) + NS(blob)))
        self.assertEqual((logins[1].signature, logins[1].sigData), (None, None))

    def test_malformed_signature_refused(self):
        from twisted.conch.ssh.common import NS
        from twisted.cred.error import UnauthorizedLogin

        blob = self.keys.sign("ca", "user")
        auth, logins = self.auth()
        packet = b"\x01" + NS(b"ssh-ed25519-cert-v01@openssh.com") + NS(blob) + b"\x00\x00"
        self.failureResultOf(auth.auth_publickey(packet), UnauthorizedLogin)
        self.assertEqual(logins, [])

    def test_plain_keys_left_to_conch(self):
        from twisted.conch.ssh.common import NS

        auth, logins = self.auth()
        self.keys.key("user")
        blob = blob_of(self.keys.pub("user"))
        self.successResultOf(auth.auth_publickey(b"\x00" + NS(b"ssh-ed25519") + NS(blob)))
        self.assertEqual(logins[0].blob, blob)
