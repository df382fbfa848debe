"""
A name resolver for tests that never leaves the machine.

The system resolver here sends queries to a DNS server off loopback; tests
must not.  L{install_local_resolver} swaps the reactor's resolver for one
that knows IP literals and C{localhost}, and answers "no addresses" for
every other name, until the test ends.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from zope.interface import implementer

_KNOWN = {"localhost": ("127.0.0.1", "::1")}


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class LocalResolver:
    def resolveHostName(
        self,
        resolutionReceiver,
        hostName,
        portNumber=0,
        addressTypes=None,
        transportSemantics="TCP",
    ):
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        name = hostName.strip("[]").lower()
        try:
            candidates = (str(ipaddress.ip_address(name)),)
        except ValueError:
            candidates = _KNOWN.get(name, ())
        for text in candidates:
            kind = IPv6Address if ":" in text else IPv4Address
            if addressTypes is None or kind in addressTypes:
                resolutionReceiver.addressResolved(kind("TCP", text, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


def install_local_resolver(testcase, reactor=None) -> None:
    """Use L{LocalResolver} until C{testcase} ends."""
    if reactor is None:
        from twisted.internet import reactor
    previous = reactor.installNameResolver(LocalResolver())
    testcase.addCleanup(reactor.installNameResolver, previous)
