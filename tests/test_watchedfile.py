"""L{WatchedFile}: read at start-up, re-read when the file changes, fail closed."""

from __future__ import annotations

import os

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from wraith_conch.watchedfile import WatchedFile


class Unparsable(Exception):
    pass


class WatchedFileTests(unittest.SynchronousTestCase):
    def setUp(self):
        base = self.mktemp()
        os.makedirs(base)
        self.path = os.path.join(base, "words")
        self.loads = 0
        self.reloaded: list[tuple[str, ...]] = []
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def load(self, path: str) -> tuple[str, ...]:
        self.loads += 1
        with open(path) as f:
            words = tuple(f.read().split())
        if "junk" in words:
            raise Unparsable("junk on line 1")
        return words

    def write(self, text: str) -> None:
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)  # a new inode, as editors and config tools do

    def watched(self) -> WatchedFile[tuple[str, ...]]:
        return WatchedFile(
            self.path,
            self.load,
            flag="--words",
            errors=(Unparsable, OSError),
            unusable=(),
            consequence="knowing no word",
            on_reload=self.reloaded.append,
        )

    def logged(self, level: LogLevel) -> list[dict]:
        return [e for e in self.events if e.get("log_level") == level and "flag" in e]

    def test_start_up_error_is_raised(self):
        self.write("junk\n")
        self.assertRaises(Unparsable, self.watched)
        os.remove(self.path)
        self.assertRaises(OSError, self.watched)

    def test_unchanged_file_is_read_once(self):
        self.write("a b\n")
        watched = self.watched()
        for _ in range(5):
            self.assertEqual(watched.current(), ("a", "b"))
        self.assertEqual(self.loads, 1)
        self.assertEqual(self.reloaded, [])

    def test_a_change_is_read_at_the_next_use(self):
        self.write("a b\n")
        watched = self.watched()
        self.write("a\n")
        self.assertEqual(watched.current(), ("a",))
        self.assertEqual(watched.current(), ("a",))
        self.assertEqual(self.loads, 2)
        self.assertEqual(self.reloaded, [("a",)])
        [info] = self.logged(LogLevel.info)
        self.assertEqual((info["flag"], info["path"]), ("--words", self.path))

    def test_same_size_rewrite_in_place_is_seen(self):
        self.write("a b\n")
        watched = self.watched()
        before = os.stat(self.path)
        with open(self.path, "w") as f:  # same inode, same size
            f.write("c d\n")
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
        self.assertEqual(watched.current(), ("c", "d"))

    def test_broken_or_missing_file_gives_the_unusable_value_until_fixed(self):
        self.write("a b\n")
        watched = self.watched()
        self.write("junk\n")
        self.assertEqual(watched.current(), ())
        self.assertFalse(watched.usable)
        [error] = self.logged(LogLevel.error)
        self.assertEqual(error["consequence"], "knowing no word")
        self.assertIn("junk on line 1", error["error"])
        # Still broken: not re-read, not logged again.
        self.assertEqual(watched.current(), ())
        self.assertEqual(len(self.logged(LogLevel.error)), 1)
        os.remove(self.path)
        self.assertEqual(watched.current(), ())
        self.assertEqual(len(self.logged(LogLevel.error)), 2)
        self.write("b\n")
        self.assertEqual(watched.current(), ("b",))
        self.assertTrue(watched.usable)
        self.assertEqual(self.reloaded, [("b",)])
