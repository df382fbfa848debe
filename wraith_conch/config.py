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
from wraith_conch.approval.policy import DEFAULT_POLICY, Policy, PolicyError, load_policy
from wraith_conch.approval.reviewers import Reviewers, ReviewersFileError
from wraith_conch.approval.webhook import check_webhook_url
from wraith_conch.forwarding_policy import ForwardPolicy, ForwardPolicyError, load_forward_policy
from wraith_conch.gateway.auth import warn_about_authorized_keys
from wraith_conch.gateway.authorized_keys import (
    AuthorizedKeys,
    AuthorizedKeysError,
    load_authorized_keys,
)
from wraith_conch.gateway.certificates import TrustedCAKeysError, load_trusted_ca_keys
from wraith_conch.gateway.listeners import check_listen, tcp_addresses
from wraith_conch.gateway.revocation import RevocationError, RevokedKeysFile
from wraith_conch.hostkey import HostKeyError, load_or_create_host_key, load_private_key
from wraith_conch.outbound import DIRECT, ProxySpec, parse_proxy_url
from wraith_conch.targets import Targets, TargetsError, load_targets
from wraith_conch.upstream.client import TargetAddress
from wraith_conch.upstream.known_hosts import KnownHosts, KnownHostsError, load_known_hosts
from wraith_conch.watchedfile import WatchedFile

DEFAULT_LISTEN = "tcp:2222:interface=127.0.0.1"
DEFAULT_HUB_LISTEN = "tcp:8022:interface=127.0.0.1"
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
    # None only with --targets (then a bare user name goes to its default).
    target: TargetAddress | None
    target_known_hosts: KnownHosts | None = attrs.field(repr=False)
    target_identity: keys.Key | None = attrs.field(repr=False)
    authorized_keys: AuthorizedKeys | None = attrs.field(repr=False)
    auth: str
    log_format: str
    approval: str
    approval_token: str | None = attrs.field(repr=False)
    approval_timeout: float
    on_mismatch: str
    gateway_name: str
    authorized_keys_path: str | None = None
    #: The shared --authorized-keys file, re-read when it changes (None with %u).
    authorized_keys_file: WatchedFile[AuthorizedKeys] | None = attrs.field(default=None, repr=False)
    #: --trusted-user-ca-keys: wire blobs of the CAs whose user certificates
    #: log in, as at start-up; the file itself, re-read when it changes.
    trusted_user_ca_keys: frozenset[bytes] = attrs.field(factory=frozenset, repr=False)
    trusted_user_ca_keys_file: WatchedFile[frozenset[bytes]] | None = attrs.field(
        default=None, repr=False
    )
    #: --revoked-keys: revoked keys and certificates (re-read when it changes).
    revoked_keys: RevokedKeysFile | None = attrs.field(default=None, repr=False)
    hub_listen: str = DEFAULT_HUB_LISTEN
    reviewers: Reviewers | None = attrs.field(default=None, repr=False)
    webhook: str | None = attrs.field(default=None, repr=False)
    # ws(s):// URL of a standalone hub's /live-feed (sessions for reviewers to watch).
    live_feed: str | None = None
    policy: Policy = attrs.field(default=DEFAULT_POLICY, repr=False)
    audit_log: str | None = None
    record_dir: str | None = None
    proxy: ProxySpec = DIRECT
    forward_policy: ForwardPolicy = attrs.field(factory=ForwardPolicy, repr=False)
    forwarding: bool = True
    stealth: bool = False
    targets: Targets | None = attrs.field(default=None, repr=False)
    max_connections_per_ip: int = 0
    max_auth_attempts: int = 6
    login_grace_time: float = 60.0
    max_startups: int = 100

    def listen_addresses(self) -> list[tuple[str | None, int]]:
        """
        The TCP (address, port) pairs this process listens on -- the gateway
        and, when embedded, the hub -- which forwards must never reach.
        """
        descriptions = list(self.listen)
        if self.approval == "embedded":
            descriptions.append(self.hub_listen)
        return [pair for description in descriptions for pair in _tcp_listen_address(description)]


