"""
Login time: the real OpenSSH client (C{ssh -tt}, a PTY and a login shell)
from its start to the first byte of output and to the shell's prompt, through
the gateway and directly, alternating login by login.

The clock starts just before the ssh process is spawned, so the client's own
start (exec, reading its key: a few milliseconds) is inside both paths' figures.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Any

from benchmarks.approval import summary
from benchmarks.infra import BenchmarkError, Gateway, Rig, spawn, ssh_argv, stop

PROMPT = b"wraith$ "
LOGIN_TIMEOUT = 20.0


def login_once(argv: list[str]) -> tuple[int, int]:
    """Nanoseconds to the first output byte and to the prompt."""
    started = time.perf_counter_ns()
    process = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    seen = b""
    try:
        fd = process.stdout.fileno()
        deadline = time.monotonic() + LOGIN_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchmarkError(f"no prompt within {LOGIN_TIMEOUT} s; got {seen[-200:]!r}")
                if not selector.select(remaining):
                    continue
                data = os.read(fd, 65536)
                at = time.perf_counter_ns()
                if not data:
                    err = process.stderr.read().decode("utf-8", "replace")[-300:]
                    raise BenchmarkError(f"ssh ended before the prompt ({err.strip()})")
                if first is None:
                    first = at - started
                seen += data
                if PROMPT in seen:
                    return first, at - started
    finally:
        stop(process, grace=5.0)


def run_login(rig: Rig, gateway: Gateway, count: int) -> dict[str, Any]:
    endpoints = {
        "gateway": (gateway.port, gateway.known_hosts),
        "direct": (rig.sshd.port, rig.sshd.known_hosts_path),
    }
    samples: dict[str, dict[str, list[int]]] = {
        path: {"first_byte": [], "prompt": []} for path in endpoints
    }
    for number in range(count + 1):
        order = ("direct", "gateway") if number % 2 == 0 else ("gateway", "direct")
        for path in order:
            port, known = endpoints[path]
            first, prompt = login_once(ssh_argv(port, rig.key, known, rig.user, "-tt"))
            if number == 0:
                continue  # warm-up: first use of every code path
            samples[path]["first_byte"].append(first)
            samples[path]["prompt"].append(prompt)
    # summary() gives microseconds; logins read better in milliseconds.
    figures = {
        path: {name: _ms(summary(values)) for name, values in kinds.items()}
        for path, kinds in samples.items()
    }
    gateway_p50 = figures["gateway"]["prompt"]["p50"]
    direct_p50 = figures["direct"]["prompt"]["p50"]
    return {
        "unit": "ms",
        "gateway": figures["gateway"]["prompt"],
        "direct": figures["direct"]["prompt"],
        "gateway_first_byte": figures["gateway"]["first_byte"],
        "direct_first_byte": figures["direct"]["first_byte"],
        "ratio": round(gateway_p50 / direct_p50, 2),
    }


def _ms(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (round(v / 1000, 2) if k != "n" and v is not None else v) for k, v in figures.items()
    }
