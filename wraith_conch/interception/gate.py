"""
The gate: the one place that releases a submitting key to the target.

It sits between the operator's keystrokes and the target's shell on a
session with a PTY.  Keys reach the target as typed, so the shell echoes
and edits the line as usual, until a key that would submit the line; that
key is held.  The line as the target's terminal shows it (the L{Screen}
model) becomes the request's C{command}, the line rebuilt from keystrokes
(the L{LineBuffer}) its C{typed}; only an C{approve} for that request id,
with the screen still showing the approved line, sends the held key.

Denial discards the whole line at the target with Ctrl-C: readline drops
the line wherever the cursor is, it enters neither the history nor the kill
ring, and the shell prints a fresh prompt.  (Ctrl-U would kill only left of
the cursor, into the kill ring.)

Keys that submit or rewrite the line invisibly (Ctrl-O, Ctrl-X, Ctrl-R,
Ctrl-Y, meta keys, ...) are refused at the prompt by the line buffer: not
forwarded, and the operator hears the bell.

After an approved command switches to the alternate screen (an editor, a
pager, C{top}), keys pass through until the shell's prompt shows again, or
the program leaves the alternate screen.  A command that merely switches
the screen (C{printf '\\e[?1049h'}) opens nothing lasting: the prompt that
follows it ends the passthrough.  Approving a program that runs commands
itself (C{vim}, C{tmux}, a REPL) approves what is typed inside it; see
docs/approval.md.

Without a PTY there is no screen: each line is held as typed, and
C{command} is the typed line.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wraith_conch.approval.interfaces import (
    CommandRequest,
    Decision,
    IApprover,
    denial_from_failure,
)
from wraith_conch.interception.linebuffer import Forward, Interrupt, LineBuffer, Refused, Submit
from wraith_conch.interception.screen import Screen

CTRL_C = b"\x03"
BELL = b"\x07"
# Without a PTY, input that arrives while a line waits is kept up to this.
MAX_QUEUED_WITHOUT_PTY = 1024 * 1024


# After Enter the target may still be echoing the last keys: read the screen
# once it shows the typed line, or after this much quiet, or at the latest
# after SETTLE_LIMIT.
SETTLE_QUIET = 0.1
SETTLE_LIMIT = 2.0


class _State(enum.Enum):
    EDITING = "editing"
    SETTLING = "settling"
    PENDING = "pending"
    PASSTHROUGH = "passthrough"


class ShellGate:
    """
    @param to_target: send bytes to the target's shell.
    @param to_operator: show bytes on the operator's terminal (not the target's).
    @param make_request: build a L{CommandRequest} of kind C{shell} from
        C{(command, typed)}, with C{mismatch} set by the caller's rule.
    @param screen: the target's terminal, or L{None} for a session without a PTY.
    @param on_mismatch: C{"review"} or C{"deny"}.
    @param on_decision: told of every decision, for logs and the audit trail.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        approver: IApprover,
        to_target: Callable[[bytes], None],
        to_operator: Callable[[bytes], None],
        make_request: Callable[[str, str, bool], CommandRequest],
        to_target_eof: Callable[[], None],
        screen: Screen | None,
        on_mismatch: str = "review",
        on_decision: Callable[[CommandRequest, Decision], None] | None = None,
    ) -> None:
        self._clock = clock
        self._approver = approver
        self._to_target = to_target
        self._to_target_eof = to_target_eof
        self._to_operator = to_operator
        self._make_request = make_request
        self.screen = screen
        self._on_mismatch = on_mismatch
        self._on_decision = on_decision or (lambda request, decision: None)
        self._keys = LineBuffer()
        self._state = _State.EDITING
        self._line_started = False
        self._prompt: str | None = None
        self._approved_running = False
        self._pending: CommandRequest | None = None
        self._held_key = b""
        self._told_discarded = False
        self._closed = False
        self._waiting_shown = False
        self._waiting_scrolled = False
        self._unsent = b""
        self._queued = b""
        self._eof = False
        self._settling: Submit | None = None
        self._settle_timer: IDelayedCall | None = None
        self._settle_deadline = 0.0
        # False from a key sent to the target until the target prints again.
        self._echo_seen = True
        # Keys reached the target outside the line model (in a passthrough).
        self._raw_input_since_line = False

    # -- what the target prints --------------------------------------------------------

    def target_output(self, data: bytes) -> None:
        """Feed the screen model; may end a passthrough."""
        if self.screen is None:
            return
        self.screen.feed(data)
        self._echo_seen = True
        if self._state is _State.SETTLING:
            self._settle_progress()
        elif self._state is _State.PASSTHROUGH:
            if not self.screen.in_alternate_screen or self._prompt_showing():
                self._state = _State.EDITING
                self._approved_running = False
                self._keys.reset()
                self._new_line()
        elif self._approved_running and self._state is _State.EDITING:
            if self.screen.in_alternate_screen and not self._line_started:
                self._state = _State.PASSTHROUGH
            elif self._prompt_showing():
                self._approved_running = False

    def resize(self, columns: int, lines: int) -> None:
        if self.screen is not None:
            self.screen.resize(columns, lines)

    def _prompt_showing(self) -> bool:
        """Is the cursor right after the prompt we saw when this line began?"""
        if self._prompt is None or not self._prompt.strip():
            return False
        row, column = self.screen.cursor
        rows = self.screen.last_screenful()
        if not 0 <= row < len(rows):
            return False
        return rows[row][:column].rstrip() == self._prompt.rstrip() and column >= len(
            self._prompt.rstrip()
        )

    # -- what the operator types ------------------------------------------------------

    def operator_input(self, data: bytes) -> None:
        if self._closed:
            return
        if self._state is _State.PASSTHROUGH:
            self._raw_input_since_line = True
            self._to_target(data)
            return
        if self._state in (_State.PENDING, _State.SETTLING):
            self._input_while_pending(data)
            return
        self._handle(self._keys.feed(data))

    def _handle(self, events) -> None:
        for index, event in enumerate(events):
            if self._state is not _State.EDITING:
                self._keys.reset()
                if self.screen is None:
                    # Piped input is a script, not type-ahead: keep it.
                    self._input_while_pending(b"".join(_raw(e) for e in events[index:]))
                else:
                    # Keys after a held Enter: type-ahead, discarded.
                    self._discard_notice()
                return
            if isinstance(event, Forward):
                if not self._line_started and event.data:
                    self._begin_line()
                if self.screen is None:
                    # No terminal: bytes in a pipe cannot be taken back, so
                    # the line goes to the target only once approved.
                    self._unsent += event.data
                else:
                    self._echo_seen = False
                    self._to_target(event.data)
            elif isinstance(event, Refused):
                if self.screen is not None:
                    self._to_operator(BELL)
            elif isinstance(event, Interrupt):
                self._new_line()
                self._raw_input_since_line = False
                self._to_target(event.key)
            elif isinstance(event, Submit):
                self._submit(event)

    def _begin_line(self) -> None:
        self._line_started = True
        if self.screen is not None:
            row, column = self.screen.cursor
            rows = self.screen.last_screenful()
            self._prompt = rows[row][:column] if 0 <= row < len(rows) else None
            self.screen.mark_input_start()

    def _new_line(self) -> None:
        """The line ended; the line buffer has already started its next one."""
        self._unsent = b""
        self._line_started = False
        if self.screen is not None:
            self.screen.clear_mark()

    def _submit(self, event: Submit) -> None:
        """Hold the key; decide once the screen shows what the target echoed."""
        self._held_key = event.key
        self._told_discarded = False
        if not self._line_started and not self._raw_input_since_line:
            # Nothing reached the target since the last line ended: the
            # shell's line is empty, so Enter (or Ctrl-D) passes unasked.
            self._release(self._unsent + event.key)
            return
        if self.screen is None:
            self._submit_now(event)
            return
        if (
            not event.dirty
            and self._echo_seen
            and self.screen.input_line() == event.line
        ):
            self._submit_now(event)
            return
        self._state = _State.SETTLING
        self._settling = event
        self._settle_deadline = self._clock.seconds() + SETTLE_LIMIT
        self._settle_timer = self._clock.callLater(SETTLE_QUIET, self._settled)

    def _settle_progress(self) -> None:
        """Target output while settling: wait until it has been quiet a moment."""
        event = self._settling
        if not event.dirty and self.screen.input_line() == event.line:
            self._settled()
            return
        if self._settle_timer is not None and self._settle_timer.active():
            delay = min(SETTLE_QUIET, max(0.0, self._settle_deadline - self._clock.seconds()))
            self._settle_timer.reset(delay)

    def _settled(self) -> None:
        if self._settle_timer is not None and self._settle_timer.active():
            self._settle_timer.cancel()
        self._settle_timer = None
        event, self._settling = self._settling, None
        if event is not None and self._state is _State.SETTLING and not self._closed:
            self._submit_now(event)

    def _submit_now(self, event: Submit) -> None:
        typed = event.line
        if self.screen is not None and not self._line_started:
            # Keys went to the target unmarked (a passthrough just ended):
            # show the reviewer the cursor's row, and never call it certain.
            command, certain = self._cursor_row_after_prompt(), False
        elif self.screen is not None:
            shown = self.screen.read_input_line()
            command, certain = shown.text, shown.certain
        else:
            command, certain = typed, True
        if not command.strip() and not typed.strip() and certain:
            self._release(self._unsent + event.key)
            return
        mismatch = command != typed or not certain
        request = self._make_request(command, typed, mismatch)
        self._pending = request
        self._state = _State.PENDING
        if mismatch and self._on_mismatch == "deny":
            decided = defer.succeed(
                Decision.deny("the line on screen differs from the keys typed (--on-mismatch deny)")
            )
        else:
            self._show_waiting()
            decided = self._approver.request_decision(request)
        decided.addErrback(denial_from_failure)
        decided.addCallback(self._decided, request)

    def _input_while_pending(self, data: bytes) -> None:
        if CTRL_C in data:
            if self._state is _State.SETTLING:
                self._settled()
            if self._pending is not None:
                self._approver.cancel(self._pending.id, "the operator pressed Ctrl-C")
            return
        if self.screen is None and len(self._queued) + len(data) <= MAX_QUEUED_WITHOUT_PTY:
            # Piped input is a script, not type-ahead: keep it for after the decision.
            self._queued += data
            return
        self._keys.reset()
        self._discard_notice()

    def _discard_notice(self) -> None:
        if not self._told_discarded:
            self._told_discarded = True
            self._to_operator(
                self._line(b"wraith: input typed while waiting for approval is discarded")
            )

    def _decided(self, decision: Decision, request: CommandRequest) -> None:
        if self._pending is not request or self._closed:
            return
        self._on_decision(request, decision)
        self._pending = None
        if decision.approved and self.screen is not None:
            now = self.screen.read_input_line().text
            if now != request.command:
                decision = Decision.deny("the line changed while it waited for approval")
                self._on_decision(request, decision)
        self._hide_waiting()
        if decision.approved:
            self._release(self._unsent + self._held_key)
            self._approved_running = True
        else:
            self._deny(decision.reason or "no reason given")
        queued, self._queued = self._queued, b""
        if queued:
            self.operator_input(queued)
        self._maybe_send_eof()

    def _cursor_row_after_prompt(self) -> str:
        row, _column = self.screen.cursor
        rows = self.screen.last_screenful()
        text = rows[row] if 0 <= row < len(rows) else ""
        if self._prompt and text.startswith(self._prompt):
            text = text[len(self._prompt) :]
        return text.strip()

    def _show_waiting(self) -> None:
        """A status line under the command, removed again when it is decided."""
        if self.screen is None:
            self._to_operator(b"wraith: waiting for approval\r\n")
            return
        row, _column = self.screen.cursor
        # Printing a line from the bottom row scrolls the terminal by one.
        self._waiting_scrolled = row >= self.screen.lines - 1
        self._to_operator(b"\x1b7\r\n\x1b[2m[wraith] waiting for approval\x1b[0m")
        self._waiting_shown = True

    def _hide_waiting(self) -> None:
        if not self._waiting_shown:
            return
        self._waiting_shown = False
        up = b"\x1b[A" if self._waiting_scrolled else b""
        # Clear the status line, then put the cursor back where the shell left it.
        self._to_operator(b"\r\x1b[K\x1b8" + up)

    def _release(self, key: bytes) -> None:
        self._state = _State.EDITING
        self._raw_input_since_line = False
        self._to_target(key)
        self._new_line()

    def _deny(self, reason: str) -> None:
        self._state = _State.EDITING
        self._to_operator(
            self._line(f"wraith: denied: {_one_line(reason)}".encode("utf-8", "replace"))
        )
        if self.screen is not None:
            self._to_target(CTRL_C)
        self._raw_input_since_line = False
        self._keys.reset()
        self._new_line()

    def _line(self, text: bytes) -> bytes:
        """A message on a line of its own (after the command when there is a terminal)."""
        return (b"\r\n" + text + b"\r\n") if self.screen is not None else text + b"\n"

    def operator_eof(self) -> None:
        """The operator will send nothing more; EOF follows whatever is still held."""
        self._eof = True
        self._maybe_send_eof()

    def _maybe_send_eof(self) -> None:
        if not self._eof or self._state is not _State.EDITING or self._closed:
            return
        if self._unsent:
            # A last line without a newline would run at EOF unreviewed.
            self._to_operator(b"wraith: the last line had no newline and was discarded\n")
            self._new_line()
        self._eof = False
        self._to_target_eof()

    # -- end of the session ------------------------------------------------------------

    def close(self) -> None:
        """The session ended: a pending request is void."""
        self._closed = True
        if self._settle_timer is not None and self._settle_timer.active():
            self._settle_timer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            self._approver.cancel(pending.id, "session closed")


def _raw(event) -> bytes:
    """The bytes an event of the line buffer stands for."""
    return event.data if isinstance(event, Forward) else event.key


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)[:500]
