"""
Which destinations a C{direct-tcpip} channel (C{ssh -L}, C{ssh -D}) may reach.

Pure decisions, no I/O: the caller asks before it connects and gets a
L{Verdict}.  Only L{load_forward_policy} reads a file; nothing here resolves
names, so the caller resolves a name once and asks about the very address
it will connect to (a DNS answer that changes between check and connect
cannot swap it).

How a request is decided, in this order; the first layer that decides wins:

 1. Reserved names.  A host name starting with C{wraith-} (any case) is
    never connected to.  C{wraith-control} port 0 is the gateway's control
    channel (L{VerdictKind.CONTROL}); any other C{wraith-*} name is
    administratively prohibited (L{VerdictKind.PROHIBITED}).  Neither is a
    connection, so key options and rules do not apply to them; what the
    control channel itself requires is for its handler to decide.
 2. Malformed requests: a port outside 1-65535, an empty host name, a host
    name with blanks or control characters or longer than 255 characters.
 3. The key's C{authorized_keys} options, as C{sshd} applies them:
    C{no-port-forwarding} (which C{restrict} implies, unless the line turns
    C{port-forwarding} back on after it) denies everything, and a
    C{permitopen} list allows only its C{host:port} pairs.  The host is
    compared with the host as requested, before any resolution, ignoring
    case (C{*} as the host or port matches any).
 4. Protected endpoints, which nothing overrides: the SSH port of every
    configured target (a tunnel to the target's C{sshd} would bypass
    approval) and the gateway's own listening ports.  See
    L{ForwardPolicy.protecting}.
 5. L{BUILTIN_DENY}: loopback, link-local, cloud metadata and unspecified
    addresses, in every IPv6 form that embeds such an IPv4 address
    (C{::ffff:127.0.0.1}, C{::127.0.0.1}, C{::ffff:0:127.0.0.1},
    C{64:ff9b::127.0.0.1}), and the well-known names of loopback and
    metadata hosts.  Only an C{allow} rule with C{override_builtin = true}
    that is the first rule to match lifts them, so loopback can be opened
    for local testing.
 6. The rules of the policy file, first match wins, then its default.

An allowed destination passes every layer.  The C{reason} of a verdict is
one of a fixed set of short texts (L{ForwardPolicy.reasons}); it never
contains the destination's host, port or address, so it can be shown to
the operator and logged.

Two ways to use it:

 - B{direct mode} (the gateway connects itself): call
   L{ForwardPolicy.check_request} with C{proxied=False} when the channel
   opens.  A denial is final.  An allowance is provisional: resolve the
   name once, then call L{ForwardPolicy.check_address} with the address
   the gateway will connect to, and connect only if that allows too.
 - B{proxy mode} (SOCKS5, HTTP CONNECT, Tor: the proxy resolves names):
   L{ForwardPolicy.check_request} with C{proxied=True} is final.  The
   gateway never sees the address a name resolves to, so C{cidr} matchers
   and address-based denials apply to IP-literal hosts only.

The rules file (C{--forward-policy PATH}) is TOML::

    # What happens when no rule matches: "allow" (the default) or "deny".
    default = "allow"

    # Rules are tried in order; the first whose matchers all match decides.
    [[rule]]
    action = "deny"
    cidr = ["10.0.0.0/8", "fd00::/8"]       # IPv4 and IPv6 networks

    [[rule]]
    action = "allow"
    host = "*.build.example.com"            # or a list of patterns
    ports = [443, "8000-8099"]              # ports and low-high ranges

    # Open the local web server for testing: loopback is denied by the
    # built-in layer, so the rule must say that it overrides it.
    [[rule]]
    action = "allow"
    override_builtin = true
    cidr = ["127.0.0.1/32", "::1/128"]
    ports = [8080]

Top-level keys: C{default} and C{rule}.  Rule keys:

 - C{action} (required): C{"allow"} or C{"deny"}.
 - C{host}: a pattern or a list of patterns, C{*} and C{?} wildcards,
   matched against the host name as requested, ignoring case (a trailing
   dot and IPv6 brackets are dropped first).  An IP literal is matched as
   the text the client sent.
 - C{cidr}: a list of networks (C{10.0.0.0/8}, C{2001:db8::/32}, or a bare
   address), matched against the address the gateway connects to in direct
   mode, and against IP-literal hosts in proxy mode (where a host name
   never matches a C{cidr} rule).  An IPv4-mapped address or network
   (C{::ffff:10.0.0.1}, C{::ffff:10.0.0.0/104}) is the IPv4 one; an address
   that embeds an IPv4 address in another way (C{::10.0.0.1}, NAT64's
   C{64:ff9b::10.0.0.1}) matches networks of either.
 - C{ports}: a list of port numbers and C{"low-high"} ranges.
 - C{override_builtin}: C{true} lets this C{allow} rule open destinations
   of L{BUILTIN_DENY}.  Only valid with C{action = "allow"}, and the rule
   must name what it opens with C{cidr} or C{host}.  A C{host}-only override
   opens whatever those names resolve to; prefer C{cidr}.

Matchers a rule leaves out match everything, so a rule with only an
C{action} is a catch-all.

Why the default is C{allow}: the layers before the rules already refuse
what is dangerous on every network (the target's C{sshd}, the gateway
itself, loopback, link-local, metadata), each forward is subject to the
key's C{authorized_keys} options, and a policy file is usually written to
fence off a few internal networks.  A gateway with no policy file behaves
the same.  For an allowlist, write C{default = "deny"} and allow rules.

Every malformed file is refused with a one-line L{ForwardPolicyError}:
C{PATH: rule N: reason} for a bad rule, C{PATH: reason} otherwise.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from wraith_conch.gateway.authorized_keys import KeyOptions
from wraith_conch.patterns import wildcard_match
from wraith_conch.tomlfile import parse_toml

__all__ = [
    "BUILTIN_DENY",
    "Action",
    "BuiltinDeny",
    "ForwardPolicy",
    "ForwardPolicyError",
    "ForwardRule",
    "Verdict",
    "VerdictKind",
    "load_forward_policy",
    "parse_forward_policy",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardPolicyError(Exception):
    """The rules file cannot be used; C{str()} is one line naming the file."""


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class VerdictKind(enum.Enum):
    #: Connect (in direct mode, after L{ForwardPolicy.check_address} allows).
    ALLOW = "allow"
    #: Refuse the channel.
    DENY = "deny"
    #: C{wraith-control} port 0: the gateway's own control channel, handled
    #: by the gateway, never a connection.
    CONTROL = "control"
    #: Any other reserved C{wraith-*} name: refuse as administratively prohibited.
    PROHIBITED = "prohibited"


@attrs.frozen
class Verdict:
    """
    A decision.  C{reason} is short and generic: it never names the
    destination, so it may be shown and logged.
    """

    allowed: bool
    reason: str
    kind: VerdictKind = attrs.field()

    @kind.default
    def _kind_from_allowed(self) -> VerdictKind:
        return VerdictKind.ALLOW if self.allowed else VerdictKind.DENY

    @kind.validator
    def _kind_agrees(self, attribute: attrs.Attribute, value: VerdictKind) -> None:
        if self.allowed != (value is VerdictKind.ALLOW):
            raise ValueError(f"a verdict of kind {value.value} cannot have allowed={self.allowed}")


@attrs.frozen
class BuiltinDeny:
    """One category of L{BUILTIN_DENY}: its networks and well-known names."""

    category: str
    networks: tuple[IPNetwork, ...]
    #: Lower-case wildcard patterns of host names that mean these addresses.
    names: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return f"destination not allowed: {self.category}"

    def matches(self, name: str, views: Sequence[IPAddress]) -> bool:
        return any(v in n for v in views for n in self.networks) or any(
            wildcard_match(name, p) for p in self.names
        )


def _networks(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


#: Destinations refused unless the first matching rule is an C{allow} with
#: C{override_builtin = true}.  Checked in this order, so the metadata
#: address is reported as metadata rather than link-local.
BUILTIN_DENY: tuple[BuiltinDeny, ...] = (
    BuiltinDeny(
        "cloud metadata",
        # AWS, GCP, Azure, OpenStack...; AWS over IPv6; Alibaba Cloud.
        _networks("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32"),
        (
            "metadata",
            "metadata.google.internal",
            "metadata.goog",
            "instance-data",
            "instance-data.ec2.internal",
        ),
    ),
    BuiltinDeny(
        "loopback",
        _networks("127.0.0.0/8", "::1/128"),
        (
            "localhost",
            "*.localhost",
            "localhost.localdomain",
            "localhost6",
            "localhost6.localdomain6",
            "ip6-localhost",
            "ip6-loopback",
        ),
    ),
    BuiltinDeny("link-local", _networks("169.254.0.0/16", "fe80::/10")),
    # 0.0.0.0/8 is "this host on this network"; Linux connects 0.0.0.0 to itself.
    BuiltinDeny("unspecified address", _networks("0.0.0.0/8", "::/128")),
)

_LOOPBACK = BUILTIN_DENY[1]
_UNSPECIFIED = BUILTIN_DENY[3]

# IPv6 prefixes besides IPv4-mapped (see _views) whose low 32 bits are an
# IPv4 address the packet may end up at: IPv4-compatible (::a.b.c.d,
# deprecated), IPv4-translated (SIIT) and the NAT64 well-known prefix.
_EMBEDDING_V4 = _networks("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")

REASON_NO_FORWARDING = "port forwarding disabled for this key"
REASON_PERMITOPEN = "destination not permitted for this key"
REASON_TARGET = "destination not allowed: target SSH server"
REASON_GATEWAY = "destination not allowed: this gateway"
REASON_INVALID_HOST = "invalid destination host"
REASON_INVALID_PORT = "invalid destination port"
REASON_INVALID_ADDRESS = "invalid destination address"
REASON_CONTROL = "control channel"
REASON_RESERVED = "administratively prohibited: reserved name"
REASON_PENDING = "allowed pending the resolved address"
REASON_DEFAULT_ALLOW = "allowed by policy default"
REASON_DEFAULT_DENY = "destination not allowed by policy default"

_CONTROL_NAME = "wraith-control"
_RESERVED_PREFIX = "wraith-"
_MAX_HOST = 255

_CONTROL = Verdict(False, REASON_CONTROL, VerdictKind.CONTROL)
_RESERVED = Verdict(False, REASON_RESERVED, VerdictKind.PROHIBITED)
_INVALID_HOST = Verdict(False, REASON_INVALID_HOST)
_INVALID_PORT = Verdict(False, REASON_INVALID_PORT)
_INVALID_ADDRESS = Verdict(False, REASON_INVALID_ADDRESS)
_NO_FORWARDING = Verdict(False, REASON_NO_FORWARDING)
_NOT_PERMITTED = Verdict(False, REASON_PERMITOPEN)
_TARGET = Verdict(False, REASON_TARGET)
_GATEWAY = Verdict(False, REASON_GATEWAY)
_PENDING = Verdict(True, REASON_PENDING)


def _normalize_name(host: str) -> str:
    """Lower case, IPv6 brackets and one trailing dot dropped."""
    name = host.lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith(".") and name != ".":
        name = name[:-1]
    return name


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= _MAX_HOST and all(c.isprintable() and not c.isspace() for c in name)


_V4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*", re.ASCII)


def _parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """
    The numeric IPv4 forms C{inet_aton} and so C{getaddrinfo} (and many
    proxies) accept: C{127.1}, C{0x7f.0.0.1}, C{0177.0.0.1}, C{2130706433}.
    """
    parts = text.split(".")
    if len(parts) > 4 or not all(_V4_PART.fullmatch(p) for p in parts):
        return None
    # As glibc: a leading 0x is hexadecimal (a bare "0x" is 0), a leading 0 octal.
    values = [
        int(p[2:] or "0", 16) if p[:2] in ("0x", "0X") else int(p, 8 if p[0] == "0" else 10)
        for p in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def _parse_literal(name: str) -> IPAddress | None:
    """The address a normalized host name is written as, if it is one."""
    if ":" in name:
        try:
            return ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return _parse_inet_aton(name)


def _views(address: IPAddress) -> tuple[IPAddress, ...]:
    """
    C{address} without zone, and the IPv4 address it embeds, if any.  An
    IPv4-mapped address I{is} its IPv4 address (a dual-stack socket connects
    there), so it is only that.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return (address,)
    plain = ipaddress.IPv6Address(int(address))
    if plain.ipv4_mapped is not None:
        return (plain.ipv4_mapped,)
    if any(plain in n for n in _EMBEDDING_V4):
        return (plain, ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF))
    return (plain,)


