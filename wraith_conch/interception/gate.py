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

A bracketed paste is one unit (see the line buffer): sent whole once its end
marker has come, or refused whole.  Pasted newlines are text to readline, so
a paste of several lines becomes one line, submitted by the next Enter, and
one request: C{command} is every row the screen shows for it, joined with
newlines.  Approval sends the held Enter and bash runs each line; denial's
Ctrl-C drops all of them.  A paste is sent only while the target's terminal
is in bracketed paste mode (readline sets it while it reads a line): to any
other reader, a pasted newline would submit a line, so the paste is refused.
A paste still open after L{PASTE_QUIET_LIMIT} of quiet is given up (refused),
so that later keys are keys again.

After an approved command switches to the alternate screen (an editor, a
pager, C{top}), keys pass through until the shell's prompt shows again, or
the program leaves the alternate screen.  A command that merely switches
the screen (C{printf '\\e[?1049h'}) opens nothing lasting: the prompt that
follows it ends the passthrough.  Approving a program that runs commands
itself (C{vim}, C{tmux}, a REPL) approves what is typed inside it; see
docs/approval.md.

Without a PTY there is no terminal and no line editing: L{PipeGate} holds
each newline-terminated line of raw input, and C{command} is exactly the
bytes that would be sent.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wraith_conch.approval.interfaces import (
    GATEWAY_REVIEWER,
    CommandRequest,
    Decision,
    IApprover,
    denial_from_failure,
    record_gateway_decision,
)
from wraith_conch.interception.linebuffer import Forward, Interrupt, LineBuffer, Refused, Submit
from wraith_conch.interception.screen import Screen

CTRL_C = b"\x03"
_DIGITS = re.compile(r"[0-9]")
BELL = b"\x07"
# Without a PTY, input that arrives while a line waits is kept up to this.
MAX_QUEUED_WITHOUT_PTY = 1024 * 1024


