"""A terminal emulator of what the target prints, to read the input line as the operator sees it.

A keystroke model cannot know what bash does with history recall, tab completion, Ctrl-R or
cursor editing; the terminal can. The gateway feeds every byte the target prints into
:class:`Screen`, calls :meth:`Screen.mark_input_start` when the first key of a new input line
goes to the target, and when the operator presses Enter asks :meth:`Screen.read_input_line`
for the line as it is displayed, which is what readline is about to run. A line holding
newlines (a multi-line bracketed paste) is read over the rows below the prompt row, joined
with newlines, as readline displays it; the screen reads it on its own, as a cross-check of
the keystroke model, never from it.

The module is sans-IO: bytes in, text out, no reactor and no logging.

It is built on ``pyte`` 0.8, which is a good cell store but not a faithful xterm. The
differences that change what a reviewer would be shown are handled here:

* ``pyte.Screen.draw`` stops drawing a chunk at the first unprintable or zero-width,
  non-combining character, so ``rm x\\u200b; evil`` would read as ``rm x``. ``draw`` is
  reimplemented: control characters are skipped, zero-width characters join the previous cell.
* pyte keeps no record of autowrap. ``draw`` records on each row where it wrapped
  (``_Row.wrapped_at``); this is how a soft-wrapped line is told from separate lines.
* pyte leaves the cursor in the "pending wrap" column after a line feed, cursor movement or
  erase, so the next character wraps again; xterm cancels the pending wrap. Every such event
  clamps the cursor first.
* pyte does not report scrolls. ``index``/``reverse_index``/``insert_lines``/``delete_lines``
  are reimplemented (fixing pyte's handling of rows it never touched and of a cursor outside
  the scrolling region) and move the input mark with the text.
* pyte has no alternate screen; modes 47/1047/1049 swap buffers here.
* Non-private mode numbers collide with pyte's shifted private ones (``ESC[224l`` turns
  autowrap off, ``ESC[96h`` switches to 132 columns); they are filtered, and DECCOLM is ignored
  as xterm does by default. ``ED 3`` erases scrollback in xterm, not the screen.
* Many inputs make pyte raise (``ESC[?5A``, ``ESC[1;2;3A``, ``ESC[5J``, ``ESC[²m``, more than
  4300 parameter digits); every event is guarded, and a small filter in front of the parser
  bounds the length of escape sequences so that a target cannot grow memory without limit.
* Wide characters: a double-width character that does not fit in the last column wraps first;
  overwriting half of one clears the other half (pyte leaves an empty "stub" cell that makes
  ``pyte.Screen.display`` raise ``IndexError``).
"""

from __future__ import annotations

import codecs
import copy
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import pyte
from pyte import modes as mo
from pyte.screens import Char, Margins, StaticDefaultDict
from wcwidth import wcwidth

__all__ = [
    "MAX_COLUMNS",
    "MAX_LINES",
    "MAX_SCROLLED_INPUT_ROWS",
    "InputLine",
    "Position",
    "Screen",
]

#: Largest terminal the model accepts; bigger requests are clamped (memory and CPU bound).
MAX_COLUMNS = 2000
MAX_LINES = 1000

#: Rows of one input line kept after they scroll off the top of the screen.
MAX_SCROLLED_INPUT_ROWS = 512

#: Bounds on escape sequences: a target must not be able to grow memory without limit.
_MAX_CSI_PARAMS = 32
_MAX_PARAM_DIGITS = 8
_MAX_OSC_CHARS = 4096
#: Code points kept in one cell (a base character plus combining/zero-width ones).
_MAX_CELL_CODEPOINTS = 16

_ALTERNATE_SCREEN_MODES = frozenset({47, 1047, 1049})
_DECCOLM_PRIVATE = 3
_BRACKETED_PASTE = 2004 << 5  # pyte stores private modes shifted left by five bits

#: Events after which xterm no longer has a wrap pending at the right margin.
_CANCEL_PENDING_WRAP = frozenset(
    {
        "alignment_display",
        "backspace",
        "carriage_return",
        "clear_tab_stop",
        "cursor_back",
        "cursor_down",
        "cursor_down1",
        "cursor_forward",
        "cursor_position",
        "cursor_to_column",
        "cursor_to_line",
        "cursor_up",
        "cursor_up1",
        "delete_characters",
        "delete_lines",
        "erase_characters",
        "erase_in_display",
        "erase_in_line",
        "index",
        "insert_characters",
        "insert_lines",
        "linefeed",
        "report_device_status",
        "reverse_index",
        "set_margins",
        "set_tab_stop",
        "tab",
    }
)

# What readline shows instead of the prompt while searching or reading a numeric argument
# (readline's isearch.c and rl_message("(arg: %d) ")); Enter accepts the displayed line.
_ISEARCH_RE = re.compile(r"\((?:failed )?(?:reverse-)?i-search\)`")
_ARGUMENT_RE = re.compile(r"\(arg: -?\d+\) ")


class Position(NamedTuple):
    """A cell on the screen, zero-based."""

    row: int
    column: int


@attrs.frozen
class InputLine:
    """The input line read from the screen.

    ``certain`` is false when the screen alone cannot vouch for ``text`` (the prompt was
    overwritten or scrolled away, the screen was resized narrower than the line, a full-screen
    program is showing, ...). ``reason`` then says why, in one line, for the reviewer or the
    gate's fallback to the keystroke model.
    """

    text: str
    certain: bool
    reason: str | None = None


