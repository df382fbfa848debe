"""
Approval overhead and keystroke echo latency of the gateway, side by side.

    python -m benchmarks.approval [--commands N] [--keys N] [--quick]

Run it from the repository root, as root (it starts a real OpenSSH sshd
with L{tests.sshd.TargetSSHD}, which creates the unprivileged login user).
One run:

  1. starts the target sshd, and the gateway in a child process
     (L{benchmarks.gateway_process}: the gateway, its L{ApprovalClient} and an
     auto-approving PROTOCOL.md service on one reactor, with
     L{benchmarks.probes} timing the gateway's own methods);
  2. opens two paramiko shells with a PTY, one through the gateway and one
     straight to the sshd, and measures keystroke echo latency on both: lines
     of L{ECHO_LINE} typed key by key (each key sent once the previous one's
     echo arrived), Enter, wait for the prompt; the paths alternate line by
     line;
  3. types shell commands through the gateway (and the same commands on the
     direct shell for the client-side round trip, alternating in blocks of
     L{COMMAND_BLOCK}) in three ways:
     C{interactive} (the line, wait for its echo, then Enter: as a person
     types), C{typeahead} (line and Enter in one write: the gate waits for
     the echo) and C{recalled} (Up, then Enter: the line is not known from
     the keys, so the gate waits for quiet, C{SETTLE_QUIET});
  4. prints a table and one JSON line with every figure.

See docs/performance.md for the method and the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paramiko

import twisted
from benchmarks.client import Shell, now
from tests.sshd import TargetSSHD, make_basedir, write_ed25519_key

PROMPT = b"wraith$ "
# Keys typed per line in the echo test: a comment, ended with Enter.  (Not
# Ctrl-C: bash 5.2 now and then notices that SIGINT only at the next key.)
ECHO_LINE = b"#xbdfgjk"
UP = b"\x1b[A"
# Runs per block when the two paths alternate: one echo line, five commands
# (a command block starts with a phase change in the gateway process).
ECHO_BLOCK = 1
COMMAND_BLOCK = 5
WARMUP_LINES = 3
WARMUP_COMMANDS = 20
WAIT_TIMEOUT = 10.0
CHILD_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_COUNT = 1000
QUICK_COUNT = 50
DEFAULT_MAX_SECONDS = 900.0

GOAL_APPROVAL_P99_US = 2000.0
GOAL_ECHO_ADDED_P99_US = 1000.0

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchmarkError(Exception):
    """The benchmark could not run; the message says why."""


# -- the gateway child process -------------------------------------------------------


class GatewayChild:
    """C{python -m benchmarks.gateway_process}, spoken to in JSON lines."""

    def __init__(self, stderr_path: str) -> None:
        self._stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 -- closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gateway_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": REPO_ROOT},
        )
        self._pending = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self.port = 0
        self.host_key = ""

    def start(self, config: dict[str, Any]) -> None:
        """Configure the gateway; return once it listens."""
        answer = self.ask(config)
        if not answer.get("ready"):
            raise BenchmarkError(f"the gateway did not start: {answer.get('error', answer)}")
        self.port = answer["port"]
        self.host_key = answer["host_key"]

    def ask(self, message: dict[str, Any], timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(message).encode("utf-8") + b"\n")
        self.process.stdin.flush()
        return self._read_line(timeout)

    def _read_line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise BenchmarkError(f"the gateway did not answer within {timeout} s{self._tail()}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise BenchmarkError(f"the gateway process exited{self._tail()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def _tail(self) -> str:
        try:
            with open(self._stderr_path, "rb") as f:
                text = f.read()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"; its stderr:\n{text}" if text else ""

    def close(self) -> None:
        process = self.process
        try:
            if process.poll() is None:
                with contextlib.suppress(BenchmarkError, OSError, ValueError):
                    self.ask({"cmd": "stop"}, timeout=STOP_TIMEOUT)
                with contextlib.suppress(OSError):
                    process.stdin.close()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(STOP_TIMEOUT)
        finally:
            self._selector.close()
            process.stdout.close()
            self._stderr.close()


# -- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was measured."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(values_ns: Iterable[float]) -> dict[str, float | int | None]:
    """p50, p99, max and count, in microseconds (None without samples: JSON has no NaN)."""
    values = [v / 1000.0 for v in values_ns]
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
        "n": len(values),
    }


def intervals(records: list[dict[str, Any]], phase: str, start: str, end: str) -> list[int]:
    return [
        r[end] - r[start]
        for r in records
        if r.get("phase") == phase and r.get(start) is not None and r.get(end) is not None
    ]


def overheads(records: list[dict[str, Any]], phase: str, wire: bool) -> list[int]:
    """Per command: (b - a) + (d - c), from the handler or the socket timestamps."""
    keys = ("a_wire", "b_wire", "c_wire", "d_wire") if wire else ("a", "b", "c", "d")
    out = []
    for r in records:
        if r.get("phase") != phase or any(r.get(k) is None for k in keys):
            continue
        a, b, c, d = (r[k] for k in keys)
        out.append((b - a) + (d - c))
    return out


# -- driving the shells -----------------------------------------------------------------


class Budget:
    """The whole run's time limit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise BenchmarkError(f"out of time ({self.seconds} s) during {what}")


