"""The --targets file and the choice of target for each login (sans-IO)."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.gatewayharness import keygen
from wraith_conch.config import ConfigError, build_config
from wraith_conch.targets import (
    Route,
    TargetRefused,
    TargetRouter,
    Targets,
    TargetsError,
    describe_targets,
    load_targets,
    parse_targets,
)
from wraith_conch.upstream.client import TargetAddress, UpstreamError
from wraith_conch.upstream.known_hosts import (
    HostKeyVerdict,
    KnownHostsError,
    parse_known_hosts,
)


def new_key() -> keys.Key:
    return keys.Key(Ed25519PrivateKey.generate())


def key_line(key: keys.Key) -> str:
    return key.public().toString("openssh").decode()


class FakeKnownHostsFiles:
    """known_hosts files in memory: path -> text; records what was read."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.read: list[str] = []

    def __call__(self, path: str):
        self.read.append(path)
        if path not in self.files:
            raise KnownHostsError(f"cannot read known_hosts file {path}: No such file or directory")
        return parse_known_hosts(self.files[path].encode(), path)


DB1_KEY = new_key()
DB2_KEY = new_key()
KNOWN = FakeKnownHostsFiles(
    {
        "/etc/wraith/db1.known_hosts": f"10.0.0.5 {key_line(DB1_KEY)}\n",
        "/etc/wraith/other.known_hosts": f"[10.0.0.9]:2222 {key_line(DB1_KEY)}\n",
    }
)

GOOD = f"""
default = "db1"

[targets.db1]
host = "10.0.0.5"
known_hosts = "/etc/wraith/db1.known_hosts"

[targets.db2]
host = "db2.internal"
port = 2222
host_key = "{key_line(DB2_KEY)} db2 host key"
users = ["alice", "bob"]
"""


def parse(text: str, source: str = "/etc/wraith/targets.toml", reader=KNOWN) -> Targets:
    return parse_targets(text.encode(), source, reader)


class ParseTests(SynchronousTestCase):
    def test_good_file(self) -> None:
        targets = parse(GOOD)
        self.assertEqual(targets.default, "db1")
        self.assertEqual(targets.source, "/etc/wraith/targets.toml")
        db1, db2 = targets.routes
        self.assertEqual(
            (db1.alias, db1.address, db1.users), ("db1", TargetAddress("10.0.0.5", 22), None)
        )
        self.assertEqual(
            (db2.alias, db2.address, db2.users),
            ("db2", TargetAddress("db2.internal", 2222), frozenset({"alice", "bob"})),
        )
        self.assertEqual(db1.describe(), "db1 (10.0.0.5:22)")

    def test_known_hosts_file_pins(self) -> None:
        db1 = parse(GOOD).get("db1")
        self.assertEqual(db1.known_hosts.check("10.0.0.5", 22, DB1_KEY), HostKeyVerdict.TRUSTED)
        self.assertEqual(db1.known_hosts.check("10.0.0.5", 22, DB2_KEY), HostKeyVerdict.CHANGED)

    def test_inline_host_key_pins_exactly_this_host_and_port(self) -> None:
        pinned = parse(GOOD).get("db2").known_hosts
        self.assertEqual(pinned.check("db2.internal", 2222, DB2_KEY), HostKeyVerdict.TRUSTED)
        self.assertEqual(pinned.check("DB2.internal", 2222, DB2_KEY), HostKeyVerdict.TRUSTED)
        self.assertEqual(pinned.check("db2.internal", 2222, DB1_KEY), HostKeyVerdict.CHANGED)
        self.assertEqual(pinned.check("db2.internal", 22, DB2_KEY), HostKeyVerdict.UNKNOWN)
        self.assertEqual(pinned.check("10.0.0.5", 2222, DB2_KEY), HostKeyVerdict.UNKNOWN)
        self.assertIn("targets.db2", pinned.source)

    def test_inline_host_key_without_comment_and_on_port_22(self) -> None:
        targets = parse(f'[targets.a]\nhost = "h"\nhost_key = "{key_line(DB1_KEY)}"\n')
        self.assertEqual(
            targets.get("a").known_hosts.check("h", 22, DB1_KEY), HostKeyVerdict.TRUSTED
        )

    def test_ipv6_hosts(self) -> None:
        for host in ("::1", "[::1]"):
            with self.subTest(host=host):
                targets = parse(
                    f'[targets.v6]\nhost = "{host}"\nport = 2200\nhost_key = "{key_line(DB1_KEY)}"\n'
                )
                route = targets.get("v6")
                self.assertEqual(route.address, TargetAddress("::1", 2200))
                self.assertEqual(
                    route.known_hosts.check("::1", 2200, DB1_KEY), HostKeyVerdict.TRUSTED
                )

    def test_relative_known_hosts_is_relative_to_the_file(self) -> None:
        reader = FakeKnownHostsFiles({"/srv/conf/kh/db1": f"10.0.0.5 {key_line(DB1_KEY)}\n"})
        parse(
            '[targets.db1]\nhost = "10.0.0.5"\nknown_hosts = "kh/db1"\n',
            source="/srv/conf/targets.toml",
            reader=reader,
        )
        self.assertEqual(reader.read, ["/srv/conf/kh/db1"])

    def test_lookup_ignores_case(self) -> None:
        targets = parse(GOOD)
        self.assertIs(targets.get("DB1"), targets.get("db1"))
        self.assertIsNone(targets.get("db3"))

    def test_default_is_optional_and_ignores_case(self) -> None:
        self.assertIsNone(parse(GOOD.replace('default = "db1"', "")).default)
        self.assertEqual(parse(GOOD.replace('default = "db1"', 'default = "DB2"')).default, "db2")

    def test_aliases_with_every_allowed_character(self) -> None:
        text = f'[targets."db_1.eu-west"]\nhost = "h"\nhost_key = "{key_line(DB1_KEY)}"\n'
        self.assertEqual(parse(text).routes[0].alias, "db_1.eu-west")


