"""Wires the gateway's parts together for one configuration."""

from __future__ import annotations

from twisted.cred.portal import Portal

from wraith_conch.approval.interfaces import IApprover
from wraith_conch.gateway.auth import AuthorizedKeysChecker, PassthroughChecker
from wraith_conch.gateway.server import GatewayFactory
from wraith_conch.gateway.session import GatewayRealm, SessionSettings
from wraith_conch.upstream.client import UpstreamLogin, connect_upstream


def build_gateway_factory(reactor, config, approver: IApprover) -> GatewayFactory:
    """
    The operator-facing SSH factory for a L{wraith_conch.config.Config},
    with every command going to C{approver}.
    """

    def connect(login: UpstreamLogin):
        return connect_upstream(reactor, config.target, config.target_known_hosts, login)

    settings = SessionSettings(
        reactor=reactor,
        approver=approver,
        target=config.target,
        approval_timeout=config.approval_timeout,
        on_mismatch=config.on_mismatch,
    )
    realm = GatewayRealm(settings, connect, identity_key=config.target_identity)
    if config.auth == "passthrough":
        checker = PassthroughChecker(connect)
    else:
        checker = AuthorizedKeysChecker(config.authorized_keys)
    return GatewayFactory(reactor, Portal(realm, [checker]), config.host_key)
