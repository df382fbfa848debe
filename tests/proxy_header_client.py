"""
An ssh ProxyCommand that plays a load balancer: it connects to the gateway,
sends a PROXY protocol header naming a made-up client, then relays
stdin/stdout.  Usage: python proxy_header_client.py v1|v2 HOST PORT CLIENT_IP
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import struct
import sys

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header(version: str, client: str, client_port: int, server: str, server_port: int) -> bytes:
    source, destination = ipaddress.ip_address(client), ipaddress.ip_address(server)
    if destination.version != source.version:
        # Both addresses in a header are of one family.
        destination = ipaddress.ip_address("::1" if source.version == 6 else "127.0.0.1")
    if version == "v1":
        family = "TCP4" if source.version == 4 else "TCP6"
        return f"PROXY {family} {source} {destination} {client_port} {server_port}\r\n".encode()
    family = 0x11 if source.version == 4 else 0x21  # AF_INET / AF_INET6, STREAM
    addresses = source.packed + destination.packed + struct.pack("!HH", client_port, server_port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


def main() -> int:
    version, host, port, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    sock.sendall(header(version, client, 50123, host, port))
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    selector.register(sock, selectors.EVENT_READ, "socket")
    while True:
        events = selector.select(timeout=120)
        if not events:  # idle for two minutes: the test is long over
            return 1
        for key, _ in events:
            if key.data == "stdin":
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    selector.unregister(sys.stdin.fileno())
                    continue
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return 0
                os.write(sys.stdout.fileno(), data)


if __name__ == "__main__":
    sys.exit(main())
