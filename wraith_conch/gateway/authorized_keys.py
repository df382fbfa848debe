"""
Operators' public keys, read from an OpenSSH C{authorized_keys} file.

The format is C{sshd(8)}'s (see AUTHORIZED_KEYS FILE FORMAT there): one key
a line, as C{[options] key-type base64-key [comment]}, blank lines and
C{#} comments ignored.  An operator can point the gateway at the file
they already give C{sshd}, so the options mean what they mean to C{sshd}:
C{from=}, C{restrict} and the C{no-*} flags, C{command=}, C{permitopen=},
C{expiry-time=} and the rest.

Where C{sshd} skips a line it cannot read (and so silently drops a
restriction or a key), this parser refuses the whole file with a one-line
L{AuthorizedKeysError} naming the file and line: a gateway that holds every
command for approval must not start with a looser key list than its
operator wrote.  The one exception is lines whose key is itself a
certificate (C{*-cert-v01@openssh.com}): well-formed but meaningless as a
key (sshd ignores them too), so they are collected in
L{AuthorizedKeys.skipped} for the caller to warn about, and never match.

A line with the C{cert-authority} option names a CA whose user
certificates may log in (see L{wraith_conch.gateway.certificates}); such a
line never matches the CA key itself as a plain key.

Everything here is pure: bytes in, value objects out.  Only
L{load_authorized_keys} touches the file system.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
from datetime import UTC, datetime
from typing import Literal, NoReturn

import attrs
from twisted.conch.ssh import keys

from wraith_conch.patterns import wildcard_match

__all__ = [
    "KEY_TYPES",
    "AuthorizedKey",
    "AuthorizedKeys",
    "AuthorizedKeysError",
    "KeyOptions",
    "Port",
    "SkippedLine",
    "load_authorized_keys",
    "parse_authorized_keys",
]


class AuthorizedKeysError(Exception):
    """
    The file cannot be used.  C{str()} is one line: C{source:lineno: reason}
    for a bad line, or the reason the file could not be read.
    """


#: The plain key types accepted: C{sshd(8)}'s list without C{ssh-dss}
#: (1024-bit DSA with SHA-1, too weak to trust, and gone from OpenSSH 9.8).
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)

_CERT_SUFFIX = "-cert-v01@openssh.com"

# sshd refuses smaller RSA moduli outright (SSH_RSA_MINIMUM_MODULUS_SIZE).
_MIN_RSA_BITS = 1024

# The flags that "restrict" turns off and that can be turned back on by
# name, mapped to the KeyOptions field that records the restriction.
_RESTRICTIONS = {
    "pty": "no_pty",
    "port-forwarding": "no_port_forwarding",
    "agent-forwarding": "no_agent_forwarding",
    "x11-forwarding": "no_x11_forwarding",
    "user-rc": "no_user_rc",
}
_VALUED_OPTIONS = frozenset(
    {
        "command",
        "environment",
        "expiry-time",
        "from",
        "permitlisten",
        "permitopen",
        "principals",
    }
)
# Options sshd knows that the gateway cannot honour.  Ignoring them would
# loosen what the operator wrote (verify-required, no-touch-required), so
# the file is refused instead.
_UNSUPPORTED_OPTIONS = frozenset(
    {"no-touch-required", "touch-required", "verify-required", "tunnel"}
)

_ENV_NAME = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_EXPIRY = re.compile(r"([0-9]{8}|[0-9]{12}|[0-9]{14})(z|utc)?", re.ASCII | re.IGNORECASE)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_LOOKS_LIKE_KEY_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9.@+_-]*", re.ASCII)
_LOOKS_LIKE_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)

#: A port in C{permitopen}/C{permitlisten}: a number, or C{"*"} for any port.
Port = int | Literal["*"]


@attrs.frozen
class KeyOptions:
    """
    The options of one C{authorized_keys} line, after C{sshd}'s rules.

    The C{no_*} fields hold the final state after the options were applied
    left to right, so C{restrict,pty} allows a PTY and C{pty,restrict} does
    not.  C{restrict} is kept as well: C{sshd(8)} promises that restrictions
    added later are part of it, and the gateway may add its own.

    The default, C{KeyOptions()}, is a line with no options: nothing
    restricted.
    """

    restrict: bool = False
    no_pty: bool = False
    no_port_forwarding: bool = False
    no_agent_forwarding: bool = False
    no_x11_forwarding: bool = False
    no_user_rc: bool = False
    #: The C{from=} patterns as written (negated ones keep their C{!}).
    from_patterns: tuple[str, ...] = ()
    #: C{(host, port)} pairs; IPv6 hosts without their brackets.
    permitopen: tuple[tuple[str, Port], ...] = ()
    #: C{(host, port)} pairs; a bare C{permitlisten="port"} has host C{"*"}.
    permitlisten: tuple[tuple[str, Port], ...] = ()
    command: str | None = None
    #: C{(name, value)} pairs; of repeated names the first wins, as in sshd.
    environment: tuple[tuple[str, str], ...] = ()
    principals: tuple[str, ...] = ()
    #: When the key stops being accepted (aware, UTC).
    expiry_time: datetime | None = None

    @property
    def allow_pty(self) -> bool:
        return not self.no_pty

    @property
    def allow_port_forwarding(self) -> bool:
        return not self.no_port_forwarding

    @property
    def allow_agent_forwarding(self) -> bool:
        return not self.no_agent_forwarding

    @property
    def allow_x11_forwarding(self) -> bool:
        return not self.no_x11_forwarding

    @property
    def allow_user_rc(self) -> bool:
        return not self.no_user_rc

    def permits_address(self, remote_addr: str) -> bool:
        """
        Whether a client at IP address C{remote_addr} passes C{from=}.

        Follows OpenSSH's C{match_host_and_ip} for C{sshd}'s default
        C{UseDNS no}: the patterns are matched against the client's IP
        address only.  There is no reverse DNS, so a host-name pattern
        (C{*.example.com}, C{!bastion}) never matches anything, negated or
        not; write addresses.  A pattern is an address (compared as an
        address, so C{0:0::1} is C{::1}), a CIDR network (C{10.0.0.0/8},
        C{2001:db8::/32}), or a C{*}/C{?} wildcard pattern matched against
        the address's usual text form (C{192.168.1.*}).  A negated pattern
        (C{!...}) that matches refuses outright; otherwise some positive
        pattern must match.  An IPv4-mapped IPv6 client address
        (C{::ffff:192.0.2.1}) is matched as the IPv4 address.

        C{remote_addr} may be bracketed and may carry a C{%zone}; anything
        that is not an IP address matches no C{from=} list at all.  With no
        C{from=} option every address passes.
        """
        if not self.from_patterns:
            return True
        address = client_ip(remote_addr)
        if address is None:
            return False
        text = str(address)
        positive = False
        for pattern in self.from_patterns:
            negated = pattern.startswith("!")
            body = pattern[1:] if negated else pattern
            if _from_pattern_matches(body, address, text):
                if negated:
                    return False
                positive = True
        return positive

    def expired(self, now: datetime) -> bool:
        """
        Whether C{expiry-time} has passed at C{now} (an aware datetime).

        Like sshd, the key is still good at the expiry instant itself.
        """
        return self.expiry_time is not None and self.expiry_time < now


@attrs.frozen
class AuthorizedKey:
    """One usable line: a key and the options it is allowed with."""

    # Conch's Key is unhashable; leave it out of the hash (the blob is in it).
    key: keys.Key = attrs.field(hash=False)
    options: KeyOptions = attrs.field(factory=KeyOptions)
    comment: str = ""
    lineno: int = 0
    #: C{cert-authority}: the key signs certificates and is never a login key.
    cert_authority: bool = False
    #: The key's SSH wire blob, which clients send and L{AuthorizedKeys.find} compares.
    blob: bytes = attrs.field(
        init=False, repr=False, default=attrs.Factory(lambda self: self.key.blob(), takes_self=True)
    )


@attrs.frozen
class SkippedLine:
    """A well-formed line that is ignored (a certificate listed as a key)."""

    lineno: int
    reason: str


@attrs.frozen
class AuthorizedKeys:
    """The usable keys of one file, in file order, and the lines skipped."""

    entries: tuple[AuthorizedKey, ...] = ()
    skipped: tuple[SkippedLine, ...] = ()
    #: Where the keys came from, for log messages.
    source: str = "authorized_keys"

    def unbound_lines(self) -> list[int]:
        """
        The line numbers of login keys without C{principals=}: in a file
        shared by every user, each of those keys may log in under any user
        name (C{cert-authority} lines are bound by their certificates).
        """
        return [
            entry.lineno
            for entry in self.entries
            if not entry.cert_authority and not entry.options.principals
        ]

    def find(self, key_blob: bytes) -> list[AuthorizedKey]:
        """
        Every entry whose key has exactly this SSH wire blob, in file order.

        A key may be listed on several lines with different options; the
        caller decides between them (see L{match}).
        """
        return [
            entry for entry in self.entries if entry.blob == key_blob and not entry.cert_authority
        ]

    def authorities(self, ca_blob: bytes, remote_addr: str, now: datetime) -> list[AuthorizedKey]:
        """
        The C{cert-authority} lines for the CA with this wire blob that
        admit a client at C{remote_addr} at C{now} (C{from=},
        C{expiry-time}), in file order.
        """
        return [
            entry
            for entry in self.entries
            if entry.cert_authority
            and entry.blob == ca_blob
            and entry.options.permits_address(remote_addr)
            and not entry.options.expired(now)
        ]

    def match(self, key_blob: bytes, remote_addr: str, now: datetime) -> AuthorizedKey | None:
        """
        The entry a client with this key, at this address, logs in with.

        Like sshd, the first line with the key whose C{from=} admits
        C{remote_addr} (see L{KeyOptions.permits_address}) and whose
        C{expiry-time} has not passed at C{now} wins; later lines with the
        same key are tried when an earlier one refuses.  L{None} if none
        admits the client.
        """
        for entry in self.find(key_blob):
            if entry.options.permits_address(remote_addr) and not entry.options.expired(now):
                return entry
        return None


def load_authorized_keys(path: str) -> AuthorizedKeys:
    """Read and parse the file at C{path}; see L{parse_authorized_keys}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AuthorizedKeysError(
            f"cannot read authorized_keys file {path}: {e.strerror or e}"
        ) from None
    return parse_authorized_keys(data, path)


