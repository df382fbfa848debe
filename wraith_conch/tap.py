"""
C{twistd wraith}: command-line options and the service tree, nothing else.

The flag names are fixed (outside tests use them); see docs/configuration.md.
"""

from __future__ import annotations

import secrets

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from wraith_conch.approval.client import ApprovalClient
from wraith_conch.approval.hub import make_hub_service
from wraith_conch.approval.live_feed import LiveFeed, LiveFeedClient
from wraith_conch.audit.trail import AuditingApprover, AuditTrail
from wraith_conch.config import DEFAULT_LISTEN, Config, ConfigError, build_config
from wraith_conch.gateway.assembly import build_gateway_factory
from wraith_conch.gateway.auth import warn_about_authorized_keys
from wraith_conch.gateway.listeners import build_listener
from wraith_conch.gateway.server import GracefulShutdown
from wraith_conch.logs import json_observer_for_twistd
from wraith_conch.targets import describe_targets
from wraith_conch.upstream.known_hosts import sha256_fingerprint


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "An SSH gateway: operators connect with any SSH client, every command"
        " waits for an approval service, and approved ones are relayed to the target."
    )

    optFlags = [
        [
            "stealth",
            None,
            "On TLS listeners, answer non-SSH clients with nginx's 404 page (ADR-017).",
        ],
    ]

    optParameters = [
        [
            "host-key",
            None,
            "wraith_host_key",
            "Gateway host key file; ed25519 generated (0600) if missing.",
        ],
        [
            "target",
            None,
            None,
            "Target SSH server as HOST:PORT ([::1]:22 for IPv6); with --targets, optional.",
        ],
        [
            "target-known-hosts",
            None,
            "~/.ssh/known_hosts",
            "known_hosts file the target's host key must match.",
        ],
        [
            "targets",
            None,
            None,
            "Named targets (TOML), reached as ssh -l USER@NAME; each pins its host key.",
        ],
        [
            "target-identity",
            None,
            None,
            "Private key the gateway logs in to the target with (--auth keys).",
        ],
        ["authorized-keys", None, None, "Operators' public keys, OpenSSH authorized_keys format."],
        [
            "trusted-user-ca-keys",
            None,
            None,
            "CA public keys (one a line) whose OpenSSH user certificates may log in.",
        ],
        [
            "revoked-keys",
            None,
            None,
            "Refused keys and certificates: a public key list or a KRL (ssh-keygen -k).",
        ],
        [
            "auth",
            None,
            "keys",
            "keys (public keys only) or passthrough (target checks the password).",
        ],
        ["log-format", None, "text", "Log format: text or json (one object per line)."],
        [
            "approval",
            None,
            "embedded",
            "ws:// or wss:// URL of an approval service, or embedded (the built-in hub).",
        ],
        [
            "hub-listen",
            None,
            "tcp:8022:interface=127.0.0.1",
            "Endpoint of the embedded hub's console and WebSockets.",
        ],
        [
            "reviewers",
            None,
            None,
            "Reviewer accounts (TOML); default: one admin with a login URL printed once.",
        ],
        [
            "policy",
            None,
            None,
            "Policy rules (TOML) deciding approve, deny or review; default: built-in.",
        ],
        [
            "audit-log",
            None,
            None,
            "Append every request and decision as JSON lines (fsynced, 0600).",
        ],
        [
            "webhook",
            None,
            None,
            "http(s) URL the embedded hub POSTs each request awaiting review to (JSON).",
        ],
        [
            "live-feed",
            None,
            None,
            "ws(s):// URL of the --approval hub's /live-feed, for reviewers to watch sessions.",
        ],
        ["record-dir", None, None, "Directory for asciicast v2 recordings of PTY sessions (0600)."],
        ["approval-token", None, None, "Bearer token sent to the approval service."],
        [
            "approval-token-file",
            None,
            None,
            "File holding the bearer token for the approval service.",
        ],
        ["approval-timeout", None, "300", "Seconds before an unanswered request is denied."],
        [
            "on-mismatch",
            None,
            "review",
            "review or deny shell lines whose screen and keystrokes differ.",
        ],
        ["gateway-name", None, None, "Name sent to the approval service (default: host name)."],
        [
            "proxy",
            None,
            None,
            "Outbound proxy for forwards: socks5://H:P, http://H:P, tor://H:P or tor.",
        ],
        ["forward-policy", None, None, "TOML rules allowing/denying forward destinations."],
        ["forwarding", None, "on", "on or off: allow direct-tcpip forwarding (ssh -L, ssh -D)."],
        [
            "max-connections-per-ip",
            None,
            "0",
            "Connections at once from one client IP address (0 = unlimited).",
        ],
        ["max-auth-attempts", None, "6", "Failed authentications per connection."],
        [
            "login-grace-time",
            None,
            "60",
            "Seconds a connection may take to authenticate before it is closed.",
        ],
        [
            "max-startups",
            None,
            "100",
            "Unauthenticated connections at once (0 = unlimited); more are refused.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.config: Config | None = None

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (repeatable; default tcp:2222:interface=127.0.0.1)."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        try:
            self.config = build_config(dict(self), reactor)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        parent = getattr(self, "parent", None)
        if self.config.log_format == "json" and parent is not None and not parent.get("logger"):
            # twistd resolves --logger by dotted name after we return, so the
            # JSON observer is installed here and twistd's text one silenced.
            globalLogPublisher.addObserver(
                json_observer_for_twistd(parent.get("logfile"), bool(parent.get("nodaemon")))
            )
            parent["logger"] = "wraith_conch.logs.silent_observer_factory"


Options.opt_listen.__doc__ = f"Endpoint to listen on (repeatable; default {DEFAULT_LISTEN})."


class _Closing(service.Service):
    """Closes the audit trail when the gateway stops."""

    def __init__(self, trail) -> None:
        self._trail = trail

    def stopService(self):
        super().stopService()
        self._trail.close()


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config = options.config
    top = service.MultiService()
    log = Logger()
    trail = AuditTrail(config.audit_log, reactor) if config.audit_log else None
    if trail is not None:
        # First in, last out: services stop in reverse order, and the
        # denials of pending requests at shutdown must still be recorded.
        _Closing(trail).setServiceParent(top)
    if config.approval == "embedded":
        # The hub in this process; the gateway still speaks PROTOCOL.md to it
        # over loopback, exactly as to an outside service.  A given token
        # lets other gateways join this hub; a random one keeps it private.
        token = config.approval_token or secrets.token_urlsafe(32)
        hub, _state, url = make_hub_service(
            reactor, config.hub_listen, config.reviewers, token, webhook=config.webhook
        )
        hub.setServiceParent(top)
        # The live view, in-process: the same feed a standalone hub gets.
        session_watch = hub.local_feed(config.gateway_name)
    else:
        url, token = config.approval, config.approval_token
        session_watch = None
        if config.live_feed is not None:
            session_watch = LiveFeed(config.gateway_name)
            LiveFeedClient(reactor, config.live_feed, session_watch, token=token).setServiceParent(
                top
            )
    client = ApprovalClient(
        reactor,
        url,
        token=token,
        gateway_name=config.gateway_name,
        timeout=config.approval_timeout,
    )
    client.setServiceParent(top)
    approver = AuditingApprover(client, trail, config.policy)
    if config.authorized_keys is not None:
        warn_about_authorized_keys(config.authorized_keys)
    factory = build_gateway_factory(reactor, config, approver, session_watch=session_watch)
    # Operators are told and drained while the approval client denies what
    # is pending (services stop together).
    GracefulShutdown(reactor, factory).setServiceParent(top)
    for description in config.listen:
        endpoint, listener_factory = build_listener(
            reactor, description, factory, stealth=config.stealth
        )
        listener = StreamServerEndpointService(endpoint, listener_factory)
        # A port that cannot be bound stops twistd with the error, instead of
        # leaving a gateway that listens nowhere.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    log.info(
        "wraith gateway for {target} on {listen}, host key {host_key_fingerprint}",
        target=describe_targets(config),
        listen=", ".join(config.listen),
        host_key_fingerprint=sha256_fingerprint(config.host_key),
    )
    return top
