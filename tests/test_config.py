"""Checks of C{twistd wraith} flags that span several parts (L{build_config})."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from tests.gatewayharness import minimal_options
from wraith_conch.config import ConfigError, build_config


class EmbeddedHubTokenTests(unittest.TestCase):
    """With the embedded hub, --approval-token is what other gateways must send."""

    def test_kept_for_the_embedded_hub(self):
        token = "a-long-enough-join-token"
        config = build_config(minimal_options(self.mktemp(), **{"approval-token": token}), reactor)
        self.assertEqual((config.approval, config.approval_token), ("embedded", token))
        self.assertNotIn(token, repr(config))

    def test_too_short_for_the_embedded_hub(self):
        options = minimal_options(self.mktemp(), **{"approval-token": "short-token"})
        with self.assertRaises(ConfigError) as caught:
            build_config(options, reactor)
        self.assertEqual(caught.exception.flag, "approval-token")
        self.assertIn("at least 16 characters", str(caught.exception))
        self.assertNotIn("short-token", str(caught.exception))

    def test_short_token_is_fine_for_an_outside_service(self):
        # Outside services set their own rules (PROTOCOL.md asks for none).
        options = minimal_options(
            self.mktemp(), approval="ws://127.0.0.1:9/", **{"approval-token": "tok"}
        )
        self.assertEqual(build_config(options, reactor).approval_token, "tok")
