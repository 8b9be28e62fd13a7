"""The one bounded map: I/O-bound work on a few threads, never too much of it at once.

Copying images is mostly waiting on registries, object stores and disks, so every step
that does I/O runs its items on a small thread pool. The input may be a lazy listing of
a catalog of millions, so at most ``limit`` items are taken from it before their
results are handed back: memory stays flat however long the input is.

This module imports nothing of the project, so stores and the engine can both use it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    limit: int | None = None,
    ordered: bool = False,
    name: str = "io",
    executor: ThreadPoolExecutor | None = None,
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for every item, computed ``workers`` at a time.

    ``limit`` items at most are in flight (default ``2 × workers``). Results come as
    they finish, or in input order with ``ordered`` (then ``limit - 1`` items are always
    being worked on ahead of the one handed back). An exception raised by ``fn`` is
    raised here when its result is reached; the caller decides whether ``fn`` catches
    its own errors. ``executor`` reuses a pool the caller keeps (a DoFn's, across
    bundles); otherwise one is made and shut down with the generator.
    """
    workers = max(1, workers)
    limit = max(1, limit if limit is not None else 2 * workers)
    own = executor is None
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"imagepush-{name}") if executor is None else executor
    pending: deque[tuple[T, Future[R]]] = deque()

    def finished(block: bool) -> Iterator[tuple[T, R]]:
        nonlocal pending
        if ordered:  # the head only, once the window is full: the rest keeps running ahead
            if block and pending:
                item, future = pending.popleft()
                yield item, future.result()
            return
        if block and pending:
            wait([f for _, f in pending], return_when=FIRST_COMPLETED)
        still: deque[tuple[T, Future[R]]] = deque()
        done = []
        for item, future in pending:
            (done if future.done() else still).append((item, future))
        pending = still
        for item, future in done:
            yield item, future.result()

    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            yield from finished(block=len(pending) >= limit)
        while pending:
            yield from finished(block=True)
    finally:
        for _, future in pending:
            future.cancel()
        if own:
            pool.shutdown(wait=False, cancel_futures=True)
