"""
OpenSSH user certificates (C{*-cert-v01@openssh.com}) for operator login.

Conch does not understand certificates, and C{cryptography}'s
L{SSHCertificate.verify_cert_signature} checks only the CA's signature, so
everything C{sshd} checks besides is done here, as C{sshd(8)} and
PROTOCOL.certkeys describe it:

  - the CA that signed it is trusted: listed in C{--trusted-user-ca-keys}
    (sshd's C{TrustedUserCAKeys}) or on a C{cert-authority} line of
    C{--authorized-keys}, whose own options (C{from=}, C{no-pty},
    C{principals=}, ...) then apply too;
  - it is a I{user} certificate, inside its validity window (with
    L{DEFAULT_CLOCK_SKEW} either way), and the login user is one of its
    principals;
  - its critical options are understood (C{force-command},
    C{source-address}): any other refuses the login, as the format demands;
  - its extensions grant what the session may do: no C{permit-pty}, no PTY;
    no C{permit-port-forwarding}, no forwarding (mapped onto L{KeyOptions}).

Two deliberate differences from sshd, both stricter: a certificate without
principals never logs in (sshd accepts one through a C{cert-authority}
line), and the login user must be among the certificate's principals even
when a C{cert-authority} line has C{principals=} (sshd's per-user files let
that list stand for the user; the gateway's file may be shared by all).

Everything here is pure: blobs and values in, values or
L{CertificateError} out.  Only L{load_trusted_ca_keys} reads a file.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from collections.abc import Iterable
from datetime import datetime, timedelta

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)
from twisted.conch.ssh import keys

from wraith_conch.gateway.authorized_keys import (
    AuthorizedKey,
    AuthorizedKeysError,
    KeyOptions,
    client_ip,
    parse_authorized_keys,
)

__all__ = [
    "CERT_SUFFIX",
    "DEFAULT_CLOCK_SKEW",
    "Certificate",
    "CertificateError",
    "TrustedCAKeysError",
    "authorize_certificate",
    "check_certificate",
    "describe_key_blob",
    "is_certificate_blob",
    "load_trusted_ca_keys",
    "merge_options",
    "parse_certificate",
    "parse_trusted_ca_keys",
    "verify_userauth_signature",
]

CERT_SUFFIX = "-cert-v01@openssh.com"

#: How far the gateway's clock may be off the CA's, either way (sshd has
#: none; a minute spares operators a refusal for a freshly issued cert).
DEFAULT_CLOCK_SKEW = timedelta(seconds=60)

#: valid_before of a certificate that never expires (C{ssh-keygen -V forever}).
_FOREVER = 2**64 - 1

# Certificate types understood, with the number of key fields between the
# nonce and the serial (PROTOCOL.certkeys).  sk-* and DSA are not: sk needs
# the FIDO flags Conch cannot check, DSA is too weak.
_CERT_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "ssh-rsa-cert-v01@openssh.com": 2,
}

# The algorithm name a client may put in its userauth request for a
# certificate: the certificate type it must carry, and the one signature
# algorithm its signature must then use.  ssh-rsa-cert-v01 (SHA-1
# signatures) is left out, as OpenSSH >= 8.8 leaves it out.
_USERAUTH_ALGORITHMS = {
    b"ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519-cert-v01@openssh.com", b"ssh-ed25519"),
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        b"ecdsa-sha2-nistp256",
    ),
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        b"ecdsa-sha2-nistp384",
    ),
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        b"ecdsa-sha2-nistp521",
    ),
    b"rsa-sha2-256-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", b"rsa-sha2-256"),
    b"rsa-sha2-512-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", b"rsa-sha2-512"),
}

# CA signature algorithms accepted, by CA key type: sshd's default
# CASignatureAlgorithms (no ssh-rsa, i.e. no SHA-1).
_CA_SIGNATURE_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-256", "rsa-sha2-512"),
}

_MIN_RSA_BITS = 1024

# Extensions that lift a restriction, mapped to the KeyOptions field that
# is set when the extension is absent.
_PERMISSIONS = {
    "permit-pty": "no_pty",
    "permit-port-forwarding": "no_port_forwarding",
    "permit-agent-forwarding": "no_agent_forwarding",
    "permit-X11-forwarding": "no_x11_forwarding",
    "permit-user-rc": "no_user_rc",
}


class CertificateError(Exception):
    """
    A certificate that cannot log in; C{str()} is a one-line reason fit
    for the log (never key material).
    """


class TrustedCAKeysError(Exception):
    """The C{--trusted-user-ca-keys} file cannot be used; C{str()} is one line."""


@attrs.frozen
class Certificate:
    """A parsed OpenSSH certificate whose CA signature verified."""

    #: The whole certificate wire blob, as the client sent it.
    blob: bytes = attrs.field(repr=False)
    #: C{ssh-ed25519-cert-v01@openssh.com} and the like.
    key_type: str
    #: Wire blob of the certified (plain) public key.
    key_blob: bytes = attrs.field(repr=False)
    #: Wire blob of the CA's public key.
    ca_blob: bytes = attrs.field(repr=False)
    ca_signature_algorithm: str
    serial: int
    user_certificate: bool
    #: The key ID for people: UTF-8, undecodable bytes escaped.
    key_id: str
    principals: tuple[str, ...]
    #: Seconds since the epoch, as in the certificate (C{_FOREVER}: no end).
    valid_after: int
    valid_before: int
    critical_options: tuple[tuple[str, bytes], ...]
    extensions: frozenset[str]
    #: The key ID exactly as signed (what a KRL revokes).
    key_id_bytes: bytes = b""

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint of the certified key, as C{ssh-keygen -l} shows."""
        return _fingerprint(self.key_blob)

    @property
    def ca_fingerprint(self) -> str:
        return _fingerprint(self.ca_blob)


