"""
Every benchmark of the gateway in one run, gateway vs direct OpenSSH:

    python -m benchmarks [--quick] [--json PATH] [--only NAME ...]

Run it from the repository root, as root (the target is a real sshd from
L{tests.sshd.TargetSSHD}, which creates the unprivileged login user).  Each
figure compares the two paths in the same run, both with aes128-ctr +
hmac-sha2-256, on loopback.  It prints a table and writes every figure, the
goals and whether they were met, the machine, the date and the commit as
JSON.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import paramiko

from benchmarks import approval, bulk, login, scale, slow
from benchmarks.infra import (
    CIPHER,
    KEX,
    MAC,
    BenchmarkError,
    Rig,
    code_state,
    load_average,
    machine,
    now_iso,
)

MB = 1024 * 1024

# name -> (full, quick) parameters.
SIZES = {
    "exec": {"full": {"bytes": 1024 * MB, "rounds": 2}, "quick": {"bytes": 32 * MB, "rounds": 1}},
    "sftp": {"full": {"bytes": 256 * MB, "rounds": 2}, "quick": {"bytes": 16 * MB, "rounds": 1}},
    "forward": {
        "full": {"bytes": 1024 * MB, "rounds": 2},
        "quick": {"bytes": 32 * MB, "rounds": 1},
    },
    "interactive": {
        "full": {"commands": 1000, "keys": 2000},
        "quick": {"commands": 50, "keys": 56},
    },
    "login": {"full": {"count": 50}, "quick": {"count": 5}},
    "scale": {
        "full": {"sessions": 1000, "channels": 10, "typists": 100, "seconds": 20.0},
        "quick": {"sessions": 20, "channels": 10, "typists": 4, "seconds": 3.0},
    },
    "slow": {"full": {"stall_seconds": 8.0}, "quick": {"stall_seconds": 2.0}},
}

FIGURES = ("exec", "sftp", "forward", "echo", "login", "approval", "scale", "slow")

GOALS = {
    "exec": "gateway/direct >= 50 %",
    "sftp": "gateway/direct >= 50 %",
    "forward": "gateway/direct >= 50 %",
    "echo": "added p99 <= 1 ms",
    "login": "gateway p50 <= 2 x direct",
    "approval": "p99 <= 2 ms",
    "scale": "<= 250 kB/session and echo p99 <= 10 ms",
    "slow": "RSS growth <= 16 MB",
}


class Terminated(BenchmarkError):
    """SIGTERM arrived."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


def judge(name: str, figure: dict[str, Any]) -> bool:
    """Whether C{figure} meets its goal (never on missing numbers)."""
    try:
        if name in ("exec", "sftp", "forward"):
            return figure["ratio"] >= 0.5
        if name == "echo":
            return figure["added_p99"] <= 1000
        if name == "login":
            return figure["gateway"]["p50"] <= 2 * figure["direct"]["p50"]
        if name == "approval":
            return figure["overhead"]["p99"] <= 2000
        if name == "scale":
            return figure["rss_per_session_kb"] <= 250 and figure["gateway"]["p99"] <= 10_000
        if name == "slow":
            return figure["rss_growth_kb"] <= 16 * 1024
    except (KeyError, TypeError):
        return False
    raise ValueError(name)


