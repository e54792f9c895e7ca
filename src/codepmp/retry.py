"""Waiting out a server that is restarting: how long (a window of seconds from the environment) and how
often (exponential backoff), shared by the object store and the MLflow metric buffer."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping

from codepmp.errors import ConfigError

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0


def window_from_env(var: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """Seconds from `var` (`default` when unset); ConfigError for anything but a number >= 0."""
    raw = (os.environ if environ is None else environ).get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"{var} must be a number of seconds >= 0, not {raw!r}")
    return value


def delays(window_s: float) -> Iterator[float]:
    """The sleeps between attempts: FIRST_DELAY_S doubling to MAX_DELAY_S, ending before a sleep would run
    past `window_s` seconds from the first call of `next`."""
    deadline = time.monotonic() + window_s
    delay = FIRST_DELAY_S
    while time.monotonic() + delay <= deadline:
        yield delay
        delay = min(delay * 2, MAX_DELAY_S)
