"""
The read-only live view of sessions: gateways announce sessions over the live
feed (C{/live-feed}, C{wraith.live.v1}; in-process for the embedded hub),
the hub tells them which are watched, and only those send a snapshot and
their output.  Reviewers C{watch} a session and get its screen as
C{session} frames.  There is no input path.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import types

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.gatewayharness import Gateway, approval_client_gateway, keygen
from tests.operator import interactive_ssh, spawn_ssh
from tests.polling import wait_until
from tests.sshd import start_sshd
from tests.test_hub import (
    BOB_TOKEN,
    GATEWAY_TOKEN,
    FakeLink,
    ReviewerSocket,
    start_hub,
)
from tests.test_twistd import REPO, pin_gateway_key, stop_process, twistd_argv
from wraith_conch.approval.hub import Hub
from wraith_conch.approval.interfaces import Decision
from wraith_conch.approval.live import LiveSessions, parse_feed_frame
from wraith_conch.approval.live_feed import (
    FEED_SUBPROTOCOL,
    TAIL_BYTES,
    LiveFeed,
    LiveFeedClient,
    LiveSession,
)
from wraith_conch.approval.protocol import Ignored
from wraith_conch.config import ConfigError, build_config
from wraith_conch.interception.screen import Screen
from wraith_conch.testing import ScriptedApprover

PROMPT = "wraith$"
STANDALONE_SCREENSHOT = "/tmp/wraith-console-live-standalone.png"


def of_type(link: FakeLink, kind: str) -> list[dict]:
    return [m for m in link.sent if m["type"] == kind]


def info(session: str = "s-1.0", kind: str = "shell", pty: bool = True, size=(40, 5)):
    return LiveSession(session, "alice", "127.0.0.1:5555", "127.0.0.1:22", kind, pty, *size)


class Wire:
    """Frames a L{LiveFeed} sends, decoded."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.open = True

    def send(self, text: str) -> bool:
        self.frames.append(json.loads(text))
        return self.open

    def of_type(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]


# --- the gateway's end, sans-IO ----------------------------------------------------------


