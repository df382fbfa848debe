"""
Tor for the C{tor} proxy mode: attach to a running Tor through its control
port, or launch one, with txtorcon; wait until it has bootstrapped; find its
SOCKS port.  Streams then go through L{Socks5Endpoint} to that port.

A Tor that cannot bootstrap (no network) ends in L{TorUnavailable} with a
one-line reason, after at most C{bootstrap_timeout} seconds.
"""

from __future__ import annotations

import math
import re
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from wraith_conch.outbound._destination import parse_ip
from wraith_conch.outbound.errors import TorUnavailable

__all__ = ["DEFAULT_BOOTSTRAP_TIMEOUT", "TorProvider", "parse_bootstrap_phase", "socks_listeners"]

DEFAULT_BOOTSTRAP_TIMEOUT = 120.0
DEFAULT_POLL_INTERVAL = 1.0

_PROGRESS = re.compile(r"\bPROGRESS=(\d+)")
_SUMMARY = re.compile(r'\bSUMMARY="((?:[^"\\]|\\.)*)"')


def parse_bootstrap_phase(value: str) -> tuple[int, str]:
    """C{(percent, summary)} from Tor's C{status/bootstrap-phase}; percent -1 if unknown."""
    progress = _PROGRESS.search(value)
    summary = _SUMMARY.search(value)
    return (
        int(progress.group(1)) if progress else -1,
        summary.group(1).replace('\\"', '"') if summary else "",
    )


def socks_listeners(reactor: Any, value: str) -> list[IStreamClientEndpoint]:
    """
    Endpoints for Tor's C{net/listeners/socks} answer (quoted, space-separated
    C{"127.0.0.1:9050"}, C{"[::1]:9050"}, C{"unix:/run/tor/socks"}).
    """
    endpoints: list[IStreamClientEndpoint] = []
    for item in re.findall(r'"([^"]*)"|(\S+)', value):
        listener = item[0] or item[1]
        if listener.startswith("unix:"):
            endpoints.append(UNIXClientEndpoint(reactor, listener[5:]))
            continue
        host, _, port_text = listener.rpartition(":")
        if not port_text.isdigit() or not host:
            continue
        port = int(port_text)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        address = parse_ip(host)
        if address is None:
            continue
        if address.version == 6:
            endpoints.append(TCP6ClientEndpoint(reactor, str(address), port))
        else:
            endpoints.append(TCP4ClientEndpoint(reactor, str(address), port))
    return endpoints