def parse_authorized_keys(data: bytes, source: str) -> AuthorizedKeys:
    """
    Parse the contents of an C{authorized_keys} file.

    C{source} names the file in error messages.  Any malformed line raises
    L{AuthorizedKeysError} (C{"source:lineno: reason"}); lines are split on
    LF only, with a trailing CR ignored, so line numbers are what an editor
    shows.  Lines whose key is a certificate land in L{AuthorizedKeys.skipped}.

    C{expiry-time} values without a C{Z} (or C{UTC}) suffix are in the
    system time zone, as sshd reads them.
    """
    entries: list[AuthorizedKey] = []
    skipped: list[SkippedLine] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            parsed = _parse_line(raw)
        except _LineError as e:
            raise AuthorizedKeysError(f"{source}:{lineno}: {e}") from None
        if parsed is None:
            continue
        if isinstance(parsed, str):
            skipped.append(SkippedLine(lineno=lineno, reason=parsed))
            continue
        key, options, comment, cert_authority = parsed
        entries.append(
            AuthorizedKey(
                key=key,
                options=options,
                comment=comment,
                lineno=lineno,
                cert_authority=cert_authority,
            )
        )
    return AuthorizedKeys(entries=tuple(entries), skipped=tuple(skipped), source=source)


class _LineError(ValueError):
    """Why one line is malformed; the caller adds the file and line number."""


