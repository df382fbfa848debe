"""
Tests for L{wraith_conch.interception.linebuffer}, the sans-IO keystroke model.

The model's word and character rules were checked once against bash 5.2 in a
PTY (C{READLINE_LINE}/C{READLINE_POINT} from a C{bind -x} key); the cases
below pin what bash did.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.interception.linebuffer import (
    KEYS,
    MAX_PASTE,
    MAX_SEQUENCE,
    Event,
    Forward,
    Interrupt,
    LineBuffer,
    Refused,
    Submit,
)

ESC = b"\x1b"
LEFT, RIGHT, UP, DOWN = b"\x1b[D", b"\x1b[C", b"\x1b[A", b"\x1b[B"
HOME, END, DELETE = b"\x1b[H", b"\x1b[F", b"\x1b[3~"
CTRL_LEFT, CTRL_RIGHT = b"\x1b[1;5D", b"\x1b[1;5C"
PASTE_BEGIN, PASTE_END = b"\x1b[200~", b"\x1b[201~"
EMOJI = "\N{GRINNING FACE}".encode()  # four bytes


def merged(events: list[Event]) -> list[Event]:
    """Join adjacent L{Forward}s: a packet split may cut one into several."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Forward) and out and isinstance(out[-1], Forward):
            out[-1] = Forward(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed(data: bytes, buffer: LineBuffer | None = None) -> tuple[LineBuffer, list[Event]]:
    buffer = LineBuffer() if buffer is None else buffer
    return buffer, buffer.feed(data)


def feed_split(data: bytes, cuts: list[int]) -> tuple[LineBuffer, list[Event]]:
    """Feed C{data} in packets cut at C{cuts}; return the buffer and all events."""
    buffer = LineBuffer()
    events: list[Event] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += buffer.feed(data[start:cut])
        start = cut
    return buffer, events


def state(buffer: LineBuffer) -> tuple[str, int, frozenset[str], bool]:
    return buffer.line, buffer.cursor, buffer.dirty, buffer.is_empty


def account(events: list[Event], data: bytes) -> int:
    """
    Walk C{data} alongside C{events}: each event's bytes must be the next bytes
    of the input, in order, and an LF right after a submitting CR may have been
    swallowed.  Return how much of C{data} the events account for.
    """
    at = 0
    for event in events:
        raw = event.data if isinstance(event, Forward) else event.key
        assert data[at : at + len(raw)] == raw, (event, data[at:])
        at += len(raw)
        if isinstance(event, Submit) and event.key == b"\r" and data[at : at + 1] == b"\n":
            at += 1
    return at


def forwarded(events: list[Event]) -> bytes:
    """Everything that reaches the target: Forward data, Submit and Interrupt keys."""
    return b"".join(
        e.data if isinstance(e, Forward) else e.key
        for e in events
        if isinstance(e, Forward | Submit | Interrupt)
    )


class EventTests(SynchronousTestCase):
    def test_frozen(self) -> None:
        """Events are values: equal by content, immutable."""
        self.assertEqual(Submit("ls", b"\r"), Submit("ls", b"\r"))
        self.assertNotEqual(Forward(b"a"), Forward(b"b"))
        with self.assertRaises(AttributeError):
            Forward(b"a").data = b"b"  # type: ignore[misc]

    def test_initial_state(self) -> None:
        self.assertEqual(state(LineBuffer()), ("", 0, frozenset(), True))


class ControlKeyTableTests(SynchronousTestCase):
    """Every C0 control and DEL, typed after C{"ab cd"} with the cursor at the end."""

    # byte: (event type, line after, cursor after, dirty after)
    table: dict[int, tuple[type, str, int, frozenset[str]]] = {
        0x00: (Refused, "ab cd", 5, frozenset()),  # Ctrl-@ set-mark
        0x01: (Forward, "ab cd", 0, frozenset()),  # Ctrl-A
        0x02: (Forward, "ab cd", 4, frozenset()),  # Ctrl-B
        0x03: (Interrupt, "", 0, frozenset()),  # Ctrl-C
        0x04: (Forward, "ab cd", 5, frozenset()),  # Ctrl-D, non-empty line, at the end
        0x05: (Forward, "ab cd", 5, frozenset()),  # Ctrl-E
        0x06: (Forward, "ab cd", 5, frozenset()),  # Ctrl-F at the end
        0x07: (Forward, "ab cd", 5, frozenset()),  # Ctrl-G abort
        0x08: (Forward, "ab c", 4, frozenset()),  # Ctrl-H
        0x09: (Forward, "ab cd", 5, frozenset({"tab"})),  # Tab
        0x0A: (Submit, "", 0, frozenset()),  # Ctrl-J
        0x0B: (Forward, "ab cd", 5, frozenset()),  # Ctrl-K at the end
        0x0C: (Forward, "ab cd", 5, frozenset()),  # Ctrl-L
        0x0D: (Submit, "", 0, frozenset()),  # Enter
        0x0E: (Forward, "ab cd", 5, frozenset({"history"})),  # Ctrl-N
        0x0F: (Refused, "ab cd", 5, frozenset()),  # Ctrl-O operate-and-get-next
        0x10: (Forward, "ab cd", 5, frozenset({"history"})),  # Ctrl-P
        0x11: (Refused, "ab cd", 5, frozenset()),  # Ctrl-Q quoted-insert
        0x12: (Refused, "ab cd", 5, frozenset()),  # Ctrl-R
        0x13: (Refused, "ab cd", 5, frozenset()),  # Ctrl-S
        0x14: (Refused, "ab cd", 5, frozenset()),  # Ctrl-T
        0x15: (Forward, "", 0, frozenset()),  # Ctrl-U
        0x16: (Refused, "ab cd", 5, frozenset()),  # Ctrl-V
        0x17: (Forward, "ab ", 3, frozenset()),  # Ctrl-W
        0x18: (Refused, "ab cd", 5, frozenset()),  # Ctrl-X
        0x19: (Refused, "ab cd", 5, frozenset()),  # Ctrl-Y
        0x1A: (Forward, "ab cd", 5, frozenset()),  # Ctrl-Z
        0x1C: (Refused, "ab cd", 5, frozenset()),  # Ctrl-backslash
        0x1D: (Refused, "ab cd", 5, frozenset()),  # Ctrl-]
        0x1E: (Refused, "ab cd", 5, frozenset()),  # Ctrl-^
        0x1F: (Refused, "ab cd", 5, frozenset()),  # Ctrl-_ undo
        0x7F: (Forward, "ab c", 4, frozenset()),  # DEL
    }

    def test_table_covers_every_control(self) -> None:
        """Every C0 control but ESC, and DEL, has a row here."""
        self.assertEqual(set(self.table), set(range(0x20)) - {0x1B} | {0x7F})

    def test_each_key(self) -> None:
        for byte, (kind, line, cursor, dirty) in self.table.items():
            key = bytes((byte,))
            buffer, _ = feed(b"ab cd")
            events = buffer.feed(key)
            with self.subTest(key=key):
                self.assertEqual(len(events), 1, events)
                (event,) = events
                self.assertIsInstance(event, kind)
                self.assertEqual((buffer.line, buffer.cursor, buffer.dirty), (line, cursor, dirty))
                if kind is Forward:
                    self.assertEqual(event, Forward(key))
                elif kind is Submit:
                    self.assertEqual(event, Submit("ab cd", key))
                elif kind is Interrupt:
                    self.assertEqual(event, Interrupt(key))
                else:
                    self.assertEqual(event.key, key)
                    self.assertTrue(event.why)

    def test_refused_keys_leave_line_alone(self) -> None:
        """A refused key forwards nothing, so the model does not change."""
        for byte, (kind, *_) in self.table.items():
            if kind is Refused:
                buffer, _ = feed(b"ab cd" + LEFT)
                before = state(buffer)
                buffer.feed(bytes((byte,)))
                self.assertEqual(state(buffer), before)

    def test_every_refused_control_is_in_the_one_table(self) -> None:
        """The refusals have their reasons in L{KEYS}, not scattered in code."""
        for byte, (kind, *_) in self.table.items():
            if kind is Refused:
                self.assertIn(bytes((byte,)), KEYS)

    def test_dangerous_bash_defaults_never_forwarded(self) -> None:
        """
        The bash 5.2 defaults (C{bind -p}) that submit or rewrite the line
        invisibly: operate-and-get-next, quoted-insert, searches, transpose,
        the Ctrl-X prefix (edit-and-execute-command), yank, character-search,
        undo, set-mark.
        """
        for key in b"\x0f\x11\x16\x12\x13\x14\x18\x19\x1d\x1f\x00":
            _, events = feed(b"ls" + bytes((key,)))
            self.assertIsInstance(events[-1], Refused, key)
            self.assertEqual(forwarded(events), b"ls")


class EditingTests(SynchronousTestCase):
    """What each editing key does, mid-line; the expected values are what bash 5.2 did."""

    # keys typed: (line, cursor)
    table: dict[bytes, tuple[str, int]] = {
        b"abc" + LEFT + b"X": ("abXc", 3),
        b"abc\x02\x02\x7f": ("bc", 0),
        b"abc\x02\x02\x08": ("bc", 0),
        b"abc\x01\x7f": ("abc", 0),
        b"abc" + LEFT * 5: ("abc", 0),
        b"abc\x01" + RIGHT * 5: ("abc", 3),
        b"abc\x01\x06": ("abc", 1),
        b"abc\x1bOD\x1bOD\x1bOC": ("abc", 2),
        b"abc" + HOME: ("abc", 0),
        b"abc\x1b[1~": ("abc", 0),
        b"abc\x1bOH": ("abc", 0),
        b"abc\x1b[7~": ("abc", 0),
        b"abc\x01" + END: ("abc", 3),
        b"abc\x01\x1b[4~": ("abc", 3),
        b"abc\x01\x1bOF": ("abc", 3),
        b"abc\x01\x1b[8~": ("abc", 3),
        b"abc\x01\x05": ("abc", 3),
        b"abc\x01" + DELETE: ("bc", 0),
        b"abc" + DELETE: ("abc", 3),
        b"abc\x01\x04": ("bc", 0),
        b"abc\x02\x02\x15": ("bc", 0),
        b"abc\x02\x02\x0b": ("a", 1),
        b"ls -la /tmp\x17": ("ls -la ", 7),
        b"ls -la  \x17": ("ls ", 3),
        b"a-b.c d\x17": ("a-b.c ", 6),
        b"foo_bar  \x17": ("", 0),
        b"ab  " + LEFT + b"\x17": (" ", 0),
        b"foo_bar baz" + CTRL_LEFT: ("foo_bar baz", 8),
        b"foo_bar baz" + CTRL_LEFT * 2: ("foo_bar baz", 4),
        b"foo_bar baz" + CTRL_LEFT * 3: ("foo_bar baz", 0),
        b"foo_bar baz\x01" + CTRL_RIGHT: ("foo_bar baz", 3),
        b"foo_bar baz\x01" + CTRL_RIGHT * 2: ("foo_bar baz", 7),
        b"foo_bar baz\x01" + CTRL_RIGHT * 3: ("foo_bar baz", 11),
        b"ab cd\x1b[1;3D": ("ab cd", 3),
        b"ab cd\x1b[5D": ("ab cd", 3),
        b"ab cd\x1b\x1b[D": ("ab cd", 3),
        b"ab cd\x1bOd": ("ab cd", 3),
        b"ab cd\x01\x1b[1;3C": ("ab cd", 2),
        b"ab cd\x01\x1b[5C": ("ab cd", 2),
        b"ab cd\x01\x1b\x1b[C": ("ab cd", 2),
        b"ab cd\x01\x1bOc": ("ab cd", 2),
        b"ab cd" + CTRL_LEFT + b"\x17": ("cd", 0),
        b"foo bar\x01\x1b[3;5~": (" bar", 0),
        b"ab\x1b[3;5~": ("ab", 2),
        # Zero-width marks go with the character before them.
        "xe\u0301y".encode() + LEFT * 2: ("xe\u0301y", 1),
        "xe\u0301".encode() + b"\x7f": ("x", 1),
        "xe\u0301y".encode() + LEFT * 2 + DELETE: ("xy", 1),
        "x\u2764\ufe0fy".encode() + LEFT * 2: ("x\u2764\ufe0fy", 1),
        "x\u200by".encode() + LEFT * 2: ("x\u200by", 0),
        "x\u00ady".encode() + LEFT * 2: ("x\u00ady", 1),
        "cafe\u0301s x".encode() + CTRL_LEFT * 2: ("cafe\u0301s x", 0),
        "cafe\u0301s x\x01".encode() + CTRL_RIGHT: ("cafe\u0301s x", 6),
    }

    def test_table(self) -> None:
        for keys, expected in self.table.items():
            buffer, events = feed(keys)
            with self.subTest(keys=keys):
                self.assertEqual((buffer.line, buffer.cursor), expected)
                self.assertEqual(events, [Forward(keys)])

    def test_edit_at_end_is_clean(self) -> None:
        """Typing, rubbing out and killing at the end of the line leave it certain."""
        buffer, _ = feed(b"echo hello\x7f\x17world\x15ls -l" + LEFT + RIGHT + b"a")
        self.assertEqual((buffer.line, buffer.dirty), ("ls -la", frozenset()))

    def test_cursor_motion_alone_is_clean(self) -> None:
        buffer, _ = feed(b"echo hi" + HOME + CTRL_RIGHT + LEFT)
        self.assertEqual(buffer.dirty, frozenset())

    def test_edit_mid_line_is_marked(self) -> None:
        """An edit away from the end marks the line "cursor-edit"."""
        for keys in [b"X", b"\x7f", b"\x04", DELETE, b"\x0b", b"\x15", b"\x17"]:
            buffer, _ = feed(b"echo hi" + LEFT + LEFT + keys)
            self.assertEqual(buffer.dirty, frozenset({"cursor-edit"}), keys)

    def test_no_op_edit_mid_line_is_clean(self) -> None:
        """Backspace at the start changes nothing, so nothing is marked."""
        buffer, _ = feed(b"echo\x01\x7f\x15")
        self.assertEqual(buffer.dirty, frozenset())


class EscapeSequenceTests(SynchronousTestCase):
    def test_history_keys(self) -> None:
        """Up, Down, PgUp, PgDn: forwarded whole; the line is then unknown."""
        for key in [UP, DOWN, b"\x1bOA", b"\x1bOB", b"\x1b[5~", b"\x1b[6~"]:
            buffer, events = feed(b"ls" + key)
            self.assertEqual(events, [Forward(b"ls" + key)])
            self.assertEqual(buffer.dirty, frozenset({"history"}), key)

    def test_csi_split_at_every_byte(self) -> None:
        """A sequence cut anywhere is still one key, forwarded once complete."""
        for key in [LEFT, CTRL_LEFT, b"\x1b[3;5~", b"\x1bOD", b"\x1b\x1b[D"]:
            for cut in range(1, len(key)):
                buffer = LineBuffer()
                self.assertEqual(buffer.feed(b"ab" + key[:cut]), [Forward(b"ab")])
                self.assertEqual(buffer.feed(key[cut:]), [Forward(key)])
                self.assertEqual(state(buffer), state(feed(b"ab" + key)[0]))

    def test_unknown_csi_forwarded(self) -> None:
        """
        Function keys and modified keys are forwarded whole, parameters and
        intermediates included; the model leaves the line alone but marks it,
        since readline may insert the sequence's tail.
        """
        for key in [
            b"\x1b[15~",  # F5
            b"\x1b[1;2A",  # Shift-Up
            b"\x1b[Z",  # Shift-Tab
            b"\x1b[?1;2c",  # private parameter
            b"\x1b[1 q",  # an intermediate byte
            b"\x1b[1;2 !p",  # two intermediates
            b"\x1bOP",  # F1 as SS3
        ]:
            buffer, events = feed(b"ab" + key + b"c")
            self.assertEqual(events, [Forward(b"ab" + key + b"c")], key)
            self.assertEqual((buffer.line, buffer.cursor), ("abc", 3))
            self.assertEqual(buffer.dirty, frozenset({"unknown-key"}))

    def test_insert_key_refused(self) -> None:
        """Insert is quoted-insert in Debian's /etc/inputrc."""
        _, events = feed(b"\x1b[2~\r")
        self.assertIsInstance(events[0], Refused)
        self.assertEqual(events[0].key, b"\x1b[2~")
        self.assertEqual(events[1], Submit("", b"\r"))

    def test_meta_keys_refused_whole(self) -> None:
        """ESC and the next key are one meta key, refused together."""
        for second in [b".", b"d", b"b", b"y", b"r", b"#", b"\x05", b"\x7f", b" ", b"\r", b"_"]:
            buffer, events = feed(b"ls" + ESC + second + b"x")
            self.assertEqual(
                events, [Forward(b"ls"), Refused(ESC + second, events[1].why), Forward(b"x")]
            )
            self.assertEqual(buffer.line, "lsx")

    def test_meta_utf8_refused_whole(self) -> None:
        """Alt with a non-ASCII key: ESC and the whole character are refused."""
        for char in ["é", "€", "\N{GRINNING FACE}"]:
            buffer, events = feed(ESC + char.encode() + b"x")
            self.assertIsInstance(events[0], Refused)
            self.assertEqual(events[0].key, ESC + char.encode())
            self.assertEqual(events[1:], [Forward(b"x")])
            self.assertEqual(buffer.dirty, frozenset())

    def test_meta_utf8_truncated(self) -> None:
        """A broken character after ESC: what came is refused; the next byte is a key."""
        _, events = feed(ESC + b"\xe2\x82x")
        self.assertEqual([type(e) for e in events], [Refused, Forward])
        self.assertEqual(events[0].key, ESC + b"\xe2\x82")

    def test_meta_invalid_byte(self) -> None:
        _, events = feed(ESC + b"\xff")
        self.assertEqual([type(e) for e in events], [Refused])
        self.assertEqual(events[0].key, ESC + b"\xff")

    def test_lone_escape_waits(self) -> None:
        """ESC alone is held: only the next byte says what it is."""
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"ls" + ESC), [Forward(b"ls")])
        events = buffer.feed(b"k")  # vi command mode: "k" is previous-history
        self.assertEqual([type(e) for e in events], [Refused])
        self.assertEqual(events[0].key, ESC + b"k")

    def test_escape_escape(self) -> None:
        """
        ESC ESC then something other than C{[} or C{O}: the pair is refused, and
        the byte read afresh.  Alt with a special key other than Left/Right is
        refused whole.
        """
        buffer, events = feed(ESC + ESC + b"a")
        self.assertEqual(events[0].key, ESC + ESC)
        self.assertEqual(events[1:], [Forward(b"a")])
        _, events = feed(ESC + ESC + b"\x00")
        self.assertEqual([e.key for e in events], [ESC + ESC, b"\x00"])
        _, events = feed(ESC + ESC + ESC + b"[D")
        self.assertEqual(events[0].key, ESC + ESC)
        self.assertEqual(events[1:], [Forward(LEFT)])
        for key in [b"\x1b\x1b[A", b"\x1b\x1bOA", b"\x1b\x1b[200~"]:
            _, events = feed(key)
            self.assertEqual([type(e) for e in events], [Refused], key)
            self.assertEqual(events[0].key, key)

    def test_malformed_csi(self) -> None:
        """
        A control or non-ASCII byte breaks a sequence: the part before it is
        refused, and the byte is a key of its own (Enter still submits).
        """
        for broken, rest in [
            (b"\x1b[", b"\r"),
            (b"\x1b[1;", b"\r"),
            (b"\x1bO", b"\r"),
            (b"\x1b\x1b[", b"\r"),
            (b"\x1b[1", b"\x03"),
            (b"\x1b[", b"\x1b"),
        ]:
            buffer, events = feed(broken + rest)
            self.assertEqual(events[0], Refused(broken, "malformed escape sequence"), broken)
            if rest == b"\r":
                self.assertEqual(events[1:], [Submit("", b"\r")])

    def test_parameter_after_intermediate(self) -> None:
        """Out-of-order bytes are consumed up to the final byte, and refused."""
        _, events = feed(b"\x1b[1 2Ax")
        self.assertEqual(
            events, [Refused(b"\x1b[1 2A", "malformed escape sequence"), Forward(b"x")]
        )

    def test_too_long(self) -> None:
        """
        A sequence longer than L{MAX_SEQUENCE} is refused; the rest is read as
        keys, so memory stays bounded.
        """
        key = b"\x1b[" + b"1" * 100 + b"~"
        buffer, events = feed(key)
        self.assertEqual(events[0], Refused(key[:MAX_SEQUENCE], "escape sequence too long"))
        self.assertEqual(buffer.line, "1" * (100 - MAX_SEQUENCE + 2) + "~")
        self.assertEqual(account(events, key), len(key))


