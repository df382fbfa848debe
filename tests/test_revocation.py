"""
Revocation (C{--revoked-keys}): KRLs made by the real C{ssh-keygen -k} and
judged against C{ssh-keygen -Q} as the oracle, malformed KRLs built by
hand, text key lists, the re-reading file, and the config flags.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from tests.test_certificates import KeyMaker, blob_of
from wraith_conch.config import ConfigError, build_config
from wraith_conch.gateway.certificates import parse_certificate
from wraith_conch.gateway.revocation import (
    KRL_MAGIC,
    RevocationError,
    RevocationList,
    RevokedCertificates,
    RevokedKeysFile,
    load_revoked_keys,
    parse_key_list,
    parse_krl,
    parse_revoked_keys,
)


def _ns(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def krl(*sections: tuple[int, bytes], version: int = 1, comment: bytes = b"") -> bytes:
    header = KRL_MAGIC + struct.pack(">I", version) + _u64(1) + _u64(0) + _u64(0)
    header += _ns(b"") + _ns(comment)
    return header + b"".join(bytes([kind]) + _ns(body) for kind, body in sections)


def cert_section(ca_blob: bytes, *subsections: tuple[int, bytes]) -> tuple[int, bytes]:
    body = _ns(ca_blob) + _ns(b"")
    body += b"".join(bytes([kind]) + _ns(data) for kind, data in subsections)
    return (1, body)


def section_types(data: bytes) -> list[int]:
    """The top-level section types of a KRL, and the subsection types of certificate sections."""
    pos = len(KRL_MAGIC) + 4 + 24
    for _ in range(2):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        pos += 4 + n
    found = []
    while pos < len(data):
        kind = data[pos]
        (n,) = struct.unpack(">I", data[pos + 1 : pos + 5])
        body = data[pos + 5 : pos + 5 + n]
        pos += 5 + n
        found.append(kind)
        if kind == 1:
            p = 0
            for _ in range(2):
                (m,) = struct.unpack(">I", body[p : p + 4])
                p += 4 + m
            while p < len(body):
                found.append(body[p])
                (m,) = struct.unpack(">I", body[p + 1 : p + 5])
                p += 5 + m
    return found


class OracleTests(unittest.SynchronousTestCase):
    """Whatever ssh-keygen -k writes, we revoke exactly what ssh-keygen -Q does."""

    # The keys and certificates are the same for every test: made once per
    # process (trial has no setUpClass), removed at exit.
    _made: tuple[KeyMaker, list[str]] | None = None

    def setUp(self):
        cls = type(self)
        if cls._made is None:
            cls._make()
        self.keys, self.subjects = cls._made

    @classmethod
    def _make(cls):
        base = tempfile.mkdtemp(prefix="wraith-krl-")
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        cls.keys = KeyMaker(base)
        cls.subjects: list[str] = []
        for name in ("k1", "k2", "k3"):
            cls.keys.key(name)
        cls.keys.key("rsa1", "rsa")
        cls.keys.key("ca")
        cls.keys.key("ca2", "ecdsa")
        cls.subjects = [os.path.join(cls.keys.base, n + ".pub") for n in ("k1", "k2", "rsa1")]
        cls.subjects.append(os.path.join(cls.keys.base, "ca.pub"))
        serials = [0, 1, 5, 6, 7, 12, 15, 31, 99, 150, 2**63 + 5]
        for i, serial in enumerate(serials):
            for ca in ("ca", "ca2"):
                cls.subjects.append(cls.cert(ca, "k1", serial, f"id-{serial % 7}", f"{ca}_{i}"))
        cls.subjects.append(cls.cert("ca", "k3", 5, "k3-cert", "k3_cert"))
        cls._made = (cls.keys, cls.subjects)

    @classmethod
    def cert(cls, ca: str, key: str, serial: int, identity: str, out: str) -> str:
        cls.keys.sign(ca, key, identity=identity, serial=serial, validity="always:forever")
        path = os.path.join(cls.keys.base, out + "-cert.pub")
        os.replace(os.path.join(cls.keys.base, key + "-cert.pub"), path)
        return path

    def make_krl(self, spec: str, ca: str | None = "ca") -> bytes:
        spec_path = os.path.join(self.keys.base, "spec")
        with open(spec_path, "w") as f:
            f.write(spec)
        path = os.path.join(self.keys.base, "krl")
        argv = ["ssh-keygen", "-q", "-k", "-f", path]
        if ca:
            argv += ["-s", os.path.join(self.keys.base, ca + ".pub")]
        subprocess.run([*argv, spec_path], check=True, capture_output=True)
        with open(path, "rb") as f:
            return f.read()

    def oracle(self, path: str) -> dict[str, bool]:
        result = subprocess.run(
            ["ssh-keygen", "-Q", "-f", path, *self.subjects], capture_output=True, text=True
        )
        verdicts = {}
        for line in result.stdout.splitlines():
            name, _, verdict = line.rpartition(": ")
            verdicts[name.split(" (")[0]] = verdict == "REVOKED"
        self.assertEqual(len(verdicts), len(self.subjects), result.stdout + result.stderr)
        return verdicts

    def ours(self, revoked: RevocationList) -> dict[str, bool]:
        verdicts = {}
        for path in self.subjects:
            with open(path) as f:
                blob = blob_of(f.read())
            if path.endswith("-cert.pub"):
                cert = parse_certificate(blob)
                reason = revoked.certificate_revoked_reason(
                    cert.key_blob, cert.ca_blob, cert.serial, cert.key_id_bytes
                )
                verdicts[path] = reason is not None
            else:
                verdicts[path] = revoked.key_revoked(blob)
        return verdicts

    def assertAgrees(self, spec: str, ca: str | None = "ca", expect_types=()) -> RevocationList:
        data = self.make_krl(spec, ca)
        for kind in expect_types:
            self.assertIn(kind, section_types(data), spec)
        revoked = parse_krl(data)
        expected = self.oracle(os.path.join(self.keys.base, "krl"))
        ours = self.ours(revoked)
        self.assertEqual(ours, expected, spec)
        self.assertTrue(any(expected.values()), f"spec revokes nothing here: {spec}")
        return revoked

    def test_serial_list(self):
        self.assertAgrees("serial: 5\nserial: 99\n", expect_types=[0x20])

    def test_serial_range(self):
        self.assertAgrees("serial: 5-100\n", expect_types=[0x21])

    def test_serial_bitmap(self):
        spec = "".join(f"serial: {n}\n" for n in range(1, 200, 2))
        self.assertAgrees(spec, expect_types=[0x22])

    def test_huge_serial(self):
        self.assertAgrees(f"serial: {2**63}-{2**64 - 1}\n")

    def test_key_id(self):
        self.assertAgrees("id: id-5\nid: k3-cert\n", expect_types=[0x23])

    def test_serials_of_another_ca(self):
        self.assertAgrees("serial: 1-1000\n", ca="ca2")

    def test_explicit_key(self):
        self.assertAgrees(f"key: {self.keys.pub('k2')}\n", ca=None, expect_types=[2])

    def test_certificate_key_revoked_through_its_key(self):
        self.assertAgrees(f"key: {self.keys.pub('k3')}\n", ca=None)

    def test_ca_key_revoked(self):
        self.assertAgrees(f"key: {self.keys.pub('ca')}\n", ca=None)

    def test_sha1_and_sha256(self):
        spec = f"sha1: {self.keys.pub('k1')}\nsha256: {self.keys.pub('rsa1')}\n"
        self.assertAgrees(spec, ca=None, expect_types=[3, 5])

    def test_hash_fingerprint(self):
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", os.path.join(self.keys.base, "k2.pub")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        self.assertAgrees(f"hash: {fingerprint}\n", ca=None, expect_types=[5])

    def test_everything_at_once(self):
        spec = (
            "serial: 5\nserial: 10-20\nid: id-3\n"
            f"key: {self.keys.pub('k2')}\nsha256: {self.keys.pub('rsa1')}\n"
        )
        self.assertAgrees(spec)


class SyntheticKRLTests(unittest.SynchronousTestCase):
    CA = _ns(b"ssh-ed25519") + _ns(b"\x01" * 32)
    OTHER_CA = _ns(b"ssh-ed25519") + _ns(b"\x02" * 32)
    KEY = _ns(b"ssh-ed25519") + _ns(b"\x03" * 32)

    def test_empty_krl_revokes_nothing(self):
        revoked = parse_krl(krl(comment=b"nothing yet"))
        self.assertEqual(revoked, RevocationList())
        self.assertFalse(revoked.key_revoked(self.KEY))

    def test_bitmap_semantics(self):
        # offset 100, bits 0, 2 and 9: serials 100, 102, 109.
        bitmap = (1 | 4 | 512).to_bytes(2, "big")
        revoked = parse_krl(krl(cert_section(self.CA, (0x22, _u64(100) + _ns(bitmap)))))
        [section] = revoked.certificates
        hits = [s for s in range(90, 120) if section.revokes(s, b"")]
        self.assertEqual(hits, [100, 102, 109])
        # An mpint may carry a leading zero byte.
        revoked = parse_krl(krl(cert_section(self.CA, (0x22, _u64(1) + _ns(b"\x00\x81")))))
        self.assertTrue(revoked.certificates[0].revokes(1, b""))
        self.assertTrue(revoked.certificates[0].revokes(8, b""))
        self.assertFalse(revoked.certificates[0].revokes(2, b""))

    def test_wildcard_ca_and_ca_matching(self):
        revoked = parse_krl(
            krl(
                cert_section(b"", (0x23, _ns(b"everywhere"))),
                cert_section(self.CA, (0x21, _u64(10) + _u64(20))),
            )
        )
        reason = revoked.certificate_revoked_reason
        self.assertIsNotNone(reason(self.KEY, self.OTHER_CA, 1, b"everywhere"))
        self.assertIsNotNone(reason(self.KEY, self.CA, 15, b"x"))
        self.assertIsNone(reason(self.KEY, self.OTHER_CA, 15, b"x"))
        self.assertIsNone(reason(self.KEY, self.CA, 21, b"x"))

    def test_serial_zero_never_revoked_by_serial(self):
        section = RevokedCertificates(ca_blob=b"", serial_ranges=((1, 2**64 - 1),))
        self.assertFalse(section.revokes(0, b""))
        self.assertTrue(RevokedCertificates(b"", key_ids=frozenset({b"a"})).revokes(0, b"a"))

    def test_non_critical_extensions_ignored(self):
        extension = _ns(b"bloom-explicit-key") + b"\x00" + _ns(b"whatever")
        revoked = parse_krl(
            krl((255, extension), cert_section(self.CA, (0x39, extension), (0x20, _u64(3))))
        )
        self.assertTrue(revoked.certificates[0].revokes(3, b""))

    def test_hash_sections(self):
        revoked = parse_krl(
            krl(
                (3, _ns(hashlib.sha1(self.KEY).digest())),
                (5, _ns(hashlib.sha256(self.CA).digest())),
                (2, _ns(self.OTHER_CA)),
            )
        )
        self.assertTrue(revoked.key_revoked(self.KEY))
        self.assertTrue(revoked.key_revoked(self.CA))
        self.assertTrue(revoked.key_revoked(self.OTHER_CA))
        self.assertEqual(
            revoked.certificate_revoked_reason(self.KEY, self.CA, 1, b""),
            "the certificate's key is revoked",
        )
        self.assertEqual(
            revoked.certificate_revoked_reason(b"other", self.CA, 1, b""),
            "the certificate's CA key is revoked",
        )

    def test_malformed(self):
        cert_blob = _ns(b"ssh-ed25519-cert-v01@openssh.com") + b"x"
        critical = _ns(b"must-understand@example.com") + b"\x01" + _ns(b"")
        good = krl()
        cases = [
            (b"", "bad magic"),
            (b"SSHKRL\n", "bad magic"),
            (good[:-1], "truncated"),
            (good[:20], "truncated"),
            (krl(version=2), "format version 2"),
            (krl((4, _ns(self.CA) + _ns(b"sig"))), "signed KRLs are not supported"),
            (krl((6, b"")), "unknown KRL section type 6"),
            (krl((255, critical)), "unsupported critical KRL extension"),
            (krl((255, critical[:-2])), "truncated"),
            (krl((255, critical + b"x")), "trailing data"),
            (good + b"\x02", "truncated"),
            (good + b"\x02\x00\x00\x00\x09abc", "truncated"),
            (krl((2, b"")), "explicit key section is empty"),
            (krl((2, _ns(b""))), "empty entry"),
            (krl((2, _ns(cert_blob))), "holds a certificate"),
            (krl((3, _ns(b"\x00" * 32))), "20"),
            (krl((5, _ns(b"\x00" * 20))), "32"),
            (krl((5, b"\x00\x00\x00")), "truncated"),
            (krl(comment=b"a\x00b"), "NUL"),
            (krl((1, b"")), "truncated"),
            (krl(cert_section(self.CA, (0x20, _u64(0)))), "serial 0"),
            (krl(cert_section(self.CA, (0x20, b"\x00" * 7))), "truncated"),
            (krl(cert_section(self.CA, (0x21, _u64(0) + _u64(5)))), "serial 0"),
            (krl(cert_section(self.CA, (0x21, _u64(9) + _u64(5)))), "reversed"),
            (krl(cert_section(self.CA, (0x21, _u64(1) + _u64(5) + b"x"))), "trailing data"),
            (krl(cert_section(self.CA, (0x22, _u64(0) + _ns(b"\x01")))), "serial 0"),
            (krl(cert_section(self.CA, (0x22, _u64(1) + _ns(b"\x80")))), "negative"),
            (krl(cert_section(self.CA, (0x22, _u64(1) + _ns(b"\x01" * 3000)))), "too large"),
            (krl(cert_section(self.CA, (0x22, _u64(2**64 - 1) + _ns(b"\x02")))), "past 2^64"),
            (krl(cert_section(self.CA, (0x23, b""))), "key ID subsection is empty"),
            (krl(cert_section(self.CA, (0x23, _ns(b"a\x00b")))), "NUL"),
            (krl(cert_section(self.CA, (0x24, b""))), "subsection type 0x24"),
            (krl(cert_section(self.CA, (0x39, critical))), "critical KRL certificate extension"),
            (krl(cert_section(cert_blob)), "holds a certificate"),
        ]
        for data, reason in cases:
            with self.assertRaises(RevocationError, msg=reason) as caught:
                parse_krl(data)
            self.assertIn(reason, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_fuzz_never_crashes(self):
        # Every prefix and every single-byte corruption of a rich KRL either
        # parses or raises RevocationError: nothing else escapes.
        data = krl(
            cert_section(self.CA, (0x20, _u64(3)), (0x21, _u64(5) + _u64(9))),
            cert_section(self.CA, (0x22, _u64(1) + _ns(b"\x05")), (0x23, _ns(b"id"))),
            (2, _ns(self.KEY)),
            (3, _ns(b"\x01" * 20)),
            (5, _ns(b"\x02" * 32)),
        )
        parse_krl(data)
        variants = [data[:n] for n in range(len(data))]
        for i in range(len(KRL_MAGIC), len(data)):
            for value in (0x00, 0xFF, data[i] ^ 0x01):
                variants.append(data[:i] + bytes([value]) + data[i + 1 :])
        for variant in variants:
            try:
                parse_krl(variant)
            except RevocationError:
                pass


class KeyListTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.keys = KeyMaker(self.mktemp())
        self.keys.key("a")
        self.keys.key("b", "ecdsa")
        self.keys.key("c", "rsa")

    def test_lines(self):
        cert = self.keys.sign("ca", "c", serial=3)
        cert_line = "ssh-rsa-cert-v01@openssh.com " + base64.b64encode(cert).decode()
        text = (
            "# revoked on 2026-11-20\n\n"
            f"{self.keys.pub('a')}\r\n"
            f'  no-pty,from="10.0.0.1" {self.keys.pub("b")} with options\n'
            f"{cert_line} lost laptop\n"
        )
        revoked = parse_key_list(text.encode(), "revoked")
        for name in ("a", "b", "c"):
            self.assertTrue(revoked.key_revoked(blob_of(self.keys.pub(name))), name)
        self.assertFalse(revoked.key_revoked(blob_of(self.keys.pub("ca"))))
        self.assertEqual(revoked.certificates, ())

    def test_errors_name_the_line(self):
        for text, reason in (
            ("\ngarbage\n", "revoked:2: not a public key line"),
            ("ssh-ed25519 AAAA!!\n", "revoked:1: not a public key line"),
            ("ssh-ed25519\n", "revoked:1:"),
            (f"ssh-rsa {self.keys.pub('a').split()[1]}\n", "revoked:1: not a public key"),
            ("ssh-ed25519 " + base64.b64encode(_ns(b"ssh-ed25519") + _ns(b"x")).decode(), "bad"),
        ):
            with self.assertRaises(RevocationError) as caught:
                parse_key_list(text.encode(), "revoked")
            self.assertIn(reason, str(caught.exception))

    def test_dispatch_and_load(self):
        self.assertEqual(parse_revoked_keys(b"# empty\n", "x"), RevocationList())
        with self.assertRaises(RevocationError) as caught:
            parse_revoked_keys(KRL_MAGIC + b"\x00", "file.krl")
        self.assertTrue(str(caught.exception).startswith("file.krl: "))
        with self.assertRaises(RevocationError) as caught:
            load_revoked_keys(os.path.join(self.keys.base, "missing"))
        self.assertIn("cannot read", str(caught.exception))


class RevokedKeysFileTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.keys = KeyMaker(self.mktemp())
        self.keys.key("a")
        self.keys.key("b")
        self.path = os.path.join(self.keys.base, "revoked")
        self.a, self.b = blob_of(self.keys.pub("a")), blob_of(self.keys.pub("b"))

    def write(self, text: str) -> None:
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)  # a new inode: seen even within one mtime tick

    def test_reload_and_fail_closed(self):
        self.write(self.keys.pub("a") + "\n")
        revoked = RevokedKeysFile(self.path)
        self.assertEqual(revoked.key_revoked_reason(self.a), "the key is revoked")
        self.assertIsNone(revoked.key_revoked_reason(self.b))
        self.write(self.keys.pub("b") + "\n")
        self.assertIsNone(revoked.key_revoked_reason(self.a))
        self.assertEqual(revoked.key_revoked_reason(self.b), "the key is revoked")
        # Broken or gone: every key refused until fixed.
        self.write("not a key\n")
        self.assertEqual(revoked.key_revoked_reason(self.a), "the revoked-keys file is unusable")
        self.assertEqual(
            revoked.certificate_revoked_reason(self.a, self.b, 1, b""),
            "the revoked-keys file is unusable",
        )
        os.remove(self.path)
        self.assertIsNotNone(revoked.key_revoked_reason(self.b))
        self.write("# all forgiven\n")
        self.assertIsNone(revoked.key_revoked_reason(self.a))

    def test_unusable_at_start_is_an_error(self):
        self.write("junk\n")
        with self.assertRaises(RevocationError):
            RevokedKeysFile(self.path)


class ConfigTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.keys = KeyMaker(self.mktemp())
        base = self.keys.base
        self.keys.key("identity")
        self.keys.key("ca")
        self.known = os.path.join(base, "known_hosts")
        open(self.known, "w").close()
        self.options = {
            "host-key": os.path.join(base, "hk"),
            "target": "127.0.0.1:22",
            "target-known-hosts": self.known,
            "target-identity": os.path.join(base, "identity"),
            "approval": "ws://127.0.0.1:9/",
        }

    def file(self, name: str, content: bytes) -> str:
        path = os.path.join(self.keys.base, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def build(self, **flags):
        return build_config({**self.options, **flags}, reactor)

    def assertConfigError(self, flag: str, needle: str, **flags) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.build(**flags)
        self.assertEqual(caught.exception.flag, flag)
        self.assertIn(needle, str(caught.exception))

    def test_certificates_only(self):
        cas = self.file("cas", (self.keys.pub("ca") + "\n").encode())
        config = self.build(**{"trusted-user-ca-keys": cas})
        self.assertEqual(config.trusted_user_ca_keys, {blob_of(self.keys.pub("ca"))})
        self.assertEqual(config.authorized_keys.entries, ())
        self.assertIsNone(config.revoked_keys)

    def test_neither_keys_nor_cas(self):
        self.assertConfigError("authorized-keys", "unless --trusted-user-ca-keys")

    def test_bad_files_stop_the_start(self):
        cas = self.file("cas", (self.keys.pub("ca") + "\n").encode())
        self.assertConfigError(
            "trusted-user-ca-keys",
            "bad base64",
            **{"trusted-user-ca-keys": self.file("x", b"ssh-ed25519 !!\n")},
        )
        self.assertConfigError(
            "trusted-user-ca-keys", "cannot read", **{"trusted-user-ca-keys": cas + ".missing"}
        )
        self.assertConfigError(
            "revoked-keys",
            "not a public key line",
            **{"trusted-user-ca-keys": cas, "revoked-keys": self.file("r", b"junk\n")},
        )
        self.assertConfigError(
            "revoked-keys",
            "truncated",
            **{"trusted-user-ca-keys": cas, "revoked-keys": self.file("k", KRL_MAGIC + b"\0")},
        )
        self.assertConfigError(
            "revoked-keys",
            "cannot read",
            **{"trusted-user-ca-keys": cas, "revoked-keys": cas + ".missing"},
        )

    def test_good_krl(self):
        cas = self.file("cas", (self.keys.pub("ca") + "\n").encode())
        config = self.build(**{"trusted-user-ca-keys": cas, "revoked-keys": self.file("k", krl())})
        self.assertEqual(config.revoked_keys.current(), RevocationList())

    def test_only_with_keys_auth(self):
        cas = self.file("cas", (self.keys.pub("ca") + "\n").encode())
        for flag in ("trusted-user-ca-keys", "revoked-keys"):
            self.assertConfigError(flag, "only with --auth keys", auth="passthrough", **{flag: cas})
