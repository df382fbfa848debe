"""
The target's host key against C{known_hosts}: ports, patterns, hashed names
written by the real C{ssh-keygen -H}, markers, every verdict and error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import subprocess

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import keys
from twisted.trial import unittest

from wraith_conch.upstream.known_hosts import (
    HashedHostName,
    HostKeyVerdict,
    KnownHostEntry,
    KnownHosts,
    KnownHostsError,
    Marker,
    host_lookup_name,
    load_known_hosts,
    parse_known_hosts,
    sha256_fingerprint,
)

SSH_KEYGEN = "/usr/bin/ssh-keygen"

TRUSTED = HostKeyVerdict.TRUSTED
REVOKED = HostKeyVerdict.REVOKED
CHANGED = HostKeyVerdict.CHANGED
UNKNOWN = HostKeyVerdict.UNKNOWN


def _ns(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def new_key_line(kind: str = "ed25519") -> str:
    """C{type base64} of a fresh public key, as in a C{.pub} file."""
    if kind == "ed25519":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
    else:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def key_of(line: str) -> keys.Key:
    return keys.Key.fromString(line.encode())


def parse(text: str) -> KnownHosts:
    return parse_known_hosts(text.encode("utf-8"), "known")


SERVER = new_key_line()
OTHER = new_key_line()
SERVER_KEY = key_of(SERVER)
OTHER_KEY = key_of(OTHER)


class PortAndPatternTests(unittest.SynchronousTestCase):
    def test_plain_entry_is_for_port_22_only(self):
        known = parse(f"example.com {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 2222, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("example.org", 22, SERVER_KEY), UNKNOWN)

    def test_bracketed_entry_is_for_its_port_only(self):
        known = parse(f"[example.com]:2222 {SERVER}\n")
        self.assertEqual(known.check("example.com", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("example.com", 2223, SERVER_KEY), UNKNOWN)

    def test_bracketed_port_22_matches_nothing(self):
        """OpenSSH looks port 22 up as plain C{host}, never C{[host]:22}."""
        known = parse(f"[example.com]:22 {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), UNKNOWN)

    def test_ssh_keyscan_style_lines(self):
        known = parse(
            "# 127.0.0.1:2222 SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\n"
            f"[127.0.0.1]:2222 {SERVER}\n"
            "# [::1]:2222 SSH-2.0-OpenSSH_9.2p1\n"
            f"[::1]:2222 {SERVER}\n"
            f"::1 {OTHER}\n"
        )
        self.assertEqual(known.check("127.0.0.1", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("::1", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("[::1]", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("::1", 22, OTHER_KEY), TRUSTED)
        self.assertEqual(known.check("::1", 22, SERVER_KEY), CHANGED)
        self.assertEqual(known.check("127.0.0.1", 22, SERVER_KEY), UNKNOWN)

    def test_comma_list(self):
        known = parse(f"a.example,B.example,192.0.2.1,[c.example]:2200 {SERVER}\n")
        for host, port in [
            ("a.example", 22),
            ("b.example", 22),
            ("192.0.2.1", 22),
            ("c.example", 2200),
        ]:
            self.assertEqual(known.check(host, port, SERVER_KEY), TRUSTED, (host, port))
        self.assertEqual(known.check("c.example", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("a.example", 2200, SERVER_KEY), UNKNOWN)

    def test_host_names_ignore_case(self):
        known = parse(f"Example.COM,[Other.Example]:2222 {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("EXAMPLE.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("OTHER.example", 2222, SERVER_KEY), TRUSTED)

    def test_star(self):
        known = parse(f"*.example.com {SERVER}\n")
        self.assertEqual(known.check("a.example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("a.b.example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("a.example.com.evil", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("a.example.com", 2222, SERVER_KEY), UNKNOWN)

    def test_question_mark(self):
        known = parse(f"host?.example {SERVER}\n")
        self.assertEqual(known.check("host1.example", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("host10.example", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("host.example", 22, SERVER_KEY), UNKNOWN)

    def test_wildcards_inside_brackets(self):
        known = parse(f"[*.example.com]:2222,[db?]:* {SERVER}\n")
        self.assertEqual(known.check("a.example.com", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("a.example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("db1", 5432, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("db1", 22, SERVER_KEY), UNKNOWN)

    def test_lone_star_is_every_host_on_every_port(self):
        """OpenSSH matches the pattern against C{[host]:port} too."""
        known = parse(f"* {SERVER}\n")
        self.assertEqual(known.check("anything", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("anything", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("anything", 22, OTHER_KEY), CHANGED)

    def test_negation(self):
        known = parse(f"*.example.com,!secret.example.com {SERVER}\n")
        self.assertEqual(known.check("www.example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("secret.example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("SECRET.example.com", 22, SERVER_KEY), UNKNOWN)
        negated_first = parse(f"!secret.example.com,*.example.com {SERVER}\n")
        self.assertEqual(negated_first.check("secret.example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(negated_first.check("www.example.com", 22, SERVER_KEY), TRUSTED)

    def test_negation_alone_matches_nothing(self):
        known = parse(f"!secret.example.com {SERVER}\n")
        self.assertEqual(known.check("www.example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("secret.example.com", 22, SERVER_KEY), UNKNOWN)

    def test_negation_rules_out_only_its_line(self):
        known = parse(f"*,!secret.example.com {OTHER}\nsecret.example.com {SERVER}\n")
        self.assertEqual(known.check("secret.example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("www.example.com", 22, SERVER_KEY), CHANGED)

    def test_patterns_against_openssh(self):
        """
        Which lines match which host and port: the same answers as
        C{ssh-keygen -F}, OpenSSH's own lookup, on the same file.
        """
        lines = [
            "example.com",
            "[example.com]:2222",
            "*.corp.example",
            "*.corp.example,!vault.corp.example",
            "[*.corp.example]:22022",
            "host?",
            "[example.com]:22",
            "192.0.2.*",
            "::1",
            "[::1]:2222",
            "*",
        ]
        queries = [
            ("example.com", 22),
            ("example.com", 2222),
            ("a.corp.example", 22),
            ("vault.corp.example", 22),
            ("a.corp.example", 22022),
            ("host1", 22),
            ("host12", 22),
            ("192.0.2.77", 22),
            ("192.0.2.77", 2222),
            ("::1", 22),
            ("::1", 2222),
            ("unrelated.example", 80),
        ]
        base = self.mktemp()
        os.makedirs(base)
        for n, pattern in enumerate(lines):
            text = f"{pattern} {SERVER}\n"
            path = os.path.join(base, f"kh{n}")
            with open(path, "w") as f:
                f.write(text)
            known = parse(text)
            for host, port in queries:
                name = host if port == 22 else f"[{host}]:{port}"
                found = (
                    subprocess.run(
                        [SSH_KEYGEN, "-F", name, "-f", path], capture_output=True
                    ).returncode
                    == 0
                )
                ours = known.check(host, port, SERVER_KEY) is TRUSTED
                self.assertEqual(ours, found, (pattern, host, port))


class VerdictTests(unittest.SynchronousTestCase):
    def test_unknown_when_empty(self):
        self.assertEqual(parse("").check("example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(KnownHosts().check("example.com", 22, SERVER_KEY), UNKNOWN)

    def test_changed(self):
        known = parse(f"example.com {OTHER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), CHANGED)

    def test_changed_key_type(self):
        known = parse(f"example.com {new_key_line('ecdsa')}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), CHANGED)

    def test_any_matching_line_with_the_key_trusts(self):
        known = parse(f"example.com {OTHER}\n*.com {SERVER}\nexample.com {new_key_line()}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 22, OTHER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 22, key_of(new_key_line())), CHANGED)

    def test_key_for_another_host_is_not_trusted(self):
        known = parse(f"example.com {OTHER}\nexample.org {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), CHANGED)

    def test_private_key_object_compares_by_its_public_half(self):
        private = ed25519.Ed25519PrivateKey.generate()
        line = (
            private.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        known = parse(f"example.com {line}\n")
        self.assertEqual(known.check("example.com", 22, keys.Key(private)), TRUSTED)

    def test_revoked_wins_over_trusted(self):
        known = parse(f"example.com {SERVER}\n@revoked * {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), REVOKED)

    def test_revoked_for_every_host_whatever_its_patterns(self):
        known = parse(f"@revoked nothing.invalid {SERVER}\nexample.com {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), REVOKED)
        self.assertEqual(known.check("elsewhere", 2222, SERVER_KEY), REVOKED)

    def test_revoked_only_that_key(self):
        known = parse(f"@revoked * {OTHER}\nexample.com {SERVER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 22, OTHER_KEY), REVOKED)
        self.assertEqual(known.check("example.org", 22, SERVER_KEY), UNKNOWN)

    def test_revoked_lines_are_not_host_entries(self):
        known = parse(f"@revoked example.com {OTHER}\n")
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.entries, ())
        self.assertEqual([e.marker for e in known.revoked], [Marker.REVOKED])

    def test_cert_authority_recorded_never_trusted(self):
        ca = new_key_line()
        known = parse(f"@cert-authority *.example.com {ca} corp CA\n")
        self.assertEqual(known.check("www.example.com", 22, key_of(ca)), UNKNOWN)
        self.assertEqual(known.entries, ())
        (entry,) = known.cert_authorities
        self.assertEqual(
            (entry.lineno, entry.hosts, entry.marker, entry.comment, entry.blob),
            (1, ("*.example.com",), Marker.CERT_AUTHORITY, "corp CA", key_of(ca).blob()),
        )

    def test_cert_authority_does_not_count_as_an_entry(self):
        ca = new_key_line()
        known = parse(f"@cert-authority * {ca}\nwww.example.com {OTHER}\n")
        self.assertEqual(known.check("www.example.com", 22, key_of(ca)), CHANGED)
        self.assertEqual(known.check("www.example.org", 22, key_of(ca)), UNKNOWN)

    def test_verdict_names(self):
        """The client logs C{verdict.name.lower()}."""
        self.assertEqual(
            [v.name.lower() for v in HostKeyVerdict], ["trusted", "revoked", "changed", "unknown"]
        )


class HashedTests(unittest.SynchronousTestCase):
    """Hashed names written by the real C{ssh-keygen -H}."""

    def setUp(self):
        self.base = self.mktemp()
        os.makedirs(self.base)

    def hashed_file(self, text: str) -> str:
        path = os.path.join(self.base, "known_hosts")
        with open(path, "w") as f:
            f.write(text)
        subprocess.run([SSH_KEYGEN, "-H", "-f", path], check=True, capture_output=True)
        return path

    def test_hashed_entries_match(self):
        path = self.hashed_file(
            f"example.com {SERVER}\n"
            f"[example.com]:2222 {OTHER}\n"
            f"192.0.2.7,[192.0.2.7]:2200 {SERVER}\n"
            f"::1 {SERVER}\n"
            f"[::1]:2222 {SERVER}\n"
        )
        with open(path) as f:
            text = f.read()
        self.assertNotIn("example.com", text)
        self.assertNotIn("192.0.2.7", text)
        self.assertTrue(all(line.startswith("|1|") for line in text.splitlines()), text)
        known = load_known_hosts(path)
        self.assertEqual(len(known.entries), 6)
        self.assertTrue(all(isinstance(e.hosts, HashedHostName) for e in known.entries))
        self.assertEqual(known.check("example.com", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 2222, OTHER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 2222, SERVER_KEY), CHANGED)
        self.assertEqual(known.check("192.0.2.7", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("192.0.2.7", 2200, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("::1", 22, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("::1", 2222, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check("example.com", 2223, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("example.org", 22, SERVER_KEY), UNKNOWN)
        self.assertEqual(known.check("192.0.2.7", 2222, SERVER_KEY), UNKNOWN)

    def test_hashed_lookup_lowercases_the_host(self):
        path = self.hashed_file(f"example.com {SERVER}\n")
        known = load_known_hosts(path)
        self.assertEqual(known.check("EXAMPLE.com", 22, SERVER_KEY), TRUSTED)

    def test_hashed_revoked(self):
        """ssh-keygen -H leaves marker lines alone; a hashed one still parses."""
        path = self.hashed_file(f"@revoked example.com {OTHER}\nexample.com {SERVER}\n")
        with open(path) as f:
            revoked_line, hashed_line = f.read().splitlines()
        self.assertEqual(revoked_line, f"@revoked example.com {OTHER}")
        known = parse(f"@revoked {hashed_line}\n")
        self.assertIsInstance(known.revoked[0].hosts, HashedHostName)
        self.assertTrue(known.revoked[0].matches("example.com", 22))
        self.assertEqual(known.check("other.example", 22, SERVER_KEY), REVOKED)

    def test_ssh_keygen_finds_what_we_match(self):
        """And the other way round: ssh-keygen -F agrees on the hashed file."""
        path = self.hashed_file(f"[db.example]:5432 {SERVER}\n")
        found = subprocess.run(
            [SSH_KEYGEN, "-F", "[db.example]:5432", "-f", path], capture_output=True
        )
        self.assertEqual(found.returncode, 0)
        self.assertEqual(load_known_hosts(path).check("db.example", 5432, SERVER_KEY), TRUSTED)

    def test_hashed_name_object(self):
        salt = bytes(range(20))
        digest = hmac.new(salt, b"[h.example]:2022", hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
        known = parse(f"{name} {SERVER}\n")
        self.assertEqual(known.entries[0].hosts, HashedHostName(salt=salt, digest=digest))
        self.assertTrue(known.entries[0].matches("h.example", 2022))
        self.assertFalse(known.entries[0].matches("h.example", 22))


class ParsingTests(unittest.SynchronousTestCase):
    def test_entry_fields(self):
        known = parse(f"\n# comment\n  \tweb,[web]:8022\t{SERVER}   web host key  \r\n")
        (entry,) = known.entries
        self.assertIsInstance(entry, KnownHostEntry)
        self.assertEqual(entry.lineno, 3)
        self.assertEqual(entry.hosts, ("web", "[web]:8022"))
        self.assertIsNone(entry.marker)
        self.assertEqual(entry.comment, "web host key")
        self.assertEqual(entry.key, SERVER_KEY)
        self.assertEqual(entry.blob, SERVER_KEY.blob())
        self.assertEqual(known.source, "known")

    def test_entries_are_hashable_values(self):
        one = parse(f"web {SERVER}\n").entries[0]
        self.assertEqual(one, parse(f"web {SERVER}\n").entries[0])
        self.assertEqual(hash(one), hash(parse(f"web {SERVER}\n").entries[0]))
        self.assertNotEqual(one, parse(f"web {OTHER}\n").entries[0])

    def test_marker_with_tabs(self):
        known = parse(f"@revoked\t*\t{SERVER}\n")
        self.assertEqual(len(known.revoked), 1)

    def test_host_lookup_name(self):
        self.assertEqual(host_lookup_name("Example.com", 22), "example.com")
        self.assertEqual(host_lookup_name("example.com", 2222), "[example.com]:2222")
        self.assertEqual(host_lookup_name("::1", 22), "::1")
        self.assertEqual(host_lookup_name("::1", 2222), "[::1]:2222")
        self.assertEqual(host_lookup_name("[::1]", 2222), "[::1]:2222")

    def test_entries_for(self):
        known = parse(f"a {SERVER}\n@revoked a {OTHER}\n[a]:2 {OTHER}\n* {OTHER}\n")
        self.assertEqual([e.lineno for e in known.entries_for("a", 22)], [1, 4])
        self.assertEqual([e.lineno for e in known.entries_for("a", 2)], [3, 4])


class MalformedLineTests(unittest.SynchronousTestCase):
    def bad(self, line: str, reason: str) -> None:
        """C{line} as line 3, after a comment and a good entry."""
        with self.assertRaises(KnownHostsError) as caught:
            parse(f"# hosts\nexample.com {SERVER}\n{line}\nlater {SERVER}\n")
        message = str(caught.exception)
        self.assertTrue(message.startswith("known:3: "), message)
        self.assertIn(reason, message)
        self.assertNotIn("\n", message)

    def test_bad_base64(self):
        self.bad("example.org ssh-ed25519 AAAA!!", "bad base64 in key data")
        self.bad(f"example.org ssh-ed25519 {SERVER.split()[1][:-2]}", "bad base64 in key data")

    def test_missing_fields(self):
        self.bad("example.org", "missing key type and key data after the host names")
        self.bad("example.org ssh-ed25519", "missing key data after ssh-ed25519")
        self.bad("example.org ssh-ed25519   \t", "missing key data after ssh-ed25519")
        self.bad("@revoked", "missing host names after @revoked")
        self.bad("@cert-authority   ", "missing host names after @cert-authority")

    def test_key_type_disagrees_with_blob(self):
        self.bad(
            f"example.org ssh-rsa {SERVER.split()[1]}",
            "key type 'ssh-rsa' does not match the key data, which is 'ssh-ed25519'",
        )

    def test_unparseable_key(self):
        blob = _ns(b"ssh-ed25519") + _ns(b"\x00" * 3)
        self.bad(
            f"h ssh-ed25519 {base64.b64encode(blob).decode()}",
            "cannot parse the 'ssh-ed25519' key data",
        )
        blob = _ns(b"ssh-foo") + _ns(b"x")
        self.bad(
            f"h ssh-foo {base64.b64encode(blob).decode()}", "cannot parse the 'ssh-foo' key data"
        )
        blob = key_of(SERVER).blob() + b"extra"
        self.bad(
            f"h ssh-ed25519 {base64.b64encode(blob).decode()}", "unexpected extra or altered fields"
        )
        self.bad("h ssh-ed25519 AAAA", "key data is truncated")
        self.bad("h ssh-ed25519 AAAAC3Nz", "key data is truncated")

    def test_certificate_as_host_key(self):
        blob = _ns(b"ssh-ed25519-cert-v01@openssh.com") + b"rest"
        self.bad(
            f"h ssh-ed25519-cert-v01@openssh.com {base64.b64encode(blob).decode()}", "certificate"
        )

    def test_unknown_marker(self):
        self.bad(f"@trusted example.org {SERVER}", "unknown marker '@trusted'")
        self.bad(f"@REVOKED example.org {SERVER}", "unknown marker '@REVOKED'")

    def test_two_markers(self):
        self.bad(f"@revoked @cert-authority example.org {SERVER}", "only one marker")

    def test_bad_hashed_names(self):
        good_salt = base64.b64encode(b"s" * 20).decode()
        good_hash = base64.b64encode(b"h" * 20).decode()
        for name in (
            f"|2|{good_salt}|{good_hash}",
            f"|1|{good_salt}",
            f"|1|{good_salt}!|{good_hash}",
            f"|1|{good_salt}|{good_hash}|",
            f"|1|{base64.b64encode(b's' * 16).decode()}|{good_hash}",
            f"|1|{good_salt}|{base64.b64encode(b'h' * 32).decode()}",
            f"|1|{good_salt}|{good_hash},example.org",
            "|",
        ):
            self.bad(f"{name} {SERVER}", "bad hashed host name")

    def test_empty_patterns(self):
        self.bad(f"a,,b {SERVER}", "empty host pattern")
        self.bad(f"a, {SERVER}", "empty host pattern")
        self.bad(f"a,! {SERVER}", "empty host pattern")

    def test_invalid_utf8(self):
        with self.assertRaises(KnownHostsError) as caught:
            parse_known_hosts(b"\n\nh\xff " + SERVER.encode() + b"\n", "known")
        self.assertEqual(str(caught.exception), "known:3: line is not valid UTF-8")

    def test_line_numbers_count_lf_only(self):
        with self.assertRaises(KnownHostsError) as caught:
            parse_known_hosts(b"# a\x0cb\r\n# c\x1c\nbad\n", "known")
        self.assertTrue(str(caught.exception).startswith("known:3: "), str(caught.exception))


class LoadTests(unittest.SynchronousTestCase):
    def test_missing_file(self):
        path = os.path.join(self.mktemp(), "known_hosts")
        with self.assertRaises(KnownHostsError) as caught:
            load_known_hosts(path)
        self.assertEqual(
            str(caught.exception), f"cannot read known_hosts file {path}: No such file or directory"
        )

    def test_directory(self):
        path = self.mktemp()
        os.makedirs(path)
        with self.assertRaises(KnownHostsError) as caught:
            load_known_hosts(path)
        self.assertIn("Is a directory", str(caught.exception))

    def test_errors_name_the_path(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"ok {SERVER}\nbroken\n")
        with self.assertRaises(KnownHostsError) as caught:
            load_known_hosts(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}:2: "), str(caught.exception))

    def test_empty_file(self):
        path = self.mktemp()
        open(path, "w").close()
        known = load_known_hosts(path)
        self.assertEqual((known.entries, known.revoked, known.cert_authorities), ((), (), ()))
        self.assertEqual(known.source, path)


class FingerprintTests(unittest.SynchronousTestCase):
    def test_same_as_ssh_keygen(self):
        base = self.mktemp()
        os.makedirs(base)
        for kind in ("ed25519", "ecdsa", "rsa"):
            path = os.path.join(base, kind)
            subprocess.run(
                [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-f", path],
                check=True,
                capture_output=True,
            )
            listed = subprocess.run(
                [SSH_KEYGEN, "-l", "-E", "sha256", "-f", path + ".pub"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[1]
            with open(path + ".pub", "rb") as f:
                key = keys.Key.fromString(f.read())
            self.assertEqual(sha256_fingerprint(key), listed)
            self.assertTrue(listed.startswith("SHA256:"))
            self.assertFalse(listed.endswith("="))


_host_chars = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789.-:", min_size=1, max_size=30
)
_line_parts = st.sampled_from(
    [
        "@revoked",
        "@cert-authority",
        "@",
        "|1|",
        "|",
        "[",
        "]",
        ":",
        ",",
        "!",
        "*",
        "?",
        " ",
        "\t",
        "#",
        "\r",
        "\x00",
        "=",
        "example.com",
        "ssh-ed25519",
        "AAAA",
        SERVER.split()[1],
        "\u00e9",
    ]
)


class PropertyTests(unittest.SynchronousTestCase):
    def assertParsesOrRefuses(self, data: bytes) -> None:
        try:
            known = parse_known_hosts(data, "fuzz")
        except KnownHostsError as e:
            self.assertTrue(str(e).startswith("fuzz:"), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(known, KnownHosts)
            self.assertIn(known.check("example.com", 22, SERVER_KEY), set(HostKeyVerdict))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_arbitrary_bytes(self, data):
        self.assertParsesOrRefuses(data)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_line_parts, max_size=20).map("".join))
    def test_line_like_text(self, text):
        self.assertParsesOrRefuses(text.encode("utf-8"))

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", "ssh-dss"]),
        st.binary(max_size=200),
    )
    def test_garbage_key_data(self, type_name, payload):
        blob = base64.b64encode(_ns(type_name.encode()) + payload).decode()
        self.assertParsesOrRefuses(f"h {type_name} {blob}\n".encode())

    @settings(max_examples=200, deadline=None)
    @given(
        _host_chars,
        st.integers(min_value=1, max_value=65535),
        st.integers(min_value=1, max_value=65535),
    )
    def test_literal_entry_matches_only_its_port(self, host, port, other_port):
        known = parse(f"{host_lookup_name(host, port)} {SERVER}\n")
        self.assertEqual(known.check(host.upper(), port, SERVER_KEY), TRUSTED)
        self.assertEqual(known.check(host, port, OTHER_KEY), CHANGED)
        if other_port != port:
            self.assertEqual(known.check(host, other_port, SERVER_KEY), UNKNOWN)
