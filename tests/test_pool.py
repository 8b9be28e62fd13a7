"""The one bounded map: every item once, never more than the limit in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagepush.transforms.pool import bounded_map


def test_every_item_comes_back_once_with_its_result():
    out = dict(bounded_map(lambda n: n * n, range(100), workers=4))
    assert out == {n: n * n for n in range(100)}


def test_ordered_results_keep_input_order_though_later_items_finish_first():
    delays = [0.05, 0.0, 0.03, 0.0, 0.01]

    def slow(i: int) -> int:
        time.sleep(delays[i])
        return i

    assert [item for item, _ in bounded_map(slow, range(5), workers=5, ordered=True)] == [0, 1, 2, 3, 4]


def test_a_lazy_input_is_read_no_further_than_the_limit_ahead_of_the_results():
    taken = []
    in_flight, peak = 0, 0
    lock = threading.Lock()

    def source():
        for i in range(50):
            taken.append(i)
            yield i

    def work(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.002)
        with lock:
            in_flight -= 1
        return i

    results = bounded_map(work, source(), workers=3, limit=5)
    first = next(results)
    assert len(taken) <= 5
    assert sorted([first[0]] + [i for i, _ in results]) == list(range(50))
    assert peak <= 3


def test_an_error_in_the_work_is_raised_where_its_result_is_reached():
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    with pytest.raises(ValueError, match="item 3 is bad"):
        list(bounded_map(work, range(10), workers=2, ordered=True))


def test_a_callers_executor_is_left_running_for_its_next_use():
    with ThreadPoolExecutor(2) as pool:
        assert sorted(r for _, r in bounded_map(str, range(3), workers=2, executor=pool)) == ["0", "1", "2"]
        assert pool.submit(lambda: "still open").result() == "still open"