def _show(text: str, limit: int = 40) -> str:
    """C{text} quoted for an error message, shortened: key data is long."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _parse_line(raw: bytes) -> tuple[keys.Key, KeyOptions, str, bool] | str | None:
    """One line: L{None} to ignore, a reason string to skip, or the entry."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError("line is not valid UTF-8") from None
    line = line.lstrip(" \t")
    if not line or line.startswith("#"):
        return None

    first, rest = _split_options_field(line)
    if _is_key_type_name(first):
        options, cert_authority = KeyOptions(), False
        type_name = first
    else:
        type_name, rest = _split_word(rest)
        if not _is_key_type_name(type_name):
            _explain_missing_key_type(first, type_name)
        options, cert_authority = _parse_options(first)

    blob_text, rest = _split_word(rest)
    comment = rest.rstrip(" \t")
    if not blob_text:
        raise _LineError(f"missing key data after {type_name}")
    blob = _decode_blob(blob_text, type_name)

    if type_name.endswith(_CERT_SUFFIX):
        return (
            f"{type_name} certificates are not keys (trust their CA with a"
            " cert-authority line); line ignored"
        )
    key = _parse_key(blob, type_name)
    return key, options, comment, cert_authority


def _is_key_type_name(word: str) -> bool:
    return word in KEY_TYPES or (word.endswith(_CERT_SUFFIX) and len(word) > len(_CERT_SUFFIX))


