"""
Malformed SSH openings for the gateway's robustness tests and the long fuzz
run (tests/fuzz/fuzz_gateway.py): seeded, so a failing case can be replayed.
"""

from __future__ import annotations

import random
import socket
import struct
import time

from tests.rawclients import blocking_socket

#: The loopback address the bad clients connect from.
SOURCE = "127.0.0.4"
VERSION = b"SSH-2.0-fuzz_1.0\r\n"


def _name_list(*names: bytes) -> bytes:
    joined = b",".join(names)
    return struct.pack("!L", len(joined)) + joined


def kexinit_payload(rng: random.Random) -> bytes:
    return (
        bytes([20])
        + rng.randbytes(16)
        + _name_list(b"curve25519-sha256", b"ecdh-sha2-nistp256")
        + _name_list(b"ssh-ed25519")
        + _name_list(b"aes128-ctr")
        + _name_list(b"aes128-ctr")
        + _name_list(b"hmac-sha2-256")
        + _name_list(b"hmac-sha2-256")
        + _name_list(b"none")
        + _name_list(b"none")
        + _name_list()
        + _name_list()
        + b"\x00"
        + b"\x00\x00\x00\x00"
    )


def plain_packet(payload: bytes) -> bytes:
    """An unencrypted binary packet (RFC 4253 6), as before the first NEWKEYS."""
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    return struct.pack("!LB", 1 + len(payload) + padding, padding) + payload + b"\x00" * padding


def fuzz_case(rng: random.Random) -> bytes:
    """One malformed opening: a valid start, mutated one of several ways."""
    valid = VERSION + plain_packet(kexinit_payload(rng))
    kind = rng.randrange(7)
    if kind == 0:  # pure noise
        return rng.randbytes(rng.randrange(1, 2048))
    if kind == 1:  # truncated anywhere
        return valid[: rng.randrange(1, len(valid))]
    if kind == 2:  # bytes flipped
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 3:  # random packet length field
        length = rng.choice([0, 1, 3, 4, 5, 0xFFFFFFFF, 2**20 + 1, rng.randrange(2**32)])
        return VERSION + struct.pack("!LB", length, rng.randrange(256)) + rng.randbytes(64)
    if kind == 4:  # valid version, random packets
        return VERSION + plain_packet(
            bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(64))
        )
    if kind == 5:  # long or odd version lines
        return (
            b"SSH-"
            + rng.choice([b"1.0", b"2.0", b"9.9", b""])
            + b"-"
            + rng.randbytes(rng.randrange(300))
            + rng.choice([b"\r\n", b"\n", b""])
        )
    # inserted junk
    at = rng.randrange(len(valid))
    return valid[:at] + rng.randbytes(rng.randrange(1, 64)) + valid[at:]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def after_kex(port: int, mode: str, seed: int, source: str = SOURCE) -> bool:
    """
    Complete a real key exchange with paramiko, then misbehave (C{mode});
    True if the gateway closed the connection within 10 s.  Blocking: run
    in a thread.
    """
    import paramiko

    rng = random.Random(seed)
    sock = blocking_socket(port, source)
    client = paramiko.Transport(sock)
    try:
        client.start_client(timeout=10)
        packetizer = client.packetizer
        write_all = packetizer.write_all
        if mode == "garbage":
            sock.sendall(rng.randbytes(rng.randrange(16, 4096)))
        elif mode == "bad-mac":
            packetizer.write_all = lambda out: write_all(out[:-1] + bytes([out[-1] ^ 1]))
            client.send_ignore(16)
        elif mode == "truncated":
            packetizer.write_all = lambda out: write_all(out[: len(out) // 2])
            client.send_ignore(64)
            sock.shutdown(socket.SHUT_WR)  # the rest never comes
        elif mode == "oversized":
            # 300 KiB in one packet: more than the gateway's 256 KiB.
            client.send_ignore(300 * 1024)
        elif mode == "huge-length":
            client.send_ignore(2 * 1024 * 1024)
        elif mode == "bit-flip":
            flip = rng.randrange(16)
            packetizer.write_all = lambda out: write_all(
                out[:flip] + bytes([out[flip] ^ 0x80]) + out[flip + 1 :]
            )
            client.send_ignore(32)
        else:
            raise ValueError(mode)
        # paramiko's own thread reads the socket: wait for it to see the close.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not client.is_active():
                return True
            time.sleep(0.02)
        return False
    except (paramiko.SSHException, EOFError, OSError):
        # paramiko's reader thread may see the close first.
        return True
    finally:
        client.close()
        sock.close()
