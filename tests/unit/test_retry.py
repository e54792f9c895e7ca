"""The shared retry policy (`codepmp.retry`) with an injected clock and sleep: no test here waits for real."""

from __future__ import annotations

import dataclasses
import email.utils

import pytest

from codepmp.errors import ConfigError, ServiceError
from codepmp.retry import (RetryLater, RetryPolicy, rate_limit_reset_s, restart_policy, retry_after_s,
                           window_from_env)
from tests.unit.helpers import FakeTime

NOW = 1_700_000_000.0


class Flaky:
    """An attempt that raises the queued errors in turn, then returns "done"; each try takes `takes_s`."""

    def __init__(self, time: FakeTime, *errors: Exception, takes_s: float = 0.0) -> None:
        self.time, self.errors, self.takes_s = time, list(errors), takes_s
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.time.now += self.takes_s
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(time: FakeTime, **fields) -> RetryPolicy:
    return RetryPolicy(sleep=time.sleep, clock=time.clock, **fields)


def test_delays_double_up_to_the_cap():
    assert list(policy(FakeTime(), first_delay_s=0.5, max_delay_s=8.0, attempts=8).delays()) == [
        0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert list(policy(FakeTime(), first_delay_s=1.0, factor=3.0, attempts=4).delays()) == [1.0, 3.0, 9.0]


def test_attempts_count_the_first_one_too():
    assert list(policy(FakeTime(), attempts=3).delays()) == [1.0, 2.0]
    assert list(policy(FakeTime(), attempts=1).delays()) == []


def test_a_window_stops_before_a_sleep_would_pass_it():
    time = FakeTime()
    schedule = dataclasses.replace(restart_policy(30.0), sleep=time.sleep, clock=time.clock).delays()
    for delay in schedule:
        time.sleep(delay)
    assert time.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # 23.5 s; one more 8 s would end at 31.5 s
    assert list(policy(FakeTime(), window_s=0.0).delays()) == []


def test_the_window_starts_at_the_first_failure():
    time = FakeTime()
    schedule = policy(time, window_s=1.0).delays()
    time.now += 100  # a policy made long before its first failure still gets its whole window
    assert list(schedule) == [1.0]


def test_the_time_attempts_take_counts_against_the_window():
    time = FakeTime()
    attempt = Flaky(time, *[ConnectionError("refused")] * 10, takes_s=0.3)
    with pytest.raises(ConnectionError):
        policy(time, first_delay_s=0.5, window_s=2.0).call(attempt, lambda error: True)
    # failed at 0.3 s (window until 2.3 s); slept to 0.8, failed at 1.1; slept to 2.1, failed at 2.4: no time left
    assert time.sleeps == [0.5, 1.0] and attempt.calls == 3


def test_call_retries_until_an_attempt_succeeds():
    time = FakeTime()
    seen: list[tuple[str, float, int]] = []
    attempt = Flaky(time, RetryLater("HTTP 503"), RetryLater("ConnectionError"))
    def record(error: Exception, delay: float, failures: int) -> None:
        seen.append((str(error), delay, failures))

    result = policy(time, attempts=5).call(attempt, on_retry=record)
    assert result == "done" and attempt.calls == 3
    assert time.sleeps == [1.0, 2.0]
    assert seen == [("HTTP 503", 1.0, 1), ("ConnectionError", 2.0, 2)]


def test_a_non_retryable_error_is_raised_at_once():
    time = FakeTime()
    attempt = Flaky(time, ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):
        policy(time, attempts=5).call(attempt)
    with pytest.raises(ConnectionError):
        policy(time, attempts=5).call(Flaky(time, ConnectionError()), lambda error: isinstance(error, TimeoutError))
    assert attempt.calls == 1 and time.sleeps == []


def test_the_last_error_is_raised_when_retries_run_out():
    time = FakeTime()
    attempt = Flaky(time, *[RetryLater(f"failure {n}") for n in range(1, 10)])
    with pytest.raises(RetryLater, match="failure 3"):
        policy(time, attempts=3).call(attempt)
    assert attempt.calls == 3 and time.sleeps == [1.0, 2.0]


def test_give_up_replaces_the_last_error_and_keeps_it_as_the_cause():
    time = FakeTime()
    with pytest.raises(ServiceError, match="gave up: failure 2") as raised:
        policy(time, attempts=2).call(Flaky(time, RetryLater("failure 1"), RetryLater("failure 2")),
                                      give_up=lambda error: ServiceError(f"gave up: {error}"))
    assert str(raised.value.__cause__) == "failure 2"


def test_a_wait_the_server_asked_for_replaces_the_delay_but_the_backoff_goes_on():
    time = FakeTime()
    attempt = Flaky(time, RetryLater("HTTP 429", wait_s=7.0), RetryLater("HTTP 500"), RetryLater("HTTP 429", 0.0))
    assert policy(time, attempts=5).call(attempt) == "done"
    assert time.sleeps == [7.0, 2.0, 0.0]


def test_retry_after_in_seconds():
    assert retry_after_s({"Retry-After": "7"}, NOW) == 7.0
    assert retry_after_s({"Retry-After": " 1.5 "}, NOW) == 1.5
    assert retry_after_s({"Retry-After": "-3"}, NOW) == 0.0
    assert retry_after_s({}, NOW) is None
    assert retry_after_s({"Retry-After": "soon"}, NOW) is None
    assert retry_after_s({"Retry-After": "inf"}, NOW) is None


def test_retry_after_as_an_http_date():
    in_90_s = email.utils.formatdate(NOW + 90, usegmt=True)  # e.g. "Tue, 14 Nov 2023 22:14:50 GMT"
    assert retry_after_s({"Retry-After": in_90_s}, NOW) == 90.0
    assert retry_after_s({"Retry-After": email.utils.formatdate(NOW - 90, usegmt=True)}, NOW) == 0.0


def test_github_rate_limit_reset():
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 2)}
    assert rate_limit_reset_s(headers, NOW) == 3.0  # one second of slack
    assert rate_limit_reset_s({**headers, "X-RateLimit-Reset": str(int(NOW) - 50)}, NOW) == 1.0
    assert rate_limit_reset_s({**headers, "X-RateLimit-Remaining": "12"}, NOW) is None
    assert rate_limit_reset_s({"X-RateLimit-Remaining": "0"}, NOW) is None


def test_restart_policy_reads_its_constants_on_each_call(monkeypatch: pytest.MonkeyPatch):
    from codepmp import retry

    assert (restart_policy(60).first_delay_s, restart_policy(60).max_delay_s) == (0.5, 8.0)
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.01)
    assert restart_policy(60).first_delay_s == 0.01


def test_window_from_env():
    assert window_from_env("X_RETRY_S", 60.0, {}) == 60.0
    assert window_from_env("X_RETRY_S", 60.0, {"X_RETRY_S": " 7.5 "}) == 7.5
    with pytest.raises(ConfigError, match="X_RETRY_S must be a number of seconds >= 0"):
        window_from_env("X_RETRY_S", 60.0, {"X_RETRY_S": "-1"})