def interactive(quick: bool, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Echo latency and approval overhead: L{benchmarks.approval}'s run."""
    argv = ["--commands", str(params["commands"]), "--keys", str(params["keys"])]
    result = approval.run(approval.parse_args(argv + (["--quick"] if quick else [])))
    echo = result["echo"]
    main = result["approval"]["interactive"]
    return {
        "echo": {
            "unit": "us",
            "gateway": echo["gateway"],
            "direct": echo["direct"],
            "added_p50": echo["added"]["p50"],
            "added_p99": echo["added"]["p99"],
            "ratio": echo["ratio"]["p50"],
            "ciphers": result["ciphers"],
        },
        "approval": {
            "unit": "us",
            "overhead": main["overhead_wire"],
            "overhead_handlers": main["overhead"],
            "enter_to_prompt_gateway": main["enter_to_prompt_gateway"],
            "enter_to_prompt_direct": main["enter_to_prompt_direct"],
            "probes_missing": result["probes_missing"],
            "details": result,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = "quick" if args.quick else "full"
    wanted = set(args.only or FIGURES)
    params = {name: sizes[mode] for name, sizes in SIZES.items()}
    started = time.monotonic()
    load_start = load_average()
    figures: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}

    loads: dict[str, list[float] | None] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        began = time.monotonic()
        loads[name] = load_average()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        try:
            return work()
        finally:
            seconds[name] = round(time.monotonic() - began, 1)

    if wanted & {"echo", "approval"}:
        both = timed("echo+approval", lambda: interactive(args.quick, params["interactive"]))
        figures.update({k: v for k, v in both.items() if k in wanted})
    if wanted & {"exec", "sftp", "forward", "login", "slow", "scale"}:
        rig = Rig()
        sink = None
        try:
            ports = []
            if "forward" in wanted:
                sink = bulk.Sink(rig)
                ports.append(sink.port)
            if wanted & {"exec", "sftp", "forward", "login", "slow"}:
                gateway = rig.start_gateway("gateway", forward_ports=ports)
                for name, work in (
                    ("exec", lambda p: bulk.run_exec(rig, gateway, p["bytes"], p["rounds"])),
                    ("sftp", lambda p: bulk.run_sftp(rig, gateway, p["bytes"], p["rounds"])),
                    (
                        "forward",
                        lambda p: bulk.run_forward(rig, gateway, sink, p["bytes"], p["rounds"]),
                    ),
                    ("login", lambda p: login.run_login(rig, gateway, p["count"])),
                    ("slow", lambda p: slow.run_slow(rig, gateway, p["stall_seconds"])),
                ):
                    if name in wanted:
                        figures[name] = timed(name, lambda w=work, n=name: w(params[n]))
                rig.stop_process(gateway.process)
            if "scale" in wanted:
                p = params["scale"]
                figures["scale"] = timed(
                    "scale",
                    lambda: scale.run_scale(
                        rig, p["sessions"], p["channels"], p["typists"], p["seconds"]
                    ),
                )
        finally:
            if sink is not None:
                sink.close()
            rig.close()
    for name, figure in figures.items():
        figure["goal"] = GOALS[name]
        figure["met"] = judge(name, figure)
        figure["seconds"] = seconds.get(name, seconds.get("echo+approval"))
        # The machine is often shared: how busy it was when this figure began.
        figure["load_average_at_start"] = loads.get(name, loads.get("echo+approval"))
    ordered = {name: figures[name] for name in FIGURES if name in figures}
    return {
        "benchmark": "wraith_conch",
        "quick": args.quick,
        "date": now_iso(),
        "code": code_state(),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "cipher": CIPHER,
        "mac": MAC,
        "kex": KEX,
        "parameters": params,
        "figures": ordered,
        "goals_met": {name: figure["met"] for name, figure in ordered.items()},
        "elapsed_s": round(time.monotonic() - started, 1),
    }


# -- the table ----------------------------------------------------------------------------


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    f = result["figures"]

    def met(name: str) -> str:
        return "yes" if f[name]["met"] else "NO"

    for name, label in (
        ("exec", "ssh exec head -c | /dev/null, MB/s"),
        ("sftp", "sftp get, MB/s"),
        ("forward", "ssh -L, MB/s"),
    ):
        if name in f:
            x = f[name]
            label = f"{label} ({x['bytes'] // MB} MiB, best of {x['rounds']})"
            rows.append(
                (label, _n(x["gateway"]), _n(x["direct"]), f"{x['ratio']:.0%}",
                 GOALS[name], met(name))
            )  # fmt: skip
    if "echo" in f:
        x = f["echo"]
        g, d = x["gateway"], x["direct"]
        rows.append(
            (f"echo p50 / p99, us (n={g['n']})", f"{_n(g['p50'])} / {_n(g['p99'])}",
             f"{_n(d['p50'])} / {_n(d['p99'])}", f"{x['added_p99']:+.1f} p99" if x["added_p99"] is not None else "-",
             GOALS["echo"], met("echo"))
        )  # fmt: skip
    if "login" in f:
        x = f["login"]
        g, d = x["gateway"], x["direct"]
        rows.append(
            (f"login to prompt p50 / p99, ms (n={g['n']})",
             f"{_n(g['p50'], 2)} / {_n(g['p99'], 2)}", f"{_n(d['p50'], 2)} / {_n(d['p99'], 2)}",
             f"{x['ratio']:.2f}x", GOALS["login"], met("login"))
        )  # fmt: skip
    if "approval" in f:
        x = f["approval"]["overhead"]
        rows.append(
            (f"approval overhead p50 / p99, us (n={x['n']})", f"{_n(x['p50'])} / {_n(x['p99'])}",
             "-", "-", GOALS["approval"], met("approval"))
        )  # fmt: skip
    if "scale" in f:
        x = f["scale"]
        g, d = x["gateway"], x["direct"]
        rows.append(
            (f"scale: {x['sessions']} sessions, RSS kB/session", _n(x["rss_per_session_kb"]),
             "-", "-", "<= 250 kB", "yes" if x["rss_per_session_kb"] <= 250 else "NO")
        )  # fmt: skip
        rows.append(
            (f"scale: echo p50 / p99 under load, us (n={g['n']})",
             f"{_n(g['p50'])} / {_n(g['p99'])}", f"{_n(d['p50'])} / {_n(d['p99'])}",
             "-", "p99 <= 10 ms",
             "yes" if g["p99"] is not None and g["p99"] <= 10_000 else "NO")
        )  # fmt: skip
    if "slow" in f:
        x = f["slow"]
        rows.append(
            (f"slow consumer: RSS growth, kB ({x['stall_seconds']} s stall)",
             _n(x["rss_growth_kb"]), "-", "-", GOALS["slow"], met("slow"))
        )  # fmt: skip
    return rows


def format_table(result: dict[str, Any]) -> str:
    header = ("figure", "gateway", "direct OpenSSH", "ratio", "goal", "met")
    rows = [header, *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"wraith_conch benchmarks ({'quick' if result['quick'] else 'full'}), "
        f"{result['date']}, commit {result['code']['commit']}, "
        f"{result['machine']['cpu']} x{result['machine']['cores']}, "
        f"load {result['load_average']['start']} -> {result['load_average']['end']}, "
        f"{result['cipher']} + {result['mac']}",
        "",
    ]
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Every gateway benchmark, gateway vs direct OpenSSH, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few iterations (CI)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    parser.add_argument(
        "--only",
        action="append",
        choices=FIGURES,
        metavar="NAME",
        help=f"run only this figure (repeatable): {', '.join(FIGURES)}",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: run it as root (it creates the target's login user)", file=sys.stderr)
        return 2
    # SIGTERM (a timeout in a test, a CI job cancelled) unwinds like an
    # error, so every process the run started is stopped on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        result = run(args)
    except (
        BenchmarkError,
        approval.BenchmarkError,
        TimeoutError,
        ConnectionError,
        OSError,
        RuntimeError,
        paramiko.SSHException,
    ) as e:
        print(f"benchmarks: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"\nJSON: {args.json}")
    else:
        print(text)
    return 0
