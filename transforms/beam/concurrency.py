"""Bounded I/O concurrency inside a DoFn, with every output emitted by the bundle thread.

Copying images is waiting: on registries, object stores and disks. Beam's local
multi-threaded mode would give parallelism by running several bundles over gRPC, which
costs as much CPU as the copies themselves on a 2-core machine; on Dataflow the worker
threads are a fleet-wide setting. So each I/O DoFn runs its elements on a small pool of
its own (created in ``setup``, reused across bundles, connection pools with it), keeps at
most ``2 × workers`` in flight, yields results from ``process`` as they complete and the
rest from ``finish_bundle``. Outputs and metric updates stay on the bundle thread, where
Beam expects them (metrics from other threads are lost, apache/beam#21217).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

from apache_beam import DoFn
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from imagepush.transforms.storecache import StoreCache
from imagepush.transforms.stores.options import StoreOptions

#: Elements in flight per I/O DoFn instance (and worker): enough to keep a registry or an
#: object store busy from a 2-core machine; Dataflow multiplies it by its worker threads.
DEFAULT_PARALLEL = 8


class BoundedPool:
    """A thread pool that never holds more than ``2 × workers`` unfinished elements."""

    def __init__(self, workers: int, name: str, observe: Callable[[Any], None] | None = None) -> None:
        self.workers = max(1, workers)
        #: Called on the bundle thread for every output before it is emitted (metrics).
        self._observe = observe
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"imagepush-{name}")
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Iterable[Any]], *args: Any) -> Iterator[Any]:
        """Queue ``fn(*args)``; yields the outputs of work that has finished meanwhile."""
        self._pending.append(self._pool.submit(lambda: list(fn(*args))))
        yield from self._collect(block=len(self._pending) >= 2 * self.workers)

    def _collect(self, block: bool) -> Iterator[Any]:
        if block and self._pending:
            wait(self._pending, return_when=FIRST_COMPLETED)
        still: deque[Future] = deque()
        for future in self._pending:
            if future.done():
                for output in future.result():  # a bug in the work re-raises here, failing the bundle
                    if self._observe is not None:
                        self._observe(output)
                    yield output
            else:
                still.append(future)
        self._pending = still

    def drain(self) -> Iterator[Any]:
        """Wait for everything queued; outputs come wrapped for ``finish_bundle``."""
        while self._pending:
            for output in self._collect(block=True):
                yield in_global_window(output)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def in_global_window(output: Any) -> Any:
    """``finish_bundle`` outputs must carry their window; ours are all in the global one."""
    if isinstance(output, TaggedOutput):
        return TaggedOutput(output.tag, WindowedValue(output.value, MIN_TIMESTAMP, [GlobalWindow()]))
    return WindowedValue(output, MIN_TIMESTAMP, [GlobalWindow()])


class StoreDoFn(DoFn):
    """A DoFn whose elements are I/O against stores, run ``parallel`` at a time.

    Subclasses define ``work(element) -> iterable of outputs`` (run on the pool, so it
    must not touch Beam metrics) and may define ``observe(output)`` (run on the bundle
    thread for every output: the place for metrics). Only plain configuration is
    pickled; stores, their connection pools and the thread pool are made in ``setup``.
    """

    pool_name = "io"

    def __init__(self, options: StoreOptions | None = None, parallel: int = DEFAULT_PARALLEL) -> None:
        self._options = options
        self._parallel = parallel

    def setup(self) -> None:
        self._stores = StoreCache(self._options)
        self._pool = BoundedPool(self._parallel, self.pool_name, self.observe)

    def observe(self, output: Any) -> None:
        """Metrics hook, on the bundle thread."""

    def process(self, element: Any) -> Iterator[Any]:
        yield from self._pool.submit(self.work, element)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._pool.drain()

    def teardown(self) -> None:
        self._pool.shutdown()
        self._stores.close()
