"""One retry policy for every client that talks to a server which may be busy, restarting or rate-limiting:
the object store and the MLflow metric buffer (a window of seconds from the environment), the GitHub crawl
and the OpenAI-compatible generation client (a number of attempts).

    policy = RetryPolicy(first_delay_s=1.0, max_delay_s=60.0, attempts=5)
    answer = policy.call(fetch, give_up=lambda error: ServiceError(f"gave up: {error}"))

`fetch` raises `RetryLater` (optionally with the wait a server asked for, see `retry_after_s`) when another
attempt may succeed; `call` sleeps and tries again until the attempts or the window run out.

Not built on `urllib3.util.Retry`: that class counts attempts but has no window of seconds, sleeps nothing
before the first retry (its backoff starts at the second consecutive error), takes `Retry-After` in whole
seconds only and compares its dates with the real clock, and sleeps with `time.sleep`; the schedules here,
and the injected clocks and sleeps the tests rely on, do not fit it. (The object store's urllib3 pool keeps
its own short `urllib3.Retry` for single requests, below this policy.)
"""

from __future__ import annotations

import email.utils
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from codepmp.errors import ConfigError

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
RATE_LIMIT_RESET_SLACK_S = 1.0
"""Added to a wait for `X-RateLimit-Reset`: the reset time is rounded down to a second and clocks drift."""


class RetryLater(Exception):
    """Raised by an attempt when another one may succeed: `reason` for the logs, `wait_s` when the server
    said how long to wait (None: the policy's next backoff delay)."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


def is_retry_later(error: Exception) -> bool:
    """The default `retryable` of `RetryPolicy.call`: only errors that ask for a retry themselves."""
    return isinstance(error, RetryLater)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `first_delay_s`, times `factor` after each failure, at most `max_delay_s`; limited
    to `attempts` in all and/or to a window of `window_s` seconds (None: no such limit). `sleep` and `clock`
    (monotonic seconds, for the window) are injected in tests."""

    first_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = math.inf
    attempts: int | None = None
    window_s: float | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts, ending after `attempts - 1` of them or before one would run past
        `window_s` seconds from the first call of `next` (the first failure)."""
        deadline = None if self.window_s is None else self.clock() + self.window_s
        delay = self.first_delay_s
        for _ in itertools.count() if self.attempts is None else range(self.attempts - 1):
            if deadline is not None and self.clock() + delay > deadline:
                return
            yield delay
            delay = min(delay * self.factor, self.max_delay_s)

    def call(self, attempt: Callable[[], T], retryable: Callable[[Exception], bool] = is_retry_later,
             on_retry: Callable[[Exception, float, int], None] | None = None,
             give_up: Callable[[Exception], Exception] | None = None) -> T:
        """The result of the first `attempt()` that returns.

        An error `retryable` accepts is followed by `on_retry(error, delay, failures so far)`, a sleep of the
        next delay (or of the error's `wait_s` when it is a RetryLater that has one: the server's word is taken
        as it is, so cap it in the attempt) and another attempt; any other error is raised at once. When the
        delays run out, `give_up(last error)` is raised from it, or the last error itself without `give_up`.
        """
        schedule = self.delays()
        failures = 0
        while True:
            try:
                return attempt()
            except Exception as error:
                failures += 1
                if not retryable(error):
                    raise
                delay = next(schedule, None)
                if delay is None:
                    if give_up is None:
                        raise
                    raise give_up(error) from error
                if isinstance(error, RetryLater) and error.wait_s is not None:
                    delay = error.wait_s
                if on_retry is not None:
                    on_retry(error, delay, failures)
                self.sleep(delay)


def restart_policy(window_s: float) -> RetryPolicy:
    """Waiting out a server that is restarting: FIRST_DELAY_S doubling to MAX_DELAY_S, for up to `window_s`
    seconds (the constants are read on each call, so tests can shorten them)."""
    return RetryPolicy(first_delay_s=FIRST_DELAY_S, max_delay_s=MAX_DELAY_S, window_s=window_s)


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


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the `Retry-After` header asks for (a number, or an HTTP date compared with `now`, the wall clock
    in epoch seconds), never below 0; None when it is missing or unreadable."""
    value = headers.get("Retry-After", "").strip()
    seconds = _finite(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        date = email.utils.parsedate_tz(value) if value else None
        return None if date is None else max(email.utils.mktime_tz(date) - now, 0.0)
    except (ValueError, OverflowError):
        return None


def rate_limit_reset_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until GitHub's rate limit lifts when `X-RateLimit-Remaining` is 0 and `X-RateLimit-Reset` (epoch
    seconds) says when, plus RATE_LIMIT_RESET_SLACK_S; None otherwise."""
    if headers.get("X-RateLimit-Remaining") != "0":
        return None
    reset = _finite(headers.get("X-RateLimit-Reset", ""))
    return None if reset is None else max(reset - now, 0.0) + RATE_LIMIT_RESET_SLACK_S


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