class Utf8Tests(SynchronousTestCase):
    def test_emoji_split_at_every_point(self) -> None:
        """A four-byte character cut anywhere is one character, forwarded whole."""
        data = b"a" + EMOJI + b"b"
        for cut in range(len(data) + 1):
            for second in range(cut, len(data) + 1):
                buffer, events = feed_split(data, [cut, second])
                self.assertEqual(merged(events), [Forward(data)])
                self.assertEqual((buffer.line, buffer.cursor), ("a\N{GRINNING FACE}b", 3))
                self.assertEqual(buffer.dirty, frozenset())

    def test_partial_character_held(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(EMOJI[:3]), [])
        self.assertTrue(buffer.is_empty)
        self.assertEqual(buffer.feed(EMOJI[3:]), [Forward(EMOJI)])
        self.assertFalse(buffer.is_empty)

    def test_two_and_three_byte(self) -> None:
        buffer, _ = feed("é€x".encode() + LEFT + "ü".encode())
        self.assertEqual((buffer.line, buffer.cursor), ("é€üx", 3))

    # bytes: line (every bad byte run is one U+FFFD, and the next byte is read afresh)
    invalid: dict[bytes, str] = {
        b"a\x80b": "a\ufffdb",  # stray continuation
        b"\xbf\xbf": "\ufffd\ufffd",
        b"\xe2\x82a": "\ufffda",  # truncated by ASCII
        b"\xf0\x9f\x98a": "\ufffda",
        b"\xc3\xc3\xa9": "\ufffd\u00e9",  # truncated by a new lead byte
        b"\xc0\xaf": "\ufffd\ufffd",  # overlong "/"
        b"\xc1\xbf": "\ufffd\ufffd",
        b"\xe0\x80\xaf": "\ufffd\ufffd\ufffd",  # overlong, three bytes
        b"\xf0\x80\x80\xaf": "\ufffd\ufffd\ufffd\ufffd",  # overlong, four bytes
        b"\xed\xa0\x80": "\ufffd\ufffd\ufffd",  # surrogate U+D800
        b"\xf4\x90\x80\x80": "\ufffd\ufffd\ufffd\ufffd",  # above U+10FFFF
        b"\xf5\x80": "\ufffd\ufffd",
        b"\xff": "\ufffd",
        b"\xf4\x8f\xbf\xbf": "\U0010ffff",  # the last code point is fine
        b"\xed\x9f\xbf": "\ud7ff",  # just below the surrogates
    }

    def test_invalid(self) -> None:
        """Bad bytes become U+FFFD, are still forwarded, and mark the line."""
        for data, line in self.invalid.items():
            buffer, events = feed(data)
            with self.subTest(data=data):
                self.assertEqual(buffer.line, line)
                self.assertEqual(merged(events), [Forward(data)])
                self.assertEqual(
                    line.encode("utf-8", "replace"),
                    data.decode("utf-8", "replace").encode("utf-8", "replace"),
                )
                self.assertEqual(
                    buffer.dirty,
                    frozenset() if "\ufffd" not in line else frozenset({"invalid-utf8"}),
                )

    def test_resync_every_split(self) -> None:
        """Decoding resyncs on the next byte however the packets fall."""
        data = b"\xe2\x82a\x80" + EMOJI + b"\xed\xa0\x80z"
        whole, _ = feed(data)
        self.assertEqual(whole.line, data.decode("utf-8", "replace"))
        for cut in range(len(data) + 1):
            buffer, _ = feed_split(data, [cut])
            self.assertEqual(state(buffer), state(whole))

    def test_truncated_by_control(self) -> None:
        """Enter in the middle of a character submits; the partial byte is forwarded first."""
        _, events = feed(b"ls\xe2\r")
        self.assertEqual(events, [Forward(b"ls\xe2"), Submit("ls\ufffd", b"\r")])

    def test_truncated_by_escape(self) -> None:
        buffer, events = feed(b"\xc3" + LEFT + b"x")
        self.assertEqual(merged(events), [Forward(b"\xc3" + LEFT + b"x")])
        self.assertEqual((buffer.line, buffer.cursor), ("x\ufffd", 1))


