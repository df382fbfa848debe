"""Wires the gateway's parts together for one configuration."""

from __future__ import annotations

import socket

from twisted.cred.portal import Portal

from wraith_conch.approval.interfaces import IApprover
from wraith_conch.gateway.auth import (
    AuthorizedKeysChecker,
    PassthroughChecker,
    authorized_keys_source,
)
from wraith_conch.gateway.forwarding import Forwarder
from wraith_conch.gateway.limits import AdmissionLimits
from wraith_conch.gateway.server import GatewayFactory
from wraith_conch.gateway.session import GatewayRealm, SessionSettings
from wraith_conch.outbound import OutboundConnector, ProxyKind
from wraith_conch.targets import Route, TargetRouter
from wraith_conch.upstream.client import UpstreamLogin, connect_upstream


def build_forwarder(reactor, config) -> Forwarder:
    """
    Forwarding with the configured proxy and policy, the policy always
    protecting the sshd of every target (--target and each of --targets)
    and the gateway's own ports: a tunnel to any of them would bypass
    approval.
    """
    targets = []
    for route in router_for(config).routes():
        host, port = route.address.host, route.address.port
        targets.append((host, port))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        targets += [(info[4][0], port) for info in infos]
    policy = config.forward_policy.protecting(targets=targets, listen=config.listen_addresses())
    connector = OutboundConnector(reactor, config.proxy)
    return Forwarder(connector, policy, proxied=config.proxy.kind is not ProxyKind.DIRECT)


def router_for(config) -> TargetRouter:
    """Where each login goes: the --target and the --targets of C{config}."""
    return TargetRouter.build(config.target, config.target_known_hosts, config.targets)


def build_gateway_factory(
    reactor, config, approver: IApprover, session_watch=None
) -> GatewayFactory:
    """
    The operator-facing SSH factory for a L{wraith_conch.config.Config},
    with every command going to C{approver}; C{session_watch} sees all target
    output (L{SessionSettings.session_watch}).
    """

    router = router_for(config)

    def connect(route: Route, login: UpstreamLogin):
        # Each target with its own pinned host keys.
        return connect_upstream(reactor, route.address, route.known_hosts, login)

    settings = SessionSettings(
        reactor=reactor,
        approver=approver,
        approval_timeout=config.approval_timeout,
        on_mismatch=config.on_mismatch,
        forwarder=build_forwarder(reactor, config) if config.forwarding else None,
        record_dir=config.record_dir,
        session_watch=session_watch,
    )
    realm = GatewayRealm(settings, connect, router, identity_key=config.target_identity)
    if config.auth == "passthrough":
        checker = PassthroughChecker(connect, router)
    else:
        checker = AuthorizedKeysChecker(
            authorized_keys_source(
                config.authorized_keys_path or "",
                config.authorized_keys,
                config.authorized_keys_file,
            ),
            trusted_ca_keys=(
                config.trusted_user_ca_keys_file.current
                if config.trusted_user_ca_keys_file
                else config.trusted_user_ca_keys
            ),
            revoked=config.revoked_keys,
        )
    return GatewayFactory(
        reactor,
        Portal(realm, [checker]),
        config.host_key,
        max_auth_attempts=config.max_auth_attempts,
        limits=AdmissionLimits(
            max_connections_per_ip=config.max_connections_per_ip,
            max_startups=config.max_startups,
        ),
        login_grace_time=config.login_grace_time,
    )
