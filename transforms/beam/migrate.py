"""The migration as composite transforms: jobs in, audit rows out, the report written once.

    SyncSpec ─ ListSyncs ─┐
                          ├─ CopyJob | AuditRow ─ MigrateImages ─ AuditRow ─ WriteAudit
    CopyJob ──────────────┘

Inside ``MigrateImages`` (every arrow a GroupByKey on a shard key, so each step gets
its elements in batches whatever the runner):

    jobs ─ ResolvePlan ─ TargetPlan ─┬─ blob requests ─ CopyBlobs ─ (target, BlobResult) ─┐
                                     └──────────────────────────────────────────────────────┴─ Finalize
         ─ (store, Finalized) ─ Publish ─ AuditRow

Blob requests are sharded by *source* blob, so each blob is read once and written once
per destination however many images share it; finalized images are sharded by store,
so every name at a store becomes visible in one last write, after all its manifests.
The graph is one chain ending in one sink, with no tagged outputs and nothing emitted
from ``finish_bundle``: the subset of Beam that every runner executes, the Dask runner
included.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.utils.shared import Shared

from imagepush.transforms.beam.fns import (
    DEFAULT_PARALLEL,
    CopyBlobsFn,
    FinalizeFn,
    ListSyncFn,
    MergeAuditFn,
    PublishFn,
    ResolvePlanFn,
    WriteAuditPartFn,
    shard_of,
)
from imagepush.transforms.engine.jobs import CopyJob
from imagepush.transforms.engine.plan import blob_requests
from imagepush.transforms.engine.steps import blob_key
from imagepush.transforms.records import AuditRow
from imagepush.transforms.stores.options import StoreOptions


class _Sharded(beam.PTransform):
    """(key, value) pairs -> (shard, [values]): batches for a step, spread over ``shards`` keys."""

    def __init__(self, shards: int) -> None:
        super().__init__()
        self._shards = shards

    def expand(self, pairs):
        shards = self._shards
        return (
            pairs
            | "Shard" >> beam.MapTuple(lambda key, value: (shard_of(key, shards), value))
            | "Group" >> beam.GroupByKey()
        )


class ListSyncs(beam.PTransform):
    """PCollection[SyncSpec] -> PCollection[CopyJob | AuditRow]: every image each source lists.

    A source that cannot be listed gives failed audit rows, one per destination, in the
    same PCollection: downstream steps tell records apart by type.
    """

    def __init__(self, run_id: str, options: StoreOptions | None = None, *, shared: Shared | None = None,
                 progress: str | None = None) -> None:
        super().__init__()
        self._run_id = run_id
        self._options = options
        self._shared = shared or Shared()
        self._progress = progress

    def expand(self, specs):
        return specs | "List" >> beam.ParDo(ListSyncFn(self._shared, self._run_id, self._options, self._progress))


class MigrateImages(beam.PTransform):
    """PCollection[CopyJob | AuditRow] -> PCollection[AuditRow]: every image copied, one row per manifest.

    Audit rows in the input (a listing that failed) pass through to the output.
    ``shards`` is how many batches each step's work is cut into: 1 on one machine
    (one batch, all of it on the step's thread pool), more on a distributed runner so
    every worker gets some. ``progress``: a folder on the workers' machine where each
    step appends its progress events (see engine/progress.py), or None.
    """

    def __init__(
        self,
        run_id: str,
        options: StoreOptions | None = None,
        *,
        parallel: int = DEFAULT_PARALLEL,
        shards: int = 1,
        shared: Shared | None = None,
        progress: str | None = None,
    ) -> None:
        super().__init__()
        self._run_id = run_id
        self._options = options
        self._parallel = parallel
        self._shards = max(1, shards)
        self._shared = shared or Shared()
        self._progress = progress

    def expand(self, records):
        shared, options, parallel, shards = self._shared, self._options, self._parallel, self._shards
        progress = self._progress
        jobs = records | "Jobs" >> beam.Filter(lambda r: isinstance(r, CopyJob))
        passed = records | "PassedRows" >> beam.Filter(lambda r: isinstance(r, AuditRow))
        plans = (
            jobs
            | "KeyJobs" >> beam.Map(lambda job: (job.source, job))
            | "BatchJobs" >> _Sharded(shards)
            | "ResolvePlan" >> beam.ParDo(ResolvePlanFn(shared, options, parallel, progress))
        )
        blob_results = (
            plans
            | "BlobRequests" >> beam.FlatMap(lambda tp: [(blob_key(r), (blob_key(r), r)) for r in blob_requests(tp)])
            | "BatchBlobs" >> _Sharded(shards)
            | "CopyBlobs" >> beam.ParDo(CopyBlobsFn(shared, options, parallel, progress=progress))
            | "ShardResults" >> beam.MapTuple(lambda target, result: (shard_of(target, shards), (target, result)))
        )
        sharded_plans = plans | "ShardPlans" >> beam.Map(lambda tp: (shard_of(tp.key, shards), tp))
        rows = (
            {"plans": sharded_plans, "blobs": blob_results}
            | "JoinBlobsToTargets" >> beam.CoGroupByKey()
            | "WriteManifests" >> beam.ParDo(FinalizeFn(shared, self._run_id, options, parallel, progress))
            | "KeyStores" >> beam.MapTuple(lambda store, final: (store, (store, final)))
            | "BatchStores" >> _Sharded(shards)
            | "PublishNames" >> beam.ParDo(PublishFn(shared, options, parallel, progress))
        )
        return (rows, passed) | "AllRows" >> beam.Flatten()


class WriteAudit(beam.PTransform):
    """PCollection[AuditRow] -> the row count, once the one Parquet report at ``url`` is written.

    Workers write sorted parts; the last step merges them (and ``settled_url``, rows the
    launcher settled before the pipeline) into ``url``. A report is written even when
    there are no rows.
    """

    def __init__(self, url: str, *, shards: int = 1, settled_url: str | None = None) -> None:
        super().__init__()
        self._url = url
        self._shards = max(1, shards)
        self._settled_url = settled_url

    def expand(self, rows):
        shards = self._shards
        parts = (
            rows
            | "KeyRows" >> beam.Map(lambda row: (f"{row.source}|{row.destination}", row))
            | "BatchRows" >> _Sharded(shards)
            | "WriteParts" >> beam.ParDo(WriteAuditPartFn(self._url))
        )
        always: Any = rows.pipeline | "Always" >> beam.Create([None])
        return (
            (parts, always)
            | "AllParts" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda part: (None, part))
            | "Gather" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(MergeAuditFn(self._url, self._settled_url))
        )