def _is_local(name: str, views: Sequence[IPAddress]) -> bool:
    """Loopback or unspecified: this host, whatever else it listens on."""
    return _LOOPBACK.matches(name, views) or _UNSPECIFIED.matches("", views)


@attrs.frozen
class _Endpoints:
    """A set of C{(host, port)} destinations, matched by name and by address."""

    #: Ports protected on every destination (host C{None} or unspecified).
    every_host: frozenset[int] = frozenset()
    names: frozenset[tuple[str, int]] = frozenset()
    addresses: frozenset[tuple[IPAddress, int]] = frozenset()
    #: Ports whose protected host is this host (loopback/unspecified), and
    #: so is reached by every loopback name and address.
    local: frozenset[int] = frozenset()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str | None, int]], *, what: str) -> _Endpoints:
        every_host: set[int] = set()
        names: set[tuple[str, int]] = set()
        addresses: set[tuple[IPAddress, int]] = set()
        local: set[int] = set()
        for host, port in pairs:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{what}: port must be 1-65535, not {port!r}")
            if host is None:
                every_host.add(port)
                continue
            name = _normalize_name(host)
            if not _valid_name(name):
                raise ValueError(f"{what}: bad host {host!r}")
            literal = _parse_literal(name)
            views = _views(literal) if literal is not None else ()
            if views and views[0].is_unspecified:
                every_host.add(port)
                continue
            names.add((name, port))
            addresses.update((v, port) for v in views)
            if _is_local(name, views):
                local.add(port)
        return cls(frozenset(every_host), frozenset(names), frozenset(addresses), frozenset(local))

    def hit(self, name: str, views: Sequence[IPAddress], port: int) -> bool:
        return (
            port in self.every_host
            or (name, port) in self.names
            or any((v, port) in self.addresses for v in views)
            or (port in self.local and _is_local(name, views))
        )


