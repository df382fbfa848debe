"""
Who may decide: the reviewer accounts of the embedded approval hub.

C{twistd wraith-hub --reviewers PATH} reads a TOML file with one
C{[[reviewer]]} table per person::

    # /etc/wraith/reviewers.toml -- keep it 0600: it holds password hashes.
    [[reviewer]]
    name = "bob"
    # sha256 of bob's API token, in hex: for wraith-review and login links.
    token_sha256 = "fd5c61abb44edcb89e371562f8808e8b6a5429187455cf107a4f857f81b8f4d1"

    [[reviewer]]
    name = "carol"
    # bcrypt hash of carol's console password ($2b$...).
    password_bcrypt = "$2b$12$fHiPZxfb3CyFvFcuFa1qXuYdEAwilJ8c4fxau74uyyNZ3dLzoFd3a"

A reviewer needs at least one of C{token_sha256} and C{password_bcrypt}
and may have both; names are unique.  Any other key is an error, so a typo
cannot silently disable a credential.  Only hashes are stored: the file
does not let its reader log in.  Make entries with::

    python -m wraith_conch.approval.reviewers token NAME     # prints a new token + entry
    python -m wraith_conch.approval.reviewers password NAME  # asks for a password

Passwords are limited to 72 bytes (bcrypt's limit); tokens are compared by
their SHA-256 digest with L{hmac.compare_digest}, and every comparison runs
over all reviewers, so neither the time taken nor an early exit tells which
name or token was close.

Without a file the hub makes one reviewer, C{admin}, with a random token,
and prints its login link once at start-up (L{Reviewers.with_random_admin}).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
import tomllib
from collections.abc import Iterable

import attrs
import bcrypt

DEFAULT_ADMIN = "admin"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_KEYS = {"name", "token_sha256", "password_bcrypt"}

# bcrypt.checkpw against this when the name is unknown, so an unknown name
# costs the same time as a wrong password (cost 12, like the entries the
# "password" command writes).
_DUMMY_HASH = b"$2b$12$ISSQfSofuDtZ85H45Quqg.lzzEHnjFes7lo0.1La.cmCMP5U8FxaC"


class ReviewersFileError(ValueError):
    """The reviewers file cannot be used; the message is one line naming the problem."""


def token_digest(token: str) -> str:
    """The C{token_sha256} value for C{token}: SHA-256 of its UTF-8, in lower-case hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, rounds: int = 12) -> str:
    """A C{password_bcrypt} value for C{password}."""
    raw = password.encode("utf-8")
    if len(raw) > 72:
        raise ValueError("passwords are limited to 72 bytes (bcrypt)")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode("ascii")


@attrs.frozen
class Reviewer:
    """One account: C{name} and the hashes of its credentials (either may be absent)."""

    name: str
    token_sha256: bytes | None = None
    password_bcrypt: bytes | None = None