def build_config(options: dict, reactor) -> Config:
    """Validate raw option values (strings, as parsed) into a L{Config}."""
    listen = tuple(options.get("listen") or ()) or (DEFAULT_LISTEN,)
    listen_specs = []
    for description in listen:
        try:
            listen_specs.append(check_listen(reactor, description))
        except ValueError as e:
            raise ConfigError("listen", f"bad endpoint {description!r}: {e}") from None
    stealth = bool(options.get("stealth"))
    if stealth and not any(spec.tls for spec in listen_specs):
        raise ConfigError(
            "stealth", "needs a TLS listener (--listen ssl:PORT:privateKey=...:certKey=...)"
        )

    auth = _choice(options, "auth", AUTH_MODES, "keys")
    log_format = _choice(options, "log-format", LOG_FORMATS, "text")
    on_mismatch = _choice(options, "on-mismatch", MISMATCH_POLICIES, "review")

    try:
        host_key = load_or_create_host_key(_expand(options.get("host-key")))
    except HostKeyError as e:
        raise ConfigError("host-key", str(e)) from None

    targets = None
    if options.get("targets"):
        try:
            targets = load_targets(_expand(options["targets"]))
        except TargetsError as e:
            raise ConfigError("targets", str(e)) from None
    target_text = options.get("target")
    target = known_hosts = None
    if not target_text and targets is None:
        raise ConfigError("target", "required: HOST:PORT of the target SSH server (or --targets)")
    if target_text:
        if targets is not None and targets.default is not None:
            raise ConfigError(
                "targets",
                f"default = {targets.default!r} and --target both say where a bare"
                " user name goes: give one",
            )
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
    authorized_keys_file = None
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
        if not keys_path and not options.get("trusted-user-ca-keys"):
            raise ConfigError(
                "authorized-keys", "required with --auth keys (unless --trusted-user-ca-keys)"
            )
        keys_path = _expand(keys_path)
        if not keys_path:
            # Certificates only: no key or cert-authority line is listed.
            authorized_keys = AuthorizedKeys(source="(no --authorized-keys)")
        elif "%u" in keys_path:
            # One file per user, read at login (sshd's AuthorizedKeysFile %u).
            directory = os.path.dirname(keys_path.split("%u", 1)[0] + "x")
            if not os.path.isdir(directory):
                raise ConfigError("authorized-keys", f"{directory} is not a directory")
        else:
            try:
                authorized_keys_file = WatchedFile(
                    keys_path,
                    load_authorized_keys,
                    flag="--authorized-keys",
                    errors=(AuthorizedKeysError,),
                    unusable=AuthorizedKeys(source=keys_path),
                    consequence="letting no key in",
                    on_reload=warn_about_authorized_keys,
                )
            except AuthorizedKeysError as e:
                raise ConfigError("authorized-keys", str(e)) from None
            authorized_keys = authorized_keys_file.current()

    trusted_ca_file, revoked_keys = _certificate_settings(options, auth)

    approval = options.get("approval") or "embedded"
    if approval != "embedded":
        try:
            parse_approval_url(approval)
        except ValueError as e:
            raise ConfigError(
                "approval", f"{e} (give a ws:// or wss:// URL, or 'embedded')"
            ) from None
    live_feed = options.get("live-feed") or None
    if live_feed is not None:
        if approval == "embedded":
            raise ConfigError(
                "live-feed", "only with an --approval URL (the embedded hub sees sessions directly)"
            )
        try:
            parse_approval_url(live_feed)
        except ValueError as e:
            raise ConfigError("live-feed", f"{e} (give a ws:// or wss:// URL)") from None
    hub_listen = options.get("hub-listen") or DEFAULT_HUB_LISTEN
    try:
        serverFromString(reactor, hub_listen)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError("hub-listen", f"bad endpoint {hub_listen!r}: {e}") from None
    reviewers = None
    if options.get("reviewers"):
        try:
            reviewers = Reviewers.load(_expand(options["reviewers"]))
        except (ReviewersFileError, OSError) as e:
            raise ConfigError("reviewers", str(e)) from None
    webhook = options.get("webhook") or None
    if webhook is not None:
        if approval != "embedded":
            raise ConfigError("webhook", "only with the embedded hub (no --approval URL)")
        try:
            check_webhook_url(webhook)
        except ValueError as e:
            raise ConfigError("webhook", str(e)) from None
    try:
        policy = (
            load_policy(_expand(options["policy"])) if options.get("policy") else DEFAULT_POLICY
        )
    except PolicyError as e:
        raise ConfigError("policy", str(e)) from None
    audit_log = _expand(options.get("audit-log")) or None
    if audit_log and not os.access(os.path.dirname(os.path.abspath(audit_log)), os.W_OK):
        raise ConfigError("audit-log", f"cannot write in the directory of {audit_log}")
    record_dir = _expand(options.get("record-dir")) or None
    if record_dir and not (os.path.isdir(record_dir) and os.access(record_dir, os.W_OK)):
        raise ConfigError("record-dir", f"{record_dir} is not a writable directory")

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
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        raise ConfigError("approval-token", "the token must be printable ASCII without spaces")
    if token is not None and approval == "embedded" and len(token) < 16:
        # With the embedded hub the token is the one other gateways must
        # send to join it: held to the standalone hub's rule.
        raise ConfigError(
            "approval-token", "the embedded hub's token is too short (at least 16 characters)"
        )

    timeout_text = options.get("approval-timeout")
    try:
        timeout = float(timeout_text) if timeout_text is not None else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise ConfigError("approval-timeout", f"not a number: {timeout_text!r}") from None
    if not 0 < timeout <= 86400:
        raise ConfigError("approval-timeout", "must be between 0 and 86400 seconds")

    try:
        proxy = parse_proxy_url(options.get("proxy"))
    except ValueError as e:
        raise ConfigError("proxy", str(e)) from None
    policy_path = options.get("forward-policy")
    try:
        forward_policy = (
            load_forward_policy(_expand(policy_path)) if policy_path else ForwardPolicy()
        )
    except ForwardPolicyError as e:
        raise ConfigError("forward-policy", str(e)) from None
    forwarding = _choice(options, "forwarding", ("on", "off"), "on") == "on"
    max_connections_per_ip = _count(options, "max-connections-per-ip", 0)
    max_auth_attempts = _count(options, "max-auth-attempts", 6)
    if max_auth_attempts < 1:
        raise ConfigError("max-auth-attempts", "must be at least 1")
    max_startups = _count(options, "max-startups", 100)
    grace_text = options.get("login-grace-time")
    try:
        login_grace_time = float(grace_text) if grace_text is not None else 60.0
    except ValueError:
        raise ConfigError("login-grace-time", f"not a number: {grace_text!r}") from None
    if not 0 < login_grace_time <= 86400:
        raise ConfigError("login-grace-time", "must be between 0 and 86400 seconds")

    return Config(
        hub_listen=hub_listen,
        reviewers=reviewers,
        webhook=webhook,
        live_feed=live_feed,
        policy=policy,
        audit_log=audit_log,
        record_dir=record_dir,
        proxy=proxy,
        forward_policy=forward_policy,
        forwarding=forwarding,
        stealth=stealth,
        targets=targets,
        max_connections_per_ip=max_connections_per_ip,
        max_auth_attempts=max_auth_attempts,
        login_grace_time=login_grace_time,
        max_startups=max_startups,
        listen=listen,
        host_key=host_key,
        target=target,
        target_known_hosts=known_hosts,
        target_identity=identity,
        authorized_keys=authorized_keys,
        authorized_keys_path=_expand(options.get("authorized-keys")) or None,
        authorized_keys_file=authorized_keys_file,
        trusted_user_ca_keys=trusted_ca_file.current() if trusted_ca_file else frozenset(),
        trusted_user_ca_keys_file=trusted_ca_file,
        revoked_keys=revoked_keys,
        auth=auth,
        log_format=log_format,
        approval=approval,
        approval_token=token,
        approval_timeout=timeout,
        on_mismatch=on_mismatch,
        gateway_name=options.get("gateway-name") or os.uname().nodename,
    )


