"""
C{wraith-review}: list, approve, deny and watch requests on a wraith hub.

    wraith-review --hub http://127.0.0.1:8022 --token TOKEN list [--json]
    wraith-review --hub http://127.0.0.1:8022 --token TOKEN approve ID [--reason R]
    wraith-review --hub http://127.0.0.1:8022 --token TOKEN deny ID [--reason R]
    wraith-review --hub http://127.0.0.1:8022 --token TOKEN watch

It speaks the hub's reviewer protocol (L{wraith_conch.approval.hub}) over
C{/reviewer} with C{Authorization: Bearer TOKEN}.  The token may also come
from C{--token-file} or C{WRAITH_REVIEW_TOKEN} (a token on the command line
is visible to other users in C{ps}).  C{ID} may be a unique prefix (6+
characters) of a pending request's id.

Commands are printed so that nothing hides: control characters as C{\\xHH},
characters outside printable ASCII as C{U+XXXX}, a literal backslash as
C{\\\\}.

Exit status: 0 done; 1 refused (bad token, request not pending, hub
unreachable or gone); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.ssl import Certificate, optionsForClientTLS

REVIEWER_SUBPROTOCOL = "wraith.reviewer.v1"
TIMEOUT = 15.0

OK, REFUSED, USAGE = 0, 1, 2


class Refusal(Exception):
    """One line for stderr; exit status 1."""


class UsageProblem(Exception):
    """One line for stderr; exit status 2."""


# --- showing text ---------------------------------------------------------------


def shown(text: object, strict: bool = True) -> str:
    """
    C{text} safe for a terminal, with nothing hidden.

    Strict (commands, users, targets): everything outside printable ASCII
    is escaped.  Lenient (reasons): only controls, format characters
    (zero-width, bidi), separators other than space, private-use and
    unassigned characters.
    """
    out = []
    for ch in str(text):
        cp = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif cp < 0x20 or cp == 0x7F or 0x80 <= cp <= 0x9F:
            out.append(f"\\x{cp:02x}")
        elif ch == " ":
            out.append(ch)
        elif strict and cp > 0x7E:
            out.append(f"U+{cp:04X}")
        elif not strict and unicodedata.category(ch)[0] in "CZ":
            out.append(f"U+{cp:04X}")
        else:
            out.append(ch)
    return "".join(out)


def _left(expires: object) -> str:
    if not isinstance(expires, str):
        return ""
    try:
        moment = datetime.fromisoformat(expires)
    except ValueError:
        return ""
    seconds = round(moment.timestamp() - time.time())
    return f"expires in {seconds} s" if seconds > 0 else "expired"


def format_request(request: dict[str, Any]) -> str:
    """A few lines describing one pending request."""
    kind = shown(request.get("kind", "?"))
    who = f"{shown(request.get('user', '?'))} -> {shown(request.get('target', '?'))}"
    facts = [
        f"gateway {shown(request.get('gateway', '?'))}",
        f"session {shown(request.get('session', '?'))}",
        f"client {shown(request.get('client', '?'))}",
    ]
    left = _left(request.get("expires"))
    if left:
        facts.append(left)
    lines = [f"{shown(request.get('id', '?'))}  {kind}  {who}  ({', '.join(facts)})"]
    lines.append(f"    command: {shown(request.get('command', ''))}")
    if request.get("mismatch"):
        lines.append(f"    typed:   {shown(request.get('typed', ''))}")
        lines.append("    MISMATCH: the target's screen and the operator's keystrokes differ")
    risk = request.get("risk")
    if isinstance(risk, dict):
        reasons = ", ".join(shown(r, strict=False) for r in risk.get("reasons") or [])
        lines.append(f"    risk:    {risk.get('score')}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(lines)


_OUTCOMES = {"approve": "approved", "deny": "denied"}


def format_resolved(event: dict[str, Any]) -> str:
    outcome = _OUTCOMES.get(event.get("outcome"), shown(event.get("outcome", "?")))
    line = f"{shown(event.get('id', '?'))} {outcome}"
    if event.get("reviewer"):
        line += f" by {shown(event['reviewer'])}"
    if event.get("reason"):
        line += f": {shown(event['reason'], strict=False)}"
    return line


# --- the connection -------------------------------------------------------------------


def reviewer_url(hub: str) -> str:
    """C{ws[s]://host:port/.../reviewer} for a hub given as http(s):// or ws(s)://."""
    split = urlsplit(hub.strip())
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if split.scheme not in schemes or not split.hostname:
        raise UsageProblem(f"--hub: {hub!r} is not an http://, https://, ws:// or wss:// URL")
    if split.username or split.password or split.query or split.fragment:
        raise UsageProblem("--hub: give only scheme, host, port and path (the token goes apart)")
    try:
        _port = split.port
    except ValueError:
        raise UsageProblem(f"--hub: bad port in {hub!r}") from None
    path = split.path.rstrip("/")
    if not path.endswith("/reviewer"):
        path += "/reviewer"
    return f"{schemes[split.scheme]}://{split.netloc}{path}"


class _ReviewerClient(WebSocketClientProtocol):
    # The handshake carries the token; autobahn logs handshakes at debug.
    log = txaio.make_logger(level="info")

    def onConnect(self, response):
        if response.protocol != REVIEWER_SUBPROTOCOL:
            self.factory.session.refused = "the server did not select " + REVIEWER_SUBPROTOCOL
            raise Exception(self.factory.session.refused)

    def onOpen(self):
        self.factory.session.opened(self)

    def onMessage(self, payload, isBinary):
        if isBinary:
            return
        try:
            message = json.loads(payload.decode("utf-8"))
        except ValueError:
            return
        if isinstance(message, dict):
            self.factory.session.messages.put(message)

    def onClose(self, wasClean, code, reason):
        self.factory.session.closed(code, reason)


class ReviewerSession:
    """One reviewer connection: C{messages} is a queue of dicts, C{None} once closed."""

    def __init__(self) -> None:
        self.messages: defer.DeferredQueue = defer.DeferredQueue()
        self.protocol: _ReviewerClient | None = None
        self.refused: str | None = None
        self.close_reason: str | None = None
        self._open: defer.Deferred = defer.Deferred()

    def opened(self, protocol: _ReviewerClient) -> None:
        self.protocol = protocol
        if not self._open.called:
            self._open.callback(None)

    def closed(self, code, reason) -> None:
        self.protocol = None
        self.close_reason = reason or (f"code {code}" if code else "connection closed")
        if not self._open.called:
            self._open.errback(Refusal(self._why_refused()))
        self.messages.put(None)

    def _why_refused(self) -> str:
        reason = self.close_reason or ""
        if self.refused:
            return self.refused
        if "401" in reason:
            return "the hub refused the token (HTTP 401)"
        if "403" in reason:
            return "the hub refused the connection (HTTP 403)"
        return f"could not open a reviewer session: {reason}"

    def send(self, message: dict[str, Any]) -> None:
        if self.protocol is None:
            raise Refusal("the connection to the hub is closed")
        self.protocol.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    async def next(self, reactor, timeout: float | None) -> dict[str, Any]:
        d = self.messages.get()
        if timeout is not None:
            d.addTimeout(timeout, reactor)
        try:
            message = await d
        except defer.TimeoutError:
            raise Refusal(f"no answer from the hub within {timeout:g} s") from None
        if message is None:
            raise Refusal(f"the hub closed the connection ({self.close_reason})")
        return message

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(code=1000)


async def connect(reactor, url: str, token: str, cafile: str | None = None) -> ReviewerSession:
    """Open a reviewer session at C{url} (C{ws://.../reviewer}); L{Refusal} if refused."""
    session = ReviewerSession()
    factory = WebSocketClientFactory(
        url,
        protocols=[REVIEWER_SUBPROTOCOL],
        headers={"Authorization": f"Bearer {token}"},
        useragent="wraith-review",
        reactor=reactor,
    )
    factory.setProtocolOptions(openHandshakeTimeout=TIMEOUT, closeHandshakeTimeout=2)
    factory.protocol = _ReviewerClient
    factory.session = session
    endpoint = HostnameEndpoint(reactor, factory.host, factory.port, timeout=TIMEOUT)
    if factory.isSecure:
        trust = None
        if cafile:
            with open(cafile, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(optionsForClientTLS(factory.host, trustRoot=trust), endpoint)
    try:
        await endpoint.connect(factory)
    except (ConnectError, DNSLookupError, OSError) as e:
        raise Refusal(f"cannot connect to the hub at {factory.host}:{factory.port}: {e}") from None
    opened = session._open
    opened.addTimeout(TIMEOUT, reactor)
    try:
        await opened
    except defer.TimeoutError:
        raise Refusal("the hub did not answer the WebSocket handshake") from None
    return session


# --- the commands ---------------------------------------------------------------------


async def _snapshot(reactor, session: ReviewerSession) -> dict[str, Any]:
    while True:
        message = await session.next(reactor, TIMEOUT)
        if message.get("type") == "snapshot":
            return message


def _resolve_id(wanted: str, pending: list[dict[str, Any]]) -> str:
    ids = [r.get("id") for r in pending if isinstance(r.get("id"), str)]
    if wanted in ids:
        return wanted
    matches = [i for i in ids if i.startswith(wanted)] if len(wanted) >= 6 else []
    if len(matches) > 1:
        raise Refusal(f"{wanted!r} matches {len(matches)} pending requests; give more of the id")
    return matches[0] if matches else wanted


async def run(reactor, args: argparse.Namespace, url: str, token: str, out: TextIO) -> int:
    session = await connect(reactor, url, token, args.cafile)
    try:
        snapshot = await _snapshot(reactor, session)
        pending = [r for r in snapshot.get("pending") or [] if isinstance(r, dict)]
        if args.command == "list":
            if args.json:
                out.write(json.dumps(pending, indent=2) + "\n")
            elif not pending:
                out.write("No pending requests.\n")
            else:
                for request in pending:
                    out.write(format_request(request) + "\n")
            return OK
        if args.command in ("approve", "deny"):
            request_id = _resolve_id(args.id, pending)
            session.send(
                {
                    "type": "decide",
                    "id": request_id,
                    "decision": args.command,
                    "reason": args.reason,
                }
            )
            while True:
                message = await session.next(reactor, TIMEOUT)
                if message.get("type") == "ack" and message.get("id") == request_id:
                    break
                if message.get("type") == "error":
                    raise Refusal(f"the hub refused: {shown(message.get('error'), False)}")
            if not message.get("ok"):
                raise Refusal(f"refused: {shown(message.get('error', 'no reason'), False)}")
            verb = "approved" if args.command == "approve" else "denied"
            out.write(f"{verb} {shown(request_id)}\n")
            return OK
        # watch
        out.write(f"watching as {shown(snapshot.get('reviewer', '?'))}; Ctrl-C stops\n")
        for request in pending:
            out.write("pending " + format_request(request) + "\n")
        out.flush()
        while True:
            message = await session.next(reactor, None)
            kind = message.get("type")
            if kind == "request" and isinstance(message.get("request"), dict):
                out.write("new " + format_request(message["request"]) + "\n")
            elif kind == "resolved":
                out.write(format_resolved(message) + "\n")
            out.flush()
    finally:
        session.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wraith-review",
        description="List, approve, deny or watch commands waiting on a wraith approval hub.",
        epilog="Exit status: 0 done, 1 refused or not found, 2 usage error.",
    )
    parser.add_argument("--hub", required=True, help="hub URL, e.g. http://127.0.0.1:8022")
    parser.add_argument("--token", help="reviewer token (or --token-file, or WRAITH_REVIEW_TOKEN)")
    parser.add_argument("--token-file", help="file holding the reviewer token")
    parser.add_argument("--cafile", help="PEM CA certificate to trust for an https:// hub")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="show pending requests")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    for verb in ("approve", "deny"):
        sub = commands.add_parser(verb, help=f"{verb} a pending request")
        sub.add_argument("id", help="request id (or a unique prefix of 6+ characters)")
        sub.add_argument("--reason", default="", help="reason, shown to the operator")
    commands.add_parser("watch", help="print pending requests and decisions as they happen")
    return parser