class TorProvider:
    """
    One Tor for the gateway, started on first use and shared by every stream.

    L{socks_endpoint} attaches to a running Tor (C{control_endpoint}, or
    txtorcon's defaults: C{/var/run/tor/control}, 127.0.0.1:9051 and :9151)
    unless C{attach} is false; if none answers and C{launch} is true, it
    launches C{tor} (C{tor_binary} or the one on C{PATH}) with
    C{data_directory}.  Either way Tor must report 100% bootstrapped within
    C{bootstrap_timeout} seconds.  A failed start is not remembered: the next
    call tries again.  L{stop} closes the control connection (and stops a
    launched Tor).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        control_endpoint: IStreamClientEndpoint | None = None,
        attach: bool = True,
        launch: bool = True,
        bootstrap_timeout: float = DEFAULT_BOOTSTRAP_TIMEOUT,
        data_directory: str | None = None,
        tor_binary: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not (attach or launch):
            raise ValueError("a TorProvider must attach, launch, or both")
        if bootstrap_timeout <= 0 or poll_interval <= 0:
            raise ValueError("bootstrap_timeout and poll_interval must be positive")
        self._reactor = reactor
        self._control_endpoint = control_endpoint
        self._attach = attach
        self._launch = launch
        self._bootstrap_timeout = bootstrap_timeout
        self._data_directory = data_directory
        self._tor_binary = tor_binary
        self._poll_interval = poll_interval
        self._tor: Any = None
        self._launched = False
        self._endpoint: IStreamClientEndpoint | None = None
        self._starting: list[defer.Deferred[IStreamClientEndpoint]] | None = None

    @property
    def launched(self) -> bool:
        """Whether the Tor in use was launched here (rather than attached to)."""
        return self._launched

    def socks_endpoint(self) -> defer.Deferred[IStreamClientEndpoint]:
        """The endpoint of the bootstrapped Tor's SOCKS port; fails with L{TorUnavailable}."""
        if self._endpoint is not None:
            return defer.succeed(self._endpoint)
        waiter: defer.Deferred[IStreamClientEndpoint] = defer.Deferred()
        if self._starting is None:
            self._starting = [waiter]
            defer.Deferred.fromCoroutine(self._start()).addBoth(self._started)
        else:
            self._starting.append(waiter)
        return waiter

    def _started(self, result: Any) -> None:
        waiters, self._starting = self._starting or [], None
        if not isinstance(result, Failure):
            self._endpoint = result
        elif not result.check(TorUnavailable):
            self.log.failure("unexpected error while starting Tor", result)
            result = Failure(TorUnavailable())
        for waiter in waiters:
            # A waiter may have been cancelled (its connection timed out).
            if not waiter.called:
                waiter.callback(result)

    async def _start(self) -> IStreamClientEndpoint:
        import txtorcon

        tor = None
        if self._attach:
            try:
                tor = await txtorcon.connect(self._reactor, self._control_endpoint)
            except Exception as e:
                if not self._launch:
                    raise TorUnavailable("cannot reach Tor's control port") from None
                self.log.info(
                    "no running Tor answered ({error}); launching one", error=type(e).__name__
                )
        if tor is None:
            tor = await self._launch_tor(txtorcon)
        try:
            if not self._launched:
                await self._wait_bootstrapped(tor)
            info = await tor.protocol.get_info("net/listeners/socks")
            endpoints = socks_listeners(self._reactor, str(info.get("net/listeners/socks", "")))
            if not endpoints:
                raise TorUnavailable("Tor has no SOCKS port")
        except BaseException:
            self._tor = tor
            await self._stop()
            raise
        self._tor = tor
        self.log.info(
            "Tor is ready ({how})",
            how="launched" if self._launched else "attached to a running Tor",
        )
        return endpoints[0]

    async def _launch_tor(self, txtorcon: Any) -> Any:
        self.log.info(
            "launching Tor; waiting up to {timeout} s for it to bootstrap",
            timeout=self._bootstrap_timeout,
        )
        try:
            tor = await txtorcon.launch(
                self._reactor,
                data_directory=self._data_directory,
                tor_binary=self._tor_binary,
                timeout=self._bootstrap_timeout,
                progress_updates=self._progress,
            )
        except txtorcon.TorNotFound:
            raise TorUnavailable("no tor program found to launch") from None
        except Exception as e:
            if "timeout" in str(e).lower():
                raise TorUnavailable(
                    f"Tor did not bootstrap within {self._bootstrap_timeout:g} s"
                ) from None
            raise TorUnavailable("Tor could not be launched") from None
        self._launched = True
        return tor

    def _progress(self, percent: int, tag: str, summary: str) -> None:
        self.log.debug(
            "Tor bootstrap {percent}%: {summary}", percent=percent, tag=tag, summary=summary
        )

    async def _wait_bootstrapped(self, tor: Any) -> None:
        deadline = self._reactor.seconds() + self._bootstrap_timeout
        percent, summary = -1, ""
        for _ in range(math.ceil(self._bootstrap_timeout / self._poll_interval) + 1):
            info = await tor.protocol.get_info("status/bootstrap-phase")
            percent, summary = parse_bootstrap_phase(str(info.get("status/bootstrap-phase", "")))
            if percent >= 100:
                return
            if self._reactor.seconds() >= deadline:
                break
            await task.deferLater(self._reactor, self._poll_interval)
        state = f"at {percent}%: {summary}" if percent >= 0 else "state unknown"
        raise TorUnavailable(
            f"Tor has not bootstrapped within {self._bootstrap_timeout:g} s ({state})"
        )

    def stop(self) -> defer.Deferred[None]:
        """Close the control connection; stop Tor if it was launched here."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        tor, self._tor, self._endpoint = self._tor, None, None
        if tor is None:
            return
        launched, self._launched = self._launched, False
        try:
            if launched:
                await tor.quit()
            else:
                protocol = tor.protocol
                disconnected = protocol.when_disconnected()
                disconnected.addErrback(lambda _: None)
                if protocol.transport is not None:
                    protocol.transport.loseConnection()
                await disconnected
        except Exception:
            self.log.failure("while stopping Tor")
