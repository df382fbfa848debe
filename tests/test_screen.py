"""Tests for wraith_conch.interception.screen: hand-written byte streams, properties, real bash."""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.interception.screen import (
    MAX_SCROLLED_INPUT_ROWS,
    InputLine,
    Position,
    Screen,
)


def typed(screen: Screen, prompt: bytes, *echo: bytes) -> Screen:
    """Feed a prompt, mark the input start as the gateway does, then feed the echo."""
    screen.feed(prompt)
    screen.mark_input_start()
    for chunk in echo:
        screen.feed(chunk)
    return screen


def readline_echo(text: str, prompt_width: int, columns: int) -> bytes:
    """What readline prints when ``text`` arrives in one read: at each right margin it prints
    the next character (which autowraps), then ``\\r`` and prints that character again."""
    out = []
    x = prompt_width
    for char in text:
        out.append(char)
        x += 1
        if x == columns + 1:
            out.append("\r" + char)
            x = 1
    return "".join(out).encode()


class EchoTests(SynchronousTestCase):
    """The basics: a prompt, then the echo of typed characters."""

    def test_prompt_then_echo(self) -> None:
        screen = typed(Screen(80, 24), b"\x1b[?2004h$ ", b"echo hello")
        self.assertEqual(screen.input_line(), "echo hello")
        self.assertEqual(screen.read_input_line(), InputLine("echo hello", True))
        self.assertEqual(screen.cursor, Position(0, 12))
        self.assertEqual(screen.mark, Position(0, 2))

    def test_prompt_is_not_part_of_the_line(self) -> None:
        screen = typed(Screen(80, 24), b"user@host:~/src$ ", b"make")
        self.assertEqual(screen.input_line(), "make")

    def test_prompt_below_earlier_output(self) -> None:
        screen = typed(Screen(80, 24), b"$ ls\r\na  b  c\r\n$ ", b"rm a")
        self.assertEqual(screen.input_line(), "rm a")
        self.assertEqual(screen.mark, Position(2, 2))

    def test_backspace_echo(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"echo hellp", b"\x08 \x08", b"o")
        self.assertEqual(screen.input_line(), "echo hello")

    def test_erase_to_end_of_line(self) -> None:
        """Ctrl-K: readline erases with ESC[K from the cursor."""
        screen = typed(Screen(80, 24), b"$ ", b"echo hello world", b"\x1b[6D", b"\x1b[K")
        self.assertEqual(screen.input_line(), "echo hello")

    def test_left_arrow_and_insert(self) -> None:
        """Insertion in the middle: readline uses ICH (ESC[1@) then the character."""
        screen = typed(Screen(80, 24), b"$ ", b"echo helo", b"\x08", b"\x1b[1@l")
        self.assertEqual(screen.input_line(), "echo hello")
        self.assertEqual(screen.cursor, Position(0, 11))

    def test_spaces_before_the_cursor_are_kept(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"echo a\\ ")
        self.assertEqual(screen.input_line(), "echo a\\ ")

    def test_blank_cells_right_of_the_cursor_are_dropped(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"echo hi   ", b"\x08\x08\x08")
        self.assertEqual(screen.input_line(), "echo hi")

    def test_no_mark(self) -> None:
        screen = Screen(80, 24)
        screen.feed(b"$ ls")
        self.assertEqual(screen.read_input_line(), InputLine("", False, "no input line was marked"))
        screen.mark_input_start()
        screen.clear_mark()
        self.assertIsNone(screen.mark)
        self.assertEqual(screen.input_line(), "")

    def test_control_characters_do_not_hide_the_rest(self) -> None:
        """pyte stops drawing at the first unprintable character of a chunk."""
        screen = typed(Screen(80, 24), b"$ ", b"rm x\x01; evil")
        self.assertEqual(screen.input_line(), "rm x; evil")

    def test_zero_width_characters_are_kept(self) -> None:
        """pyte drops everything after a zero-width space; a reviewer must see it all."""
        screen = typed(Screen(80, 24), b"$ ", "rm x\u200b; evil".encode())
        self.assertEqual(screen.input_line(), "rm x\u200b; evil")

    def test_combining_characters_join_their_base(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", "echo e\u0301t\u00e9".encode())
        self.assertEqual(screen.input_line(), "echo e\u0301t\u00e9")
        self.assertEqual(screen.cursor, Position(0, 10))


class RedrawTests(SynchronousTestCase):
    """bash redraws the line for history, search, completion and clear-screen."""

    def test_history_recall_rewrites_from_the_prompt(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"ls -la --color", b"\r$ echo hi\x1b[K")
        self.assertEqual(screen.input_line(), "echo hi")

    def test_history_recall_rewrites_only_the_difference(self) -> None:
        """readline prints from the first differing column and erases the rest."""
        screen = typed(Screen(80, 24), b"$ ", b"echo hello world", b"\x08" * 11 + b"hi\x1b[K")
        self.assertEqual(screen.input_line(), "echo hi")

    def test_history_recall_of_a_longer_line(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"ls", b"\x08\x08echo hello")
        self.assertEqual(screen.input_line(), "echo hello")

    def test_reverse_search_prompt(self) -> None:
        """Enter during Ctrl-R accepts the line shown after the search prompt."""
        screen = typed(
            Screen(80, 24),
            b"$ ",
            b"ec",
            b"\r(reverse-i-search)`': \x08\x08\x08ec': echo hello\x1b[K",
        )
        self.assertEqual(screen.read_input_line(), InputLine("echo hello", True))

    def test_failed_reverse_search(self) -> None:
        screen = typed(
            Screen(80, 24),
            b"$ ",
            b"\r(reverse-i-search)`': ",
            b"\r(failed reverse-i-search)`zz': echo hello",
        )
        self.assertEqual(screen.input_line(), "echo hello")

    def test_search_query_containing_the_separator(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"\r(reverse-i-search)`a': b': echo a': b")
        self.assertEqual(
            screen.read_input_line(), InputLine("echo a': b", False, "ambiguous search prompt")
        )

    def test_numeric_argument_prompt(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"ls", b"\r(arg: 4) ls\x1b[K")
        self.assertEqual(screen.input_line(), "ls")

    def test_overwritten_prompt_is_not_trusted(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"ls", b"\rXYZls")
        self.assertEqual(
            screen.read_input_line(), InputLine("Zls", False, "the prompt was overwritten")
        )

    def test_clear_screen_finds_the_prompt_again(self) -> None:
        """Ctrl-L: bash clears the screen and redraws the prompt and line at the top."""
        screen = typed(Screen(80, 24), b"$ ls\r\nfile\r\n$ ", b"echo hi", b"\x1b[H\x1b[2J$ echo hi")
        self.assertEqual(screen.read_input_line(), InputLine("echo hi", True))
        self.assertEqual(screen.mark, Position(0, 2))
        screen.feed(b"!")
        self.assertEqual(screen.input_line(), "echo hi!")

    def test_completion_listing_moves_the_line_down(self) -> None:
        """Tab Tab: bash lists candidates and redraws prompt and line below them."""
        screen = typed(
            Screen(80, 24),
            b"$ ",
            b"ls d/",
            b"\x07\r\nalpha1  alpha2  beta    \r\n$ ls d/",
            b"al",
        )
        self.assertEqual(screen.read_input_line(), InputLine("ls d/al", True))
        self.assertEqual(screen.mark, Position(2, 2))

    def test_output_interleaved_with_typing_is_not_trusted(self) -> None:
        """
        Output rows below the start of the line read as later lines of a multi-line input
        (the screen cannot tell them from one): never less than the screen shows, so the
        gate's comparison with the keys typed ("echo hi") flags the line.
        """
        screen = typed(Screen(80, 24), b"$ ", b"ec", b"\r\nbackground output\r\n", b"ho hi")
        line = screen.read_input_line()
        self.assertEqual(line.text, "ec\nbackground output\nho hi")
        self.assertNotEqual(line.text, "echo hi")


class WrapTests(SynchronousTestCase):
    """Lines longer than the screen is wide, and scrolling while typing."""

    long_line = "echo " + "a" * 73 + "bcdefgh" + "x" * 80 + "yz" + " tail"  # 3 rows at 80

    def test_wrapped_line_across_three_rows(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", readline_echo(self.long_line, 2, 80))
        self.assertEqual(screen.read_input_line(), InputLine(self.long_line, True))
        self.assertEqual(screen.cursor, Position(2, len(self.long_line) + 2 - 160))
        rows = screen.last_screenful()
        self.assertEqual(rows[0], "$ " + self.long_line[:78])
        self.assertEqual(rows[1], self.long_line[78:158])

    def test_wrapped_line_fed_one_byte_at_a_time(self) -> None:
        screen = typed(Screen(80, 24), b"$ ")
        for byte in readline_echo(self.long_line, 2, 80):
            screen.feed(bytes([byte]))
        self.assertEqual(screen.input_line(), self.long_line)

    def test_insert_at_the_start_of_a_wrapped_line(self) -> None:
        """Bytes bash 5.2 printed for Ctrl-A, five Right arrows and Q on a 3-row line."""
        line = "echo " + "a" * 73 + "bcdefgh" + "x" * 80 + "yz"
        screen = typed(
            Screen(80, 24),
            b"$ ",
            readline_echo(line, 2, 80),
            b"\x1b[A\x1b[A\r$ ",
            b"echo ",
            b"Q\r\n\rabcdefgh\r\n\rxxxxxxx\x1b[1@x\x1b[A\x1b[A",
        )
        self.assertEqual(screen.read_input_line(), InputLine("echo Q" + line[5:], True))

    def test_line_ending_exactly_at_the_margin(self) -> None:
        """A full row leaves the cursor pending at the margin; the next key wraps."""
        line = "echo " + "z" * 73
        screen = typed(Screen(80, 24), b"$ ", line.encode())
        self.assertEqual(screen.input_line(), line)
        screen.feed(b" \r")  # readline forces the wrap with a space and CR
        self.assertEqual(screen.input_line(), line)
        screen.feed(b"q")
        self.assertEqual(screen.input_line(), line + "q")

    def test_space_at_the_end_of_a_full_row_is_text(self) -> None:
        line = "echo " + "z" * 72 + " "
        screen = typed(Screen(80, 24), b"$ ", line.encode(), b" \r")
        self.assertEqual(screen.input_line(), line)
        screen.feed(b"k")
        self.assertEqual(screen.input_line(), line + "k")

    def test_scroll_at_the_bottom_while_typing(self) -> None:
        screen = Screen(80, 5)
        screen.feed(b"one\r\ntwo\r\nthree\r\nfour\r\n")
        typed(screen, b"$ ", readline_echo(self.long_line, 2, 80))
        self.assertEqual(screen.mark, Position(2, 2))
        self.assertEqual(screen.read_input_line(), InputLine(self.long_line, True))
        self.assertEqual(screen.last_screenful()[:2], ["three", "four"])

    def test_line_taller_than_the_screen(self) -> None:
        """The start scrolls off: the rows are kept for the text, but not vouched for."""
        line = "echo " + "".join(chr(ord("a") + i % 26) for i in range(400))
        screen = typed(Screen(80, 3), b"$ ", readline_echo(line, 2, 80))
        self.assertEqual(screen.mark, Position(-3, 2))
        result = screen.read_input_line()
        self.assertEqual(result.text, line)
        self.assertFalse(result.certain)

    def test_scrolled_rows_are_bounded(self) -> None:
        screen = typed(Screen(10, 2), b"$ ", b"x" * (10 * (MAX_SCROLLED_INPUT_ROWS + 20)))
        result = screen.read_input_line()
        self.assertFalse(result.certain)
        self.assertIsNone(screen.mark)

    def test_output_after_the_line_scrolls_the_mark(self) -> None:
        screen = Screen(80, 4)
        typed(screen, b"$ ", b"make")
        screen.feed(b"\r\n" * 3)  # down to the last row
        self.assertEqual(screen.mark, Position(0, 2))
        screen.feed(b"\r\n" * 2)  # two scrolls
        self.assertEqual(screen.mark, Position(-2, 2))

    def test_scrolling_region(self) -> None:
        """Scrolls inside a DECSTBM region move only rows inside it."""
        screen = Screen(80, 6)
        screen.feed(b"\x1b[2;4r\x1b[5;1H")  # region rows 2-4, cursor below it
        typed(screen, b"$ ", b"ls")
        screen.feed(b"\x1b[4;1H\n\n")  # scroll the region twice
        self.assertEqual(screen.mark, Position(4, 2))
        self.assertEqual(screen.input_line(), "ls")

    def test_wrap_flags_of_old_output_are_forgotten_at_the_mark(self) -> None:
        screen = Screen(10, 5)
        screen.feed(b"0123456789abc\x1b[1;1H")  # row 0 wrapped into row 1, cursor back up
        typed(screen, b"$ ", b"ls")
        # Not joined to row 1 by the old wrap; row 1 is still read, as a later line.
        self.assertEqual(screen.input_line(), "ls456789\nabc")


def pasted(*lines: bytes) -> bytes:
    """How bash 5.2 echoes a paste: each line in reverse video, newlines as CR LF CR."""
    return b"\r\n\r".join(b"\x1b[7m" + line + b"\x1b[27m" if line else b"" for line in lines)


class MultiLineTests(SynchronousTestCase):
    """A line holding newlines: readline shows it on rows joined by hard newlines."""

    def test_two_lines(self) -> None:
        screen = typed(Screen(80, 24), b"P$ ", pasted(b"echo one", b"echo two"))
        self.assertEqual(screen.read_input_line(), InputLine("echo one\necho two", True))

    def test_trailing_newline_leaves_the_cursor_on_a_blank_row(self) -> None:
        screen = typed(Screen(80, 24), b"P$ ", pasted(b"echo one", b"echo two", b""))
        self.assertEqual(screen.cursor, Position(2, 0))
        self.assertEqual(screen.read_input_line(), InputLine("echo one\necho two\n", True))

    def test_blank_line_inside(self) -> None:
        screen = typed(Screen(80, 24), b"P$ ", pasted(b"echo a", b"", b"echo b"))
        self.assertEqual(screen.input_line(), "echo a\n\necho b")

    def test_cursor_on_any_row(self) -> None:
        """Ctrl-A (start of the whole line) and Left: every row is still read."""
        screen = typed(Screen(80, 24), b"P$ ", pasted(b"echo a", b"echo b", b"echo c"))
        screen.feed(b"\x1b[A\r\x1b[C\x1b[C")  # Left x4 from the end: row 1, column 2
        self.assertEqual(screen.cursor, Position(1, 2))
        self.assertEqual(screen.read_input_line(), InputLine("echo a\necho b\necho c", True))
        screen.feed(b"\x1b[A\r\x1b[C\x1b[C\x1b[C")  # Ctrl-A
        self.assertEqual(screen.read_input_line(), InputLine("echo a\necho b\necho c", True))

    def test_rows_left_below_are_read_too(self) -> None:
        """Never less than the screen shows: a line bash holds below the cursor is read."""
        screen = Screen(80, 24)
        screen.feed(b"\r\n" * 5 + b"rm -rf ~\x1b[H")
        typed(screen, b"P$ ", b"ls")
        self.assertEqual(screen.input_line(), "ls\n\n\n\n\nrm -rf ~")

    def test_soft_wrapped_line_inside(self) -> None:
        long = b"echo " + b"x" * 90
        screen = typed(Screen(40, 24), b"P$ ", readline_echo("ls", 3, 40), b"\r\n\r")
        screen.feed(readline_echo(long.decode(), 0, 40) + b"\r\n\rpwd")
        self.assertEqual(screen.read_input_line(), InputLine(f"ls\n{long.decode()}\npwd", True))

    def test_a_later_line_that_looks_like_the_prompt(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", pasted(b"$ ls", b"$ pwd"))
        self.assertEqual(screen.read_input_line(), InputLine("$ ls\n$ pwd", True))

    def test_scrolls_at_the_bottom(self) -> None:
        screen = Screen(80, 4)
        screen.feed(b"one\r\ntwo\r\n")
        typed(screen, b"P$ ", pasted(b"a", b"b", b"c", b""))
        self.assertEqual(screen.mark, Position(0, 3))
        self.assertEqual(screen.read_input_line(), InputLine("a\nb\nc\n", True))

    def test_taller_than_the_screen(self) -> None:
        """Rows that scrolled off are kept for the text, but not vouched for."""
        lines = [b"echo %d" % i for i in range(10)]
        screen = typed(Screen(80, 4), b"P$ ", pasted(*lines))
        self.assertEqual(screen.mark, Position(-6, 3))
        line = screen.read_input_line()
        self.assertEqual(line.text, b"\n".join(lines).decode())
        self.assertFalse(line.certain)

    def test_taller_than_the_screen_with_wide_characters(self) -> None:
        lines = [f"echo 日本 é\u0301 {i}" for i in range(8)]
        screen = typed(Screen(80, 3), b"P$ ", pasted(*(line.encode() for line in lines)))
        line = screen.read_input_line()
        self.assertEqual(line.text, "\n".join(lines))
        self.assertFalse(line.certain)

    def test_rows_lost_beyond_the_bound(self) -> None:
        lines = [b"echo %d" % i for i in range(MAX_SCROLLED_INPUT_ROWS + 10)]
        screen = typed(Screen(80, 4), b"P$ ", pasted(*lines))
        line = screen.read_input_line()
        self.assertFalse(line.certain)
        self.assertTrue(line.text.startswith("echo 0\necho 1\n"))
        self.assertTrue(line.text.endswith(f"echo {len(lines) - 1}"))
        self.assertNotIn(f"echo {MAX_SCROLLED_INPUT_ROWS + 2}\n", line.text)

    def test_clear_screen_redraw(self) -> None:
        """Ctrl-L with the cursor on the last row: the prompt is found at the top."""
        screen = typed(Screen(80, 24), b"out\r\nP$ ", pasted(b"echo a", b"echo b"))
        screen.feed(b"\x1b[H\x1b[2JP$ echo a\r\n\recho b")
        self.assertEqual(screen.read_input_line(), InputLine("echo a\necho b", True))
        self.assertEqual(screen.mark, Position(0, 3))

    def test_redraw_below_earlier_output_is_not_vouched_for(self) -> None:
        screen = typed(Screen(80, 24), b"P$ ", b"x")
        screen.feed(b"\x1b[2J\x1b[5;1Hjunk\r\nP$ echo a\r\n\recho b")
        line = screen.read_input_line()
        self.assertEqual(line.text, "echo a\necho b")
        self.assertFalse(line.certain)

    def test_completion_listing_redraws_below(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", pasted(b"cd /", b"ls d/"))
        screen.feed(b"\x07\r\nalpha1  alpha2\r\n$ cd /\r\n\rls d/al")
        self.assertEqual(screen.read_input_line(), InputLine("cd /\nls d/al", True))
        self.assertEqual(screen.mark, Position(3, 2))


class WideCharacterTests(SynchronousTestCase):
    def test_utf8_split_across_feeds(self) -> None:
        data = "echo héllo 日本語 ok".encode()
        screen = typed(Screen(80, 24), b"$ ")
        for i in range(len(data)):
            screen.feed(data[i : i + 1])
        self.assertEqual(screen.input_line(), "echo héllo 日本語 ok")
        self.assertEqual(screen.cursor, Position(0, 2 + 11 + 6 + 3))

    def test_invalid_utf8_is_replaced(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"echo \xff\xfe ok")
        self.assertEqual(screen.input_line(), "echo \ufffd\ufffd ok")

    def test_wide_characters_wrap_before_the_last_column(self) -> None:
        """A wide character that does not fit goes to the next row whole (xterm)."""
        screen = typed(Screen(10, 4), b"$ ", "echo 日本語".encode())
        self.assertEqual(screen.last_screenful()[:2], ["$ echo 日", "本語"])
        self.assertEqual(screen.input_line(), "echo 日本語")

    def test_overwriting_half_of_a_wide_character(self) -> None:
        """pyte leaves a stub cell that makes its own ``display`` raise IndexError."""
        screen = typed(Screen(10, 2), b"$ ", "日本".encode(), b"\rXYZ")
        self.assertEqual(screen.last_screenful()[0], "XYZ 本")

    def test_deleting_half_of_a_wide_character(self) -> None:
        screen = typed(Screen(20, 2), b"$ ", "a日本b".encode(), b"\x1b[4G\x1b[P")
        self.assertEqual(screen.last_screenful()[0], "$ a 本b")
        screen.feed(b"x")
        self.assertEqual(screen.last_screenful()[0], "$ ax本b")


class AlternateScreenTests(SynchronousTestCase):
    def enter_and_leave(self, enter: bytes, leave: bytes) -> Screen:
        screen = typed(Screen(80, 24), b"$ ", b"vim notes")
        self.assertFalse(screen.in_alternate_screen)
        screen.feed(enter + b"\x1b[H\x1b[2Jediting\r\n~\r\n~\x1b[24;1H\r\n\r\n")
        self.assertTrue(screen.in_alternate_screen)
        self.assertEqual(screen.last_screenful()[0], "~")
        self.assertEqual(
            screen.read_input_line(),
            InputLine("vim notes", False, "the alternate screen is in use"),
        )
        screen.feed(leave)
        self.assertFalse(screen.in_alternate_screen)
        return screen

    def test_1049_restores_screen_and_cursor(self) -> None:
        screen = self.enter_and_leave(b"\x1b[?1049h", b"\x1b[?1049l")
        self.assertEqual(screen.cursor, Position(0, 11))
        self.assertEqual(screen.read_input_line(), InputLine("vim notes", True))
        self.assertEqual(screen.last_screenful()[:2], ["$ vim notes", ""])

    def test_47_and_1047_restore_the_screen(self) -> None:
        for enter, leave in [(b"\x1b[?47h", b"\x1b[?47l"), (b"\x1b[?1047h", b"\x1b[?1047l")]:
            screen = self.enter_and_leave(enter, leave)
            screen.feed(b"\x1b[1;12H")
            self.assertEqual(screen.read_input_line(), InputLine("vim notes", True))

    def test_typing_after_leaving(self) -> None:
        screen = self.enter_and_leave(b"\x1b[?1049h", b"\x1b[?1049l")
        screen.feed(b" -R")
        self.assertEqual(screen.input_line(), "vim notes -R")

    def test_mark_inside_the_alternate_screen(self) -> None:
        screen = Screen(80, 24)
        screen.feed(b"\x1b[?1049h")
        typed(screen, b"> ", b"query")
        self.assertEqual(screen.read_input_line(), InputLine("query", True))
        screen.feed(b"\x1b[?1049l")
        self.assertFalse(screen.read_input_line().certain)


class ModeAndSizeTests(SynchronousTestCase):
    def test_bracketed_paste(self) -> None:
        screen = Screen(80, 24)
        self.assertFalse(screen.bracketed_paste_enabled)
        screen.feed(b"\x1b[?2004h")
        self.assertTrue(screen.bracketed_paste_enabled)
        screen.feed(b"\x1b[?2004l")
        self.assertFalse(screen.bracketed_paste_enabled)

    def test_ansi_mode_numbers_do_not_reach_private_modes(self) -> None:
        """pyte stores private modes shifted: ESC[224l would turn autowrap off."""
        screen = typed(Screen(10, 3), b"\x1b[224l\x1b[96h$ ", b"abcdefghij")
        self.assertEqual(screen.columns, 10)
        self.assertEqual(screen.input_line(), "abcdefghij")

    def test_deccolm_is_ignored(self) -> None:
        screen = Screen(80, 24)
        screen.feed(b"hello\x1b[?3h")
        self.assertEqual((screen.columns, screen.last_screenful()[0]), (80, "hello"))

    def test_last_screenful(self) -> None:
        screen = Screen(20, 3)
        screen.feed(b"$ ls  \r\na  b\r\n$ ")
        self.assertEqual(screen.last_screenful(), ["$ ls", "a  b", "$"])

    def test_resize_then_bash_redraw(self) -> None:
        """Bytes bash 5.2 printed on SIGWINCH from 80 to 60 columns with a 2-row line."""
        line = "echo " + "a" * 102
        screen = typed(Screen(80, 24), b"$ ", readline_echo(line, 2, 80))
        screen.resize(60, 20)
        self.assertEqual((screen.columns, screen.lines), (60, 20))
        self.assertFalse(screen.read_input_line().certain)  # the first row lost 20 cells
        screen.feed(b"\r\x1b[K\r\x1b[A\x1b[K\r$ " + readline_echo(line, 2, 60))
        self.assertEqual(screen.read_input_line(), InputLine(line, True))

    def test_shrinking_drops_rows_above_the_cursor_last(self) -> None:
        screen = Screen(20, 10)
        screen.feed(b"a\r\nb\r\nc\r\n")
        typed(screen, b"$ ", b"ls")
        screen.resize(20, 2)
        self.assertEqual(screen.last_screenful(), ["c", "$ ls"])
        self.assertEqual(screen.mark, Position(1, 2))
        self.assertEqual(screen.read_input_line(), InputLine("ls", True))

    def test_size_is_clamped(self) -> None:
        screen = Screen(0, -5)
        self.assertEqual((screen.columns, screen.lines), (1, 1))
        screen.resize(10**9, 10**9)
        self.assertLessEqual(screen.columns * screen.lines, 2000 * 1000)

    def test_reset_redraws(self) -> None:
        screen = typed(Screen(80, 24), b"$ ", b"ls", b"\x1bc$ ls -l")
        self.assertEqual(screen.read_input_line(), InputLine("ls -l", True))


# -- robustness ---------------------------------------------------------------------------

_FRAGMENTS = [
    b"\x1b",
    b"[",
    b"]",
    b"?",
    b";",
    b"0",
    b"9",
    b"1049",
    b"2004",
    b"h",
    b"l",
    b"m",
    b"H",
    b"J",
    b"K",
    b"r",
    b"A",
    b"@",
    b"P",
    b"L",
    b"M",
    b"D",
    b"E",
    b"7",
    b"8",
    b"c",
    b"#",
    b"(",
    b"$",
    b"\\",
    b"\x07",
    b"\x08",
    b"\t",
    b"\n",
    b"\r",
    b"\x18",
    b"\x9b",
    b"\x9d",
    b"\xc2\x9b",
    b"\xc2\x9d",
    b"\xc2\x9c",
    "²".encode(),
    "日".encode(),
    "\u0301".encode(),
    "\u200b".encode(),
    b"\xff",
    b"\xe6\x97",
    b"x",
    b" ",
]

terminal_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=300).map(b"".join),
)


def check_invariants(testcase: SynchronousTestCase, screen: Screen) -> None:
    term = screen._term
    rows = screen.last_screenful()
    testcase.assertEqual(len(rows), screen.lines)
    testcase.assertTrue(0 <= screen.cursor.row < screen.lines)
    testcase.assertTrue(0 <= screen.cursor.column < screen.columns)
    for buffer in (term.buffer, term.other_buffer):
        testcase.assertTrue(all(0 <= y < screen.lines for y in buffer))
        for row in buffer.values():
            testcase.assertTrue(all(0 <= x < screen.columns for x in row))
            testcase.assertTrue(all(len(cell.data) <= 16 for cell in row.values()))
    testcase.assertLessEqual(len(term.savepoints), 1)
    testcase.assertLessEqual(len(term.title) + len(term.icon_name), 8192)
    testcase.assertIsInstance(screen.input_line(), str)
    # What pyte's parser has accumulated for an unfinished sequence stays small.
    frame = screen._stream._parser.gi_frame
    if frame is not None:
        parser = frame.f_locals
        testcase.assertLessEqual(len(parser.get("params", ())), 33)
        testcase.assertLessEqual(len(parser.get("current", "")), 8)
        testcase.assertLessEqual(len(parser.get("param", "")), 4100)


class RobustnessTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        columns=st.integers(1, 30),
        lines=st.integers(1, 8),
        chunks=st.lists(terminal_bytes, max_size=6),
        mark_at=st.integers(0, 6),
        resize=st.one_of(st.none(), st.tuples(st.integers(-3, 40), st.integers(-3, 10))),
    )
    def test_never_raises(
        self,
        columns: int,
        lines: int,
        chunks: list[bytes],
        mark_at: int,
        resize: tuple[int, int] | None,
    ) -> None:
        screen = Screen(columns, lines)
        for i, chunk in enumerate(chunks):
            if i == mark_at:
                screen.mark_input_start()
            screen.feed(chunk)
            screen.read_input_line()
            if resize is not None and i == 1:
                screen.resize(*resize)
        check_invariants(self, screen)

    @settings(max_examples=200, deadline=None)
    @given(data=terminal_bytes, cuts=st.lists(st.integers(0, 1200), max_size=8))
    def test_split_feeds_give_the_same_screen(self, data: bytes, cuts: list[int]) -> None:
        whole = Screen(20, 5)
        whole.feed(data)
        pieces = Screen(20, 5)
        bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        for start, end in zip(bounds, bounds[1:], strict=False):
            pieces.feed(data[start:end])
        self.assertEqual(pieces.last_screenful(), whole.last_screenful())
        self.assertEqual(pieces.cursor, whole.cursor)

    def test_sequences_that_make_pyte_raise(self) -> None:
        for data in [
            b"\x1b[?5A",
            b"\x1b[1;2;3A",
            "\x1b[²m".encode(),
            b"\x1b[5J",
            b"\x1b[3K",
            b"\x1b[38;5;999m",
            b"\x1b[" + b"9" * 5000 + b"m",
        ]:
            screen = typed(Screen(20, 3), b"$ ", data, b"ok")
            self.assertEqual(screen.input_line(), "ok", data[:20])

    def test_memory_is_bounded(self) -> None:
        screen = Screen(20, 3)
        screen.feed(b"\x1b]0;" + b"t" * 100_000)  # unterminated title
        check_invariants(self, screen)
        screen.feed(b"\x07\x1b[" + b";" * 100_000)  # endless parameters
        check_invariants(self, screen)
        screen.feed(b"1" * 100_000)  # endless digits
        check_invariants(self, screen)
        screen.feed(b"m" + b"\x1b7" * 10_000)  # saved cursors
        screen.feed(b"e" + "\u0301".encode() * 10_000)  # combining characters
        check_invariants(self, screen)
        self.assertLessEqual(len(screen._term.title), 4096)
        self.assertEqual(screen.last_screenful()[0], "e" + "\u0301" * 15)

    def test_osc_terminated_by_string_terminator(self) -> None:
        screen = typed(Screen(40, 3), b"\x1b]0;my title\x1b\\$ ", b"ls")
        self.assertEqual(screen.input_line(), "ls")
        self.assertEqual(screen._term.title, "my title")

    def test_restore_cursor_twice(self) -> None:
        screen = Screen(20, 3)
        screen.feed(b"ab\x1b7xyz\x1b8Q\x1b8R")
        self.assertEqual(screen.last_screenful()[0], "abRyz")


# -- real bash ----------------------------------------------------------------------------


class BashSession:
    """bash --norc -i on a real PTY, its output fed into a Screen."""

    def __init__(self, testcase: SynchronousTestCase, columns: int = 80, lines: int = 24) -> None:
        self.home = tempfile.mkdtemp(prefix="wraith-screen-")
        testcase.addCleanup(shutil.rmtree, self.home, True)
        master, slave = os.openpty()
        # What `stty cols 80 rows 24` does, before bash asks for the size.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = {
            "TERM": "xterm",
            "PS1": "$ ",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "INPUTRC": "/dev/null",
            "HISTFILE": "/dev/null",
            "LANG": "C.UTF-8",
        }
        self.process = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=self.home,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        testcase.addCleanup(self.close)
        self.screen = Screen(columns, lines)
        self.bells = 0

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        os.close(self.master)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False
        self.screen.feed(data)
        self.bells += data.count(b"\x07")
        return bool(data)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """
        Feed output until ``predicate`` holds, for at most ``timeout`` seconds
        (generous: it returns as soon as the predicate holds, and a loaded
        machine can take seconds to start bash).
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline or not self._read(deadline - time.monotonic()):
                return predicate()
        return True

    def settle(self, quiet: float = 0.05, timeout: float = 2.0) -> None:
        """Feed output until bash has been silent for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(quiet):
            pass

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def sync(self, testcase: SynchronousTestCase) -> None:
        """Wait until bash has handled every key sent: Ctrl-G (abort) only rings the bell."""
        bells = self.bells
        self.send(b"\x07")
        testcase.assertTrue(self.wait_for(lambda: self.bells > bells))
        self.settle(0.02)

    def at_prompt(self) -> bool:
        row, column = self.screen.cursor
        return column == 2 and self.screen.last_screenful()[row] == "$"

    def new_line(self, testcase: SynchronousTestCase) -> None:
        """Wait for a fresh prompt and mark the input start, as the gateway does."""
        testcase.assertTrue(self.wait_for(self.at_prompt), self.screen.last_screenful())
        self.settle(0.02)
        self.screen.mark_input_start()

    def type_until(self, keys: bytes, expected: str | Callable[[str], bool]) -> str:
        self.send(keys)
        check = expected if callable(expected) else (lambda line: line == expected)
        self.wait_for(lambda: check(self.screen.input_line()))
        return self.screen.input_line()


