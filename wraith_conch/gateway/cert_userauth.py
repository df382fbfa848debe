"""
Getting certificate logins past Conch's user auth to the checker.

Conch's C{SSHUserAuthServer.auth_publickey} parses the offered key with
C{keys.Key.fromString} before it builds the credential, and that fails for
every C{*-cert-v01@openssh.com} blob ("Unsupported key type ... or bad
key"), so the checker would never see a certificate.  This mixin builds the
same L{ISSHPrivateKey} credential for certificates itself -- the same
signed data as Conch (RFC 4252 section 7) -- and leaves every other key to
Conch.  What a certificate is worth is decided by the checker
(L{wraith_conch.gateway.certificates}).
"""

from __future__ import annotations

from twisted.conch import interfaces
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from wraith_conch.gateway.certificates import is_certificate_blob


class CertificatePublicKeyAuth:
    """Mix in before C{SSHUserAuthServer}: certificate blobs reach the portal."""

    def auth_publickey(self, packet: bytes):
        try:
            has_signature = packet[0]
            algorithm, blob, rest = getNS(packet[1:], 2)
        except Exception:
            return super().auth_publickey(packet)
        if not is_certificate_blob(blob):
            return super().auth_publickey(packet)
        if not has_signature:
            # A query: the checker answers ValidPublicKey, and Conch's
            # _ebCheckKey turns that into USERAUTH_PK_OK.
            query = credentials.SSHPrivateKey(self.user, algorithm, blob, None, None)
            return self.portal.login(query, None, interfaces.IConchUser).addErrback(
                self._ebCheckKey, packet[1:]
            )
        try:
            signature = getNS(rest)[0]
        except Exception:
            return defer.fail(UnauthorizedLogin("malformed signature"))
        signed = (
            NS(self.transport.sessionID)
            + bytes((MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.nextService)
            + NS(b"publickey")
            + bytes((has_signature,))
            + NS(algorithm)
            + NS(blob)
        )
        attempt = credentials.SSHPrivateKey(self.user, algorithm, blob, signed, signature)
        return self.portal.login(attempt, None, interfaces.IConchUser)


#: The signature algorithms the gateway verifies in publickey auth, for
#: RFC 8308's C{server-sig-algs}.  Conch's server advertises its I{host} key
#: algorithms there instead (often just C{ssh-ed25519}), and then OpenSSH
#: clients find "no mutual signature algorithm" for every RSA key and RSA
#: certificate; OpenSSH's sshd lists its accepted algorithms, as here.
USERAUTH_SIGNATURE_ALGORITHMS = (
    b"ssh-ed25519",
    b"sk-ssh-ed25519@openssh.com",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"sk-ecdsa-sha2-nistp256@openssh.com",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


class UserAuthSignatureAlgorithms:
    """Mix in before C{SSHServerTransport}: a true C{server-sig-algs}."""

    def sendExtInfo(self, extensions):
        extensions = [
            (
                name,
                b",".join(USERAUTH_SIGNATURE_ALGORITHMS) if name == b"server-sig-algs" else value,
            )
            for name, value in extensions
        ]
        return super().sendExtInfo(extensions)
