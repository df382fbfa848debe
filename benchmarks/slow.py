"""
Slow consumer: C{ssh HOST 'head -c 1000000000 /dev/zero'} through the gateway
into a pipe nobody reads.  The SSH windows must hold the target back, so the
gateway's memory (VmRSS, sampled every L{SAMPLE_EVERY} s) barely moves.  Then
the pipe is read again: the stream must resume (data held back, not dropped).

The same approach as C{tests/test_gateway_channels.py}'s stalled-reader test,
with the gateway in a process of its own so that its RSS is the gateway's only.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Any

from benchmarks.infra import BenchmarkError, Gateway, Rig, spawn, ssh_argv, stop

SIZE = 1_000_000_000
SAMPLE_EVERY = 0.2
RESUME_BYTES = 64_000_000
RESUME_TIMEOUT = 60.0


def run_slow(rig: Rig, gateway: Gateway, stall_seconds: float) -> dict[str, Any]:
    before = gateway.rss_kb()
    argv = ssh_argv(
        gateway.port,
        rig.key,
        gateway.known_hosts,
        rig.user,
        "-T",
        command=f"head -c {SIZE} /dev/zero",
    )
    process = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        peak = before
        samples = max(1, int(stall_seconds / SAMPLE_EVERY))
        for _ in range(samples):
            time.sleep(SAMPLE_EVERY)
            peak = max(peak, gateway.rss_kb())
            if process.poll() is not None:
                raise BenchmarkError(f"ssh exited with {process.returncode} while stalled")
        resumed = _read(process, RESUME_BYTES, RESUME_TIMEOUT)
    finally:
        stop(process)
    return {
        "unit": "kB",
        "bytes": SIZE,
        "stall_seconds": round(samples * SAMPLE_EVERY, 1),
        "rss_before_kb": before,
        "rss_peak_kb": peak,
        "rss_growth_kb": peak - before,
        "resumed_bytes": resumed,
    }


def _read(process: subprocess.Popen, want: int, timeout: float) -> int:
    """Read up to C{want} bytes of the stalled stream; how many arrived in C{timeout}."""
    fd = process.stdout.fileno()
    got = 0
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while got < want:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            data = os.read(fd, 1 << 20)
            if not data:
                break
            got += len(data)
    return got