class RealBashTests(SynchronousTestCase):
    """Everything bash 5 prints, read back as the operator would see it."""

    def setUp(self) -> None:
        if shutil.which("bash") is None:
            self.skipTest("bash is not installed")

    def test_typing_history_completion_wrapping_editing(self) -> None:
        bash = BashSession(self)
        screen = bash.screen
        bash.new_line(self)
        self.assertEqual(bash.type_until(b"echo hello", "echo hello"), "echo hello")
        self.assertTrue(screen.read_input_line().certain)

        bash.send(b"\r")
        self.assertTrue(bash.wait_for(lambda: "hello" in screen.last_screenful()[1:]))
        bash.new_line(self)
        self.assertEqual(bash.type_until(b"\x12ech", "echo hello"), "echo hello")  # Ctrl-R
        self.assertEqual(screen.read_input_line(), InputLine("echo hello", True))
        self.assertEqual(bash.type_until(b"\x07", ""), "")  # Ctrl-G: abort the search
        self.assertEqual(bash.type_until(b"\x1b[A", "echo hello"), "echo hello")  # Up

        bash.send(b"\x15")  # Ctrl-U: discard the line, same prompt
        bash.wait_for(lambda: screen.input_line() == "")
        completed = bash.type_until(b"ech\t", lambda line: line.startswith("echo"))
        self.assertTrue(completed.startswith("echo"), completed)

        bash.send(b"\x15")
        bash.wait_for(lambda: screen.input_line() == "")
        long_line = "echo " + "x" * 80 + " " + "y" * 94  # 182 cells with the prompt: 3 rows
        self.assertEqual(bash.type_until(long_line.encode(), long_line), long_line)
        self.assertEqual(screen.cursor, Position(screen.mark.row + 2, 22))
        self.assertEqual(screen.read_input_line(), InputLine(long_line, True))
        moved = "echo Q" + long_line[5:]
        self.assertEqual(bash.type_until(b"\x01" + b"\x1b[C" * 5 + b"Q", moved), moved)

        bash.send(b"\x15\x0b")  # Ctrl-U, Ctrl-K
        bash.wait_for(lambda: screen.input_line() == "")
        self.assertEqual(bash.type_until(b"echo helo", "echo helo"), "echo helo")
        self.assertEqual(bash.type_until(b"\x1b[Dl", "echo hello"), "echo hello")  # Left, l
        self.assertEqual(screen.cursor, Position(screen.mark.row, 11))

    def test_clear_screen_and_completion_listing(self) -> None:
        bash = BashSession(self)
        screen = bash.screen
        for name in ("alpha1", "alpha2", "beta"):
            open(os.path.join(bash.home, name), "w").close()
        bash.new_line(self)
        bash.type_until(b"ls al", "ls al")
        self.assertEqual(bash.type_until(b"\t", "ls alpha"), "ls alpha")
        listing_row = screen.cursor.row + 1
        bash.send(b"\t\t")  # lists the candidates and redraws the prompt below them
        self.assertTrue(bash.wait_for(lambda: screen.cursor.row == listing_row + 1))
        self.assertIn("alpha1  alpha2", screen.last_screenful()[listing_row])
        self.assertEqual(bash.type_until(b"2", "ls alpha2"), "ls alpha2")
        self.assertEqual(screen.mark, Position(listing_row + 1, 2))
        bash.send(b"\x0c")  # Ctrl-L: clear, prompt and line at the top
        self.assertTrue(bash.wait_for(lambda: screen.last_screenful()[:2] == ["$ ls alpha2", ""]))
        self.assertEqual(screen.read_input_line(), InputLine("ls alpha2", True))
        self.assertEqual(screen.mark, Position(0, 2))

    def test_edits_agree_with_readline(self) -> None:
        """Compare with $READLINE_LINE, which a `bind -x` key writes to a file."""
        bash = BashSession(self)
        screen = bash.screen
        dump = os.path.join(bash.home, "line")
        bash.new_line(self)
        bash.send(
            b'bind -x \'"\\C-x\\C-d": printf %s "$READLINE_LINE" >'
            + dump.encode()
            + b"'; history -s 'printf \"%s\\n\" \xe6\x97\xa5\xe6\x9c\xac long "
            + b"w" * 70
            + b"'\r"
        )
        bash.settle(0.1)
        scripts = [
            [b"echo ", b"one two", b"\x1bb", b"\x1bb", b"X", b"\x05", b" three", b"\x17", b"4"],
            [b"\x1b[A", b"\x01", b"\x1b[C\x1b[C", b"\x1b[3~", b"\x05", b" \xc3\xa9", b"\x1bb\x0b"],
            [b"ls -l", b"\x01", b"sudo ", b"\x05", b"\x7f\x7f", b"a", b"\x19", b"\x14"],
        ]
        for keys in scripts:
            bash.new_line(self)
            for key in keys:  # one key at a time, as typed (no key here rings the bell)
                bash.send(key)
                bash.settle(0.02)
            bash.sync(self)
            seen = screen.read_input_line()
            bash.send(b"\x18\x04")
            self.assertTrue(
                bash.wait_for(lambda: os.path.exists(dump) and os.path.getsize(dump) > 0)
            )
            bash.settle(0.05)
            with open(dump, encoding="utf-8") as f:
                actual = f.read()
            os.unlink(dump)
            self.assertEqual(seen, InputLine(actual, True), keys)
            bash.send(b"\x05\x15")
            bash.wait_for(lambda: screen.input_line() == "")


