"""The one backoff rule, shared by request retries and upload restarts."""

from __future__ import annotations

from imagepush.transforms.backoff import backoff_delay


class FixedRandom:
    """A random source that always returns ``value``: the jitter factor becomes 0.5 + value / 2."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_wait_doubles_per_attempt_up_to_the_maximum_with_jitter_between_half_and_all():
    full, half = FixedRandom(1.0), FixedRandom(0.0)
    assert [backoff_delay(n, full) for n in (1, 2, 3, 6, 7)] == [0.5, 1.0, 2.0, 16.0, 16.0]
    assert [backoff_delay(n, half) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]


def test_retry_after_wins_over_a_shorter_wait_and_a_cap_shortens_the_exponential_part():
    assert backoff_delay(1, FixedRandom(1.0), at_least=3.0) == 3.0
    assert backoff_delay(5, FixedRandom(1.0), at_least=3.0) == 8.0
    assert backoff_delay(5, FixedRandom(1.0), cap=2.0) == 2.0
