"""
Bulk throughput with the real OpenSSH clients, gateway vs direct, in one run:

- C{exec}: C{ssh HOST 'head -c N /dev/zero'} into /dev/null (the gateway's
  auto-approving service approves the exec);
- C{sftp}: C{sftp -b} C{get} of an N-byte file into /dev/null;
- C{forward}: N bytes through C{ssh -L} to a sink process
  (L{benchmarks.forward}).

Each round runs both paths, alternating which goes first, and the best
round of each path is the figure (the least disturbed by the shared
machine).  Times are whole client runs: login and teardown are inside them
(tens of milliseconds, on both paths alike).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import forward
from benchmarks.infra import BenchmarkError, Gateway, Rig, sftp_argv, spawn, ssh_argv, stop

RUN_TIMEOUT = 300.0


def _timed(argv: list[str], what: str) -> float:
    """Run C{argv} with stdout to /dev/null; seconds it took; fail on a non-zero exit."""
    started = time.perf_counter()
    process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what} still running after {RUN_TIMEOUT} s") from None
    finally:
        stop(process)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        text = (err or b"").decode("utf-8", "replace").strip()[-500:]
        raise BenchmarkError(f"{what} exited with {process.returncode}: {text}")
    return elapsed


def _rounds(rounds: int, size: int, run_one: Callable[[str], float]) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"gateway": [], "direct": []}
    for number in range(rounds):
        order = ("direct", "gateway") if number % 2 == 0 else ("gateway", "direct")
        for path in order:
            seconds = run_one(path)
            samples[path].append(round(size / seconds / 1e6, 1))
    gateway, direct = max(samples["gateway"]), max(samples["direct"])
    return {
        "unit": "MB/s",
        "bytes": size,
        "rounds": rounds,
        "gateway": gateway,
        "direct": direct,
        "ratio": round(gateway / direct, 3),
        "gateway_all": samples["gateway"],
        "direct_all": samples["direct"],
    }


def _endpoints(rig: Rig, gateway: Gateway) -> dict[str, tuple[int, str]]:
    return {
        "gateway": (gateway.port, gateway.known_hosts),
        "direct": (rig.sshd.port, rig.sshd.known_hosts_path),
    }


def run_exec(rig: Rig, gateway: Gateway, size: int, rounds: int) -> dict[str, Any]:
    endpoints = _endpoints(rig, gateway)

    def one(path: str) -> float:
        port, known = endpoints[path]
        argv = ssh_argv(port, rig.key, known, rig.user, "-T", command=f"head -c {size} /dev/zero")
        return _timed(argv, f"ssh exec ({path})")

    return _rounds(rounds, size, one)


def run_sftp(rig: Rig, gateway: Gateway, size: int, rounds: int) -> dict[str, Any]:
    endpoints = _endpoints(rig, gateway)
    # A sparse file: the target reads zeros without touching a disk.
    source = rig.path("sftp_source")
    with open(source, "wb") as f:
        f.truncate(size)
    os.chmod(source, 0o644)
    batch = rig.path("sftp_batch")
    with open(batch, "w", encoding="ascii") as f:
        f.write(f"get {source} /dev/null\n")

    def one(path: str) -> float:
        port, known = endpoints[path]
        return _timed(sftp_argv(port, rig.key, known, rig.user, batch), f"sftp get ({path})")

    try:
        return _rounds(rounds, size, one)
    finally:
        os.unlink(source)


class Sink:
    """L{forward.SINK} in a process of its own: reads each connection to EOF."""

    def __init__(self, rig: Rig) -> None:
        self.process = spawn([sys.executable, "-c", forward.SINK], stdout=subprocess.PIPE)
        from benchmarks.infra import read_line

        self.port = int(read_line(self.process, 10.0))

    def close(self) -> None:
        stop(self.process)


def run_forward(rig: Rig, gateway: Gateway, sink: Sink, size: int, rounds: int) -> dict[str, Any]:
    endpoints = _endpoints(rig, gateway)

    def one(path: str) -> float:
        port, known = endpoints[path]
        local = forward.free_port()
        client = forward.ssh_forward(port, rig.key, known, rig.user, local, sink.port)
        try:
            return forward.push(local, size)
        except OSError as e:
            raise BenchmarkError(f"the {path} forward failed: {e}") from None
        finally:
            stop(client)

    return _rounds(rounds, size, one)