class SubmitTests(SynchronousTestCase):
    def test_enter_keys(self) -> None:
        for key in [b"\r", b"\n"]:
            buffer, events = feed(b"ls -l" + key)
            self.assertEqual(events, [Forward(b"ls -l"), Submit("ls -l", key)])
            self.assertEqual(state(buffer), ("", 0, frozenset(), True))

    def test_submit_starts_a_new_line(self) -> None:
        """Keys after a submit in the same packet belong to the next line."""
        buffer, events = feed(b"a\rb\rc")
        self.assertEqual(
            events,
            [Forward(b"a"), Submit("a", b"\r"), Forward(b"b"), Submit("b", b"\r"), Forward(b"c")],
        )
        self.assertEqual(buffer.line, "c")

    def test_crlf_one_submit(self) -> None:
        """The LF right after a submitting CR is swallowed: no event at all."""
        buffer, events = feed(b"ls\r\npwd\r\n")
        self.assertEqual(
            events, [Forward(b"ls"), Submit("ls", b"\r"), Forward(b"pwd"), Submit("pwd", b"\r")]
        )
        self.assertTrue(buffer.is_empty)

    def test_crlf_across_feeds_and_reset(self) -> None:
        """The swallowing survives a packet boundary and the caller's reset()."""
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"ls\r"), [Forward(b"ls"), Submit("ls", b"\r")])
        buffer.reset()
        self.assertEqual(buffer.feed(b"\n"), [])
        self.assertEqual(buffer.feed(b"\n"), [Submit("", b"\n")])

    def test_only_the_very_next_byte(self) -> None:
        _, events = feed(b"\rx\n")
        self.assertEqual(events, [Submit("", b"\r"), Forward(b"x"), Submit("x", b"\n")])
        _, events = feed(b"\r\r\n")
        self.assertEqual(events, [Submit("", b"\r"), Submit("", b"\r")])
        _, events = feed(b"\n\n")
        self.assertEqual(events, [Submit("", b"\n"), Submit("", b"\n")])

    def test_lf_after_refused_cr(self) -> None:
        """ESC CR is a refused meta key, so the LF after it is Enter."""
        _, events = feed(b"ls\x1b\r\n")
        self.assertEqual(events[2], Submit("ls", b"\n"))

    def test_ctrl_d_on_empty_line(self) -> None:
        """End of input: the shell logs out; the caller decides."""
        buffer, events = feed(b"\x04")
        self.assertEqual(events, [Submit("", b"\x04")])
        buffer, events = feed(b"ab\x7f\x7f\x04")
        self.assertEqual(events, [Forward(b"ab\x7f\x7f"), Submit("", b"\x04")])

    def test_ctrl_d_after_history(self) -> None:
        """After Up the line is unknown, and may be empty: Ctrl-D is held."""
        _, events = feed(b"ls" + UP + b"\x04")
        self.assertEqual(events, [Forward(b"ls" + UP), Submit("ls", b"\x04")])

    def test_ctrl_c(self) -> None:
        buffer, events = feed(b"rm -rf /" + HOME + b"\x03x")
        self.assertEqual(events, [Forward(b"rm -rf /" + HOME), Interrupt(b"\x03"), Forward(b"x")])
        self.assertEqual(state(buffer), ("x", 1, frozenset(), False))

    def test_is_empty(self) -> None:
        """is_empty turns false with the first forwarded key, not with a refused one."""
        buffer = LineBuffer()
        buffer.feed(b"\x12\x1b.")
        self.assertTrue(buffer.is_empty)
        buffer.feed(b"\x07")
        self.assertFalse(buffer.is_empty)
        buffer.reset()
        self.assertTrue(buffer.is_empty)

    def test_reset(self) -> None:
        """reset() empties the line, its marks and its cursor."""
        buffer, _ = feed(b"ls\t" + UP + b"\x80" + LEFT + b"x" + PASTE_BEGIN + b"\t" + PASTE_END)
        self.assertEqual(
            buffer.dirty, frozenset({"tab", "history", "invalid-utf8", "cursor-edit", "paste"})
        )
        buffer.reset()
        self.assertEqual(state(buffer), ("", 0, frozenset(), True))

    def test_reset_keeps_a_split_key(self) -> None:
        """A packet boundary is not a key boundary: reset() keeps a half-read key."""
        buffer = LineBuffer()
        buffer.feed(b"\x1b[")
        buffer.reset()
        self.assertEqual(buffer.feed(b"D"), [Forward(LEFT)])

    def test_tab(self) -> None:
        buffer, events = feed(b"ec\t")
        self.assertEqual(events, [Forward(b"ec\t")])
        self.assertEqual((buffer.line, buffer.dirty), ("ec", frozenset({"tab"})))