def _fingerprint(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def blob_type(blob: bytes) -> str | None:
    """The key type name at the start of an SSH key blob, or None."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def is_certificate_blob(blob: bytes) -> bool:
    """Whether a public key blob claims to be an OpenSSH certificate."""
    name = blob_type(blob)
    return name is not None and name.endswith(CERT_SUFFIX)


def _plain_blob(public_key) -> bytes:
    text = public_key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    return base64.b64decode(text.split()[1])


def _key_type_name(public_key) -> str | None:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ssh-ed25519"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "ssh-rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {
            "secp256r1": "ecdsa-sha2-nistp256",
            "secp384r1": "ecdsa-sha2-nistp384",
            "secp521r1": "ecdsa-sha2-nistp521",
        }.get(public_key.curve.name)
    return None


def _read_string(blob: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(blob):
        raise CertificateError("certificate is truncated")
    (length,) = struct.unpack(">I", blob[pos : pos + 4])
    end = pos + 4 + length
    if end > len(blob):
        raise CertificateError("certificate is truncated")
    return blob[pos + 4 : end], end


def _signature_algorithm(blob: bytes, key_type: str) -> str:
    """The algorithm of the CA's signature: the last field of the blob."""
    pos = 0
    # type, nonce, the key's own fields
    for _ in range(2 + _CERT_KEY_FIELDS[key_type]):
        _, pos = _read_string(blob, pos)
    pos += 8 + 4  # serial, type
    _, pos = _read_string(blob, pos)  # key id
    _, pos = _read_string(blob, pos)  # principals
    pos += 8 + 8  # valid after, valid before
    for _ in range(4):  # critical options, extensions, reserved, signature key
        _, pos = _read_string(blob, pos)
    signature, pos = _read_string(blob, pos)
    if pos != len(blob):
        raise CertificateError("certificate has trailing data")
    name, _ = _read_string(signature, 0)
    return name.decode("ascii", "replace")


def parse_certificate(blob: bytes, *, verify: bool = True) -> Certificate:
    """
    Parse a certificate wire blob and (with C{verify}) check its CA signature.

    Raises L{CertificateError} for an unsupported type, a malformed blob, a
    weak or mismatched CA signature algorithm, or a bad signature.
    """
    key_type = blob_type(blob)
    if key_type not in _CERT_KEY_FIELDS:
        raise CertificateError(f"unsupported certificate type {key_type!r}")
    try:
        cert = load_ssh_public_identity(key_type.encode("ascii") + b" " + base64.b64encode(blob))
    except Exception as e:
        # ValueError mostly, UnsupportedAlgorithm for odd curves: all "no".
        raise CertificateError(f"malformed certificate: {str(e)[:100]}") from None
    if not isinstance(cert, SSHCertificate):
        raise CertificateError("not a certificate")
    signature_algorithm = _signature_algorithm(blob, key_type)
    try:
        public_key = cert.public_key()
        ca_key = cert.signature_key()
    except Exception as e:
        raise CertificateError(f"malformed certificate: {str(e)[:100]}") from None
    ca_type = _key_type_name(ca_key)
    if ca_type is None:
        raise CertificateError("the CA key is of an unsupported type")
    if signature_algorithm not in _CA_SIGNATURE_ALGORITHMS[ca_type]:
        raise CertificateError(
            f"CA signature algorithm {signature_algorithm[:64]!r} is not accepted"
            f" for a {ca_type} CA"
        )
    for what, key in (("certified", public_key), ("CA", ca_key)):
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            raise CertificateError(f"the {what} RSA key is too small ({key.key_size} bits)")
    if verify:
        try:
            cert.verify_cert_signature()
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise CertificateError("the CA signature does not verify") from None
    try:
        principals = tuple(p.decode("utf-8") for p in cert.valid_principals)
        critical = tuple(
            (name.decode("utf-8"), value) for name, value in cert.critical_options.items()
        )
        extensions = frozenset(name.decode("utf-8") for name in cert.extensions)
    except UnicodeDecodeError:
        raise CertificateError("certificate has a principal or option that is not UTF-8") from None
    return Certificate(
        blob=blob,
        key_type=key_type,
        key_blob=_plain_blob(public_key),
        ca_blob=_plain_blob(ca_key),
        ca_signature_algorithm=signature_algorithm,
        serial=cert.serial,
        user_certificate=cert.type == SSHCertificateType.USER,
        key_id=cert.key_id.decode("utf-8", "backslashreplace"),
        key_id_bytes=cert.key_id,
        principals=principals,
        valid_after=cert.valid_after,
        valid_before=cert.valid_before,
        critical_options=critical,
        extensions=extensions,
    )


def check_certificate(
    cert: Certificate,
    *,
    user: str,
    client_address: str,
    now: datetime,
    authority_principals: tuple[str, ...] = (),
    skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> KeyOptions:
    """
    Whether C{cert} lets C{user} in from C{client_address} (a bare IP
    address) at C{now} (aware); the restrictions it carries as
    L{KeyOptions}, or L{CertificateError} with the reason.

    C{authority_principals} is the C{principals=} list of the
    C{cert-authority} line that trusts the CA (empty: none); one of the
    certificate's principals must then be in it.  The CA itself is the
    caller's to trust.
    """
    if not cert.user_certificate:
        raise CertificateError("not a user certificate")
    t = now.timestamp()
    slack = skew.total_seconds()
    if t + slack < cert.valid_after:
        raise CertificateError("certificate is not yet valid")
    if cert.valid_before != _FOREVER and t - slack >= cert.valid_before:
        raise CertificateError("certificate has expired")
    if not cert.principals:
        raise CertificateError("certificate has no principals")
    if user not in cert.principals:
        raise CertificateError("the user name is not among the certificate's principals")
    if authority_principals and not set(cert.principals) & set(authority_principals):
        raise CertificateError(
            "no principal of the certificate is in the cert-authority line's principals="
        )
    command = None
    for name, value in cert.critical_options:
        if name == "force-command":
            try:
                command = value.decode("utf-8")
            except UnicodeDecodeError:
                raise CertificateError("force-command is not UTF-8") from None
        elif name == "source-address":
            if not _source_address_permits(value, client_address):
                raise CertificateError("client address not allowed by source-address")
        else:
            # PROTOCOL.certkeys: an unrecognised critical option must refuse.
            raise CertificateError(f"unknown critical option {name[:64]!r}")
    restrictions = {
        field: extension not in cert.extensions for extension, field in _PERMISSIONS.items()
    }
    return KeyOptions(command=command, **restrictions)


def _source_address_permits(value: bytes, client_address: str) -> bool:
    """sshd's C{addr_match_cidr_list}: a bad list refuses, as a mismatch does."""
    try:
        entries = value.decode("ascii").split(",")
        networks = [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]
    except (UnicodeDecodeError, ValueError):
        return False
    address = client_ip(client_address)
    if address is None:
        return False
    return any(address in network for network in networks)


def merge_options(line: KeyOptions, cert: KeyOptions) -> KeyOptions:
    """
    The options of a C{cert-authority} line and of a certificate together:
    every restriction of either holds.  Two different forced commands
    refuse the login (which one the operator meant is not for the gateway
    to guess).
    """
    if line.command is not None and cert.command is not None and line.command != cert.command:
        raise CertificateError("certificate force-command differs from the line's command=")
    return attrs.evolve(
        line,
        no_pty=line.no_pty or cert.no_pty,
        no_port_forwarding=line.no_port_forwarding or cert.no_port_forwarding,
        no_agent_forwarding=line.no_agent_forwarding or cert.no_agent_forwarding,
        no_x11_forwarding=line.no_x11_forwarding or cert.no_x11_forwarding,
        no_user_rc=line.no_user_rc or cert.no_user_rc,
        command=line.command if line.command is not None else cert.command,
    )


def authorize_certificate(
    cert: Certificate,
    *,
    user: str,
    client_address: str,
    now: datetime,
    trusted_ca_blobs: Iterable[bytes] = (),
    authority_lines: Iterable[AuthorizedKey] = (),
    skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> KeyOptions:
    """
    The options C{user} logs in with through C{cert}, trying the
    C{--trusted-user-ca-keys} CAs first and then the C{cert-authority}
    lines (already filtered to this CA, C{from=} and C{expiry-time}), as
    sshd does; L{CertificateError} with the first reason if none admits it.
    """
    reasons: list[str] = []
    if cert.ca_blob in set(trusted_ca_blobs):
        try:
            return check_certificate(
                cert, user=user, client_address=client_address, now=now, skew=skew
            )
        except CertificateError as e:
            reasons.append(str(e))
    for entry in authority_lines:
        if not entry.cert_authority or entry.blob != cert.ca_blob:
            continue
        try:
            granted = check_certificate(
                cert,
                user=user,
                client_address=client_address,
                now=now,
                authority_principals=entry.options.principals,
                skew=skew,
            )
            return merge_options(entry.options, granted)
        except CertificateError as e:
            reasons.append(str(e))
    if not reasons:
        raise CertificateError("certificate signed by an untrusted CA")
    raise CertificateError(reasons[0])


def verify_userauth_signature(
    cert: Certificate, algorithm: bytes, signature: bytes, data: bytes
) -> bool:
    """
    Whether C{signature} over C{data} was made with the certified key, with
    the signature algorithm that C{algorithm} (the userauth request's) names.
    """
    expected = _USERAUTH_ALGORITHMS.get(algorithm)
    if expected is None or expected[0] != cert.key_type:
        return False
    try:
        signature_type = signature[4 : 4 + struct.unpack(">I", signature[:4])[0]]
        if signature_type != expected[1]:
            return False
        return bool(keys.Key.fromString(cert.key_blob).verify(signature, data))
    except Exception:
        # Conch raises assorted errors for malformed signatures; all are "no".
        return False


def describe_key_blob(blob: bytes) -> dict[str, object]:
    """
    Log fields for a public key or certificate blob as a client offered it
    (unverified): C{key_fingerprint}, and for a certificate C{cert_serial}
    and C{cert_key_id}.  C{"unparseable"} when it is neither.
    """
    if is_certificate_blob(blob):
        try:
            cert = parse_certificate(blob, verify=False)
        except CertificateError:
            return {"key_fingerprint": "unparseable"}
        return {
            "key_fingerprint": cert.fingerprint,
            "cert_serial": cert.serial,
            # Unverified text from the client: keep it short and printable.
            "cert_key_id": cert.key_id[:128].encode("unicode_escape").decode("ascii"),
        }
    try:
        return {"key_fingerprint": _fingerprint(keys.Key.fromString(blob).blob())}
    except Exception:
        return {"key_fingerprint": "unparseable"}


def parse_trusted_ca_keys(data: bytes, source: str) -> frozenset[bytes]:
    """
    The CA key blobs of a C{TrustedUserCAKeys} file: one public key a line
    (C{type base64 [comment]}), blank lines and C{#} comments ignored.
    Options, certificates and malformed lines are errors.
    """
    try:
        parsed = parse_authorized_keys(data, source)
    except AuthorizedKeysError as e:
        raise TrustedCAKeysError(str(e)) from None
    if parsed.skipped:
        raise TrustedCAKeysError(
            f"{source}:{parsed.skipped[0].lineno}: a certificate is not a CA key"
        )
    for entry in parsed.entries:
        if entry.options != KeyOptions() or entry.cert_authority:
            raise TrustedCAKeysError(
                f"{source}:{entry.lineno}: options are not allowed here, only CA public keys"
            )
        if entry.key.sshType().startswith(b"sk-"):
            raise TrustedCAKeysError(
                f"{source}:{entry.lineno}: security-key (sk-*) CA keys are not supported"
            )
    return frozenset(entry.blob for entry in parsed.entries)


def load_trusted_ca_keys(path: str) -> frozenset[bytes]:
    """Read and parse a C{TrustedUserCAKeys} file; see L{parse_trusted_ca_keys}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrustedCAKeysError(f"cannot read {path}: {e.strerror or e}") from None
    blobs = parse_trusted_ca_keys(data, path)
    if not blobs:
        raise TrustedCAKeysError(f"{path} has no CA keys")
    return blobs
