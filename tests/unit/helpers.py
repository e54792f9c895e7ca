"""Test doubles shared by unit tests of more than one package."""

from __future__ import annotations


class FakeTime:
    """An injected clock and sleep: only sleeping moves the clock, every sleep is recorded, no real time passes."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
