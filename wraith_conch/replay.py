"""
C{wraith-replay}: play a session recording (asciicast v2) in the terminal.

    wraith-replay FILE                 at the speed it was recorded
    wraith-replay --speed 4 FILE       four times as fast
    wraith-replay --idle-limit 2 FILE  no pause longer than 2 s
    wraith-replay --cat FILE           all output at once, no pauses

Only output (C{"o"}) events are played; input and resize events are
skipped.  C{asciinema play FILE} and C{asciinema cat FILE} work on the same
files.  Also runnable as C{python -m wraith_conch.replay}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO

PROG = "wraith-replay"


class ReplayError(Exception):
    """The file cannot be played; one line."""


def read_cast(lines: IO[str], name: str = "FILE") -> tuple[dict, Iterator[tuple[float, str, str]]]:
    """
    The header and the events of an asciicast v2 file.

    A line that is not a valid event (a recording cut short by a crash ends
    with a partial line) is skipped with a warning on stderr.
    """
    first = lines.readline()
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ReplayError(f"{name}: not an asciicast v2 recording (bad header on line 1)")

    def events() -> Iterator[tuple[float, str, str]]:
        for number, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            try:
                when, code, data = json.loads(line)
                when = float(when)
                if not isinstance(code, str) or not isinstance(data, str):
                    raise ValueError
            except (ValueError, TypeError):
                print(f"{PROG}: {name} line {number}: not an event, skipped", file=sys.stderr)
                continue
            yield when, code, data

    return header, events()


def play(
    header: dict,
    events: Iterator[tuple[float, str, str]],
    out: IO[bytes],
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    cat: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write the output events to C{out}, pausing between them unless C{cat}."""
    if idle_limit is None:
        limit = header.get("idle_time_limit")
        idle_limit = float(limit) if isinstance(limit, int | float) else None
    last = 0.0
    for when, code, data in events:
        if code != "o":
            continue
        if not cat:
            pause = max(0.0, when - last)
            if idle_limit is not None:
                pause = min(pause, idle_limit)
            if pause > 0:
                sleep(pause / speed)
        last = max(last, when)
        out.write(data.encode("utf-8", "replace"))
        out.flush()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def main(
    argv: list[str] | None = None,
    out: IO[bytes] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Play a wraith session recording (asciicast v2)."
    )
    parser.add_argument("file", metavar="FILE", help="the .cast recording")
    parser.add_argument("--speed", type=_positive, default=1.0, help="playback speed factor")
    parser.add_argument(
        "--idle-limit", type=_positive, default=None, help="longest pause, in seconds"
    )
    parser.add_argument("--cat", action="store_true", help="print all output, no pauses")
    options = parser.parse_args(argv)
    out = out if out is not None else sys.stdout.buffer
    try:
        with open(options.file, encoding="utf-8", errors="replace") as f:
            header, events = read_cast(f, options.file)
            play(
                header,
                events,
                out,
                speed=options.speed,
                idle_limit=options.idle_limit,
                cat=options.cat,
                sleep=sleep,
            )
    except ReplayError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            return 0
        print(f"{PROG}: {options.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
