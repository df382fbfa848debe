"""
Servers for the outbound tests: real proxies as subprocesses, and small
in-process Twisted servers (targets, and fake proxies that misbehave).

Real programs, each on 127.0.0.1 with a free port and a generated config in a
directory of its own, started and stopped by the test that uses them:

  - L{MicroSocks}: C{microsocks}, a SOCKS5 server (Debian C{microsocks});
  - L{TinyProxy}: C{tinyproxy} in the foreground (Debian C{tinyproxy});
  - L{OfflineTor}: C{tor} whose only bridge is a closed local port: a
    control port and a SOCKS port, never bootstrapped, and no traffic beyond
    127.0.0.1 (Debian C{tor}).

Use the C{start_*} functions from a test: they start the server (or skip the
test when the program is not installed) and register its stop as a cleanup.

In-process (the reactor's), registered the same way by L{listen}:

  - L{Echo} and L{SpeaksFirst} (sends L{BANNER} on connect, then echoes);
  - L{FakeHTTPProxy}: reads a CONNECT request, answers with scripted bytes in
    one write, then echoes (or closes, or stays silent);
  - L{FakeSocksProxy}: the same for SOCKS5.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest
from typing import Any, Protocol

from twisted.internet import protocol

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02
BIND_ATTEMPTS = 3

#: What L{SpeaksFirst} sends as soon as a client connects.
BANNER = b"SSH-2.0-WraithSpeaksFirst\r\n"


class _CleanupRegistry(Protocol):
    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None: ...

    def mktemp(self) -> str: ...


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free on C{address} a moment ago."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return port


def refused_port(address: str = "127.0.0.1") -> int:
    """A port on which nothing listens (connections are refused)."""
    return free_port(address)


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


class ExternalServer:
    """A server program run in the foreground with a generated config; subclasses say which."""

    #: The program, looked up on PATH (and in /usr/sbin, /usr/bin).
    program = ""
    #: The Debian package that provides it (for the skip message).
    package = ""

    def __init__(self, basedir: str) -> None:
        self.basedir = os.path.abspath(basedir)
        self.address = "127.0.0.1"
        self.port = 0
        self.log_path = os.path.join(self.basedir, f"{self.program}.log")
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def executable(cls) -> str | None:
        return shutil.which(
            cls.program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
        )

    # -- for subclasses ---------------------------------------------------------

    def _argv(self, executable: str) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        """Write the config for L{port} (called before each start attempt)."""

    def _ready(self, output: str) -> bool:
        """Whether the server serves; by default, whether its port accepts."""
        return _accepts(self.address, self.port)

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        """Start the server; raise L{RuntimeError} with its output if it does not serve."""
        executable = self.executable()
        if executable is None:
            raise unittest.SkipTest(
                f"{self.program} is not installed (Debian package {self.package})"
            )
        os.makedirs(self.basedir, exist_ok=True)
        failures: list[str] = []
        for _ in range(BIND_ATTEMPTS):
            self.port = free_port(self.address)
            self._write_config()
            output = self._launch(executable)
            if output is None:
                return
            failures.append(output)
            if "in use" not in output.lower():
                break
        raise RuntimeError(
            f"{self.program} did not start on {self.address}:{self.port}:\n"
            + "\n---\n".join(failures)
        )

    def _launch(self, executable: str) -> str | None:
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._argv(executable),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.basedir,
                env={
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG": "C.UTF-8",
                    "HOME": self.basedir,
                },
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            output = self.log()[offset:]
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                return f"{self.program} exited with {code}:\n{output}"
            if self._ready(output):
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stop()
        return f"{self.program} was not serving after {START_TIMEOUT} s:\n{self.log()[offset:]}"

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (TERM, then KILL) and reap it.  Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)


class MicroSocks(ExternalServer):
    """C{microsocks}: SOCKS5, no authentication."""

    program = "microsocks"
    package = "microsocks"

    def _argv(self, executable: str) -> list[str]:
        return [executable, "-i", self.address, "-p", str(self.port)]

    @property
    def url(self) -> str:
        return f"socks5://{self.address}:{self.port}"


class TinyProxy(ExternalServer):
    """C{tinyproxy} in the foreground: HTTP CONNECT to any port, from 127.0.0.1 only."""

    program = "tinyproxy"
    package = "tinyproxy"

    @property
    def config_path(self) -> str:
        return os.path.join(self.basedir, "tinyproxy.conf")

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            f"Listen {self.address}",
            "Timeout 60",
            "Allow 127.0.0.1",
            # No ConnectPort line: CONNECT to every port.
            "MaxClients 50",
            "LogLevel Info",
            "DisableViaHeader Yes",
        ]
        with open(self.config_path, "w", encoding="ascii") as f:
            f.write("# Generated by wraith_conch tests/proxies.py\n" + "\n".join(lines) + "\n")

    def _argv(self, executable: str) -> list[str]:
        return [executable, "-d", "-c", self.config_path]

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def offline_tor_options(bridge_port: int) -> list[str]:
    """
    Tor options that keep it off the network: its only bridge is
    127.0.0.1:C{bridge_port} (nothing listens there), so it stays at 5%
    forever.  (C{DisableNetwork 1} would not open the SOCKS port at all.)
    """
    return ["UseBridges", "1", "Bridge", f"127.0.0.1:{bridge_port}"]


class OfflineTor(ExternalServer):
    """
    C{tor} that opens its control and SOCKS ports but never bootstraps (see
    L{offline_tor_options}).  The control port needs no authentication.
    """

    program = "tor"
    package = "tor"

    def __init__(self, basedir: str) -> None:
        super().__init__(basedir)
        self.control_port = 0
        self.data_directory = os.path.join(self.basedir, "data")

    @property
    def config_path(self) -> str:
        return os.path.join(self.basedir, "torrc")

    def _write_config(self) -> None:
        self.control_port = free_port(self.address)
        os.makedirs(self.data_directory, mode=0o700, exist_ok=True)
        os.chmod(self.data_directory, 0o700)
        lines = [
            f"DataDirectory {self.data_directory}",
            f"SocksPort {self.address}:{self.port}",
            f"ControlPort {self.address}:{self.control_port}",
            "CookieAuthentication 0",
            "UseBridges 1",
            f"Bridge 127.0.0.1:{refused_port(self.address)}",
            "AvoidDiskWrites 1",
            "RunAsDaemon 0",
            "Log notice stdout",
        ]
        with open(self.config_path, "w", encoding="ascii") as f:
            f.write("# Generated by wraith_conch tests/proxies.py\n" + "\n".join(lines) + "\n")

    def _argv(self, executable: str) -> list[str]:
        return [executable, "-f", self.config_path, "--ignore-missing-torrc"]

    def _ready(self, output: str) -> bool:
        return (
            "Opened Control listener" in output
            and _accepts(self.address, self.port)
            and "Opened Socks listener" in output
            and _accepts(self.address, self.control_port)
        )

    @property
    def url(self) -> str:
        return f"tor://{self.address}:{self.port}"


def _start(testcase: _CleanupRegistry, cls: type[ExternalServer]) -> Any:
    basedir = tempfile.mkdtemp(prefix=f"wraith-{cls.program}-")
    testcase.addCleanup(shutil.rmtree, basedir, True)
    server = cls(basedir)
    testcase.addCleanup(server.stop)
    server.start()
    return server


def start_microsocks(testcase: _CleanupRegistry) -> MicroSocks:
    """A running L{MicroSocks}, stopped when C{testcase} ends."""
    server: MicroSocks = _start(testcase, MicroSocks)
    return server


def start_tinyproxy(testcase: _CleanupRegistry) -> TinyProxy:
    """A running L{TinyProxy}, stopped when C{testcase} ends."""
    server: TinyProxy = _start(testcase, TinyProxy)
    return server


def start_offline_tor(testcase: _CleanupRegistry) -> OfflineTor:
    """A running L{OfflineTor}, stopped when C{testcase} ends."""
    server: OfflineTor = _start(testcase, OfflineTor)
    return server


def offline_tor_wrapper(directory: str) -> str:
    """
    Write an executable C{tor} wrapper into C{directory} that adds
    L{offline_tor_options} to what it is given (for C{txtorcon.launch}'s
    C{tor_binary}); return its path.
    """
    tor = OfflineTor.executable()
    if tor is None:
        raise unittest.SkipTest("tor is not installed (Debian package tor)")
    options = offline_tor_options(refused_port())
    args = " ".join(f"--{options[i]} '{options[i + 1]}'" for i in range(0, len(options), 2))
    path = os.path.join(directory, "tor-offline")
    with open(path, "w", encoding="ascii") as f:
        f.write(
            f'#!/bin/sh\n# Generated by wraith_conch tests/proxies.py\nexec {tor} "$@" {args}\n'
        )
    os.chmod(path, 0o755)
    return path


# -- in-process servers ---------------------------------------------------------


class Echo(protocol.Protocol):
    """Echoes every byte."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class SpeaksFirst(Echo):
    """Sends L{BANNER} as soon as it is connected, then echoes."""

    def connectionMade(self) -> None:
        self.transport.write(BANNER)