# After Enter the target may still be echoing the last keys: read the screen
# once it shows the typed line, or after this much quiet, or at the latest
# after SETTLE_LIMIT.
SETTLE_QUIET = 0.1
SETTLE_LIMIT = 2.0
# A bracketed paste whose end marker has not come after this much quiet is
# given up: what was collected is refused (a terminal sends a paste at once).
PASTE_QUIET_LIMIT = 5.0


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
    @param screen: the target's terminal (sessions without a PTY use L{PipeGate}).
    @param on_mismatch: C{"review"} or C{"deny"}.
    @param on_decision: told of every decision, for logs and the audit trail.
    @param flush_target: send what was written to the target now (after an
        approved key), rather than at the reactor's next turn.
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
        screen: Screen,
        on_mismatch: str = "review",
        on_decision: Callable[[CommandRequest, Decision], None] | None = None,
        flush_target: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self._flush_target = flush_target
        self._approver = approver
        self._to_target = to_target
        self._to_target_eof = to_target_eof
        self._to_operator = to_operator
        self._make_request = make_request
        self.screen = screen
        self._on_mismatch = on_mismatch
        self._on_decision = on_decision or (lambda request, decision: None)
        # Pasted newlines are text only to a reader in bracketed paste mode.
        self._keys = LineBuffer(pastes_bracketed=lambda: self.screen.bracketed_paste_enabled)
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
        self._eof = False
        self._settling: Submit | None = None
        self._settle_timer: IDelayedCall | None = None
        self._settle_deadline = 0.0
        # False from a key sent to the target until the target prints again.
        self._echo_seen = True
        # Keys reached the target outside the line model (in a passthrough).
        self._raw_input_since_line = False
        self._paste_timer: IDelayedCall | None = None

    # -- what the target prints --------------------------------------------------------

    def target_output(self, data: bytes) -> None:
        """Feed the screen model; may end a passthrough."""
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
            # The prompt first: output that switches screens may bring the
            # prompt after it in the same chunk, and then nothing is running.
            if self._prompt_showing():
                self._approved_running = False
            elif self.screen.in_alternate_screen and not self._line_started:
                self._state = _State.PASSTHROUGH

    def resize(self, columns: int, lines: int) -> None:
        self.screen.resize(columns, lines)

    def _prompt_showing(self) -> bool:
        """
        Is the shell reading a new line?  True when the cursor sits right
        after the prompt seen when this line began (digits ignored, so a
        clock in the prompt does not matter), or -- for a prompt that changed
        (C{PS1=...}, a directory in it) -- when readline has bracketed paste
        on, as bash does only while it reads a line, and the cursor is at the
        end of a row that ends in the same character as that prompt.  Ending
        a passthrough too early only means more review, never less.
        """
        prompt = (self._prompt or "").rstrip()
        if not prompt:
            return False
        row, column = self.screen.cursor
        text = self.screen.row_text(row)
        before, after = text[:column].rstrip(), text[column:].strip()
        if after:
            return False
        if _DIGITS.sub("0", before) == _DIGITS.sub("0", prompt):
            return True
        return self.screen.bracketed_paste_enabled and before.endswith(prompt[-1])

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
        self._watch_paste()

    def _watch_paste(self) -> None:
        """Give up on a bracketed paste that stays unfinished (see L{PASTE_QUIET_LIMIT})."""
        if self._keys.in_paste and not self._closed:
            if self._paste_timer is not None and self._paste_timer.active():
                self._paste_timer.reset(PASTE_QUIET_LIMIT)
            else:
                self._paste_timer = self._clock.callLater(PASTE_QUIET_LIMIT, self._paste_stalled)
        elif self._paste_timer is not None and self._paste_timer.active():
            self._paste_timer.cancel()

    def _paste_stalled(self) -> None:
        self._paste_timer = None
        events = self._keys.abandon_paste()  # only Refused: nothing reaches the target
        if self._state is _State.EDITING and not self._closed:
            self._handle(events)

    def _handle(self, events) -> None:
        for event in events:
            if self._state is not _State.EDITING:
                # Keys after a held Enter: type-ahead, discarded.
                self._keys.reset()
                self._discard_notice()
                return
            if isinstance(event, Forward):
                if not self._line_started and event.data:
                    self._begin_line()
                self._echo_seen = False
                self._to_target(event.data)
            elif isinstance(event, Refused):
                self._to_operator(BELL)
            elif isinstance(event, Interrupt):
                self._new_line()
                self._raw_input_since_line = False
                self._to_target(event.key)
            elif isinstance(event, Submit):
                self._submit(event)

    def _begin_line(self) -> None:
        self._line_started = True
        row, column = self.screen.cursor
        self._prompt = self.screen.row_text(row)[:column]
        self.screen.mark_input_start()

    def _new_line(self) -> None:
        """The line ended; the line buffer has already started its next one."""
        self._line_started = False
        self.screen.clear_mark()

    def _submit(self, event: Submit) -> None:
        """Hold the key; decide once the screen shows what the target echoed."""
        self._held_key = event.key
        self._told_discarded = False
        if not self._line_started and not self._raw_input_since_line:
            # Nothing reached the target since the last line ended: the
            # shell's line is empty, so Enter (or Ctrl-D) passes unasked.
            self._release(event.key)
            return
        if not event.dirty and self._echo_seen and self.screen.input_line() == event.line:
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
        if not self._line_started:
            # Keys went to the target unmarked (a passthrough just ended):
            # show the reviewer the cursor's row, and never call it certain.
            command, certain = self._cursor_row_after_prompt(), False
        else:
            shown = self.screen.read_input_line()
            command, certain = shown.text, shown.certain
        if not command.strip() and not typed.strip() and certain:
            self._release(event.key)
            return
        if certain and not command.split("\n", 1)[0].strip() and typed and "\n" not in typed:
            # Keys typed with echo off (a sudo or read -s prompt): never send
            # what may be a password to reviewers; the screen shows the prompt.
            # (Only the first row counts: rows left below the prompt are read too.)
            typed = f"<{len(typed)} characters typed without echo>"
        mismatch = command != typed or not certain
        request = self._make_request(command, typed, mismatch)
        self._pending = request
        self._state = _State.PENDING
        if mismatch and self._on_mismatch == "deny":
            denial = Decision.deny(
                "the line on screen differs from the keys typed (--on-mismatch deny)",
                reviewer=GATEWAY_REVIEWER,
            )
            record_gateway_decision(self._approver, request, denial, asked=False)
            decided = defer.succeed(denial)
        else:
            decided = self._approver.request_decision(request)
            # Only a request that waits needs the notice: one the policy
            # decided at once would paint it and clear it again for nothing.
            if not decided.called:
                self._show_waiting()
        decided.addErrback(denial_from_failure)
        decided.addCallback(self._decided, request)

    def _input_while_pending(self, data: bytes) -> None:
        # The keys are dropped, but read: a bracketed paste that began before
        # the held Enter must end at its own end marker, not swallow later keys.
        self._keys.feed(data)
        self._keys.reset()
        self._watch_paste()
        if CTRL_C in data:
            if self._state is _State.SETTLING:
                self._settled()
            if self._pending is not None:
                self._approver.cancel(self._pending.id, "the operator pressed Ctrl-C")
            return
        self._discard_notice()

    def _discard_notice(self) -> None:
        if not self._told_discarded:
            self._told_discarded = True
            notice = b"wraith: input typed while waiting for approval is discarded"
            if self._waiting_shown:
                # In place of the waiting line, which the decision clears: a
                # line of its own would move the cursor _hide_waiting expects.
                self._to_operator(b"\r\x1b[K" + notice)
            else:
                self._to_operator(self._line(notice))

    def _decided(self, decision: Decision, request: CommandRequest) -> None:
        if self._pending is not request or self._closed:
            return
        self._on_decision(request, decision)
        self._pending = None
        if decision.approved:
            # No key reached the shell while the line waited, so rows printed
            # below it since are output, not line: only the approved rows count.
            rows = request.command.split("\n")
            now = self.screen.read_input_line().text.split("\n")
            if now[: len(rows)] != rows:
                decision = Decision.deny(
                    "the line changed while it waited for approval", reviewer=GATEWAY_REVIEWER
                )
                record_gateway_decision(self._approver, request, decision, asked=True)
                self._on_decision(request, decision)
        self._hide_waiting()
        if decision.approved:
            self._release(self._held_key)
            self._flush_target()  # the operator waits on this key
            self._approved_running = True
        else:
            self._deny(decision.reason or "no reason given")
        self._maybe_send_eof()

    def _cursor_row_after_prompt(self) -> str:
        row, _column = self.screen.cursor
        text = self.screen.row_text(row)
        if self._prompt and text.startswith(self._prompt):
            text = text[len(self._prompt) :]
        return text.strip()

    def _show_waiting(self) -> None:
        """A status line under the command, removed again when it is decided."""
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
            self._line(f"wraith: denied: {printable_line(reason)}".encode("utf-8", "replace"))
        )
        self._to_target(CTRL_C)
        self._raw_input_since_line = False
        self._keys.reset()
        self._new_line()

    def _line(self, text: bytes) -> bytes:
        """A message on a line of its own (after the command when there is a terminal)."""
        return b"\r\n" + text + b"\r\n"

    def operator_eof(self) -> None:
        """The operator will send nothing more; EOF follows whatever is still held."""
        self._eof = True
        self._maybe_send_eof()

    def _maybe_send_eof(self) -> None:
        if not self._eof or self._state is not _State.EDITING or self._closed:
            return
        self._eof = False
        self._to_target_eof()

    # -- end of the session ------------------------------------------------------------

    def close(self) -> None:
        """The session ended: a pending request is void."""
        self._closed = True
        if self._settle_timer is not None and self._settle_timer.active():
            self._settle_timer.cancel()
        if self._paste_timer is not None and self._paste_timer.active():
            self._paste_timer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            self._approver.cancel(pending.id, "session closed")


