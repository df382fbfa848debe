"""
The target's host key, checked against an OpenSSH C{known_hosts} file.

Conch's C{KnownHostsFile} ignores ports unless an entry is bracketed and
ignores C{@revoked}/C{@cert-authority} markers; a gateway that relays
commands an approver has seen must not talk to an impostor, so this module
reads the file the way C{ssh(1)} does (see SSH_KNOWN_HOSTS FILE FORMAT in
C{sshd(8)}):

  - C{hostnames} is a comma list of patterns with C{*}/C{?} wildcards and
    C{!} negation, or one hashed name C{|1|salt|hmac};
  - a host on port 22 is looked up as C{host}, on any other port as
    C{[host]:port}: so a plain C{host} entry applies to port 22 only, and
    C{[host]:22} matches nothing, exactly as in OpenSSH;
  - C{@revoked} keys are refused for every host, whatever the line's host
    patterns (C{sshd(8)}: "must not ever be accepted");
  - C{@cert-authority} lines are kept in L{KnownHosts.cert_authorities} and
    never trusted as a host key.

Malformed lines are errors (L{KnownHostsError}, one line naming the file
and line), not silently skipped as C{ssh} does: a typo must not turn a
pinned host into an unknown one.  Everything here is pure except
L{load_known_hosts}.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import struct

import attrs
from twisted.conch.ssh import keys

from wraith_conch.patterns import wildcard_match

__all__ = [
    "HashedHostName",
    "HostKeyVerdict",
    "KnownHostEntry",
    "KnownHosts",
    "KnownHostsError",
    "Marker",
    "host_lookup_name",
    "load_known_hosts",
    "parse_known_hosts",
    "sha256_fingerprint",
]


class KnownHostsError(Exception):
    """
    The file cannot be used.  C{str()} is one line: C{source:lineno: reason}
    for a bad line, or the reason the file could not be read.
    """


class HostKeyVerdict(enum.Enum):
    """What the file says about a host key offered by a host."""

    #: An entry for this host and port has this key.
    TRUSTED = "trusted"
    #: The key is C{@revoked}; this wins over any entry that trusts it.
    REVOKED = "revoked"
    #: There are entries for this host and port, none with this key.
    CHANGED = "changed"
    #: No entry is for this host and port.
    UNKNOWN = "unknown"


class Marker(enum.Enum):
    CERT_AUTHORITY = "@cert-authority"
    REVOKED = "@revoked"


_CERT_SUFFIX = "-cert-v01@openssh.com"
_HASH_MAGIC = "|1|"
_SHA1_SIZE = 20


def sha256_fingerprint(key: keys.Key) -> str:
    """
    OpenSSH's fingerprint of C{key}: C{SHA256:} and unpadded base64.

    What C{ssh-keygen -l} and C{ssh} show, so an operator can compare a
    logged key with the one they know.  (Conch hands C{verifyHostKey} an
    MD5 fingerprint, which nobody should compare any more.)
    """
    digest = hashlib.sha256(key.blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def host_lookup_name(host: str, port: int) -> str:
    """
    The name OpenSSH looks a host up under: C{host} for port 22,
    C{[host]:port} otherwise, lower-cased.  (Hashed entries hash this.)

    C{host} may be given bracketed (C{[::1]}); the brackets are dropped.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.lower()
    return host if port == 22 else f"[{host}]:{port}"


@attrs.frozen
class HashedHostName:
    """A C{|1|salt|hmac} host name: HMAC-SHA1 of the lookup name, keyed by the salt."""

    salt: bytes
    digest: bytes

    def matches(self, lookup_name: str) -> bool:
        mac = hmac.new(self.salt, lookup_name.encode("utf-8"), hashlib.sha1).digest()
        return hmac.compare_digest(mac, self.digest)