def _token(args: argparse.Namespace) -> str:
    sources = [s for s in (args.token, args.token_file) if s]
    if len(sources) > 1:
        raise UsageProblem("give --token or --token-file, not both")
    token = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageProblem(f"--token-file: cannot read {args.token_file}: {e}") from None
    token = token or os.environ.get("WRAITH_REVIEW_TOKEN", "")
    if not token:
        raise UsageProblem(
            "a reviewer token is required: --token, --token-file or WRAITH_REVIEW_TOKEN"
        )
    if not all(33 <= ord(c) <= 126 for c in token):
        raise UsageProblem("the token must be printable ASCII without spaces")
    return token


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    try:
        url = reviewer_url(args.hub)
        token = _token(args)
        if getattr(args, "reason", "") and len(args.reason) > 1000:
            raise UsageProblem("--reason: at most 1000 characters")
    except UsageProblem as e:
        parser.print_usage(sys.stderr)
        print(f"wraith-review: {e}", file=sys.stderr)
        return USAGE
    # Ctrl-C stops the reactor before body() returns: fine for watch only.
    status = [OK if args.command == "watch" else REFUSED]

    async def body(reactor) -> None:
        stopping: list[bool] = []  # Ctrl-C: the reactor stops and drops the connection
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        try:
            status[0] = await run(reactor, args, url, token, sys.stdout)
        except Refusal as e:
            if stopping and args.command == "watch":
                status[0] = OK
                return
            print(f"wraith-review: {e}", file=sys.stderr)
            status[0] = REFUSED
        # Let the close handshake go out before the reactor stops.
        await task.deferLater(reactor, 0.05, lambda: None)

    try:
        task.react(lambda reactor: defer.ensureDeferred(body(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return REFUSED
    except KeyboardInterrupt:
        return OK
    return status[0]


def console_main() -> None:
    """The C{wraith-review} console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