class _Row(StaticDefaultDict):  # type: ignore[type-arg]
    """A screen row that remembers where autowrap carried its text onto the next row.

    ``wrapped_at`` is 0 when the row did not wrap, else the number of columns holding the text
    that continues (the width at the time, or one less when a wide character did not fit).
    Keeping it on the row object means it moves with the row when pyte or we scroll.
    """

    wrapped_at: int = 0


@attrs.define
class _Mark:
    """Where the input line starts, tracked through scrolls."""

    row: int  # may be negative once the start scrolled off the top
    col: int
    alternate: bool  # which buffer the mark belongs to
    prompt: str  # what the row showed left of the mark, to find the prompt again
    #: cells and ``wrapped_at`` of rows from ``row`` upward that have left the screen; the
    #: cells as one string when all are ASCII (a list costs ~5x more memory)
    scrolled: list[tuple[list[str] | str, int]] = attrs.Factory(list)
    row_count_off: int = 0  # rows from ``row`` on that have left the screen
    above_done: bool = False  # the logical line ended in a row that has left the screen
    cleared: bool = False  # the screen was erased; find the prompt again
    broken: str | None = None  # why the position can no longer be trusted


# No character below U+1100 is double width: wcwidth() is asked about the others only.
_FIRST_WIDE = "\u1100"


def _cell_texts(row: _Row | None, columns: int) -> list[str]:
    """One string per column: what that cell shows ("" for the right half of a wide char)."""
    if not row:
        return [" "] * columns
    if row.default.data != " ":
        return _cell_texts_by_column(row, columns)
    # Only the cells the row holds: the request's screen context renders
    # every row, and most cells of a row are never written.
    out = [" "] * columns
    for x, char in row.items():
        if 0 <= x < columns:
            out[x] = char.data
    text = "".join(out)
    if len(text) == columns and text.isascii():
        return out  # one character per cell, none wide and no stubs
    out = [" "] * columns
    wide_at = -2  # the column of the last double-width character
    for x, char in sorted(row.items()):
        if x >= columns:
            break
        if x < 0:
            continue
        data = char.data
        if not data:  # pyte's stub after a wide character
            out[x] = "" if wide_at == x - 1 else " "
            continue
        out[x] = data
        if data[0] >= _FIRST_WIDE and wcwidth(data[0]) == 2:
            wide_at = x
    return out


def _cell_texts_by_column(row: _Row, columns: int) -> list[str]:
    """L{_cell_texts} reading every column, for a row whose blank is not a space."""
    out: list[str] = []
    previous_wide = False
    for x in range(columns):
        data = row[x].data
        if not data:
            out.append("" if previous_wide else " ")
            previous_wide = False
            continue
        out.append(data)
        previous_wide = wcwidth(data[0]) == 2
    return out


# Cells are immutable (a character and its style), so equal cells are shared:
# a pyte cell is a 9-field tuple, and one per character written made a full
# 80x24 screen ~250 KiB, the whole per-session memory budget.  Shared by all
# screens of the process; bounded, and emptied when full (nothing depends on
# a cell's identity, so a cell made again is just another equal tuple).
_CELLS_BY_STYLE: dict[tuple, dict[str, Char]] = {}
_MAX_STYLES = 256
_MAX_CELLS_PER_STYLE = 4096


def _interned_cells(style: tuple) -> dict[str, Char]:
    cells = _CELLS_BY_STYLE.get(style)
    if cells is None:
        if len(_CELLS_BY_STYLE) >= _MAX_STYLES:
            _CELLS_BY_STYLE.clear()
        cells = _CELLS_BY_STYLE[style] = {}
    return cells


def _intern_cell(cells: dict[str, Char], char: str, style: tuple) -> Char:
    if len(cells) >= _MAX_CELLS_PER_STYLE:
        cells.clear()
    # tuple.__new__: ``attrs._replace(data=...)`` per character was the hot spot.
    cell = cells[char] = tuple.__new__(Char, (char, *style))
    return cell