@attrs.frozen
class KnownHostEntry:
    """One line of the file."""

    lineno: int
    #: The host patterns as written, or the hashed name.
    hosts: tuple[str, ...] | HashedHostName
    # Conch's Key is unhashable; leave it out of the hash (the blob is in it).
    key: keys.Key = attrs.field(hash=False)
    marker: Marker | None = None
    comment: str = ""
    #: The key's SSH wire blob, which is what is compared.
    blob: bytes = attrs.field(
        init=False, repr=False, default=attrs.Factory(lambda self: self.key.blob(), takes_self=True)
    )

    def matches(self, host: str, port: int) -> bool:
        """
        Whether this line is for C{host} on C{port}.

        Patterns are matched case-insensitively against the whole lookup
        name (see L{host_lookup_name}), as OpenSSH's C{match_hostname}: so
        C{*} is any host on any port, C{*.example.com} is port 22 only and
        C{[*.example.com]:2222} is port 2222.  A matching C{!pattern} rules
        the line out even if another pattern matches.
        """
        name = host_lookup_name(host, port)
        if isinstance(self.hosts, HashedHostName):
            return self.hosts.matches(name)
        positive = False
        for pattern in self.hosts:
            negated = pattern.startswith("!")
            body = (pattern[1:] if negated else pattern).lower()
            if wildcard_match(name, body):
                if negated:
                    return False
                positive = True
        return positive


@attrs.frozen
class KnownHosts:
    """A parsed file: host keys, revoked keys and CA keys, in file order."""

    #: Lines without a marker: the trusted host keys.
    entries: tuple[KnownHostEntry, ...] = ()
    #: C{@revoked} lines.
    revoked: tuple[KnownHostEntry, ...] = ()
    #: C{@cert-authority} lines: recorded, never trusted (not supported yet).
    cert_authorities: tuple[KnownHostEntry, ...] = ()
    #: Where the keys came from, for log messages.
    source: str = "known_hosts"

    def entries_for(self, host: str, port: int) -> list[KnownHostEntry]:
        """The unmarked entries for C{host} on C{port}."""
        return [entry for entry in self.entries if entry.matches(host, port)]

    def check(self, host: str, port: int, key: keys.Key) -> HostKeyVerdict:
        """
        Judge the host key C{key} offered by C{host} on C{port}.

        L{HostKeyVerdict.REVOKED} if any C{@revoked} line has the key, for
        any host; else L{HostKeyVerdict.TRUSTED} if an entry for this host
        and port has it; else L{HostKeyVerdict.CHANGED} if there are
        entries for this host and port; else L{HostKeyVerdict.UNKNOWN}.
        C{@cert-authority} lines play no part.
        """
        blob = key.blob()
        if any(entry.blob == blob for entry in self.revoked):
            return HostKeyVerdict.REVOKED
        candidates = self.entries_for(host, port)
        if not candidates:
            return HostKeyVerdict.UNKNOWN
        if any(entry.blob == blob for entry in candidates):
            return HostKeyVerdict.TRUSTED
        return HostKeyVerdict.CHANGED


def load_known_hosts(path: str) -> KnownHosts:
    """Read and parse the file at C{path}; see L{parse_known_hosts}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KnownHostsError(f"cannot read known_hosts file {path}: {e.strerror or e}") from None
    return parse_known_hosts(data, path)


def parse_known_hosts(data: bytes, source: str) -> KnownHosts:
    """
    Parse the contents of a C{known_hosts} file.

    C{source} names the file in error messages.  Any malformed line raises
    L{KnownHostsError} (C{"source:lineno: reason"}); lines are split on LF
    only, with a trailing CR ignored, so line numbers are an editor's.
    """
    entries: list[KnownHostEntry] = []
    revoked: list[KnownHostEntry] = []
    authorities: list[KnownHostEntry] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            entry = _parse_line(raw, lineno)
        except _LineError as e:
            raise KnownHostsError(f"{source}:{lineno}: {e}") from None
        if entry is None:
            continue
        if entry.marker is Marker.REVOKED:
            revoked.append(entry)
        elif entry.marker is Marker.CERT_AUTHORITY:
            authorities.append(entry)
        else:
            entries.append(entry)
    return KnownHosts(
        entries=tuple(entries),
        revoked=tuple(revoked),
        cert_authorities=tuple(authorities),
        source=source,
    )


class _LineError(ValueError):
    """Why one line is malformed; the caller adds the file and line number."""


def _show(text: str, limit: int = 40) -> str:
    """C{text} quoted for an error message, shortened: key data is long."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _split_word(text: str) -> tuple[str, str]:
    """The next blank-delimited word and what follows its blanks."""
    i = 0
    while i < len(text) and text[i] not in " \t":
        i += 1
    return text[:i], text[i:].lstrip(" \t")


