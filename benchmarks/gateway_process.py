"""
The gateway under test, in a process of its own: C{python -m benchmarks.gateway_process}.

It runs, on one reactor, the auto-approving WebSocket service
(L{benchmarks.service}), the gateway's real L{ApprovalClient} connected to
it, and the gateway's SSH server (L{build_gateway_factory}, as C{twistd
wraith} builds it) in front of the target sshd, with L{benchmarks.probes}
installed.  The SSH client that drives it runs in the parent process, so the
client's threads never compete with the gateway's reactor for the GIL.

It speaks JSON lines: the first line on stdin is its configuration; it
answers with C{{"ready": true, "port": N, "host_key": "..."}}, then handles
C{{"cmd": "phase", "name": ...}}, C{{"cmd": "dump"}} and C{{"cmd": "stop"}}, one
answer line each.  It stops by itself when stdin closes or after
C{max_seconds}.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.conch.ssh import transport as ssh_transport
from twisted.internet import defer, stdio
from twisted.logger import globalLogBeginner
from twisted.protocols.basic import LineReceiver

from benchmarks.probes import Probes
from benchmarks.service import AutoApproveService
from wraith_conch.approval.client import ApprovalClient
from wraith_conch.config import build_config
from wraith_conch.gateway.assembly import build_gateway_factory
from wraith_conch.logs import json_observer

OPEN_TIMEOUT = 10.0


def _discard(event: dict) -> None:
    return None


def start_logging(log_format: str, log_path: str | None) -> None:
    """As C{twistd --log-format json} would, or drop every event (C{none})."""
    if log_format == "json" and log_path:
        out = open(log_path, "a", encoding="utf-8")  # open for the process's life
        observers = [json_observer(out)]
    else:
        observers = [_discard]
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True, redirectStandardIO=False)


def set_nodelay_on_ssh_connections(legs: str) -> None:
    """
    What-if: TCP_NODELAY on the operator-side (C{SSHServerTransport}) and/or
    upstream (C{SSHClientTransport}) sockets, as OpenSSH sets it on both ends
    of an interactive session.
    """
    original = ssh_transport.SSHTransportBase.connectionMade
    kinds: tuple[type, ...] = {
        "operator": (ssh_transport.SSHServerTransport,),
        "upstream": (ssh_transport.SSHClientTransport,),
        "both": (ssh_transport.SSHServerTransport, ssh_transport.SSHClientTransport),
    }[legs]

    def connectionMade(self):
        if isinstance(self, kinds):
            self.transport.setTcpNoDelay(True)
        return original(self)

    ssh_transport.SSHTransportBase.connectionMade = connectionMade


class Controller(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.probes = Probes()
        self.service: AutoApproveService | None = None
        self.approver: ApprovalClient | None = None
        self.port = None
        self.configured = False
        self.stopping: defer.Deferred | None = None
        self.exit_code = 0

    def send(self, message: dict) -> None:
        self.transport.write(json.dumps(message).encode("utf-8") + b"\n")

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.send({"error": "not JSON"})
            return
        if not self.configured:
            self.configured = True
            d = defer.ensureDeferred(self.start(message))
            d.addErrback(self._start_failed)
            return
        command = message.get("cmd")
        if command == "phase":
            self.probes.phase = str(message.get("name"))
            self.send({"ok": True, "phase": self.probes.phase})
        elif command == "dump":
            dumped = self.probes.dump()
            dumped["decided_by_service"] = self.service.decided if self.service else 0
            self.send(dumped)
        elif command == "stop":
            self.stop()
        else:
            self.send({"error": f"unknown command {command!r}"})

    async def start(self, config: dict) -> None:
        reactor = self.reactor
        start_logging(config.get("log_format", "json"), config.get("log_path"))
        if config.get("nodelay", "none") != "none":
            set_nodelay_on_ssh_connections(config["nodelay"])
        self.reactor.callLater(float(config.get("max_seconds", 900)), self._overdue)
        self.probes.install()
        self.service = AutoApproveService(reactor)
        url = self.service.listen()
        self.approver = ApprovalClient(reactor, url, gateway_name="benchmark", timeout=30)
        self.approver.startService()
        opened = self.approver.when_open()
        timer = reactor.callLater(OPEN_TIMEOUT, opened.cancel)
        await opened
        if timer.active():
            timer.cancel()
        options = {
            "host-key": config["host_key_path"],
            "target": config["target"],
            "target-known-hosts": config["target_known_hosts"],
            "target-identity": config["target_identity"],
            "authorized-keys": config["authorized_keys"],
            "approval": url,
            "approval-timeout": "30",
        }
        gateway_config = build_config(options, reactor)
        factory = build_gateway_factory(reactor, gateway_config, self.approver)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        public = gateway_config.host_key.public().toString("openssh").decode("ascii")
        self.send({"ready": True, "port": self.port.getHost().port, "host_key": public})

    def _start_failed(self, failure) -> None:
        self.send({"error": f"gateway did not start: {failure.getErrorMessage()}"})
        self.exit_code = 1
        self.stop(answer=False)

    def _overdue(self) -> None:
        self.exit_code = 3
        self.stop(answer=False)

    def stop(self, answer: bool = True) -> None:
        if self.stopping is not None:
            return
        self.probes.uninstall()
        steps = []
        if self.port is not None:
            steps.append(defer.maybeDeferred(self.port.stopListening))
        if self.approver is not None and self.approver.running:
            steps.append(self.approver.stopService())
        self.stopping = defer.DeferredList(steps, consumeErrors=True)

        def stopped(_):
            if self.service is not None:
                return self.service.stop()
            return None

        def done(_):
            if answer:
                self.send({"stopped": True})
            self.reactor.callLater(0, self.reactor.stop)

        self.stopping.addCallback(stopped)
        self.stopping.addBoth(done)

    def connectionLost(self, reason) -> None:
        # stdin closed: the parent is gone or done.
        if self.stopping is None:
            self.stop(answer=False)


def main() -> int:
    from twisted.internet import reactor

    controller = Controller(reactor)
    stdio.StandardIO(controller, reactor=reactor)
    profile_path = os.environ.get("WRAITH_BENCH_PROFILE")
    if profile_path:
        # Diagnostics only: cProfile slows every call, so the figures of such a run are off.
        import cProfile

        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, profile_path)
    else:
        reactor.run()
    sys.stdout.flush()
    return controller.exit_code


if __name__ == "__main__":
    sys.exit(main())
