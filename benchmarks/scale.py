"""
Scale: many interactive sessions held open through ONE gateway process.

L{benchmarks.scale_client} (one process, a Twisted Conch client) opens
C{connections} x C{channels} PTY shells through a fresh C{twistd wraith}
process -- the gateway opens one upstream connection per operator
connection, so the target runs one bash per session -- and then some of
them type one key every 100 ms.  Measured: the gateway's VmRSS idle (after
one warm-up login, before the load) and loaded (every session open and at
its prompt), per session; the echo latency under that load.  The same load
then runs straight against the sshd for the echo baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.approval import summary
from benchmarks.infra import (
    BenchmarkError,
    Gateway,
    Rig,
    cpu_seconds,
    read_line,
    runqueue_wait_seconds,
    spawn,
    ssh_argv,
    stop,
)
from benchmarks.login import login_once

BATCH = 10
BATCH_TIMEOUT = 60.0
INTERVAL = 0.1
SETTLE = 2.0


def _client(rig: Rig, port: int, host_key: str, shape: dict[str, Any]) -> subprocess.Popen:
    config = {
        "port": port,
        "user": rig.user,
        "key": rig.key,
        "host_key": host_key,
        "batch": BATCH,
        "batch_timeout": BATCH_TIMEOUT,
        "interval": INTERVAL,
        "max_seconds": 900,
        **shape,
    }
    return spawn(
        [sys.executable, "-m", "benchmarks.scale_client", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(rig.path("scale_client.stderr"), "ab"),  # noqa: SIM115 -- child owns it
    )


def _load(
    rig: Rig,
    port: int,
    host_key: str,
    shape: dict[str, Any],
    on_open=None,
    gateway_pid: int | None = None,
) -> dict[str, Any]:
    """Open the sessions, call C{on_open()}, type, return the client's figures."""
    client = _client(rig, port, host_key, shape)
    try:
        open_timeout = BATCH_TIMEOUT * (shape["connections"] // BATCH + 2)
        opened = json.loads(read_line(client, open_timeout))
        if "error" in opened:
            raise BenchmarkError(f"opening the sessions failed: {opened}")
        sessions = shape["connections"] * shape["channels"]
        if opened["opened"] != sessions:
            raise BenchmarkError(f"opened {opened['opened']} sessions of {sessions}")
        extra = on_open() if on_open is not None else {}
        watched = {"client": client.pid, **({"gateway": gateway_pid} if gateway_pid else {})}
        cpu = {name: cpu_seconds(pid) for name, pid in watched.items()}
        waits = {name: runqueue_wait_seconds(pid) for name, pid in watched.items()}
        began = time.monotonic()
        client.stdin.write(b"go\n")
        client.stdin.flush()
        typed = json.loads(read_line(client, shape["seconds"] + 60))
        if "error" in typed:
            raise BenchmarkError(f"typing failed: {typed}")
        elapsed = time.monotonic() - began
        # The share of one core each process used while the keys were typed:
        # near 1.0 means that process limited the echo latency.
        busy = {
            name: round((cpu_seconds(pid) - cpu[name]) / elapsed, 2)
            for name, pid in watched.items()
        }
        waited = {}
        for name, pid in watched.items():
            after = runqueue_wait_seconds(pid)
            before = waits[name]
            waited[name] = (
                round((after - before) / elapsed, 3)
                if after is not None and before is not None
                else None
            )
        return {
            "open_seconds": opened["seconds"],
            "cpu_while_typing": busy,
            "runqueue_wait_while_typing": waited,
            **typed,
            **extra,
        }
    except BenchmarkError as e:
        raise BenchmarkError(f"{e}{_tail(rig.path('scale_client.stderr'))}") from None
    finally:
        stop(client)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-1500:].decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"; the client's stderr:\n{text}" if text else ""


def _public_key(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return " ".join(f.read().split()[0:2])


def run_scale(
    rig: Rig, sessions: int, channels: int, typists: int, seconds: float
) -> dict[str, Any]:
    if sessions % channels:
        raise BenchmarkError("sessions must be a multiple of channels per connection")
    shape = {
        "connections": sessions // channels,
        "channels": channels,
        "typists": typists,
        "seconds": seconds,
    }
    gateway: Gateway = rig.start_gateway("scale")
    try:
        # Idle: after one login has loaded every lazily imported module.
        login_once(ssh_argv(gateway.port, rig.key, gateway.known_hosts, rig.user, "-tt"))
        time.sleep(SETTLE)
        idle = gateway.rss_kb()

        def loaded() -> dict[str, Any]:
            time.sleep(SETTLE)
            return {"rss_loaded_kb": gateway.rss_kb()}

        with open(gateway.known_hosts, encoding="ascii") as f:
            gateway_key = " ".join(f.read().split()[1:3])
        through = _load(
            rig, gateway.port, gateway_key, shape, on_open=loaded, gateway_pid=gateway.pid
        )
        peak_after = gateway.rss_kb()
    finally:
        rig.stop_process(gateway.process)
    direct = _load(rig, rig.sshd.port, _public_key(rig.sshd.host_key_path + ".pub"), shape)
    per_session = (through["rss_loaded_kb"] - idle) / sessions
    return {
        "sessions": sessions,
        "connections": shape["connections"],
        "channels_per_connection": channels,
        "typists": typists,
        "typing_seconds": seconds,
        "key_interval_s": INTERVAL,
        "rss_idle_kb": idle,
        "rss_loaded_kb": through["rss_loaded_kb"],
        "rss_after_typing_kb": peak_after,
        "rss_per_session_kb": round(per_session, 1),
        "open_seconds": {"gateway": through["open_seconds"], "direct": direct["open_seconds"]},
        "echo_unit": "us",
        "gateway": summary(v * 1000 for v in through["echo_us"]),
        "direct": summary(v * 1000 for v in direct["echo_us"]),
        "skipped_keys": {"gateway": through["skipped"], "direct": direct["skipped"]},
        "lost_sessions": {"gateway": through["lost"], "direct": direct["lost"]},
        # Seconds per second each process spent runnable but not running:
        # near or above its CPU share, the machine (not the process) was the limit.
        "runqueue_wait_while_typing": {
            "gateway_process": through["runqueue_wait_while_typing"]["gateway"],
            "client_process": {
                "gateway": through["runqueue_wait_while_typing"]["client"],
                "direct": direct["runqueue_wait_while_typing"]["client"],
            },
        },
        "cpu_while_typing": {
            "gateway_process": through["cpu_while_typing"]["gateway"],
            "client_process": {
                "gateway": through["cpu_while_typing"]["client"],
                "direct": direct["cpu_while_typing"]["client"],
            },
        },
    }
