"""
Throughput of a forwarded TCP connection: C{ssh -L} through the gateway vs
C{ssh -L} straight to OpenSSH, same cipher and MAC, in one run.

    python -m benchmarks.forward [--megabytes N] [--quick]

Run from the repository root, as root (the target is a real sshd from
L{tests.sshd.TargetSSHD}).  The gateway runs as a real C{twistd -n wraith}
process; the sink is a separate process that reads until EOF and reports
what it got, so the three sides do not share a CPU-bound interpreter.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.sshd import TargetSSHD, make_basedir, write_ed25519_key

CIPHER = "aes128-ctr"
MAC = "hmac-sha2-256"
CHUNK = 1 << 20
START_TIMEOUT = 15.0

SINK = r"""
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(4)
print(server.getsockname()[1], flush=True)
while True:  # stopped by the benchmark; wait_port's probes connect too
    conn, _ = server.accept()
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    conn.sendall(str(total).encode())
    conn.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def push(port: int, size: int) -> float:
    """Send C{size} bytes through a local forward; seconds until the sink confirms."""
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        sent = 0
        while sent < size:
            n = min(CHUNK, size - sent)
            s.sendall(block[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            data = s.recv(64)
            if not data:
                break
            reply += data
    elapsed = time.perf_counter() - started
    if int(reply or b"0") != size:
        raise RuntimeError(f"sink received {reply!r} bytes, expected {size}")
    return elapsed


def ssh_forward(port: int, key: str, known_hosts: str, user: str, local: int, sink: int):
    argv = [
        "ssh", "-F", "/dev/null", "-N", "-p", str(port), "-i", key,
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", f"Ciphers={CIPHER}", "-o", f"MACs={MAC}", "-o", "ExitOnForwardFailure=yes",
        "-o", "KexAlgorithms=curve25519-sha256",
        "-L", f"{local}:127.0.0.1:{sink}", f"{user}@127.0.0.1",
    ]  # fmt: skip
    # A session of its own: the suite stops it by its process group.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(local)
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="32 MB, one round (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.megabytes, args.rounds = 32, 1
    size = args.megabytes * 1024 * 1024

    work = tempfile.mkdtemp(prefix="wraith-bench-")
    sshd = TargetSSHD(make_basedir())
    sshd.start()
    processes: list[subprocess.Popen] = []
    try:
        sink = subprocess.Popen(
            [sys.executable, "-c", SINK],
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(sink)
        sink_port = int(sink.stdout.readline())

        operator_key = os.path.join(work, "operator")
        operator_pub = write_ed25519_key(operator_key, "bench-operator")
        sshd.authorize_key(operator_pub)
        authorized = os.path.join(work, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(operator_pub + "\n")
        policy = os.path.join(work, "policy.toml")
        with open(policy, "w") as f:
            f.write(
                '[[rule]]\naction = "allow"\noverride_builtin = true\n'
                f'cidr = ["127.0.0.1/32"]\nports = [{sink_port}]\n'
            )
        gateway_port = free_port()
        host_key = os.path.join(work, "gateway_host_key")
        gateway = subprocess.Popen(
            [
                sys.executable, "-c",
                "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", f"--logfile={os.path.join(work, 'gateway.log')}", "wraith",
                f"--listen=tcp:{gateway_port}:interface=127.0.0.1", f"--host-key={host_key}",
                f"--target=127.0.0.1:{sshd.port}", f"--target-known-hosts={sshd.known_hosts_path}",
                f"--target-identity={sshd.client_key_path}", f"--authorized-keys={authorized}",
                "--approval=ws://127.0.0.1:9/no-approvals-needed-for-forwards",
                f"--forward-policy={policy}",
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(gateway)
        wait_port(gateway_port)
        from twisted.conch.ssh import keys

        gateway_known = os.path.join(work, "gateway_known_hosts")
        with open(gateway_known, "w") as f:
            public = keys.Key.fromFile(host_key).public().toString("openssh").decode()
            f.write(f"[127.0.0.1]:{gateway_port} {public}\n")

        results: dict[str, list[float]] = {"direct": [], "gateway": []}
        for _ in range(args.rounds):
            for name, port, known in (
                ("direct", sshd.port, sshd.known_hosts_path),
                ("gateway", gateway_port, gateway_known),
            ):
                local = free_port()
                forward = ssh_forward(port, operator_key, known, sshd.user, local, sink_port)
                try:
                    seconds = push(local, size)
                except OSError as e:
                    raise RuntimeError(f"the {name} forward failed: {e}") from None
                finally:
                    stop(forward)
                results[name].append(size / seconds / 1e6)
        best = {name: max(values) for name, values in results.items()}
        ratio = best["gateway"] / best["direct"]
        print(f"{'path':<10}{'MB/s (best of ' + str(args.rounds) + ')':>24}")
        for name in ("direct", "gateway"):
            print(f"{name:<10}{best[name]:>24.1f}")
        print(f"gateway/direct: {ratio:.0%} (goal >= 50%)")
        print(
            json.dumps(
                {
                    "benchmark": "forward",
                    "bytes": size,
                    "cipher": CIPHER,
                    "mac": MAC,
                    "direct_mb_s": results["direct"],
                    "gateway_mb_s": results["gateway"],
                    "ratio": ratio,
                }
            )
        )
        return 0
    finally:
        for process in processes:
            stop(process)
        sshd.stop()


if __name__ == "__main__":
    sys.exit(main())