def _split_word(text: str) -> tuple[str, str]:
    """The next blank-delimited word and what follows its blanks."""
    i = 0
    while i < len(text) and text[i] not in " \t":
        i += 1
    return text[:i], text[i:].lstrip(" \t")


def _split_options_field(text: str) -> tuple[str, str]:
    """
    Like L{_split_word}, but blanks inside double quotes do not end the
    word: sshd's C{sshkey_advance_past_options}, so the options field ends
    exactly where sshd ends it.
    """
    quoted = False
    i = 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 2
            continue
        if text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise _LineError("unterminated quote in options")
    return text[:i], text[i:].lstrip(" \t")


def _explain_missing_key_type(first: str, second: str) -> NoReturn:
    """Raise the most helpful error for a line with no known key type."""
    try:
        _parse_options(first)
    except _LineError:
        if (
            second
            and _LOOKS_LIKE_KEY_TYPE.fullmatch(first)
            and _LOOKS_LIKE_BASE64.fullmatch(second)
        ):
            raise _LineError(f"unknown key type {_show(first)}") from None
        if not second:
            raise _LineError(
                "not a key line: expected [options] key-type base64-key [comment]"
            ) from None
        raise
    if not second:
        raise _LineError("missing key type and key data after the options")
    raise _LineError(f"unknown key type {_show(second)}")


def _decode_blob(text: str, type_name: str) -> bytes:
    """The key's wire blob, checked to be of the type the line names."""
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        raise _LineError("bad base64 in key data") from None
    if len(blob) < 4:
        raise _LineError("key data is truncated")
    (length,) = struct.unpack(">I", blob[:4])
    if len(blob) < 4 + length:
        raise _LineError("key data is truncated")
    blob_type = blob[4 : 4 + length].decode("ascii", "replace")
    if blob_type != type_name:
        raise _LineError(
            f"key type {type_name} does not match the key data, which is {_show(blob_type)}"
        )
    return blob


def _parse_key(blob: bytes, type_name: str) -> keys.Key:
    try:
        key = keys.Key.fromString(blob, type="blob")
        canonical = key.blob()
    except Exception:
        # Conch raises BadKeyError, ValueError, struct.error, IndexError...
        # for bad blobs; all mean the same here.
        raise _LineError(f"key data is not a valid {type_name} key") from None
    if canonical != blob:
        # Trailing bytes, or a wrong curve name inside an ECDSA blob.
        raise _LineError(
            f"key data is not a valid {type_name} key (unexpected extra or altered fields)"
        )
    if key.type() == "RSA" and key.size() < _MIN_RSA_BITS:
        raise _LineError(f"RSA key is too small ({key.size()} bits; sshd requires {_MIN_RSA_BITS})")
    return key


