"""
Operator authentication: who may use the gateway, and with what restrictions.

Two modes, and neither ever accepts everything:

  - C{keys}: public keys from an OpenSSH C{authorized_keys} file, with its
    options (C{from=}, C{no-pty}, C{restrict}, ...) honoured, and OpenSSH
    user certificates from trusted CAs (L{wraith_conch.gateway.certificates});
  - C{passthrough}: the operator's password is tried against the target
    first, and the operator is let in only if the target accepts it; that
    authenticated connection then carries the operator's session.

Conch's credential objects do not carry the client's address, which
C{from=} needs, so L{ClientAddressPortal} wraps each credential with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred import credentials as credmod
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import directlyProvides, implementer, providedBy

from wraith_conch.gateway.authorized_keys import (
    AuthorizedKeys,
    AuthorizedKeysError,
    KeyOptions,
    load_authorized_keys,
)
from wraith_conch.gateway.certificates import (
    CertificateError,
    authorize_certificate,
    is_certificate_blob,
    parse_certificate,
    verify_userauth_signature,
)
from wraith_conch.gateway.revocation import RevokedKeysFile
from wraith_conch.upstream.client import UpstreamAuthFailed, UpstreamConnection, UpstreamLogin
from wraith_conch.upstream.known_hosts import sha256_fingerprint
from wraith_conch.watchedfile import WatchedFile

_log = Logger()

# The user name is also the login name at the target and appears in logs
# and approval requests, so keep it to what a Unix login name can be.
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}$")
# A target alias from --targets, after the user name: alice@db1 or alice%db1.
_TARGET_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


@attrs.frozen
class LoginName:
    """
    What the operator typed as the SSH user name, split: C{alice@db1}
    (C{ssh -l alice@db1 gw}) and C{alice%db1} (C{ssh alice%db1@gw}) are user
    C{alice} on the target named C{db1}; a bare C{alice} has no target
    (the default C{--target}).
    """

    user: str
    target: str | None = None


def decode_login_name(raw: bytes) -> LoginName:
    """The operator's L{LoginName}, or L{UnauthorizedLogin} if it is not a sane one."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnauthorizedLogin("user name is not UTF-8") from None
    user, separator, alias = _split_at_separator(name)
    if not _USER_NAME.match(user):
        raise UnauthorizedLogin("user name has characters a login name cannot have")
    if separator and not _TARGET_ALIAS.match(alias):
        raise UnauthorizedLogin("target name has characters a target alias cannot have")
    return LoginName(user=user, target=alias if separator else None)


def _split_at_separator(name: str) -> tuple[str, str, str]:
    at = [i for i in (name.find("@"), name.find("%")) if i >= 0]
    if not at:
        return name, "", ""
    i = min(at)
    return name[:i], name[i], name[i + 1 :]


@attrs.frozen
class OperatorIdentity:
    """The avatar id: an authenticated operator and how they got in."""

    user: str
    client: str
    method: str
    #: The --targets alias the operator asked for (C{alice@db1}); None: --target.
    target: str | None = None
    key_fingerprint: str | None = None
    options: KeyOptions = attrs.field(factory=KeyOptions)
    #: For a certificate login: its serial and key ID (as signed by the CA).
    cert_serial: int | None = None
    cert_key_id: str | None = None
    upstream: UpstreamConnection | None = attrs.field(default=None, eq=False, repr=False)


class _WithClientAddress:
    """A credential as Conch made it, plus the address it came from."""

    def __init__(self, inner: object, client_address: str) -> None:
        self._inner = inner
        self.client_address = client_address
        directlyProvides(self, *providedBy(inner))

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class ClientAddressPortal:
    """Wraps a portal so checkers see C{credentials.client_address}."""

    def __init__(self, portal, client_address: str) -> None:
        self._portal = portal
        self._client_address = client_address

    def listCredentialsInterfaces(self):
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials, mind, *interfaces):
        return self._portal.login(
            _WithClientAddress(credentials, self._client_address), mind, *interfaces
        )