class LiveFeedTests(SynchronousTestCase):
    def setUp(self):
        self.feed = LiveFeed("gw1")
        self.wire = Wire()
        self.screen = Screen(40, 5)

    def test_unwatched_sessions_send_only_open_and_close(self):
        self.feed.opened(info(), lambda: self.screen)
        self.feed.connected(self.wire.send)
        for _ in range(100):
            self.feed.output("s-1.0", b"secret output\r\n", (40, 5))
        self.feed.closed("s-1.0")
        self.assertEqual([f["type"] for f in self.wire.frames], ["hello", "open", "close"])
        self.assertEqual(self.wire.frames[0], {"type": "hello", "version": 1, "gateway": "gw1"})
        self.assertEqual(
            self.wire.frames[1],
            {
                "type": "open",
                "session": "s-1.0",
                "user": "alice",
                "client": "127.0.0.1:5555",
                "target": "127.0.0.1:22",
                "kind": "shell",
                "pty": True,
                "columns": 40,
                "rows": 5,
            },
        )
        self.assertEqual(self.feed.stats["output_frames"], 0)

    def test_watch_sends_a_snapshot_of_the_gates_screen_then_output(self):
        self.feed.connected(self.wire.send)
        self.feed.opened(info(), lambda: self.screen)
        self.screen.feed(b"alice@db1:~$ ls\r\nfile\r\nalice@db1:~$ ")
        self.feed.hub_frame(b'{"type": "watch", "sessions": ["s-1.0"]}', False)
        [snapshot] = self.wire.of_type("snapshot")
        self.assertEqual(snapshot["lines"], ["alice@db1:~$ ls", "file", "alice@db1:~$", "", ""])
        self.assertEqual(snapshot["cursor"], [2, 13])
        self.assertEqual((snapshot["columns"], snapshot["rows"]), (40, 5))
        self.feed.output("s-1.0", b"uptime\xff", (40, 5))
        self.feed.output("s-1.0", b"", (50, 6))
        [output, _empty] = self.wire.of_type("output")
        self.assertEqual(base64.b64decode(output["data"]), b"uptime\xff")
        self.assertEqual(
            self.wire.of_type("resize"),
            [{"type": "resize", "session": "s-1.0", "columns": 50, "rows": 6}],
        )
        # Unwatched again: silence.
        self.feed.hub_frame('{"type": "watch", "sessions": []}', False)
        self.feed.output("s-1.0", b"more", (50, 6))
        self.assertEqual(len(self.wire.of_type("output")), 2)
        self.assertEqual(self.feed.watched(), [])

    def test_a_session_without_a_screen_keeps_a_short_tail(self):
        self.feed.connected(self.wire.send)
        self.feed.opened(info("s-2.0", kind="exec", pty=False, size=(80, 24)), lambda: None)
        self.feed.output("s-2.0", b"x" * (3 * TAIL_BYTES) + b"\n", None)
        self.feed.output("s-2.0", b"first\nsecond\n", None)
        self.feed.hub_frame('{"type": "watch", "sessions": ["s-2.0"]}', False)
        [snapshot] = self.wire.of_type("snapshot")
        self.assertEqual(snapshot["lines"][-3:-1], ["first", "second"])
        self.assertEqual(snapshot["cursor"], [23, 0])

    def test_a_full_buffer_drops_output_then_sends_a_gap_and_a_fresh_snapshot(self):
        self.feed.connected(self.wire.send)
        self.feed.opened(info(), lambda: self.screen)
        self.feed.hub_frame('{"type": "watch", "sessions": ["s-1.0"]}', False)
        self.feed.pause()
        for _ in range(1000):
            self.feed.output("s-1.0", b"lost " * 100, (40, 5))
            self.screen.feed(b"lost\r\n")
        self.screen.feed(b"now$ ")
        self.assertEqual(self.wire.of_type("output"), [])
        self.feed.resume()
        self.assertEqual(self.wire.frames[-2], {"type": "gap", "session": "s-1.0"})
        self.assertEqual(self.wire.frames[-1]["type"], "snapshot")
        self.assertEqual(self.wire.frames[-1]["lines"][-1], "now$")
        self.feed.output("s-1.0", b"after", (40, 5))
        self.assertEqual(len(self.wire.of_type("output")), 1)
        self.assertEqual(self.feed.stats["gaps"], 1)

    def test_junk_from_the_hub_is_ignored(self):
        self.feed.connected(self.wire.send)
        self.feed.opened(info(), lambda: self.screen)
        for junk in [
            b"\xff\xfe",
            b"not json",
            b"[]",
            b'{"type": "input", "session": "s-1.0", "data": "rm -rf /"}',
            b'{"type": "watch", "sessions": "s-1.0"}',
            b'{"type": "watch", "sessions": ["bad id!"]}',
            b'{"type": "watch", "sessions": [1]}',
            b'{"type": "watch"}',
        ]:
            self.feed.hub_frame(junk, False)
        self.feed.hub_frame(b'{"type": "watch", "sessions": ["s-1.0"]}', True)  # binary
        self.assertEqual(self.feed.stats["hub_junk"], 9)
        self.assertEqual(self.feed.watched(), [])
        self.assertEqual([f["type"] for f in self.wire.frames], ["hello", "open"])
        # Unknown sessions in a watch are ignored too.
        self.feed.hub_frame(b'{"type": "watch", "sessions": ["s-9.9", "s-1.0"]}', False)
        self.assertEqual(self.feed.watched(), ["s-1.0"])

    def test_reconnect_announces_open_sessions_and_forgets_watches(self):
        self.feed.opened(info(), lambda: self.screen)
        self.feed.output("s-1.0", b"before any hub", (40, 5))  # nothing to send to
        self.feed.connected(self.wire.send)
        self.feed.hub_frame('{"type": "watch", "sessions": ["s-1.0"]}', False)
        self.feed.disconnected()
        self.feed.output("s-1.0", b"while away", (40, 5))
        again = Wire()
        self.feed.connected(again.send)
        self.assertEqual([f["type"] for f in again.frames], ["hello", "open"])
        self.assertEqual(self.feed.watched(), [])

    def test_session_limit(self):
        feed = LiveFeed("gw", max_sessions=1)
        feed.connected(self.wire.send)
        feed.opened(info("s-1.0"), lambda: None)
        feed.opened(info("s-2.0"), lambda: None)
        feed.output("s-2.0", b"x", None)
        self.assertEqual(feed.sessions(), ["s-1.0"])
        self.assertEqual(feed.stats["not_announced"], 1)