def echo_line(shell: Shell, _number: int) -> list[int]:
    """
    Type L{ECHO_LINE} key by key, timing each key's echo, then Enter and wait
    for the next prompt.  The line is a comment, so the approved command does
    nothing.  The first sample is the first key of a line (the gate reads the
    prompt off its screen model then).
    """
    samples = []
    for key in ECHO_LINE:
        data = bytes([key])
        sent = now()
        shell.send(data)
        samples.append(shell.wait_for(data, WAIT_TIMEOUT) - sent)
    shell.send(b"\r")
    shell.wait_for(PROMPT, WAIT_TIMEOUT)
    shell.trim()
    return samples


def command_line(number: int) -> bytes:
    """A command bash runs without forking: the no-op builtin."""
    return b": bench-%06d" % number


def run_interactive(shell: Shell, number: int) -> list[int]:
    """Type a line, wait for its echo, press Enter: the time Enter -> next prompt."""
    line = command_line(number)
    shell.send(line)
    shell.wait_for(line, WAIT_TIMEOUT)
    sent = now()
    shell.send(b"\r")
    done = shell.wait_for(PROMPT, WAIT_TIMEOUT) - sent
    shell.trim()
    return [done]


def run_typeahead(shell: Shell, number: int) -> list[int]:
    """Line and Enter in one write: the time to the next prompt."""
    line = command_line(number)
    sent = now()
    shell.send(line + b"\r")
    shell.wait_for(line, WAIT_TIMEOUT)
    done = shell.wait_for(PROMPT, WAIT_TIMEOUT) - sent
    shell.trim()
    return [done]


def run_recalled(shell: Shell, number: int) -> list[int]:
    """Up recalls line C{number}; once it shows, Enter: the time Enter -> next prompt."""
    shell.send(UP)
    shell.wait_for(command_line(number), WAIT_TIMEOUT)
    sent = now()
    shell.send(b"\r")
    done = shell.wait_for(PROMPT, WAIT_TIMEOUT) - sent
    shell.trim()
    return [done]


