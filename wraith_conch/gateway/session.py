"""
The operator's avatar and the session channels it relays to the target.

A session channel's life, as the operator's client drives it:

  1. C{pty-req} and C{env} are checked here and remembered, not sent: the
     target sees nothing of a channel until its command is approved;
  2. C{exec} / C{subsystem} become a L{CommandRequest} for the approver.
     Only an approval opens the upstream channel, replays the remembered
     requests and sends the command; a denial never opens it;
  3. C{shell} opens the upstream channel at once, and every line typed in it
     is held by the interception gate until approved;
  4. from then on data, EOF, close, C{window-change}, C{signal}, C{break}
     and the target's C{exit-status} / C{exit-signal} are relayed with flow
     control (see L{wraith_conch.relay}).

Requests on one channel are handled strictly in order, because SSH replies
to them in order.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import attrs
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, session
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from wraith_conch.approval.interfaces import (
    DEFAULT_TIMEOUT_SECONDS,
    GATEWAY_REVIEWER,
    CommandRequest,
    Decision,
    IApprover,
    IGatewayDecisions,
    denial_from_failure,
    record_gateway_decision,
)
from wraith_conch.approval.live_feed import ISessionWatcher, LiveSession
from wraith_conch.audit.recorder import SessionRecorder
from wraith_conch.fastpath import send_now
from wraith_conch.gateway.auth import OperatorIdentity
from wraith_conch.gateway.forwarding import (
    CONTROL_HOST,
    ChannelOpenRefused,
    ControlChannel,
    DirectTCPIPChannel,
    TCPLeg,
    unpack_direct_tcpip,
)
from wraith_conch.interception.gate import PipeGate, ShellGate, printable_line
from wraith_conch.interception.screen import Screen
from wraith_conch.relay import RelayChannel
from wraith_conch.targets import Route, TargetRefused, TargetRouter
from wraith_conch.upstream.client import TargetAddress, UpstreamConnection, UpstreamLogin

EXTENDED_DATA_STDERR = 1

# Requests relayed to the target once its channel is open (no approval
# needed: none of them can start a command).
_RELAYED_REQUESTS = frozenset({b"window-change", b"signal", b"break"})
# Requests from the target relayed back after the data before them.
_RELAYED_BACK = frozenset({b"exit-status", b"exit-signal", b"eow@openssh.com"})


def _sane_size(columns: int, rows: int) -> tuple[int, int]:
    """Clamp a client-supplied terminal size to what the screen model can hold."""
    return max(1, min(columns or 80, 1000)), max(1, min(rows or 24, 500))


def env_allowed(name: bytes) -> bool:
    """Only locale settings pass; anything else could change what runs."""
    return name == b"LANG" or name.startswith(b"LC_")


@attrs.frozen
class SessionSettings:
    """What every session of one gateway shares."""

    reactor: IReactorTime
    approver: IApprover
    # (The target is per operator: GatewayAvatar.target, chosen by the realm.)
    approval_timeout: float = DEFAULT_TIMEOUT_SECONDS
    on_mismatch: str = "review"
    # Opens forwarded connections; None when forwarding is off.
    forwarder: object | None = None
    # asciicast recordings of PTY channels go here when set.
    record_dir: str | None = None
    # The live view (wraith_conch.approval.live_feed.ISessionWatcher): told
    # when a session starts and ends, and given every chunk of target output.
    session_watch: ISessionWatcher | None = None


@implementer(IApprover, IGatewayDecisions)
class PublishingApprover:
    """
    The gateway's approver as one operator connection sees it: every request
    and decision is also published to that operator's C{wraith-control}
    channels.
    """

    def __init__(self, approver: IApprover, publish: Callable[[dict], None]) -> None:
        self._approver = approver
        self._publish = publish
        self.description = approver.description

    def request_decision(self, request: CommandRequest) -> defer.Deferred[Decision]:
        self._publish_pending(request)
        d = self._approver.request_decision(request)

        def decided(decision: Decision) -> Decision:
            self._publish_decision(request, decision)
            return decision

        return d.addCallback(decided)

    def cancel(self, request_id: str, reason: str) -> None:
        self._approver.cancel(request_id, reason)

    def record_gateway_decision(
        self, request: CommandRequest, decision: Decision, asked: bool
    ) -> None:
        if not asked:
            self._publish_pending(request)
        self._publish_decision(request, decision)
        record_gateway_decision(self._approver, request, decision, asked=asked)

    def _publish_pending(self, request: CommandRequest) -> None:
        self._publish(
            {
                "event": "pending",
                "id": request.id,
                "kind": request.kind,
                "command": request.command,
                "session": request.session,
            }
        )

    def _publish_decision(self, request: CommandRequest, decision: Decision) -> None:
        self._publish(
            {
                "event": "approved" if decision.approved else "denied",
                "id": request.id,
                "reason": decision.reason,
                "reviewer": decision.reviewer,
            }
        )


class UpstreamSessionChannel(RelayChannel):
    """The target-side leg of a session channel."""

    name = b"session"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.opened: defer.Deferred[UpstreamSessionChannel] = defer.Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        self.opened.callback(self)

    def openFailed(self, reason) -> None:
        self.opened.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.relay_data(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        if self.peer is not None:
            self.peer.relay_extended(dataType, data)

    def eofReceived(self) -> None:
        if self.peer is not None:
            self.peer.relay_eof()

    def relay_request(self, request_type: bytes, data: bytes, want_reply: bool):
        if request_type in _RELAYED_BACK and not want_reply and self.peer is not None:
            self.peer.relay_request_after_data(request_type, data)
            return defer.succeed(True)
        # keepalive@openssh.com and anything else: refuse, as OpenSSH does.
        return defer.succeed(False)


class SessionChannel(RelayChannel):
    """The operator-side leg of a session channel."""

    name = b"session"
    _log = Logger()

    def __init__(self, avatar: GatewayAvatar, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.avatar = avatar
        self.kind: str | None = None
        self._remembered: list[tuple[bytes, bytes]] = []
        self._pending_request: CommandRequest | None = None
        self._early_input: list[bytes] = []
        self._requests: defer.Deferred = defer.succeed(None)
        self.input: Callable[[bytes], None] = self._forward_input
        self.terminal_size: tuple[int, int] | None = None  # (columns, rows) with a PTY
        self.terminal_type = "xterm"
        self.recorder: SessionRecorder | None = None
        self.gate: ShellGate | PipeGate | None = None
        self._watched = False
        self._eof_early = False
        # Input waits until the command started (and, for a shell, the gate is in place).
        self._input_ready = False

    # -- requests ---------------------------------------------------------

    def relay_request(self, request_type: bytes, data: bytes, want_reply: bool):
        """Handle requests one at a time, in arrival order."""
        answer: defer.Deferred = defer.Deferred()

        def run(_):
            d = defer.maybeDeferred(self._handle_request, request_type, data, want_reply)
            d.addErrback(self._request_crashed, request_type)
            d.addCallback(answer.callback)
            return d  # the next request waits for this one

        self._requests.addCallback(run)
        return answer

    def _request_crashed(self, failure, request_type: bytes) -> bool:
        self._log.failure("session request {request} failed", failure, request=request_type)
        return False

    def _handle_request(self, request_type: bytes, data: bytes, want_reply: bool):
        if request_type == b"pty-req":
            return self._pty_req(data)
        if request_type == b"env":
            return self._env(data)
        if request_type in (b"shell", b"exec", b"subsystem"):
            return self._start(request_type, data)
        if request_type in _RELAYED_REQUESTS:
            if request_type == b"window-change":
                self.window_changed(data)
            return self._relay_or_remember(request_type, data, want_reply)
        # x11-req, auth-agent-req@openssh.com, keepalive@openssh.com, ...
        return False

    def _pty_req(self, data: bytes) -> bool:
        if self.kind is not None or not self.avatar.identity.options.allow_pty:
            return False
        try:
            term, (rows, columns, _xp, _yp), _modes = session.parseRequest_pty_req(data)
        except Exception:
            return False
        self.terminal_size = (columns, rows)
        self.terminal_type = term.decode("ascii", "replace")[:64]
        self._remembered.append((b"pty-req", data))
        return True

    def _env(self, data: bytes) -> bool:
        if self.kind is not None:
            return False
        try:
            name, _value, _ = getNS(data, 2)
        except Exception:
            return False
        if not env_allowed(name):
            return False
        self._remembered.append((b"env", data))
        return True

    def window_changed(self, data: bytes) -> None:
        try:
            rows, columns, _xp, _yp = session.parseRequest_window_change(data)
        except Exception:
            return
        if self.terminal_size is not None:
            self.terminal_size = (columns, rows)
        if self.gate is not None:
            self.gate.resize(*_sane_size(columns, rows))
        if self.recorder is not None:
            self.recorder.resize(*_sane_size(columns, rows))

    def _relay_or_remember(self, request_type: bytes, data: bytes, want_reply: bool):
        upstream = self.peer
        if upstream is None:
            if self.kind is None and request_type == b"window-change":
                self._remembered.append((request_type, data))
                return True
            return False
        d = upstream.conn.sendRequest(upstream, request_type, data, wantReply=want_reply)
        if d is None:
            return True
        return d.addCallbacks(lambda _: True, lambda _: False)

    def _start(self, request_type: bytes, data: bytes):
        if self.kind is not None:
            return False
        forced = self.avatar.identity.options.command
        if forced is not None:
            # authorized_keys command="...": that command and nothing else,
            # still subject to approval like any exec.
            request_type, data = b"exec", NS(forced.encode("utf-8"))
        self.kind = request_type.decode("ascii")
        if request_type == b"shell":
            return self._open_upstream(request_type, data)
        try:
            raw = getNS(data)[0]
        except Exception:
            return self._refuse_start(data, "malformed")
        try:
            command = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse_start(raw, "not UTF-8")
        request = self.avatar.make_request(self, self.kind, command)
        self._pending_request = request
        d = self.avatar.approver.request_decision(request)
        d.addErrback(denial_from_failure)

        def decided(decision: Decision):
            self._pending_request = None
            self.avatar.log_decision(request, decision)
            if not decision.approved:
                return self._deny_start(decision.reason or "no reason given")
            return self._open_upstream(request_type, data)

        return d.addCallback(decided)

    def _refuse_start(self, raw: bytes, problem: str) -> bool:
        """
        Refuse an exec/subsystem request the gateway cannot put to a reviewer;
        it still goes on the record, escaped.
        """
        request = self.avatar.make_request(self, self.kind, raw.decode("utf-8", "backslashreplace"))
        decision = Decision.deny(f"the {self.kind} request is {problem}", reviewer=GATEWAY_REVIEWER)
        record_gateway_decision(self.avatar.approver, request, decision, asked=False)
        self.avatar.log_decision(request, decision)
        return self._deny_start(decision.reason)

    def _deny_start(self, reason: str) -> bool:
        message = f"wraith: denied: {printable_line(reason)}"
        if self.kind == "subsystem":
            # OpenSSH exits at once on a failed subsystem request, dropping
            # stderr it has not written yet: let the message go out first.
            self._explain(message)
            return deferLater(self.avatar.settings.reactor, 0.2, lambda: False)
        # exec: the request "succeeds" so the client shows our message and
        # the exit status; the target never hears of it.
        reactor = self.avatar.settings.reactor
        reactor.callLater(0, self._finish_denied_exec, message)
        return True

    def _finish_denied_exec(self, message: str) -> None:
        if self.localClosed:
            return
        self._explain(message)
        self.conn.sendRequest(self, b"exit-status", b"\x00\x00\x00\x01")
        self.conn.sendEOF(self)
        self.loseConnection()

    def _write_stderr(self, data: bytes) -> None:
        if not self.localClosed:
            self.writeExtended(EXTENDED_DATA_STDERR, data)

    def _explain(self, message: str) -> None:
        """One line to the operator's stderr."""
        if not self.localClosed:
            self.writeExtended(EXTENDED_DATA_STDERR, message.encode("utf-8", "replace") + b"\r\n")

    def _open_upstream(self, request_type: bytes, data: bytes):
        d = self.avatar.open_upstream_session()

        def opened(upstream: UpstreamSessionChannel):
            if self.localClosed:
                upstream.loseConnection()
                return False
            self.peer, upstream.peer = upstream, self
            conn = upstream.conn
            for remembered_type, remembered_data in self._remembered:
                want = remembered_type == b"pty-req"
                conn.sendRequest(upstream, remembered_type, remembered_data, wantReply=want)
            self._remembered = []
            reply = conn.sendRequest(upstream, request_type, data, wantReply=True)
            return reply.addCallbacks(lambda _: self._started(), lambda _: self._target_refused())

        def failed(failure) -> bool:
            self._explain(
                f"wraith: cannot open a session on the target: {failure.getErrorMessage()}"
            )
            return False

        return d.addCallbacks(opened, failed)

    def _started(self) -> bool:
        if self.terminal_size is not None and self.avatar.settings.record_dir:
            self._start_recording()
        if self.kind == "shell":
            self._install_gate()
        if self.avatar.settings.session_watch is not None:
            self._announce_live()
        early, self._early_input = self._early_input, []
        for data in early:
            self.input(data)
        self._input_ready = True
        if self._eof_early:
            self._eof_early = False
            self.eofReceived()
        self.resume_receiving()
        return True

    def _announce_live(self) -> None:
        """Offer this session to the live view; its gate's screen renders snapshots."""
        identity = self.avatar.identity
        columns, rows = _sane_size(*self.terminal_size) if self.terminal_size else (80, 24)
        self._live_id = f"{self.avatar.session_id}.{self.id}"
        self._watched = True
        self.avatar.settings.session_watch.opened(
            LiveSession(
                self._live_id,
                identity.user,
                identity.client,
                str(self.avatar.target),
                self.kind or "?",
                self.terminal_size is not None,
                columns,
                rows,
            ),
            lambda: getattr(self.gate, "screen", None),
        )

    def _start_recording(self) -> None:
        identity = self.avatar.identity
        try:
            self.recorder = SessionRecorder.open(
                self.avatar.settings.record_dir,
                f"{self.avatar.session_id}.{self.id}",
                *_sane_size(*self.terminal_size),
                self.avatar.settings.reactor,
                {
                    "term": self.terminal_type,
                    "title": f"{identity.user}@{self.avatar.target}",
                    "user": identity.user,
                    "client": identity.client,
                    "target": str(self.avatar.target),
                },
            )
        except (OSError, ValueError) as e:
            # The audit trail still has every command; the session goes on.
            self._log.error("recording could not start: {error}", error=str(e))

    def _install_gate(self) -> None:
        """Every line typed in a shell goes through the gate."""
        settings = self.avatar.settings
        screen = Screen(*_sane_size(*self.terminal_size)) if self.terminal_size else None

        def make_request(command: str, typed: str, mismatch: bool) -> CommandRequest:
            request = self.avatar.make_request(self, "shell", command, typed)
            context = tuple(screen.last_screenful()) if screen is not None else None
            return attrs.evolve(request, mismatch=mismatch, screen=context)

        if screen is None:
            self.gate = PipeGate(
                approver=self.avatar.approver,
                to_target=self._forward_input,
                # Messages go to stderr: stdout may be data.
                to_operator=self._write_stderr,
                to_target_eof=self._relay_eof_to_target,
                make_request=make_request,
                on_decision=self.avatar.log_decision,
            )
        else:
            self.gate = ShellGate(
                clock=settings.reactor,
                approver=self.avatar.approver,
                to_target=self._forward_input,
                to_operator=self.write,
                make_request=make_request,
                to_target_eof=self._relay_eof_to_target,
                screen=screen,
                on_mismatch=settings.on_mismatch,
                on_decision=self.avatar.log_decision,
                flush_target=self._flush_upstream,
            )
        self.input = self.gate.operator_input

    def _flush_upstream(self) -> None:
        ssh = self.peer.conn.transport if self.peer is not None else None
        if ssh is not None:
            send_now(ssh.transport)

    def relay_data(self, data: bytes) -> None:
        if self.recorder is not None:
            self.recorder.output(data)
        if self._watched:
            self.avatar.settings.session_watch.output(self._live_id, data, self.terminal_size)
        # Target output: the gate's screen model sees what the operator sees,
        # after the operator, so that what the gate prints in answer (the
        # waiting notice once the echo of a held line arrives) follows it.
        super().relay_data(data)
        if self.gate is not None:
            self.gate.target_output(data)

    def _target_refused(self) -> bool:
        self._explain(f"wraith: the target refused the {self.kind} request")
        return False

    # -- data --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._input_ready:
            # Before the target's channel is ready: hold it, and the window
            # with it, so this is bounded by one receive window.
            self._early_input.append(data)
            self.pause_receiving()
            return
        self.input(data)

    def _forward_input(self, data: bytes) -> None:
        if self.recorder is not None:
            self.recorder.input(data)
        if self.peer is not None:
            self.peer.relay_data(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        # Clients send no extended data on session channels; drop it.
        return None

    def eofReceived(self) -> None:
        # EOF takes its place behind input that is still held.
        if not self._input_ready:
            self._eof_early = True
        elif self.gate is not None:
            self.gate.operator_eof()
        else:
            self._relay_eof_to_target()

    def _relay_eof_to_target(self) -> None:
        if self.peer is not None:
            self.peer.relay_eof()

    def closed(self) -> None:
        if self.gate is not None:
            self.gate.close()
        if self.recorder is not None:
            self.recorder.close()
        if self._watched:
            self.avatar.settings.session_watch.closed(self._live_id)
        pending, self._pending_request = self._pending_request, None
        if pending is not None:
            self.avatar.approver.cancel(pending.id, "session closed")
        super().closed()


class GatewayAvatar(ConchUser):
    """One authenticated operator connection and its upstream connection."""

    _log = Logger()

    def __init__(
        self,
        identity: OperatorIdentity,
        upstream: UpstreamConnection,
        settings: SessionSettings,
        target: TargetAddress,
    ) -> None:
        super().__init__()
        self.identity = identity
        self.upstream = upstream
        self.settings = settings
        #: The target this operator was routed to (requests, recordings).
        self.target = target
        self.session_id = f"s-{secrets.token_hex(4)}"
        self.conn = None
        self._logged_out = False
        self._observers: list[Callable[[dict], None]] = []
        self.approver = PublishingApprover(settings.approver, self.publish)
        upstream.lost.addCallback(self._upstream_lost)

    def lookupChannel(self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes):
        if channelType == b"session":
            return SessionChannel(self, remoteWindow=windowSize, remoteMaxPacket=maxPacket)
        raise ConchError("unknown channel type", connection.OPEN_UNKNOWN_CHANNEL_TYPE)

    # -- forwarding ------------------------------------------------------------

    def open_direct_tcpip(self, data: bytes, window: int, max_packet: int):
        """A channel for C{ssh -L}/C{-D}, or L{ChannelOpenRefused}."""
        host, port = unpack_direct_tcpip(data)
        if host.lower().startswith("wraith-"):
            # Reserved names are never connected to.
            if host.lower() == CONTROL_HOST and port == 0:
                return ControlChannel(
                    self.subscribe, remoteWindow=window, remoteMaxPacket=max_packet
                )
            raise ChannelOpenRefused(
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED, "administratively prohibited"
            )
        forwarder = self.settings.forwarder
        if forwarder is None:
            raise ChannelOpenRefused(
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "port forwarding is disabled on this gateway",
            )
        d = forwarder.open(host, port, self.identity.options)

        def connected(leg: TCPLeg) -> DirectTCPIPChannel:
            channel = DirectTCPIPChannel(remoteWindow=window, remoteMaxPacket=max_packet)
            channel.peer = leg
            return channel

        return d.addCallback(connected)

    def announce(self, message: str) -> None:
        """One line to every open session channel of this operator (stderr)."""
        for channel in list(getattr(self.conn, "channels", {}).values()):
            if isinstance(channel, SessionChannel):
                channel._explain(message)

    # -- the operator's own session events (wraith-control:0) -------------------

    def subscribe(self, observer: Callable[[dict], None]) -> Callable[[], None]:
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def publish(self, event: dict) -> None:
        for observer in list(self._observers):
            observer(event)

    def gotGlobalRequest(self, requestType: bytes, data: bytes):
        # tcpip-forward (ssh -R) is not offered; keepalive@openssh.com and
        # no-more-sessions@openssh.com get the failure reply OpenSSH expects.
        return 0

    def open_upstream_session(self) -> defer.Deferred[UpstreamSessionChannel]:
        if self.upstream.transport is None or self.upstream.lost.called:
            return defer.fail(ConchError("the connection to the target is closed"))
        channel = UpstreamSessionChannel(conn=self.upstream)
        self.upstream.openChannel(channel)
        return channel.opened

    def make_request(self, channel: SessionChannel, kind: str, command: str, typed=None):
        return CommandRequest.new(
            session=f"{self.session_id}.{channel.id}",
            user=self.identity.user,
            client=self.identity.client,
            target=str(self.target),
            kind=kind,
            command=command,
            typed=typed,
            created=self.settings.reactor.seconds(),
            timeout=self.settings.approval_timeout,
        )

    def log_decision(self, request: CommandRequest, decision: Decision) -> None:
        self._log.info(
            "{kind} request {request_id} {result} for {user}",
            event_kind="decision",
            kind=request.kind,
            request_id=request.id,
            session=request.session,
            user=request.user,
            result="approved" if decision.approved else "denied",
            reviewer=decision.reviewer,
        )

    def _upstream_lost(self, _) -> None:
        if self._logged_out or self.conn is None or self.conn.transport is None:
            return
        self.conn.transport.sendDisconnect(11, b"wraith: the connection to the target was closed")

    def logout(self) -> None:
        self._logged_out = True
        self.upstream.close()


@implementer(IRealm)
class GatewayRealm:
    """
    Makes avatars, logging in to the operator's target for each: the
    C{router} picks it from the login name (L{wraith_conch.targets}), after
    the operator authenticated and before anything is connected to.
    """

    def __init__(
        self,
        settings: SessionSettings,
        connect: Callable[[Route, UpstreamLogin], defer.Deferred],
        router: TargetRouter,
        identity_key=None,
    ) -> None:
        self._settings = settings
        self._connect = connect
        self._router = router
        self._identity_key = identity_key

    def requestAvatar(self, avatarId: OperatorIdentity, mind, *interfaces):
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH avatars")
        try:
            route = self._router.choose(avatarId.user, avatarId.target, avatarId.client)
        except TargetRefused as e:
            # Told to the operator (an UpstreamError); nothing was connected.
            if avatarId.upstream is not None:
                avatarId.upstream.close()
            return defer.fail(e)
        if avatarId.upstream is not None:
            # Passthrough: the checker already logged in to this same route.
            d = defer.succeed(avatarId.upstream)
        else:
            d = self._connect(route, UpstreamLogin(user=avatarId.user, identity=self._identity_key))

        def made(upstream: UpstreamConnection):
            avatar = GatewayAvatar(avatarId, upstream, self._settings, route.address)
            return IConchUser, avatar, avatar.logout

        return d.addCallback(made)
