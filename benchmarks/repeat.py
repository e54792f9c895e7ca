"""What the comparison benchmarks share: the `--repeats` and `--smoke` flags, a ratio's median with its spread,
and the memory figure of each side.

    from repeat import add_flags, settle_repeats, spread, run_child, resident_mb   # in benchmarks/x.py

A benchmark runs as `python benchmarks/x.py`, which puts benchmarks/ on sys.path, so this imports by its name.
One run of a comparison on a shared machine can be off by 10 % or more; the median of a few, with the smallest
and largest, says how far to trust the figure.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass

DEFAULT_REPEATS = 3


def add_flags(parser, smoke_help: str | None) -> None:
    """`--repeats N` and, when `smoke_help` is given, `--smoke` (scripts whose quick mode is `--debug` pass None)."""
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help=f"times the comparison runs; ratios are reported as median, min and max "
                             f"(default {DEFAULT_REPEATS}; 1 in the quick mode)")
    if smoke_help:
        parser.add_argument("--smoke", action="store_true", help=smoke_help)


def settle_repeats(args, quick: bool) -> int:
    """Fill in `args.repeats`: as given, else 1 in a quick (smoke or debug) run, else the default."""
    if args.repeats is None:
        args.repeats = 1 if quick else DEFAULT_REPEATS
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, not {args.repeats}")
    return args.repeats


def spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """'median 2.76x (min 2.57, max 3.05)' over the repeats' values."""
    return (f"median {statistics.median(values):.{digits}f}{unit} "
            f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})")


def resident_mb() -> float:
    """This process's resident memory now. Where both sides share a process it is the honest figure to give
    after each side: the process's peak (ru_maxrss) would be whichever side ran first or held more."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclass
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    """The child's own peak resident memory (with its waited-for descendants), from its rusage."""


def run_child(cmd: list[str], env: dict | None = None, capture: bool = True) -> ChildRun:
    """Run `cmd` to the end and return its output and peak RSS. os.wait4 gives the rusage of that one child;
    getrusage(RUSAGE_CHILDREN) would give the largest of all children so far, mixing the two sides up."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Files, not pipes: nothing reads a pipe while wait4 blocks, and a chatty child would fill it and stall.
        proc = subprocess.Popen(cmd, env=env, text=True, stdout=out if capture else None,
                                stderr=err if capture else None)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024)