@attrs.frozen
class ForwardRule:
    """One C{[[rule]]}: every matcher it has must match (none means any)."""

    number: int
    action: Action
    #: Lower-case wildcard patterns.
    hosts: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    #: Inclusive C{(low, high)} port ranges.
    ports: tuple[tuple[int, int], ...] = ()
    override_builtin: bool = False

    def matches(self, name: str, views: Sequence[IPAddress] | None, port: int) -> bool | None:
        """
        Whether the rule matches; L{None} when only the resolved address
        can tell (C{views} is L{None}: a name not resolved yet).
        """
        if self.ports and not any(low <= port <= high for low, high in self.ports):
            return False
        if self.hosts and not any(wildcard_match(name, p) for p in self.hosts):
            return False
        if self.networks:
            if views is None:
                return None
            return any(v in n for v in views for n in self.networks)
        return True

    @property
    def verdict(self) -> Verdict:
        if self.action is Action.ALLOW:
            return Verdict(True, f"allowed by policy rule {self.number}")
        return Verdict(False, f"destination not allowed by policy rule {self.number}")

    @property
    def override_verdict(self) -> Verdict:
        return Verdict(True, f"allowed by policy rule {self.number}, overriding a built-in denial")


def _protected(what: str):
    def convert(value: Iterable[tuple[str | None, int]] | _Endpoints) -> _Endpoints:
        return value if isinstance(value, _Endpoints) else _Endpoints.of(value, what=what)

    return convert