def paste(content: bytes) -> bytes:
    return PASTE_BEGIN + content + PASTE_END


NOT_CONTROL = "a paste holding the control character"

#: (content, line after pasting into an empty line, dirty) for pastes forwarded whole.
#: CR and LF as bash 5.2.15 showed them: each CR becomes LF, so CR LF is two LFs.
ACCEPTED_PASTES: list[tuple[bytes, str, frozenset[str]]] = [
    (b"echo hi", "echo hi", frozenset()),
    (b"", "", frozenset()),
    (b"echo one\necho two\n", "echo one\necho two\n", frozenset()),
    (b"echo one\recho two\r", "echo one\necho two\n", frozenset()),
    (b"a\r\nb", "a\n\nb", frozenset()),
    (b"\n\n", "\n\n", frozenset()),
    (b"ec\tho", "ec\tho", frozenset({"paste"})),
    ("é 日本 \N{GRINNING FACE}".encode(), "é 日本 \N{GRINNING FACE}", frozenset()),
    (b"cat <<EOF\nx\nEOF", "cat <<EOF\nx\nEOF", frozenset()),
    (b"[200~ ~ [201~", "[200~ ~ [201~", frozenset()),
]

#: (content, why) for pastes refused whole.
REFUSED_PASTES: list[tuple[bytes, str]] = [
    (b"echo a\x1b[31m\nrm x", NOT_CONTROL),
    (b"a\x1b", NOT_CONTROL),
    (b"a" + PASTE_BEGIN + b"b", NOT_CONTROL),
    (b"echo a\x03\nrm x", NOT_CONTROL),
    (b"sleep 9\x1a", NOT_CONTROL),
    (b"x\x1c", NOT_CONTROL),
    (b"\x00", NOT_CONTROL),
    (b"ls\x0frm", NOT_CONTROL),
    (b"ls\x16\r", NOT_CONTROL),
    (b"ls\x7f", NOT_CONTROL),
    (b"ls\x08", NOT_CONTROL),
    (b"ls \xc2\x9b31m", NOT_CONTROL),  # U+009B, CSI to an 8-bit terminal
    (b"ls \xff", "a paste that is not valid UTF-8"),
    (b"ls \xe2\x82", "a paste that is not valid UTF-8"),
    (b"\xed\xa0\x80", "a paste that is not valid UTF-8"),
    (b"\xc0\xaf", "a paste that is not valid UTF-8"),
]