class ParseErrorTests(SynchronousTestCase):
    def assertError(self, text: str, *expected: str, reader=KNOWN) -> str:
        with self.assertRaises(TargetsError) as caught:
            parse(text, reader=reader)
        message = str(caught.exception)
        self.assertTrue(message.startswith("/etc/wraith/targets.toml: "), message)
        self.assertNotIn("\n", message)
        for part in expected:
            self.assertIn(part, message)
        return message

    def target(self, body: str, alias: str = "db1") -> str:
        return f'[targets.{alias}]\nhost = "10.0.0.5"\n{body}\n'

    def test_no_pin(self) -> None:
        self.assertError(
            self.target(""), "targets.db1: give exactly one of known_hosts or host_key", "pinned"
        )

    def test_both_pins(self) -> None:
        self.assertError(
            self.target(
                f'known_hosts = "/etc/wraith/db1.known_hosts"\nhost_key = "{key_line(DB1_KEY)}"'
            ),
            "targets.db1: give known_hosts or host_key, not both",
        )

    def test_bad_aliases(self) -> None:
        pin = f'host = "h"\nhost_key = "{key_line(DB1_KEY)}"'
        for alias in ('"-db1"', '".db1"', '"db 1"', '"db@1"', '"db%1"', '"d\\u00e9"', '""'):
            with self.subTest(alias=alias):
                self.assertError(f"[targets.{alias}]\n{pin}\n", "not a usable alias")
        self.assertError(f'[targets."{"d" * 65}"]\n{pin}\n', "not a usable alias")

    def test_duplicates(self) -> None:
        twice = self.target('known_hosts = "/etc/wraith/db1.known_hosts"')
        self.assertError(twice + twice, "not valid TOML", "db1")
        self.assertError(
            twice + self.target('known_hosts = "/etc/wraith/db1.known_hosts"', alias="DB1"),
            "targets.DB1: duplicate of targets.db1",
        )

    def test_unknown_keys(self) -> None:
        self.assertError(
            self.target('known_hosts = "/etc/wraith/db1.known_hosts"\nuser = ["alice"]'),
            "targets.db1: unknown key 'user' (expected host, host_key, known_hosts, port, users)",
        )
        self.assertError(
            'defualt = "db1"\n' + self.target('known_hosts = "/etc/wraith/db1.known_hosts"'),
            "unknown key 'defualt'",
        )
        self.assertError(
            '[target.db1]\nhost = "h"\n', "unknown key 'target' (a target is a [targets.NAME]"
        )

    def test_shapes(self) -> None:
        self.assertError("", "no targets: add a [targets.NAME] table")
        self.assertError("[targets]\n", "no targets")
        self.assertError("targets = 1\n", "targets must be tables")
        self.assertError('[targets]\ndb1 = "10.0.0.5"\n', "targets.db1: must be a table")

    def test_default_must_be_a_target(self) -> None:
        body = self.target('known_hosts = "/etc/wraith/db1.known_hosts"')
        self.assertError('default = "db9"\n' + body, "default 'db9' is not one of the targets")
        self.assertError("default = 1\n" + body, "default must be a target name")

    def test_hosts_and_ports(self) -> None:
        pin = 'known_hosts = "/etc/wraith/db1.known_hosts"'
        self.assertError(f"[targets.db1]\n{pin}\n", "host is required")
        self.assertError(f'[targets.db1]\nhost = " "\n{pin}\n', "host is required")
        self.assertError(f"[targets.db1]\nhost = 5\n{pin}\n", "host is required")
        self.assertError(f'[targets.db1]\nhost = "a b"\n{pin}\n', "bad host 'a b'")
        self.assertError(f'[targets.db1]\nhost = "u@h"\n{pin}\n', "bad host 'u@h'")
        self.assertError(
            f'[targets.db1]\nhost = "h:2222"\n{pin}\n', "bad host 'h:2222' (give the port as port"
        )
        for port in ("0", "65536", '"22"', "true", "22.0", "-1"):
            with self.subTest(port=port):
                self.assertError(self.target(f"port = {port}\n{pin}"), "port must be a number")

    def test_known_hosts_problems(self) -> None:
        self.assertError(
            self.target('known_hosts = "/etc/wraith/missing"'),
            "targets.db1: known_hosts: cannot read known_hosts file /etc/wraith/missing",
        )
        self.assertError(self.target("known_hosts = 1"), "known_hosts must be a path")
        self.assertError(self.target('known_hosts = ""'), "known_hosts must be a path")
        # A file that pins another host (or the same host on another port) pins nothing here.
        self.assertError(
            self.target('known_hosts = "/etc/wraith/other.known_hosts"'),
            "known_hosts /etc/wraith/other.known_hosts has no key for 10.0.0.5",
        )
        self.assertError(
            self.target('port = 2200\nknown_hosts = "/etc/wraith/db1.known_hosts"'),
            "has no key for [10.0.0.5]:2200",
        )
        bad = FakeKnownHostsFiles({"/k": "10.0.0.5 ssh-ed25519 !!!\n"})
        self.assertError(
            self.target('known_hosts = "/k"'), "known_hosts: /k:1: bad base64", reader=bad
        )

    def test_host_key_problems(self) -> None:
        for value in ('"ssh-ed25519"', '"ssh-ed25519 AAAA!!"', "1", '"nonsense words"'):
            with self.subTest(value=value):
                self.assertError(self.target(f"host_key = {value}"), "host_key")
        blob = key_line(DB1_KEY).split()[1]
        self.assertError(
            self.target(f'host_key = "ssh-rsa {blob}"'),
            "host_key",
        )
        private = DB1_KEY.toString("openssh").decode().replace("\n", "\\n")
        self.assertError(self.target(f'host_key = "{private}"'), "host_key")

    def test_users_problems(self) -> None:
        pin = 'known_hosts = "/etc/wraith/db1.known_hosts"'
        for value, expected in [
            ('"alice"', "users must be a non-empty list"),
            ("[]", "users must be a non-empty list"),
            ('["alice", "b ob"]', "users: 'b ob' is not a user name"),
            ('["alice@db1"]', "users: 'alice@db1' is not a user name"),
            ("[1]", "users: 1 is not a user name"),
        ]:
            with self.subTest(value=value):
                self.assertError(self.target(f"{pin}\nusers = {value}"), expected)

    def test_not_toml_or_not_utf8(self) -> None:
        self.assertError("[targets.db1\n", "not valid TOML")
        with self.assertRaises(TargetsError) as caught:
            parse_targets(b"\xff\xfe", "/etc/wraith/targets.toml", KNOWN)
        self.assertEqual(str(caught.exception), "/etc/wraith/targets.toml: not valid UTF-8")

    def test_load_missing_file(self) -> None:
        with self.assertRaises(TargetsError) as caught:
            load_targets("/nonexistent/targets.toml")
        self.assertEqual(
            str(caught.exception),
            "/nonexistent/targets.toml: cannot read the targets file: No such file or directory",
        )


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.targets = parse(GOOD.replace('default = "db1"', ""))
        self.main = TargetAddress("192.0.2.1", 22)
        self.main_known = parse_known_hosts(f"192.0.2.1 {key_line(DB1_KEY)}\n".encode(), "kh")
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def refused(self, router: TargetRouter, user: str, alias: str | None) -> TargetRefused:
        with self.assertRaises(TargetRefused) as caught:
            router.route(user, alias)
        self.assertIsInstance(caught.exception, UpstreamError)
        return caught.exception

    def test_single_target_only(self) -> None:
        router = TargetRouter.build(self.main, self.main_known, None)
        route = router.route("alice", None)
        self.assertEqual((route.alias, route.address), (None, self.main))
        self.assertIs(route.known_hosts, self.main_known)
        refused = self.refused(router, "alice", "db1")
        self.assertEqual(refused.why, "no-targets")
        self.assertEqual(str(refused), "unknown target 'db1': this gateway has no named targets")
        self.assertEqual(router.routes(), (route,))

    def test_named_targets_with_a_main_target(self) -> None:
        router = TargetRouter.build(self.main, self.main_known, self.targets)
        self.assertEqual(router.route("carol", None).address, self.main)
        self.assertEqual(router.route("carol", "db1").alias, "db1")
        self.assertEqual(router.route("carol", "DB1").alias, "db1")
        self.assertEqual(router.route("alice", "db2").address, TargetAddress("db2.internal", 2222))
        self.assertEqual(
            [r.address for r in router.routes()],
            [self.main, TargetAddress("10.0.0.5", 22), TargetAddress("db2.internal", 2222)],
        )

    def test_unknown_and_not_allowed_read_the_same(self) -> None:
        router = TargetRouter.build(self.main, self.main_known, self.targets)
        unknown = self.refused(router, "carol", "db9")
        not_allowed = self.refused(router, "carol", "db2")
        self.assertEqual((unknown.why, not_allowed.why), ("unknown", "not-allowed"))
        self.assertEqual(str(unknown), "target 'db9' is unknown or not open to carol")
        self.assertEqual(str(not_allowed), "target 'db2' is unknown or not open to carol")
        self.assertEqual((not_allowed.user, not_allowed.alias), ("carol", "db2"))

    def test_bare_name_without_a_default(self) -> None:
        router = TargetRouter.build(None, None, self.targets)
        refused = self.refused(router, "alice", None)
        self.assertEqual(refused.why, "no-default")
        self.assertEqual(str(refused), "no default target: log in as alice@TARGET")
        self.assertEqual(len(router.routes()), 2)

    def test_bare_name_with_a_default_obeys_its_users(self) -> None:
        targets = parse(GOOD.replace('default = "db1"', 'default = "db2"'))
        router = TargetRouter.build(None, None, targets)
        self.assertEqual(router.route("alice", None).alias, "db2")
        refused = self.refused(router, "carol", None)
        self.assertEqual((refused.why, str(refused)), ("not-allowed", refused.args[0]))
        self.assertIn("'db2' is unknown or not open to carol", str(refused))
        # The default is listed once.
        self.assertEqual([r.alias for r in router.routes()], ["db2", "db1"])

    def test_choose_logs_refusals_only(self) -> None:
        router = TargetRouter.build(self.main, self.main_known, self.targets)
        router.choose("alice", "db1", "127.0.0.1:5555")
        self.assertEqual([e for e in self.events if e.get("event_kind") == "route"], [])
        self.assertRaises(TargetRefused, router.choose, "carol", "db2", "127.0.0.1:5556")
        self.assertRaises(TargetRefused, router.choose, "carol", "nope", "[::1]:5557")
        routed = [e for e in self.events if e.get("event_kind") == "route"]
        self.assertEqual(
            [
                (e["result"], e["user"], e["target_alias"], e["reason"], e["remote_addr"])
                for e in routed
            ],
            [
                ("refused", "carol", "db2", "not-allowed", "127.0.0.1:5556"),
                ("refused", "carol", "nope", "unknown", "[::1]:5557"),
            ],
        )

    def test_route_allows(self) -> None:
        route = Route(alias="x", address=self.main, known_hosts=self.main_known)
        self.assertTrue(route.allows("anyone"))
        self.assertEqual(route.describe(), "x (192.0.2.1:22)")
        self.assertEqual(
            Route(alias=None, address=self.main, known_hosts=self.main_known).describe(),
            "192.0.2.1:22",
        )


