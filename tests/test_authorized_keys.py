"""
The C{authorized_keys} parser: every key type, option and error, C{from=}
matching as sshd does it, certificate lines skipped, and cert-authority
lines kept apart from login keys.

Keys come from C{cryptography} (fast, OpenSSH's own text form) and, where
the point is "what OpenSSH writes", from the real C{ssh-keygen}.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import keys
from twisted.trial import unittest

from wraith_conch.gateway.authorized_keys import (
    KEY_TYPES,
    AuthorizedKey,
    AuthorizedKeys,
    AuthorizedKeysError,
    KeyOptions,
    SkippedLine,
    load_authorized_keys,
    parse_authorized_keys,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSH_KEYGEN = "/usr/bin/ssh-keygen"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def _ns(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _openssh_line(public_key) -> str:
    return public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def ed25519_line() -> str:
    return _openssh_line(ed25519.Ed25519PrivateKey.generate().public_key())


def ecdsa_line(curve: ec.EllipticCurve) -> str:
    return _openssh_line(ec.generate_private_key(curve).public_key())


def rsa_line(bits: int = 2048) -> str:
    return _openssh_line(rsa.generate_private_key(65537, bits).public_key())


def _line_from_blob(blob: bytes) -> str:
    type_name = blob[4 : 4 + struct.unpack(">I", blob[:4])[0]].decode()
    return f"{type_name} {base64.b64encode(blob).decode()}"


def sk_ed25519_line() -> str:
    """A FIDO ed25519 key as ssh-keygen -t ed25519-sk writes it (no token needed)."""
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return _line_from_blob(_ns(b"sk-ssh-ed25519@openssh.com") + _ns(raw) + _ns(b"ssh:"))


def sk_ecdsa_line() -> str:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return _line_from_blob(
        _ns(b"sk-ecdsa-sha2-nistp256@openssh.com") + _ns(b"nistp256") + _ns(point) + _ns(b"ssh:")
    )


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def parse(text: str) -> AuthorizedKeys:
    return parse_authorized_keys(text.encode("utf-8"), "keys")


def options_of(options: str) -> KeyOptions:
    """The options of a one-key file whose only line has C{options}."""
    result = parse(f"{options} {ED25519} operator\n")
    return result.entries[0].options


# One key reused where only the options matter (generating is cheap, but
# a fixed key keeps the failing line readable).
ED25519 = ed25519_line()


class ErrorAssertions:
    def assertLineError(self, text: str, lineno: int, reason: str) -> str:
        """Parsing C{text} fails on line C{lineno}, saying C{reason}, in one line."""
        with self.assertRaises(AuthorizedKeysError) as caught:
            parse(text)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"keys:{lineno}: "), message)
        self.assertIn(reason, message)
        self.assertNotIn("\n", message)
        return message


class KeyTypeTests(unittest.SynchronousTestCase):
    def test_every_key_type(self):
        lines = {
            "ssh-ed25519": ed25519_line(),
            "ecdsa-sha2-nistp256": ecdsa_line(ec.SECP256R1()),
            "ecdsa-sha2-nistp384": ecdsa_line(ec.SECP384R1()),
            "ecdsa-sha2-nistp521": ecdsa_line(ec.SECP521R1()),
            "ssh-rsa": rsa_line(),
            "sk-ssh-ed25519@openssh.com": sk_ed25519_line(),
            "sk-ecdsa-sha2-nistp256@openssh.com": sk_ecdsa_line(),
        }
        self.assertEqual(set(lines), KEY_TYPES)
        result = parse("".join(f"{line} key-{n}\n" for n, line in enumerate(lines.values())))
        self.assertEqual(len(result.entries), len(lines))
        for n, ((type_name, line), entry) in enumerate(
            zip(lines.items(), result.entries, strict=True)
        ):
            self.assertIsInstance(entry.key, keys.Key)
            self.assertEqual(entry.key.sshType(), type_name.encode())
            self.assertEqual(entry.blob, blob_of(line))
            self.assertEqual(entry.key.blob(), blob_of(line))
            self.assertEqual(entry.lineno, n + 1)
            self.assertEqual(entry.comment, f"key-{n}")
            self.assertEqual(entry.options, KeyOptions())
        self.assertEqual(result.skipped, ())
        self.assertEqual(result.source, "keys")

    def test_keys_written_by_ssh_keygen(self):
        """What the operator pastes from C{id_*.pub} loads, comment and all."""
        base = self.mktemp()
        os.makedirs(base)
        written = []
        for n, (kind, bits) in enumerate(
            [
                ("ed25519", None),
                ("ecdsa", "256"),
                ("ecdsa", "384"),
                ("ecdsa", "521"),
                ("rsa", "3072"),
            ]
        ):
            path = os.path.join(base, f"id_{n}")
            argv = [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", f"op {n}@laptop", "-f", path]
            if bits:
                argv[4:4] = ["-b", bits]
            subprocess.run(argv, check=True, capture_output=True)
            with open(path + ".pub") as f:
                written.append(f.read().strip())
        path = os.path.join(base, "authorized_keys")
        with open(path, "w") as f:
            f.write("\n".join(written) + "\n")
        result = load_authorized_keys(path)
        self.assertEqual(result.source, path)
        self.assertEqual([e.comment for e in result.entries], [f"op {n}@laptop" for n in range(5)])
        self.assertEqual([e.blob for e in result.entries], [blob_of(line) for line in written])
        self.assertEqual(result.entries[4].key.size(), 3072)

    def test_comment_blank_lines_and_line_numbers(self):
        text = (
            "# operators of the gateway\n"
            "\n"
            "   \t\n"
            f"  \t{ED25519}   alice laptop  \r\n"
            "    # indented comment\n"
            f"{ED25519}\n"
            f"no-pty\t{ED25519}\tbob\n"
        )
        result = parse(text)
        self.assertEqual([e.lineno for e in result.entries], [4, 6, 7])
        self.assertEqual([e.comment for e in result.entries], ["alice laptop", "", "bob"])
        self.assertTrue(result.entries[2].options.no_pty)

    def test_only_lf_ends_a_line(self):
        """A form feed or other odd break in a comment does not shift line numbers."""
        text = f"{ED25519} a\x0cb\x1cc\n{ED25519} second\n"
        result = parse(text)
        self.assertEqual(
            [(e.lineno, e.comment) for e in result.entries], [(1, "a\x0cb\x1cc"), (2, "second")]
        )

    def test_empty_file(self):
        self.assertEqual(parse(""), AuthorizedKeys(entries=(), skipped=(), source="keys"))

    def test_entries_are_hashable_values(self):
        one = parse(f"no-pty {ED25519} x\n").entries[0]
        again = parse(f"no-pty {ED25519} x\n").entries[0]
        self.assertEqual(one, again)
        self.assertEqual(hash(one), hash(again))
        self.assertNotEqual(one, parse(f"{ED25519} x\n").entries[0])
        self.assertIsInstance(one, AuthorizedKey)


class MalformedLineTests(ErrorAssertions, unittest.SynchronousTestCase):
    """Every malformed line is refused, naming the file and line."""

    def bad(self, line: str, reason: str) -> str:
        """C{line} as line 3, after a comment and a good key."""
        return self.assertLineError(f"# ops\n{ED25519} ok\n{line}\n{ED25519} after\n", 3, reason)

    def test_bad_base64(self):
        self.bad("ssh-ed25519 AAAA!!notbase64 broken", "bad base64")
        self.bad("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "bad base64")
        self.bad("ssh-ed25519 AAAAC3Nza\u00e9C1lZDI1NTE5", "bad base64")

    def test_unknown_key_type(self):
        dss = _line_from_blob(_ns(b"ssh-dss") + _ns(b"\x01" * 8))
        self.bad(dss, "unknown key type 'ssh-dss'")
        self.bad(f"no-pty {dss}", "unknown key type 'ssh-dss'")
        self.bad(
            f'command="x y" ssh-foo@example.com {ED25519.split()[1]}', "unknown key type 'ssh-foo"
        )

    def test_key_type_disagrees_with_blob(self):
        self.bad(
            f"ssh-rsa {ED25519.split()[1]}",
            "key type ssh-rsa does not match the key data, which is 'ssh-ed25519'",
        )
        self.bad(
            f"ecdsa-sha2-nistp384 {ecdsa_line(ec.SECP256R1()).split()[1]}",
            "which is 'ecdsa-sha2-nistp256'",
        )

    def test_truncated_blob(self):
        self.bad("ssh-ed25519 AAA=", "key data is truncated")
        short = base64.b64encode(_ns(b"ssh-ed25519")[:-2]).decode()
        self.bad(f"ssh-ed25519 {short}", "key data is truncated")

    def test_invalid_key_data(self):
        self.bad(
            _line_from_blob(_ns(b"ssh-ed25519") + _ns(b"\x01" * 5)), "not a valid ssh-ed25519 key"
        )
        self.bad(_line_from_blob(_ns(b"ssh-ed25519")), "not a valid ssh-ed25519 key")
        not_on_curve = _ns(b"ecdsa-sha2-nistp256") + _ns(b"nistp256") + _ns(b"\x04" + b"\x01" * 64)
        self.bad(_line_from_blob(not_on_curve), "not a valid ecdsa-sha2-nistp256 key")

    def test_trailing_data_in_blob(self):
        self.bad(_line_from_blob(blob_of(ED25519) + b"\x00"), "unexpected extra or altered fields")

    def test_wrong_curve_name_inside_ecdsa_blob(self):
        good = blob_of(ecdsa_line(ec.SECP256R1()))
        altered = good.replace(_ns(b"nistp256"), _ns(b"nistp384"), 1)
        self.bad(_line_from_blob(altered), "unexpected extra or altered fields")

    def test_small_rsa_key(self):
        n = (1 << 767) | 0xB3  # odd, 768 bits: any odd number will do for a public key
        # mpint: a leading zero byte, as the top bit is set.
        blob = _ns(b"ssh-rsa") + _ns(b"\x01\x00\x01") + _ns(b"\x00" + n.to_bytes(96, "big"))
        self.bad(_line_from_blob(blob), "RSA key is too small (768 bits")

    def test_missing_key_data(self):
        self.bad("ssh-ed25519", "missing key data after ssh-ed25519")
        self.bad("restrict ssh-ed25519   ", "missing key data after ssh-ed25519")

    def test_options_without_key(self):
        self.bad("restrict,no-pty", "missing key type and key data after the options")

    def test_options_then_unknown_type(self):
        self.bad("restrict AAAAC3NzaC1lZDI1NTE5", "unknown key type 'AAAAC3NzaC1lZDI1NTE5'")

    def test_not_a_key_line(self):
        self.bad("hello", "not a key line")
        self.bad(ED25519.split()[1], "not a key line")

    def test_unterminated_quote(self):
        self.bad(f'command="echo hi {ED25519}', "unterminated quote in options")
        self.bad(f'command="echo \\" {ED25519}', "unterminated quote in options")

    def test_unknown_option(self):
        self.bad(f"no-ptyx {ED25519}", "unknown option 'no-ptyx'")
        self.bad(f"no-restrict {ED25519}", "unknown option 'no-restrict'")
        self.bad(f'frm="10.0.0.1" {ED25519}', "unknown option 'frm'")
        self.bad(f"pty,bogus {ED25519}", "unknown option 'bogus'")

    def test_options_sshd_knows_but_the_gateway_cannot_honour(self):
        for option in ("verify-required", "no-touch-required", "touch-required", 'tunnel="0"'):
            self.bad(f"{option} {sk_ed25519_line()}", "is not supported by this gateway")

    def test_flag_given_a_value(self):
        for flag in ("no-pty", "restrict", "pty", "cert-authority", "No-X11-Forwarding", "user-rc"):
            self.bad(f'{flag}="yes" {ED25519}', f"option '{flag}' does not take a value")

    def test_valued_option_without_value(self):
        for name in (
            "command",
            "from",
            "environment",
            "permitopen",
            "permitlisten",
            "principals",
            "expiry-time",
        ):
            self.bad(f"{name},no-pty {ED25519}", f"option '{name}' needs a value")

    def test_value_not_quoted(self):
        self.bad(f"command=ls {ED25519}", "the value of option 'command' must be in double quotes")
        self.bad(f"from= {ED25519}", "the value of option 'from' must be in double quotes")

    def test_text_after_closing_quote(self):
        self.bad(f'command="ls"x {ED25519}', "unexpected 'x' after option 'command'")

    def test_empty_options(self):
        self.bad(f",no-pty {ED25519}", "empty option")
        self.bad(f"no-pty,,pty {ED25519}", "empty option")

    def test_trailing_comma(self):
        self.bad(f"no-pty, {ED25519}", "options end with a comma")

    def test_option_given_twice(self):
        self.bad(f'command="a",command="b" {ED25519}', "option 'command' is given more than once")
        self.bad(
            f'from="1.2.3.4",FROM="5.6.7.8" {ED25519}', "option 'FROM' is given more than once"
        )
        self.bad(
            f'principals="a",principals="b" {ED25519}',
            "option 'principals' is given more than once",
        )

    def test_bad_from(self):
        self.bad(f'from="" {ED25519}', "empty pattern in from=")
        self.bad(f'from="10.0.0.1,,10.0.0.2" {ED25519}', "empty pattern in from=")
        self.bad(f'from="10.0.0.1,!" {ED25519}', "empty pattern in from=")
        self.bad(f'from="10.0.0.1, 10.0.0.2" {ED25519}', "blank inside pattern ' 10.0.0.2'")
        self.bad(
            f'from="10.0.0.1/8" {ED25519}',
            "invalid CIDR pattern '10.0.0.1/8' in from=: 10.0.0.1/8 has host bits set",
        )
        self.bad(f'from="10.0.0.0/33" {ED25519}', "invalid CIDR pattern '10.0.0.0/33'")
        self.bad(f'from="2001:db8::/129" {ED25519}', "invalid CIDR pattern '2001:db8::/129'")
        self.bad(f'from="2001:db8::1/32" {ED25519}', "has host bits set")
        self.bad(f'from="10.0.0.0/" {ED25519}', "bad prefix length")
        self.bad(f'from="10.0.0.0/255.0.0.0" {ED25519}', "bad prefix length")
        self.bad(f'from="!example.com/24" {ED25519}', "invalid CIDR pattern 'example.com/24'")

    def test_bad_permitopen(self):
        self.bad(
            f'permitopen="example.com" {ED25519}',
            "invalid permitopen='example.com': expected host:port",
        )
        self.bad(f'permitopen="example.com:" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'permitopen="example.com:0" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'permitopen="example.com:65536" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'permitopen="example.com:http" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'permitopen="example.com:22:23" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'permitopen=":22" {ED25519}', "bad host")
        self.bad(f'permitopen="a b:22" {ED25519}', "bad host")
        self.bad(f'permitopen="::1:22" {ED25519}', "bad host")
        self.bad(f'permitopen="[::1:22" {ED25519}', "expected [address]:port")
        self.bad(f'permitopen="[::1]22" {ED25519}', "expected [address]:port")
        self.bad(f'permitopen="[::1]" {ED25519}', "expected [address]:port")

    def test_bad_permitlisten(self):
        self.bad(f'permitlisten="" {ED25519}', "invalid permitlisten=''")
        self.bad(f'permitlisten="99999" {ED25519}', "port must be 1-65535 or *")
        self.bad(f'PermitListen="localhost:x" {ED25519}', "invalid PermitListen='localhost:x'")

    def test_bad_environment(self):
        self.bad(f'environment="NOEQUALS" {ED25519}', "invalid environment='NOEQUALS'")
        self.bad(f'environment="=value" {ED25519}', "expected NAME=value")
        self.bad(f'environment="BAD-NAME=1" {ED25519}', "expected NAME=value")
        self.bad(f'environment="N\u00c4ME=1" {ED25519}', "expected NAME=value")

    def test_bad_expiry_time(self):
        for value in (
            "2030",
            "2030-01-01",
            "203001011",
            "20300101T0000",
            "20301301",
            "20300230",
            "20300101250000",
            "20300101Z0",
            "00000101",
        ):
            self.bad(f'expiry-time="{value}" {ED25519}', f"invalid expiry-time '{value}'")

    def test_error_in_a_certificate_line_is_still_an_error(self):
        """Only well-formed certificate lines are skipped."""
        self.bad("ssh-ed25519-cert-v01@openssh.com AAAA!!", "bad base64")
        self.bad(
            f"ssh-ed25519-cert-v01@openssh.com {ED25519.split()[1]}", "does not match the key data"
        )
        self.bad(f"cert-authority,bogus {ED25519}", "unknown option 'bogus'")

    def test_first_bad_line_is_reported(self):
        message = self.assertLineError(
            f"{ED25519}\nssh-ed25519 !\nbogus {ED25519}\n", 2, "bad base64"
        )
        self.assertNotIn("bogus", message)

    def test_long_values_are_shortened(self):
        message = self.bad(f"{'x' * 500} {ED25519}", "unknown option 'xxxxxxxx")
        self.assertLess(len(message), 150)


class MalformedUtf8Tests(unittest.SynchronousTestCase):
    def test_invalid_utf8(self):
        with self.assertRaises(AuthorizedKeysError) as caught:
            parse_authorized_keys(b"# x\n" + ED25519.encode() + b" caf\xe9\n", "keys")
        self.assertEqual(str(caught.exception), "keys:2: line is not valid UTF-8")

    def test_utf8_comment_and_command(self):
        result = parse_authorized_keys(
            f'command="echo h\u00e9" {ED25519} z\u00fcrich \u2603\n'.encode(), "keys"
        )
        self.assertEqual(result.entries[0].comment, "z\u00fcrich \u2603")
        self.assertEqual(result.entries[0].options.command, "echo h\u00e9")


class OptionTests(unittest.SynchronousTestCase):
    def test_no_options_allow_everything(self):
        options = options_of("")  # a leading blank is skipped: no options
        self.assertEqual(options, KeyOptions())
        self.assertTrue(options.allow_pty)
        self.assertTrue(options.allow_port_forwarding)
        self.assertTrue(options.allow_agent_forwarding)
        self.assertTrue(options.allow_x11_forwarding)
        self.assertTrue(options.allow_user_rc)
        self.assertFalse(options.restrict)
        self.assertIsNone(options.command)
        self.assertIsNone(options.expiry_time)

    def test_each_no_flag(self):
        fields = {
            "no-pty": ("no_pty", "allow_pty"),
            "no-port-forwarding": ("no_port_forwarding", "allow_port_forwarding"),
            "no-agent-forwarding": ("no_agent_forwarding", "allow_agent_forwarding"),
            "no-X11-forwarding": ("no_x11_forwarding", "allow_x11_forwarding"),
            "no-user-rc": ("no_user_rc", "allow_user_rc"),
        }
        all_fields = [f for f, _ in fields.values()]
        for option, (field, allow) in fields.items():
            options = options_of(option)
            self.assertTrue(getattr(options, field), option)
            self.assertFalse(getattr(options, allow), option)
            for other in all_fields:
                if other != field:
                    self.assertFalse(getattr(options, other), (option, other))
            self.assertFalse(options.restrict)

    def test_option_names_are_case_insensitive(self):
        options = options_of('NO-PTY,No-Port-Forwarding,COMMAND="ls",From="10.0.0.1",Restrict,PTY')
        self.assertTrue(options.restrict)
        self.assertFalse(options.no_pty)
        self.assertTrue(options.no_port_forwarding)
        self.assertEqual(options.command, "ls")
        self.assertEqual(options.from_patterns, ("10.0.0.1",))

    def test_restrict_turns_everything_off(self):
        options = options_of("restrict")
        self.assertTrue(options.restrict)
        self.assertEqual(
            (
                options.allow_pty,
                options.allow_port_forwarding,
                options.allow_agent_forwarding,
                options.allow_x11_forwarding,
                options.allow_user_rc,
            ),
            (False, False, False, False, False),
        )

    def test_restrict_then_reenable_each(self):
        reenable = {
            "pty": "allow_pty",
            "port-forwarding": "allow_port_forwarding",
            "agent-forwarding": "allow_agent_forwarding",
            "X11-forwarding": "allow_x11_forwarding",
            "user-rc": "allow_user_rc",
        }
        for option, allow in reenable.items():
            options = options_of(f"restrict,{option}")
            self.assertTrue(options.restrict)
            self.assertTrue(getattr(options, allow), option)
            still_off = [getattr(options, a) for a in reenable.values() if a != allow]
            self.assertEqual(still_off, [False] * 4, option)

    def test_order_matters(self):
        self.assertFalse(options_of("pty,restrict").allow_pty)
        self.assertTrue(options_of("no-pty,pty").allow_pty)
        self.assertFalse(options_of("pty,no-pty").allow_pty)
        self.assertFalse(options_of("restrict,pty,no-pty").allow_pty)

    def test_command_with_quotes_commas_and_blanks(self):
        options = options_of(r'command="echo \"a, b\" ; ls -l /tmp",no-pty')
        self.assertEqual(options.command, 'echo "a, b" ; ls -l /tmp')
        self.assertTrue(options.no_pty)

    def test_backslash_not_before_a_quote_is_kept(self):
        self.assertEqual(options_of(r'command="printf a\\nb\n"').command, r"printf a\\nb\n")

    def test_empty_command(self):
        self.assertEqual(options_of('command=""').command, "")

    def test_environment(self):
        options = options_of(
            'environment="A=1",environment="B_2=x=y, z",environment="A=2",environment="E="'
        )
        self.assertEqual(options.environment, (("A", "1"), ("B_2", "x=y, z"), ("E", "")))

    def test_principals(self):
        self.assertEqual(options_of('principals="alice,bob"').principals, ("alice", "bob"))
        self.assertEqual(options_of("no-pty").principals, ())

    def test_from_patterns_kept_as_written(self):
        options = options_of('from="10.0.0.0/8,!10.1.2.3,*.example.com,2001:db8::/32"')
        self.assertEqual(
            options.from_patterns, ("10.0.0.0/8", "!10.1.2.3", "*.example.com", "2001:db8::/32")
        )

    def test_permitopen(self):
        options = options_of(
            'permitopen="db.internal:5432",permitopen="[2001:db8::1]:22",'
            'permitopen="10.0.0.1:*",permitopen="*:443"'
        )
        self.assertEqual(
            options.permitopen,
            (("db.internal", 5432), ("2001:db8::1", 22), ("10.0.0.1", "*"), ("*", 443)),
        )
        self.assertEqual(options.permitlisten, ())

    def test_permitlisten(self):
        options = options_of(
            'permitlisten="8080",permitlisten="localhost:8081",permitlisten="[::1]:22000",permitlisten="*"'
        )
        self.assertEqual(
            options.permitlisten,
            (("*", 8080), ("localhost", 8081), ("::1", 22000), ("*", "*")),
        )
        self.assertEqual(options.permitopen, ())

    def test_expiry_time_forms(self):
        cases = {
            "20300102Z": datetime(2030, 1, 2, tzinfo=UTC),
            "203001020304z": datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
            "20300102030405Z": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
            "20300102030405UTC": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        }
        for value, expected in cases.items():
            got = options_of(f'expiry-time="{value}"').expiry_time
            self.assertEqual(got, expected, value)
            self.assertEqual(got.utcoffset(), timedelta(0), value)

    def test_expiry_time_without_z_is_system_local_time(self):
        """
        As sshd: no C{Z} means the system time zone.  Run in a child with
        C{TZ} set, so this process's time zone is left alone.
        """
        code = (
            "import sys\n"
            "from wraith_conch.gateway import authorized_keys as ak\n"
            "line = sys.argv[1]\n"
            "print(ak.parse_authorized_keys(line.encode(), 'k').entries[0].options.expiry_time.isoformat())\n"
        )
        line = f'expiry-time="203001020304" {ED25519}'
        env = dict(os.environ, TZ="JST-9", PYTHONPATH=REPO_ROOT)
        out = subprocess.run(
            [sys.executable, "-c", code, line], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        self.assertEqual(out, "2030-01-01T18:04:00+00:00")

    def test_earliest_expiry_time_wins(self):
        options = options_of(
            'expiry-time="20310101Z",expiry-time="20300101Z",expiry-time="20320101Z"'
        )
        self.assertEqual(options.expiry_time, datetime(2030, 1, 1, tzinfo=UTC))

    def test_expired(self):
        options = options_of('expiry-time="20250601120000Z"')
        self.assertFalse(options.expired(NOW - timedelta(seconds=1)))
        self.assertFalse(options.expired(NOW))
        self.assertTrue(options.expired(NOW + timedelta(seconds=1)))
        self.assertFalse(KeyOptions().expired(NOW))

    def test_everything_at_once(self):
        options = options_of(
            'restrict,pty,command="/usr/bin/backup --all",environment="LANG=C",'
            'from="192.0.2.0/24",permitopen="localhost:80",permitlisten="9000",'
            'principals="ops",expiry-time="20300101Z",no-pty'
        )
        self.assertEqual(
            options,
            KeyOptions(
                restrict=True,
                no_pty=True,
                no_port_forwarding=True,
                no_agent_forwarding=True,
                no_x11_forwarding=True,
                no_user_rc=True,
                from_patterns=("192.0.2.0/24",),
                permitopen=(("localhost", 80),),
                permitlisten=(("*", 9000),),
                command="/usr/bin/backup --all",
                environment=(("LANG", "C"),),
                principals=("ops",),
                expiry_time=datetime(2030, 1, 1, tzinfo=UTC),
            ),
        )


class FromMatchingTests(unittest.SynchronousTestCase):
    """C{from=} against the client's IP address, as sshd with C{UseDNS no}."""

    def permits(self, patterns: str, address: str) -> bool:
        return options_of(f'from="{patterns}"').permits_address(address)

    def test_no_from_permits_any_address(self):
        self.assertTrue(KeyOptions().permits_address("203.0.113.9"))
        self.assertTrue(KeyOptions().permits_address("not an address"))

    def test_exact_address(self):
        self.assertTrue(self.permits("192.0.2.1", "192.0.2.1"))
        self.assertFalse(self.permits("192.0.2.1", "192.0.2.10"))
        self.assertFalse(self.permits("192.0.2.1", "192.0.2.11"))

    def test_star_and_question_mark(self):
        self.assertTrue(self.permits("192.0.2.*", "192.0.2.200"))
        self.assertFalse(self.permits("192.0.2.*", "192.0.3.1"))
        self.assertTrue(self.permits("192.0.2.?", "192.0.2.7"))
        self.assertFalse(self.permits("192.0.2.?", "192.0.2.70"))
        self.assertTrue(self.permits("*", "2001:db8::1"))
        self.assertTrue(self.permits("*", "192.0.2.1"))
        self.assertTrue(self.permits("2001:db8::*", "2001:db8::abcd"))
        self.assertTrue(self.permits("*.*.*.1?", "10.0.0.15"))
        self.assertFalse(self.permits("*.*.*.1?", "10.0.0.1"))

    def test_wildcards_ignore_case(self):
        self.assertTrue(self.permits("2001:DB8::*", "2001:db8::1"))
        self.assertTrue(self.permits("2001:db8::*", "2001:DB8::1"))

    def test_address_compared_as_address(self):
        self.assertTrue(self.permits("2001:db8:0:0::1", "2001:db8::1"))
        self.assertTrue(self.permits("2001:db8::1", "2001:0db8:0000::0001"))
        self.assertFalse(self.permits("2001:db8::1", "2001:db8::2"))

    def test_cidr_v4(self):
        self.assertTrue(self.permits("10.0.0.0/8", "10.255.3.4"))
        self.assertFalse(self.permits("10.0.0.0/8", "11.0.0.1"))
        self.assertTrue(self.permits("192.0.2.128/25", "192.0.2.129"))
        self.assertFalse(self.permits("192.0.2.128/25", "192.0.2.127"))
        self.assertTrue(self.permits("0.0.0.0/0", "198.51.100.1"))
        self.assertTrue(self.permits("192.0.2.5/32", "192.0.2.5"))

    def test_cidr_v6(self):
        self.assertTrue(self.permits("2001:db8::/32", "2001:db8:ffff::1"))
        self.assertFalse(self.permits("2001:db8::/32", "2001:db9::1"))
        self.assertTrue(self.permits("::/0", "fe80::1"))
        self.assertTrue(self.permits("::1/128", "::1"))

    def test_families_never_cross(self):
        """1.2.3.4 is a small integer, but it is not in ::/96."""
        self.assertFalse(self.permits("::/96", "1.2.3.4"))
        self.assertFalse(self.permits("0.0.0.0/0", "::1"))
        self.assertFalse(self.permits("::102:304", "1.2.3.4"))

    def test_ipv4_mapped_client_matches_as_ipv4(self):
        self.assertTrue(self.permits("192.0.2.0/24", "::ffff:192.0.2.9"))
        self.assertTrue(self.permits("192.0.2.9", "::ffff:192.0.2.9"))
        self.assertTrue(self.permits("192.0.2.*", "::ffff:c000:209"))
        self.assertFalse(self.permits("::ffff:0:0/96", "::ffff:192.0.2.9"))
        self.assertFalse(self.permits("!192.0.2.9,*", "::ffff:192.0.2.9"))

    def test_negation_refuses_outright(self):
        self.assertFalse(self.permits("10.0.0.0/8,!10.1.2.3", "10.1.2.3"))
        self.assertFalse(self.permits("!10.1.2.3,10.0.0.0/8", "10.1.2.3"))
        self.assertTrue(self.permits("10.0.0.0/8,!10.1.2.3", "10.1.2.4"))
        self.assertFalse(self.permits("*,!10.0.0.0/8", "10.9.9.9"))
        self.assertFalse(self.permits("*,!10.*", "10.9.9.9"))
        self.assertFalse(self.permits("*,!2001:db8::/32", "2001:db8::5"))

    def test_negation_alone_permits_nothing(self):
        self.assertFalse(self.permits("!10.1.2.3", "192.0.2.1"))
        self.assertFalse(self.permits("!10.1.2.3", "10.1.2.3"))

    def test_host_name_patterns_never_match(self):
        """There is no reverse DNS: names match nothing, negated or not."""
        self.assertFalse(self.permits("localhost", "127.0.0.1"))
        self.assertFalse(self.permits("*.example.com", "192.0.2.1"))
        self.assertTrue(self.permits("*,!*.example.com", "192.0.2.1"))
        self.assertTrue(self.permits("bastion,192.0.2.1", "192.0.2.1"))

    def test_client_address_forms(self):
        self.assertTrue(self.permits("2001:db8::/32", "[2001:db8::1]"))
        self.assertTrue(self.permits("fe80::/10", "fe80::1%eth0"))
        self.assertTrue(self.permits("fe80::1", "fe80::1%2"))

    def test_unparseable_client_address_matches_no_from(self):
        for address in ("", "localhost", "192.0.2.1:2222", "/run/wraith.sock", "999.1.1.1"):
            self.assertFalse(self.permits("*", address), address)


class FindAndMatchTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.alice = ed25519_line()
        self.bob = ecdsa_line(ec.SECP256R1())
        self.keys = parse(
            f'from="10.0.0.0/8",no-pty {self.alice} alice-office\n'
            f'from="192.0.2.0/24",expiry-time="20250101Z" {self.alice} alice-old-vpn\n'
            f'from="192.0.2.0/24",command="ls" {self.alice} alice-vpn\n'
            f"{self.bob} bob\n"
            f"restrict {self.bob} bob-restricted\n"
        )

    def test_find_returns_every_line_with_the_blob_in_order(self):
        self.assertEqual(
            [e.comment for e in self.keys.find(blob_of(self.alice))],
            ["alice-office", "alice-old-vpn", "alice-vpn"],
        )
        self.assertEqual([e.lineno for e in self.keys.find(blob_of(self.bob))], [4, 5])

    def test_unbound_lines_are_login_keys_without_principals(self):
        self.assertEqual(self.keys.unbound_lines(), [1, 2, 3, 4, 5])
        bound = parse(
            f'principals="alice" {self.alice} alice\n'
            f"{self.bob} anyone\n"
            f'cert-authority,principals="ops" {self.bob} ops-ca\n'
        )
        self.assertEqual(bound.unbound_lines(), [2])

    def test_find_unknown_blob(self):
        self.assertEqual(self.keys.find(blob_of(ed25519_line())), [])
        self.assertEqual(self.keys.find(b""), [])
        self.assertEqual(self.keys.find(b"\x00\x00\x00\x0bssh-ed25519"), [])

    def test_find_compares_exact_blobs(self):
        self.assertEqual(self.keys.find(blob_of(self.alice) + b"\x00"), [])
        self.assertEqual(self.keys.find(blob_of(self.alice)[:-1]), [])

    def test_match_first_line_whose_from_admits(self):
        entry = self.keys.match(blob_of(self.alice), "10.2.3.4", NOW)
        self.assertEqual((entry.comment, entry.options.no_pty), ("alice-office", True))

    def test_match_skips_expired_line(self):
        entry = self.keys.match(blob_of(self.alice), "192.0.2.7", NOW)
        self.assertEqual((entry.comment, entry.options.command), ("alice-vpn", "ls"))
        before_expiry = datetime(2024, 12, 31, tzinfo=UTC)
        self.assertEqual(
            self.keys.match(blob_of(self.alice), "192.0.2.7", before_expiry).comment,
            "alice-old-vpn",
        )

    def test_match_none_when_no_from_admits(self):
        self.assertIsNone(self.keys.match(blob_of(self.alice), "198.51.100.1", NOW))
        self.assertIsNone(self.keys.match(blob_of(self.alice), "::ffff:198.51.100.1", NOW))
        self.assertEqual(
            self.keys.match(blob_of(self.alice), "::ffff:10.0.0.1", NOW).comment, "alice-office"
        )

    def test_match_first_line_without_from(self):
        self.assertEqual(self.keys.match(blob_of(self.bob), "198.51.100.1", NOW).comment, "bob")

    def test_match_unknown_key(self):
        self.assertIsNone(self.keys.match(blob_of(ed25519_line()), "10.0.0.1", NOW))

    def test_match_expired_everywhere(self):
        keys_ = parse(f'expiry-time="20250601Z" {self.alice}\n')
        self.assertIsNotNone(
            keys_.match(blob_of(self.alice), "10.0.0.1", datetime(2025, 6, 1, tzinfo=UTC))
        )
        self.assertIsNone(keys_.match(blob_of(self.alice), "10.0.0.1", NOW))