@attrs.frozen
class ForwardPolicy:
    """
    The rules of a policy file plus the endpoints no rule can open.

    C{ForwardPolicy()} has no rules and allows by default: only the
    built-in layers and key options decide.  C{targets} and C{listen} are
    given as C{(host, port)} pairs (see L{protecting}).
    """

    rules: tuple[ForwardRule, ...] = ()
    default: Action = Action.ALLOW
    #: Where the rules came from, for messages.
    source: str = "<no forward policy>"
    targets: _Endpoints = attrs.field(
        default=_Endpoints(), converter=_protected("targets"), repr=False
    )
    listen: _Endpoints = attrs.field(
        default=_Endpoints(), converter=_protected("listen"), repr=False
    )

    def protecting(
        self,
        *,
        targets: Iterable[tuple[str, int]],
        listen: Iterable[tuple[str | None, int]],
    ) -> ForwardPolicy:
        """
        This policy, also refusing the given endpoints whatever the rules say.

        C{targets}: C{(host, port)} of every configured target's SSH server,
        as configured B{and} once more for each address the name resolves
        to (resolve when the gateway starts and whenever it resolves again).
        A target on a loopback address or name protects that port on every
        loopback name and address.

        C{listen}: C{(address, port)} of every port the gateway listens on.
        An address of L{None} (or C{0.0.0.0}, C{::}) means all interfaces:
        the gateway cannot tell which addresses are its own, so that port
        is refused on every destination.

        Raises L{ValueError} for a port outside 1-65535 or a bad host.
        """
        return attrs.evolve(self, targets=targets, listen=listen)

    def reasons(self) -> frozenset[str]:
        """Every C{reason} a verdict of this policy can carry."""
        fixed = {
            REASON_NO_FORWARDING,
            REASON_PERMITOPEN,
            REASON_TARGET,
            REASON_GATEWAY,
            REASON_INVALID_HOST,
            REASON_INVALID_PORT,
            REASON_INVALID_ADDRESS,
            REASON_CONTROL,
            REASON_RESERVED,
            REASON_PENDING,
            REASON_DEFAULT_ALLOW,
            REASON_DEFAULT_DENY,
        }
        fixed.update(b.reason for b in BUILTIN_DENY)
        for rule in self.rules:
            fixed.add(rule.verdict.reason)
            fixed.add(rule.override_verdict.reason)
        return frozenset(fixed)

    def check_request(
        self, host: str, port: int, *, key_options: KeyOptions | None, proxied: bool
    ) -> Verdict:
        """
        What can be decided when a C{direct-tcpip} channel asks for
        C{host}, C{port}, before any name is resolved.

        C{key_options} are the options of the operator's C{authorized_keys}
        line (L{None}: no such line, nothing restricted).  With C{proxied}
        the verdict is final.  Without it, a denial is final and an
        allowance means: resolve C{host} once and ask L{check_address}.
        """
        screened = self._screen(host, port, key_options)
        if isinstance(screened, Verdict):
            return screened
        name, literal = screened
        if literal is not None:
            views: tuple[IPAddress, ...] | None = _views(literal)
        elif proxied:
            views = ()
        else:
            views = None
        return self._decide(name, views, port)

    def check_address(
        self, host: str, address: str, port: int, *, key_options: KeyOptions | None
    ) -> Verdict:
        """
        The final decision in direct mode: may the gateway connect to
        C{address} (what C{host} resolved to) on C{port}?  Repeats every
        check of L{check_request}, with the address known.  Never raises;
        an C{address} that is not an IP address is denied.
        """
        screened = self._screen(host, port, key_options)
        if isinstance(screened, Verdict):
            return screened
        name, literal = screened
        text = address
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            resolved = ipaddress.ip_address(text)
        except ValueError:
            return _INVALID_ADDRESS
        views = _views(resolved)
        if literal is not None and not set(views) & set(_views(literal)):
            # An address literal resolves to itself; anything else is a mix-up.
            return _INVALID_ADDRESS
        return self._decide(name, views, port)

    def _screen(
        self, host: str, port: int, key_options: KeyOptions | None
    ) -> Verdict | tuple[str, IPAddress | None]:
        """Layers 1-3: reserved names, malformed requests, key options."""
        name = _normalize_name(host)
        if name.startswith(_RESERVED_PREFIX):
            return _CONTROL if name == _CONTROL_NAME and port == 0 else _RESERVED
        if not _valid_name(name):
            return _INVALID_HOST
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return _INVALID_PORT
        if key_options is not None:
            if key_options.no_port_forwarding:
                return _NO_FORWARDING
            if key_options.permitopen and not any(
                (h == "*" or _normalize_name(h) == name) and (p == "*" or p == port)
                for h, p in key_options.permitopen
            ):
                return _NOT_PERMITTED
        return name, _parse_literal(name)

    def _decide(self, name: str, views: Sequence[IPAddress] | None, port: int) -> Verdict:
        """
        Layers 4-6.  C{views} is L{None} for a name not resolved yet, which
        can end in L{_PENDING}; the empty tuple for a name the proxy resolves.
        """
        known = views or ()
        if self.targets.hit(name, known, port):
            return _TARGET
        if self.listen.hit(name, known, port):
            return _GATEWAY
        builtin = next((b for b in BUILTIN_DENY if b.matches(name, known)), None)
        for rule in self.rules:
            matched = rule.matches(name, views, port)
            if matched is None:
                return _PENDING
            if matched:
                if builtin is None:
                    return rule.verdict
                if rule.action is Action.ALLOW and rule.override_builtin:
                    return rule.override_verdict
                return Verdict(False, builtin.reason)
        if builtin is not None:
            return Verdict(False, builtin.reason)
        if self.default is Action.ALLOW:
            return Verdict(True, REASON_DEFAULT_ALLOW)
        return Verdict(False, REASON_DEFAULT_DENY)