class _FakeProxy(Echo):
    """
    Reads a proxy handshake (L{_handshake_done} says when it is complete),
    then writes the factory's scripted answer in one write and, per the
    factory, closes, stays silent, or echoes (the "tunnel").
    """

    factory: FakeProxyFactory

    def connectionMade(self) -> None:
        self.buffer = b""
        self.answered = False
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        if self.answered:
            self.factory.received += data
            if self.factory.after == "echo":
                self.transport.write(data)
            return
        self.buffer += data
        if len(self.buffer) > 65536:
            self.transport.loseConnection()
            return
        reply = self._handshake_step()
        if reply is None:
            return
        if reply:
            self.transport.write(reply)
        if self.answered:
            if self.factory.after == "close":
                self.transport.loseConnection()
            elif self.factory.after == "half-close":
                self.transport.loseWriteConnection()
            elif self.factory.after == "echo" and self.buffer:
                self.transport.write(self.buffer)
                self.buffer = b""

    def _handshake_step(self) -> bytes | None:
        raise NotImplementedError


class FakeHTTPProxy(_FakeProxy):
    def _handshake_step(self) -> bytes | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1:
            return None
        self.factory.requests.append(self.buffer[: end + 4])
        self.buffer = self.buffer[end + 4 :]
        self.answered = True
        return self.factory.answer or b""