class CertificateTests(unittest.SynchronousTestCase):
    """Certificate lines and cert-authority lines, as the file holds them."""

    def setUp(self):
        self.base = self.mktemp()
        os.makedirs(self.base)

    def keygen(self, name: str, kind: str = "ed25519") -> str:
        path = os.path.join(self.base, name)
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", name, "-f", path],
            check=True,
            capture_output=True,
        )
        with open(path + ".pub") as f:
            return f.read().strip()

    def sign(self, ca: str, user: str) -> str:
        subprocess.run(
            [
                SSH_KEYGEN,
                "-q",
                "-s",
                os.path.join(self.base, ca),
                "-I",
                "alice-cert",
                "-n",
                "alice",
                os.path.join(self.base, user + ".pub"),
            ],
            check=True,
            capture_output=True,
        )
        with open(os.path.join(self.base, user + "-cert.pub")) as f:
            return f.read().strip()

    def test_certificate_lines_are_skipped_and_ca_lines_kept_apart(self):
        ca = self.keygen("ca")
        user = self.keygen("user")
        user_ecdsa = self.keygen("user2", "ecdsa")
        cert = self.sign("ca", "user")
        cert_ecdsa = self.sign("ca", "user2")
        self.assertTrue(cert.startswith("ssh-ed25519-cert-v01@openssh.com "))
        self.assertTrue(cert_ecdsa.startswith("ecdsa-sha2-nistp256-cert-v01@openssh.com "))
        other = ed25519_line()
        result = parse(
            f"# certs\n{cert}\n{other} plain\nno-pty {cert_ecdsa}\n"
            f'cert-authority,principals="alice" {ca}\n'
            f'CERT-AUTHORITY,from="10.0.0.0/8" {other}\n'
        )
        hint = "certificates are not keys (trust their CA with a cert-authority line); line ignored"
        self.assertEqual(
            result.skipped,
            (
                SkippedLine(2, f"ssh-ed25519-cert-v01@openssh.com {hint}"),
                SkippedLine(4, f"ecdsa-sha2-nistp256-cert-v01@openssh.com {hint}"),
            ),
        )
        self.assertEqual(
            [(e.lineno, e.comment, e.cert_authority) for e in result.entries],
            [(3, "plain", False), (5, "ca", True), (6, "", True)],
        )
        for line in (cert, cert_ecdsa, ca, user, user_ecdsa):
            self.assertEqual(result.find(blob_of(line)), [])
            self.assertIsNone(result.match(blob_of(line), "127.0.0.1", NOW))
        # The CA-marked key is not usable as a plain key either.
        self.assertEqual([e.comment for e in result.find(blob_of(other))], ["plain"])
        # As CAs they are found, with their from= applied.
        [ca_entry] = result.authorities(blob_of(ca), "127.0.0.1", NOW)
        self.assertEqual(ca_entry.options.principals, ("alice",))
        self.assertEqual(result.authorities(blob_of(other), "127.0.0.1", NOW), [])
        self.assertEqual(len(result.authorities(blob_of(other), "10.1.2.3", NOW)), 1)
        self.assertEqual(result.authorities(blob_of(user), "127.0.0.1", NOW), [])

    def test_expired_cert_authority_line_is_no_authority(self):
        ca = self.keygen("ca")
        result = parse(f'cert-authority,expiry-time="20200101" {ca}\n')
        self.assertEqual(result.authorities(blob_of(ca), "127.0.0.1", NOW), [])