@attrs.frozen
class Reviewers:
    """
    The accounts the hub accepts.  Pure: no I/O after L{load}.

    L{authenticate_password} runs bcrypt and takes a quarter of a second or
    so: call it in a thread, never on the reactor.
    """

    accounts: tuple[Reviewer, ...]

    @classmethod
    def load(cls, path: str) -> Reviewers:
        """
        Read a reviewers file.

        @raise ReviewersFileError: unreadable, not TOML, or an entry is wrong.
        """
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ReviewersFileError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ReviewersFileError(f"{path}: not valid TOML: {e}") from None
        return cls.from_data(data, source=path)

    @classmethod
    def from_data(cls, data: dict, source: str = "reviewers") -> Reviewers:
        """Build from the parsed TOML document (see the module docstring)."""
        unknown = set(data) - {"reviewer"}
        if unknown:
            raise ReviewersFileError(
                f"{source}: unknown top-level key {sorted(unknown)[0]!r};"
                " expected [[reviewer]] tables"
            )
        entries = data.get("reviewer")
        if not isinstance(entries, list) or not entries:
            raise ReviewersFileError(f"{source}: no [[reviewer]] entries")
        accounts = []
        seen: set[str] = set()
        for number, entry in enumerate(entries, 1):
            where = f"{source}: reviewer #{number}"
            if not isinstance(entry, dict):
                raise ReviewersFileError(f"{where}: not a table")
            extra = set(entry) - _KEYS
            if extra:
                raise ReviewersFileError(f"{where}: unknown key {sorted(extra)[0]!r}")
            name = entry.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ReviewersFileError(
                    f"{where}: name must be 1-64 letters, digits or ._@+- (starting with"
                    " a letter or digit)"
                )
            if name in seen:
                raise ReviewersFileError(f"{where}: name {name!r} appears twice")
            seen.add(name)
            digest = entry.get("token_sha256")
            if digest is not None and (
                not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower())
            ):
                raise ReviewersFileError(f"{where} ({name}): token_sha256 must be 64 hex digits")
            hashed = entry.get("password_bcrypt")
            if hashed is not None and (
                not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed)
            ):
                raise ReviewersFileError(
                    f"{where} ({name}): password_bcrypt must be a bcrypt hash ($2b$...)"
                )
            if digest is None and hashed is None:
                raise ReviewersFileError(f"{where} ({name}): needs token_sha256 or password_bcrypt")
            accounts.append(
                Reviewer(
                    name=name,
                    token_sha256=None if digest is None else bytes.fromhex(digest),
                    password_bcrypt=None if hashed is None else hashed.encode("ascii"),
                )
            )
        return cls(tuple(accounts))

    @classmethod
    def with_random_admin(cls) -> tuple[Reviewers, str]:
        """One reviewer, C{admin}, with a fresh random token; returns the token too."""
        token = new_token()
        admin = Reviewer(DEFAULT_ADMIN, token_sha256=hashlib.sha256(token.encode()).digest())
        return cls((admin,)), token

    def authenticate_token(self, token: object) -> str | None:
        """The name of the reviewer whose token is C{token}, else C{None}."""
        if not isinstance(token, str) or not token or len(token) > 1024:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for account in self.accounts:
            # Compare against every account: no early exit to time.
            expected = account.token_sha256 or b"\0" * 32
            if hmac.compare_digest(digest, expected) and account.token_sha256 is not None:
                found = found or account.name
        return found

    def authenticate_password(self, name: object, password: object) -> str | None:
        """
        The reviewer's name if C{password} is theirs, else C{None}.  Slow
        (bcrypt) by design, the same whether or not C{name} exists.
        """
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        raw = password.encode("utf-8", "surrogatepass")
        account = None
        for candidate in self.accounts:
            if hmac.compare_digest(candidate.name.encode(), name.encode("utf-8", "surrogatepass")):
                account = candidate
        hashed = account.password_bcrypt if account is not None else None
        try:
            ok = bcrypt.checkpw(raw, hashed or _DUMMY_HASH)
        except ValueError:  # longer than 72 bytes: never a valid password here
            ok = False
        return account.name if ok and hashed is not None and account is not None else None

    def names(self) -> list[str]:
        return [account.name for account in self.accounts]


def _entry(name: str, key: str, value: str) -> str:
    return f'[[reviewer]]\nname = "{name}"\n{key} = "{value}"\n'


def main(argv: Iterable[str] | None = None) -> int:
    """C{python -m wraith_conch.approval.reviewers token|password NAME}."""
    import argparse
    import getpass

    parser = argparse.ArgumentParser(
        prog="python -m wraith_conch.approval.reviewers",
        description="Print a [[reviewer]] entry for a wraith hub reviewers file.",
    )
    parser.add_argument("what", choices=["token", "password"])
    parser.add_argument("name")
    args = parser.parse_args(None if argv is None else list(argv))
    if not _NAME.fullmatch(args.name):
        parser.error("name must be 1-64 letters, digits or ._@+-")
    if args.what == "token":
        token = new_token()
        print(f"# token for {args.name} (shown once; give it to them, keep only the hash):")
        print(f"# {token}")
        print(_entry(args.name, "token_sha256", token_digest(token)))
        return 0
    password = getpass.getpass(f"password for {args.name}: ")
    if password != getpass.getpass("again: "):
        print("passwords differ", file=sys.stderr)
        return 1
    try:
        hashed = hash_password(password)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(_entry(args.name, "password_bcrypt", hashed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
