"""
An in-process gateway in front of a real sshd, for integration tests.

The gateway runs on the test's reactor; operators are real OpenSSH client
processes spawned without blocking it.
"""

from __future__ import annotations

import os
import subprocess

from twisted.internet import reactor

from tests.polling import wait_until
from tests.sshd import TargetSSHD
from wraith_conch.approval.client import ApprovalClient
from wraith_conch.config import build_config
from wraith_conch.gateway.assembly import build_gateway_factory
from wraith_conch.testing import ScriptedApprover


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: str, kind: str = "ed25519") -> str:
    """Make a key pair with the real ssh-keygen; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    with open(path + ".pub") as f:
        return f.read().strip()


def minimal_options(base: str, **extra: str) -> dict[str, str]:
    """
    The least C{twistd wraith} options that make a valid config (files in
    C{base}, nothing started), plus C{extra}: for tests of one flag's checks.
    """
    os.makedirs(base, exist_ok=True)
    identity = os.path.join(base, "id")
    keygen(identity)
    known = os.path.join(base, "known_hosts")
    open(known, "w").close()
    authorized = os.path.join(base, "authorized_keys")
    with open(authorized, "w") as f:
        f.write(keygen(os.path.join(base, "op")) + "\n")
    return {
        "authorized-keys": authorized,
        "host-key": os.path.join(base, "hk"),
        "target": "127.0.0.1:22",
        "target-known-hosts": known,
        "target-identity": identity,
        **extra,
    }


class Gateway:
    """A gateway listening on 127.0.0.1 in this process, and an operator key for it."""

    def __init__(
        self, testcase, sshd: TargetSSHD, approver=None, session_watch=None, **overrides
    ) -> None:
        base = testcase.mktemp()
        os.makedirs(base)
        self.base = base
        self.sshd = sshd
        self.operator_key = os.path.join(base, "operator_key")
        operator_pub = keygen(self.operator_key)
        self.authorized_keys = os.path.join(base, "authorized_keys")
        with open(self.authorized_keys, "w") as f:
            f.write(overrides.pop("authorized_keys_text", operator_pub + "\n"))
        options = {
            "host-key": os.path.join(base, "gateway_host_key"),
            "target": f"{sshd.address}:{sshd.port}"
            if ":" not in sshd.address
            else f"[{sshd.address}]:{sshd.port}",
            "target-known-hosts": sshd.known_hosts_path,
            "target-identity": sshd.client_key_path,
            "authorized-keys": self.authorized_keys,
            "approval": "ws://127.0.0.1:9/unused-by-in-process-tests",
            "approval-timeout": "30",
        }
        # Listen on a port chosen up front so the config (and the forward
        # policy protecting the gateway's own ports) knows it.
        port_number = free_port()
        options["listen"] = [f"tcp:{port_number}:interface=127.0.0.1"]
        options.update(overrides)
        self.config = build_config(options, reactor)
        self.approver = approver if approver is not None else ScriptedApprover()
        factory = build_gateway_factory(
            reactor, self.config, self.approver, session_watch=session_watch
        )
        self.port = reactor.listenTCP(port_number, factory, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.port_number = self.port.getHost().port
        self.known_hosts = os.path.join(base, "gateway_known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write(
                f"[127.0.0.1]:{self.port_number} {self.config.host_key.public().toString('openssh').decode()}\n"
            )

    def all_closed(self, timeout: float = 10.0):
        """
        Fires once the gateway has seen every operator connection close.

        A client process exits as soon as it has its output; the gateway
        closes the session (recording, audit, log lines) only when it notices
        the TCP connection go, a moment later: wait for that before asserting
        on what the close writes.
        """
        return wait_until(
            lambda: not self.port.factory.live, "the gateway to see every connection close", timeout
        )

    def paramiko_client(self, user: str | None = None):
        """A connected paramiko client (blocking: use from a thread)."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            port=self.port_number,
            username=user or self.sshd.user,
            key_filename=self.operator_key,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        return client

    def ssh_argv(self, *command: str, user: str | None = None, extra=()) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port_number),
            "-i",
            self.operator_key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            *extra,
            f"{user or self.sshd.user}@127.0.0.1",
            *command,
        ]


def home_of(sshd: TargetSSHD) -> str:
    """The login user's home directory on the target (where relative paths land)."""
    import pwd

    return pwd.getpwnam(sshd.user).pw_dir


def approval_client_gateway(
    testcase, sshd: TargetSSHD, url: str, *, token: str | None = None, **overrides
) -> tuple[Gateway, ApprovalClient]:
    """
    A L{Gateway} whose approver is the real L{ApprovalClient} talking to the
    approval service at C{url}, as C{twistd wraith} builds it: its timeout
    is the gateway's C{approval-timeout}.  The client is started now and
    stopped by the test's cleanups (after the gateway stops listening).
    """
    timeout = float(overrides.get("approval-timeout", "30"))
    client = ApprovalClient(reactor, url, token=token, gateway_name="gw-test", timeout=timeout)
    client.startService()
    testcase.addCleanup(client.stopService)
    gateway = Gateway(testcase, sshd, client, approval=url, **overrides)
    return gateway, client