class LoadTests(unittest.SynchronousTestCase):
    def test_missing_file(self):
        path = os.path.join(self.mktemp(), "authorized_keys")
        with self.assertRaises(AuthorizedKeysError) as caught:
            load_authorized_keys(path)
        self.assertEqual(
            str(caught.exception),
            f"cannot read authorized_keys file {path}: No such file or directory",
        )

    def test_directory(self):
        path = self.mktemp()
        os.makedirs(path)
        with self.assertRaises(AuthorizedKeysError) as caught:
            load_authorized_keys(path)
        self.assertIn(
            f"cannot read authorized_keys file {path}: Is a directory", str(caught.exception)
        )

    def test_errors_name_the_path(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{ED25519}\n\nbogus {ED25519}\n")
        with self.assertRaises(AuthorizedKeysError) as caught:
            load_authorized_keys(path)
        self.assertEqual(str(caught.exception), f"{path}:3: unknown option 'bogus'")


_option_chars = st.sampled_from(
    [
        '"',
        "\\",
        ",",
        "=",
        "!",
        "*",
        "?",
        "/",
        ":",
        "[",
        "]",
        " ",
        "\t",
        "#",
        "\r",
        "\x00",
        "no-",
        "pty",
        "restrict",
        "command",
        "from",
        "permitopen",
        "permitlisten",
        "environment",
        "expiry-time",
        "principals",
        "cert-authority",
        "10.0.0.0",
        "::1",
        "8",
        "22",
        "Z",
        "\u00e9",
    ]
)
_option_text = st.lists(_option_chars, max_size=25).map("".join)


class PropertyTests(unittest.SynchronousTestCase):
    """Whatever the bytes, the parser answers or raises its own error."""

    def assertParsesOrRefuses(self, data: bytes) -> None:
        try:
            result = parse_authorized_keys(data, "fuzz")
        except AuthorizedKeysError as e:
            self.assertTrue(str(e).startswith("fuzz:"), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(result, AuthorizedKeys)
            for entry in result.entries:
                self.assertIsInstance(entry.key, keys.Key)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_arbitrary_bytes(self, data):
        self.assertParsesOrRefuses(data)

    @settings(max_examples=300, deadline=None)
    @given(
        _option_text,
        st.sampled_from(["", ED25519, "ssh-ed25519-cert-v01@openssh.com AAAA"]),
        st.text(max_size=10),
    )
    def test_option_like_text_before_a_key(self, options, key, tail):
        self.assertParsesOrRefuses(f"{options} {key}{tail}\n".encode("utf-8", "surrogatepass"))

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(KEY_TYPES)), st.binary(max_size=200))
    def test_garbage_key_data_of_each_type(self, type_name, payload):
        blob = _ns(type_name.encode()) + payload
        self.assertParsesOrRefuses(_line_from_blob(blob).encode())

    @settings(max_examples=200, deadline=None)
    @given(
        st.ip_addresses(v=4),
        st.integers(min_value=0, max_value=32),
    )
    def test_cidr_matches_like_ipaddress_and_mapped_alike(self, address, prefix):
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        options = options_of(f'from="{network}"')
        probe = ipaddress.ip_address(int(address) ^ 1)
        self.assertTrue(options.permits_address(str(address)))
        self.assertEqual(options.permits_address(str(probe)), probe in network)
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        self.assertTrue(options.permits_address(str(mapped)))
