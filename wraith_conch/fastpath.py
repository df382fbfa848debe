"""
A faster SSH binary packet layer for the gateway's own transports.

Every relayed byte crosses two SSH transports in one Python process: it is
decrypted and MAC-checked on one leg, encrypted and MAC-ed on the other.
Conch's packet layer costs far more than the cryptography itself per packet:
it builds a new HMAC object per packet over a copy of the packet, re-slices
its whole receive buffer for every packet (and again for the MAC), and
copies the payload several times on the way in and out.  This module keeps
Conch's algorithms, keys and wire format byte for byte and does the same
work with fewer copies and calls:

  - L{FastSSHCiphers}: the HMAC key schedule is done once per key (an
    C{hmac} object is copied per packet), the sequence number and packet are
    fed without concatenating them, and the MAC is still compared with
    L{hmac.compare_digest};
  - L{FastPacketTransportMixin}: packets are parsed at an offset into the
    received bytes (decrypting from a C{memoryview}), the payload is sliced
    once, and outgoing packets are assembled with one join from parts so
    that channel data is not copied to prefix its header.

It is installed by subclassing (our C{GatewayTransport} and
C{UpstreamTransport}), never by patching Conch: other Conch users in the
process are untouched.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence

from twisted.conch.ssh import transport
from twisted.conch.ssh.transport import SSHCiphers
from twisted.internet import tcp

_SEQ = struct.Struct(">L")
_LENGTH_AND_PADDING = struct.Struct("!LB")
_HEADER = struct.Struct("!LBB")
# Conch's own limit on an incoming packet (its getPacket).
_MAX_PACKET_LENGTH = 1048576
_RANDOM_POOL = 4096


def _hmac_template(params) -> hmac.HMAC | None:
    """An HMAC keyed as Conch's C{_getMAC} keys it, ready to C{copy()}."""
    hash_module = params[0]
    if not hash_module:
        return None
    # params.key is the MAC key cut to the digest size and zero-padded to
    # the hash's block size, exactly the key Conch passes to hmac.HMAC.
    return hmac.new(params.key, None, hash_module)


class FastSSHCiphers(SSHCiphers):
    """L{SSHCiphers} whose MACs reuse one keyed HMAC state per direction."""

    _out_hmac: hmac.HMAC | None = None
    _in_hmac: hmac.HMAC | None = None

    def setKeys(self, outIV, outKey, inIV, inKey, outInteg, inInteg) -> None:
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self._out_hmac = _hmac_template(self.outMAC)
        self._in_hmac = _hmac_template(self.inMAC)

    def makeMAC(self, seqid: int, data: bytes) -> bytes:
        template = self._out_hmac
        if template is None:
            return b""
        mac = template.copy()
        # RFC 4253 6.4: the sequence number wraps around after 2**32 packets.
        mac.update(_SEQ.pack(seqid & 0xFFFFFFFF))
        mac.update(data)
        return mac.digest()

    def verify(self, seqid: int, data: bytes, mac: bytes) -> bool:
        template = self._in_hmac
        if template is None:
            return mac == b""
        expected = template.copy()
        expected.update(_SEQ.pack(seqid & 0xFFFFFFFF))
        expected.update(data)
        return hmac.compare_digest(mac, expected.digest())


def fast_ciphers_from(ciphers: SSHCiphers) -> FastSSHCiphers:
    """The same negotiated algorithms, before their keys are set."""
    return FastSSHCiphers(
        ciphers.outCipType, ciphers.inCipType, ciphers.outMACType, ciphers.inMACType
    )


