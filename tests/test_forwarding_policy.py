"""
The forwarding destination policy: built-in denials in every address form,
protected endpoints, rules and their file format, key options, reserved
names, and properties over arbitrary input (reasons never name the
destination; nothing raises).
"""

from __future__ import annotations

import ipaddress
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from wraith_conch import forwarding_policy
from wraith_conch.forwarding_policy import (
    BUILTIN_DENY,
    Action,
    ForwardPolicy,
    ForwardPolicyError,
    Verdict,
    VerdictKind,
    load_forward_policy,
    parse_forward_policy,
)
from wraith_conch.gateway.authorized_keys import KeyOptions, parse_authorized_keys

OPEN = KeyOptions()
TARGET = ("db.internal", 22)
TARGET_ADDRESS = ("10.0.0.5", 22)
LISTEN = ("127.0.0.1", 2222)


def parse(text: str, source: str = "policy.toml") -> ForwardPolicy:
    return parse_forward_policy(text.encode("utf-8"), source)


def protected(policy: ForwardPolicy | None = None) -> ForwardPolicy:
    return (policy or ForwardPolicy()).protecting(targets=[TARGET, TARGET_ADDRESS], listen=[LISTEN])


def request(policy, host, port, *, proxied, key_options=OPEN) -> Verdict:
    return policy.check_request(host, port, key_options=key_options, proxied=proxied)


def address(policy, host, addr, port, *, key_options=OPEN) -> Verdict:
    return policy.check_address(host, addr, port, key_options=key_options)


def key_options(options: str) -> KeyOptions:
    """The options of a real authorized_keys line."""
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return parse_authorized_keys(f"{options} {line}\n".encode(), "keys").entries[0].options


class VerdictAssertions:
    def assertVerdict(self, verdict: Verdict, allowed: bool, reason: str, case: object) -> None:
        self.assertEqual((verdict.allowed, verdict.reason), (allowed, reason), repr(case))

    def assertDenied(self, verdict: Verdict, reason: str, case: object) -> None:
        self.assertVerdict(verdict, False, reason, case)
        self.assertIs(verdict.kind, VerdictKind.DENY, repr(case))

    def assertPolicyError(self, text: str, message: str) -> None:
        with self.assertRaises(ForwardPolicyError) as caught:
            parse(text)
        self.assertEqual(str(caught.exception), message)
        self.assertNotIn("\n", str(caught.exception))