def every_split(data: bytes) -> list[list[int]]:
    """Every single cut, two cuts around each byte, and one byte at a time."""
    cuts = [[i] for i in range(len(data) + 1)]
    cuts += [[i, i + 1] for i in range(len(data))]
    return cuts + [list(range(len(data)))]


class PasteTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        for content, line, dirty in ACCEPTED_PASTES:
            data = paste(content)
            buffer, events = feed(data)
            self.assertEqual(events, [Forward(data)], content)
            self.assertEqual(state(buffer), (line, len(line), dirty, False), content)

    def test_refused(self) -> None:
        for content, why in REFUSED_PASTES:
            data = paste(content)
            buffer, events = feed(data + b"ls")
            self.assertEqual(events[1:], [Forward(b"ls")], content)
            [refused] = events[:1]
            self.assertIsInstance(refused, Refused)
            self.assertEqual(refused.key, data)
            self.assertTrue(refused.why.startswith(why), (content, refused.why))
            self.assertEqual(state(buffer), ("ls", 2, frozenset(), False))

    def test_refused_paste_names_the_control(self) -> None:
        _, [event, *_] = feed(paste(b"a\x03"))
        self.assertEqual(event.why, "a paste holding the control character '\\x03'")

    def test_every_split_gives_the_same_events(self) -> None:
        pastes = [paste(content) for content, _, _ in ACCEPTED_PASTES]
        pastes += [paste(content) for content, _ in REFUSED_PASTES]
        for data in pastes:
            data = b"x" + data + b"y\r"
            whole, expected = feed(data)
            for cuts in every_split(data):
                split, events = feed_split(data, cuts)
                self.assertEqual(merged(events), merged(expected), (data, cuts))
                self.assertEqual(state(split), state(whole), (data, cuts))

    def test_nothing_forwarded_before_the_end_marker(self) -> None:
        data = paste(b"echo one\necho two\n")
        buffer = LineBuffer()
        for i in range(len(data) - 1):
            self.assertEqual(buffer.feed(data[i : i + 1]), [])
            self.assertEqual(buffer.in_paste, i >= len(PASTE_BEGIN) - 1)
            self.assertTrue(buffer.is_empty)
        self.assertEqual(buffer.feed(data[-1:]), [Forward(data)])
        self.assertFalse(buffer.in_paste)

    def test_paste_then_enter_is_one_submit(self) -> None:
        data = paste(b"echo one\r\necho two\r")
        _, events = feed(data + b"\r")
        self.assertEqual(events, [Forward(data), Submit("echo one\n\necho two\n", b"\r")])
        self.assertEqual(events[1].dirty, frozenset())

    def test_paste_inserted_at_the_cursor(self) -> None:
        buffer, events = feed(b"ab" + LEFT + paste(b"X\nY"))
        self.assertEqual(events, [Forward(b"ab" + LEFT + paste(b"X\nY"))])
        self.assertEqual(state(buffer), ("aX\nYb", 4, frozenset({"cursor-edit"}), False))
        buffer.feed(b"\x7f\x7f")  # Backspace deletes the pasted newline too
        self.assertEqual((buffer.line, buffer.cursor), ("aXb", 2))
        buffer, _ = feed(b"ls" + paste(b" -l\n"))
        self.assertEqual(state(buffer), ("ls -l\n", 6, frozenset(), False))

    def test_forged_end_marker(self) -> None:
        """Bytes after the end marker are keys again: a following Enter is held."""
        data = paste(b"x") + b"rm -rf /\r" + PASTE_END
        _, events = feed(data)
        self.assertEqual(
            events,
            [
                Forward(paste(b"x") + b"rm -rf /"),
                Submit("xrm -rf /", b"\r"),
                Refused(PASTE_END, "a paste end marker outside a paste"),
            ],
        )

    def test_stray_end_marker_refused(self) -> None:
        buffer, events = feed(b"ls" + PASTE_END)
        self.assertEqual(events, [Forward(b"ls"), Refused(PASTE_END, events[1].why)])
        self.assertEqual(state(buffer), ("ls", 2, frozenset(), False))

    def test_cr_after_a_paste_is_enter_and_lf_after_it_is_swallowed(self) -> None:
        _, events = feed(paste(b"a\r") + b"\r\n")
        self.assertEqual(events, [Forward(paste(b"a\r")), Submit("a\n", b"\r")])

    def test_paste_right_after_enter_keeps_its_newline(self) -> None:
        """The LF swallowed after a CR is the very next byte only: not the paste's."""
        _, events = feed(b"ls\r" + paste(b"\n"))
        self.assertEqual(events, [Forward(b"ls"), Submit("ls", b"\r"), Forward(paste(b"\n"))])

    def test_refused_unless_the_target_reads_bracketed_pastes(self) -> None:
        """Asked at the end marker: the mode may change while a paste arrives."""
        mode = [False]
        buffer = LineBuffer(pastes_bracketed=lambda: mode[0])
        why = "a paste while the target does not read bracketed pastes"
        self.assertEqual(buffer.feed(paste(b"ls\r")), [Refused(paste(b"ls\r"), why)])
        self.assertEqual(buffer.feed(PASTE_BEGIN + b"ls\r"), [])
        mode[0] = True
        self.assertEqual(buffer.feed(PASTE_END), [Forward(paste(b"ls\r"))])
        buffer.feed(PASTE_BEGIN + b"x")
        mode[0] = False
        self.assertEqual(buffer.feed(PASTE_END), [Refused(paste(b"x"), why)])
        self.assertEqual(buffer.line, "ls\n")

    def test_reset_keeps_an_open_paste(self) -> None:
        """A packet boundary is not a key boundary: reset() keeps a paste half read."""
        buffer = LineBuffer()
        buffer.feed(b"ls" + PASTE_BEGIN + b"a\n")
        buffer.reset()
        self.assertEqual(buffer.feed(b"b" + PASTE_END), [Forward(paste(b"a\nb"))])
        self.assertEqual(buffer.line, "a\nb")


class PasteLimitTests(SynchronousTestCase):
    too_long = f"a paste longer than {MAX_PASTE // 1024} KiB"

    def test_the_cap_itself_is_accepted(self) -> None:
        data = paste(b"x" * MAX_PASTE)
        for cuts in ([], [len(data) - 3], [MAX_PASTE], [MAX_PASTE + 6 + 2], [100, MAX_PASTE + 9]):
            buffer, events = feed_split(data, cuts)
            self.assertEqual(merged(events), [Forward(data)], cuts)
            self.assertEqual(len(buffer.line), MAX_PASTE)

    def test_over_the_cap_refused_and_swallowed(self) -> None:
        content = b"y\r" * (MAX_PASTE // 2) + b"z\rrm -rf ~\r"
        data = paste(content) + b"ls"
        expected = [Refused(PASTE_BEGIN + content[:MAX_PASTE], self.too_long), Forward(b"ls")]
        cut_points = [[], [7], [MAX_PASTE + 5], [MAX_PASTE + 6], [MAX_PASTE + 12]]
        cut_points += [[len(data) - k] for k in range(2, 10)]  # the end marker split
        cut_points += [list(range(MAX_PASTE, len(data)))]
        for cuts in cut_points:
            buffer, events = feed_split(data, cuts)
            self.assertEqual(merged(events), expected, cuts)
            self.assertEqual(state(buffer), ("ls", 2, frozenset(), False))

    def test_swallowing_is_bounded_in_memory(self) -> None:
        buffer = LineBuffer()
        [refused] = buffer.feed(PASTE_BEGIN + b"a" * (MAX_PASTE + 100))
        self.assertEqual(len(refused.key), len(PASTE_BEGIN) + MAX_PASTE)
        for _ in range(40):
            self.assertEqual(buffer.feed(b"b\r" * 4096), [])
            self.assertLessEqual(len(buffer._pending), len(PASTE_END))
        self.assertEqual(buffer.feed(PASTE_END[:3]), [])
        self.assertEqual(buffer.feed(PASTE_END[3:] + b"\r"), [Submit("", b"\r")])

    def test_abandon_paste(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.abandon_paste(), [])
        buffer.feed(b"ls" + PASTE_BEGIN + b"rm x\n")
        self.assertTrue(buffer.in_paste)
        why = "a paste whose end marker never came"
        self.assertEqual(buffer.abandon_paste(), [Refused(PASTE_BEGIN + b"rm x\n", why)])
        self.assertFalse(buffer.in_paste)
        self.assertEqual(buffer.feed(b" -l"), [Forward(b" -l")])
        self.assertEqual(buffer.line, "ls -l")

    def test_abandon_while_swallowing(self) -> None:
        buffer = LineBuffer()
        buffer.feed(PASTE_BEGIN + b"a" * (MAX_PASTE + 10))
        self.assertEqual(buffer.abandon_paste(), [])
        self.assertEqual(buffer.feed(b"x"), [Forward(b"x")])


# -- properties ------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\x04", b"\x03", b"\t", b"\x7f", b"\x17", b"\x15", b"\x0b", b"\x01"]
    + [b"\x05", b"\x0f", b"\x12", b"\x1b", b"\x1b[", b"\x1bO", LEFT, RIGHT, UP, CTRL_LEFT, DELETE]
    + [b"\x1b[1;2A", b"\x1b.", b"\x1b\x1b[D", PASTE_BEGIN, PASTE_END, EMOJI, "é".encode()]
    + [b"\x80", b"\xe2\x82", b"\xed\xa0\x80", b"\x1b[" + b"9" * 40 + b"~"]
)
INPUT = st.lists(
    st.one_of(TOKENS, st.binary(max_size=6), st.text(max_size=4).map(str.encode)), max_size=30
).map(b"".join)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(data=INPUT, cuts=st.lists(st.integers(0, 400), max_size=8))
    def test_split_invariance(self, data: bytes, cuts: list[int]) -> None:
        """Any packet split gives the same events (Forwards merged) and state."""
        whole, expected = feed(data)
        split, events = feed_split(data, [c for c in cuts if c <= len(data)])
        self.assertEqual(merged(events), merged(expected))
        self.assertEqual(state(split), state(whole))

    @settings(max_examples=200, deadline=None)
    @given(data=INPUT)
    def test_byte_at_a_time(self, data: bytes) -> None:
        whole, expected = feed(data)
        split, events = feed_split(data, list(range(len(data))))
        self.assertEqual(merged(events), merged(expected))
        self.assertEqual(state(split), state(whole))

    @settings(max_examples=200, deadline=None)
    @given(data=INPUT)
    def test_bytes_conserved(self, data: bytes) -> None:
        """
        Forwarded + held + interrupt + refused bytes are the input, in order,
        but for swallowed LFs and an unfinished key or paste; a paste end marker
        ends any paste, then Ctrl-G ends any key.
        """
        closed = data + PASTE_END + b"\x07"
        _, events = feed(closed)
        self.assertEqual(account(events, closed), len(closed))
        buffer, events = feed(data)
        if not buffer.in_paste:
            self.assertLessEqual(len(data) - account(events, data), MAX_SEQUENCE)

    @settings(max_examples=200, deadline=None)
    @given(data=INPUT)
    def test_submitting_keys_never_forwarded(self, data: bytes) -> None:
        """
        No CR or LF (nor Ctrl-O, Ctrl-X, ...) is ever in a Forward, but as text
        inside a whole bracketed paste: the gate holds them all.
        """
        _, events = feed(data)
        for event in events:
            if isinstance(event, Forward):
                keys = event.data
                for content in re.findall(
                    re.escape(PASTE_BEGIN) + b"(.*?)" + re.escape(PASTE_END), keys, re.S
                ):
                    self.assertFalse(set(content) & (set(range(0x20)) - {0x09, 0x0A, 0x0D}))
                    self.assertNotIn(0x7F, content)
                outside = re.sub(
                    re.escape(PASTE_BEGIN) + b".*?" + re.escape(PASTE_END), b"", keys, flags=re.S
                )
                self.assertFalse(set(outside) & {0x0D, 0x0A, 0x0F, 0x18, 0x16, 0x11})

    @settings(max_examples=200, deadline=None)
    @given(data=INPUT)
    def test_cursor_in_line(self, data: bytes) -> None:
        buffer, _ = feed(data)
        self.assertTrue(0 <= buffer.cursor <= len(buffer.line))


