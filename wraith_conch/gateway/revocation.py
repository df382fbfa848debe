"""
Revoked operator keys and certificates (C{--revoked-keys}), as sshd's
C{RevokedKeys}: either a text file of public keys, one a line, or a binary
KRL as C{ssh-keygen -k} writes it (OpenSSH's PROTOCOL.krl).

A KRL revokes plain keys (explicitly, or by SHA1/SHA256 hash of the key
blob) and certificates by serial (lists, ranges, bitmaps) or key ID, per
CA or for any CA.  As in sshd, a certificate is refused when its own key,
its CA's key, or the certificate itself (serial, key ID) is revoked;
serial 0 is never revoked by serial.

Where OpenSSH would refuse to load a file, so does this parser, and more
strictly (fail closed): unknown sections, trailing bytes, critical
extensions, and KRL signatures (which OpenSSH >= 9.4 refuses too) are all
a L{RevocationError}.  The parsing is pure; L{RevokedKeysFile} reads the
file and re-reads it when it changes.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import attrs
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    load_ssh_public_identity,
)

from wraith_conch.watchedfile import WatchedFile

__all__ = [
    "KRL_MAGIC",
    "RevocationError",
    "RevocationList",
    "RevokedCertificates",
    "RevokedKeysFile",
    "load_revoked_keys",
    "parse_key_list",
    "parse_krl",
    "parse_revoked_keys",
]

KRL_MAGIC = b"SSHKRL\n\0"
_KRL_FORMAT_VERSION = 1

_SECTION_CERTIFICATES = 1
_SECTION_EXPLICIT_KEY = 2
_SECTION_FINGERPRINT_SHA1 = 3
_SECTION_SIGNATURE = 4
_SECTION_FINGERPRINT_SHA256 = 5
_SECTION_EXTENSION = 255

_CERT_SERIAL_LIST = 0x20
_CERT_SERIAL_RANGE = 0x21
_CERT_SERIAL_BITMAP = 0x22
_CERT_KEY_ID = 0x23
_CERT_EXTENSION = 0x39

# sshbuf's SSHBUF_MAX_BIGNUM (16384 bits) plus a leading zero byte.
_MAX_BITMAP_BYTES = 16384 // 8 + 1

_CERT_SUFFIX = b"-cert-v01@openssh.com"


class RevocationError(Exception):
    """The revocation file cannot be used; C{str()} is one line."""


@attrs.frozen
class RevokedCertificates:
    """What one KRL certificate section revokes, for one CA (or any CA)."""

    #: The CA's key blob; C{b""} for a section that applies to every CA.
    ca_blob: bytes = attrs.field(repr=False)
    #: Inclusive C{(lo, hi)} serial ranges (lists become one-serial ranges).
    serial_ranges: tuple[tuple[int, int], ...] = ()
    #: C{(offset, bitmap)}: bit N of C{bitmap} revokes serial C{offset + N}.
    serial_bitmaps: tuple[tuple[int, int], ...] = ()
    key_ids: frozenset[bytes] = frozenset()

    def revokes(self, serial: int, key_id: bytes) -> bool:
        if key_id in self.key_ids:
            return True
        if serial == 0:
            # The default when the CA gives none: never revoked by serial.
            return False
        if any(lo <= serial <= hi for lo, hi in self.serial_ranges):
            return True
        return any(
            serial >= offset and (bitmap >> (serial - offset)) & 1
            for offset, bitmap in self.serial_bitmaps
        )


@attrs.frozen
class RevocationList:
    """Everything revoked; empty means nothing is."""

    key_blobs: frozenset[bytes] = frozenset()
    sha1: frozenset[bytes] = frozenset()
    sha256: frozenset[bytes] = frozenset()
    certificates: tuple[RevokedCertificates, ...] = ()

    def key_revoked(self, key_blob: bytes) -> bool:
        """Whether the plain public key with this wire blob is revoked."""
        return (
            key_blob in self.key_blobs
            or hashlib.sha1(key_blob).digest() in self.sha1
            or hashlib.sha256(key_blob).digest() in self.sha256
        )

    def certificate_revoked_reason(
        self, key_blob: bytes, ca_blob: bytes, serial: int, key_id: bytes
    ) -> str | None:
        """
        Why a certificate (its plain key's blob, its CA's blob, serial and
        key ID) is revoked, or None if it is not.
        """
        if self.key_revoked(key_blob):
            return "the certificate's key is revoked"
        if self.key_revoked(ca_blob):
            return "the certificate's CA key is revoked"
        for section in self.certificates:
            if section.ca_blob in (b"", ca_blob) and section.revokes(serial, key_id):
                return "the certificate is revoked (serial or key ID)"
        return None


class _Reader:
    """SSH wire fields from a byte string; L{RevocationError} when short."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def done(self) -> bool:
        return self._pos == len(self._data)

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise RevocationError(f"KRL is truncated in {self._what}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def byte(self) -> int:
        return self._take(1)[0]

    def uint32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def uint64(self) -> int:
        return struct.unpack(">Q", self._take(8))[0]

    def string(self) -> bytes:
        return self._take(self.uint32())

    def boolean(self) -> bool:
        return self.byte() != 0


def parse_krl(data: bytes) -> RevocationList:
    """
    Parse a binary KRL (PROTOCOL.krl); L{RevocationError} for anything
    malformed, unknown or unsupported.
    """
    if not data.startswith(KRL_MAGIC):
        raise RevocationError("not a KRL (bad magic)")
    r = _Reader(data[len(KRL_MAGIC) :], "the header")
    version = r.uint32()
    if version != _KRL_FORMAT_VERSION:
        raise RevocationError(f"unsupported KRL format version {version}")
    r.uint64()  # krl_version
    r.uint64()  # generated_date
    r.uint64()  # flags: none defined
    r.string()  # reserved
    _cstring(r.string(), "comment")

    key_blobs: set[bytes] = set()
    sha1: set[bytes] = set()
    sha256: set[bytes] = set()
    certificates: list[RevokedCertificates] = []
    while not r.done():
        section_type = r.byte()
        if section_type == _SECTION_SIGNATURE:
            raise RevocationError("signed KRLs are not supported (nor by OpenSSH >= 9.4)")
        body = r.string()
        if section_type == _SECTION_CERTIFICATES:
            certificates.append(_parse_certificate_section(body))
        elif section_type == _SECTION_EXPLICIT_KEY:
            blobs = _blob_list(body, 0, "explicit key section")
            for blob in blobs:
                _check_plain_key_blob(blob)
            key_blobs.update(blobs)
        elif section_type == _SECTION_FINGERPRINT_SHA1:
            sha1.update(_blob_list(body, 20, "SHA1 section"))
        elif section_type == _SECTION_FINGERPRINT_SHA256:
            sha256.update(_blob_list(body, 32, "SHA256 section"))
        elif section_type == _SECTION_EXTENSION:
            _extension(body, "KRL extension")
        else:
            raise RevocationError(f"unknown KRL section type {section_type}")
    return RevocationList(
        key_blobs=frozenset(key_blobs),
        sha1=frozenset(sha1),
        sha256=frozenset(sha256),
        certificates=tuple(certificates),
    )


def _cstring(value: bytes, what: str) -> bytes:
    if b"\0" in value:
        raise RevocationError(f"KRL {what} contains a NUL byte")
    return value


def _extension(body: bytes, what: str) -> None:
    """Skip a non-critical extension; a critical one cannot be honoured."""
    r = _Reader(body, what)
    name = r.string()
    critical = r.boolean()
    r.string()
    if not r.done():
        raise RevocationError(f"{what} has trailing data")
    if critical:
        shown = name[:64].decode("ascii", "backslashreplace")
        raise RevocationError(f"unsupported critical {what} {shown!r}")


def _blob_list(body: bytes, size: int, what: str) -> list[bytes]:
    r = _Reader(body, what)
    blobs = []
    while not r.done():
        blob = r.string()
        if size and len(blob) != size:
            raise RevocationError(f"KRL {what} has a hash of {len(blob)} bytes, not {size}")
        if not blob:
            raise RevocationError(f"KRL {what} has an empty entry")
        blobs.append(blob)
    if not blobs:
        raise RevocationError(f"KRL {what} is empty")
    return blobs


def _check_plain_key_blob(blob: bytes) -> None:
    r = _Reader(blob, "explicit key section")
    name = r.string()
    if name.endswith(_CERT_SUFFIX):
        raise RevocationError("KRL explicit key section holds a certificate, not a key")


def _parse_certificate_section(body: bytes) -> RevokedCertificates:
    r = _Reader(body, "certificate section")
    ca_blob = r.string()
    if ca_blob:
        _check_plain_key_blob(ca_blob)
    r.string()  # reserved
    ranges: list[tuple[int, int]] = []
    bitmaps: list[tuple[int, int]] = []
    key_ids: set[bytes] = set()
    while not r.done():
        sub_type = r.byte()
        sub = _Reader(r.string(), "certificate subsection")
        if sub_type == _CERT_SERIAL_LIST:
            while not sub.done():
                serial = sub.uint64()
                _check_serial(serial)
                ranges.append((serial, serial))
        elif sub_type == _CERT_SERIAL_RANGE:
            lo, hi = sub.uint64(), sub.uint64()
            _check_serial(lo)
            if hi < lo:
                raise RevocationError(f"KRL serial range {lo}-{hi} is reversed")
            ranges.append((lo, hi))
        elif sub_type == _CERT_SERIAL_BITMAP:
            offset = sub.uint64()
            bitmap = _mpint(sub.string())
            if bitmap:
                if offset + bitmap.bit_length() - 1 >= 2**64:
                    raise RevocationError("KRL serial bitmap runs past 2^64")
                if offset == 0 and bitmap & 1:
                    _check_serial(0)
                bitmaps.append((offset, bitmap))
        elif sub_type == _CERT_KEY_ID:
            if sub.done():
                raise RevocationError("KRL key ID subsection is empty")
            while not sub.done():
                key_ids.add(_cstring(sub.string(), "key ID"))
        elif sub_type == _CERT_EXTENSION:
            _extension(_rest(sub), "KRL certificate extension")
        else:
            raise RevocationError(f"unknown KRL certificate subsection type {sub_type:#x}")
        if not sub.done():
            raise RevocationError(f"KRL certificate subsection {sub_type:#x} has trailing data")
    return RevokedCertificates(
        ca_blob=ca_blob,
        serial_ranges=tuple(ranges),
        serial_bitmaps=tuple(bitmaps),
        key_ids=frozenset(key_ids),
    )


def _rest(reader: _Reader) -> bytes:
    """Everything left in C{reader} (an extension subsection's body)."""
    chunk = reader._data[reader._pos :]
    reader._pos = len(reader._data)
    return chunk


def _check_serial(serial: int) -> None:
    if serial == 0:
        # ssh-keygen refuses to revoke serial 0 (the "no serial" default).
        raise RevocationError("KRL revokes serial 0, which is not a serial")


def _mpint(value: bytes) -> int:
    """An SSH mpint that must be non-negative and of sane size."""
    if len(value) > _MAX_BITMAP_BYTES:
        raise RevocationError("KRL serial bitmap is too large")
    if value and value[0] & 0x80:
        raise RevocationError("KRL serial bitmap is negative")
    return int.from_bytes(value, "big")


def parse_key_list(data: bytes, source: str) -> RevocationList:
    """
    A text list of revoked public keys: one a line, as C{type base64
    [comment]} (authorized_keys options before the type are ignored),
    blank lines and C{#} comments ignored.  A certificate line revokes the
    certified key.  Any other line is an error naming C{source:lineno}.
    """
    blobs: set[bytes] = set()
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.rstrip(b"\r").strip(b" \t")
        if not line or line.startswith(b"#"):
            continue
        try:
            blobs.add(_key_line_blob(line))
        except RevocationError as e:
            raise RevocationError(f"{source}:{lineno}: {e}") from None
    return RevocationList(key_blobs=frozenset(blobs))


def _key_line_blob(line: bytes) -> bytes:
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if not _looks_like_key_type(word):
            continue
        try:
            blob = base64.b64decode(words[i + 1], validate=True)
        except ValueError:
            continue
        if len(blob) < 4 or blob[4 : 4 + struct.unpack(">I", blob[:4])[0]] != word:
            continue
        return _plain_key_blob(word, blob)
    raise RevocationError("not a public key line: expected [options] key-type base64 [comment]")


def _looks_like_key_type(word: bytes) -> bool:
    return word.startswith((b"ssh-", b"ecdsa-", b"sk-", b"rsa-"))


def _plain_key_blob(type_name: bytes, blob: bytes) -> bytes:
    """The key's wire blob, checked; for a certificate, its certified key's."""
    text = type_name + b" " + base64.b64encode(blob)
    try:
        loaded = load_ssh_public_identity(text)
    except (ValueError, TypeError):
        if type_name.startswith(b"sk-") and not type_name.endswith(_CERT_SUFFIX):
            # cryptography cannot load security-key keys; their blob is
            # what a client offers, so it is compared as it is.
            return blob
        raise RevocationError(f"bad {type_name.decode('ascii', 'replace')} key data") from None
    key = loaded.public_key() if isinstance(loaded, SSHCertificate) else loaded
    return base64.b64decode(key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])