def _parse_line(raw: bytes, lineno: int) -> KnownHostEntry | None:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError("line is not valid UTF-8") from None
    line = line.lstrip(" \t")
    if not line or line.startswith("#"):
        return None

    marker = None
    word, rest = _split_word(line)
    if word.startswith("@"):
        try:
            marker = Marker(word)
        except ValueError:
            raise _LineError(
                f"unknown marker {_show(word)}: expected @cert-authority or @revoked"
            ) from None
        word, rest = _split_word(rest)
        if word.startswith("@"):
            raise _LineError("only one marker is allowed on a line")
        if not word:
            raise _LineError(f"missing host names after {marker.value}")
    hosts = _parse_hosts(word)

    type_name, rest = _split_word(rest)
    if not type_name:
        raise _LineError("missing key type and key data after the host names")
    blob_text, rest = _split_word(rest)
    if not blob_text:
        raise _LineError(f"missing key data after {type_name}")
    key = _parse_key(blob_text, type_name)
    return KnownHostEntry(
        lineno=lineno, hosts=hosts, key=key, marker=marker, comment=rest.rstrip(" \t")
    )


def _parse_hosts(field: str) -> tuple[str, ...] | HashedHostName:
    if field.startswith("|"):
        return _parse_hashed(field)
    patterns = tuple(field.split(","))
    for pattern in patterns:
        if not pattern or pattern == "!":
            raise _LineError(f"empty host pattern in {_show(field)}")
    return patterns


def _parse_hashed(field: str) -> HashedHostName:
    """C{|1|base64(salt)|base64(hmac)}, both 20 bytes, as ssh-keygen -H writes."""
    bad = f"bad hashed host name {_show(field)}: expected |1|salt|hash"
    if not field.startswith(_HASH_MAGIC):
        raise _LineError(bad)
    salt_text, sep, digest_text = field[len(_HASH_MAGIC) :].partition("|")
    if not sep:
        raise _LineError(bad)
    try:
        salt = base64.b64decode(salt_text, validate=True)
        digest = base64.b64decode(digest_text, validate=True)
    except ValueError:
        raise _LineError(f"{bad} in base64") from None
    if len(salt) != _SHA1_SIZE or len(digest) != _SHA1_SIZE:
        raise _LineError(f"{bad} of {_SHA1_SIZE} bytes each")
    return HashedHostName(salt=salt, digest=digest)


def _parse_key(text: str, type_name: str) -> keys.Key:
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        raise _LineError("bad base64 in key data") from None
    length = struct.unpack(">I", blob[:4])[0] if len(blob) >= 4 else None
    if length is None or len(blob) < 4 + length:
        raise _LineError("key data is truncated")
    blob_type = blob[4 : 4 + length].decode("ascii", "replace")
    if blob_type != type_name:
        raise _LineError(
            f"key type {_show(type_name)} does not match the key data, which is {_show(blob_type)}"
        )
    if type_name.endswith(_CERT_SUFFIX):
        raise _LineError(f"a certificate ({type_name}) cannot be a known host key")
    try:
        key = keys.Key.fromString(blob, type="blob")
        canonical = key.blob()
    except Exception:
        # Conch raises BadKeyError, ValueError, struct.error, IndexError...
        # for bad blobs; all mean the same here.
        raise _LineError(f"cannot parse the {_show(type_name)} key data") from None
    if canonical != blob:
        raise _LineError(
            f"cannot parse the {_show(type_name)} key data (unexpected extra or altered fields)"
        )
    return key