@implementer(ICredentialsChecker)
class AuthorizedKeysChecker:
    """
    Public-key auth against C{authorized_keys}, options included.

    C{keys_for(user)} gives the keys that may log in as C{user}: one shared
    file, or with a C{%u} path template one file per user as sshd's
    C{AuthorizedKeysFile} (see L{authorized_keys_source}).  In a shared file
    a line with C{principals="alice,bob"} may log in only as those users.

    OpenSSH user certificates log in when their CA is in C{trusted_ca_keys}
    (key blobs, or a callable giving them: C{--trusted-user-ca-keys}) or on
    a C{cert-authority} line (L{wraith_conch.gateway.certificates});
    C{revoked} (C{--revoked-keys}) refuses keys, certificates and CAs.
    """

    credentialInterfaces = (credmod.ISSHPrivateKey,)

    def __init__(
        self,
        keys_for: Callable[[str], AuthorizedKeys],
        now: Callable[[], datetime] | None = None,
        *,
        trusted_ca_keys: frozenset[bytes] | Callable[[], frozenset[bytes]] = frozenset(),
        revoked: RevokedKeysFile | None = None,
    ) -> None:
        self._keys_for = keys_for
        self._now = now or (lambda: datetime.now(UTC))
        # A callable is asked at each login (the file may have changed).
        self._trusted_ca_keys = (
            trusted_ca_keys if callable(trusted_ca_keys) else (lambda: trusted_ca_keys)
        )
        self._revoked = revoked

    def requestAvatarId(self, credentials) -> defer.Deferred:
        return defer.maybeDeferred(self._check, credentials)

    def _check(self, credentials) -> OperatorIdentity:
        login = decode_login_name(credentials.username)
        user = login.user
        client = credentials.client_address
        if is_certificate_blob(credentials.blob):
            return self._check_certificate(credentials, login, client)
        if self._revoked is not None:
            revoked = self._revoked.key_revoked_reason(credentials.blob)
            if revoked:
                raise UnauthorizedLogin(revoked)
        entry = self._keys_for(user).match(credentials.blob, _host_of(client), self._now())
        if entry is None:
            raise UnauthorizedLogin("key not authorized")
        if entry.options.principals and user not in entry.options.principals:
            raise UnauthorizedLogin("key not authorized for this user name")
        if credentials.signature is None:
            raise ValidPublicKey()
        try:
            key = keys.Key.fromString(credentials.blob)
            good = key.verify(credentials.signature, credentials.sigData)
        except Exception:
            good = False
        if not good:
            raise UnauthorizedLogin("bad signature")
        return OperatorIdentity(
            user=user,
            client=client,
            method="publickey",
            target=login.target,
            key_fingerprint=sha256_fingerprint(key),
            options=entry.options,
        )

    def _check_certificate(self, credentials, login: LoginName, client: str) -> OperatorIdentity:
        host, now = _host_of(client), self._now()
        try:
            cert = parse_certificate(credentials.blob)
            if self._revoked is not None:
                revoked = self._revoked.certificate_revoked_reason(
                    cert.key_blob, cert.ca_blob, cert.serial, cert.key_id_bytes
                )
                if revoked:
                    raise CertificateError(revoked)
            options = authorize_certificate(
                cert,
                user=login.user,
                client_address=host,
                now=now,
                trusted_ca_blobs=self._trusted_ca_keys(),
                authority_lines=self._keys_for(login.user).authorities(cert.ca_blob, host, now),
            )
        except CertificateError as e:
            raise UnauthorizedLogin(str(e)) from None
        if credentials.signature is None:
            raise ValidPublicKey()
        if not verify_userauth_signature(
            cert, credentials.algName, credentials.signature, credentials.sigData
        ):
            raise UnauthorizedLogin("bad signature")
        return OperatorIdentity(
            user=login.user,
            client=client,
            method="publickey",
            target=login.target,
            key_fingerprint=cert.fingerprint,
            options=options,
            cert_serial=cert.serial,
            cert_key_id=cert.key_id,
        )


def authorized_keys_source(
    path: str, loaded: AuthorizedKeys | None, watched: WatchedFile[AuthorizedKeys] | None = None
) -> Callable[[str], AuthorizedKeys]:
    """
    Where the keys for a user come from: the shared file (C{watched}, re-read
    when it changes, so a deleted key stops working at once as with sshd),
    or, for a path with C{%u}, that user's own file read at each login.  A
    missing or malformed per-user file lets nobody in as that user; the
    error is logged, never the keys.  C{loaded} serves when there is no file
    to watch (certificates only).
    """
    if "%u" not in path:
        if watched is not None:
            return lambda user: watched.current()
        return lambda user: loaded

    def per_user(user: str) -> AuthorizedKeys:
        try:
            return load_authorized_keys(path.replace("%u", user))
        except AuthorizedKeysError as e:
            _log.info("no usable keys for {user}: {error}", user=user, error=str(e))
            return AuthorizedKeys()

    return per_user


def warn_about_authorized_keys(keys: AuthorizedKeys) -> None:
    """Log what an operator should fix in a shared C{--authorized-keys} file."""
    for skipped in keys.skipped:
        _log.warn(
            "--authorized-keys line {lineno} ignored: {reason}",
            lineno=skipped.lineno,
            reason=skipped.reason,
        )
    unbound = keys.unbound_lines()
    if unbound:
        # The user name picks the account on the target: in a shared file,
        # a key without principals= may choose any (docs/security.md).
        _log.warn(
            "--authorized-keys lines {lines} have no principals=: each of those keys may log"
            " in under any user name (bind them with principals=, or use per-user %u files)",
            lines=", ".join(map(str, unbound[:20])) + (" ..." if len(unbound) > 20 else ""),
        )


@implementer(ICredentialsChecker)
class PassthroughChecker:
    """
    Password auth decided by the target: the password is tried there first.

    C{router} (a L{wraith_conch.targets.TargetRouter}) picks the target from
    the login name first: an alias the operator may not use is refused
    before anything is connected to (L{wraith_conch.targets.TargetRefused},
    told to the operator).  C{connect} then opens an authenticated upstream
    connection to that route for an L{UpstreamLogin}; its failures other
    than a refused login (host key, target down) pass through so the
    operator is told the real reason.
    """

    credentialInterfaces = (credmod.IUsernamePassword,)

    def __init__(self, connect: Callable[..., defer.Deferred], router) -> None:
        self._connect = connect
        self._router = router

    def requestAvatarId(self, credentials) -> defer.Deferred:
        try:
            login = decode_login_name(credentials.username)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        user = login.user
        client = credentials.client_address
        try:
            route = self._router.choose(user, login.target, client)
        except Exception as e:  # TargetRefused, already logged
            return defer.fail(e)
        d = self._connect(route, UpstreamLogin(user=user, password=credentials.password))

        def accepted(upstream: UpstreamConnection) -> OperatorIdentity:
            return OperatorIdentity(
                user=user, client=client, method="password", target=login.target, upstream=upstream
            )

        def refused(failure):
            failure.trap(UpstreamAuthFailed)
            raise UnauthorizedLogin("the target refused the password")

        return d.addCallbacks(accepted, refused)


def _host_of(client: str) -> str:
    """C{1.2.3.4:5678} or C{[::1]:5678} to the bare address."""
    if client.startswith("["):
        return client[1:].partition("]")[0]
    return client.rpartition(":")[0] or client