class LiveFeedFlagTests(TestCase):
    """C{--live-feed}: only next to an --approval URL, and only a ws(s):// URL."""

    def options(self, **flags) -> dict:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        keys_path = os.path.join(base, "authorized_keys")
        with open(keys_path, "w") as f:
            f.write(keygen(os.path.join(base, "op")) + "\n")
        identity = os.path.join(base, "id")
        keygen(identity)
        known = os.path.join(base, "known_hosts")
        open(known, "w").close()
        return {
            "host-key": os.path.join(base, "hk"),
            "target": "127.0.0.1:22",
            "target-known-hosts": known,
            "target-identity": identity,
            "authorized-keys": keys_path,
            **flags,
        }

    def test_flag(self):
        config = build_config(
            self.options(approval="ws://127.0.0.1:9/gateway", **{"live-feed": "wss://h/live-feed"}),
            reactor,
        )
        self.assertEqual(config.live_feed, "wss://h/live-feed")
        self.assertIsNone(build_config(self.options(), reactor).live_feed)
        with self.assertRaises(ConfigError) as caught:
            build_config(self.options(**{"live-feed": "ws://127.0.0.1:9/live-feed"}), reactor)
        self.assertIn("--live-feed: only with an --approval URL", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            build_config(
                self.options(approval="ws://127.0.0.1:9/", **{"live-feed": "http://h/"}), reactor
            )
        self.assertIn("--live-feed: bad approval service URL", str(caught.exception))


# --- the hub's end, sans-IO ------------------------------------------------------------


class FeedFrameTests(SynchronousTestCase):
    def test_malformed_frames(self):
        for frame in [
            b"junk",
            b'{"type": "hello", "version": 2, "gateway": "g"}',
            b'{"type": "open", "session": "s-1.0"}',
            b'{"type": "open", "session": "s-1.0", "user": "a", "client": "c", "target": "t",'
            b' "kind": "shell", "pty": 1, "columns": 80, "rows": 24}',
            b'{"type": "output", "session": "s-1.0", "data": "not base64!"}',
            b'{"type": "output", "session": "bad id", "data": ""}',
            b'{"type": "resize", "session": "s-1.0", "columns": 0, "rows": 24}',
            b'{"type": "resize", "session": "s-1.0", "columns": true, "rows": 24}',
            b'{"type": "snapshot", "session": "s-1.0", "columns": 2, "rows": 1,'
            b' "lines": ["a", "b"], "cursor": [0, 0]}',
            b'{"type": "snapshot", "session": "s-1.0", "columns": 2, "rows": 1,'
            b' "lines": ["a"], "cursor": [0]}',
            b'{"type": "input", "session": "s-1.0"}',
        ]:
            self.assertIsInstance(parse_feed_frame(frame, False), Ignored, frame)
        self.assertIsInstance(parse_feed_frame(b'{"type": "gap", "session": "s"}', True), Ignored)

    def test_open_cuts_and_escapes_fields(self):
        frame = json.dumps(
            {
                "type": "open",
                "session": "s-1.0",
                "user": "al\x1b[2Jice",
                "client": "c" * 1000,
                "target": "t",
                "kind": "shell",
                "pty": True,
                "columns": 80,
                "rows": 24,
            }
        )
        message = parse_feed_frame(frame, False)
        self.assertEqual(message.info["user"], "al?[2Jice")
        self.assertEqual(len(message.info["client"]), 256)


def feed_frames(hub: Hub, link, frames: list[dict]) -> None:
    for frame in frames:
        hub.feed_frame(link, json.dumps(frame), False, 1_800_000_000.0)


def open_frame(session: str = "s-1.0", **extra) -> dict:
    return {
        "type": "open",
        "session": session,
        "user": "alice",
        "client": "127.0.0.1:5555",
        "target": "127.0.0.1:22",
        "kind": "shell",
        "pty": True,
        "columns": 40,
        "rows": 5,
        **extra,
    }


def snapshot_frame(
    lines: list[str], columns: int, rows: int, cursor: list[int], session: str = "s-1.0"
) -> dict:
    return {
        "type": "snapshot",
        "session": session,
        "columns": columns,
        "rows": rows,
        "lines": lines,
        "cursor": cursor,
    }


class HubLiveViewTests(SynchronousTestCase):
    def setUp(self):
        self.hub = Hub()
        self.bob = FakeLink()
        self.hub.reviewer_connected(self.bob, "bob")
        self.carol = FakeLink()
        self.hub.reviewer_connected(self.carol, "carol")
        self.gateway = FakeLink("tcp:127.0.0.1:2")
        self.hub.feed_connected(self.gateway)
        feed_frames(self.hub, self.gateway, [{"type": "hello", "version": 1, "gateway": "gw1"}])

    def watch(self, link, session):
        self.hub.reviewer_frame(link, f'{{"type": "watch", "session": {session}}}', False, 0.0)

    def test_sessions_are_listed_with_who_and_where(self):
        self.assertEqual(self.bob.sent[0]["sessions"], [])
        feed_frames(self.hub, self.gateway, [open_frame()])
        self.hub.flush_sessions()
        [listed] = of_type(self.bob, "sessions")[-1]["sessions"]
        self.assertEqual(
            listed,
            {
                "session": "s-1.0",
                "gateway": "gw1",
                "user": "alice",
                "client": "127.0.0.1:5555",
                "target": "127.0.0.1:22",
                "kind": "shell",
                "pty": True,
                "columns": 40,
                "rows": 5,
                "started": "2027-01-15T08:00:00.000Z",
            },
        )
        late = FakeLink()
        self.hub.reviewer_connected(late, "dave")
        self.assertEqual(late.sent[0]["sessions"], [listed])
        # Nobody watches: the gateway was told nothing, the hub keeps no screen.
        self.assertEqual(self.gateway.sent, [])
        self.assertFalse(self.hub.live.has_screen("s-1.0"))

    def test_watch_follows_the_screen_until_the_session_ends(self):
        feed_frames(self.hub, self.gateway, [open_frame()])
        self.watch(self.bob, '"s-1.0"')
        self.assertEqual(self.gateway.sent, [{"type": "watch", "sessions": ["s-1.0"]}])
        [first] = of_type(self.bob, "session")
        self.assertEqual(first, {"type": "session", "session": "s-1.0", "live": True, "lines": []})
        snapshot = snapshot_frame(
            ["alice@db1:~$ ls", "file", "alice@db1:~$", "", ""], 40, 5, [2, 13]
        )

        def output(data: bytes) -> dict:
            return {"type": "output", "session": "s-1.0", "data": base64.b64encode(data).decode()}

        feed_frames(self.hub, self.gateway, [snapshot, output(b"uptime"), output(b"\r\n up 3")])
        self.hub.flush_sessions()  # changes gather: one frame
        [_, second] = of_type(self.bob, "session")
        self.assertEqual(
            second["lines"], ["alice@db1:~$ ls", "file", "alice@db1:~$ uptime", " up 3", ""]
        )
        self.assertEqual(of_type(self.carol, "session"), [])  # not watching

        # Carol watches too; bob stops: the gateway keeps sending.
        self.watch(self.carol, '"s-1.0"')
        self.assertEqual(of_type(self.carol, "session")[0]["lines"], second["lines"])
        self.watch(self.bob, "null")
        self.assertEqual(len(self.gateway.sent), 1)

        feed_frames(self.hub, self.gateway, [{"type": "close", "session": "s-1.0"}])
        self.hub.flush_sessions()
        last = of_type(self.carol, "session")[-1]
        self.assertFalse(last["live"])
        self.assertEqual(last["lines"][3], " up 3")
        self.assertEqual(of_type(self.bob, "sessions")[-1]["sessions"], [])
        self.assertEqual(len(of_type(self.bob, "session")), 2)
        # The watch ended with the session.
        self.assertEqual(self.gateway.sent[-1], {"type": "watch", "sessions": []})

    def test_last_watcher_leaving_stops_the_gateway_and_drops_the_screen(self):
        feed_frames(self.hub, self.gateway, [open_frame()])
        self.watch(self.bob, '"s-1.0"')
        feed_frames(
            self.hub,
            self.gateway,
            [snapshot_frame(["$"], 40, 5, [0, 2])],
        )
        self.assertTrue(self.hub.live.has_screen("s-1.0"))
        self.hub.reviewer_disconnected(self.bob)
        self.assertEqual(self.gateway.sent[-1], {"type": "watch", "sessions": []})
        self.assertFalse(self.hub.live.has_screen("s-1.0"))
        # Late output (in flight) changes nothing.
        feed_frames(
            self.hub, self.gateway, [{"type": "output", "session": "s-1.0", "data": "eA=="}]
        )
        self.assertFalse(self.hub.live.has_screen("s-1.0"))

    def test_unsolicited_snapshots_and_foreign_sessions_are_ignored(self):
        other = FakeLink("tcp:127.0.0.1:3")
        self.hub.feed_connected(other)
        feed_frames(
            self.hub,
            other,
            [
                open_frame(),  # before hello: refused, connection closed
            ],
        )
        self.assertIsNotNone(other.closed)
        other = FakeLink("tcp:127.0.0.1:4")
        self.hub.feed_connected(other)
        feed_frames(self.hub, self.gateway, [open_frame()])
        feed_frames(
            self.hub,
            other,
            [
                {"type": "hello", "version": 1, "gateway": "gw2"},
                open_frame(user="mallory"),  # the same id, another gateway
                {"type": "close", "session": "s-1.0"},
                snapshot_frame(["fake"], 4, 1, [0, 0]),
            ],
        )
        self.assertEqual(self.hub.stats["feed_session_refused"], 1)
        [listed] = self.hub.live.sessions()
        self.assertEqual((listed["user"], listed["gateway"]), ("alice", "gw1"))
        self.assertFalse(self.hub.live.has_screen("s-1.0"))
        # An unsolicited snapshot from the owner is ignored as well.
        feed_frames(
            self.hub,
            self.gateway,
            [snapshot_frame(["fake"], 4, 1, [0, 0])],
        )
        self.assertFalse(self.hub.live.has_screen("s-1.0"))

    def test_junk_feed_frames_are_ignored_and_the_feed_stays(self):
        for junk in [b"\x00junk", b"{}", b'{"type": "decision", "id": "r-1"}', b"[1]"]:
            self.hub.feed_frame(self.gateway, junk, False, 0.0)
        self.hub.feed_frame(self.gateway, b"{}", True, 0.0)
        self.assertEqual(self.hub.stats["feed_junk"], 5)
        self.assertIsNone(self.gateway.closed)
        self.assertEqual(self.hub.pending(), [])
        feed_frames(self.hub, self.gateway, [open_frame()])
        self.assertEqual(len(self.hub.live.sessions()), 1)

    def test_a_feed_going_away_ends_its_sessions(self):
        feed_frames(self.hub, self.gateway, [open_frame(), open_frame("s-1.1")])
        self.watch(self.bob, '"s-1.1"')
        self.hub.feed_disconnected(self.gateway)
        self.hub.flush_sessions()
        self.assertEqual(of_type(self.bob, "sessions")[-1]["sessions"], [])
        self.assertFalse(of_type(self.bob, "session")[-1]["live"])

    def test_unknown_session_bad_watch_and_no_input_path(self):
        self.watch(self.bob, '"s-nope.0"')
        self.assertEqual(
            of_type(self.bob, "session"),
            [{"type": "session", "session": "s-nope.0", "live": False, "lines": []}],
        )
        self.assertEqual(self.gateway.sent, [])
        self.watch(self.bob, '"bad session!"')
        self.watch(self.bob, "42")
        self.hub.reviewer_frame(
            self.bob, '{"type": "input", "session": "s-1.0", "data": "rm -rf /"}', False, 0.0
        )
        errors = of_type(self.bob, "error")
        self.assertEqual(len(errors), 3)
        self.assertIn("session", errors[0]["error"])

    def test_limit(self):
        live = LiveSessions(max_sessions=1)
        [first, second] = [parse_feed_frame(json.dumps(open_frame(s)), False) for s in ("a", "b")]
        self.assertIsNone(live.open("src", "gw", first, "now"))
        self.assertIsNotNone(live.open("src", "gw", second, "now"))
        self.assertEqual(live.dropped, 1)


# --- real gateways, hubs, sshd and ssh ---------------------------------------------------


def open_socket(testcase, port: int, path: str, token: str | None, protocols, **kw):
    service = types.SimpleNamespace(local_address=("127.0.0.1", port))
    return ReviewerSocket.open(testcase, service, path, token=token, protocols=protocols, **kw)


def watch(reviewer: ReviewerSocket, session: str) -> None:
    reviewer.send_json({"type": "watch", "session": session})


def screen_with(session: str, text: str, live: bool = True):
    return lambda m: (
        m.get("type") == "session"
        and m["session"] == session
        and m["live"] is live
        and any(text in line for line in m["lines"])
    )


def approve_all(reviewer: ReviewerSocket) -> None:
    """Approve every request the reviewer is shown (as it arrives)."""
    done: set[str] = set()
    original = reviewer._notify

    def notify():
        for message in list(reviewer.messages):
            if message.get("type") == "request" and message["request"]["id"] not in done:
                done.add(message["request"]["id"])
                reviewer.decide(message["request"]["id"], "approve", "watched").addErrback(
                    lambda _: None
                )
        original()

    reviewer._notify = notify


class EmbeddedLiveViewTests(TestCase):
    """A gateway and a hub in one process: the in-process live feed."""

    timeout = 60

    @defer.inlineCallbacks
    def test_reviewer_watches_an_exec_session(self):
        sshd = start_sshd(self)
        service = start_hub(self)
        feed = service.local_feed("embedded")
        approver = ScriptedApprover(lambda request: Decision.approve("ok", "test"))
        gateway = Gateway(self, sshd, approver, session_watch=feed)
        reviewer = yield ReviewerSocket.open(self, service)
        yield reviewer.of_type("snapshot")
        running = spawn_ssh(
            reactor, gateway.ssh_argv("echo first-line; sleep 2; echo second-line; sleep 1")
        )
        listed = yield reviewer.next(lambda m: m.get("type") == "sessions" and m["sessions"])
        [entry] = listed["sessions"]
        session = entry["session"]
        self.assertRegex(session, r"^s-[0-9a-f]{8}\.\d+$")
        self.assertEqual((entry["kind"], entry["pty"], entry["user"]), ("exec", False, sshd.user))
        self.assertEqual(entry["gateway"], "embedded")
        self.assertEqual(entry["target"], f"127.0.0.1:{sshd.port}")
        watch(reviewer, session)
        seen = yield reviewer.next(screen_with(session, "second-line"), timeout=10)
        self.assertEqual(seen["lines"][0], "first-line")  # from the snapshot
        ended = yield reviewer.next(
            lambda m: m.get("type") == "session" and not m["live"], timeout=10
        )
        self.assertEqual(ended["lines"][:2], ["first-line", "second-line"])
        code, out, err = yield running
        self.assertEqual(code, 0, err)
        self.assertEqual(service.hub.live.sessions(), [])
        self.assertEqual(feed.sessions(), [])


class StandaloneLiveViewTests(TestCase):
    """
    A standalone hub (the real service on a port), a gateway that reaches it
    only over WebSockets -- approvals on C{/gateway}, sessions on C{/live-feed}
    -- a real sshd, a real interactive ssh in tmux, a reviewer's WebSocket.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.sshd = start_sshd(self)
        self.hub = start_hub(self)
        host, port = self.hub.local_address
        self.feed = LiveFeed("gw-far")
        self.feed_client = LiveFeedClient(
            reactor, f"ws://{host}:{port}/live-feed", self.feed, token=GATEWAY_TOKEN
        )
        self.feed_client.startService()
        self.addCleanup(self.feed_client.stopService)
        self.gateway, self.approvals = approval_client_gateway(
            self,
            self.sshd,
            f"ws://{host}:{port}/gateway",
            token=GATEWAY_TOKEN,
            session_watch=self.feed,
        )
        self.reviewer = yield ReviewerSocket.open(self, self.hub)
        yield self.reviewer.of_type("snapshot")
        approve_all(self.reviewer)
        yield wait_until(
            lambda: self.feed_client.connected and self.approvals.connected,
            "the feed and the approval client to connect",
            timeout=15,
        )

    def ssh_terminal(self):
        argv = self.gateway.ssh_argv(extra=["-tt"])
        return interactive_ssh(self, argv, width=90, height=20)

    @defer.inlineCallbacks
    def test_reviewer_watches_an_interactive_session(self):
        terminal = self.ssh_terminal()
        listed = yield self.reviewer.next(
            lambda m: m.get("type") == "sessions" and m["sessions"], timeout=15
        )
        [entry] = listed["sessions"]
        session = entry["session"]
        self.assertEqual(entry["gateway"], "gw-far")
        self.assertEqual((entry["kind"], entry["pty"]), ("shell", True))
        self.assertEqual((entry["columns"], entry["rows"]), (90, 20))
        self.assertEqual(entry["user"], self.sshd.user)
        yield terminal.wait_for_deferred(reactor, PROMPT, timeout=15)
        # Output before anyone watches is never sent.
        terminal.send_line("echo unwatched-$((6*7))")
        yield terminal.wait_for_deferred(reactor, "unwatched-42", timeout=15)
        self.assertEqual(self.feed.stats["output_frames"], 0)
        self.assertEqual(self.feed.watched(), [])

        watch(self.reviewer, session)
        # The snapshot, from the gate's screen, already shows the earlier output.
        yield self.reviewer.next(screen_with(session, "unwatched-42"), timeout=10)
        terminal.send_line("echo watched-$((6*8))")
        yield self.reviewer.next(screen_with(session, "watched-48"), timeout=15)
        self.assertGreater(self.feed.stats["output_frames"], 0)
        self.assertEqual(self.feed.watched(), [session])

        # Stop watching: the gateway stops sending.
        watch_none = {"type": "watch", "session": None}
        self.reviewer.send_json(watch_none)
        yield wait_until(lambda: not self.feed.watched(), "the feed to stop watching", timeout=10)
        self.assertEqual(self.feed.watched(), [])
        sent = self.feed.stats["output_frames"]
        terminal.send_line("echo quiet-$((6*9))")
        yield terminal.wait_for_deferred(reactor, "quiet-54", timeout=15)
        self.assertEqual(self.feed.stats["output_frames"], sent)

        terminal.send_line("exit")
        code = yield terminal.wait_exit_deferred(reactor, timeout=15)
        self.assertEqual(code, 0)
        yield self.reviewer.next(
            lambda m: m.get("type") == "sessions" and not m["sessions"], timeout=10
        )

    @defer.inlineCallbacks
    def test_the_feed_dropping_does_not_disturb_the_session(self):
        terminal = self.ssh_terminal()
        listed = yield self.reviewer.next(
            lambda m: m.get("type") == "sessions" and m["sessions"], timeout=15
        )
        session = listed["sessions"][0]["session"]
        watch(self.reviewer, session)
        yield terminal.wait_for_deferred(reactor, PROMPT, timeout=15)
        terminal.send_line("echo before-$((1+1))")
        yield self.reviewer.next(screen_with(session, "before-2"), timeout=15)
        # The hub drops the feed (as a crash or network cut would).
        [feed_link] = list(self.hub.hub._feeds)
        feed_link.transport.abortConnection()
        yield self.reviewer.next(screen_with(session, "before-2", live=False), timeout=10)
        # The session goes on as if nothing happened.
        terminal.send_line("echo during-$((2+2))")
        yield terminal.wait_for_deferred(reactor, "during-4", timeout=15)
        # The gateway reconnects (back-off: first retry within 1 s) and
        # announces the session again; watching works again.
        yield wait_until(
            lambda: self.hub.hub.live.ids() == [session], "the session announced again", timeout=15
        )
        watch(self.reviewer, session)
        yield self.reviewer.next(screen_with(session, "during-4"), timeout=15)
        terminal.send_line("exit")
        self.assertEqual((yield terminal.wait_exit_deferred(reactor, timeout=15)), 0)

    @defer.inlineCallbacks
    def test_a_hub_that_stops_reading_does_not_slow_the_session(self):
        terminal = self.ssh_terminal()
        listed = yield self.reviewer.next(
            lambda m: m.get("type") == "sessions" and m["sessions"], timeout=15
        )
        session = listed["sessions"][0]["session"]
        yield terminal.wait_for_deferred(reactor, PROMPT, timeout=15)
        watch(self.reviewer, session)
        yield self.reviewer.next(screen_with(session, PROMPT.strip()), timeout=10)
        # The hub stops reading the feed (a hub stuck or far away).
        [feed_link] = list(self.hub.hub._feeds)
        feed_link.transport.pauseProducing()
        self.addCleanup(feed_link.transport.resumeProducing)
        # A small kernel send buffer on the gateway's end, so that what the
        # kernels hold cannot hide the stall from the gateway's transport.
        handle = self.feed_client._session.transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        terminal.send_line("seq 1 100000; echo done-$((3*3))")
        # The session runs at full speed: the feed's buffer fills (the
        # transport pauses it), output is dropped instead of queued.
        yield terminal.wait_for_deferred(reactor, "done-9", timeout=30)
        self.assertGreaterEqual(self.feed.stats["pauses"], 1)
        buffered = feed_link.transport.transport  # the hub's TCP connection, not read
        self.assertTrue(buffered.connected)
        # Reading again: gaps, then a fresh snapshot shows where the session is.
        feed_link.transport.resumeProducing()
        yield self.reviewer.next(screen_with(session, "done-9"), timeout=60)
        self.assertGreaterEqual(self.feed.stats["gaps"], 1)
        self.assertGreaterEqual(self.hub.hub.stats["feed_gap"], 1)
        terminal.send_line("exit")
        self.assertEqual((yield terminal.wait_exit_deferred(reactor, timeout=15)), 0)

    @defer.inlineCallbacks
    def test_wrong_token_is_refused_and_junk_is_ignored(self):
        _, port = self.hub.local_address
        for token in ("wrong-token-wrong-token", None, BOB_TOKEN):
            sock = yield open_socket(
                self, port, "/live-feed", token, [FEED_SUBPROTOCOL], expect_open=False
            )
            self.assertIn("401", sock.close_reason)
        self.assertEqual(self.hub.hub.stats["feed_unauthorized"], 3)
        # The right token, but without the subprotocol.
        sock = yield open_socket(
            self, port, "/live-feed", GATEWAY_TOKEN, ["wraith.approval.v1"], expect_open=False
        )
        self.assertIn("400", sock.close_reason)
        # Junk on an authenticated feed: ignored, the connection stays.
        raw = yield open_socket(self, port, "/live-feed", GATEWAY_TOKEN, [FEED_SUBPROTOCOL])
        raw.send_json({"type": "hello", "version": 1, "gateway": "raw"})
        for junk in [b"not json", b'{"type": "decision", "id": "x", "decision": "approve"}']:
            raw.send_raw(junk)
        raw.send_json({"type": "output", "session": "s-1.0", "data": "%%%"})
        raw.send_json(open_frame("s-raw.0"))
        yield self.reviewer.next(
            lambda m: (
                m.get("type") == "sessions" and [s["session"] for s in m["sessions"]] == ["s-raw.0"]
            )
        )
        self.assertEqual(self.hub.hub.stats["feed_junk"], 3)
        self.assertIsNotNone(raw.protocol)  # still open
        self.assertEqual(self.hub.hub.pending(), [])


class TwistdLiveFeedTests(TestCase):
    """C{twistd wraith-hub} and C{twistd wraith --approval ... --live-feed ...}: two processes."""

    timeout = 120

    def setUp(self):
        self.sshd = start_sshd(self)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.port, self.hub_port = ports
        token_file = os.path.join(self.base, "gateway_token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(GATEWAY_TOKEN + "\n")
        reviewers = os.path.join(self.base, "reviewers.toml")
        from wraith_conch.approval.reviewers import token_digest

        with open(reviewers, "w") as f:
            f.write(f'[[reviewer]]\nname = "bob"\ntoken_sha256 = "{token_digest(BOB_TOKEN)}"\n')
        self.hub_log = os.path.join(self.base, "hub.log")
        self.gateway_log = os.path.join(self.base, "gateway.log")
        hub = twistd_argv(
            "-n", "--pidfile=", f"--logfile={self.hub_log}", "wraith-hub",
            f"--hub-listen=tcp:{self.hub_port}:interface=127.0.0.1",
            f"--gateway-token-file={token_file}", f"--reviewers={reviewers}",
        )  # fmt: skip
        self.operator_key = os.path.join(self.base, "operator")
        keys_path = os.path.join(self.base, "authorized_keys")
        with open(keys_path, "w") as f:
            f.write(keygen(self.operator_key) + "\n")
        self.host_key = os.path.join(self.base, "gateway_host_key")
        gateway = twistd_argv(
            "-n", "--pidfile=", f"--logfile={self.gateway_log}", "wraith",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--host-key={self.host_key}", f"--target=127.0.0.1:{self.sshd.port}",
            f"--target-known-hosts={self.sshd.known_hosts_path}",
            f"--target-identity={self.sshd.client_key_path}", f"--authorized-keys={keys_path}",
            f"--approval=ws://127.0.0.1:{self.hub_port}/gateway",
            f"--approval-token-file={token_file}",
            f"--live-feed=ws://127.0.0.1:{self.hub_port}/live-feed",
            "--gateway-name=gw-process",
        )  # fmt: skip
        self.processes = []
        for argv in (hub, gateway):
            process = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            self.addCleanup(stop_process, process)
            self.processes.append(process)

    @defer.inlineCallbacks
    def reviewer_socket(self):
        def gateway_listening() -> bool:
            # The key file is written before twistd starts listening.
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        for _ in range(300):  # up to 30 s for both processes (slow on a loaded machine)
            if os.path.exists(self.host_key) and gateway_listening():
                try:
                    reviewer = yield open_socket(
                        self, self.hub_port, "/reviewer", BOB_TOKEN, ["wraith.reviewer.v1"]
                    )
                    return reviewer
                except Exception:
                    pass
            for process in self.processes:
                self.assertIsNone(process.poll(), "a twistd process exited")
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail("the hub did not start")

    def operator_terminal(self):
        known = os.path.join(self.base, "known_hosts")
        pin_gateway_key(known, self.port, self.host_key)
        argv = [
            "ssh", "-F", "/dev/null", "-tt", "-p", str(self.port), "-i", self.operator_key,
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            f"{self.sshd.user}@127.0.0.1",
        ]  # fmt: skip
        return interactive_ssh(self, argv, width=80, height=24)

    @defer.inlineCallbacks
    def test_watch_in_the_browser(self):
        from tests.test_console_browser import SKIP, BrowserThread

        if SKIP:
            raise SkipTest(SKIP)
        reviewer = yield self.reviewer_socket()
        approve_all(reviewer)  # bob approves over his socket; the browser only watches
        terminal = self.operator_terminal()
        yield terminal.wait_for_deferred(reactor, PROMPT, timeout=15)
        terminal.send_line("echo in-the-browser-$((5*5))")
        yield terminal.wait_for_deferred(reactor, "in-the-browser-25", timeout=15)
        browser = BrowserThread()
        self.addCleanup(browser.stop)
        yield browser.start()
        link = f"http://127.0.0.1:{self.hub_port}/login?token={BOB_TOKEN}"

        def watch_in_browser():
            page = browser.new_page()
            page.goto(link)
            page.wait_for_selector("#status.live")
            item = page.locator("#live-sessions li", has_text="gw-process")
            item.wait_for()
            listed = item.inner_text()
            item.locator("button.watch").click()
            page.locator("#live-screen", has_text="in-the-browser-25").wait_for()
            page.screenshot(path=STANDALONE_SCREENSHOT, full_page=True)
            return page, listed

        page, listed = yield browser.call(watch_in_browser)
        self.assertIn(f"{self.sshd.user}@127.0.0.1:{self.sshd.port}", listed)
        self.assertIn("shell 80x24", listed)
        terminal.send_line("echo later-$((5*6))")

        def follows():
            page.locator("#live-screen", has_text="later-30").wait_for()
            return page.locator("#live-view textarea, #live-view input").count()

        self.assertEqual((yield browser.call(follows)), 0)  # nothing to type into
        terminal.send_line("exit")
        self.assertEqual((yield terminal.wait_exit_deferred(reactor, timeout=15)), 0)

    @defer.inlineCallbacks
    def test_reviewer_watches_a_session_on_another_gateway_process(self):
        reviewer = yield self.reviewer_socket()
        approve_all(reviewer)
        terminal = self.operator_terminal()
        listed = yield reviewer.next(
            lambda m: m.get("type") in ("snapshot", "sessions") and m["sessions"], timeout=20
        )
        [entry] = listed["sessions"]
        self.assertEqual((entry["gateway"], entry["kind"]), ("gw-process", "shell"))
        yield terminal.wait_for_deferred(reactor, PROMPT, timeout=15)
        watch(reviewer, entry["session"])
        terminal.send_line("echo far-away-$((7*6))")
        yield reviewer.next(screen_with(entry["session"], "far-away-42"), timeout=20)
        terminal.send_line("exit")
        self.assertEqual((yield terminal.wait_exit_deferred(reactor, timeout=15)), 0)
        with open(self.gateway_log) as f:
            log = f.read()
        with open(self.hub_log) as f:
            log += f.read()
        self.assertIn("connected to the live feed", log)
        self.assertNotIn(GATEWAY_TOKEN, log)
        self.assertNotIn(BOB_TOKEN, log)