# Literal hosts: (as requested, category).  Every IPv6 form that embeds an
# IPv4 address, and the numeric forms inet_aton (getaddrinfo) accepts.
BUILTIN_LITERALS = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("127.1", "loopback"),
    ("0x7f.0.0.1", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("2130706433", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("::1", "loopback"),
    ("[::1]", "loopback"),
    ("0:0:0:0:0:0:0:1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::FFFF:7f00:1", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("::127.0.0.1", "loopback"),
    ("::ffff:0:127.0.0.1", "loopback"),
    ("64:ff9b::127.0.0.1", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.255.255", "link-local"),
    ("fe80::1", "link-local"),
    ("FE80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    ("::ffff:169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:a9fe:a9fe", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("0.0.0.0", "unspecified address"),
    ("0", "unspecified address"),
    ("0.1.2.3", "unspecified address"),
    ("::", "unspecified address"),
    ("[::]", "unspecified address"),
    ("::ffff:0.0.0.0", "unspecified address"),
]
BUILTIN_NAMES = [
    ("localhost", "loopback"),
    ("LocalHost.", "loopback"),
    ("app.localhost", "loopback"),
    ("ip6-localhost", "loopback"),
    ("ip6-loopback", "loopback"),
    ("localhost.localdomain", "loopback"),
    ("metadata.google.internal", "cloud metadata"),
    ("METADATA", "cloud metadata"),
    ("instance-data.ec2.internal", "cloud metadata"),
]
# Neighbours of the denied ranges that stay allowed.
ALLOWED_LITERALS = [
    "128.0.0.1",
    "126.255.255.255",
    "169.253.255.255",
    "169.255.0.1",
    "1.0.0.0",
    "::2:0:0",
    "fec0::1",
    "fe7f::1",
    "::ffff:10.1.2.3",
    "64:ff9b::10.1.2.3",
    "2001:db8::1",
    "10.0.0.1",
    "192.168.1.1",
]


class BuiltinDenyTests(VerdictAssertions, unittest.SynchronousTestCase):
    def test_literal_hosts(self):
        policy = ForwardPolicy()
        for host, category in BUILTIN_LITERALS:
            reason = f"destination not allowed: {category}"
            for proxied in (True, False):
                self.assertDenied(request(policy, host, 80, proxied=proxied), reason, host)

    def test_resolved_addresses(self):
        # Direct mode: an innocent name resolving to a denied address, in
        # any form getaddrinfo can return (not the inet_aton spellings).
        policy = ForwardPolicy()
        self.assertTrue(request(policy, "innocent.example", 80, proxied=False).allowed)
        for host, category in BUILTIN_LITERALS:
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                continue
            self.assertDenied(
                address(policy, "innocent.example", host, 80),
                f"destination not allowed: {category}",
                host,
            )

    def test_names(self):
        policy = ForwardPolicy()
        for host, category in BUILTIN_NAMES:
            reason = f"destination not allowed: {category}"
            for proxied in (True, False):
                self.assertDenied(request(policy, host, 80, proxied=proxied), reason, host)
            self.assertDenied(address(policy, host, "192.0.2.1", 80), reason, host)

    def test_neighbours_allowed(self):
        policy = ForwardPolicy()
        for host in ALLOWED_LITERALS:
            self.assertVerdict(
                request(policy, host, 80, proxied=True), True, "allowed by policy default", host
            )
            self.assertVerdict(
                address(policy, host, host, 80), True, "allowed by policy default", host
            )
        self.assertTrue(address(policy, "www.example", "93.184.215.14", 443).allowed)

    def test_builtin_layer_is_public_and_ordered(self):
        self.assertEqual(
            [b.category for b in BUILTIN_DENY],
            ["cloud metadata", "loopback", "link-local", "unspecified address"],
        )


class ProtectedEndpointTests(VerdictAssertions, unittest.SynchronousTestCase):
    TARGET_REASON = "destination not allowed: target SSH server"
    GATEWAY_REASON = "destination not allowed: this gateway"

    # Rules that would allow anything, override included: none may open these.
    PERMISSIVE = """
        [[rule]]
        action = "allow"
        override_builtin = true
        cidr = ["0.0.0.0/0", "::/0"]

        [[rule]]
        action = "allow"
        override_builtin = true
        host = "*"
    """

    def policies(self):
        return [protected(), protected(parse(self.PERMISSIVE))]

    def test_target_by_name(self):
        for policy in self.policies():
            for host in ("db.internal", "DB.Internal", "db.internal."):
                for proxied in (True, False):
                    self.assertDenied(
                        request(policy, host, 22, proxied=proxied), self.TARGET_REASON, host
                    )
                self.assertDenied(address(policy, host, "192.0.2.7", 22), self.TARGET_REASON, host)
            self.assertTrue(request(policy, "db.internal", 5432, proxied=True).allowed)

    def test_target_by_resolved_address(self):
        for policy in self.policies():
            for addr in ("10.0.0.5", "::ffff:10.0.0.5", "::ffff:a00:5"):
                self.assertDenied(
                    address(policy, "alias.internal", addr, 22), self.TARGET_REASON, addr
                )
            for host in ("10.0.0.5", "10.5", "012.0.0.5", "::ffff:10.0.0.5", "64:ff9b::a00:5"):
                for proxied in (True, False):
                    self.assertDenied(
                        request(policy, host, 22, proxied=proxied), self.TARGET_REASON, host
                    )
            self.assertTrue(address(policy, "alias.internal", "10.0.0.5", 23).allowed)
            self.assertTrue(address(policy, "alias.internal", "10.0.0.6", 22).allowed)

    def test_loopback_target_covers_every_loopback_form(self):
        policy = ForwardPolicy(rules=parse(self.PERMISSIVE).rules).protecting(
            targets=[("localhost", 22)], listen=[]
        )
        for host in ("localhost", "127.0.0.1", "127.0.0.2", "::1", "ip6-localhost", "0.0.0.0"):
            self.assertDenied(request(policy, host, 22, proxied=True), self.TARGET_REASON, host)
        self.assertDenied(address(policy, "x.example", "127.3.2.1", 22), self.TARGET_REASON, "x")
        # The override opens the rest of loopback.
        self.assertTrue(request(policy, "localhost", 8080, proxied=True).allowed)

    def test_gateway_listening_on_one_address(self):
        for policy in self.policies():
            for host in ("127.0.0.1", "::ffff:127.0.0.1", "localhost", "0.0.0.0"):
                self.assertDenied(
                    request(policy, host, 2222, proxied=True), self.GATEWAY_REASON, host
                )
            self.assertDenied(
                address(policy, "me.example", "127.0.0.1", 2222), self.GATEWAY_REASON, "me"
            )
            self.assertTrue(address(policy, "other.example", "192.0.2.1", 2222).allowed)

    def test_gateway_listening_on_all_interfaces(self):
        for listen in [(None, 2222), ("0.0.0.0", 2222), ("::", 2222)]:
            policy = ForwardPolicy().protecting(targets=[], listen=[listen])
            self.assertDenied(
                request(policy, "anything.example", 2222, proxied=True),
                self.GATEWAY_REASON,
                listen,
            )
            self.assertDenied(
                address(policy, "x.example", "192.0.2.1", 2222), self.GATEWAY_REASON, listen
            )
            self.assertTrue(request(policy, "anything.example", 2223, proxied=True).allowed)

    def test_bad_endpoints_are_programming_errors(self):
        for kwargs in [
            {"targets": [("db", 0)], "listen": []},
            {"targets": [("db", 65536)], "listen": []},
            {"targets": [("db", True)], "listen": []},
            {"targets": [("", 22)], "listen": []},
            {"targets": [], "listen": [("bad host", 22)]},
        ]:
            self.assertRaises(ValueError, ForwardPolicy().protecting, **kwargs)

    def test_protecting_keeps_the_rules(self):
        policy = parse('default = "deny"\n[[rule]]\naction = "allow"\nports = [443]\n')
        guarded = protected(policy)
        self.assertEqual((guarded.rules, guarded.default), (policy.rules, Action.DENY))
        self.assertEqual(guarded.source, "policy.toml")


class RuleTests(VerdictAssertions, unittest.SynchronousTestCase):
    POLICY = """
        [[rule]]
        action = "deny"
        host = ["*.secret.example", "vault?.example"]

        [[rule]]
        action = "allow"
        host = "*.EXAMPLE"
        ports = [443, "8000-8099"]

        [[rule]]
        action = "deny"
        cidr = ["10.0.0.0/8", "2001:db8:bad::/48"]

        [[rule]]
        action = "allow"
        cidr = ["10.1.0.0/16"]

        [[rule]]
        action = "deny"
        ports = ["1-1023"]
    """

    def test_proxied_requests(self):
        policy = parse(self.POLICY)
        cases = [
            ("a.secret.example", 443, False, 1),
            ("A.SECRET.EXAMPLE.", 443, False, 1),
            ("vault1.example", 443, False, 1),
            ("vault12.example", 443, True, 2),
            ("www.example", 443, True, 2),
            ("www.example", 8000, True, 2),
            ("www.example", 8099, True, 2),
            ("www.example", 8100, None, None),
            ("www.example", 80, False, 5),
            ("10.1.2.3", 80, False, 3),  # first match wins over rule 4
            ("10.1.2.3", 8080, False, 3),
            ("::ffff:10.1.2.3", 8080, False, 3),
            ("2001:db8:bad::1", 8080, False, 3),
            ("2001:db8:bae::1", 8080, True, None),
            ("internal.corp", 8080, True, None),  # names never match cidr when proxied
            ("internal.corp", 22, False, 5),
        ]
        for host, port, allowed, rule in cases:
            verdict = request(policy, host, port, proxied=True)
            if rule is None:
                reason = "allowed by policy default"
                allowed = True
            elif allowed:
                reason = f"allowed by policy rule {rule}"
            else:
                reason = f"destination not allowed by policy rule {rule}"
            self.assertVerdict(verdict, allowed, reason, (host, port))

    def test_direct_mode_decides_on_the_resolved_address(self):
        policy = parse(self.POLICY)
        pending = "allowed pending the resolved address"
        # Rules 1-2 decide by name before resolution; rule 3 needs the address.
        self.assertDenied(
            request(policy, "x.secret.example", 443, proxied=False),
            "destination not allowed by policy rule 1",
            "by name",
        )
        self.assertVerdict(
            request(policy, "www.example", 443, proxied=False), True, "allowed by policy rule 2", 1
        )
        self.assertVerdict(request(policy, "internal.corp", 8080, proxied=False), True, pending, 2)
        cases = [
            ("10.9.9.9", False, "destination not allowed by policy rule 3"),
            ("::ffff:10.9.9.9", False, "destination not allowed by policy rule 3"),
            ("2001:db8:bad::2", False, "destination not allowed by policy rule 3"),
            ("192.0.2.1", True, "allowed by policy default"),
        ]
        for addr, allowed, reason in cases:
            self.assertVerdict(address(policy, "internal.corp", addr, 8080), allowed, reason, addr)
        # A name allowed by rule 2 is still checked on its address.
        self.assertDenied(
            address(policy, "www.example", "127.0.0.1", 443),
            "destination not allowed: loopback",
            "rebinding",
        )

    def test_all_matchers_of_a_rule_must_match(self):
        policy = parse(
            '[[rule]]\naction = "deny"\nhost = "*.corp"\ncidr = ["10.0.0.0/8"]\nports = [22]\n'
        )
        rule1 = "destination not allowed by policy rule 1"
        self.assertDenied(address(policy, "a.corp", "10.0.0.1", 22), rule1, "all match")
        self.assertTrue(address(policy, "a.corp", "10.0.0.1", 23).allowed)
        self.assertTrue(address(policy, "a.corp", "11.0.0.1", 22).allowed)
        self.assertTrue(address(policy, "a.org", "10.0.0.1", 22).allowed)

    def test_default_deny_with_allowlist(self):
        policy = parse(
            'default = "deny"\n[[rule]]\naction = "allow"\ncidr = ["192.0.2.0/24", "2001:db8::/32"]\n'
        )
        self.assertTrue(address(policy, "a", "192.0.2.9", 80).allowed)
        self.assertTrue(address(policy, "a", "2001:db8::9", 80).allowed)
        self.assertTrue(request(policy, "192.0.2.9", 80, proxied=True).allowed)
        for verdict in [
            address(policy, "a", "198.51.100.1", 80),
            request(policy, "a.example", 80, proxied=True),
            request(policy, "198.51.100.1", 80, proxied=False),
        ]:
            self.assertDenied(verdict, "destination not allowed by policy default", verdict)

    def test_no_rules(self):
        for text in ("", "# nothing\n", 'default = "allow"\n'):
            policy = parse(text)
            self.assertEqual((policy.rules, policy.default), ((), Action.ALLOW))
        self.assertEqual(parse('default = "deny"').default, Action.DENY)

    def test_docstring_example_parses_and_means_what_it_says(self):
        doc = forwarding_policy.__doc__
        start = doc.index("is TOML::") + len("is TOML::")
        end = doc.index("Top-level keys:")
        policy = parse(doc[start:end])
        self.assertEqual(len(policy.rules), 3)
        self.assertDenied(
            address(policy, "db", "10.1.1.1", 5432), "destination not allowed by policy rule 1", 1
        )
        self.assertTrue(request(policy, "ci.build.example.com", 8042, proxied=True).allowed)
        self.assertVerdict(
            request(policy, "127.0.0.1", 8080, proxied=True),
            True,
            "allowed by policy rule 3, overriding a built-in denial",
            "override",
        )
        self.assertFalse(request(policy, "127.0.0.1", 8081, proxied=True).allowed)


class OverrideBuiltinTests(VerdictAssertions, unittest.SynchronousTestCase):
    def test_plain_allow_does_not_open_builtin(self):
        policy = parse('[[rule]]\naction = "allow"\ncidr = ["127.0.0.0/8"]\n')
        self.assertDenied(
            request(policy, "127.0.0.1", 8080, proxied=True),
            "destination not allowed: loopback",
            "no override",
        )

    def test_override_opens_only_what_it_matches(self):
        policy = parse(
            """
            [[rule]]
            action = "allow"
            override_builtin = true
            cidr = ["127.0.0.1/32", "::1/128"]
            ports = ["8000-8999"]

            [[rule]]
            action = "allow"
            override_builtin = true
            host = "localhost"
            ports = [9000]
            """
        )
        override1 = "allowed by policy rule 1, overriding a built-in denial"
        override2 = "allowed by policy rule 2, overriding a built-in denial"
        for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            self.assertVerdict(request(policy, host, 8080, proxied=True), True, override1, host)
        self.assertVerdict(address(policy, "localhost", "::1", 8080), True, override1, "addr")
        self.assertVerdict(request(policy, "localhost", 9000, proxied=True), True, override2, 2)
        self.assertVerdict(address(policy, "localhost", "127.0.0.1", 9000), True, override2, 2)
        denied = [
            (request(policy, "127.0.0.2", 8080, proxied=True), "loopback"),
            (request(policy, "127.0.0.1", 9001, proxied=True), "loopback"),
            (request(policy, "169.254.169.254", 8080, proxied=True), "cloud metadata"),
            (address(policy, "other.example", "127.0.0.1", 9000), "loopback"),
        ]
        for verdict, category in denied:
            self.assertDenied(verdict, f"destination not allowed: {category}", verdict)
        # As documented, a host-only override opens what the name resolves to.
        self.assertVerdict(
            address(policy, "localhost", "169.254.169.254", 9000), True, override2, 3
        )

    def test_mapped_networks_are_ipv4_networks(self):
        policy = parse(
            'default = "deny"\n[[rule]]\naction = "allow"\noverride_builtin = true\n'
            'cidr = ["::ffff:127.0.0.0/104"]\n'
        )
        override = "allowed by policy rule 1, overriding a built-in denial"
        # Other embeddings match IPv4 networks through the address they embed.
        for host in ("127.0.0.1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::127.0.0.1"):
            self.assertVerdict(request(policy, host, 80, proxied=True), True, override, host)
        self.assertDenied(
            request(policy, "::1", 80, proxied=True), "destination not allowed: loopback", "::1"
        )

    def test_override_must_be_the_first_match(self):
        policy = parse(
            """
            [[rule]]
            action = "allow"
            ports = [8080]

            [[rule]]
            action = "allow"
            override_builtin = true
            cidr = ["127.0.0.0/8"]
            """
        )
        self.assertDenied(
            request(policy, "127.0.0.1", 8080, proxied=True),
            "destination not allowed: loopback",
            "rule 1 matches first",
        )
        self.assertTrue(request(policy, "127.0.0.1", 8081, proxied=True).allowed)

        policy = parse(
            """
            [[rule]]
            action = "deny"
            ports = [8080]

            [[rule]]
            action = "allow"
            override_builtin = true
            cidr = ["127.0.0.0/8"]
            """
        )
        self.assertFalse(request(policy, "127.0.0.1", 8080, proxied=True).allowed)


class KeyOptionTests(VerdictAssertions, unittest.SynchronousTestCase):
    NO_FORWARDING = "port forwarding disabled for this key"
    NOT_PERMITTED = "destination not permitted for this key"

    def check_both(self, policy, host, port, options):
        """Both modes, and the address check (a literal host resolves to itself)."""
        verdicts = [
            request(policy, host, port, proxied=p, key_options=options) for p in (True, False)
        ]
        try:
            addr = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            addr = "192.0.2.10"
        verdicts.append(address(policy, host, addr, port, key_options=options))
        return verdicts

    def test_no_port_forwarding_and_restrict(self):
        policy = ForwardPolicy()
        for options in [
            KeyOptions(no_port_forwarding=True),
            key_options("no-port-forwarding"),
            key_options("restrict"),
            key_options("port-forwarding,restrict"),
        ]:
            for verdict in self.check_both(policy, "www.example", 443, options):
                self.assertDenied(verdict, self.NO_FORWARDING, options)

    def test_restrict_then_port_forwarding_allows_as_in_sshd(self):
        options = key_options("restrict,port-forwarding")
        self.assertTrue(options.restrict)
        for verdict in self.check_both(ForwardPolicy(), "www.example", 443, options):
            self.assertTrue(verdict.allowed, verdict)

    def test_no_key_options(self):
        for verdict in self.check_both(ForwardPolicy(), "www.example", 443, None):
            self.assertTrue(verdict.allowed, verdict)

    def test_permitopen(self):
        options = key_options(
            'permitopen="DB.example:5432",permitopen="web.example:*",'
            'permitopen="[2001:db8::1]:443",permitopen="*:8443"'
        )
        policy = ForwardPolicy()
        allowed = [
            ("db.example", 5432),
            ("DB.EXAMPLE", 5432),
            ("web.example", 1),
            ("web.example", 65535),
            ("2001:db8::1", 443),
            ("[2001:db8::1]", 443),
            ("anything.example", 8443),
        ]
        for host, port in allowed:
            for verdict in self.check_both(policy, host, port, options):
                self.assertTrue(verdict.allowed, (host, port, verdict))
        # Compared as requested, before resolution: another name for the
        # same host, or the address, is not in the list.
        refused = [
            ("db.example", 5433),
            ("db2.example", 5432),
            ("192.0.2.10", 5432),
            ("2001:db8:0::1", 443),
            ("www.web.example", 80),
        ]
        for host, port in refused:
            for verdict in self.check_both(policy, host, port, options):
                self.assertDenied(verdict, self.NOT_PERMITTED, (host, port))

    def test_permitopen_does_not_lift_other_layers(self):
        options = KeyOptions(permitopen=(("127.0.0.1", 8080), ("db.internal", 22)))
        policy = protected()
        self.assertDenied(
            request(policy, "127.0.0.1", 8080, proxied=True, key_options=options),
            "destination not allowed: loopback",
            "builtin",
        )
        self.assertDenied(
            request(policy, "db.internal", 22, proxied=True, key_options=options),
            "destination not allowed: target SSH server",
            "target",
        )


class ReservedNameTests(VerdictAssertions, unittest.SynchronousTestCase):
    def test_control_channel(self):
        policy = protected(parse('default = "deny"'))
        for host in ("wraith-control", "WRAITH-Control", "wraith-control."):
            for options in (OPEN, None, KeyOptions(no_port_forwarding=True)):
                for verdict in (
                    request(policy, host, 0, proxied=True, key_options=options),
                    request(policy, host, 0, proxied=False, key_options=options),
                    address(policy, host, "127.0.0.1", 0, key_options=options),
                ):
                    self.assertEqual(
                        (verdict.allowed, verdict.kind, verdict.reason),
                        (False, VerdictKind.CONTROL, "control channel"),
                        host,
                    )

    def test_other_reserved_names_are_prohibited(self):
        policy = ForwardPolicy(rules=parse('[[rule]]\naction = "allow"\nhost = "*"').rules)
        options = KeyOptions(permitopen=(("wraith-api", 80),))
        cases = [("wraith-control", 22), ("wraith-control", 65536), ("wraith-api", 80)]
        cases += [("Wraith-X", 1), ("wraith-", 443), ("[wraith-x]", 1)]
        for host, port in cases:
            for verdict in (
                request(policy, host, port, proxied=True, key_options=options),
                address(policy, host, "192.0.2.1", port, key_options=options),
            ):
                self.assertEqual(
                    (verdict.allowed, verdict.kind, verdict.reason),
                    (False, VerdictKind.PROHIBITED, "administratively prohibited: reserved name"),
                    (host, port),
                )

    def test_similar_names_are_not_reserved(self):
        for host in ("wraith", "wraithcontrol", "my-wraith-control", "wraith.example"):
            self.assertTrue(request(ForwardPolicy(), host, 443, proxied=True).allowed, host)


class MalformedRequestTests(VerdictAssertions, unittest.SynchronousTestCase):
    def test_bad_ports(self):
        for port in (0, -1, 65536, 2**32 - 1, True):
            for verdict in (
                request(ForwardPolicy(), "www.example", port, proxied=True),
                address(ForwardPolicy(), "www.example", "192.0.2.1", port),
            ):
                self.assertDenied(verdict, "invalid destination port", port)

    def test_bad_hosts(self):
        for host in ("", "[]", "a b", "a\nb", "a\x00b", "a\rb", "\t", "x" * 256):
            self.assertDenied(
                request(ForwardPolicy(), host, 443, proxied=True), "invalid destination host", host
            )
        self.assertTrue(request(ForwardPolicy(), "x" * 255, 443, proxied=True).allowed)

    def test_bad_addresses(self):
        for addr in ("", "www.example", "127.1", "1.2.3.4 ", "::ffff:1.2.3", "[::1"):
            self.assertDenied(
                address(ForwardPolicy(), "www.example", addr, 443),
                "invalid destination address",
                addr,
            )

    def test_literal_host_must_resolve_to_itself(self):
        policy = ForwardPolicy()
        self.assertDenied(
            address(policy, "192.0.2.1", "192.0.2.2", 443), "invalid destination address", "x"
        )
        for host, addr in [("192.0.2.1", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1")]:
            self.assertTrue(address(policy, host, addr, 443).allowed, host)


class VerdictTests(unittest.SynchronousTestCase):
    def test_kind_follows_allowed(self):
        self.assertIs(Verdict(True, "x").kind, VerdictKind.ALLOW)
        self.assertIs(Verdict(False, "x").kind, VerdictKind.DENY)
        self.assertRaises(ValueError, Verdict, True, "x", VerdictKind.CONTROL)
        self.assertRaises(ValueError, Verdict, False, "x", VerdictKind.ALLOW)


class PolicyFileErrorTests(VerdictAssertions, unittest.SynchronousTestCase):
    def rule_error(self, body: str, number: int, reason: str) -> None:
        filler = '[[rule]]\naction = "deny"\nports = [1]\n' * (number - 1)
        self.assertPolicyError(
            filler + "[[rule]]\n" + body, f"policy.toml: rule {number}: {reason}"
        )

    def test_not_toml(self):
        with self.assertRaises(ForwardPolicyError) as caught:
            parse('[[rule]]\naction = "allow"\nhost = *.example\n')
        message = str(caught.exception)
        self.assertTrue(message.startswith("policy.toml: not valid TOML: "), message)
        self.assertIn("line 3", message)
        self.assertNotIn("\n", message)

    def test_not_utf8(self):
        with self.assertRaises(ForwardPolicyError) as caught:
            parse_forward_policy(b'default = "\xff"\n', "policy.toml")
        self.assertEqual(str(caught.exception), "policy.toml: not valid UTF-8")

    def test_top_level(self):
        self.assertPolicyError("defualt = 1", "policy.toml: unknown key 'defualt'")
        self.assertPolicyError(
            '[[rules]]\naction = "deny"',
            "policy.toml: unknown key 'rules' (rules are [[rule]] tables)",
        )
        self.assertPolicyError(
            '[rule]\naction = "deny"',
            "policy.toml: rule must be an array of tables: write [[rule]]",
        )
        self.assertPolicyError(
            'default = "block"',
            'policy.toml: default: unknown action \'block\': expected "allow" or "deny"',
        )
        self.assertPolicyError(
            "default = true",
            'policy.toml: default: unknown action True: expected "allow" or "deny"',
        )

    def test_rule_shape(self):
        self.assertPolicyError("rule = [1]", "policy.toml: rule 1: must be a table: write [[rule]]")
        self.rule_error('action = "allow"\nprots = [1]\n', 2, "unknown key 'prots'")
        self.rule_error('host = "a"\n', 1, 'missing action = "allow" or "deny"')
        self.rule_error(
            'action = "permit"\n', 3, 'unknown action \'permit\': expected "allow" or "deny"'
        )
        self.rule_error(
            'action = "ALLOW"\n', 1, 'unknown action \'ALLOW\': expected "allow" or "deny"'
        )

    def test_bad_cidr(self):
        cases = [
            ('["10.0.0.1/8"]', "bad CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
            ('["10.0.0.0/33"]', "bad CIDR '10.0.0.0/33': "),
            ('["fe80::/129"]', "bad CIDR 'fe80::/129': "),
            ('["example.com"]', "bad CIDR 'example.com': "),
            ("[10]", 'bad CIDR 10: expected a string such as "10.0.0.0/8"'),
            ('"10.0.0.0/8"', "cidr must be a list, not '10.0.0.0/8'"),
            ("[]", "cidr is empty: it would match nothing"),
        ]
        for value, reason in cases:
            with self.assertRaises(ForwardPolicyError) as caught:
                parse(f'[[rule]]\naction = "deny"\ncidr = {value}\n')
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"policy.toml: rule 1: {reason}"), message)
            self.assertNotIn("\n", message)

    def test_bad_ports(self):
        cases = [
            ('["90-80"]', "bad port range '90-80': low end above high end"),
            ('["0-80"]', "bad port '0-80': ports are 1-65535"),
            ('["1-65536"]', "bad port '1-65536': ports are 1-65535"),
            ("[0]", "bad port 0: ports are 1-65535"),
            ("[70000]", "bad port 70000: ports are 1-65535"),
            ('["80"]', "bad port '80': expected a number or a \"low-high\" range in quotes"),
            ('["80-"]', "bad port '80-': expected a number or a \"low-high\" range in quotes"),
            ('["a-b"]', "bad port 'a-b': expected a number or a \"low-high\" range in quotes"),
            ('["80 - 90"]', "bad port '80 - 90': expected a number"),
            ("[true]", "bad port True: expected a number"),
            ("[1.5]", "bad port 1.5: expected a number"),
            ("80", "ports must be a list, not 80"),
            ("[]", "ports is empty: it would match nothing"),
        ]
        for value, reason in cases:
            with self.assertRaises(ForwardPolicyError) as caught:
                parse(f'[[rule]]\naction = "allow"\nports = {value}\n')
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"policy.toml: rule 1: {reason}"), message)

    def test_bad_host(self):
        self.rule_error('action = "deny"\nhost = ""\n', 1, "bad host pattern ''")
        self.rule_error('action = "deny"\nhost = ["a", "b c"]\n', 1, "bad host pattern 'b c'")
        self.rule_error('action = "deny"\nhost = []\n', 1, "host is empty: it would match nothing")
        self.rule_error(
            'action = "deny"\nhost = [1]\n',
            1,
            "host must be a pattern or a list of patterns, not 1",
        )
        self.rule_error(
            'action = "deny"\nhost = "10.0.0.0/8"\n',
            1,
            "host '10.0.0.0/8' looks like a network: use cidr = [...]",
        )

    def test_bad_override(self):
        self.rule_error(
            'action = "deny"\noverride_builtin = true\ncidr = ["127.0.0.0/8"]\n',
            2,
            'override_builtin is only valid with action = "allow"',
        )
        self.rule_error(
            'action = "allow"\noverride_builtin = true\nports = [80]\n',
            1,
            "override_builtin needs cidr or host: name what it opens",
        )
        self.rule_error(
            'action = "allow"\noverride_builtin = "yes"\nhost = "a"\n',
            1,
            "override_builtin must be true or false, not 'yes'",
        )
        # false is fine anywhere.
        parse('[[rule]]\naction = "deny"\noverride_builtin = false\n')

    def test_long_values_are_shortened(self):
        with self.assertRaises(ForwardPolicyError) as caught:
            parse(f'[[rule]]\naction = "{"x" * 500}"\n')
        self.assertLess(len(str(caught.exception)), 150)


class LoadTests(unittest.SynchronousTestCase):
    def test_load(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('default = "deny"\n[[rule]]\naction = "allow"\nports = [443]\n')
        policy = load_forward_policy(path)
        self.assertEqual((policy.source, policy.default, len(policy.rules)), (path, Action.DENY, 1))

    def test_errors_name_the_path(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[[rule]]\naction = "allow"\n[[rule]]\naction = "nope"\n')
        with self.assertRaises(ForwardPolicyError) as caught:
            load_forward_policy(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: rule 2: unknown action"))

    def test_unreadable(self):
        path = os.path.join(self.mktemp(), "missing.toml")
        with self.assertRaises(ForwardPolicyError) as caught:
            load_forward_policy(path)
        self.assertEqual(
            str(caught.exception), f"{path}: cannot read forward policy: No such file or directory"
        )


# --- properties --------------------------------------------------------------

RICH_POLICY = protected(
    parse(
        """
        [[rule]]
        action = "deny"
        host = ["*.secret.*", "h?st"]

        [[rule]]
        action = "allow"
        override_builtin = true
        cidr = ["127.0.0.0/30", "::1/128"]
        ports = ["8000-8999"]

        [[rule]]
        action = "deny"
        cidr = ["10.0.0.0/8", "2001:db8::/32", "::ffff:192.168.0.0/112"]

        [[rule]]
        action = "allow"
        ports = [443, "1000-2000"]

        [[rule]]
        action = "deny"
        ports = ["1-1023"]
        """
    )
)
VOCABULARY = "\n".join(RICH_POLICY.reasons())

hosts = st.one_of(
    st.text(max_size=300),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\.?", fullmatch=True),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.sampled_from([h for h, _ in BUILTIN_LITERALS + BUILTIN_NAMES] + ["db.internal"]),
    st.sampled_from(["wraith-control", "wraith-x", "localhost"]),
)
ports = st.one_of(
    st.integers(min_value=-1, max_value=70000),
    st.sampled_from([0, 22, 443, 2222, 8080]),
    st.integers(),
)
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.text(max_size=60),
)
key_options_strategy = st.one_of(
    st.none(),
    st.builds(
        KeyOptions,
        no_port_forwarding=st.booleans(),
        permitopen=st.lists(
            st.tuples(
                st.one_of(st.just("*"), st.from_regex(r"[a-z0-9.]{1,12}", fullmatch=True)),
                st.one_of(st.just("*"), st.integers(min_value=1, max_value=65535)),
            ),
            max_size=3,
        ).map(tuple),
    ),
)


class PropertyTests(unittest.SynchronousTestCase):
    def assertSilent(self, verdict: Verdict, host: str, port: int, addr: str | None = None) -> None:
        """The reason comes from the fixed vocabulary and names nothing of the destination."""
        self.assertIn(verdict.reason, RICH_POLICY.reasons())
        texts = [host, host.strip("[]"), str(port)]
        if addr is not None:
            texts.append(addr)
            try:
                # Without the zone: ipaddress cannot explode a scoped address.
                parsed = ipaddress.ip_address(addr.strip("[]").partition("%")[0])
            except ValueError:
                pass
            else:
                texts += [str(parsed), parsed.exploded]
        for text in texts:
            if text and text not in VOCABULARY:
                self.assertNotIn(text, verdict.reason)

    @settings(max_examples=500, deadline=None)
    @given(hosts, ports, key_options_strategy, st.booleans())
    def test_check_request_reason_never_names_the_destination(self, host, port, options, proxied):
        verdict = RICH_POLICY.check_request(host, port, key_options=options, proxied=proxied)
        self.assertSilent(verdict, host, port)
        self.assertEqual(verdict.allowed, verdict.kind is VerdictKind.ALLOW)

    @settings(max_examples=500, deadline=None)
    @given(hosts, addresses, ports, key_options_strategy)
    def test_check_address_never_raises_nor_names_the_destination(self, host, addr, port, options):
        verdict = RICH_POLICY.check_address(host, addr, port, key_options=options)
        self.assertSilent(verdict, host, port, addr)

    @settings(max_examples=500, deadline=None)
    @given(hosts, st.ip_addresses().map(str), ports, key_options_strategy)
    def test_a_denial_before_resolution_is_final(self, host, addr, port, options):
        """Whatever a name resolves to, check_address upholds a check_request denial."""
        before = RICH_POLICY.check_request(host, port, key_options=options, proxied=False)
        after = RICH_POLICY.check_address(host, addr, port, key_options=options)
        if not before.allowed:
            self.assertFalse(after.allowed, (before, after))

    @settings(max_examples=300, deadline=None)
    @given(st.ip_addresses(), ports, key_options_strategy, st.booleans())
    def test_literals_decide_the_same_before_and_after_resolution(
        self, literal, port, options, proxied
    ):
        host = str(literal)
        before = RICH_POLICY.check_request(host, port, key_options=options, proxied=proxied)
        after = RICH_POLICY.check_address(host, host, port, key_options=options)
        self.assertEqual(before, after)

    @settings(max_examples=300, deadline=None)
    @given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=65535))
    def test_mapped_forms_decide_like_ipv4(self, v4, port):
        for form in (f"::ffff:{v4}", f"[::ffff:{v4}]"):
            self.assertEqual(
                RICH_POLICY.check_request(form, port, key_options=None, proxied=True).allowed,
                RICH_POLICY.check_request(str(v4), port, key_options=None, proxied=True).allowed,
                form,
            )
