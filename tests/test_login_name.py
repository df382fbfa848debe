"""The SSH user name split into the target login and the --targets alias."""

from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.gateway.auth import LoginName, decode_login_name


class DecodeLoginNameTests(SynchronousTestCase):
    def test_bare_user_has_no_target(self) -> None:
        self.assertEqual(decode_login_name(b"alice"), LoginName("alice", None))

    def test_at_and_percent_name_a_target(self) -> None:
        self.assertEqual(decode_login_name(b"alice@db1"), LoginName("alice", "db1"))
        self.assertEqual(decode_login_name(b"alice%db1"), LoginName("alice", "db1"))
        self.assertEqual(
            decode_login_name(b"deploy.bot@db-1.eu"), LoginName("deploy.bot", "db-1.eu")
        )

    def test_refused_names(self) -> None:
        for raw in [
            b"",
            b"@db1",
            b"alice@",
            b"alice%",
            b"a@b%c",
            b"a@b@c",
            b"al ice",
            b"alice@db 1",
            b"-alice",
            b"alice@-db1",
            "al\u200bice".encode(),
            b"\xff\xfe",
            b"a" * 65,
            b"alice@" + b"d" * 65,
        ]:
            with self.subTest(raw=raw):
                self.assertRaises(UnauthorizedLogin, decode_login_name, raw)