# --- the rules file ---------------------------------------------------------

_TOP_KEYS = frozenset({"default", "rule"})
_RULE_KEYS = frozenset({"action", "host", "cidr", "ports", "override_builtin"})
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})", re.ASCII)


class _RuleError(ValueError):
    """Why one rule is malformed; the caller adds the file and rule number."""


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def load_forward_policy(path: str) -> ForwardPolicy:
    """
    Read the rules file at C{path}; see L{parse_forward_policy}.

    The result protects no endpoints yet: add the targets and listening
    ports with L{ForwardPolicy.protecting}.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ForwardPolicyError(f"{path}: cannot read forward policy: {e.strerror or e}") from None
    return parse_forward_policy(data, path)


def parse_forward_policy(data: bytes, source: str) -> ForwardPolicy:
    """
    Parse a rules file (format in the module docstring).  C{source} names
    it in the one-line L{ForwardPolicyError} raised for any mistake.
    """
    document = parse_toml(data, source, ForwardPolicyError)

    for key in document:
        if key not in _TOP_KEYS:
            hint = " (rules are [[rule]] tables)" if key == "rules" else ""
            raise ForwardPolicyError(f"{source}: unknown key {_show(key)}{hint}")
    default_text = document.get("default", Action.ALLOW.value)
    try:
        default = _action(default_text)
    except _RuleError as e:
        raise ForwardPolicyError(f"{source}: default: {e}") from None

    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise ForwardPolicyError(f"{source}: rule must be an array of tables: write [[rule]]")
    rules = []
    for number, table in enumerate(tables, start=1):
        try:
            rules.append(_parse_rule(table, number))
        except _RuleError as e:
            raise ForwardPolicyError(f"{source}: rule {number}: {e}") from None
    return ForwardPolicy(rules=tuple(rules), default=default, source=source)


def _action(value: object) -> Action:
    if isinstance(value, str):
        for action in Action:
            if value == action.value:
                return action
    raise _RuleError(f'unknown action {_show(value)}: expected "allow" or "deny"')


def _parse_rule(table: object, number: int) -> ForwardRule:
    if not isinstance(table, dict):
        raise _RuleError("must be a table: write [[rule]]")
    for key in table:
        if key not in _RULE_KEYS:
            raise _RuleError(f"unknown key {_show(key)}")
    if "action" not in table:
        raise _RuleError('missing action = "allow" or "deny"')
    action = _action(table["action"])

    hosts = _parse_hosts(table["host"]) if "host" in table else ()
    networks = _parse_cidrs(table["cidr"]) if "cidr" in table else ()
    ports = _parse_ports(table["ports"]) if "ports" in table else ()

    override = table.get("override_builtin", False)
    if not isinstance(override, bool):
        raise _RuleError(f"override_builtin must be true or false, not {_show(override)}")
    if override and action is not Action.ALLOW:
        raise _RuleError('override_builtin is only valid with action = "allow"')
    if override and not (hosts or networks):
        raise _RuleError("override_builtin needs cidr or host: name what it opens")
    return ForwardRule(number, action, hosts, networks, ports, override)


def _nonempty_list(value: Any, key: str) -> list:
    if not isinstance(value, list):
        raise _RuleError(f"{key} must be a list, not {_show(value)}")
    if not value:
        raise _RuleError(f"{key} is empty: it would match nothing")
    return value


def _parse_hosts(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else _nonempty_list(value, "host")
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise _RuleError(f"host must be a pattern or a list of patterns, not {_show(item)}")
        if "/" in item:
            raise _RuleError(f"host {_show(item)} looks like a network: use cidr = [...]")
        pattern = _normalize_name(item)
        if not _valid_name(pattern):
            raise _RuleError(f"bad host pattern {_show(item)}")
        patterns.append(pattern)
    return tuple(patterns)


def _parse_cidrs(value: Any) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _nonempty_list(value, "cidr"):
        if not isinstance(item, str):
            raise _RuleError(f'bad CIDR {_show(item)}: expected a string such as "10.0.0.0/8"')
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError as e:
            raise _RuleError(f"bad CIDR {_show(item)}: {e}") from None
        networks.append(_unmapped(network))
    return tuple(networks)


def _unmapped(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped network (C{::ffff:10.0.0.0/104}) as the IPv4 network it is."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        v4 = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network((v4, network.prefixlen - 96))
    return network


def _parse_ports(value: Any) -> tuple[tuple[int, int], ...]:
    ranges = []
    for item in _nonempty_list(value, "ports"):
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and (m := _PORT_RANGE.fullmatch(item)):
            low, high = int(m.group(1)), int(m.group(2))
            if low > high:
                raise _RuleError(f"bad port range {_show(item)}: low end above high end")
        else:
            raise _RuleError(
                f'bad port {_show(item)}: expected a number or a "low-high" range in quotes'
            )
        if not (0 < low < 65536 and 0 < high < 65536):
            raise _RuleError(f"bad port {_show(item)}: ports are 1-65535")
        ranges.append((low, high))
    return tuple(ranges)
