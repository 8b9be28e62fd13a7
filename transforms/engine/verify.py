"""``verify``: is every source image at its destinations, judged without writing anything?

A migration is signed off by checking it, not by copying it again (regsync's ``check``).
The launcher does this alone, without Beam: the work is a manifest HEAD per tag (and,
for converted destinations, a manifest and a config read), which a bounded thread pool
over the stores' per-registry request limits finishes sooner than a pipeline starts.
The check itself is :func:`current.verify_job`, the is-it-current rule the preflight
uses; destinations are opened but never prepared, so nothing is created there.
"""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from imagepush.transforms import errors
from imagepush.transforms.engine.current import Verdict, verify_job
from imagepush.transforms.engine.jobs import CopyJob, RecordSource, SyncSpec
from imagepush.transforms.engine.manifests import listing_failed
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.engine.records_io import jobs_from_file, match_files
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.records import CURRENT, FAILED, AuditRow, now
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger("imagepush.progress")


def verify(
    jobs: Iterable[CopyJob],
    syncs: Iterable[SyncSpec],
    records: Iterable[RecordSource],
    run_id: str,
    options: StoreOptions | None = None,
    parallel: int = 8,
) -> list[AuditRow]:
    """One audit row per (source image, destination): ``current``, or ``failed`` with its kind.

    Sources that cannot be listed and records that cannot be read get the failed rows
    a copy would have written for them; the other images are still checked.
    """
    options = options or StoreOptions()
    stores = StoreCache(options)
    workers = max(1, parallel, options.registry_concurrency)
    rows: list[AuditRow] = []
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="imagepush-verify") as pool:
            def check(items: Iterable[CopyJob]) -> None:
                for job, verdicts in bounded_map(lambda j: _judged(j, stores), items, workers=workers,
                                                 executor=pool):
                    rows.extend(_row(job, v, run_id, started) for v, started in verdicts)

            check(jobs)
            for spec in syncs:
                started = now()
                try:
                    check(sync_jobs(spec, stores))
                except Exception as exc:
                    rows.extend(listing_failed(spec, run_id, exc, started))
            for source in records:
                check(_record_jobs(source, run_id, rows))
    finally:
        stores.close()
    return rows


def _judged(job: CopyJob, stores: StoreCache) -> list[tuple[Verdict, dt.datetime]]:
    started = now()
    verdicts = verify_job(job, stores)
    for v in verdicts:  # failures are named once, by the summary
        if v.current:
            log.info("%s -> %s: current", job.source, v.target.destination)
    return [(v, started) for v in verdicts]


def _record_jobs(source: RecordSource, run_id: str, rows: list[AuditRow]) -> Iterator[CopyJob]:
    """The jobs a records URL names; its bad rows (and unreadable files) go straight to ``rows``."""
    try:
        urls = match_files(source.url)
    except Exception as exc:
        at = now()
        message, kind = errors.describe(exc)
        rows.extend(
            AuditRow(run_id=run_id, source=source.url, destination=out.ref, source_digest=None,
                     destination_digest=None, media_type=None, status=FAILED, error=message, blobs_copied=0,
                     blobs_skipped=0, bytes_copied=0, started_at=at, finished_at=at, error_kind=kind)
            for out in (source.outputs or ())
        )
        return
    for url in urls:
        for item in jobs_from_file(url, source, run_id):
            if isinstance(item, AuditRow):
                rows.append(item)
            else:
                yield item


def _row(job: CopyJob, v: Verdict, run_id: str, started: dt.datetime) -> AuditRow:
    root = v.root
    return AuditRow(
        run_id=run_id, source=job.source, destination=v.target.destination,
        source_digest=root.manifest.digest if root else None, destination_digest=v.found,
        media_type=root.manifest.media_type if root else None, status=CURRENT if v.current else FAILED,
        error=v.error, blobs_copied=0, blobs_skipped=0, bytes_copied=0, started_at=started, finished_at=now(),
        role="index" if root is not None and root.is_index else "image", error_kind=v.error_kind,
        repository=job.repository, tag=job.tag, format=v.target.format, compression=v.target.compression,
        platforms=list(job.platforms),
    )
