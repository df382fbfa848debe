"""
A console approval service, for trying the gateway: each request the
gateway sends is shown on this terminal and waits for your answer.

    python3 docs/examples/console_approver.py --port 8023 --token-file approval_token

then start the gateway with
C{--approval ws://127.0.0.1:8023/gateway --approval-token-file approval_token}.
(Port 8022 is the default C{--hub-listen} of the gateway's own hub, which
C{--approval embedded} starts; with an outside service it is not started.)

It speaks PROTOCOL.md and nothing more.  It is an example, not a
production service: one reviewer at one terminal, decisions kept in memory
only, plain ws:// on the interface given (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver

SUBPROTOCOL = "wraith.approval.v1"


class Console(LineReceiver):
    """The reviewer's terminal: one request at a time, oldest first."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.pending: dict[str, tuple[GatewayConnection, dict]] = {}
        self.decided: dict[str, dict] = {}
        self.shown: str | None = None

    def request(self, connection: GatewayConnection, message: dict) -> None:
        request_id = message["id"]
        if request_id in self.decided:
            # A re-send after a reconnect: the same id gets the same answer.
            connection.send(self.decided[request_id])
            return
        self.pending[request_id] = (connection, message)
        self.show_next()

    def cancel(self, request_id: str, reason: str) -> None:
        if self.pending.pop(request_id, None) is not None:
            print(f"\n[{request_id[:8]}] cancelled by the gateway: {reason}", flush=True)
            if self.shown == request_id:
                self.shown = None
            self.show_next()

    def show_next(self) -> None:
        if self.shown is not None or not self.pending:
            return
        request_id, (_connection, r) = next(iter(self.pending.items()))
        self.shown = request_id
        print(f"\n[{request_id[:8]}] {r['user']} from {r['client']} on {r['target']} ({r['kind']})")
        print(f"  command: {r['command']}")
        if r.get("mismatch"):
            print(f"  typed:   {r.get('typed')}")
            print("  MISMATCH: the line on screen and the keys typed differ")
        print("approve? [y = approve; n REASON or anything else = deny] ", end="")
        sys.stdout.flush()

    def lineReceived(self, line: bytes) -> None:
        if self.shown is None:
            return
        answer = line.decode("utf-8", "replace").strip()
        approved = answer.lower() in ("y", "yes")
        words = answer.split(None, 1)
        if approved:
            reason = "approved at the console"
        elif words and words[0].lower() in ("n", "no"):
            reason = words[1] if len(words) > 1 else "denied at the console"
        else:
            reason = answer or "denied at the console"
        request_id, self.shown = self.shown, None
        connection, _message = self.pending.pop(request_id)
        decision = {
            "type": "decision",
            "id": request_id,
            "decision": "approve" if approved else "deny",
            "reason": reason,
            "reviewer": "console",
        }
        self.decided[request_id] = decision
        connection.send(decision)
        self.show_next()


class GatewayConnection(WebSocketServerProtocol):
    def onConnect(self, request):
        token = self.factory.token
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ConnectionDeny(401, "bad token")
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, f"subprotocol {SUBPROTOCOL} required")
        return SUBPROTOCOL

    def send(self, message: dict) -> None:
        try:
            self.sendMessage(json.dumps(message).encode("utf-8"))
        except Disconnected:
            pass  # the gateway re-sends the request when it reconnects

    def onMessage(self, payload, isBinary):
        if isBinary:
            return
        try:
            message = json.loads(payload.decode("utf-8"))
        except ValueError:
            return
        kind = message.get("type")
        if kind == "hello":
            print(f"\ngateway {message.get('gateway')!r} connected", flush=True)
        elif kind == "request":
            self.factory.console.request(self, message)
        elif kind == "cancel":
            self.factory.console.cancel(message.get("id"), message.get("reason", ""))
        elif kind == "ping":
            self.send({"type": "pong"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8022)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--token-file", help="require this bearer token from the gateway")
    args = parser.parse_args()
    factory = WebSocketServerFactory()
    factory.protocol = GatewayConnection
    factory.token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            factory.token = f.read().strip()
    factory.console = Console()
    stdio.StandardIO(factory.console)
    reactor.listenTCP(args.port, factory, interface=args.interface)
    print(f"approval service on ws://{args.interface}:{args.port}/", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
