"""
The gateway's configuration: one value object, validated once at start-up.

Every problem is a L{ConfigError} naming the flag and the reason in one
line, so C{twistd wraith} exits non-zero with a message an operator can act
on, and nothing half-configured ever listens.
"""

from __future__ import annotations

import os

import attrs
from twisted.conch.ssh import keys
from twisted.internet.endpoints import serverFromString

from wraith_conch.approval.client import parse_approval_url
from wraith_conch.approval.interfaces import DEFAULT_TIMEOUT_SECONDS
from wraith_conch.gateway.authorized_keys import (
    AuthorizedKeys,
    AuthorizedKeysError,
    load_authorized_keys,
)
from wraith_conch.hostkey import HostKeyError, load_or_create_host_key, load_private_key
from wraith_conch.upstream.client import TargetAddress
from wraith_conch.upstream.known_hosts import KnownHosts, KnownHostsError, load_known_hosts

DEFAULT_LISTEN = "tcp:2222:interface=127.0.0.1"
AUTH_MODES = ("keys", "passthrough")
LOG_FORMATS = ("text", "json")
MISMATCH_POLICIES = ("review", "deny")


class ConfigError(Exception):
    """A bad setting; C{str()} is C{--flag: reason}."""

    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(f"--{flag}: {reason}")
        self.flag = flag
        self.reason = reason


@attrs.frozen
class Config:
    listen: tuple[str, ...]
    host_key: keys.Key = attrs.field(repr=False)
    target: TargetAddress
    target_known_hosts: KnownHosts = attrs.field(repr=False)
    target_identity: keys.Key | None = attrs.field(repr=False)
    authorized_keys: AuthorizedKeys | None = attrs.field(repr=False)
    auth: str
    log_format: str
    approval: str
    approval_token: str | None = attrs.field(repr=False)
    approval_timeout: float
    on_mismatch: str
    gateway_name: str


def build_config(options: dict, reactor) -> Config:
    """Validate raw option values (strings, as parsed) into a L{Config}."""
    listen = tuple(options.get("listen") or ()) or (DEFAULT_LISTEN,)
    for description in listen:
        try:
            serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError("listen", f"bad endpoint {description!r}: {e}") from None

    auth = _choice(options, "auth", AUTH_MODES, "keys")
    log_format = _choice(options, "log-format", LOG_FORMATS, "text")
    on_mismatch = _choice(options, "on-mismatch", MISMATCH_POLICIES, "review")

    try:
        host_key = load_or_create_host_key(_expand(options.get("host-key")))
    except HostKeyError as e:
        raise ConfigError("host-key", str(e)) from None

    target_text = options.get("target")
    if not target_text:
        raise ConfigError("target", "required: HOST:PORT of the target SSH server")
    try:
        target = TargetAddress.parse(target_text)
    except ValueError as e:
        raise ConfigError("target", str(e)) from None

    try:
        known_hosts = load_known_hosts(_expand(options.get("target-known-hosts")))
    except KnownHostsError as e:
        raise ConfigError("target-known-hosts", str(e)) from None

    identity = None
    authorized_keys = None
    if auth == "keys":
        identity_path = options.get("target-identity")
        if not identity_path:
            raise ConfigError(
                "target-identity", "required with --auth keys: the key the gateway logs in with"
            )
        try:
            identity = load_private_key(_expand(identity_path), what="identity")
        except HostKeyError as e:
            raise ConfigError("target-identity", str(e)) from None
        keys_path = options.get("authorized-keys")
        if not keys_path:
            raise ConfigError("authorized-keys", "required with --auth keys")
        try:
            authorized_keys = load_authorized_keys(_expand(keys_path))
        except AuthorizedKeysError as e:
            raise ConfigError("authorized-keys", str(e)) from None

    approval = options.get("approval")
    if not approval:
        raise ConfigError(
            "approval",
            "required: the ws:// or wss:// URL of an approval service"
            " (there is no approve-everything mode)",
        )
    try:
        parse_approval_url(approval)
    except ValueError as e:
        raise ConfigError("approval", str(e)) from None

    token = options.get("approval-token")
    token_file = options.get("approval-token-file")
    if token and token_file:
        raise ConfigError("approval-token-file", "give --approval-token or this, not both")
    if token_file:
        try:
            with open(_expand(token_file), encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("approval-token-file", f"cannot read {token_file}: {e}") from None
        if not token:
            raise ConfigError("approval-token-file", f"{token_file} is empty")
    if token is not None and any(c.isspace() or ord(c) < 32 for c in token):
        raise ConfigError("approval-token", "the token must not contain spaces or controls")

    timeout_text = options.get("approval-timeout")
    try:
        timeout = float(timeout_text) if timeout_text is not None else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise ConfigError("approval-timeout", f"not a number: {timeout_text!r}") from None
    if not 0 < timeout <= 86400:
        raise ConfigError("approval-timeout", "must be between 0 and 86400 seconds")

    return Config(
        listen=listen,
        host_key=host_key,
        target=target,
        target_known_hosts=known_hosts,
        target_identity=identity,
        authorized_keys=authorized_keys,
        auth=auth,
        log_format=log_format,
        approval=approval,
        approval_token=token,
        approval_timeout=timeout,
        on_mismatch=on_mismatch,
        gateway_name=options.get("gateway-name") or os.uname().nodename,
    )


def _choice(options: dict, flag: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(flag) or default
    if value not in allowed:
        raise ConfigError(flag, f"must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _expand(path: str | None) -> str:
    return os.path.expanduser(path) if path else ""