def interleaved(
    units: int,
    shells: dict[str, Shell],
    measure: Callable[[Shell, int], list[int]],
    budget: Budget,
    what: str,
    block: int,
    before_block: Callable[[str], None] | None = None,
) -> dict[str, list[int]]:
    """
    C{units} runs of C{measure} on each shell, in blocks of C{block} runs that
    alternate between the shells (and swap which goes first every round), so
    that drift and bursts of load on the machine touch both alike.  Returns
    every sample.
    """
    results: dict[str, list[int]] = {name: [] for name in shells}
    done = dict.fromkeys(shells, 0)
    names = list(shells)
    number = 0
    for round_number in range(units // block + 2):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            want = min(block, units - done[name])
            if want <= 0:
                continue
            budget.check(what)
            if before_block is not None:
                before_block(name)
            for _ in range(want):
                results[name].extend(measure(shells[name], number))
                done[name] += 1
                number += 1
        if all(n >= units for n in done.values()):
            break
    return results


# -- the run ---------------------------------------------------------------------------


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return (
        (done.stderr or done.stdout).strip().splitlines()[0]
        if (done.stderr or done.stdout)
        else "?"
    )


def code_state() -> dict[str, Any]:
    """The commit measured, and files that differ from it (read-only git commands)."""
    head = tool_output(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"])
    status = tool_output(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "wraith_conch"])
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": head.strip() or None, "uncommitted": changed}


def tool_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "paramiko": paramiko.__version__,
        "sshd": tool_version(["/usr/sbin/sshd", "-V"]),
        "ssh": tool_version(["ssh", "-V"]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    commands, keys = args.commands, args.keys
    load_start = _load()
    budget = Budget(args.max_seconds)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        basedir = make_basedir("wraith-benchmark-approval-")
        stack.callback(shutil.rmtree, basedir, ignore_errors=True)
        sshd = TargetSSHD(basedir, log_level="INFO")
        stack.callback(sshd.stop)
        sshd.start()

        operator_key = os.path.join(basedir, "operator_key")
        operator_pub = write_ed25519_key(operator_key, "benchmark-operator")
        authorized_keys = os.path.join(basedir, "operator_authorized_keys")
        with open(authorized_keys, "w", encoding="ascii") as f:
            f.write(operator_pub + "\n")
        child = GatewayChild(os.path.join(basedir, "gateway.stderr"))
        stack.callback(child.close)
        child.start(
            {
                "host_key_path": os.path.join(basedir, "gateway_host_key"),
                "target": f"{sshd.address}:{sshd.port}",
                "target_known_hosts": sshd.known_hosts_path,
                "target_identity": sshd.client_key_path,
                "authorized_keys": authorized_keys,
                "log_format": args.log_format,
                "log_path": os.path.join(basedir, "gateway.log.json"),
                "nodelay": args.nodelay,
                "max_seconds": args.max_seconds + 60,
            }
        )
        gateway_known_hosts = os.path.join(basedir, "gateway_known_hosts")
        with open(gateway_known_hosts, "w", encoding="ascii") as f:
            f.write(f"[127.0.0.1]:{child.port} {child.host_key}\n")

        def open_shell(port: int, key: str, known_hosts: str) -> Shell:
            shell = Shell(
                "127.0.0.1", port, sshd.user, key, known_hosts, width=args.columns, height=args.rows
            )
            stack.callback(shell.close)
            shell.wait_for(PROMPT, WAIT_TIMEOUT)
            shell.trim()
            return shell

        def phase(name: str) -> None:
            answer = child.ask({"cmd": "phase", "name": name})
            if not answer.get("ok"):
                raise BenchmarkError(f"the gateway refused phase {name}: {answer}")

        # 1. Keystroke echo, both paths, interleaved.
        gateway_shell = open_shell(child.port, operator_key, gateway_known_hosts)
        direct_shell = open_shell(sshd.port, sshd.client_key_path, sshd.known_hosts_path)
        ciphers = {"gateway": gateway_shell.cipher, "direct": direct_shell.cipher}
        phase("warmup")
        for shell in (gateway_shell, direct_shell):
            for number in range(WARMUP_LINES):
                echo_line(shell, number)
        phase("echo")
        shells = {"gateway": gateway_shell, "direct": direct_shell}
        lines = -(-keys // len(ECHO_LINE))
        echo = interleaved(lines, shells, echo_line, budget, "echo", ECHO_BLOCK)

        # 2. Commands: a fresh shell on each path.
        phase("between")
        gateway_shell = open_shell(child.port, operator_key, gateway_known_hosts)
        direct_shell = open_shell(sshd.port, sshd.client_key_path, sshd.known_hosts_path)
        shells = {"gateway": gateway_shell, "direct": direct_shell}
        for name, shell in shells.items():
            phase(f"warmup-{name}")
            for number in range(WARMUP_COMMANDS):
                run_interactive(shell, number)
        typeahead_count = max(5, commands // 4)
        recalled_count = max(5, min(50, commands // 10))
        round_trips: dict[str, dict[str, list[int]]] = {}

        def note_block(name: str) -> Callable[[str], None]:
            return lambda shell_name: phase(name if shell_name == "gateway" else "direct")

        for name, measure, count in (
            ("interactive", run_interactive, commands),
            ("typeahead", run_typeahead, typeahead_count),
        ):
            round_trips[name] = interleaved(
                count,
                shells,
                measure,
                budget,
                name,
                COMMAND_BLOCK,
                before_block=note_block(name),
            )
        # Up recalls the shell's last line, which running it again keeps last.
        recalled: dict[str, list[int]] = {}
        for name, shell in shells.items():
            phase("between")
            number = 999_999
            run_interactive(shell, number)
            phase("recalled" if name == "gateway" else "direct")
            recalled[name] = []
            for _ in range(recalled_count):
                budget.check("recalled")
                recalled[name].extend(run_recalled(shell, number))
        round_trips["recalled"] = recalled
        phase("done")
        dumped = child.ask({"cmd": "dump"}, timeout=60)

    if args.raw:
        with open(args.raw, "w", encoding="utf-8") as f:
            json.dump({"gateway": dumped, "echo": echo, "round_trips": round_trips}, f)
    return report(
        load_start=load_start,
        args=args,
        dumped=dumped,
        echo=echo,
        round_trips=round_trips,
        ciphers=ciphers,
        elapsed=time.monotonic() - started,
    )


def report(
    *,
    load_start: list[float] | None,
    args: argparse.Namespace,
    dumped: dict[str, Any],
    echo: dict[str, list[int]],
    round_trips: dict[str, dict[str, list[int]]],
    ciphers: dict[str, str],
    elapsed: float,
) -> dict[str, Any]:
    records = dumped["requests"]
    shell_records = [r for r in records if r.get("kind") == "shell"]
    approval: dict[str, Any] = {}
    for name in ("interactive", "typeahead", "recalled"):
        approval[name] = {
            "a_to_b": summary(intervals(shell_records, name, "a", "b")),
            "a_to_b_wire": summary(intervals(shell_records, name, "a_wire", "b_wire")),
            "settle": summary(intervals(shell_records, name, "submit", "submit_now")),
            "settled_to_b": summary(intervals(shell_records, name, "submit_now", "b")),
            "c_to_d": summary(intervals(shell_records, name, "c", "d")),
            "c_to_d_wire": summary(intervals(shell_records, name, "c_wire", "d_wire")),
            "service_round_trip": summary(intervals(shell_records, name, "b_wire", "c_wire")),
            "overhead": summary(overheads(shell_records, name, wire=False)),
            "overhead_wire": summary(overheads(shell_records, name, wire=True)),
            "enter_to_prompt_gateway": summary(round_trips[name]["gateway"]),
            "enter_to_prompt_direct": summary(round_trips[name]["direct"]),
            "approved": sum(1 for r in shell_records if r["phase"] == name and r.get("approved")),
            "waited_for_echo": sum(
                1 for r in shell_records if r["phase"] == name and r.get("waited")
            ),
            "screen_renders": summary(dumped.get("renders", {}).get(name, [])),
            "screen_renders_per_command": _per(
                len(dumped.get("renders", {}).get(name, [])),
                sum(1 for r in shell_records if r["phase"] == name),
            ),
        }
    per_key = len(ECHO_LINE)
    echo_figures: dict[str, Any] = {}
    for name, samples in echo.items():
        echo_figures[name] = {
            "all": summary(samples),
            "first_key": summary(v for i, v in enumerate(samples) if i % per_key == 0),
            "other_keys": summary(v for i, v in enumerate(samples) if i % per_key != 0),
        }
    gateway_echo = echo_figures["gateway"]["all"]
    direct_echo = echo_figures["direct"]["all"]
    added = {
        p: round(gateway_echo[p] - direct_echo[p], 1) if direct_echo["n"] else None
        for p in ("p50", "p99")
    }
    ratio = {
        p: round(gateway_echo[p] / direct_echo[p], 2) if direct_echo[p] else None
        for p in ("p50", "p99")
    }
    collections = dumped.get("collections", [])
    measured = {"echo", "interactive", "typeahead", "recalled"}
    gc_pauses = {
        f"gen{generation}": summary(
            d for phase, gen, _start, d in collections if gen == generation and phase in measured
        )
        for generation in (0, 1, 2)
    }
    inside = {
        "key_forward": summary(sent - read for read, sent in dumped["keys"] if read),
        "echo_forward": summary(sent - read for read, sent in dumped["echoes"] if read),
        "screen_feed": summary(dumped["screen_feed"]),
        "screen_renders": summary(dumped.get("renders", {}).get("echo", [])),
    }
    main = approval["interactive"]
    goals = {
        "approval_overhead_p99_us": main["overhead_wire"]["p99"],
        "approval_overhead_goal_us": GOAL_APPROVAL_P99_US,
        "approval_overhead_met": _at_most(main["overhead_wire"]["p99"], GOAL_APPROVAL_P99_US),
        "echo_added_p99_us": added["p99"],
        "echo_added_goal_us": GOAL_ECHO_ADDED_P99_US,
        "echo_added_met": _at_most(added["p99"], GOAL_ECHO_ADDED_P99_US),
    }
    return {
        "benchmark": "wraith_conch.approval",
        "units": "microseconds",
        "commands": args.commands,
        "keys": args.keys,
        "quick": args.quick,
        "log_format": args.log_format,
        "nodelay": args.nodelay,
        "terminal": f"{args.columns}x{args.rows}",
        "code": code_state(),
        "settle_quiet_s": _settle_quiet(),
        "approval": approval,
        "echo": {
            "gateway": gateway_echo,
            "direct": direct_echo,
            "gateway_first_key": echo_figures["gateway"]["first_key"],
            "direct_first_key": echo_figures["direct"]["first_key"],
            "gateway_other_keys": echo_figures["gateway"]["other_keys"],
            "direct_other_keys": echo_figures["direct"]["other_keys"],
            "keys_per_line": per_key,
            "added": added,
            "ratio": ratio,
            "inside_gateway": inside,
        },
        "goals": goals,
        "gc_pauses": gc_pauses,
        "probes_missing": dumped.get("missing", []),
        "decided_by_service": dumped.get("decided_by_service"),
        "ciphers": ciphers,
        "machine": machine(),
        "load_average": {"start": load_start, "end": _load()},
        "elapsed_s": round(elapsed, 1),
    }


def _at_most(value: float | None, goal: float) -> bool:
    """Met only when measured: no samples is no success."""
    return value is not None and value <= goal


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _per(count: int, of: int) -> float | None:
    return round(count / of, 2) if of else None


def _settle_quiet() -> float | None:
    try:
        from wraith_conch.interception.gate import SETTLE_QUIET
    except ImportError:
        return None
    return SETTLE_QUIET


# -- output -------------------------------------------------------------------------------


def _figure(value: float | None) -> str:
    return f"{value:>10.1f}" if value is not None else f"{'-':>10}"


def _row(label: str, figures: dict[str, Any], note: str = "") -> str:
    return (
        f"  {label:<46} {_figure(figures['p50'])} {_figure(figures['p99'])} {figures['n']:>6}"
        + (f"  {note}" if note else "")
    )


def format_table(result: dict[str, Any]) -> str:
    header = f"  {'(microseconds)':<46} {'p50':>10} {'p99':>10} {'n':>6}"
    approval = result["approval"]
    interactive = approval["interactive"]
    typeahead = approval["typeahead"]
    recalled = approval["recalled"]
    echo = result["echo"]
    inside = echo["inside_gateway"]
    goals = result["goals"]
    lines = [
        f"wraith_conch benchmark: terminal {result['terminal']}, gateway log"
        f" {result['log_format']}, TCP_NODELAY what-if: {result['nodelay']}",
        "",
        "Approval overhead, interactive (Enter pressed once the line's echo is shown):",
        header,
        _row("a->b  key in -> request out (handlers)", interactive["a_to_b"]),
        _row("a->b  key in -> request out (sockets)", interactive["a_to_b_wire"]),
        _row("c->d  decision in -> key out (handlers)", interactive["c_to_d"]),
        _row("c->d  decision in -> key out (sockets)", interactive["c_to_d_wire"]),
        _row("(b-a)+(d-c) per command (handlers)", interactive["overhead"]),
        _row("(b-a)+(d-c) per command (sockets)", interactive["overhead_wire"]),
        _row("  in a->b: Enter held -> request built", interactive["settle"]),
        _row("  screen renders (last_screenful), each", interactive["screen_renders"]),
        _row("b->c  service round trip (not overhead)", interactive["service_round_trip"]),
        _row("client: Enter -> next prompt, gateway", interactive["enter_to_prompt_gateway"]),
        _row("client: Enter -> next prompt, direct", interactive["enter_to_prompt_direct"]),
        "",
        f"Settle wait (SETTLE_QUIET = {result['settle_quiet_s']} s):",
        header,
        _row(
            "typeahead: Enter held -> request built",
            typeahead["settle"],
            f"waited for echo: {typeahead['waited_for_echo']}",
        ),
        _row("typeahead: a->b (sockets)", typeahead["a_to_b_wire"]),
        _row("typeahead: request built -> request out", typeahead["settled_to_b"]),
        _row("typeahead: client Enter -> prompt, gateway", typeahead["enter_to_prompt_gateway"]),
        _row("typeahead: client Enter -> prompt, direct", typeahead["enter_to_prompt_direct"]),
        _row(
            "recalled (Up): Enter held -> request built",
            recalled["settle"],
            f"waited: {recalled['waited_for_echo']}",
        ),
        _row("recalled (Up): a->b (sockets)", recalled["a_to_b_wire"]),
        _row("recalled: client Enter -> prompt, gateway", recalled["enter_to_prompt_gateway"]),
        _row("recalled: client Enter -> prompt, direct", recalled["enter_to_prompt_direct"]),
        "",
        f"Keystroke echo (one key sent -> its echo received; lines of {echo['keys_per_line']}"
        " keys, a comment line ended by Enter):",
        header,
        _row("through the gateway", echo["gateway"]),
        _row("direct to sshd", echo["direct"]),
        f"  {'added by the gateway':<46} {_figure(echo['added']['p50'])} {_figure(echo['added']['p99'])}"
        f"         ratio {echo['ratio']['p50']} (p50) / {echo['ratio']['p99']} (p99)",
        _row("  first key of a line, gateway", echo["gateway_first_key"]),
        _row("  first key of a line, direct", echo["direct_first_key"]),
        _row("  other keys, gateway", echo["gateway_other_keys"]),
        _row("  other keys, direct", echo["direct_other_keys"]),
        _row("  inside: key read -> key sent upstream", inside["key_forward"]),
        _row("  inside: echo read -> echo sent", inside["echo_forward"]),
        _row("  inside: gate.target_output (screen fed)", inside["screen_feed"]),
        _row("  inside: screen renders, each", inside["screen_renders"]),
        "",
        "Garbage collections in the gateway during the measured phases (each pause):",
        header,
        *(_row(f"generation {g}", result["gc_pauses"][f"gen{g}"]) for g in (0, 1, 2)),
        "",
        "Goals (judged on the socket timestamps):",
        f"  approval overhead p99 {_figure(goals['approval_overhead_p99_us']).strip()} us"
        f" <= {goals['approval_overhead_goal_us']:.0f} us: "
        + ("met" if goals["approval_overhead_met"] else "NOT met"),
        f"  added echo latency p99 {_figure(goals['echo_added_p99_us']).strip()} us"
        f" <= {goals['echo_added_goal_us']:.0f} us: "
        + ("met" if goals["echo_added_met"] else "NOT met"),
    ]
    if result["probes_missing"]:
        lines.append(f"  probes that found nothing to wrap: {', '.join(result['probes_missing'])}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.approval",
        description="Approval overhead and keystroke echo latency of the gateway.",
    )
    parser.add_argument("--commands", type=int, default=None, help="commands typed (default 1000)")
    parser.add_argument("--keys", type=int, default=None, help="keys per path (default --commands)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT} commands and keys")
    parser.add_argument(
        "--log-format",
        choices=("json", "none"),
        default="json",
        help="the gateway's log: JSON lines to a file as in production (default), or none",
    )
    parser.add_argument(
        "--nodelay",
        choices=("none", "operator", "upstream", "both"),
        default="none",
        help="what-if: set TCP_NODELAY on the gateway's operator-side and/or upstream SSH"
        " sockets (the gateway sets it on neither; default none: as the code is)",
    )
    parser.add_argument(
        "--size",
        default="80x24",
        help="the client's terminal, COLUMNSxROWS (default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="give up after this long (default %(default)s)",
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--raw", metavar="FILE", help="also write every sample (client and gateway) to FILE as JSON"
    )
    args = parser.parse_args(argv)
    default = QUICK_COUNT if args.quick else DEFAULT_COUNT
    args.commands = args.commands if args.commands is not None else default
    args.keys = args.keys if args.keys is not None else args.commands
    if args.commands < 1 or args.keys < 1:
        parser.error("--commands and --keys must be at least 1")
    if not args.max_seconds > 0:
        parser.error("--max-seconds must be positive")
    try:
        columns, rows = (int(n) for n in args.size.lower().split("x"))
    except ValueError:
        parser.error("--size must be COLUMNSxROWS, e.g. 80x24")
    if not (20 <= columns <= 1000 and 5 <= rows <= 500):
        parser.error("--size must be within 20x5 .. 1000x500")
    args.columns, args.rows = columns, rows
    return args


class Terminated(BenchmarkError):
    """SIGTERM arrived."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        # TargetSSHD then logs in as this user, whose shell prompt we do not know.
        print(
            "benchmarks.approval: run it as root (it creates the target's login user)",
            file=sys.stderr,
        )
        return 2
    # SIGTERM (a timeout in a test, a CI job cancelled) unwinds like an error,
    # so that the sshd and the gateway process are stopped on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        result = run(args)
    except (BenchmarkError, TimeoutError, ConnectionError, RuntimeError, OSError) as e:
        print(f"benchmarks.approval: {e}", file=sys.stderr)
        return 1
    if not args.json_only:
        print(format_table(result))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
