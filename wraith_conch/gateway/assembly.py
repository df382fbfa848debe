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
from wraith_conch.gateway.server import GatewayFactory
from wraith_conch.gateway.session import GatewayRealm, SessionSettings
from wraith_conch.outbound import OutboundConnector, ProxyKind
from wraith_conch.upstream.client import UpstreamLogin, connect_upstream


def build_forwarder(reactor, config) -> Forwarder:
    """
    Forwarding with the configured proxy and policy, the policy always
    protecting the target's sshd and the gateway's own ports: a tunnel to
    either would bypass approval.
    """
    targets = [(config.target.host, config.target.port)]
    try:
        infos = socket.getaddrinfo(config.target.host, config.target.port, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    targets += [(info[4][0], config.target.port) for info in infos]
    policy = config.forward_policy.protecting(targets=targets, listen=config.listen_addresses())
    connector = OutboundConnector(reactor, config.proxy)
    return Forwarder(connector, policy, proxied=config.proxy.kind is not ProxyKind.DIRECT)


def build_gateway_factory(
    reactor, config, approver: IApprover, session_watch=None
) -> GatewayFactory:
    """
    The operator-facing SSH factory for a L{wraith_conch.config.Config},
    with every command going to C{approver}; C{session_watch} sees all target
    output (L{SessionSettings.session_watch}).
    """

    def connect(login: UpstreamLogin):
        return connect_upstream(reactor, config.target, config.target_known_hosts, login)

    settings = SessionSettings(
        reactor=reactor,
        approver=approver,
        target=config.target,
        approval_timeout=config.approval_timeout,
        on_mismatch=config.on_mismatch,
        forwarder=build_forwarder(reactor, config) if config.forwarding else None,
        record_dir=config.record_dir,
        session_watch=session_watch,
    )
    realm = GatewayRealm(settings, connect, identity_key=config.target_identity)
    if config.auth == "passthrough":
        checker = PassthroughChecker(connect)
    else:
        checker = AuthorizedKeysChecker(
            authorized_keys_source(config.authorized_keys_path or "", config.authorized_keys)
        )
    return GatewayFactory(reactor, Portal(realm, [checker]), config.host_key)