class FastPacketTransportMixin:
    """
    For an L{transport.SSHTransportBase} subclass: the same packets, sent and
    parsed with less per-packet work.  Anything unusual (compression, the
    version exchange) takes Conch's own path.
    """

    _fastpath_parsing = False
    _fastpath_pending: list[bytes] | None = None
    _fastpath_random = b""
    _fastpath_random_used = 0

    # -- key exchange -----------------------------------------------------

    def ssh_KEXINIT(self, packet: bytes):
        result = super().ssh_KEXINIT(packet)  # type: ignore[misc]
        negotiated = getattr(self, "nextEncryptions", None)
        # Conch picks the algorithms here and sets the keys later (_keySetup):
        # swap in the faster implementation of the same algorithms now.
        if type(negotiated) is SSHCiphers:
            self.nextEncryptions = fast_ciphers_from(negotiated)
        return result

    # -- sending ------------------------------------------------------------

    def _fastpath_padding(self, length: int) -> bytes:
        # One os.urandom call per few hundred packets instead of per packet.
        start = self._fastpath_random_used
        if start + length > len(self._fastpath_random):
            self._fastpath_random = os.urandom(_RANDOM_POOL)
            start = 0
        self._fastpath_random_used = start + length
        return self._fastpath_random[start : start + length]

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.send_packet_parts(messageType, (payload,))

    def send_packet_parts(self, messageType: int, parts: Sequence[bytes]) -> None:
        """Send one packet whose payload is the concatenation of C{parts}."""
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:  # type: ignore[attr-defined]
            if not self._allowedKeyExchangeMessageType(messageType):  # type: ignore[attr-defined]
                self._blockedByKeyExchange.append((messageType, b"".join(parts)))  # type: ignore[attr-defined]
                return
        if self.outgoingCompression:  # type: ignore[attr-defined]
            transport.SSHTransportBase.sendPacket(self, messageType, b"".join(parts))  # type: ignore[arg-type]
            return
        ciphers = self.currentEncryptions  # type: ignore[attr-defined]
        block = ciphers.encBlockSize
        length = 1
        for part in parts:
            length += len(part)
        # 4 bytes of packet length and 1 of padding length, as Conch counts.
        total = 5 + length
        padding = block - (total % block)
        if padding < 4:
            padding += block
        packet = b"".join(
            (
                _HEADER.pack(total + padding - 4, padding, messageType),
                *parts,
                self._fastpath_padding(padding),
            )
        )
        mac = ciphers.makeMAC(self.outgoingPacketSequence, packet)  # type: ignore[attr-defined]
        encrypted = ciphers.encrypt(packet)
        if mac:
            self.transport.writeSequence((encrypted, mac))  # type: ignore[attr-defined]
        else:
            self.transport.write(encrypted)  # type: ignore[attr-defined]
        self.outgoingPacketSequence += 1  # type: ignore[attr-defined]

    # -- receiving ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.gotVersion:  # type: ignore[attr-defined]
            super().dataReceived(data)  # type: ignore[misc]
            return
        if self._fastpath_parsing:
            # Called from inside a packet handler (an in-memory peer that
            # answers at once): parse it after the packets already read.
            if self._fastpath_pending is None:
                self._fastpath_pending = []
            self._fastpath_pending.append(data)
            return
        self._fastpath_parsing = True
        try:
            while True:
                buf = self.buf + data if self.buf else data  # type: ignore[has-type]
                self.buf = b""
                self._fastpath_parse(buf)
                pending = self._fastpath_pending
                if not pending:
                    return
                self._fastpath_pending = None
                data = b"".join(pending)
        finally:
            self._fastpath_parsing = False

    def _fastpath_parse(self, buf: bytes) -> None:
        """Dispatch every whole packet in C{buf}; keep the rest in C{self.buf}."""
        view = memoryview(buf)
        end = len(buf)
        position = 0
        try:
            while True:
                ciphers = self.currentEncryptions  # type: ignore[attr-defined]
                block = ciphers.decBlockSize
                mac_size = ciphers.verifyDigestSize
                if end - position < block:
                    return
                first = self.__dict__.pop("first", None)
                if first is None:
                    first = bytes(ciphers.decrypt(view[position : position + block]))
                packet_length, padding = _LENGTH_AND_PADDING.unpack_from(first)
                if packet_length > _MAX_PACKET_LENGTH:
                    self.sendDisconnect(  # type: ignore[attr-defined]
                        transport.DISCONNECT_PROTOCOL_ERROR,
                        f"bad packet length {packet_length}".encode("ascii"),
                    )
                    return
                if end - position < packet_length + 4 + mac_size:
                    self.first = first
                    return
                if (packet_length + 4) % block != 0:
                    self.sendDisconnect(  # type: ignore[attr-defined]
                        transport.DISCONNECT_PROTOCOL_ERROR,
                        b"bad packet mod (%i%%%i == %i)"
                        % (packet_length + 4, block, (packet_length + 4) % block),
                    )
                    return
                mac_start = position + 4 + packet_length
                packet = first + ciphers.decrypt(view[position + block : mac_start])
                if len(packet) != 4 + packet_length:
                    self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad decryption")  # type: ignore[attr-defined]
                    return
                position = mac_start + mac_size
                if (
                    mac_size
                    and not ciphers.verify(
                        self.incomingPacketSequence,  # type: ignore[attr-defined]
                        packet,
                        buf[mac_start:position],
                    )
                ):
                    self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")  # type: ignore[attr-defined]
                    return
                # Conch's packet[5:-paddingLen]: empty for a zero padding.
                stop = len(packet) - padding if padding else 5
                if self.incomingCompression:  # type: ignore[attr-defined]
                    try:
                        payload = self.incomingCompression.decompress(packet[5:stop])  # type: ignore[attr-defined]
                    except Exception:
                        self._log.failure("Error decompressing payload")  # type: ignore[attr-defined]
                        self.sendDisconnect(  # type: ignore[attr-defined]
                            transport.DISCONNECT_COMPRESSION_ERROR, b"compression error"
                        )
                        return
                    self.incomingPacketSequence += 1  # type: ignore[attr-defined]
                    if not payload:
                        return
                    message, payload = payload[0], payload[1:]
                else:
                    self.incomingPacketSequence += 1  # type: ignore[attr-defined]
                    if stop <= 5:
                        # Conch's loop stops at an empty payload too.
                        return
                    message, payload = packet[5], packet[6:stop]
                self.dispatchMessage(message, payload)  # type: ignore[attr-defined]
        finally:
            # Whatever was not consumed waits for more data, as in Conch.
            if position < end:
                self.buf = buf[position:] if position else buf


def send_now(transport: object) -> None:
    """
    Hand what was written to a plain TCP transport to the kernel now.

    Twisted sends written bytes when the reactor next polls the socket,
    after the rest of this turn's work.  For the few writes a person waits
    on -- an approval request, the Enter released by an approval -- that
    turn is a fair part of the gateway's latency, so those call this.

    Only a connected C{tcp.Connection} is flushed, and only when that cannot
    re-enter anyone: not while it is closing (the reactor must see the
    close), and not with a producer registered (a completed write may call
    its C{resumeProducing}).  Anything else -- TLS, in-memory test
    transports -- is left to the reactor.  A send that fails leaves the
    socket registered for writing, so the reactor's own C{doWrite} meets the
    same error and closes the connection the usual way.
    """
    if not isinstance(transport, tcp.Connection):
        return
    if not transport.connected or transport.disconnecting or transport.producer is not None:
        return
    transport.doWrite()
