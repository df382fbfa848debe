"""
Admission limits for operator connections, without I/O.

Two counters decide, at accept time and before any key exchange, whether a
new connection may proceed:

- connections per client IP address (C{--max-connections-per-ip}), counted
  from accept to close;
- "startups" (C{--max-startups}): connections that are not authenticated
  yet, counted from accept until user authentication succeeds.  The key
  exchange and every authentication attempt happen inside that window, so
  this bounds the CPU an unauthenticated crowd can make the gateway spend.

A connection is represented by a L{Ticket}; the transport tells it when the
user authenticated and when the connection closed.  Both calls are
idempotent, so a transport cannot free a slot twice.

L{identification_problem} checks the SSH identification ("version") lines a
peer sends before the binary protocol starts (RFC 4253 section 4.2).
"""

from __future__ import annotations

import enum

import attrs

#: RFC 4253 4.2: the identification string is at most 255 characters,
#: CR and LF included.
MAX_IDENTIFICATION_LINE = 255
#: Lines a server may send before its identification (RFC 4253 4.2 lets a
#: server, not a client, send them).  OpenSSH's client accepts 1024; a target
#: that needs more than this is broken or hostile.
MAX_PREAMBLE_LINES = 64
#: The largest binary packet accepted, as OpenSSH's PACKET_MAX_SIZE.  Conch
#: allows 1 MiB; clients keep to the 32 KiB the gateway's channels announce,
#: so a bigger packet is an attack on memory (100 startups x 1 MiB).
MAX_PACKET = 256 * 1024


class Refusal(enum.Enum):
    """Why a connection was refused at accept."""

    PER_IP = "refused-per-ip"
    STARTUPS = "refused-startups"

    @property
    def result(self) -> str:
        """The C{result} field of the log event (what fail2ban matches)."""
        return self.value


@attrs.frozen
class AdmissionLimits:
    """The configured limits; 0 means unlimited."""

    max_connections_per_ip: int = 0
    max_startups: int = 100

    def __attrs_post_init__(self) -> None:
        if self.max_connections_per_ip < 0 or self.max_startups < 0:
            raise ValueError("limits must be non-negative (0 = unlimited)")


@attrs.define(eq=False)
class Ticket:
    """One admitted connection's hold on the counters."""

    _admission: Admission = attrs.field(repr=False)
    key: str
    starting: bool = True
    closed: bool = False

    def authenticated(self) -> None:
        """User authentication succeeded: no longer a startup."""
        if self.starting and not self.closed:
            self.starting = False
            self._admission._startups -= 1

    def release(self) -> None:
        """The connection closed: free its slots."""
        if self.closed:
            return
        self.authenticated()
        self.closed = True
        self._admission._leave(self.key)


@attrs.define
class Admission:
    """The live counters for one gateway factory (all its listeners)."""

    limits: AdmissionLimits = attrs.field(factory=AdmissionLimits)
    _per_key: dict[str, int] = attrs.field(factory=dict, init=False)
    _startups: int = attrs.field(default=0, init=False)

    def admit(self, key: str) -> Ticket | Refusal:
        """
        A new connection from C{key} (the client's IP address): a L{Ticket}
        holding its slots, or the L{Refusal} if a limit is reached.  The
        per-address limit is checked first, so a single flooding address is
        named as such even when it also fills the startups.
        """
        per_ip = self.limits.max_connections_per_ip
        if per_ip and self._per_key.get(key, 0) >= per_ip:
            return Refusal.PER_IP
        if self.limits.max_startups and self._startups >= self.limits.max_startups:
            return Refusal.STARTUPS
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._startups += 1
        return Ticket(self, key)

    def connections_from(self, key: str) -> int:
        return self._per_key.get(key, 0)

    @property
    def startups(self) -> int:
        return self._startups

    def _leave(self, key: str) -> None:
        remaining = self._per_key[key] - 1
        if remaining:
            self._per_key[key] = remaining
        else:
            # No entry per address ever seen: the table stays as small as
            # the number of connected addresses.
            del self._per_key[key]


def address_key(address) -> str:
    """
    The counting key of a peer address: its IP for TCP (any port), the
    whole address otherwise (a UNIX socket peer has no IP).
    """
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    # An IPv4-mapped IPv6 address is the same client as the IPv4 one.
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:") :]
    return host


def identification_problem(buffer: bytes, *, server: bool) -> str | None:
    """
    What is wrong with the start of an SSH byte stream, received before the
    peer's identification line completes; C{None} if nothing (yet).

    C{server} is true on the side that accepted the connection: its peer is a
    client, which must start with C{SSH-} right away (as OpenSSH's sshd
    insists).  A server may send other lines first, each as short as the
    identification line and at most L{MAX_PREAMBLE_LINES} of them.  Either
    way no line may exceed L{MAX_IDENTIFICATION_LINE} bytes, so a peer that
    sends junk without a newline is refused after 255 bytes instead of
    being buffered.  Once the identification line is complete, the rest of
    C{buffer} is binary packets and is not looked at.
    """
    start = 0
    for _ in range(MAX_PREAMBLE_LINES + 1):
        end = buffer.find(b"\n", start)
        line = buffer[start:] if end == -1 else buffer[start : end + 1]
        if server and not b"SSH-".startswith(line[:4]):
            return "not an SSH client"
        if end == -1:
            if len(line) >= MAX_IDENTIFICATION_LINE:
                return "identification line longer than 255 bytes"
            return None
        if len(line) > MAX_IDENTIFICATION_LINE:
            return "identification line longer than 255 bytes"
        if line.startswith(b"SSH-"):
            return None
        if b"SSH-" in line:
            # Conch's parser would take the bytes after such a line for
            # packets before any identification was seen.
            return "SSH- inside a line before the identification"
        start = end + 1
    return f"more than {MAX_PREAMBLE_LINES} lines before the identification"
