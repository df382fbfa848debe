"""
Stealth mode (C{--stealth}, wraith ADR-017): a TLS listener that looks like
an nginx web server to anything that is not an SSH client.

An SSH server normally speaks first (its version banner).  In stealth mode
the gateway stays silent until the client's first bytes arrive: an SSH
client sends its own C{SSH-2.0-...} banner at once, and is then served as
usual (its bytes replayed to the SSH transport); anything else -- a browser,
curl, a scanner's HTTP probe -- gets nginx's own 404 page and is closed.  A
client that sends nothing is closed silently after L{DEFAULT_TIMEOUT}
seconds, as nginx closes a connection without a request.

The classification and the reply are pure functions (L{classify},
L{decoy_response}); L{StealthFactory} applies them to connections.
"""

from __future__ import annotations

import enum
from email.utils import formatdate

from twisted.internet.interfaces import IProtocolNegotiationFactory
from zope.interface import implementer

from wraith_conch.gateway.prelude import Decision, PreludeFactory, PreludeWrapper, Refuse, Start

# RFC 4253 4.2: only the server may send lines before its version string, so
# a client's first bytes are "SSH-".
SSH_PREFIX = b"SSH-"
# How long a silent client is kept, and how much of an HTTP request head is
# read before answering anyway (nginx's default client_header_buffer_size
# is 1k, large_client_header_buffers 8k).
DEFAULT_TIMEOUT = 10.0
ALPN_HTTP_1_1 = b"http/1.1"
MAX_PEEK = 8192

# nginx's built-in 404 page with server_tokens off (ngx_http_special_response.c),
# byte for byte: a stock error page is what an unconfigured vhost shows.
NGINX_404_BODY = (
    b"<html>\r\n"
    b"<head><title>404 Not Found</title></head>\r\n"
    b"<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n"
    b"</body>\r\n"
    b"</html>\r\n"
)


class Verdict(enum.Enum):
    WAIT = "wait"  # not enough bytes to tell
    SSH = "ssh"  # an SSH version banner: hand over to the SSH server
    DECOY = "decoy"  # not SSH, and the request head is complete: answer 404


def classify(data: bytes, *, limit: int = MAX_PEEK) -> Verdict:
    """What the first bytes a client sent are, as far as they tell yet."""
    head = data[: len(SSH_PREFIX)]
    if SSH_PREFIX.startswith(head):
        return Verdict.SSH if len(head) == len(SSH_PREFIX) else Verdict.WAIT
    # Not SSH.  Like a web server, answer once the request head is complete
    # (or can no longer be), so an HTTP client reads a whole response.
    if b"\r\n\r\n" in data or b"\n\n" in data or len(data) >= limit:
        return Verdict.DECOY
    return Verdict.WAIT


def decoy_response(request: bytes, now: float) -> bytes:
    """nginx's 404 for C{request}; C{now} (POSIX time) gives the Date header."""
    head_only = request.startswith(b"HEAD ")
    headers = (
        b"HTTP/1.1 404 Not Found\r\n"
        b"Server: nginx\r\n"
        b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        b"Content-Type: text/html\r\n"
        b"Content-Length: " + str(len(NGINX_404_BODY)).encode("ascii") + b"\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )
    return headers if head_only else headers + NGINX_404_BODY


class StealthWrapper(PreludeWrapper):
    factory: StealthFactory

    def examine(self, buffered: bytes) -> Decision:
        verdict = classify(buffered, limit=self.factory.max_bytes)
        if verdict is Verdict.SSH:
            return Start(buffered)
        if verdict is Verdict.DECOY:
            return self._decoy(buffered)
        return None

    def on_timeout(self, buffered: bytes) -> Refuse:
        if buffered:
            # Something that is not (yet) an SSH banner: a web server would
            # answer it, so the decoy does.
            return self._decoy(buffered)
        return Refuse("stealth: no SSH banner in time")

    def on_overflow(self, buffered: bytes) -> Refuse:
        return self._decoy(buffered)

    def _decoy(self, buffered: bytes) -> Refuse:
        return Refuse(
            "stealth: not an SSH client, answered 404",
            decoy_response(buffered, self.factory.reactor.seconds()),
        )


@implementer(IProtocolNegotiationFactory)
class StealthFactory(PreludeFactory):
    """
    Wraps the gateway factory of one TLS listener in stealth mode.

    It also answers ALPN as nginx does (C{http/1.1}): browsers and curl
    offer ALPN, and Twisted's TLS fails the handshake of a client whose
    offer it cannot match -- a web server that cannot do TLS with a browser
    would not be believable.  SSH-over-TLS clients offer no ALPN.
    """

    protocol = StealthWrapper
    name = "stealth"

    def __init__(
        self,
        reactor,
        wrappedFactory,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = MAX_PEEK,
    ) -> None:
        super().__init__(reactor, wrappedFactory, timeout=timeout, max_bytes=max_bytes)

    def acceptableProtocols(self) -> list[bytes]:
        return [ALPN_HTTP_1_1]
