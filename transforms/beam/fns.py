"""The DoFns: each takes a batch of elements, runs one engine function over it, yields the results.

Shaped for every Beam runner, the Dask runner included, which runs only a portable
subset of Beam: elements are batched by grouping on a shard key (never
``BatchElements``, whose last batch is flushed from ``finish_bundle``), a batch's I/O
runs on a bounded thread pool inside ``process``, and every output is yielded from
``process``. Metrics are updated there too, on the bundle thread, where Beam counts
them. The stores a worker opens (with their connection pools and per-registry request
limits) are shared by all its DoFns through :class:`apache_beam.utils.shared.Shared`.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from imagepush.transforms import audit
from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.jobs import COPIED, FAILED, MOUNTED, PRESENT, BlobRequest, BlobResult, CopyJob, SyncSpec
from imagepush.transforms.engine.manifests import Finalized, listing_failed
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.engine.progress import NO_PROGRESS, EventWriter, ProgressReporter
from imagepush.transforms.engine.steps import (
    Progress,
    blob_groups,
    finalize_target,
    finals_by_store,
    plan_job,
    publish_store,
    results_by_target,
)
from imagepush.transforms.engine.streaming import DEFAULT_CHUNK
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.records import FAILED as ROW_FAILED, AuditRow, now
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions

T = TypeVar("T")

#: Elements in flight per DoFn instance (and worker): enough to keep a registry or an
#: object store busy from a 2-core machine; a distributed runner multiplies it by workers.
DEFAULT_PARALLEL = 8


def shard_of(key: str, shards: int) -> int:
    """A stable shard for a key (the same in every process, unlike ``hash``)."""
    return zlib.crc32(key.encode()) % max(1, shards)


class _StoresHolder:
    """The opened stores of one worker process; Shared needs an object it can weakly refer to."""

    def __init__(self, options: StoreOptions | None) -> None:
        self.stores = StoreCache(options)


class StoresFn(beam.DoFn):
    """A DoFn that works on stores: only plain configuration is pickled, the stores are the worker's.

    ``progress``: the run's progress folder on this machine (see engine/progress.py), or
    None where the launcher cannot read the workers' files (a remote runner): each DoFn
    instance then appends its events to a file of its own there.
    """

    def __init__(self, shared: Shared, options: StoreOptions | None, progress: str | None = None) -> None:
        self._shared = shared
        self._options = options
        self._progress_dir = progress

    def setup(self) -> None:
        options = self._options
        self._holder = self._shared.acquire(lambda: _StoresHolder(options))
        self._reporter: ProgressReporter = EventWriter(self._progress_dir) if self._progress_dir else NO_PROGRESS
        self._progress = Progress(self._reporter, levels=self.stores.registry_levels)

    def teardown(self) -> None:
        if isinstance(self._reporter, EventWriter):
            self._reporter.close()

    @property
    def stores(self) -> StoreCache:
        return self._holder.stores


class BatchFn(StoresFn):
    """Base of the I/O steps: ``process((shard, items))`` runs the items on a bounded thread pool.

    The pool is made in ``setup`` and kept across bundles.
    """

    name = "io"

    def __init__(self, shared: Shared, options: StoreOptions | None, parallel: int,
                 progress: str | None = None) -> None:
        super().__init__(shared, options, progress)
        self._parallel = max(1, parallel)

    def setup(self) -> None:
        super().setup()
        self._executor = ThreadPoolExecutor(self._parallel, thread_name_prefix=f"imagepush-{self.name}")

    def teardown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        super().teardown()

    def _map(self, fn: Callable[[T], Any], items: Iterable[T]) -> Iterator[tuple[T, Any]]:
        return bounded_map(fn, items, workers=self._parallel, executor=self._executor)


class ListSyncFn(StoresFn):
    """SyncSpec -> a CopyJob per image its source lists, or failed audit rows if it cannot be listed.

    A generator: a catalog can be huge, and jobs flow on while the listing goes on.
    """

    def __init__(self, shared: Shared, run_id: str, options: StoreOptions | None, progress: str | None = None) -> None:
        super().__init__(shared, options, progress)
        self._run_id = run_id

    def process(self, spec: SyncSpec) -> Iterator[CopyJob | AuditRow]:
        started = now()
        try:
            for job in sync_jobs(spec, self.stores):
                self._progress.known(1)
                yield job
        except Exception as exc:
            yield from listing_failed(spec, self._run_id, exc, started)
        self._progress.listed()


class ResolvePlanFn(BatchFn):
    """(shard, [CopyJob]) -> a TargetPlan per (image, destination): manifest tree read, formats chosen."""

    name = "resolve"

    def process(self, element: tuple[int, Iterable[CopyJob]]):
        _, jobs = element
        for _, plans in self._map(self._plan, jobs):
            self._progress.planned_images(1)
            yield from plans

    def _plan(self, job: CopyJob):
        return plan_job(job, self.stores)


class CopyBlobsFn(BatchFn):
    """(shard, [(blob key, BlobRequest)]) -> (target key, BlobResult) for every request.

    Requests are grouped by source blob inside the batch, so each blob is read once and
    written once per destination however many images share it. The largest blobs start
    first: one big layer started last would copy alone at the end.
    """

    name = "copy"

    def __init__(self, shared: Shared, options: StoreOptions | None, parallel: int,
                 chunk_size: int = DEFAULT_CHUNK, progress: str | None = None) -> None:
        super().__init__(shared, options, parallel, progress)
        self._chunk = chunk_size
        self._copied = Metrics.counter("imagepush", "blobs_copied")
        self._present = Metrics.counter("imagepush", "blobs_present")
        self._bytes = Metrics.counter("imagepush", "bytes_copied")
        self._failed = Metrics.counter("imagepush", "blobs_failed")

    def setup(self) -> None:
        super().setup()
        self._delivery = BlobDelivery(self.stores, self._chunk, pacer=self.stores.pacer)

    def process(self, element: tuple[int, Iterable[tuple[str, BlobRequest]]]):
        _, keyed = element
        groups = blob_groups(keyed)
        self._progress.planned(groups)
        for _, results in self._map(self._delivery.deliver, groups):
            self._progress.delivered(result for _, result in results)
            for target_key, result in results:
                self._count(result)
                yield target_key, result

    def _count(self, result: BlobResult) -> None:
        if result.status == COPIED:
            self._copied.inc()
            self._bytes.inc(result.bytes_copied)
        elif result.status in (PRESENT, MOUNTED):
            self._present.inc()
        elif result.status == FAILED:
            self._failed.inc()


class FinalizeFn(BatchFn):
    """(shard, {plans, blobs}) -> (store, Finalized): manifests written, names still to publish."""

    name = "manifests"

    def __init__(self, shared: Shared, run_id: str, options: StoreOptions | None, parallel: int,
                 progress: str | None = None) -> None:
        super().__init__(shared, options, parallel, progress)
        self._run_id = run_id

    def process(self, element: tuple[int, dict[str, Iterable]]):
        _, grouped = element
        results = results_by_target(grouped["blobs"])
        stores, run_id = self.stores, self._run_id
        # Identical jobs share a key; each is finalized (idempotently) and audited.
        for tp, final in self._map(lambda tp: finalize_target(tp, results.get(tp.key, []), stores, run_id),
                                   grouped["plans"]):
            self._progress.finalized(1)
            yield tp.target.store, final


class PublishFn(BatchFn):
    """(shard, [(store, Finalized)]) -> audit rows, after every name of a store is published at once."""

    name = "publish"

    def __init__(self, shared: Shared, options: StoreOptions | None, parallel: int,
                 progress: str | None = None) -> None:
        super().__init__(shared, options, parallel, progress)
        self._ok = Metrics.counter("imagepush", "images_ok")
        self._failed = Metrics.counter("imagepush", "images_failed")

    def process(self, element: tuple[int, Iterable[tuple[str, Finalized]]]):
        _, keyed = element
        stores, reporter = self.stores, self._reporter
        for _, rows in self._map(lambda item: publish_store(item[0], item[1], stores, reporter), finals_by_store(keyed).items()):
            for row in rows:
                if row.role != "child":
                    (self._failed if row.status == ROW_FAILED else self._ok).inc()
                yield row


class WriteAuditPartFn(beam.DoFn):
    """(shard, rows) -> the URL of one part file holding them, sorted; rewritten whole on a retry."""

    def __init__(self, audit_url: str) -> None:
        self._audit_url = audit_url

    def process(self, element: tuple[int, Iterable[AuditRow]]) -> Iterator[str]:
        shard, rows = element
        url = audit.part_url(self._audit_url, shard)
        audit.write(rows, url)
        yield url


class MergeAuditFn(beam.DoFn):
    """(None, part URLs) -> the number of rows in the one audit file, parts merged in order and removed."""

    def __init__(self, audit_url: str, settled_url: str | None = None) -> None:
        self._audit_url = audit_url
        self._settled_url = settled_url

    def process(self, element: tuple[Any, Iterable[str | None]]) -> Iterator[int]:
        _, parts = element
        urls = sorted(p for p in parts if p)
        if self._settled_url:
            urls.append(self._settled_url)
        count = audit.merge(urls, self._audit_url)
        audit.remove_parts(self._audit_url)
        yield count