def _parse_options(text: str) -> tuple[KeyOptions, bool]:
    """
    The options field, applied left to right as sshd's C{sshauthopt_parse}.

    Returns the options and whether C{cert-authority} was among them.
    """
    flags = {field: False for field in _RESTRICTIONS.values()}
    restrict = False
    cert_authority = False
    command: str | None = None
    from_patterns: tuple[str, ...] | None = None
    principals: tuple[str, ...] | None = None
    expiry: datetime | None = None
    environment: dict[str, str] = {}
    permitopen: list[tuple[str, Port]] = []
    permitlisten: list[tuple[str, Port]] = []

    pos = 0
    while True:
        end = pos
        while end < len(text) and text[end] not in "=,":
            end += 1
        name = text[pos:end]
        lname = name.lower()
        pos = end
        has_value = pos < len(text) and text[pos] == "="
        if not name:
            raise _LineError("empty option (two commas in a row, or a leading comma)")
        if lname in _UNSUPPORTED_OPTIONS:
            raise _LineError(f"option {_show(name)} is not supported by this gateway")
        target = _flag_target(lname)
        if lname in ("restrict", "cert-authority") or target is not None:
            if has_value:
                raise _LineError(f"option {_show(name)} does not take a value")
            if lname == "restrict":
                restrict = True
                flags = dict.fromkeys(flags, True)
            elif lname == "cert-authority":
                cert_authority = True
            elif target is not None:
                field, restricted = target
                flags[field] = restricted
        elif lname in _VALUED_OPTIONS:
            if not has_value:
                raise _LineError(f'option {_show(name)} needs a value: {lname}="..."')
            value, pos = _dequote(text, pos + 1, name)
            if lname == "command":
                _once(command, name)
                command = value
            elif lname == "from":
                _once(from_patterns, name)
                from_patterns = _parse_from(value)
            elif lname == "principals":
                _once(principals, name)
                principals = tuple(value.split(","))
            elif lname == "expiry-time":
                when = _parse_expiry(value)
                # Several are allowed; the earliest wins, as in sshd.
                expiry = when if expiry is None else min(expiry, when)
            elif lname == "environment":
                env_name, env_value = _parse_environment(value)
                environment.setdefault(env_name, env_value)
            elif lname == "permitopen":
                permitopen.append(_parse_permit(value, name, bare_port=False))
            else:
                permitlisten.append(_parse_permit(value, name, bare_port=True))
        else:
            raise _LineError(f"unknown option {_show(name)}")

        if pos == len(text):
            break
        if text[pos] != ",":
            raise _LineError(f"unexpected {_show(text[pos:], 10)} after option {_show(name)}")
        pos += 1
        if pos == len(text):
            raise _LineError("options end with a comma")

    options = KeyOptions(
        restrict=restrict,
        **flags,
        from_patterns=from_patterns or (),
        permitopen=tuple(permitopen),
        permitlisten=tuple(permitlisten),
        command=command,
        environment=tuple(environment.items()),
        principals=principals or (),
        expiry_time=expiry,
    )
    return options, cert_authority


def _flag_target(lname: str) -> tuple[str, bool] | None:
    """For C{pty}/C{no-pty} and the like: the field and whether it restricts."""
    if lname in _RESTRICTIONS:
        return _RESTRICTIONS[lname], False
    if lname.startswith("no-") and lname[3:] in _RESTRICTIONS:
        return _RESTRICTIONS[lname[3:]], True
    return None


def _once(previous: object, name: str) -> None:
    if previous is not None:
        raise _LineError(f"option {_show(name)} is given more than once")


