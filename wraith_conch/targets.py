"""
Named targets (C{--targets PATH}) and the choice of target for each login.

An operator picks a target in the SSH user name: C{ssh -l alice@db1 gw} or
C{ssh alice%db1@gw} is user C{alice} on the target named C{db1}
(L{wraith_conch.gateway.auth.decode_login_name}).  A bare C{alice} goes to
the default target: C{--target} if given, else the file's C{default}, else
nowhere (refused with a message).

The file is TOML::

    # Optional: where a bare user name goes when there is no --target.
    default = "db1"

    [targets.db1]
    host = "10.0.0.5"             # a host name or an IP literal, no port
    port = 22                     # optional, 22 when left out
    known_hosts = "/etc/wraith/db1.known_hosts"

    [targets.db2]
    host = "db2.internal"
    port = 2222
    host_key = "ssh-ed25519 AAAAC3Nza..."   # the key itself instead of a file
    users = ["alice", "bob"]                # optional: only they may use it

Every target pins its host key, with exactly one of C{known_hosts} (an
OpenSSH known_hosts file that must hold a key for this host and port) or
C{host_key} (one public key, C{TYPE BASE64 [comment]}): a target without a
pin would trust whatever answers, so the file is refused.  A relative
C{known_hosts} path is relative to the targets file's directory.

Aliases use the same syntax as in the login name (letters, digits, C{_},
C{.}, C{-}; at most 64 characters; not starting with C{.} or C{-}) and are
compared ignoring case, so two aliases that differ only in case are refused
as duplicates.  C{users} are login names as the gateway accepts them.

Everything here is pure except L{load_targets}, which reads the file and
the C{known_hosts} files it names (through an injectable reader).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.conch.ssh import keys
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import Logger

from wraith_conch.gateway.auth import decode_login_name
from wraith_conch.tomlfile import parse_toml
from wraith_conch.upstream.client import TargetAddress, UpstreamError
from wraith_conch.upstream.known_hosts import (
    KnownHostEntry,
    KnownHosts,
    KnownHostsError,
    host_lookup_name,
    load_known_hosts,
)

__all__ = [
    "Route",
    "TargetRefused",
    "TargetRouter",
    "Targets",
    "TargetsError",
    "describe_targets",
    "load_targets",
    "parse_targets",
]

_log = Logger()

_TOP_KEYS = frozenset({"default", "targets"})
_TARGET_KEYS = frozenset({"host", "port", "known_hosts", "host_key", "users"})


class TargetsError(Exception):
    """The targets file cannot be used; C{str()} is one line naming the file."""


class TargetRefused(UpstreamError):
    """
    The operator asked for a target they cannot have.  C{str()} is for the
    operator (the gateway disconnects with C{wraith: ...}); C{why} is the
    exact reason for the log: C{unknown}, C{not-allowed}, C{no-default} or
    C{no-targets}.

    An L{UpstreamError}, so the operator is told the reason instead of a
    bare "Permission denied"; no connection to anything was made.
    """

    def __init__(self, message: str, *, user: str, alias: str | None, why: str) -> None:
        super().__init__(message)
        self.user = user
        self.alias = alias
        self.why = why


@attrs.frozen
class Route:
    """Where one login goes: a target and the host keys pinned for it."""

    #: The name in the targets file; None for the C{--target}.
    alias: str | None
    address: TargetAddress
    known_hosts: KnownHosts = attrs.field(repr=False)
    #: Who may use it; None: every authenticated operator.
    users: frozenset[str] | None = None

    def allows(self, user: str) -> bool:
        return self.users is None or user in self.users

    def describe(self) -> str:
        """C{db1 (10.0.0.5:22)}, or the address alone for the C{--target}."""
        return str(self.address) if self.alias is None else f"{self.alias} ({self.address})"


@attrs.frozen
class Targets:
    """A parsed targets file."""

    #: In file order.
    routes: tuple[Route, ...] = ()
    #: The alias (as written in the file) that a bare user name goes to, if any.
    default: str | None = None
    source: str = "targets"

    def get(self, alias: str) -> Route | None:
        """The route named C{alias}, ignoring case; None if there is none."""
        folded = alias.casefold()
        for route in self.routes:
            if route.alias is not None and route.alias.casefold() == folded:
                return route
        return None


@attrs.frozen
class TargetRouter:
    """
    Picks the L{Route} for an operator: pure, no connection is made here.

    C{fallback} is where a bare user name goes (the C{--target}, or the
    targets file's C{default}); C{targets} is the file, None without
    C{--targets}.
    """

    fallback: Route | None = None
    targets: Targets | None = None

    @classmethod
    def build(
        cls,
        target: TargetAddress | None,
        known_hosts: KnownHosts | None,
        targets: Targets | None,
    ) -> TargetRouter:
        """The router for a configuration: C{--target} wins over the file's C{default}."""
        fallback = None
        if target is not None and known_hosts is not None:
            fallback = Route(alias=None, address=target, known_hosts=known_hosts)
        elif targets is not None and targets.default is not None:
            fallback = targets.get(targets.default)
        return cls(fallback=fallback, targets=targets)

    def routes(self) -> tuple[Route, ...]:
        """Every route a login can take (the SSH servers a tunnel must never reach)."""
        named = self.targets.routes if self.targets is not None else ()
        return ((self.fallback,) if self.fallback is not None else ()) + tuple(
            route for route in named if route is not self.fallback
        )

    def route(self, user: str, alias: str | None) -> Route:
        """
        The route for C{user} asking for C{alias} (None: a bare user name),
        or L{TargetRefused}.

        The operator's message is the same for an alias that does not exist
        and one the user may not use, so that (in passthrough mode, where
        this is asked before the password is checked) nobody learns which
        aliases exist; the log has the difference (L{TargetRefused.why}).
        """
        if alias is None:
            if self.fallback is None:
                raise TargetRefused(
                    f"no default target: log in as {user}@TARGET",
                    user=user,
                    alias=None,
                    why="no-default",
                )
            chosen = self.fallback
        elif self.targets is None:
            raise TargetRefused(
                f"unknown target {alias!r}: this gateway has no named targets",
                user=user,
                alias=alias,
                why="no-targets",
            )
        else:
            found = self.targets.get(alias)
            if found is None:
                raise TargetRefused(
                    f"target {alias!r} is unknown or not open to {user}",
                    user=user,
                    alias=alias,
                    why="unknown",
                )
            chosen = found
        if not chosen.allows(user):
            raise TargetRefused(
                f"target {alias or chosen.alias!r} is unknown or not open to {user}",
                user=user,
                alias=alias,
                why="not-allowed",
            )
        return chosen

    def choose(self, user: str, alias: str | None, remote_addr: str) -> Route:
        """L{route}, logging a refusal (user, requested alias, client address)."""
        try:
            return self.route(user, alias)
        except TargetRefused as e:
            _log.warn(
                "target refused for {user}: {target_alias} ({reason}) from {remote_addr}",
                event_kind="route",
                result="refused",
                user=user,
                target_alias=alias if alias is not None else "-",
                reason=e.why,
                remote_addr=remote_addr,
            )
            raise


def describe_targets(config) -> str:
    """
    For the start-up line: C{10.0.0.5:22}, C{10.0.0.5:22 and targets db1, db2}
    or C{targets db1, db2 (default db1)}.  C{config} is a
    L{wraith_conch.config.Config}.
    """
    parts = [str(config.target)] if config.target is not None else []
    targets = config.targets
    if targets is not None:
        names = ", ".join(route.alias or "" for route in targets.routes)
        default = f" (default {targets.default})" if targets.default else ""
        parts.append(f"targets {names}{default}")
    return " and ".join(parts)


# -- the file ---------------------------------------------------------------------------------


def load_targets(
    path: str, read_known_hosts: Callable[[str], KnownHosts] = load_known_hosts
) -> Targets:
    """Read the targets file at C{path}; see L{parse_targets}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TargetsError(f"{path}: cannot read the targets file: {e.strerror or e}") from None
    return parse_targets(data, path, read_known_hosts)


def parse_targets(
    data: bytes,
    source: str,
    read_known_hosts: Callable[[str], KnownHosts] = load_known_hosts,
) -> Targets:
    """
    Parse a targets file (format in the module docstring).  C{source} (its
    path) names it in the one-line L{TargetsError} raised for any mistake and
    is where relative C{known_hosts} paths start from; C{read_known_hosts}
    reads such a file (may raise L{KnownHostsError}).
    """
    document = parse_toml(data, source, TargetsError)

    for key in document:
        if key not in _TOP_KEYS:
            hint = " (a target is a [targets.NAME] table)" if key in ("target", "hosts") else ""
            raise TargetsError(f"{source}: unknown key {_show(key)}{hint}")
    tables = document.get("targets", {})
    if not isinstance(tables, dict):
        raise TargetsError(f"{source}: targets must be tables: write [targets.NAME]")
    if not tables:
        raise TargetsError(f"{source}: no targets: add a [targets.NAME] table")

    base = os.path.dirname(os.path.abspath(source))
    routes: list[Route] = []
    seen: dict[str, str] = {}
    for alias, table in tables.items():
        where = f"{source}: targets.{_show(alias, quote=False)}"
        _check_alias(alias, where)
        if alias.casefold() in seen:
            raise TargetsError(
                f"{where}: duplicate of targets.{seen[alias.casefold()]} (aliases ignore case)"
            )
        seen[alias.casefold()] = alias
        try:
            routes.append(_parse_target(alias, table, base, read_known_hosts))
        except _TargetError as e:
            raise TargetsError(f"{where}: {e}") from None

    default = document.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise TargetsError(f"{source}: default must be a target name (a string)")
        found = Targets(routes=tuple(routes)).get(default)
        if found is None:
            raise TargetsError(f"{source}: default {_show(default)} is not one of the targets")
        default = found.alias
    return Targets(routes=tuple(routes), default=default, source=source)


class _TargetError(ValueError):
    pass


def _check_alias(alias: str, where: str) -> None:
    # The very syntax an operator can type after the @ or %.
    try:
        login = decode_login_name(f"x@{alias}".encode())
    except UnauthorizedLogin:
        login = None
    if login is None or login.target != alias:
        raise TargetsError(
            f"{where}: not a usable alias (letters, digits, '_', '.', '-', at most 64,"
            " not starting with '.' or '-')"
        )


def _parse_target(
    alias: str,
    table: Any,
    base: str,
    read_known_hosts: Callable[[str], KnownHosts],
) -> Route:
    if not isinstance(table, dict):
        raise _TargetError("must be a table: write [targets.NAME] with host = ...")
    unknown = sorted(set(table) - _TARGET_KEYS)
    if unknown:
        raise _TargetError(
            f"unknown key {_show(unknown[0])} (expected {', '.join(sorted(_TARGET_KEYS))})"
        )
    address = _address(table)
    has_file = "known_hosts" in table
    has_key = "host_key" in table
    if has_file == has_key:
        raise _TargetError(
            "give exactly one of known_hosts or host_key: the target's host key must be pinned"
            if not has_file
            else "give known_hosts or host_key, not both"
        )
    if has_file:
        known_hosts = _known_hosts_file(table["known_hosts"], address, base, read_known_hosts)
    else:
        known_hosts = _inline_host_key(table["host_key"], address, alias)
    return Route(
        alias=alias, address=address, known_hosts=known_hosts, users=_users(table.get("users"))
    )


def _address(table: Mapping[str, Any]) -> TargetAddress:
    host = table.get("host")
    if not isinstance(host, str) or not host.strip():
        raise _TargetError("host is required: a host name or IP address")
    port = table.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise _TargetError(f"port must be a number from 1 to 65535, not {_show(port)}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.count(":") == 1:
        # Not an IPv6 literal (which has two colons or more): HOST:PORT.
        raise _TargetError(f"bad host {_show(host)} (give the port as port = N)")
    # TargetAddress.parse checks the host as --target does; an IPv6 literal
    # goes in brackets so that its colons are not taken for a port.
    try:
        return TargetAddress.parse(f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}")
    except ValueError:
        raise _TargetError(f"bad host {_show(host)}") from None


def _known_hosts_file(
    path: Any,
    address: TargetAddress,
    base: str,
    read_known_hosts: Callable[[str], KnownHosts],
) -> KnownHosts:
    if not isinstance(path, str) or not path:
        raise _TargetError("known_hosts must be a path (a string)")
    full = os.path.join(base, os.path.expanduser(path))
    try:
        known_hosts = read_known_hosts(full)
    except KnownHostsError as e:
        raise _TargetError(f"known_hosts: {e}") from None
    # A file without this host's key would refuse every login at connect
    # time; say so now, with the name the file must use.
    if not known_hosts.entries_for(address.host, address.port):
        name = host_lookup_name(address.host, address.port)
        raise _TargetError(f"known_hosts {full} has no key for {name}")
    return known_hosts


def _inline_host_key(text: Any, address: TargetAddress, alias: str) -> KnownHosts:
    if not isinstance(text, str):
        raise _TargetError("host_key must be a public key line (a string)")
    words = text.split()
    if len(words) < 2:
        raise _TargetError("host_key must be 'TYPE BASE64 [comment]', as in a .pub file")
    try:
        key = keys.Key.fromString(f"{words[0]} {words[1]}".encode("ascii"))
    except Exception:
        # Conch raises BadKeyError, ValueError, binascii.Error... for junk.
        raise _TargetError("host_key is not a public key 'TYPE BASE64 [comment]'") from None
    if not key.isPublic() or key.sshType().decode("ascii", "replace") != words[0]:
        raise _TargetError("host_key: the key type does not match the key data")
    # The same check as a known_hosts line for exactly this host and port.
    entry = KnownHostEntry(lineno=1, hosts=(host_lookup_name(address.host, address.port),), key=key)
    return KnownHosts(entries=(entry,), source=f"host_key of targets.{alias}")


def _users(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _TargetError("users must be a non-empty list of user names")
    users = set()
    for user in value:
        try:
            login = decode_login_name(user.encode()) if isinstance(user, str) else None
        except UnauthorizedLogin:
            login = None
        if login is None or login.target is not None or login.user != user:
            raise _TargetError(f"users: {_show(user)} is not a user name")
        users.add(user)
    return frozenset(users)


def _show(value: Any, limit: int = 40, *, quote: bool = True) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text) if quote and isinstance(value, str) else text