class _Terminal(pyte.Screen):
    """``pyte.Screen`` with xterm's behaviour where it matters for reading the input line."""

    def __init__(self, columns: int, lines: int) -> None:
        self.alternate = False
        self.mark: _Mark | None = None
        self.ignored_events = 0
        self._alt_saved_cursor: pyte.screens.Cursor | None = None
        super().__init__(columns, lines)
        self.buffer = self._new_buffer()
        self.other_buffer = self._new_buffer()

    def _new_buffer(self) -> defaultdict[int, _Row]:
        return defaultdict(lambda: _Row(self.default_char))

    # -- pending wrap --------------------------------------------------------------------

    def cancel_pending_wrap(self) -> None:
        """After a full row the cursor sits past the last column; xterm forgets that on any
        cursor movement or erase, pyte does not (and then wraps twice)."""
        if self.cursor.x >= self.columns:
            self.cursor.x = self.columns - 1

    # -- drawing -------------------------------------------------------------------------

    def draw(self, data: str) -> None:
        """Draw text like xterm: skip what cannot be displayed, keep going after it."""
        cursor = self.cursor
        columns = self.columns
        autowrap = mo.DECAWM in self.mode
        insert = mo.IRM in self.mode
        style = tuple(cursor.attrs)[1:]
        cells = _interned_cells(style)
        row = self.buffer[cursor.y]
        for char in data:
            width = 1 if " " <= char <= "~" else wcwidth(char)
            if width < 0:
                continue  # a control character: a terminal shows nothing
            if width == 0:
                self._combine(char)
                continue
            if cursor.x + width > columns and cursor.x > 0:
                if autowrap:
                    row.wrapped_at = min(cursor.x, columns)
                    cursor.x = 0
                    self.index()
                    row = self.buffer[cursor.y]
                else:
                    cursor.x = max(0, columns - width)
            x = cursor.x
            if insert:
                self.insert_characters(width)
            old = row.get(x)
            if old is not None and (not old.data or old.data[0] > "~") or width == 2:
                self._clear_wide_remnants(row, x, width)
            cell = cells.get(char)
            if cell is None:
                cell = _intern_cell(cells, char, style)
            row[x] = cell
            if width == 2 and x + 1 < columns:
                stub = cells.get("")
                row[x + 1] = stub if stub is not None else _intern_cell(cells, "", style)
            cursor.x = min(x + width, columns)
        self.dirty.add(cursor.y)

    def _clear_wide_remnants(self, row: _Row, x: int, width: int) -> None:
        """Overwriting half of a wide character blanks its other half, as xterm does."""
        blank = self.cursor.attrs._replace(data=" ")
        if x > 0 and x in row and row[x].data == "":  # right half of a wide character
            left = row[x - 1].data
            if left and wcwidth(left[0]) == 2:
                row[x - 1] = blank
        end = x + width - 1  # last cell written
        if end in row and row[end].data and wcwidth(row[end].data[0]) == 2:
            if end + 1 < self.columns:
                row[end + 1] = blank

    def _combine(self, char: str) -> None:
        """Attach a zero-width character to the cell before the cursor so it is kept."""
        x, y = min(self.cursor.x, self.columns), self.cursor.y
        if x > 0:
            row = self.buffer[y]
            x -= 1
            if x > 0 and row[x].data == "":
                x -= 1
        elif y > 0 and self.buffer[y - 1].wrapped_at:
            row = self.buffer[y - 1]
            x = row.wrapped_at - 1
            if x > 0 and row[x].data == "":
                x -= 1
        else:
            return
        cell = row[x]
        if len(cell.data) < _MAX_CELL_CODEPOINTS:
            row[x] = cell._replace(data=cell.data + char)

    # -- rows moving: scrolls, insert/delete lines ---------------------------------------

    def _shift_rows(self, first: int, last: int, delta: int) -> None:
        """Move rows ``first..last`` by ``delta`` (negative: up), blank rows coming in.

        pyte's versions skip rows that were never touched and leave stale text behind.
        """
        buffer = self.buffer
        rows = [buffer.pop(y, None) for y in range(first, last + 1)]
        k = min(abs(delta), len(rows))
        if delta < 0:
            rows = rows[k:] + [None] * k
        else:
            rows = [None] * k + rows[: len(rows) - k]
        for offset, row in enumerate(rows):
            if row is not None:
                buffer[first + offset] = row
        self.dirty.update(range(first, last + 1))

    def _tracked_mark(self) -> _Mark | None:
        mark = self.mark
        if mark is None or mark.alternate != self.alternate or mark.broken or mark.cleared:
            return None
        return mark

    def _capture_top_row(self, mark: _Mark) -> None:
        """Row 0 is leaving the screen with the input line (or its start) on it: keep it.

        Rows after the first logical line are kept too, as long as there is room: they may be
        later lines of a multi-line input (a paste). Past the bound they are lost, and reading
        them says so.
        """
        if len(mark.scrolled) >= MAX_SCROLLED_INPUT_ROWS:
            if not mark.above_done:
                mark.broken = "the start of the input line scrolled too far off the screen"
                return
        elif len(mark.scrolled) == mark.row_count_off:
            row = self.buffer.get(0)
            wrapped = row.wrapped_at if row is not None else 0
            cells = _cell_texts(row, self.columns)
            text = "".join(cells)
            simple = text.isascii() and len(text) == len(cells)  # one character per cell
            mark.scrolled.append((text if simple else cells, wrapped))
            if not wrapped:
                mark.above_done = True
        mark.row_count_off += 1
        mark.row -= 1

    def _track_scroll_up(self, top: int, bottom: int) -> None:
        mark = self._tracked_mark()
        if mark is None:
            return
        if top == 0 and mark.row <= 0:
            self._capture_top_row(mark)
        elif top <= mark.row <= bottom:
            if mark.row == top:
                mark.broken = "the prompt scrolled out of the scrolling region"
            else:
                mark.row -= 1

    def _track_rows_moved_down(self, first: int, last: int, count: int) -> None:
        mark = self._tracked_mark()
        if mark is None:
            return
        if first == 0 and mark.row < 0 and not mark.above_done:
            mark.broken = "rows were inserted inside the input line"
        elif first <= mark.row <= last:
            mark.row += count
            if mark.row > last:
                mark.broken = "the prompt was pushed off the screen"

    def _track_rows_deleted(self, first: int, last: int, count: int) -> None:
        mark = self._tracked_mark()
        if mark is None:
            return
        if first == 0 and mark.row < 0 and not mark.above_done:
            mark.broken = "rows of the input line were deleted"
        elif first <= mark.row <= last:
            if mark.row < first + count:
                mark.broken = "the prompt row was deleted"
            else:
                mark.row -= count

    def index(self) -> None:
        """Line feed without carriage return; scrolls at the bottom margin (tracked)."""
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == bottom:
            self._track_scroll_up(top, bottom)
            self._shift_rows(top, bottom, -1)
        elif self.cursor.y < self.lines - 1:
            self.cursor.y += 1

    def reverse_index(self) -> None:
        """Reverse line feed; scrolls down at the top margin (tracked)."""
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == top:
            self._track_rows_moved_down(top, bottom, 1)
            self._shift_rows(top, bottom, 1)
        elif self.cursor.y > 0:
            self.cursor.y -= 1

    def cursor_up(self, count: int | None = None) -> None:
        """Stop at the top margin only from inside the region (pyte jumps into it)."""
        top = self.margins.top if self.margins and self.cursor.y >= self.margins.top else 0
        self.cursor.y = max(self.cursor.y - (count or 1), top)

    def cursor_down(self, count: int | None = None) -> None:
        """Stop at the bottom margin only from inside the region (pyte jumps into it)."""
        if self.margins and self.cursor.y <= self.margins.bottom:
            bottom = self.margins.bottom
        else:
            bottom = self.lines - 1
        self.cursor.y = min(self.cursor.y + (count or 1), bottom)

    def insert_lines(self, count: int | None = None) -> None:
        count = count or 1
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if top <= self.cursor.y <= bottom:
            self._track_rows_moved_down(self.cursor.y, bottom, count)
            self._shift_rows(self.cursor.y, bottom, count)
            self.carriage_return()

    def delete_lines(self, count: int | None = None) -> None:
        count = count or 1
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if top <= self.cursor.y <= bottom:
            self._track_rows_deleted(self.cursor.y, bottom, count)
            self._shift_rows(self.cursor.y, bottom, -count)
            self.carriage_return()

    def insert_characters(self, count: int | None = None) -> None:
        """ICH; pyte's version writes a cell one past the last column."""
        count = count or 1
        row = self.buffer[self.cursor.y]
        start = self.cursor.x
        for x in range(self.columns - 1, start - 1, -1):
            source = x - count
            if source >= start and source in row:
                row[x] = row[source]
            else:
                row.pop(x, None)
        self.dirty.add(self.cursor.y)

    # -- erasing -------------------------------------------------------------------------

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        """Also forget a row's wrap when the whole row is erased.

        readline never leaves a partial row in the middle of a line, and it moves between
        rows with CR/LF after erasing, so a stale flag joins blank cells at worst, whereas a
        flag lost too early would cut the line short: only a full-row erase ends it.
        """
        if how not in (0, 1, 2):
            return
        super().erase_in_line(how, private)
        x = self.cursor.x
        if how == 2 or (how == 0 and x == 0) or (how == 1 and x >= self.columns - 1):
            row = self.buffer.get(self.cursor.y)
            if row is not None:
                row.wrapped_at = 0

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        """ED 3 erases only xterm's scrollback; ED 2 means the prompt will be redrawn."""
        if how not in (0, 1, 2):
            return
        super().erase_in_display(how, *args, **kwargs)
        rows = {0: range(self.cursor.y + 1, self.lines), 1: range(self.cursor.y)}.get(
            how, range(self.lines)
        )
        for y in rows:
            row = self.buffer.get(y)
            if row is not None:
                row.wrapped_at = 0
        mark = self._tracked_mark()
        if how == 2 and mark is not None:
            mark.cleared = True

    # -- modes ---------------------------------------------------------------------------

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        self._switch_modes(True, modes, kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        self._switch_modes(False, modes, kwargs)

    def _switch_modes(self, on: bool, modes: tuple[int, ...], kwargs: dict[str, Any]) -> None:
        """Filter modes pyte mishandles, and implement the alternate screen."""
        if kwargs.get("private"):
            keep = []
            for mode in modes:
                if mode in _ALTERNATE_SCREEN_MODES:
                    if on:
                        self._enter_alternate(mode)
                    else:
                        self._leave_alternate(mode)
                elif mode != _DECCOLM_PRIVATE:
                    keep.append(mode)
        else:
            # Real ANSI modes are small; bigger numbers collide with pyte's shifted ones.
            keep = [mode for mode in modes if 0 < mode < 32]
        if keep:
            handler = super().set_mode if on else super().reset_mode
            handler(*keep, **kwargs)

    def _enter_alternate(self, mode: int) -> None:
        if self.alternate:
            return
        if mode == 1049:
            self._alt_saved_cursor = copy.copy(self.cursor)
        self.buffer, self.other_buffer = self.other_buffer, self.buffer
        self.alternate = True
        if mode == 1049:
            self.buffer.clear()
            self._alternate_cleared()
        self.dirty.update(range(self.lines))

    def _leave_alternate(self, mode: int) -> None:
        if not self.alternate:
            return
        if mode == 1047:
            self.buffer.clear()
            self._alternate_cleared()
        self.buffer, self.other_buffer = self.other_buffer, self.buffer
        self.alternate = False
        if mode == 1049 and self._alt_saved_cursor is not None:
            self.cursor = self._alt_saved_cursor
            self._alt_saved_cursor = None
            self.ensure_hbounds()
            self.ensure_vbounds()
        self.dirty.update(range(self.lines))

    def _alternate_cleared(self) -> None:
        if self.mark is not None and self.mark.alternate:
            self.mark.broken = "the alternate screen holding the input line was cleared"

    # -- cursor save/restore -------------------------------------------------------------

    def save_cursor(self) -> None:
        """xterm keeps one saved cursor; pyte's list would grow with every ``ESC 7``."""
        super().save_cursor()
        del self.savepoints[:-1]

    def restore_cursor(self) -> None:
        """xterm can restore the same saved cursor twice; pyte pops it."""
        if not self.savepoints:
            super().restore_cursor()
            return
        savepoint = self.savepoints[-1]
        super().restore_cursor()
        self.cursor = copy.copy(self.cursor)
        self.savepoints.append(savepoint)

    def reset(self) -> None:
        """RIS: back to the main screen, everything erased, the prompt will be redrawn."""
        if getattr(self, "alternate", False):
            self.buffer, self.other_buffer = self.other_buffer, self.buffer
            self.other_buffer.clear()
            self.alternate = False
        super().reset()
        if self.mark is not None:
            if self.mark.alternate:
                self.mark.broken = "the terminal was reset"
            else:
                self.mark.cleared = True

    # -- size ----------------------------------------------------------------------------

    def resize_to(self, columns: int, lines: int) -> None:
        """Resize like xterm (no reflow): rows below the cursor go first, then rows at the top
        scroll away (tracked). Rows keep ``wrapped_at`` so a narrowed line is known cut."""
        columns = max(1, min(columns, MAX_COLUMNS))
        lines = max(1, min(lines, MAX_LINES))
        if (columns, lines) == (self.columns, self.lines):
            return
        self.cancel_pending_wrap()
        if lines < self.lines:
            excess = self.lines - lines
            from_top = max(0, excess - (self.lines - 1 - self.cursor.y))
            for _ in range(from_top):  # exactly like scrolling, so the mark follows
                self._track_scroll_up(0, self.lines - 1)
                self._shift_rows(0, self.lines - 1, -1)
            self.cursor.y -= from_top
            for buffer in (self.buffer, self.other_buffer):
                for y in [y for y in buffer if y >= lines]:
                    del buffer[y]
            mark = self.mark
            if mark is not None and not mark.broken and not mark.cleared and mark.row >= lines:
                mark.broken = "the prompt row was dropped by a resize"
        if columns < self.columns:
            for buffer in (self.buffer, self.other_buffer):
                for row in buffer.values():
                    for x in [x for x in row if x >= columns]:
                        del row[x]
            self.tabstops = {stop for stop in self.tabstops if stop < columns}
        elif columns > self.columns:
            self.tabstops.update(range(8 * (self.columns // 8 + 1), columns, 8))
        self.lines, self.columns = lines, columns
        self.margins = None
        self.cursor.x = min(self.cursor.x, columns - 1)
        self.cursor.y = max(0, min(self.cursor.y, lines - 1))
        for savepoint in self.savepoints:
            savepoint.cursor.x = min(savepoint.cursor.x, columns - 1)
            savepoint.cursor.y = min(savepoint.cursor.y, lines - 1)
        self.dirty.update(range(lines))

    # -- pyte hooks that must stay silent ------------------------------------------------

    def write_process_input(self, data: str) -> None:
        """Never answer the target: the operator's own terminal answers its queries."""


class _GuardedListener:
    """What the pyte stream dispatches to: every event guarded, pending wrap cancelled first.

    A handler that raises would reset pyte's parser and drop the rest of the chunk; a bad
    sequence is ignored instead, as a terminal ignores it.
    """

    def __init__(self, terminal: _Terminal) -> None:
        for event in pyte.Stream.events:
            setattr(self, event, self._guard(terminal, event))

    @staticmethod
    def _guard(terminal: _Terminal, event: str) -> Callable[..., None]:
        handler = getattr(terminal, event)
        cancel = terminal.cancel_pending_wrap if event in _CANCEL_PENDING_WRAP else None

        def call(*args: Any, **kwargs: Any) -> None:
            try:
                if cancel is not None:
                    cancel()
                handler(*args, **kwargs)
            except Exception:
                terminal.ignored_events += 1

        return call


_GROUND, _ESC, _ESC_ONE, _CSI, _CSI_DOLLAR, _OSC_CODE, _OSC, _OSC_ESC = range(8)
_GROUND_SPECIAL = re.compile("[\x1b\x9b\x9d]")
_CSI_NEUTRAL = frozenset("?> \x07\x08\t\n\x0b\x0c\r")


class _SequenceLimiter:
    """Bound the escape sequences pyte's parser accumulates, mirroring its state machine.

    pyte collects CSI digits and ``;``-separated parameters and OSC strings until a final
    character, with no limit, and ``int()`` of a non-ASCII digit (``²``) or of more than 4300
    digits raises. Characters past the limits are dropped; the sequence still ends where pyte
    would end it, so what follows is drawn as before.
    """

    def __init__(self) -> None:
        self._state = _GROUND
        self._digits = 0
        self._params = 0
        self._osc = 0

    def filter(self, text: str) -> str:
        out: list[str] = []
        append = out.append
        i, n = 0, len(text)
        while i < n:
            state = self._state
            if state == _GROUND:
                found = _GROUND_SPECIAL.search(text, i)
                if found is None:
                    append(text[i:])
                    break
                j = found.start()
                append(text[i : j + 1])
                i = j + 1
                char = text[j]
                if char == "\x1b":
                    self._state = _ESC
                elif char == "\x9b":
                    self._enter_csi()
                else:
                    self._state = _OSC_CODE
                continue
            char = text[i]
            i += 1
            if state == _ESC:
                append(char)
                if char == "[":
                    self._enter_csi()
                elif char == "]":
                    self._state = _OSC_CODE
                elif char in "#%()":
                    self._state = _ESC_ONE
                else:
                    self._state = _GROUND
            elif state == _CSI:
                if "0" <= char <= "9":
                    if self._digits < _MAX_PARAM_DIGITS:
                        append(char)
                        self._digits += 1
                elif char == ";":
                    if self._params < _MAX_CSI_PARAMS:
                        append(char)
                        self._params += 1
                        self._digits = 0
                elif char.isdigit():
                    pass  # pyte would call int() on it and raise
                elif char in _CSI_NEUTRAL:
                    append(char)
                elif char == "$":
                    append(char)
                    self._state = _CSI_DOLLAR
                else:
                    append(char)
                    self._state = _GROUND
            elif state == _OSC:
                if char == "\x1b":
                    self._state = _OSC_ESC  # held: pyte pairs it with the next character
                elif char in "\x07\x9c":
                    append(char)
                    self._state = _GROUND
                elif self._osc < _MAX_OSC_CHARS:
                    append(char)
                    self._osc += 1
            elif state == _OSC_ESC:
                if char == "\\":
                    append("\x1b\\")
                    self._state = _GROUND
                else:
                    if self._osc < _MAX_OSC_CHARS:
                        append("\x1b" + char)
                        self._osc += 2
                    self._state = _OSC
            elif state == _OSC_CODE:
                append(char)
                if char in "RP":
                    self._state = _GROUND
                else:
                    self._state = _OSC
                    self._osc = 0
            else:  # _ESC_ONE, _CSI_DOLLAR: pyte consumes exactly one more character
                append(char)
                self._state = _GROUND
        return "".join(out)

    def _enter_csi(self) -> None:
        self._state = _CSI
        self._digits = 0
        self._params = 0


@attrs.frozen
class _Span:
    """Text read from a start cell along soft-wrapped rows."""

    text: str
    last_row: int
    problem: str | None


class Screen:
    """The target's terminal as the operator sees it, to read the line that Enter will run.

    Sans-IO: :meth:`feed` takes bytes as they come (any split, UTF-8 decoded incrementally,
    invalid bytes replaced), nothing is written anywhere. Never raises on what the target
    prints, and memory stays bounded: no scrollback is kept except the rows of the current
    input line that have scrolled off the top (at most ``MAX_SCROLLED_INPUT_ROWS``).
    """

    def __init__(self, columns: int, lines: int) -> None:
        self._term = _Terminal(max(1, min(columns, MAX_COLUMNS)), max(1, min(lines, MAX_LINES)))
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._limiter = _SequenceLimiter()
        self._stream = pyte.Stream(_GuardedListener(self._term))

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Process bytes the target printed."""
        text = self._decoder.decode(bytes(data))
        if not text:
            return
        try:
            self._stream.feed(self._limiter.filter(text))
        except Exception:  # pyte's parser resets itself; the rest of this chunk is lost
            self._term.ignored_events += 1

    def resize(self, columns: int, lines: int) -> None:
        """Follow a window-change of the operator's terminal (clamped to sane bounds)."""
        self._term.resize_to(columns, lines)

    # -- state ---------------------------------------------------------------------------

    @property
    def columns(self) -> int:
        return self._term.columns

    @property
    def lines(self) -> int:
        return self._term.lines

    @property
    def cursor(self) -> Position:
        """Where the cursor is (a pending wrap shows as the last column, as in xterm)."""
        term = self._term
        return Position(term.cursor.y, min(term.cursor.x, term.columns - 1))

    @property
    def in_alternate_screen(self) -> bool:
        """True while a full-screen program uses the alternate screen (modes 47/1047/1049)."""
        return self._term.alternate

    @property
    def bracketed_paste_enabled(self) -> bool:
        """Whether the target asked for pastes to be bracketed (mode 2004)."""
        return _BRACKETED_PASTE in self._term.mode

    @property
    def ignored_sequences(self) -> int:
        """How many malformed sequences were ignored (for diagnostics)."""
        return self._term.ignored_events

    def row_text(self, row: int) -> str:
        """One display row, trailing blanks stripped (a cheap L{last_screenful}()[row])."""
        term = self._term
        if not 0 <= row < term.lines:
            return ""
        return "".join(_cell_texts(term.buffer.get(row), term.columns)).rstrip()

    def last_screenful(self) -> list[str]:
        """The rows on display, trailing blanks stripped: context for reviewers."""
        term = self._term
        columns = term.columns
        rows = (term.buffer.get(y) for y in range(term.lines))
        # A row never written (or emptied) shows blanks only: "" without rendering it.
        return ["".join(_cell_texts(row, columns)).rstrip() if row else "" for row in rows]

    # -- the input line ------------------------------------------------------------------

    @property
    def mark(self) -> Position | None:
        """Where the current input line starts (row < 0: scrolled off the top), if known."""
        mark = self._term.mark
        if mark is None or mark.broken or mark.cleared:
            return None
        return Position(mark.row, mark.col)

    def mark_input_start(self) -> None:
        """Remember the cursor as the start of a new input line (the end of the prompt).

        Called when the first key of the line is sent to the target, so the cursor sits where
        the echo will appear. Wrap flags left from earlier output on this row and below are
        forgotten: from now on only autowrap of the input line sets them.
        """
        term = self._term
        x, y = term.cursor.x, term.cursor.y
        prompt = "".join(_cell_texts(term.buffer.get(y), term.columns)[:x])
        for row_index in range(y, term.lines):
            row = term.buffer.get(row_index)
            if row is not None:
                row.wrapped_at = 0
        term.mark = _Mark(row=y, col=x, alternate=term.alternate, prompt=prompt)

    def clear_mark(self) -> None:
        """Forget the input line (after it was submitted or abandoned)."""
        self._term.mark = None

    def input_line(self) -> str:
        """The input line as displayed (see :meth:`read_input_line`)."""
        return self.read_input_line().text

    def read_input_line(self) -> InputLine:
        """The input line as displayed, with whether the screen alone can vouch for it.

        The tracked mark is used while the cursor is inside the line it starts. When bash
        has redrawn the prompt elsewhere (Ctrl-L, a completion listing, a resize), the line
        holding the cursor is used if it starts with the same prompt. While readline shows
        ``(reverse-i-search)`...': `` or ``(arg: N) `` instead of the prompt, the line after
        it is returned, because that is what Enter accepts.

        A line that holds newlines (a multi-line paste, or such a line recalled from history)
        is displayed by readline as rows joined by hard newlines: each newline continues at
        column 0 of the next row. So the line read is its first logical line (the prompt row
        and the rows it soft-wraps onto) followed by every later logical line down to the
        cursor's row or the last row that is not blank, whichever is lower, joined with
        ``"\\n"``. Rows below a fresh prompt are blank, so this adds nothing to a one-line
        input; rows left on the screen below it are read too (more to review, never less).
        Trailing blanks of a row that does not hold the cursor cannot be told from blank
        cells and are dropped. Rows that scrolled off beyond ``MAX_SCROLLED_INPUT_ROWS``
        are missing from the text, which is then not vouched for.
        """
        term = self._term
        mark = term.mark
        if mark is None:
            return InputLine("", False, "no input line was marked")
        active = mark.alternate == term.alternate
        tracked = first = None
        if not mark.broken and not mark.cleared:
            tracked, first = self._read_block(mark, mark.row, active)
        if not active:
            if term.alternate:
                reason = "the alternate screen is in use"
            else:
                reason = "the input line was typed in the alternate screen, which is gone"
            if tracked is None:
                return InputLine("", False, mark.broken or reason)
            return InputLine(tracked.text, False, reason)
        cursor_row = term.cursor.y
        if tracked is not None and first is not None and mark.row <= cursor_row <= tracked.last_row:
            redrawn = self._redrawn_prompt_row(mark, first, cursor_row)
            if redrawn is None:
                return self._finish(tracked)
            self._move_mark(mark, redrawn)
            return self._finish(self._read_block(mark, redrawn, True)[0])
        found = self._find_prompt_row(mark)
        if found is not None:
            row, sure = found
            self._move_mark(mark, row)
            span = self._read_block(mark, row, True)[0]
            if not sure and span.problem is None:
                span = attrs.evolve(span, problem="the prompt was found above a hard newline")
            return self._finish(span)
        if tracked is not None:
            return InputLine(tracked.text, False, "the cursor is outside the tracked input line")
        if mark.broken:
            return InputLine("", False, mark.broken)
        return InputLine("", False, "the screen was cleared and the prompt was not found again")

    @staticmethod
    def _move_mark(mark: _Mark, row: int) -> None:
        mark.row, mark.scrolled, mark.above_done, mark.row_count_off = row, [], False, 0
        mark.cleared, mark.broken = False, None

    def _read_block(self, mark: _Mark, row_index: int, active: bool) -> tuple[_Span, _Span]:
        """The whole input from the prompt row ``row_index``, and its first logical line."""
        first = self._read_at(mark, row_index, active)
        last = self._block_end(first.last_row, active)
        parts, problem = [first.text], first.problem
        index = first.last_row + 1
        while index <= last:
            span = self._read_span(mark, index, 0, active)
            parts.append(span.text)
            problem = problem or span.problem
            index = max(span.last_row, index) + 1
        return _Span("\n".join(parts), max(first.last_row, index - 1), problem), first

    def _block_end(self, after: int, active: bool) -> int:
        """The last row of a multi-line input whose first logical line ends at row ``after``."""
        term = self._term
        last = term.cursor.y if active else after
        buffer = term.buffer if active else term.other_buffer
        for y in range(term.lines - 1, max(after, last), -1):
            row = buffer.get(y)
            if row and "".join(_cell_texts(row, term.columns)).strip():
                return y
        return max(after, last)

    def _logical_starts(self, first_row: int, last_row: int) -> list[int]:
        """Rows from ``first_row`` to ``last_row`` that do not continue a soft-wrapped row."""
        buffer = self._term.buffer
        out = []
        for y in range(max(0, first_row), last_row + 1):
            above = buffer.get(y - 1) if y > 0 else None
            if above is None or not above.wrapped_at:
                out.append(y)
        return out

    def _redrawn_prompt_row(self, mark: _Mark, first: _Span, cursor_row: int) -> int | None:
        """
        Below the first logical line and at or above the cursor: a row that starts like the
        prompt and reads as the old first line continued, where readline redrew prompt and
        line (after a completion listing). A later line of a multi-line input that merely
        starts like the prompt does not continue the first line, and is read as part of it.
        """
        for y in self._logical_starts(first.last_row + 1, cursor_row):
            if self._line_start(mark, y, True) is None:
                continue
            span = self._read_at(mark, y, True)
            if span.text.startswith(first.text):
                return y
        return None

    @staticmethod
    def _finish(span: _Span) -> InputLine:
        if span.problem:
            return InputLine(span.text, False, span.problem)
        return InputLine(span.text, True)

    def _virtual_row(self, mark: _Mark, index: int, active: bool) -> tuple[list[str], int] | None:
        """Cells and ``wrapped_at`` of row ``index``; negative rows come from the kept ones."""
        term = self._term
        if index < 0:
            k = index - mark.row
            if 0 <= k < len(mark.scrolled):
                cells, wrapped = mark.scrolled[k]
                return list(cells), wrapped
            return None
        if index >= term.lines:
            return None
        buffer = term.buffer if active else term.other_buffer
        row = buffer.get(index)
        return _cell_texts(row, term.columns), row.wrapped_at if row is not None else 0

    def _read_span(self, mark: _Mark, start_row: int, start_col: int, active: bool) -> _Span:
        """Read from a cell to the end of its logical line (following autowrap).

        Trailing blanks are dropped, but not left of the cursor: spaces typed before the
        cursor are text. Blank cells cannot be told from typed spaces right of the cursor.
        """
        term = self._term
        parts: list[str] = []
        problem: str | None = None
        keep = 0  # characters up to the cursor, kept even if blank
        index, col = start_row, start_col
        while True:
            got = self._virtual_row(mark, index, active)
            if got is None:
                problem = "part of the input line is no longer on the screen"
                index -= 1
                break
            cells, wrapped = got
            more = bool(wrapped) and index + 1 < term.lines
            end = min(wrapped, len(cells)) if more else len(cells)
            if more and wrapped > len(cells):
                problem = "the screen was narrowed and cut the input line"
            if active and index == term.cursor.y:
                done = sum(map(len, parts))
                keep = done + len("".join(cells[col : max(col, min(term.cursor.x, end))]))
            parts.append("".join(cells[col:end]))
            if not more:
                break
            index, col = index + 1, 0
        text = "".join(parts)
        text = text[:keep] + text[keep:].rstrip(" ")
        if start_row < 0 and problem is None:
            # readline cannot redraw what has left the screen, and neither can we verify it.
            problem = "the start of the input line has scrolled off the screen"
        return _Span(text, index, problem)

    def _line_start(self, mark: _Mark, row_index: int, active: bool) -> str | None:
        """What starts the row: ``"prompt"``, ``"message"`` (isearch/arg) or None."""
        got = self._virtual_row(mark, row_index, active)
        if got is None:
            return None
        cells = got[0]
        if "".join(cells[: mark.col]) == mark.prompt:
            return "prompt"
        head = "".join(cells)
        if _ISEARCH_RE.match(head) or _ARGUMENT_RE.match(head):
            return "message"
        return None

    def _read_at(self, mark: _Mark, row_index: int, active: bool) -> _Span:
        """Read the input line whose prompt row is ``row_index``."""
        kind = self._line_start(mark, row_index, active)
        if kind == "message":
            whole = self._read_span(mark, row_index, 0, active)
            parsed = _strip_message(whole.text)
            if parsed is not None:
                text, sure = parsed
                problem = whole.problem or (None if sure else "ambiguous search prompt")
                return _Span(text, whole.last_row, problem)
        span = self._read_span(mark, row_index, mark.col, active)
        if kind is None:
            return _Span(span.text, span.last_row, "the prompt was overwritten")
        if span.problem is None and mark.col and not mark.prompt.strip():
            return _Span(span.text, span.last_row, "no prompt was visible where the line started")
        return span

    def _find_prompt_row(self, mark: _Mark) -> tuple[int, bool] | None:
        """Where the prompt shows again, and whether that is sure.

        The topmost row of the logical line holding the cursor that starts like the prompt;
        else, for a multi-line input, the nearest such row above it across hard newlines,
        sure only when nothing is above it (the top row, or blank rows: a redraw after
        Ctrl-L), since a later line of the input may itself start like the prompt.
        """
        term = self._term
        if not mark.prompt.strip():
            return None  # a blank prompt would match any blank row
        top = term.cursor.y
        while top > 0:
            above = term.buffer.get(top - 1)
            if above is None or not above.wrapped_at:
                break
            top -= 1
        for row_index in range(top, term.cursor.y + 1):
            if self._line_start(mark, row_index, True) is not None:
                return row_index, True
        for row_index in reversed(self._logical_starts(0, top - 1)):
            if self._line_start(mark, row_index, True) is not None:
                above = "".join(r for y in range(row_index) if (r := self.row_text(y)))
                return row_index, not above
        return None


def _strip_message(line: str) -> tuple[str, bool] | None:
    """Split readline's search or argument prompt off a displayed line.

    Returns the line Enter would accept and whether the split was unambiguous. For
    ``(reverse-i-search)`QUERY': LINE`` the query may itself contain ``': ``; the first split
    with the longest query that occurs in the line is taken (a failed search may not occur).
    """
    found = _ISEARCH_RE.match(line)
    if found is not None:
        rest = line[found.end() :]
        splits = [m.start() for m in re.finditer("': ", rest)]
        if not splits:
            return None
        for split in reversed(splits):
            if rest[:split] in rest[split + 3 :]:
                return rest[split + 3 :], len(splits) == 1
        return rest[splits[0] + 3 :], len(splits) == 1
    found = _ARGUMENT_RE.match(line)
    if found is not None:
        return line[found.end() :], True
    return None
