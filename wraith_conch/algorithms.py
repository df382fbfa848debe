"""Algorithm preferences shared by both SSH legs of the gateway."""

from __future__ import annotations

# Conch offers only aes-ctr/cbc ciphers; aes128-ctr with hmac-sha2-256 is
# its fastest pair, so put them first on both legs.
_FAST_CIPHERS = [b"aes128-ctr", b"aes256-ctr"]
_FAST_MACS = [b"hmac-sha2-256", b"hmac-sha2-512"]


def _prefer(available: list[bytes], preferred: list[bytes]) -> list[bytes]:
    first = [name for name in preferred if name in available]
    return first + [name for name in available if name not in first]


def prefer_fast_algorithms(transport) -> None:
    """Reorder an SSH transport's cipher and MAC lists, fastest first."""
    transport.supportedCiphers = _prefer(transport.supportedCiphers, _FAST_CIPHERS)
    transport.supportedMACs = _prefer(transport.supportedMACs, _FAST_MACS)


def no_delay(transport) -> None:
    """TCP_NODELAY where the transport has it (not on in-memory test transports)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass
