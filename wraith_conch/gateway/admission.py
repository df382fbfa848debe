"""
The Twisted side of the gateway's limits (the counting is in L{limits}).

L{AdmissionTransportMixin} goes on the operator-facing SSH transport: it
refuses connections at accept, disconnects those not authenticated within
the login grace time, refuses malformed identification lines and oversized
packets, and turns any exception raised while parsing a peer's bytes into a
logged disconnect.  L{SerialAuthMixin} goes on the user-auth service and
checks one authentication request at a time.

Every refusal is one log event with C{event_kind}, C{result} and
C{remote_addr} (see contrib/fail2ban/).
"""

from __future__ import annotations

import struct

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS, getNS

from wraith_conch.gateway.limits import (
    MAX_PACKET,
    Refusal,
    Ticket,
    address_key,
    identification_problem,
)

_LENGTH = struct.Struct("!L")

#: Seconds a disconnected peer gets to read our DISCONNECT message before the
#: socket is aborted: one that never reads would otherwise hold it forever.
DISCONNECT_DRAIN = 5.0

_REFUSAL_REASONS = {
    Refusal.PER_IP: "too many connections from this address (limit {limit})",
    Refusal.STARTUPS: "too many unauthenticated connections (limit {limit})",
}


class AdmissionTransportMixin:
    """
    For an C{SSHServerTransport} whose factory has C{reactor}, C{admission}
    (L{limits.Admission}) and C{login_grace_time}; the transport sets
    C{client_address} before calling L{admit_connection}.
    """

    refusal: Refusal | None = None
    _admission_ticket: Ticket | None = None
    _admission_grace = None
    _admission_abort = None
    _admission_closing = False

    def admit_connection(self) -> bool:
        """
        Called first thing in C{connectionMade}: take the connection's slots,
        or close it before the version banner, the key exchange or anything
        else costs a cycle; C{False} then, and C{connectionMade} stops.
        """
        factory = self.factory
        verdict = factory.admission.admit(address_key(self.transport.getPeer()))
        if isinstance(verdict, Refusal):
            self.refusal = verdict
            limits = factory.admission.limits
            limit = (
                limits.max_connections_per_ip if verdict is Refusal.PER_IP else limits.max_startups
            )
            self._log.info(
                "connection refused from {remote_addr}: {reason}",
                event_kind="connection",
                result=verdict.result,
                remote_addr=self.client_address,
                reason=_REFUSAL_REASONS[verdict].format(limit=limit),
            )
            self._admission_closing = True
            # Nothing was written, so this closes at once.
            self.transport.loseConnection()
            return False
        self._admission_ticket = verdict
        self._admission_grace = factory.reactor.callLater(
            factory.login_grace_time, self._admission_grace_expired
        )
        return True

    def _admission_grace_expired(self) -> None:
        self._admission_grace = None
        self._log.info(
            "login grace time expired for {remote_addr}: not authenticated within {grace}s",
            event_kind="connection",
            result="grace-timeout",
            remote_addr=self.client_address,
            grace=self.factory.login_grace_time,
        )
        self.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"login grace time expired"
        )

    def setService(self, service) -> None:
        super().setService(service)
        # Conch sets the avatar just before it starts the service the user
        # asked for: from here on the connection is no startup any more.
        if hasattr(self, "avatar"):
            self._admission_cancel_grace()
            if self._admission_ticket is not None:
                self._admission_ticket.authenticated()

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        name, _ = getNS(packet)
        if self.service is None:
            super().ssh_SERVICE_REQUEST(packet)
        elif self.service.name == name:
            # paramiko asks for ssh-userauth again before each method.  Conch
            # would start a new user-auth service with its failure count
            # back at 0 -- unlimited attempts per connection; the running
            # one goes on, as in OpenSSH.
            self.sendPacket(transport.MSG_SERVICE_ACCEPT, NS(name))
        else:
            # After authentication: a new ssh-userauth would stop the
            # operator's connection service.
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"a service is already running"
            )

    def sendDisconnect(self, reason, desc) -> None:
        if self._admission_closing:
            return
        self._admission_closing = True
        super().sendDisconnect(reason, desc)
        self._admission_abort = self.factory.reactor.callLater(
            DISCONNECT_DRAIN, self._admission_abort_now
        )

    def _admission_abort_now(self) -> None:
        self._admission_abort = None
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._admission_closing:
            # After a disconnect is decided nothing more is parsed: Conch's
            # loop would go on dispatching the packets of the same read.
            return
        if not self.gotVersion:
            buffered = self.buf + data
            problem = identification_problem(buffered, server=True)
            if problem is not None:
                self.malformed_traffic(problem, transport.DISCONNECT_PROTOCOL_ERROR)
                return
            end = buffered.find(b"\n")
            if end != -1 and end + 1 < len(buffered):
                # Conch refuses a version line that arrives with more than
                # 4 KiB behind it: give it the line alone, then the rest.
                split = end + 1 - len(self.buf)
                self._admission_received(data[:split])
                data = data[split:]
                if self._admission_closing:
                    return
        self._admission_received(data)

    def _admission_received(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except Exception as e:
            self.malformed_traffic(
                f"{type(e).__name__} while parsing", transport.DISCONNECT_PROTOCOL_ERROR
            )
            if hasattr(self, "avatar"):
                # An authenticated peer: more likely our bug than an attack.
                self._log.failure(
                    "error handling data from {remote_addr}", remote_addr=self.client_address
                )
            return
        if self._admission_closing:
            return
        # Conch keeps buffering a packet up to 1 MiB long.  While a packet is
        # incomplete, its decrypted first block waits in C{first} (Conch's and
        # fastpath's parsers alike): refuse by its declared length, and by
        # the buffer's size should that ever be missing.
        first = self.__dict__.get("first")
        declared = _LENGTH.unpack_from(first)[0] if first and len(first) >= 4 else 0
        if declared > MAX_PACKET or len(self.buf) > MAX_PACKET + 64:
            self.malformed_traffic(
                "packet longer than 256 KiB", transport.DISCONNECT_PROTOCOL_ERROR
            )

    def dispatchMessage(self, messageNum, payload) -> None:
        if self._admission_closing:
            return
        super().dispatchMessage(messageNum, payload)

    def malformed_traffic(self, problem: str, code: int) -> None:
        if self._admission_closing:
            return
        self._log.info(
            "malformed traffic from {remote_addr}: {problem}",
            event_kind="connection",
            result="malformed",
            remote_addr=self.client_address,
            problem=problem,
        )
        try:
            self.sendDisconnect(code, problem.encode("ascii", "replace"))
        except Exception:
            # The cipher state may be what broke: just drop the socket.
            self._admission_closing = True
            self.transport.abortConnection()

    def _admission_cancel_grace(self) -> None:
        if self._admission_grace is not None:
            self._admission_grace.cancel()
            self._admission_grace = None

    def connectionLost(self, reason=None) -> None:
        self._admission_closing = True
        self._admission_cancel_grace()
        if self._admission_abort is not None:
            self._admission_abort.cancel()
            self._admission_abort = None
        if self._admission_ticket is not None:
            self._admission_ticket.release()
        super().connectionLost(reason)


class SerialAuthMixin:
    """
    For an C{SSHUserAuthServer}: one authentication request is checked at a
    time, the others wait in order.

    RFC 4252 lets a client send requests without waiting for answers, and
    Conch checks each as it arrives.  Since only a failed check counts
    against the attempts, a client that pipelines fifty password guesses
    (fifty logins at the target with C{--auth passthrough}) would have them
    all checked before the first failure is counted.
    """

    _serial_auth_busy = False
    _serial_auth_queue: list[bytes] | None = None

    def ssh_USERAUTH_REQUEST(self, packet: bytes):
        if self._serial_auth_busy:
            if self._serial_auth_queue is None:
                self._serial_auth_queue = []
            if len(self._serial_auth_queue) >= self.transport.factory.max_auth_attempts:
                self._serial_too_many()
                return None
            self._serial_auth_queue.append(packet)
            return None
        self._serial_auth_busy = True
        try:
            d = super().ssh_USERAUTH_REQUEST(packet)
        except BaseException:
            self._serial_auth_busy = False
            raise
        if d is None:
            self._serial_auth_busy = False
            return None
        return d.addBoth(self._serial_auth_done)

    def _serial_auth_done(self, result):
        self._serial_auth_busy = False
        queue, self._serial_auth_queue = self._serial_auth_queue, None
        gateway = self.transport
        if not queue or gateway is None or gateway.service is not self:
            return result
        if getattr(gateway, "_admission_closing", False):
            return result
        self._serial_auth_queue = queue[1:]
        try:
            self.ssh_USERAUTH_REQUEST(queue[0])
        except Exception as e:
            gateway.malformed_traffic(
                f"{type(e).__name__} while parsing", transport.DISCONNECT_PROTOCOL_ERROR
            )
        return result

    def _ebBadAuth(self, reason):
        before = self.loginAttempts
        result = super()._ebBadAuth(reason)
        if self.loginAttempts != before and self.loginAttempts > self.attemptsBeforeDisconnect:
            self._serial_log_too_many()
        return result

    def _serial_too_many(self) -> None:
        self._serial_log_too_many()
        self.transport.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many bad auths"
        )

    def _serial_log_too_many(self) -> None:
        self._log.info(
            "auth too-many-attempts: user={user} from {remote_addr}",
            event_kind="auth",
            result="too-many-attempts",
            user=(self.user or b"").decode("utf-8", "backslashreplace"),
            remote_addr=self.transport.client_address,
            max_auth_attempts=self.transport.factory.max_auth_attempts,
        )
