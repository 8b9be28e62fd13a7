"""A clock tests move by hand: time passes only when code under test sleeps."""

from __future__ import annotations


class FakeClock:
    """Callable as ``time.monotonic``; ``sleep`` records each wait and advances the time by it."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
