"""
The fast packet path (L{wraith_conch.fastpath}) against Conch's own: the
same bytes on the wire for every cipher and MAC Conch offers, the same
packets parsed however the bytes are split, bad MACs and lengths refused;
then real OpenSSH through a gateway using it on both legs.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct

from twisted.conch.ssh import connection, transport
from twisted.conch.ssh.transport import SSHCiphers
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from tests.gatewayharness import Gateway
from tests.operator import spawn_ssh
from tests.sshd import TargetSSHD, make_basedir
from wraith_conch.fastpath import FastPacketTransportMixin, FastSSHCiphers, send_now
from wraith_conch.relay import RelayConnection
from wraith_conch.testing import ScriptedApprover, approve_all_except

MACS = [name for name in SSHCiphers.macMap if name != b"none"]
# What Conch can offer with this cryptography (it drops 3des-ctr the same way).
CIPHERS = [name for name in transport._getSupportedCiphers() if name != b"none"]


class _Wire:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.disconnected = False

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def loseConnection(self) -> None:
        self.disconnected = True

    def value(self) -> bytes:
        return b"".join(self.chunks)


class _Recording:
    """Records dispatched messages and disconnects instead of acting on them."""

    def dispatchMessage(self, messageNum, payload) -> None:
        self.received.append((messageNum, bytes(payload)))
        if self.on_message is not None:
            self.on_message(messageNum, payload)

    def sendDisconnect(self, reason, desc) -> None:
        self.disconnects.append((reason, desc))


class PlainTransport(_Recording, transport.SSHServerTransport):
    pass


class FastTransport(_Recording, FastPacketTransportMixin, transport.SSHServerTransport):
    pass


KEYS = [bytes(range(i, i + 64)) for i in range(0, 192, 32)]
# (outIV, outKey, inIV, inKey, outInteg, inInteg) and the mirror image.
ONE_SIDE = (KEYS[0], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
OTHER_SIDE = (KEYS[2], KEYS[3], KEYS[0], KEYS[1], KEYS[5], KEYS[4])


def make_transport(cls, ciphers_cls, cipher: bytes, mac: bytes, keys=ONE_SIDE):
    t = cls()
    t.transport = _Wire()
    t.gotVersion = True
    t.buf = b""
    t._keyExchangeState = t._KEY_EXCHANGE_NONE
    t.outgoingCompression = t.incomingCompression = None
    t.incomingPacketSequence = t.outgoingPacketSequence = 0
    t.received = []
    t.disconnects = []
    t.on_message = None
    ciphers = ciphers_cls(cipher, cipher, mac, mac)
    ciphers.setKeys(*keys)
    t.currentEncryptions = ciphers
    return t


def sample_payloads(count: int = 12) -> list[tuple[int, bytes]]:
    rng = random.Random(7)
    sizes = [0, 1, 3, 15, 16, 17, 100, 1000, 4095, 32768, 32777, 65536]
    return [(94 if i % 2 else 20 + i, rng.randbytes(sizes[i % len(sizes)])) for i in range(count)]


class FastCiphersTests(unittest.SynchronousTestCase):
    def test_macs_identical_to_conch(self):
        data = os.urandom(5000)
        for mac in MACS:
            plain = SSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            fast = FastSSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            plain.setKeys(*ONE_SIDE)
            fast.setKeys(*ONE_SIDE)
            fast_peer = FastSSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            fast_peer.setKeys(*OTHER_SIDE)
            plain_peer = SSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            plain_peer.setKeys(*OTHER_SIDE)
            for seq in (0, 1, 255, 2**31, 2**32 - 1):
                for chunk in (b"", data[:33], data):
                    expected = plain.makeMAC(seq, chunk)
                    self.assertEqual(fast.makeMAC(seq, chunk), expected, mac)
                    self.assertTrue(fast_peer.verify(seq, chunk, expected))
                    self.assertTrue(plain_peer.verify(seq, chunk, fast.makeMAC(seq, chunk)))

    def test_bad_mac_rejected(self):
        for mac in MACS:
            fast = FastSSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            fast.setKeys(*OTHER_SIDE)
            good = SSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            good.setKeys(*ONE_SIDE)
            tag = good.makeMAC(3, b"payload")
            self.assertTrue(fast.verify(3, b"payload", tag))
            flipped = bytes([tag[0] ^ 1]) + tag[1:]
            self.assertFalse(fast.verify(3, b"payload", flipped))
            self.assertFalse(fast.verify(4, b"payload", tag))
            self.assertFalse(fast.verify(3, b"payloaD", tag))
            self.assertFalse(fast.verify(3, b"payload", tag[:-1]))
            self.assertFalse(fast.verify(3, b"payload", b""))

    def test_no_mac(self):
        fast = FastSSHCiphers(b"none", b"none", b"none", b"none")
        fast.setKeys(b"", b"", b"", b"", b"", b"")
        self.assertEqual(fast.makeMAC(1, b"x"), b"")
        self.assertTrue(fast.verify(1, b"x", b""))
        self.assertFalse(fast.verify(1, b"x", b"\x00"))


class FastPacketTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        # Deterministic padding on both paths, so that the bytes compare.
        self.patch(transport.randbytes, "secureRandom", lambda n: b"\xa5" * n)
        self.patch(FastPacketTransportMixin, "_fastpath_padding", lambda self, n: b"\xa5" * n)

    def test_sent_bytes_identical_to_conch(self):
        for cipher in CIPHERS:
            for mac in [*MACS, b"none"]:
                plain = make_transport(PlainTransport, SSHCiphers, cipher, mac)
                fast = make_transport(FastTransport, FastSSHCiphers, cipher, mac)
                for message, payload in sample_payloads():
                    plain.sendPacket(message, payload)
                    half = len(payload) // 2
                    fast.send_packet_parts(message, (payload[:half], payload[half:]))
                    fast.sendPacket(message, payload)
                    plain.sendPacket(message, payload)
                self.assertEqual(fast.transport.value(), plain.transport.value(), (cipher, mac))
                self.assertEqual(fast.outgoingPacketSequence, plain.outgoingPacketSequence)

    def encoded(self, cipher: bytes, mac: bytes, payloads) -> bytes:
        sender = make_transport(PlainTransport, SSHCiphers, cipher, mac, keys=OTHER_SIDE)
        for message, payload in payloads:
            sender.sendPacket(message, payload)
        return sender.transport.value()

    def test_parses_what_conch_sends_however_split(self):
        rng = random.Random(11)
        payloads = sample_payloads()
        for cipher in (b"aes128-ctr", b"aes256-cbc", b"3des-cbc"):
            for mac in (b"hmac-sha2-256", b"hmac-sha1", b"hmac-md5", b"hmac-sha2-512"):
                wire = self.encoded(cipher, mac, payloads)
                for sizes in ("whole", "bytes", "random"):
                    fast = make_transport(FastTransport, FastSSHCiphers, cipher, mac)
                    if sizes == "whole":
                        fast.dataReceived(wire)
                    elif sizes == "bytes" and mac == b"hmac-sha2-256":
                        for i in range(len(wire)):
                            fast.dataReceived(wire[i : i + 1])
                    else:
                        i = 0
                        while i < len(wire):
                            n = rng.randint(1, 70000)
                            fast.dataReceived(wire[i : i + n])
                            i += n
                    self.assertEqual(fast.received, payloads, (cipher, mac, sizes))
                    self.assertEqual(fast.disconnects, [])
                    self.assertEqual(fast.buf, b"")
                    self.assertEqual(fast.incomingPacketSequence, len(payloads))

    def test_partial_packet_kept(self):
        wire = self.encoded(b"aes128-ctr", b"hmac-sha2-256", [(94, b"x" * 1000)] * 2)
        fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
        fast.dataReceived(wire[:-10])
        self.assertEqual(len(fast.received), 1)
        self.assertTrue(fast.buf)
        fast.dataReceived(wire[-10:])
        self.assertEqual(len(fast.received), 2)
        self.assertEqual(fast.buf, b"")

    def test_bad_mac_disconnects_before_dispatch(self):
        wire = bytearray(self.encoded(b"aes128-ctr", b"hmac-sha2-256", [(94, b"a"), (94, b"b")]))
        wire[-1] ^= 1
        fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
        fast.dataReceived(bytes(wire))
        self.assertEqual(fast.received, [(94, b"a")])
        self.assertEqual(fast.disconnects, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")])

    def test_tampered_ciphertext_disconnects(self):
        wire = bytearray(self.encoded(b"aes128-ctr", b"hmac-sha2-256", [(94, b"a" * 64)]))
        wire[20] ^= 0x40
        fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
        fast.dataReceived(bytes(wire))
        self.assertEqual(fast.received, [])
        self.assertEqual(fast.disconnects, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")])

    def test_oversized_packet_length_disconnects(self):
        fast = make_transport(FastTransport, FastSSHCiphers, b"none", b"none")
        fast.dataReceived(struct.pack("!LB", 1048577, 4) + b"\x00" * 11)
        self.assertEqual(fast.received, [])
        self.assertEqual(
            fast.disconnects, [(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length 1048577")]
        )

    def test_bad_block_multiple_disconnects(self):
        fast = make_transport(FastTransport, FastSSHCiphers, b"none", b"none")
        fast.dataReceived(struct.pack("!LB", 13, 4) + b"\x00" * 20)
        self.assertEqual(fast.received, [])
        [(reason, _)] = fast.disconnects
        self.assertEqual(reason, transport.DISCONNECT_PROTOCOL_ERROR)

    def test_reentrant_data_parsed_in_order(self):
        payloads = [(94, b"one"), (94, b"two")]
        later = self.encoded(b"aes128-ctr", b"hmac-sha2-256", payloads + [(94, b"three")])
        first_two = self.encoded(b"aes128-ctr", b"hmac-sha2-256", payloads)
        third = later[len(first_two) :]
        fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
        fed = []

        def on_message(message, payload):
            # An in-memory peer answering at once: data arrives mid-dispatch.
            if not fed:
                fed.append(True)
                fast.dataReceived(third)
                self.assertEqual(len(fast.received), 1)

        fast.on_message = on_message
        fast.dataReceived(first_two)
        self.assertEqual(fast.received, payloads + [(94, b"three")])

    def test_blocked_during_key_exchange(self):
        fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
        fast._keyExchangeState = fast._KEY_EXCHANGE_REQUESTED
        fast._blockedByKeyExchange = []
        fast.send_packet_parts(94, (b"ab", b"cd"))
        self.assertEqual(fast._blockedByKeyExchange, [(94, b"abcd")])
        self.assertEqual(fast.transport.value(), b"")

    def test_relay_channel_data_identical(self):
        """RelayConnection's sendData/ssh_CHANNEL_DATA match Conch's."""

        class Channel:
            localClosed = False
            localWindowLeft = localWindowSize = 1 << 20
            localMaxPacket = 1 << 16

            def __init__(self) -> None:
                self.data: list[bytes] = []

            def dataReceived(self, data: bytes) -> None:
                self.data.append(data)

        for conn_cls in (RelayConnection, connection.SSHConnection):
            fast = make_transport(FastTransport, FastSSHCiphers, b"aes128-ctr", b"hmac-sha2-256")
            conn = conn_cls()
            conn.transport = fast
            channel = Channel()
            conn.channels[5] = channel
            conn.channelsToRemoteChannel[channel] = 9
            conn.sendData(channel, b"hello" * 100)
            conn.ssh_CHANNEL_DATA(struct.pack(">LL", 5, 3) + b"abc")
            self.assertEqual(channel.data, [b"abc"])
            if conn_cls is RelayConnection:
                ours = fast.transport.value()
            else:
                self.assertEqual(fast.transport.value(), ours)


class _RestrictedSSHD(TargetSSHD):
    """A target sshd that offers one cipher and one MAC."""

    def __init__(self, basedir: str, *, cipher: str, mac: str) -> None:
        super().__init__(basedir)
        self._only = [f"Ciphers {cipher}", f"MACs {mac}"]

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_path, "a", encoding="ascii") as f:
            f.write("\n".join(self._only) + "\n")


class OpenSSHInteropTests(unittest.TestCase):
    """Real OpenSSH on both legs, bulk data both ways, several algorithms."""

    timeout = 240

    def start(self, cipher: str, mac: str) -> Gateway:
        basedir = make_basedir()
        self.addCleanup(__import__("shutil").rmtree, basedir, ignore_errors=True)
        sshd = _RestrictedSSHD(basedir, cipher=cipher, mac=mac)
        self.addCleanup(sshd.stop)
        sshd.start()
        self.sshd = sshd
        return Gateway(self, sshd, ScriptedApprover(approve_all_except("DENYME")))

    @defer.inlineCallbacks
    def check(self, upstream: tuple[str, str], operator: tuple[str, str]):
        keyed: list[tuple[bytes, bytes]] = []
        original = FastSSHCiphers.setKeys

        def setKeys(ciphers, *keys):
            keyed.append((ciphers.outCipType, ciphers.outMACType))
            return original(ciphers, *keys)

        self.patch(FastSSHCiphers, "setKeys", setKeys)
        gateway = self.start(*upstream)
        data = os.urandom(3_000_000)
        argv = gateway.ssh_argv(
            "sha256sum; head -c 5000000 /dev/urandom | tee /tmp/.x-$$ | sha256sum >&2;"
            " cat /tmp/.x-$$; rm -f /tmp/.x-$$",
            extra=["-c", operator[0], "-m", operator[1]],
        )
        code, out, err = yield spawn_ssh(reactor, argv, stdin=data, timeout=120)
        self.assertEqual(code, 0, err)
        first_line, _, rest = out.partition(b"\n")
        self.assertEqual(first_line.split()[0].decode(), hashlib.sha256(data).hexdigest())
        self.assertEqual(len(rest), 5_000_000)
        self.assertIn(hashlib.sha256(rest).hexdigest().encode(), err)
        # Both legs ran on the fast path, with the algorithms asked for.
        wanted = {tuple(name.encode() for name in pair) for pair in (upstream, operator)}
        self.assertEqual(set(keyed), wanted)

    def test_aes128_ctr_hmac_sha2_256(self):
        return self.check(("aes128-ctr", "hmac-sha2-256"), ("aes128-ctr", "hmac-sha2-256"))

    def test_aes256_ctr_hmac_sha2_512(self):
        return self.check(("aes256-ctr", "hmac-sha2-512"), ("aes192-ctr", "hmac-sha1"))

    def test_aes192_ctr_hmac_sha1(self):
        return self.check(("aes192-ctr", "hmac-sha1"), ("aes256-ctr", "hmac-sha2-512"))


class SendNowTests(unittest.TestCase):
    """
    L{send_now} hands written bytes to the kernel before the reactor's next
    turn: a plain blocking socket at the other end has them at once.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(self.listener.close)
        port = self.listener.getsockname()[1]
        connected = defer.Deferred()

        class Client(Protocol):
            def connectionMade(self):
                connected.callback(self)

        factory = ClientFactory.forProtocol(Client)
        self.connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=5)
        self.addCleanup(self.connector.disconnect)
        self.client = yield connected
        self.peer, _ = self.listener.accept()
        self.addCleanup(self.peer.close)
        self.peer.settimeout(0.5)

    def received_without_the_reactor(self) -> bytes:
        try:
            return self.peer.recv(100)
        except TimeoutError:
            return b""

    def test_written_bytes_leave_at_once(self):
        self.client.transport.write(b"approve me")
        send_now(self.client.transport)
        self.assertEqual(self.received_without_the_reactor(), b"approve me")

    def test_without_it_they_wait_for_the_reactor(self):
        # The control: what send_now saves.
        self.client.transport.write(b"later")
        self.assertEqual(self.received_without_the_reactor(), b"")

    def test_a_closing_connection_is_left_to_the_reactor(self):
        self.client.transport.write(b"last words")
        self.client.transport.loseConnection()
        send_now(self.client.transport)
        self.assertEqual(self.received_without_the_reactor(), b"")

    def test_a_connection_with_a_producer_is_left_to_the_reactor(self):
        @implementer(IPushProducer)
        class Producer:
            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        self.client.transport.registerProducer(Producer(), True)
        self.addCleanup(self.client.transport.unregisterProducer)
        self.client.transport.write(b"flow controlled")
        send_now(self.client.transport)
        self.assertEqual(self.received_without_the_reactor(), b"")

    def test_other_transports_are_left_alone(self):
        memory = StringTransport()
        memory.write(b"x")
        send_now(memory)
        send_now(None)
        self.assertEqual(memory.value(), b"x")