def parse_revoked_keys(data: bytes, source: str) -> RevocationList:
    """A KRL if it starts with the KRL magic, else a text key list (as sshd)."""
    if data.startswith(KRL_MAGIC):
        try:
            return parse_krl(data)
        except RevocationError as e:
            raise RevocationError(f"{source}: {e}") from None
    return parse_key_list(data, source)


def load_revoked_keys(path: str) -> RevocationList:
    """Read and parse the revocation file at C{path}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RevocationError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_revoked_keys(data, path)


class RevokedKeysFile:
    """
    The C{--revoked-keys} file, loaded at start-up (errors are the
    caller's C{ConfigError}) and re-read when it changes
    (L{wraith_conch.watchedfile.WatchedFile}), so a new KRL takes effect
    without a restart as with sshd.  A file that later becomes unreadable
    or malformed refuses every key until it is fixed (fail closed), and
    says so in the log.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: WatchedFile[RevocationList | None] = WatchedFile(
            path,
            load_revoked_keys,
            flag="--revoked-keys",
            errors=(RevocationError,),
            unusable=None,
            consequence="refusing every key",
        )

    def current(self) -> RevocationList | None:
        """The revocation list in force; None means refuse every key."""
        return self._file.current()

    def key_revoked_reason(self, key_blob: bytes) -> str | None:
        revoked = self.current()
        if revoked is None:
            return "the revoked-keys file is unusable"
        return "the key is revoked" if revoked.key_revoked(key_blob) else None

    def certificate_revoked_reason(
        self, key_blob: bytes, ca_blob: bytes, serial: int, key_id: bytes
    ) -> str | None:
        revoked = self.current()
        if revoked is None:
            return "the revoked-keys file is unusable"
        return revoked.certificate_revoked_reason(key_blob, ca_blob, serial, key_id)
