"""Progress for long loops: a tqdm bar on a terminal, plain log lines everywhere else.

Pipeline stages run with stderr piped (kfp.local, Kubernetes pod logs), where a bar's carriage-return
updates surface only when it closes; there a line every `interval_s` seconds shows the run is alive.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


class _LogLines:
    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int, interval_s: float,
                 quiet: bool = False):
        self.iterable, self.desc, self.initial, self.interval_s, self.quiet = iterable, desc, initial, interval_s, quiet
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, done: int, start: float) -> str:
        elapsed = time.perf_counter() - start
        count = f"{done}/{self.total}" if self.total else str(done)
        eta = ""
        if self.total and done > self.initial:
            eta = f", eta {elapsed / (done - self.initial) * (self.total - done):.0f}s"
        return f"[{self.desc}] {count} in {elapsed:.0f}s{eta}" + (f" ({self.postfix})" if self.postfix else "")

    def __iter__(self) -> Iterator:
        start = last = time.perf_counter()
        done = printed = self.initial
        for item in self.iterable:
            yield item
            done += 1
            if not self.quiet and time.perf_counter() - last >= self.interval_s:
                print(self._line(done, start), file=sys.stderr, flush=True)
                last, printed = time.perf_counter(), done
        if not self.quiet and (done != printed or done == self.initial):
            print(self._line(done, start), file=sys.stderr, flush=True)


def progress(iterable: Iterable, desc: str, total: int | None = None, initial: int = 0, unit: str = "it",
             disable: bool = False, interval_s: float = 15.0):
    """Wrap `iterable`; the result supports `set_postfix(**values)` like a tqdm bar."""
    if not disable and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit)
    return _LogLines(iterable, desc, total, initial, interval_s, quiet=disable)
