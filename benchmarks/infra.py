"""
What the benchmark suite runs against: the target sshd, an auto-approving
approval service and a real C{twistd -n wraith} gateway, each in a process of
its own, plus the real OpenSSH clients' command lines (cipher and MAC pinned).

Every process is started in a session of its own and stopped by killing
that whole process group, so nothing outlives the run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.conch.ssh import keys

from tests.sshd import TargetSSHD, make_basedir, write_ed25519_key

CIPHER = "aes128-ctr"
MAC = "hmac-sha2-256"
# What the gateway (Conch) offers; OpenSSH's default sntrup761x25519-sha512
# costs ~0.1 s more per login on this kind of machine, which would flatter
# the gateway's login figure.
KEX = "curve25519-sha256"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


class BenchmarkError(Exception):
    """The benchmark could not run; the message says why."""


# -- processes -----------------------------------------------------------------------


def spawn(argv: Sequence[str], **kw: Any) -> subprocess.Popen:
    """Popen in a session of its own (L{stop} kills the whole group)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("cwd", REPO_ROOT)
    return subprocess.Popen(list(argv), start_new_session=True, **kw)


def stop(process: subprocess.Popen | None, grace: float = STOP_TIMEOUT) -> None:
    """SIGTERM to the process group, SIGKILL after C{grace} seconds; reap it."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Whatever the group still holds (children of a process that exited).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = START_TIMEOUT, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchmarkError(f"the process for port {port} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchmarkError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout (binary pipe), within C{timeout} seconds."""
    fd = process.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise BenchmarkError(f"no line from {process.args[:3]} within {timeout} s")
            chunk = os.read(fd, 1)  # one byte at a time: never read past the line
            if not chunk:
                raise BenchmarkError(f"{process.args[:3]} exited ({process.poll()})")
            pending += chunk
    return pending.decode("utf-8", "replace").strip()


def rss_kb(pid: int) -> int:
    """VmRSS of C{pid} in kB, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of C{pid} so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5) (utime, stime), counted after the ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_seconds(pid: int) -> float | None:
    """
    Time C{pid}'s main thread spent runnable but waiting for a CPU, from
    /proc/PID/schedstat (None where the kernel does not keep it): what a
    loaded machine adds to a process's latency.
    """
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


# -- the parts --------------------------------------------------------------------------


class Rig:
    """
    The target sshd, an operator key both paths accept, an auto-approving
    service process and (on demand) gateway processes.  L{close} stops all.
    """

    def __init__(self, log_level: str = "INFO") -> None:
        self.basedir = make_basedir("wraith-benchmarks-")
        self._processes: list[subprocess.Popen] = []
        self.sshd = TargetSSHD(self.basedir, log_level=log_level)
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise

    def _set_up(self) -> None:
        self.sshd.start()
        self.user = self.sshd.user
        self.key = os.path.join(self.basedir, "operator_key")
        public = write_ed25519_key(self.key, "benchmark-operator")
        # The same key logs in directly, so both paths run the same client.
        self.sshd.authorize_key(public)
        self.authorized_keys = os.path.join(self.basedir, "operator_authorized_keys")
        with open(self.authorized_keys, "w", encoding="ascii") as f:
            f.write(public + "\n")
        self.service_url = self._start_service()

    def path(self, name: str) -> str:
        return os.path.join(self.basedir, name)

    def _start_service(self) -> str:
        service = spawn(
            [sys.executable, "-m", "benchmarks.service"],
            stdout=subprocess.PIPE,
            stderr=open(self.path("service.stderr"), "wb"),  # noqa: SIM115 -- child owns it
        )
        self._processes.append(service)
        url = read_line(service, START_TIMEOUT)
        if not url.startswith("ws://127.0.0.1:"):
            raise BenchmarkError(f"the approval service said {url!r}")
        return url

    def start_gateway(self, name: str, forward_ports: Sequence[int] = ()) -> Gateway:
        gateway = Gateway(self, name, forward_ports)
        self._processes.append(gateway.process)
        gateway.wait()
        return gateway

    def stop_process(self, process: subprocess.Popen) -> None:
        stop(process)
        if process in self._processes:
            self._processes.remove(process)

    def close(self) -> None:
        try:
            for process in reversed(self._processes):
                stop(process)
            self._processes.clear()
        finally:
            self.sshd.stop()
            shutil.rmtree(self.basedir, ignore_errors=True)


class Gateway:
    """A real C{twistd -n wraith} process in front of the rig's sshd."""

    def __init__(self, rig: Rig, name: str, forward_ports: Sequence[int]) -> None:
        self.rig = rig
        self.port = free_port()
        host_key = rig.path(f"{name}_host_key")
        argv = [
            sys.executable, "-c", TWISTD, "-n", "--pidfile=",
            f"--logfile={rig.path(name + '.log')}", "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1", f"--host-key={host_key}",
            f"--target=127.0.0.1:{rig.sshd.port}",
            f"--target-known-hosts={rig.sshd.known_hosts_path}",
            f"--target-identity={rig.sshd.client_key_path}",
            f"--authorized-keys={rig.authorized_keys}",
            f"--approval={rig.service_url}", "--log-format=json", "--gateway-name=benchmark",
        ]  # fmt: skip
        if forward_ports:
            policy = rig.path(f"{name}_forward_policy.toml")
            with open(policy, "w", encoding="ascii") as f:
                ports = ", ".join(str(p) for p in forward_ports)
                f.write(
                    '[[rule]]\naction = "allow"\noverride_builtin = true\n'
                    f'cidr = ["127.0.0.1/32"]\nports = [{ports}]\n'
                )
            argv.append(f"--forward-policy={policy}")
        self.host_key_path = host_key
        self.process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.known_hosts = rig.path(f"{name}_known_hosts")

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> None:
        wait_port(self.port, process=self.process)
        public = keys.Key.fromFile(self.host_key_path).public().toString("openssh").decode()
        with open(self.known_hosts, "w", encoding="ascii") as f:
            f.write(f"[127.0.0.1]:{self.port} {public}\n")

    def rss_kb(self) -> int:
        return rss_kb(self.pid)


