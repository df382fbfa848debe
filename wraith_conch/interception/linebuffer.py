"""
A sans-IO model of the keys an operator types at an interactive bash prompt.

L{LineBuffer} sees the bytes the operator's terminal sends (readline in emacs
mode, bash's default) and rebuilds the line being edited, so that the gate can
hold the key that would submit it.  It does no I/O: bytes go in through
L{LineBuffer.feed}, events come out.

The model is a cross-check, not the truth: the target's screen shows the line
readline really holds.  Whenever the model may differ from it, L{LineBuffer.dirty}
says why.  What matters for safety is that every key that could submit the line
is either held (L{Submit}) or refused (L{Refused}), never forwarded.

Keys, as bash binds them by default (C{bind -p}, plus Debian's /etc/inputrc):

Forwarded (L{Forward}), and followed by the model:
    printable characters (UTF-8, assembled across packets) insert at the cursor;
    BS (Ctrl-H) and DEL delete left of the cursor; Ctrl-W unix-word-rubout;
    Ctrl-U kills start..cursor; Ctrl-K kills cursor..end; Ctrl-A / Home and
    Ctrl-E / End; Ctrl-B / Left and Ctrl-F / Right; Ctrl-Left / Ctrl-Right (and
    the Alt and rxvt variants) move by word; Delete and Ctrl-D on a non-empty
    line delete at the cursor; Ctrl-Delete kills the next word.
Forwarded, with the line then unknown (L{LineBuffer.dirty}):
    Tab ("tab"); Up, Down, Ctrl-P, Ctrl-N, PgUp, PgDn ("history").
A bracketed paste (C{ESC[200~} ... C{ESC[201~}): one unit, see below.
Forwarded, no effect on the line:
    Ctrl-G (abort), Ctrl-L (clear-screen), Ctrl-Z (the shell ignores SIGTSTP at
    its prompt).
Forwarded, the line unchanged in the model but marked "unknown-key":
    escape sequences this module does not know (function keys, modified keys).
    Readline drops an unbound sequence up to the byte where it leaves its key
    map and inserts the rest (bash 5.2: F5, C{ESC[15~}, inserts C{~}; Shift-Up,
    C{ESC[1;2A}, inserts C{A}); that depends on the target's inputrc, so the
    model does not guess.
Held (L{Submit}), for the caller to release on approval:
    CR and LF (Ctrl-M, Ctrl-J); Ctrl-D on an empty line (end of input: the shell
    logs out) or on a line the model no longer knows after a history key.
Interrupt (L{Interrupt}), forwarded by the caller:
    Ctrl-C, which makes readline drop the line.
Refused (L{Refused}: not forwarded, the caller rings the bell), because they
submit or rewrite the line in ways the operator's screen need not show:
    Ctrl-@ Ctrl-O Ctrl-Q Ctrl-R Ctrl-S Ctrl-T Ctrl-V Ctrl-X Ctrl-Y Ctrl-\\ Ctrl-]
    Ctrl-^ Ctrl-_, any other C0 control, Insert (C{ESC[2~}, quoted-insert in
    Debian's inputrc), every meta key (ESC followed by anything but C{[} or
    C{O}: the whole pair, or ESC and a whole UTF-8 character), Alt + a special
    key (C{ESC ESC [ ...}) other than Alt-Left/Right, malformed or overlong
    escape sequences, and a paste end marker outside a paste (bash 5.2 rings
    the bell and inserts C{~}).

Bracketed paste.  Readline (bash 5.2 turns bracketed paste on) reads
everything between C{ESC[200~} and C{ESC[201~} as text: it inserts it at the
cursor, turns each CR into LF (so CR LF becomes two LFs; checked on bash
5.2.15), and submits nothing before the end marker -- the line, now holding
newlines, is submitted by the next Enter, and bash then runs every line of
it.  So a paste is collected, across L{LineBuffer.feed} calls, up to its end
marker, and nothing of it is forwarded before then.  At the end marker:
    - content that is valid UTF-8 with no control character but TAB, CR and
      LF (no ESC, which could fool the screen model or end the paste early;
      no Ctrl-C, Ctrl-\\ or Ctrl-Z, which the tty driver would turn into
      signals; no DEL, no C1 control) gives one L{Forward} of the whole
      paste, markers included, and is inserted into the model line with CR
      turned into LF.  A TAB is inserted as TAB but shown by readline as
      spaces up to the next tab stop, so it marks the line "paste"; nothing
      else in a paste makes the model unsure.
    - any other content gives one L{Refused} of the whole paste, markers
      included: nothing of it reaches the target.  So does every paste while
      the target's terminal is not in bracketed paste mode (the caller says,
      see L{LineBuffer}): a program reading lines from the tty (C{sh}, C{cat},
      C{read}) would run each pasted line at its CR or LF, unreviewed.
    - content over L{MAX_PASTE} bytes gives one L{Refused} of the begin
      marker and the first L{MAX_PASTE} bytes of content, as soon as that
      much has come, and the rest is swallowed (no event) up to and including
      the end marker.  Memory stays bounded however long the paste is.  A
      paste whose end marker never comes keeps swallowing every later byte
      (as readline would wait for it too): the caller may give up on it with
      L{LineBuffer.abandon_paste} after a quiet while.

CR then LF: a terminal that sends CRLF for Enter would submit twice.  After a
L{Submit} whose key is C{b"\\r"}, an LF that is the very next byte (in the same
or the next L{LineBuffer.feed}) is swallowed: it produces no event at all.  The
caller sends only the held CR; bash treats CR and LF alike, so nothing is lost.

So, over any input: the concatenation of every L{Forward}'s data, L{Submit}'s
key and L{Interrupt}'s key is the input minus the L{Refused} keys, minus the
swallowed LFs, minus the swallowed rest of an over-long paste (up to and
including its end marker), minus the bytes of an unfinished key or paste
still waiting for its end.  A CR or LF is in a L{Forward} only inside a
complete bracketed paste, where readline inserts it as text.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable
from typing import Final

import attrs

__all__ = [
    "CURSOR_EDIT",
    "HISTORY",
    "INVALID_UTF8",
    "KEYS",
    "MAX_PASTE",
    "MAX_SEQUENCE",
    "PASTE",
    "PASTE_BEGIN",
    "PASTE_END",
    "TAB",
    "UNKNOWN_KEY",
    "Event",
    "Forward",
    "Interrupt",
    "LineBuffer",
    "Refused",
    "Submit",
]

# Reasons in LineBuffer.dirty.
HISTORY: Final = "history"
TAB: Final = "tab"
CURSOR_EDIT: Final = "cursor-edit"
PASTE: Final = "paste"
INVALID_UTF8: Final = "invalid-utf8"
UNKNOWN_KEY: Final = "unknown-key"


@attrs.frozen
class Forward:
    """Bytes the caller may send to the target now."""

    data: bytes


@attrs.frozen
class Submit:
    """
    A key that would submit C{line}.  The caller holds C{key} back and sends
    it only once the line is approved.  The buffer has already started a new
    line when this event is returned.
    """

    line: str
    key: bytes
    #: Why C{line} may differ from what the shell holds (see L{LineBuffer.dirty}).
    dirty: frozenset[str] = attrs.field(default=frozenset(), eq=False)


@attrs.frozen
class Refused:
    """A key that must not reach the target; C{why} says what it would do."""

    key: bytes
    why: str


@attrs.frozen
class Interrupt:
    """Ctrl-C: the caller forwards C{key}; readline drops the line, and so does the buffer."""

    key: bytes


Event = Forward | Submit | Refused | Interrupt


class _Act(enum.Enum):
    """What a key does to the model."""

    SUBMIT = "submit"
    INTERRUPT = "interrupt"
    EOF_OR_DELETE = "eof-or-delete"
    BACKSPACE = "backspace"
    DELETE = "delete"
    KILL_WORD_LEFT = "kill-word-left"
    KILL_WORD_RIGHT = "kill-word-right"
    KILL_TO_START = "kill-to-start"
    KILL_TO_END = "kill-to-end"
    HOME = "home"
    END = "end"
    LEFT = "left"
    RIGHT = "right"
    WORD_LEFT = "word-left"
    WORD_RIGHT = "word-right"
    HISTORY = "history"
    TAB = "tab"
    PASTE = "paste"
    HARMLESS = "harmless"
    UNKNOWN = "unknown"
    REFUSE = "refuse"


@attrs.frozen
class _Key:
    act: _Act
    why: str


def _refuse(why: str) -> _Key:
    return _Key(_Act.REFUSE, why)


_QUOTED_INSERT = "quoted-insert: the next key enters the line literally, even Enter"

#: The one table of keys: C0 controls, DEL, and the escape sequences the model
#: knows.  A C0 control missing here is refused; an escape sequence missing here
#: is forwarded unchanged (or refused after an Alt prefix, ESC ESC).
KEYS: Final[dict[bytes, _Key]] = {
    b"\x00": _refuse("Ctrl-@ (set-mark): later keys act on the marked region"),
    b"\x01": _Key(_Act.HOME, "Ctrl-A beginning-of-line"),
    b"\x02": _Key(_Act.LEFT, "Ctrl-B backward-char"),
    b"\x03": _Key(_Act.INTERRUPT, "Ctrl-C drops the line"),
    b"\x04": _Key(_Act.EOF_OR_DELETE, "Ctrl-D: end of input on an empty line, else delete-char"),
    b"\x05": _Key(_Act.END, "Ctrl-E end-of-line"),
    b"\x06": _Key(_Act.RIGHT, "Ctrl-F forward-char"),
    b"\x07": _Key(_Act.HARMLESS, "Ctrl-G abort: rings the bell"),
    b"\x08": _Key(_Act.BACKSPACE, "Ctrl-H backward-delete-char"),
    b"\x09": _Key(_Act.TAB, "Tab complete: inserts what the shell finds"),
    b"\x0a": _Key(_Act.SUBMIT, "Ctrl-J accept-line"),
    b"\x0b": _Key(_Act.KILL_TO_END, "Ctrl-K kill-line"),
    b"\x0c": _Key(_Act.HARMLESS, "Ctrl-L clear-screen"),
    b"\x0d": _Key(_Act.SUBMIT, "Enter accept-line"),
    b"\x0e": _Key(_Act.HISTORY, "Ctrl-N next-history"),
    b"\x0f": _refuse("Ctrl-O (operate-and-get-next) submits the line"),
    b"\x10": _Key(_Act.HISTORY, "Ctrl-P previous-history"),
    b"\x11": _refuse("Ctrl-Q " + _QUOTED_INSERT),
    b"\x12": _refuse("Ctrl-R (reverse-search-history) replaces the line"),
    b"\x13": _refuse("Ctrl-S (forward-search-history) replaces the line, or XOFF stops output"),
    b"\x14": _refuse("Ctrl-T (transpose-chars) rewrites the line"),
    b"\x15": _Key(_Act.KILL_TO_START, "Ctrl-U unix-line-discard"),
    b"\x16": _refuse("Ctrl-V " + _QUOTED_INSERT),
    b"\x17": _Key(_Act.KILL_WORD_LEFT, "Ctrl-W unix-word-rubout"),
    b"\x18": _refuse("Ctrl-X is a prefix: Ctrl-X Ctrl-E edits and executes the line"),
    b"\x19": _refuse("Ctrl-Y (yank) inserts the kill ring, which is not shown until typed"),
    b"\x1a": _Key(_Act.HARMLESS, "Ctrl-Z: the shell ignores SIGTSTP at its prompt"),
    b"\x1c": _refuse("Ctrl-\\ sends SIGQUIT; it has no use at the prompt"),
    b"\x1d": _refuse("Ctrl-] (character-search) consumes the next key, even Enter"),
    b"\x1e": _refuse("Ctrl-^ has no emacs-mode binding; vi mode binds it"),
    b"\x1f": _refuse("Ctrl-_ (undo) rewrites the line"),
    b"\x7f": _Key(_Act.BACKSPACE, "DEL backward-delete-char"),
    # Escape sequences, consumed whole.
    b"\x1b[A": _Key(_Act.HISTORY, "Up previous-history"),
    b"\x1bOA": _Key(_Act.HISTORY, "Up previous-history"),
    b"\x1b[B": _Key(_Act.HISTORY, "Down next-history"),
    b"\x1bOB": _Key(_Act.HISTORY, "Down next-history"),
    b"\x1b[5~": _Key(_Act.HISTORY, "PgUp history-search-backward"),
    b"\x1b[6~": _Key(_Act.HISTORY, "PgDn history-search-forward"),
    b"\x1b[C": _Key(_Act.RIGHT, "Right forward-char"),
    b"\x1bOC": _Key(_Act.RIGHT, "Right forward-char"),
    b"\x1b[D": _Key(_Act.LEFT, "Left backward-char"),
    b"\x1bOD": _Key(_Act.LEFT, "Left backward-char"),
    b"\x1b[H": _Key(_Act.HOME, "Home beginning-of-line"),
    b"\x1b[1~": _Key(_Act.HOME, "Home beginning-of-line"),
    b"\x1bOH": _Key(_Act.HOME, "Home beginning-of-line"),
    b"\x1b[7~": _Key(_Act.HOME, "Home (rxvt) beginning-of-line"),
    b"\x1b[F": _Key(_Act.END, "End end-of-line"),
    b"\x1b[4~": _Key(_Act.END, "End end-of-line"),
    b"\x1bOF": _Key(_Act.END, "End end-of-line"),
    b"\x1b[8~": _Key(_Act.END, "End (rxvt) end-of-line"),
    b"\x1b[1;5C": _Key(_Act.WORD_RIGHT, "Ctrl-Right forward-word"),
    b"\x1b[1;3C": _Key(_Act.WORD_RIGHT, "Alt-Right forward-word"),
    b"\x1b[5C": _Key(_Act.WORD_RIGHT, "Ctrl-Right forward-word"),
    b"\x1b\x1b[C": _Key(_Act.WORD_RIGHT, "Alt-Right forward-word"),
    b"\x1bOc": _Key(_Act.WORD_RIGHT, "Ctrl-Right (rxvt) forward-word"),
    b"\x1b[1;5D": _Key(_Act.WORD_LEFT, "Ctrl-Left backward-word"),
    b"\x1b[1;3D": _Key(_Act.WORD_LEFT, "Alt-Left backward-word"),
    b"\x1b[5D": _Key(_Act.WORD_LEFT, "Ctrl-Left backward-word"),
    b"\x1b\x1b[D": _Key(_Act.WORD_LEFT, "Alt-Left backward-word"),
    b"\x1bOd": _Key(_Act.WORD_LEFT, "Ctrl-Left (rxvt) backward-word"),
    b"\x1b[3~": _Key(_Act.DELETE, "Delete delete-char"),
    b"\x1b[3;5~": _Key(_Act.KILL_WORD_RIGHT, "Ctrl-Delete kill-word"),
    b"\x1b[2~": _refuse("Insert " + _QUOTED_INSERT),
    b"\x1b[200~": _Key(_Act.PASTE, "bracketed paste begins"),
    b"\x1b[201~": _refuse("a paste end marker outside a paste"),
}

_OTHER_CONTROL: Final = _refuse("a control key with no safe meaning at the prompt")
_UNKNOWN_SEQUENCE: Final = _Key(_Act.UNKNOWN, "an escape sequence readline does not bind")
_ALT_SEQUENCE: Final = _refuse("Alt with a special key (ESC ESC ...)")
_META: Final = "meta key (ESC + key): readline binds these to invisible rewrites"
_MALFORMED: Final = "malformed escape sequence"
_TOO_LONG: Final = "escape sequence too long"

#: Longest escape sequence kept; a longer one is refused and its rest parsed as keys.
MAX_SEQUENCE: Final = 32

#: Longest bracketed paste (its content, in bytes) forwarded; a longer one is refused.
MAX_PASTE: Final = 64 * 1024

PASTE_BEGIN: Final = b"\x1b[200~"
PASTE_END: Final = b"\x1b[201~"
_PASTE_TOO_LONG: Final = f"a paste longer than {MAX_PASTE // 1024} KiB"
_PASTE_NOT_UTF8: Final = "a paste that is not valid UTF-8"
_PASTE_UNFINISHED: Final = "a paste whose end marker never came"
_PASTE_NOT_BRACKETED: Final = "a paste while the target does not read bracketed pastes"

_ESC: Final = 0x1B
_CR: Final = 0x0D
_LF: Final = 0x0A


class _State(enum.Enum):
    GROUND = "ground"
    ESC = "esc"  # ESC
    ESC_ESC = "esc-esc"  # ESC ESC (Alt + a special key?)
    CSI = "csi"  # ESC [ params
    CSI_INTERMEDIATE = "csi-intermediate"  # ESC [ params intermediates
    CSI_IGNORE = "csi-ignore"  # a CSI gone wrong: refused at its final byte
    SS3 = "ss3"  # ESC O
    UTF8 = "utf8"  # a multi-byte character
    META_UTF8 = "meta-utf8"  # ESC + a multi-byte character
    PASTE = "paste"  # inside a bracketed paste, collecting its content
    PASTE_SWALLOW = "paste-swallow"  # inside an over-long paste, already refused


def _utf8_lead(byte: int) -> tuple[int, int, int] | None:
    """
    For a UTF-8 lead byte: how many continuation bytes follow, and the range
    allowed for the first of them (which rules out overlong forms, surrogates
    and code points above U+10FFFF).  C{None} for a byte that cannot start a
    character.
    """
    if 0xC2 <= byte <= 0xDF:
        return 1, 0x80, 0xBF
    if byte == 0xE0:
        return 2, 0xA0, 0xBF
    if byte == 0xED:
        return 2, 0x80, 0x9F
    if 0xE1 <= byte <= 0xEF:
        return 2, 0x80, 0xBF
    if byte == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= byte <= 0xF3:
        return 3, 0x80, 0xBF
    if byte == 0xF4:
        return 3, 0x80, 0x8F
    return None


def _paste_control(char: str) -> bool:
    """
    Is C{char} refused in a paste?  Every C0 control but TAB, CR and LF,
    DEL, and the C1 controls (a terminal may read U+009B as CSI).
    """
    code = ord(char)
    return (code < 0x20 and char not in "\t\r\n") or 0x7F <= code <= 0x9F


def _is_word(char: str) -> bool:
    """
    readline's word characters for forward-word/backward-word: alphanumerics
    (so C{foo_bar} is two words, as bash 5.2 moves over it).
    """
    return char.isalnum()


def _zero_width(char: str) -> bool:
    """
    Does C{char} take no column, like glibc's C{wcwidth() == 0}?  readline
    moves and deletes over such characters together with the one before them
    (C{e} + U+0301 is one step of Left, Backspace or Delete).
    """
    if char == "\N{SOFT HYPHEN}":
        return False
    return unicodedata.category(char) in ("Mn", "Me", "Cf") or "\u1160" <= char <= "\u11ff"


def _previous(line: str, at: int) -> int:
    """The start of the character (with its zero-width marks) left of C{at}."""
    at = max(0, at - 1)
    while at > 0 and _zero_width(line[at]):
        at -= 1
    return at


def _next(line: str, at: int) -> int:
    """The end of the character (with its zero-width marks) right of C{at}."""
    at = min(len(line), at + 1)
    while at < len(line) and _zero_width(line[at]):
        at += 1
    return at


class LineBuffer:
    """
    The line being edited at an interactive bash prompt, rebuilt from keys.

    @ivar line: the line as the model has it.
    @ivar cursor: the index in C{line} where the next character goes.
    @ivar dirty: why C{line} may differ from what readline holds: C{"history"},
        C{"tab"}, C{"paste"} (a pasted TAB), C{"invalid-utf8"}, C{"unknown-key"}, and
        C{"cursor-edit"}.  Moving the cursor alone does not add
        C{"cursor-edit"}; an edit that changes the line away from its end does,
        since word and character rules matter there (they follow bash 5.2:
        words are alphanumerics, zero-width marks go with the character before).
        After a history key C{line} and C{cursor} are left as they were: only
        the screen knows the line.
    @ivar is_empty: no key of this line has been forwarded yet.

    @param pastes_bracketed: asked at each paste's end marker: does the
        target's terminal read bracketed pastes now (mode 2004, which readline
        sets while it reads a line)?  If not, the paste is refused: to a
        program that reads lines from the tty, a pasted CR or LF would submit
        a line unreviewed.  The default, always, is for tests of the model.
    """

    def __init__(self, pastes_bracketed: Callable[[], bool] = lambda: True) -> None:
        self._pastes_bracketed = pastes_bracketed
        self.line: str = ""
        self.cursor: int = 0
        self._dirty: set[str] = set()
        self.is_empty: bool = True
        # The framing of the byte stream, which outlives a line.
        self._state = _State.GROUND
        self._pending = bytearray()
        self._need = 0
        self._low = 0x80
        self._high = 0xBF
        self._after_cr = False

    @property
    def dirty(self) -> frozenset[str]:
        return frozenset(self._dirty)

    def reset(self) -> None:
        """
        Start a new, empty line: after a submit was released or denied.

        The buffer already starts a new line after L{Submit} and L{Interrupt};
        calling this again is harmless.  Only the line is reset: a key split
        across packets, and the swallowing of an LF after a CR, carry on,
        because a packet boundary is not a key boundary.
        """
        self.line = ""
        self.cursor = 0
        self._dirty = set()
        self.is_empty = True

    def feed(self, data: bytes) -> list[Event]:
        """
        Take bytes from the operator's terminal; return what to do with them.

        Any split of the same bytes gives the same events, except that one
        L{Forward} may come as several.  Adjacent L{Forward}s are merged.
        """
        out: list[Event] = []
        at, end = 0, len(data)
        while at < end:
            if self._state in (_State.PASTE, _State.PASTE_SWALLOW):
                at = self._paste(data, at, out)
                continue
            byte = data[at]
            at += 1
            while not self._step(byte, out):
                pass
        return out

    @property
    def in_paste(self) -> bool:
        """A bracketed paste has begun and its end marker has not come yet."""
        return self._state in (_State.PASTE, _State.PASTE_SWALLOW)

    def abandon_paste(self) -> list[Event]:
        """
        Give up on a paste whose end marker has not come (the caller decides
        when: after a quiet while).  What was collected is refused, never
        forwarded; bytes that come later are read as keys again.
        """
        out: list[Event] = []
        if self._state is _State.PASTE:
            out.append(Refused(PASTE_BEGIN + bytes(self._pending), _PASTE_UNFINISHED))
        self._clear_pending()
        return out

    # -- bracketed paste -----------------------------------------------------------

    def _paste(self, data: bytes, at: int, out: list[Event]) -> int:
        """
        Take paste bytes from C{data[at:]}; return where the paste's bytes end.

        C{_pending} holds the content so far (without the begin marker), or
        while swallowing only its last bytes, enough to find an end marker
        split across feeds.
        """
        keep = len(PASTE_END) - 1
        tail = bytes(self._pending[-keep:])
        found = (tail + data[at:]).find(PASTE_END)
        stop = len(data) if found < 0 else at + found - len(tail) + len(PASTE_END)
        if self._state is _State.PASTE_SWALLOW:
            if found < 0:
                self._pending[:] = (tail + data[at:stop])[-keep:]
            else:
                self._clear_pending()
            return stop
        self._pending += data[at:stop]
        if found >= 0:
            content = bytes(self._pending[: -len(PASTE_END)])
            self._clear_pending()
            self._paste_done(content, out)
        elif len(self._pending) > MAX_PASTE + keep:
            # Longer than the cap whatever comes next: refuse it now, keep
            # only enough to see the end marker.
            out.append(Refused(PASTE_BEGIN + bytes(self._pending[:MAX_PASTE]), _PASTE_TOO_LONG))
            del self._pending[:-keep]
            self._state = _State.PASTE_SWALLOW
        return stop

    def _paste_done(self, content: bytes, out: list[Event]) -> None:
        whole = PASTE_BEGIN + content + PASTE_END
        if len(content) > MAX_PASTE:
            out.append(Refused(PASTE_BEGIN + content[:MAX_PASTE], _PASTE_TOO_LONG))
            return
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            out.append(Refused(whole, _PASTE_NOT_UTF8))
            return
        for char in text:
            if _paste_control(char):
                out.append(Refused(whole, f"a paste holding the control character {char!r}"))
                return
        if not self._pastes_bracketed():
            out.append(Refused(whole, _PASTE_NOT_BRACKETED))
            return
        # readline turns every CR of a paste into LF, CR LF into two LFs.
        text = text.replace("\r", "\n")
        if "\t" in text:
            self._dirty.add(PASTE)  # readline shows it as spaces up to a tab stop
        at = self.cursor
        self._edit(self.line[:at] + text + self.line[at:], at + len(text))
        self._forward(whole, out)

    # -- the parser ----------------------------------------------------------------

    def _step(self, byte: int, out: list[Event]) -> bool:
        """Take one byte; C{False} if it ended a broken key and must be read again."""
        state = self._state
        if state is _State.GROUND:
            return self._ground(byte, out)
        if state is _State.ESC:
            return self._after_esc(byte, out)
        if state is _State.ESC_ESC:
            if byte in b"[O":
                self._begin(_State.CSI if byte == ord("[") else _State.SS3, byte)
                return True
            self._refuse_pending(_META, out)
            return False
        if state in (_State.CSI, _State.CSI_INTERMEDIATE, _State.CSI_IGNORE):
            return self._csi(byte, out)
        if state is _State.SS3:
            if 0x40 <= byte <= 0x7E:
                self._pending.append(byte)
                self._sequence(out)
                return True
            self._refuse_pending(_MALFORMED, out)
            return False
        if state is _State.UTF8:
            return self._utf8(byte, out)
        if state is _State.META_UTF8:
            if 0x80 <= byte <= 0xBF:
                self._pending.append(byte)
                self._need -= 1
                if self._need == 0:
                    self._refuse_pending(_META, out)
                return True
            self._refuse_pending(_META, out)
            return False
        raise AssertionError(state)  # pragma: no cover

    def _begin(self, state: _State, byte: int) -> None:
        self._state = state
        self._pending.append(byte)

    def _ground(self, byte: int, out: list[Event]) -> bool:
        if self._after_cr:
            self._after_cr = False
            if byte == _LF:
                return True  # The LF of a CRLF: see the module docstring.
        if byte == _ESC:
            self._begin(_State.ESC, byte)
        elif 0x20 <= byte < 0x7F:
            self._insert(chr(byte), bytes((byte,)), out)
        elif byte >= 0x80:
            lead = _utf8_lead(byte)
            if lead is None:
                self._invalid(bytes((byte,)), out)
            else:
                self._need, self._low, self._high = lead
                self._begin(_State.UTF8, byte)
        else:
            key = bytes((byte,))
            self._act(KEYS.get(key, _OTHER_CONTROL), key, out)
        return True

    def _after_esc(self, byte: int, out: list[Event]) -> bool:
        if byte == ord("["):
            self._begin(_State.CSI, byte)
        elif byte == ord("O"):
            self._begin(_State.SS3, byte)
        elif byte == _ESC:
            self._begin(_State.ESC_ESC, byte)
        elif (lead := _utf8_lead(byte)) is not None:
            self._need = lead[0]
            self._begin(_State.META_UTF8, byte)
        else:
            self._pending.append(byte)
            self._refuse_pending(_META, out)
        return True

    def _csi(self, byte: int, out: list[Event]) -> bool:
        if not 0x20 <= byte <= 0x7E:
            # A control key or a non-ASCII byte cannot be part of a CSI: the
            # sequence is broken, and the byte is a key of its own.
            self._refuse_pending(_MALFORMED, out)
            return False
        if len(self._pending) >= MAX_SEQUENCE:
            self._refuse_pending(_TOO_LONG, out)
            return False
        self._pending.append(byte)
        if byte >= 0x40:
            if self._state is _State.CSI_IGNORE:
                self._refuse_pending(_MALFORMED, out)
            else:
                self._sequence(out)
        elif byte >= 0x30:
            if self._state is _State.CSI_INTERMEDIATE:
                self._state = _State.CSI_IGNORE  # A parameter after an intermediate.
        elif self._state is _State.CSI:
            self._state = _State.CSI_INTERMEDIATE
        return True

    def _sequence(self, out: list[Event]) -> None:
        """A complete CSI or SS3 sequence is in C{_pending}."""
        key = bytes(self._pending)
        self._clear_pending()
        default = _ALT_SEQUENCE if key.startswith(b"\x1b\x1b") else _UNKNOWN_SEQUENCE
        self._act(KEYS.get(key, default), key, out)

    def _utf8(self, byte: int, out: list[Event]) -> bool:
        if not self._low <= byte <= self._high:
            # Truncated: one U+FFFD for the bytes so far, then read this byte afresh.
            self._invalid(bytes(self._pending), out)
            self._clear_pending()
            return False
        self._pending.append(byte)
        self._need -= 1
        self._low, self._high = 0x80, 0xBF
        if self._need == 0:
            key = bytes(self._pending)
            self._clear_pending()
            self._insert(key.decode("utf-8"), key, out)
        return True

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._state = _State.GROUND

    def _refuse_pending(self, why: str, out: list[Event]) -> None:
        out.append(Refused(bytes(self._pending), why))
        self._clear_pending()

    # -- the model -----------------------------------------------------------------

    def _forward(self, data: bytes, out: list[Event]) -> None:
        self.is_empty = False
        if out and isinstance(out[-1], Forward):
            out[-1] = Forward(out[-1].data + data)
        else:
            out.append(Forward(data))

    def _edit(self, line: str, cursor: int) -> None:
        """Replace the line; an edit away from its end makes the model less sure."""
        if line != self.line and self.cursor != len(self.line):
            self._dirty.add(CURSOR_EDIT)
        self.line = line
        self.cursor = cursor

    def _insert(self, text: str, key: bytes, out: list[Event]) -> None:
        at = self.cursor
        self._edit(self.line[:at] + text + self.line[at:], at + len(text))
        self._forward(key, out)

    def _invalid(self, key: bytes, out: list[Event]) -> None:
        self._dirty.add(INVALID_UTF8)
        self._insert("\N{REPLACEMENT CHARACTER}", key, out)

    def _word_left(self) -> int:
        """readline's backward-word: skip non-word characters, then word characters."""
        at, line = self.cursor, self.line
        while at > 0 and not _is_word(line[_previous(line, at)]):
            at = _previous(line, at)
        while at > 0 and _is_word(line[_previous(line, at)]):
            at = _previous(line, at)
        return at

    def _word_right(self) -> int:
        """readline's forward-word: skip non-word characters, then word characters."""
        at, line = self.cursor, self.line
        while at < len(line) and not _is_word(line[at]):
            at = _next(line, at)
        while at < len(line) and _is_word(line[at]):
            at = _next(line, at)
        return at

    def _rubout_left(self) -> int:
        """readline's unix-word-rubout: skip blanks, then everything but blanks."""
        at, line = self.cursor, self.line
        while at > 0 and line[at - 1] in " \t":
            at -= 1
        while at > 0 and line[at - 1] not in " \t":
            at -= 1
        return at

    def _act(self, key_info: _Key, key: bytes, out: list[Event]) -> None:
        act = key_info.act
        line, at = self.line, self.cursor
        if act is _Act.REFUSE:
            out.append(Refused(key, key_info.why))
            return
        if act is _Act.SUBMIT:
            out.append(Submit(line, key, self._dirty))
            self.reset()
            self._after_cr = key == b"\r"
            return
        if act is _Act.INTERRUPT:
            out.append(Interrupt(key))
            self.reset()
            return
        if act is _Act.EOF_OR_DELETE and (line == "" or HISTORY in self._dirty):
            # End of input on an empty line logs out; after a history key the
            # line is unknown, so hold the key and let the caller look.
            out.append(Submit(line, key, self._dirty))
            self.reset()
            return
        if act in (_Act.EOF_OR_DELETE, _Act.DELETE):
            self._edit(line[:at] + line[_next(line, at) :], at)
        elif act is _Act.BACKSPACE:
            start = _previous(line, at)
            self._edit(line[:start] + line[at:], start)
        elif act is _Act.KILL_WORD_LEFT:
            start = self._rubout_left()
            self._edit(line[:start] + line[at:], start)
        elif act is _Act.KILL_WORD_RIGHT:
            self._edit(line[:at] + line[self._word_right() :], at)
        elif act is _Act.KILL_TO_START:
            self._edit(line[at:], 0)
        elif act is _Act.KILL_TO_END:
            self._edit(line[:at], at)
        elif act is _Act.HOME:
            self.cursor = 0
        elif act is _Act.END:
            self.cursor = len(line)
        elif act is _Act.LEFT:
            self.cursor = _previous(line, at)
        elif act is _Act.RIGHT:
            self.cursor = _next(line, at)
        elif act is _Act.WORD_LEFT:
            self.cursor = self._word_left()
        elif act is _Act.WORD_RIGHT:
            self.cursor = self._word_right()
        elif act is _Act.HISTORY:
            self._dirty.add(HISTORY)
        elif act is _Act.TAB:
            self._dirty.add(TAB)
        elif act is _Act.PASTE:
            # Collected up to its end marker; nothing is forwarded before that.
            self._state = _State.PASTE
            return
        elif act is _Act.UNKNOWN:
            self._dirty.add(UNKNOWN_KEY)
        self._forward(key, out)