def printable_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)[:500]


class PipeGate:
    """
    The gate for a shell without a PTY (C{echo cmd | ssh gateway}).

    No terminal driver edits the input there: bash reads raw bytes and runs
    each line at its newline.  So the line sent for review is exactly the
    bytes that will be sent (decoded for display, control bytes and all),
    split at newlines only; nothing of a line reaches the target before it
    is approved, because bytes in a pipe cannot be taken back.  Input that
    arrives while a line waits is kept (it is a script, not type-ahead), up
    to L{MAX_QUEUED_WITHOUT_PTY}; an unterminated last line is never sent.
    """

    screen = None

    def __init__(
        self,
        *,
        approver: IApprover,
        to_target: Callable[[bytes], None],
        to_operator: Callable[[bytes], None],
        to_target_eof: Callable[[], None],
        make_request: Callable[[str, str, bool], CommandRequest],
        on_decision: Callable[[CommandRequest, Decision], None] | None = None,
    ) -> None:
        self._approver = approver
        self._to_target = to_target
        self._to_operator = to_operator
        self._to_target_eof = to_target_eof
        self._make_request = make_request
        self._on_decision = on_decision or (lambda request, decision: None)
        self._buffer = b""
        self._pending: CommandRequest | None = None
        self._held_line = b""
        self._eof = False
        self._closed = False

    def operator_input(self, data: bytes) -> None:
        if self._closed:
            return
        if len(self._buffer) + len(data) > MAX_QUEUED_WITHOUT_PTY:
            self._to_operator(b"wraith: input beyond 1 MiB waiting for approval is discarded\n")
            return
        self._buffer += data
        self._next_line()

    def _next_line(self) -> None:
        while self._pending is None and not self._closed and b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            line += b"\n"
            command = line[:-1].decode("utf-8", "backslashreplace")
            if not command.strip(" \t\r"):
                self._to_target(line)
                continue
            request = self._make_request(command, command, False)
            self._pending, self._held_line = request, line
            self._to_operator(b"wraith: waiting for approval\n")
            d = self._approver.request_decision(request)
            d.addErrback(denial_from_failure)
            d.addCallback(self._decided, request)
        if self._pending is None:
            self._maybe_send_eof()

    def _decided(self, decision: Decision, request: CommandRequest) -> None:
        if self._pending is not request or self._closed:
            return
        self._pending = None
        self._on_decision(request, decision)
        line, self._held_line = self._held_line, b""
        if decision.approved:
            self._to_target(line)
        else:
            reason = printable_line(decision.reason or "no reason given")
            self._to_operator(f"wraith: denied: {reason}\n".encode("utf-8", "replace"))
        self._next_line()

    def operator_eof(self) -> None:
        self._eof = True
        if self._pending is None:
            self._maybe_send_eof()

    def _maybe_send_eof(self) -> None:
        if not self._eof or self._closed:
            return
        if self._buffer:
            # bash would run an unterminated last line at EOF, unreviewed.
            self._to_operator(b"wraith: the last line had no newline and was discarded\n")
            self._buffer = b""
        self._eof = False
        self._to_target_eof()

    def target_output(self, data: bytes) -> None:
        return None

    def resize(self, columns: int, lines: int) -> None:
        return None

    def close(self) -> None:
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            self._approver.cancel(pending.id, "session closed")
