"""
The screen model's shortcuts: cells shared between equal characters and the
row rendering that reads only the cells a row holds, against the plain
column-by-column reading.
"""

from __future__ import annotations

import random

from twisted.trial import unittest

from wraith_conch.interception import screen as screen_module
from wraith_conch.interception.screen import Screen

PIECES = [
    "a", "b", " ", "~", "é", "中", "文", "😀", "ｱ", "\u0301", "\t", "\r\n", "\x1b[2J",
    "\x1b[H", "\x1b[5C", "\x1b[K", "\x1b[10;3H", "\x1b[1P", "\x1b[2@", "\x1b[7m", "\x1b[0m",
    "\x1b[4h", "\x1b[4l", "\x1b[?1049h", "\x1b[?1049l", "\x1b[1;31m",
]  # fmt: skip


def random_screen(rng: random.Random, ascii_only: bool) -> Screen:
    screen = Screen(rng.randint(4, 40), rng.randint(2, 10))
    pieces = PIECES[:4] + ["\r\n"] if ascii_only else PIECES
    screen.feed("".join(rng.choice(pieces) for _ in range(rng.randint(0, 500))).encode())
    if rng.random() < 0.3:
        screen.resize(rng.randint(2, 40), rng.randint(2, 10))
    return screen


class CellTextTests(unittest.SynchronousTestCase):
    def test_same_as_reading_every_column(self):
        rng = random.Random(5)
        rows = 0
        for trial in range(600):
            screen = random_screen(rng, ascii_only=trial % 2 == 0)
            term = screen._term
            for y in range(term.lines):
                row = term.buffer.get(y)
                if row:
                    rows += 1
                    self.assertEqual(
                        screen_module._cell_texts(row, term.columns),
                        screen_module._cell_texts_by_column(row, term.columns),
                        (trial, y),
                    )
        self.assertGreater(rows, 1000)

    def test_wide_character_and_its_stub(self):
        screen = Screen(10, 2)
        screen.feed("a中b".encode())
        self.assertEqual(screen.last_screenful()[0], "a中b")
        row = screen._term.buffer.get(0)
        self.assertEqual(screen_module._cell_texts(row, 10)[:4], ["a", "中", "", "b"])


class SharedCellTests(unittest.SynchronousTestCase):
    def test_equal_cells_are_shared(self):
        first, second = Screen(20, 3), Screen(20, 3)
        first.feed(b"hello")
        second.feed(b"\x1b[1mh\x1b[0mello")
        a, b = first._term.buffer[0], second._term.buffer[0]
        self.assertIs(a[1], b[1])  # the same "e" in the same style
        self.assertIsNot(a[0], b[0])  # bold "h" is another cell
        self.assertTrue(b[0].bold)
        self.assertFalse(a[0].bold)

    def test_bounded(self):
        screen = Screen(80, 3)
        for start in range(0x4E00, 0x4E00 + 3 * screen_module._MAX_CELLS_PER_STYLE, 40):
            screen.feed("".join(map(chr, range(start, start + 40))).encode() + b"\r\n")
        for cells in screen_module._CELLS_BY_STYLE.values():
            self.assertLessEqual(len(cells), screen_module._MAX_CELLS_PER_STYLE)
        for n in range(300):
            screen.feed(f"\x1b[38;5;{n % 256}m\x1b[48;5;{n // 2}mx".encode())
        self.assertLessEqual(len(screen_module._CELLS_BY_STYLE), screen_module._MAX_STYLES)
        # The screen still shows what was written after the caches emptied.
        self.assertTrue(screen.last_screenful()[-1].endswith("x"))