class Reference:
    """A small line editor for printable ASCII, written from readline's manual."""

    def __init__(self) -> None:
        self.line, self.cursor = "", 0

    def key(self, key: bytes) -> None:
        line, at = self.line, self.cursor
        if len(key) == 1 and 0x20 <= key[0] < 0x7F:
            self.line, self.cursor = line[:at] + key.decode() + line[at:], at + 1
        elif key in (b"\x08", b"\x7f") and at:
            self.line, self.cursor = line[: at - 1] + line[at:], at - 1
        elif key == b"\x15":
            self.line, self.cursor = line[at:], 0
        elif key == b"\x0b":
            self.line = line[:at]
        elif key == b"\x17":
            start = len(line[:at].rstrip(" "))
            start = len(line[:start]) - len(line[:start].split(" ")[-1])
            self.line, self.cursor = line[:start] + line[at:], start
        elif key == b"\x01":
            self.cursor = 0
        elif key == b"\x05":
            self.cursor = len(line)
        elif key in (b"\x02", LEFT):
            self.cursor = max(0, at - 1)
        elif key in (b"\x06", RIGHT):
            self.cursor = min(len(line), at + 1)


EDIT_KEYS = st.one_of(
    st.sampled_from([b"\x08", b"\x7f", b"\x15", b"\x0b", b"\x17", b"\x01", b"\x05", b"\x02"]),
    st.sampled_from([b"\x06", LEFT, RIGHT, b" ", b" "]),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E).map(str.encode),
)


class ReferenceTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(keys=st.lists(EDIT_KEYS, max_size=40), cuts=st.lists(st.integers(0, 200), max_size=4))
    def test_matches_reference(self, keys: list[bytes], cuts: list[int]) -> None:
        """line and cursor follow the reference editor, key by key and over any split."""
        reference, buffer = Reference(), LineBuffer()
        for key in keys:
            reference.key(key)
            self.assertEqual(buffer.feed(key), [Forward(key)])
            self.assertEqual((buffer.line, buffer.cursor), (reference.line, reference.cursor))
        data = b"".join(keys)
        split, events = feed_split(data, [c for c in cuts if c <= len(data)])
        self.assertEqual((split.line, split.cursor), (reference.line, reference.cursor))
        self.assertEqual(forwarded(events), data)
        self.assertFalse({"history", "tab", "paste", "invalid-utf8"} & split.dirty)

    def test_reference_unix_word_rubout(self) -> None:
        """The reference's Ctrl-W agrees with bash on the cases checked there."""
        for keys, expected in [(b"ls -la /tmp", "ls -la "), (b"ls -la  ", "ls "), (b"a ", "")]:
            reference = Reference()
            for byte in keys + b"\x17":
                reference.key(bytes((byte,)))
            self.assertEqual(reference.line, expected)
