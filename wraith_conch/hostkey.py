"""The gateway's own host key: loaded, or generated once with mode 0600."""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys


class HostKeyError(Exception):
    pass


def load_or_create_host_key(path: str) -> keys.Key:
    """
    Load the private key at C{path}; if there is no file, generate ed25519.

    The new file is created with C{O_EXCL} and mode 0600 so the key is never
    readable by others, not even for a moment.  An existing key that others
    can read is refused, as sshd refuses one.
    """
    if not os.path.exists(path):
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise HostKeyError(f"cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return load_private_key(path, what="host key", private=True)


def load_private_key(path: str, *, what: str, private: bool = True) -> keys.Key:
    """Load an OpenSSH/PEM private key, with a one-line error on any problem."""
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise HostKeyError(f"cannot read {what} {path}: {e.strerror}") from None
    if private and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HostKeyError(
            f"{what} {path} is accessible by others (mode {stat.S_IMODE(info.st_mode):04o});"
            " run chmod 600 on it"
        )
    try:
        key = keys.Key.fromString(data)
    except (keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise HostKeyError(f"{path} is not a usable private key: {e}") from None
    if not key.isPublic() and key.type() in ("Ed25519", "EC", "RSA"):
        return key
    raise HostKeyError(f"{path} is not an ed25519, ecdsa or rsa private key")