class FakeSocksProxy(_FakeProxy):
    """
    Answers the greeting with the factory's C{method_reply}; unless that is
    C{05 00} (no authentication), that ends the handshake.  Then reads the
    request and answers it with C{answer}.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.greeted = False

    def _handshake_step(self) -> bytes | None:
        reply = b""
        if not self.greeted:
            if len(self.buffer) < 2 or len(self.buffer) < 2 + self.buffer[1]:
                return None
            self.buffer = self.buffer[2 + self.buffer[1] :]
            self.greeted = True
            reply = self.factory.method_reply
            if reply != b"\x05\x00":
                self.answered = True
                return reply
        if len(self.buffer) < 5:
            return reply
        atyp = self.buffer[3]
        if atyp == 1:
            length = 4 + 4 + 2
        elif atyp == 4:
            length = 4 + 16 + 2
        elif atyp == 3:
            length = 4 + 1 + self.buffer[4] + 2
        else:
            length = len(self.buffer)
        if len(self.buffer) < length:
            return reply
        self.factory.requests.append(self.buffer[:length])
        self.buffer = self.buffer[length:]
        self.answered = True
        return reply + (self.factory.answer or b"")


class FakeProxyFactory(protocol.Factory):
    """
    C{answer}: the bytes written (in one write) once the request is read
    (None or empty: nothing).  C{after}: C{"echo"} (the tunnel), C{"close"},
    C{"half-close"} (shut down the writing side, keep reading) or
    C{"silent"}.  For SOCKS, C{method_reply} answers the greeting.
    C{received} collects what arrives after the answer.
    """

    noisy = False

    def __init__(
        self,
        proxy_protocol: type[_FakeProxy],
        answer: bytes | None,
        *,
        after: str = "echo",
        method_reply: bytes = b"\x05\x00",
    ) -> None:
        self.protocol = proxy_protocol
        self.answer = answer
        self.after = after
        self.method_reply = method_reply
        self.requests: list[bytes] = []
        self.received = b""
        self.connections = 0


def socks_reply(code: int = 0, bound: bytes = b"\x01\x7f\x00\x00\x01", port: int = 1080) -> bytes:
    """A SOCKS5 reply with C{code} and a bound address (ATYP + address)."""
    return bytes([5, code, 0]) + bound + struct.pack("!H", port)


def listen(
    testcase: _CleanupRegistry,
    reactor: Any,
    factory: protocol.Factory,
    address: str = "127.0.0.1",
) -> int:
    """Serve C{factory} on C{address} (a free port) until the test ends; return the port."""
    port = reactor.listenTCP(0, factory, interface=address)
    testcase.addCleanup(port.stopListening)
    number: int = port.getHost().port
    return number
