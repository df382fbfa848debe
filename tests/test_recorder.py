"""asciicast v2 session recordings, and playing them back."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from wraith_conch import replay
from wraith_conch.audit import recorder
from wraith_conch.audit.recorder import FLUSH_INTERVAL, MAX_BUFFER, MAX_EVENT, SessionRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH = 1_795_000_000.0


def parse_cast(path: str) -> tuple[dict, list[list]]:
    """Check every line against asciicast v2; return the header and events."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert isinstance(header["width"], int) and isinstance(header["height"], int)
    assert isinstance(header["timestamp"], int)
    events = []
    for line in lines[1:-1]:
        event = json.loads(line)
        assert isinstance(event, list) and len(event) == 3, line
        assert isinstance(event[0], int | float) and event[0] >= 0, line
        assert event[1] in ("o", "i", "r"), line
        assert isinstance(event[2], str), line
        events.append(event)
    return header, events


class StepClock(Clock):
    """A Clock whose time can also be set backwards (a wall-clock step)."""

    def set(self, when: float) -> None:
        self.rightNow = when


class RecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = StepClock()
        self.clock.advance(EPOCH)
        self.dir = self.mktemp()
        os.mkdir(self.dir)

    def open(self, session: str = "s-1.0", **meta) -> SessionRecorder:
        rec = SessionRecorder.open(self.dir, session, 80, 24, self.clock, meta)
        self.addCleanup(rec.close)
        return rec

    def test_header_and_events(self) -> None:
        rec = self.open(term="xterm-256color", title="alice@db1", user="alice", target="db1:22")
        self.assertEqual(rec.path, os.path.join(self.dir, "s-1.0.cast"))
        rec.output(b"$ ")
        self.clock.advance(0.25)
        rec.input(b"ls\r")
        rec.output(b"ls\r\nfile\r\n")
        self.clock.advance(0.5)
        rec.resize(100, 30)
        rec.close()
        header, events = parse_cast(rec.path)
        self.assertEqual(
            header,
            {
                "version": 2,
                "width": 80,
                "height": 24,
                "timestamp": int(EPOCH),
                "env": {"TERM": "xterm-256color"},
                "title": "alice@db1",
                "wraith": {"user": "alice", "target": "db1:22"},
            },
        )
        self.assertEqual(
            events,
            [
                [0.0, "o", "$ "],
                [0.25, "i", "ls\r"],
                [0.25, "o", "ls\r\nfile\r\n"],
                [0.75, "r", "100x30"],
            ],
        )

    def test_defaults(self) -> None:
        rec = self.open()
        rec.close()
        header, events = parse_cast(rec.path)
        self.assertEqual(header["env"], {"TERM": "xterm"})
        self.assertEqual(header["title"], "s-1.0")
        self.assertNotIn("wraith", header)
        self.assertEqual(events, [])

    def test_mode_0600(self) -> None:
        old = os.umask(0)
        try:
            rec = self.open()
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(rec.path).st_mode), 0o600)

    def test_never_overwrites(self) -> None:
        self.open()
        with self.assertRaises(FileExistsError):
            SessionRecorder.open(self.dir, "s-1.0", 80, 24, self.clock)

    def test_session_id_must_be_a_file_name(self) -> None:
        for bad in ("", "../x", "a/b", ".hidden", "x" * 300, "a\x00b"):
            self.assertRaises(ValueError, SessionRecorder.open, self.dir, bad, 80, 24, self.clock)

    def test_utf8_split_across_writes(self) -> None:
        rec = self.open()
        euro = "€".encode()
        rec.output(b"price: " + euro[:1])
        rec.output(euro[1:2])
        rec.output(euro[2:] + b" \xff!")
        rec.input("é".encode()[:1])
        rec.close()  # the unfinished input character becomes U+FFFD
        _, events = parse_cast(rec.path)
        self.assertEqual(
            "".join(e[2] for e in events if e[1] == "o"), "price: € \N{REPLACEMENT CHARACTER}!"
        )
        self.assertEqual([e[2] for e in events if e[1] == "i"], ["\N{REPLACEMENT CHARACTER}"])

    def test_timing_monotonic(self) -> None:
        rec = self.open()
        rec.output(b"a")
        self.clock.advance(2)
        rec.output(b"b")
        self.clock.set(EPOCH + 1)  # the wall clock steps back
        rec.output(b"c")
        self.clock.set(EPOCH - 10)
        rec.output(b"d")
        self.clock.set(EPOCH + 3.5)
        rec.output(b"e")
        rec.close()
        _, events = parse_cast(rec.path)
        times = [e[0] for e in events]
        self.assertEqual(times, sorted(times))
        self.assertEqual(times, [0.0, 2.0, 2.0, 2.0, 3.5])

    def data_lines(self, rec: SessionRecorder) -> int:
        with open(rec.path, "rb") as f:
            return f.read().count(b"\n") - 1

    def test_flushed_within_a_second(self) -> None:
        rec = self.open()
        self.assertEqual(self.data_lines(rec), 0)  # the header is written at once
        self.assertEqual(self.clock.getDelayedCalls(), [])
        rec.output(b"one")
        self.clock.advance(0.5)
        rec.output(b"two")
        self.assertEqual(self.data_lines(rec), 0)
        self.clock.advance(FLUSH_INTERVAL - 0.5 - 0.001)
        self.assertEqual(self.data_lines(rec), 0)
        self.clock.advance(0.001)
        self.assertEqual(self.data_lines(rec), 2)
        # Idle: no timer runs.
        self.assertEqual(self.clock.getDelayedCalls(), [])
        rec.output(b"three")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(FLUSH_INTERVAL)
        self.assertEqual(self.data_lines(rec), 3)

    def test_close_flushes_and_stops_the_timer(self) -> None:
        rec = self.open()
        rec.output(b"bye")
        rec.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.data_lines(rec), 1)
        rec.output(b"ignored")
        rec.resize(1, 1)
        rec.close()
        self.assertTrue(rec.closed)
        self.assertEqual(self.data_lines(rec), 1)

    def test_memory_bounded(self) -> None:
        rec = self.open()
        chunk = b"x" * 1000
        for _ in range(MAX_BUFFER // 1000 + 1):
            rec.output(chunk)
            self.assertLess(rec._buffered, MAX_BUFFER)
        # Written without waiting for the timer.
        self.assertGreater(self.data_lines(rec), 0)
        big = b"y" * (MAX_EVENT * 3 + 5)
        rec.output(big)
        rec.close()
        _, events = parse_cast(rec.path)
        self.assertTrue(all(len(e[2]) <= MAX_EVENT for e in events))
        self.assertEqual("".join(e[2] for e in events), "x" * 1000 * 66 + "y" * len(big))

    def test_write_failure_stops_recording_quietly(self) -> None:
        rec = self.open()

        def fail(fd, data):
            raise OSError(28, "No space left on device")

        self.patch(recorder, "_write_all", fail)
        rec.output(b"x")
        rec.flush()
        self.assertIn("No space left on device", rec.failed)
        self.assertTrue(rec.closed)
        rec.output(b"more")  # ignored, no exception
        rec.close()
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_asciinema_cat(self) -> None:
        if shutil.which("asciinema") is None:
            raise SkipTest("asciinema is not installed (apt-get install asciinema)")
        try:
            import pexpect
        except ImportError:
            raise SkipTest("pexpect is not installed") from None
        rec = self.open(term="xterm-256color", user="alice")
        rec.output(b"hello \xe2\x82")
        self.clock.advance(0.3)
        rec.output(b"\xac world\r\n\x1b[1mbold\x1b[0m\r\n")
        rec.input(b"exit\r")
        rec.resize(120, 40)
        rec.output(b"bye\r\n")
        rec.close()
        # asciinema 2.x cat opens /dev/tty: run it in a pseudo-terminal.
        output, status = pexpect.run(
            f"asciinema cat {rec.path}", withexitstatus=True, timeout=30, env=dict(os.environ)
        )
        self.assertEqual(status, 0, output)
        self.assertEqual(output, "hello € world\r\n\x1b[1mbold\x1b[0m\r\nbye\r\n".encode())


class ReplayTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(EPOCH)
        directory = self.mktemp()
        os.mkdir(directory)
        rec = SessionRecorder.open(directory, "s-2.0", 80, 24, clock, {"idle_time_limit": 5})
        rec.output(b"one\r\n")
        clock.advance(2)
        rec.input(b"x")
        rec.output(b"two\r\n")
        clock.advance(30)
        rec.resize(90, 30)
        rec.output(b"three\r\n")
        rec.close()
        self.path = rec.path

    def run_main(self, *argv: str) -> tuple[int, bytes, list[float]]:
        out = io.BytesIO()
        sleeps: list[float] = []
        code = replay.main([*argv], out=out, sleep=sleeps.append)
        return code, out.getvalue(), sleeps

    def test_cat(self) -> None:
        code, out, sleeps = self.run_main("--cat", self.path)
        self.assertEqual((code, out, sleeps), (0, b"one\r\ntwo\r\nthree\r\n", []))

    def test_play_at_speed(self) -> None:
        code, out, sleeps = self.run_main(self.path)
        self.assertEqual(code, 0)
        self.assertEqual(out, b"one\r\ntwo\r\nthree\r\n")
        # The header's idle_time_limit caps the 30 s pause.
        self.assertEqual(sleeps, [2.0, 5.0])
        self.assertEqual(self.run_main("--speed", "4", self.path)[2], [0.5, 1.25])
        self.assertEqual(self.run_main("--idle-limit", "1", self.path)[2], [1.0, 1.0])

    def test_bad_speed(self) -> None:
        for bad in ("0", "-1", "fast", "inf"):
            with self.assertRaises(SystemExit) as caught:
                self.run_main("--speed", bad, self.path)
            self.assertEqual(caught.exception.code, 2)

    def test_not_a_recording(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"version": 1}\n')
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        code, out, _ = self.run_main(path)
        self.assertEqual(code, 1)
        self.assertEqual(
            stderr.getvalue(),
            f"wraith-replay: {path}: not an asciicast v2 recording (bad header on line 1)\n",
        )

    def test_missing_file(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        path = self.mktemp()
        self.assertEqual(self.run_main(path)[0], 1)
        self.assertEqual(stderr.getvalue(), f"wraith-replay: {path}: No such file or directory\n")

    def test_cut_short_recording(self) -> None:
        # A crash leaves a partial last line: what came before still plays.
        with open(self.path, "a") as f:
            f.write('[40.0, "o", "fou')
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        code, out, _ = self.run_main("--cat", self.path)
        self.assertEqual((code, out), (0, b"one\r\ntwo\r\nthree\r\n"))
        self.assertIn("line 7: not an event, skipped", stderr.getvalue())

    def test_module_entry_point(self) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run(
            [sys.executable, "-m", "wraith_conch.replay", "--cat", self.path],
            capture_output=True,
            env=env,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (0, b"one\r\ntwo\r\nthree\r\n"))
