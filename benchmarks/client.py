"""
The operator's side of the benchmark: a paramiko shell channel with a PTY.

The same code drives the gateway and (for the baseline) the target sshd
directly.  Both sockets get C{TCP_NODELAY}, as OpenSSH's client sets it for
an interactive session; paramiko leaves it off.
"""

from __future__ import annotations

import socket
import time

import paramiko

now = time.perf_counter_ns

CONNECT_TIMEOUT = 10.0

# The same algorithms on both paths, and the ones the OpenSSH clients of
# the suite are pinned to (benchmarks.infra): aes128-ctr, hmac-sha2-256 and
# curve25519-sha256 key exchange.
_KEX = "curve25519-sha256"
PINNED = {
    "ciphers": [c for c in paramiko.Transport._preferred_ciphers if c != "aes128-ctr"],
    "macs": [m for m in paramiko.Transport._preferred_macs if m != "hmac-sha2-256"],
    "kex": [k for k in paramiko.Transport._preferred_kex if k not in (_KEX, _KEX + "@libssh.org")],
}
READ_CHUNK = 65536


class Shell:
    """An interactive shell on C{user@host:port}, read into one growing buffer."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key_path: str,
        known_hosts_path: str,
        *,
        width: int = 200,
        height: int = 50,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = paramiko.SSHClient()
        self._client.load_host_keys(known_hosts_path)
        self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self._client.connect(
                host,
                port,
                username=user,
                pkey=paramiko.Ed25519Key.from_private_key_file(key_path),
                sock=sock,
                look_for_keys=False,
                allow_agent=False,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                disabled_algorithms=PINNED,
            )
            self.channel = self._client.invoke_shell(term="xterm", width=width, height=height)
        except BaseException:
            self._client.close()
            sock.close()
            raise
        self.buffer = bytearray()
        self.position = 0

    @property
    def cipher(self) -> str:
        transport = self._client.get_transport()
        return f"{transport.remote_cipher}/{transport.remote_mac}" if transport else "?"

    def send(self, data: bytes) -> None:
        self.channel.sendall(data)

    def wait_for(self, pattern: bytes, timeout: float) -> int:
        """
        Read until C{pattern} appears after L{position}; move L{position} past
        it and return C{perf_counter_ns()} taken right after the read that
        completed it.  Raise L{TimeoutError} after C{timeout} seconds.
        """
        found = self.buffer.find(pattern, self.position)
        if found >= 0:
            self.position = found + len(pattern)
            return now()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.channel.settimeout(remaining)
            try:
                data = self.channel.recv(READ_CHUNK)
            except TimeoutError:
                break
            received = now()
            if not data:
                raise ConnectionError(f"the channel closed while waiting for {pattern!r}")
            start = max(self.position, len(self.buffer) - len(pattern) + 1)
            self.buffer += data
            found = self.buffer.find(pattern, start)
            if found >= 0:
                self.position = found + len(pattern)
                return received
        tail = bytes(self.buffer[-300:])
        raise TimeoutError(f"{pattern!r} not received within {timeout} s; last output: {tail!r}")

    def trim(self) -> None:
        """Forget what was read before L{position} (bounds memory)."""
        del self.buffer[: self.position]
        self.position = 0

    def close(self) -> None:
        try:
            self.channel.close()
        finally:
            self._client.close()