def _certificate_settings(
    options: dict, auth: str
) -> tuple[WatchedFile[frozenset[bytes]] | None, RevokedKeysFile | None]:
    """--trusted-user-ca-keys and --revoked-keys, which fail closed: a file
    that cannot be read or parsed stops the start-up."""
    trusted = None
    revoked = None
    for flag in ("trusted-user-ca-keys", "revoked-keys"):
        if options.get(flag) and auth != "keys":
            raise ConfigError(flag, "only with --auth keys")
    if options.get("trusted-user-ca-keys"):
        try:
            trusted = WatchedFile(
                _expand(options["trusted-user-ca-keys"]),
                load_trusted_ca_keys,
                flag="--trusted-user-ca-keys",
                errors=(TrustedCAKeysError,),
                unusable=frozenset(),
                consequence="trusting no CA",
            )
        except TrustedCAKeysError as e:
            raise ConfigError("trusted-user-ca-keys", str(e)) from None
    if options.get("revoked-keys"):
        try:
            revoked = RevokedKeysFile(_expand(options["revoked-keys"]))
        except RevocationError as e:
            raise ConfigError("revoked-keys", str(e)) from None
    return trusted, revoked


def _choice(options: dict, flag: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(flag) or default
    if value not in allowed:
        raise ConfigError(flag, f"must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _count(options: dict, flag: str, default: int) -> int:
    """A non-negative integer flag (0 = unlimited for the limits)."""
    text = options.get(flag)
    if text is None or text == "":
        return default
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(flag, f"not a whole number: {text!r}") from None
    if value < 0:
        raise ConfigError(flag, "must not be negative (0 means unlimited)")
    return value


def _tcp_listen_address(description: str) -> list[tuple[str | None, int]]:
    """C{tcp:2222:interface=127.0.0.1} to C{[("127.0.0.1", 2222)]}; also ssl:,
    haproxy:-wrapped and onion: (its localPort); non-TCP: []."""
    return tcp_addresses(description)


def _expand(path: str | None) -> str:
    return os.path.expanduser(path) if path else ""
