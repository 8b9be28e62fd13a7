"""The migration pipeline as one composite transform.

    jobs ─ Resolve ─ PlanTargets ─┬─ blob requests ─ GroupByKey(source blob) ─ CopyBlobs ─┐
                                  └─ target plans ─────────────────────────────────────────┴─ CoGroupByKey(target)
         ─ Finalize (manifests) ─ GroupByKey(store) ─ Publish (names) ─ audit rows ─ WriteAudit

Grouping blob requests by *source* blob means each blob is read once and written once
per destination however many images share it; grouping finalized images by store
makes every name at a store visible in one last write, after all its manifests.
"""

from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam

from imagepush.transforms import audit, errors, records
from imagepush.transforms.beam.concurrency import DEFAULT_PARALLEL
from imagepush.transforms.beam.copyblobs import CopyBlobsFn
from imagepush.transforms.engine.manifests import listing_failed
from imagepush.transforms.naming import sync_jobs
from imagepush.transforms.engine.jobs import CopyJob, SyncSpec
from imagepush.transforms.beam.publish import FinalizeFn, PublishFn
from imagepush.transforms.beam.resolve import BLOBS, PlanTargetsFn, ResolveImageFn
from imagepush.transforms.storecache import StoreCache
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger("imagepush.progress")


class ExpandSyncFn(beam.DoFn):
    """SyncSpec -> one CopyJob per image the source lists (a generator: catalogs can be huge).

    A source that cannot be listed yields an audit row directly on the ``failed`` output.
    """

    FAILED = "failed"

    def __init__(self, run_id: str, options: StoreOptions | None = None) -> None:
        self._run_id = run_id
        self._options = options

    def setup(self) -> None:
        self._stores = StoreCache(self._options)

    def process(self, spec: SyncSpec) -> Iterator[CopyJob]:
        started = records.now()
        try:
            yield from sync_jobs(spec, self._stores)
        except Exception as exc:
            message = f"listing {spec.source} failed: {errors.one_line(exc)}"
            log.warning(message)
            for row in listing_failed(spec, self._run_id, message, started):
                yield beam.pvalue.TaggedOutput(self.FAILED, row)

    def teardown(self) -> None:
        self._stores.close()


class WriteAuditFn(beam.DoFn):
    """Writes all rows of the run as one Parquet file (rows arrive as a side input).

    Rows the launcher settled before the pipeline come from a report file of their own
    (``settled_url``) rather than through the job graph, which a large rerun would bloat.
    """

    def __init__(self, url: str, settled_url: str | None = None) -> None:
        self._url = url
        self._settled_url = settled_url

    def process(self, _unused, rows) -> Iterator[int]:
        rows = list(rows)
        if self._settled_url:
            rows += audit.read_rows(self._settled_url)
        audit.write(rows, self._url)
        yield len(rows)


class MigrateImages(beam.PTransform):
    """PCollection[CopyJob] -> PCollection[AuditRow], with the audit written to ``audit_url``."""

    def __init__(
        self,
        run_id: str,
        audit_url: str,
        options: StoreOptions | None = None,
        extra_rows: beam.PCollection | None = None,
        parallel: int = DEFAULT_PARALLEL,
        settled_url: str | None = None,
    ) -> None:
        super().__init__()
        self._settled_url = settled_url
        self._options = options
        self._parallel = parallel
        self._run_id = run_id
        self._audit_url = audit_url
        self._extra_rows = extra_rows

    def expand(self, jobs: beam.PCollection) -> beam.PCollection:
        plans = jobs | "SpreadJobs" >> beam.Reshuffle() | "Resolve" >> beam.ParDo(ResolveImageFn(self._options, self._parallel))
        planned = plans | "PlanTargets" >> beam.ParDo(PlanTargetsFn(self._options, self._parallel)).with_outputs(BLOBS, main="targets")
        blob_results = (
            planned[BLOBS]
            | "GroupBySourceBlob" >> beam.GroupByKey()
            | "CopyBlobs" >> beam.ParDo(CopyBlobsFn(self._options, self._parallel))
        )
        rows = (
            {"plan": planned.targets, "blobs": blob_results}
            | "JoinBlobsToTargets" >> beam.CoGroupByKey()
            | "WriteManifests" >> beam.ParDo(FinalizeFn(self._run_id, self._options, self._parallel))
            | "GroupByStore" >> beam.GroupByKey()
            | "PublishNames" >> beam.ParDo(PublishFn(self._options, self._parallel))
        )
        if self._extra_rows is not None:
            rows = (rows, self._extra_rows) | "AllRows" >> beam.Flatten()
        _ = (
            jobs.pipeline
            | "AuditTrigger" >> beam.Create([None])
            | "WriteAudit" >> beam.ParDo(WriteAuditFn(self._audit_url, self._settled_url), beam.pvalue.AsList(rows))
        )
        return rows
