"""A clock the tests move by hand, for the queues, the runner and the drain (injected instead of sleeping)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
