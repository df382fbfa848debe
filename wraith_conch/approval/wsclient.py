"""
What the gateway's two WebSocket clients share: the approval client
(L{wraith_conch.approval.client}) and the live feed
(L{wraith_conch.approval.live_feed}) both keep one reconnecting autobahn
connection whose protocol reports to the service that owns it.
"""

from __future__ import annotations

from collections.abc import Callable

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.types import ConnectingRequest
from twisted.application.internet import ClientService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS


def send_text(protocol, text: str) -> bool:
    """
    One text frame on an autobahn C{protocol}; C{False}, never an exception,
    when the connection is not open (any more).
    """
    if protocol.state != protocol.STATE_OPEN:
        return False
    try:
        protocol.sendMessage(text.encode("utf-8"), isBinary=False)
    except Disconnected:
        return False
    return True


def connecting_request(
    *, host_header: str, port: int, resource: str, token: str | None, subprotocol: str
) -> ConnectingRequest:
    """
    The opening handshake, built by the owner rather than from the factory's
    attributes: the token then lives in one place, and an IPv6 host goes
    into the Host header in brackets (autobahn leaves them off).
    """
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return ConnectingRequest(
        host=host_header,
        port=port,
        resource=resource,
        headers=headers,
        useragent="wraith-conch",
        protocols=[subprotocol],
    )


class _OwnedClientFactory(WebSocketClientFactory):
    """Gives each protocol it builds C{client}: the service that owns the connection."""

    def __init__(self, owner: object, protocol: type, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = protocol
        self.client = owner

    def buildProtocol(self, addr):
        session = super().buildProtocol(addr)
        session.client = self.client
        return session


def reconnecting_connection(
    reactor,
    *,
    owner: object,
    protocol: type,
    url: str,
    subprotocol: str,
    max_message_bytes: int,
    host: str,
    port: int,
    secure: bool,
    tls_options=None,
    retry_policy: Callable[[int], float],
) -> ClientService:
    """
    A L{ClientService} that keeps one WebSocket connection to C{url} open
    (C{protocol} instances, each with C{client = owner}), retrying as
    C{retry_policy} says; the same handshake, ping and size limits for both
    of the gateway's clients.
    """
    factory = _OwnedClientFactory(
        owner, protocol, url, protocols=[subprotocol], useragent="wraith-conch", reactor=reactor
    )
    factory.setProtocolOptions(
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        autoPingInterval=20,
        autoPingTimeout=10,
        maxFramePayloadSize=max_message_bytes,
        maxMessagePayloadSize=max_message_bytes,
    )
    endpoint = HostnameEndpoint(reactor, host, port)
    if secure:
        endpoint = wrapClientTLS(tls_options or optionsForClientTLS(host), endpoint)
    return ClientService(endpoint, factory, retryPolicy=retry_policy, clock=reactor)