# -- OpenSSH clients ---------------------------------------------------------------------


def client_options(key: str, known_hosts: str) -> list[str]:
    """Options shared by ssh and sftp: nothing from config, one key, pinned host, fixed algorithms."""
    return [
        "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", f"Ciphers={CIPHER}", "-o", f"MACs={MAC}",
        "-o", f"KexAlgorithms={KEX}",
        "-o", "Compression=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
    ]  # fmt: skip


def ssh_argv(
    port: int, key: str, known_hosts: str, user: str, *options: str, command: str | None = None
) -> list[str]:
    tail = [command] if command is not None else []
    return [
        "ssh", *client_options(key, known_hosts), "-c", CIPHER, "-m", MAC,
        "-p", str(port), *options, f"{user}@127.0.0.1", *tail,
    ]  # fmt: skip


def sftp_argv(port: int, key: str, known_hosts: str, user: str, batch: str) -> list[str]:
    return [
        "sftp", *client_options(key, known_hosts), "-c", CIPHER, "-P", str(port),
        "-b", batch, f"{user}@127.0.0.1",
    ]  # fmt: skip


# -- the record ---------------------------------------------------------------------------


def tool_first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (done.stderr or done.stdout).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    memory_kb = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            memory_kb = int(f.readline().split()[1])
    import paramiko

    import twisted

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_kb": memory_kb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "paramiko": paramiko.__version__,
        "sshd": tool_first_line(["/usr/sbin/sshd", "-V"]),
        "ssh": tool_first_line(["ssh", "-V"]),
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and files under wraith_conch/ that differ from it."""

    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout if done.returncode == 0 else ""

    head = out(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]).strip()
    status = out(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "wraith_conch"])
    return {
        "commit": head or None,
        "uncommitted": [line[3:] for line in status.splitlines() if line.strip()],
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


__all__ = [
    "CIPHER",
    "MAC",
    "BenchmarkError",
    "Gateway",
    "Rig",
    "make_basedir",
]