class RealBashPasteTests(SynchronousTestCase):
    """Multi-line bracketed pastes in real bash 5, read back against $READLINE_LINE."""

    def setUp(self) -> None:
        if shutil.which("bash") is None:
            self.skipTest("bash is not installed")

    def test_paste_agrees_with_readline(self) -> None:
        bash = BashSession(self)
        screen = bash.screen
        dump = os.path.join(bash.home, "line")
        bash.new_line(self)
        bash.send(b'bind -x \'"\\C-x\\C-d": printf %s "$READLINE_LINE" >' + dump.encode() + b"'\r")
        bash.settle(0.1)
        scripts = [
            [b"\x1b[200~echo one\recho two\r\x1b[201~"],
            [b"\x1b[200~a\r\nb\nc\x1b[201~"],  # CR LF is two newlines
            [b"ls", b"\x01", b"\x1b[200~cd /\n\x1b[201~"],
            [b"\x1b[200~x\ny\nz\x1b[201~", b"\x1b[D" * 3, b"Q", b"\x01"],
            [b"\x1b[200~if true\nthen echo \xc3\xa9\nfi\x1b[201~", b"\x7f\x7f\x7f"],
            [b"\x1b[200~echo " + b"w" * 170 + b"\necho " + b"v" * 75 + b"\nls\x1b[201~"],
        ]
        for keys in scripts:
            bash.new_line(self)
            for key in keys:
                bash.send(key)
                bash.settle(0.05)
            bash.sync(self)
            seen = screen.read_input_line()
            bash.send(b"\x18\x04")
            self.assertTrue(bash.wait_for(lambda: os.path.exists(dump)))
            bash.settle(0.05)
            with open(dump, encoding="utf-8") as f:
                actual = f.read()
            os.unlink(dump)
            self.assertIn("\n", actual)
            self.assertEqual(seen, InputLine(actual, True), keys)
            bash.send(b"\x03")  # Ctrl-C drops the whole line; new_line waits for the prompt


class RowTextTests(SynchronousTestCase):
    def test_row_text_matches_the_full_render(self):
        screen = Screen(20, 4)
        screen.feed("wraith$ echo 中文 and a line that wraps\r\nnext".encode())
        rows = screen.last_screenful()
        self.assertEqual([screen.row_text(i) for i in range(4)], rows)
        self.assertEqual((screen.row_text(-1), screen.row_text(4)), ("", ""))
