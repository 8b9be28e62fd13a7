"""The per-host request limiter: additive increase, multiplicative decrease, Retry-After, a rate.

Timing is checked with a fake clock whose ``sleep`` advances it, so nothing waits.
"""

from __future__ import annotations

import threading

import pytest

from imagepush.transforms.stores.registry.limiter import Level, RateBucket, RequestLimiter
from tests.clock import FakeClock


def limiter(ceiling: int = 8, **kw) -> tuple[RequestLimiter, FakeClock]:
    clock = FakeClock()
    return RequestLimiter("reg:5000", ceiling, clock=clock, sleep=clock.sleep, **kw), clock


def succeed(lim: RequestLimiter, times: int) -> None:
    for _ in range(times):
        slot = lim.acquire()
        lim.succeeded(slot)
        slot.release()


def in_other_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_a_limiter_starts_at_a_quarter_of_its_ceiling_and_never_below_one():
    assert limiter(8)[0].level == Level(2, 8)
    assert limiter(10)[0].level == Level(2, 10)
    assert limiter(3)[0].level == Level(1, 3)
    assert limiter(8, adaptive=False)[0].level == Level(8, 8)


def test_the_limit_grows_by_one_after_as_many_successes_as_it_allows_up_to_the_ceiling():
    lim, _ = limiter(8)
    levels = []
    for _ in range(7):
        succeed(lim, lim.level.limit)
        levels.append(lim.level.limit)
    assert levels == [3, 4, 5, 6, 7, 8, 8]
    succeed(lim, 100)
    assert lim.level == Level(8, 8)


def test_a_burst_of_429s_to_requests_in_flight_halves_the_limit_once():
    lim, _ = limiter(16, adaptive=True)
    succeed(lim, 4 + 5 + 6 + 7 + 8 + 9)  # 4 -> 10
    assert lim.level.limit == 10
    slots = [lim.acquire() for _ in range(10)]
    for slot in slots:
        lim.overloaded(slot)
        slot.release()
    assert lim.level.limit == 5 and lim.overloads == 10
    # A request sent after the decrease that is refused too halves it again: a new window.
    slot = lim.acquire()
    lim.overloaded(slot)
    slot.release()
    assert lim.level.limit == 2
    for _ in range(3):
        slot = lim.acquire()
        lim.overloaded(slot)
        slot.release()
    assert lim.level.limit == 1


def test_a_success_sent_before_a_decrease_does_not_count_towards_growth():
    lim, _ = limiter(8)
    early = lim.acquire()
    late = lim.acquire()
    lim.overloaded(late)
    late.release()
    assert lim.level.limit == 1
    lim.succeeded(early)
    early.release()
    assert lim.level.limit == 1
    succeed(lim, 1)
    assert lim.level.limit == 2


def test_a_fixed_limit_ignores_overload_but_still_honours_retry_after():
    lim, clock = limiter(4, adaptive=False)
    slot = lim.acquire()
    lim.overloaded(slot, retry_after=3.0)
    slot.release()
    assert lim.level == Level(4, 4)
    other = []
    in_other_thread(lambda: other.append(lim.acquire())).join(5)
    assert clock.sleeps == [3.0] and len(other) == 1


def test_requests_wait_for_a_slot_when_the_limit_is_reached():
    lim, _ = limiter(4)  # limit 1
    held = lim.acquire()
    got = threading.Event()
    thread = in_other_thread(lambda: (lim.acquire(), got.set()))
    assert not got.wait(0.2)
    held.release()
    assert got.wait(5)
    thread.join(5)


def test_a_thread_holding_a_slot_is_not_made_to_wait_for_a_second_one():
    """Reading a blob from a registry while uploading it to the same registry must not deadlock."""
    lim, _ = limiter(4)  # limit 1
    reading = lim.acquire()
    uploading = lim.acquire()  # same thread: granted at once
    got = threading.Event()
    in_other_thread(lambda: (lim.acquire(), got.set()))
    assert not got.wait(0.2)  # another thread still waits
    uploading.release()
    assert not got.wait(0.1)
    reading.release()
    assert got.wait(5)


def test_retry_after_makes_every_other_request_to_the_host_wait():
    lim, clock = limiter(8)
    refused = lim.acquire()
    lim.overloaded(refused, retry_after=2.0)
    refused.release()
    # Another thread's request waits out the pause ...
    in_other_thread(lambda: lim.acquire().release()).join(5)
    assert clock.sleeps == [2.0]
    # ... while the refused thread (which waited in its own backoff) is not made to wait twice.
    lim.acquire().release()
    assert clock.sleeps == [2.0]
    # Once the pause is over nobody waits.
    clock.now += 5
    in_other_thread(lambda: lim.acquire().release()).join(5)
    assert clock.sleeps == [2.0]


def test_a_longer_retry_after_extends_the_pause():
    lim, clock = limiter(8, adaptive=False)
    first = lim.acquire()
    lim.overloaded(first, retry_after=1.0)
    second = lim.acquire()  # the refused thread skips its pause once
    lim.overloaded(second, retry_after=4.0)
    first.release()
    second.release()
    in_other_thread(lambda: lim.acquire().release()).join(5)
    assert clock.sleeps == [4.0]


def test_a_rate_spaces_requests_evenly():
    clock = FakeClock()
    bucket = RateBucket(4.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.take()
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]
    clock.now += 10  # idle: no saved-up burst beyond one request
    bucket.take()
    bucket.take()
    assert clock.sleeps[4:] == [0.25]


def test_a_limiter_with_a_rate_paces_its_requests():
    lim, clock = limiter(8, rate=2.0)
    start = clock.now
    for _ in range(3):
        lim.acquire().release()
    assert clock.now - start == pytest.approx(1.0) and clock.sleeps == [0.5, 0.5]


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateBucket(0)