def _dequote(text: str, pos: int, name: str) -> tuple[str, int]:
    """
    The double-quoted value starting at C{pos}, and the position after it.

    As sshd's C{opt_dequote}: only C{\\"} is an escape (for a quote); any
    other backslash is kept as it is.
    """
    if pos >= len(text) or text[pos] != '"':
        raise _LineError(f"the value of option {_show(name)} must be in double quotes")
    out = []
    i = pos + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            out.append('"')
            i += 2
        else:
            out.append(text[i])
            i += 1
    if i >= len(text):
        raise _LineError(f"unterminated quote in the value of option {_show(name)}")
    return "".join(out), i + 1


def _parse_from(value: str) -> tuple[str, ...]:
    """
    Check a C{from=} list where sshd would find it invalid at login time.

    sshd refuses every login through a line whose list has an empty entry
    or a CIDR with host bits set; here that is an error at start-up.  A
    pattern with a C{/} that is not a CIDR, or with blanks, could never
    match an address either, so it is refused as a typo.
    """
    patterns = tuple(value.split(","))
    for pattern in patterns:
        body = pattern[1:] if pattern.startswith("!") else pattern
        if not body:
            raise _LineError(f"empty pattern in from={_show(value)}")
        if any(c.isspace() for c in body):
            raise _LineError(f"blank inside pattern {_show(pattern)} in from=")
        if "/" in body:
            _parse_cidr(body)
    return patterns


def _parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address, _, bits = text.partition("/")
    if not re.fullmatch(r"[0-9]{1,3}", bits, re.ASCII):
        raise _LineError(f"invalid CIDR pattern {_show(text)} in from=: bad prefix length")
    try:
        return ipaddress.ip_network(f"{address}/{int(bits)}", strict=True)
    except ValueError as e:
        raise _LineError(f"invalid CIDR pattern {_show(text)} in from=: {e}") from None


def _parse_expiry(value: str) -> datetime:
    """C{YYYYMMDD[HHMM[SS]]}, optionally with C{Z}/C{UTC}; local time otherwise."""
    m = _EXPIRY.fullmatch(value)
    if m is None:
        raise _LineError(f"invalid expiry-time {_show(value)}: expected YYYYMMDD[HHMM[SS]][Z]")
    digits = m.group(1).ljust(14, "0")
    try:
        naive = datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
        )
        if m.group(2):
            return naive.replace(tzinfo=UTC)
        return naive.astimezone().astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise _LineError(f"invalid expiry-time {_show(value)}: no such date or time") from None


def _parse_environment(value: str) -> tuple[str, str]:
    name, sep, env_value = value.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise _LineError(
            f"invalid environment={_show(value)}: expected NAME=value, NAME of letters, digits, _"
        )
    return name, env_value


def _parse_permit(value: str, name: str, *, bare_port: bool) -> tuple[str, Port]:
    """C{host:port} or C{[v6]:port} (port a number or C{*}); as sshd's C{handle_permit}."""
    spec = "*:" + value if bare_port and ":" not in value else value
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0 or spec[close + 1 : close + 2] != ":":
            raise _LineError(f"invalid {name}={_show(value)}: expected [address]:port")
        host, port_text = spec[1:close], spec[close + 2 :]
    else:
        host, sep, port_text = spec.partition(":")
        if not sep:
            raise _LineError(f"invalid {name}={_show(value)}: expected host:port")
    if not host or any(c.isspace() for c in host):
        raise _LineError(f"invalid {name}={_show(value)}: bad host")
    if port_text == "*":
        return host, "*"
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise _LineError(f"invalid {name}={_show(value)}: port must be 1-65535 or *")
    return host, int(port_text)


def client_ip(
    remote_addr: str,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address, IPv4-mapped IPv6 unmapped, zone dropped."""
    text = remote_addr
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _from_pattern_matches(
    body: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str
) -> bool:
    if "/" in body:
        # An address of the other family is never "in" a network.
        return address in _parse_cidr(body)
    try:
        return ipaddress.ip_address(body) == address
    except ValueError:
        return wildcard_match(text, body.lower())