class BuildConfigTests(SynchronousTestCase):
    """--targets in the configuration: what --target becomes, and the errors."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.identity = os.path.join(self.base, "id")
        keygen(self.identity)
        self.operators = os.path.join(self.base, "authorized_keys")
        with open(self.operators, "w") as f:
            f.write(keygen(os.path.join(self.base, "op")) + "\n")
        self.known = os.path.join(self.base, "known_hosts")
        with open(self.known, "w") as f:
            f.write(f"[127.0.0.1]:2200 {key_line(DB1_KEY)}\n")

    def write_targets(self, text: str) -> str:
        path = os.path.join(self.base, "targets.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def options(self, **extra) -> dict:
        options = {
            "host-key": os.path.join(self.base, "hk"),
            "target-identity": self.identity,
            "authorized-keys": self.operators,
            "approval": "ws://127.0.0.1:9/",
            "target-known-hosts": "/nonexistent/known_hosts (ignored without --target)",
        }
        options.update({k.replace("_", "-"): v for k, v in extra.items()})
        return options

    def test_targets_without_target(self) -> None:
        path = self.write_targets(
            '[targets.db1]\nhost = "127.0.0.1"\nport = 2200\nknown_hosts = "known_hosts"\n'
        )
        config = build_config(self.options(targets=path), reactor)
        self.assertIsNone(config.target)
        self.assertIsNone(config.target_known_hosts)
        self.assertEqual(config.targets.get("db1").address, TargetAddress("127.0.0.1", 2200))
        self.assertEqual(describe_targets(config), "targets db1")

    def test_targets_with_target(self) -> None:
        path = self.write_targets(
            '[targets.db1]\nhost = "127.0.0.1"\nport = 2200\nknown_hosts = "known_hosts"\n'
        )
        config = build_config(
            self.options(targets=path, target="127.0.0.1:2200", target_known_hosts=self.known),
            reactor,
        )
        self.assertEqual(config.target, TargetAddress("127.0.0.1", 2200))
        self.assertEqual(describe_targets(config), "127.0.0.1:2200 and targets db1")

    def test_neither(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            build_config(self.options(), reactor)
        self.assertEqual(caught.exception.flag, "target")
        self.assertIn("or --targets", str(caught.exception))

    def test_default_and_target_both(self) -> None:
        path = self.write_targets(
            'default = "db1"\n[targets.db1]\nhost = "127.0.0.1"\nport = 2200\n'
            'known_hosts = "known_hosts"\n'
        )
        config = build_config(self.options(targets=path), reactor)
        self.assertEqual(describe_targets(config), "targets db1 (default db1)")
        with self.assertRaises(ConfigError) as caught:
            build_config(
                self.options(targets=path, target="127.0.0.1:2200", target_known_hosts=self.known),
                reactor,
            )
        self.assertEqual(caught.exception.flag, "targets")
        self.assertIn("default = 'db1' and --target both", str(caught.exception))

    def test_file_errors_name_the_flag(self) -> None:
        path = self.write_targets('[targets.db1]\nhost = "127.0.0.1"\n')
        with self.assertRaises(ConfigError) as caught:
            build_config(self.options(targets=path), reactor)
        self.assertEqual(
            str(caught.exception),
            f"--targets: {path}: targets.db1: give exactly one of known_hosts or host_key:"
            " the target's host key must be pinned",
        )
        with self.assertRaises(ConfigError) as caught:
            build_config(self.options(targets=os.path.join(self.base, "nope.toml")), reactor)
        self.assertTrue(str(caught.exception).startswith("--targets: "))
        self.assertIn("cannot read the targets file", str(caught.exception))
