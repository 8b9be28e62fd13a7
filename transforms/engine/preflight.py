"""Settling, before any pipeline starts, the images whose destinations are already current.

A rerun of a finished sync should cost a listing and a digest check per image, not a
pipeline run: on Dataflow a job with nothing to do still takes minutes to start, and on
one machine the runner's start-up is most of a rerun. The launcher therefore asks each
destination what its names point at; only where a name exists does it read the source
manifest and let :func:`plan_target` (the planning step's own rule) decide. A target is
settled here only when it is current, and then gets the audit rows the pipeline would
have written. Everything else — errors, conversions, images to copy — is handed to the
pipeline unchanged, which reports it as before; a source that cannot be listed is
reported here, with the rows the pipeline's listing step would write.

Beam-free and I/O-bound: a bounded thread pool, with the per-registry request limits
of the stores' clients.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable

from imagepush.transforms import errors
from imagepush.transforms.records import CURRENT, AuditRow, now
from imagepush.transforms.engine.manifests import listing_failed, rows_skipped, write_manifests
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.engine.current import check_current
from imagepush.transforms.engine.jobs import CopyJob, SyncSpec
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger("imagepush.progress")

@dataclass
class Preflight:
    """What is left for the pipeline, and the audit rows of what is already done."""

    jobs: list[CopyJob] = field(default_factory=list)
    #: Syncs whose images were too many to hand over as jobs: their workers list them.
    syncs: list[SyncSpec] = field(default_factory=list)
    rows: list[AuditRow] = field(default_factory=list)
    #: (image, destination) pairs found current.
    current: int = 0

    @property
    def pipeline_needed(self) -> bool:
        return bool(self.jobs or self.syncs)


def preflight(
    jobs: Iterable[CopyJob],
    syncs: Iterable[SyncSpec],
    run_id: str,
    options: StoreOptions | None = None,
    parallel: int = 8,
    max_jobs: int | None = None,
    stores: StoreCache | None = None,
) -> Preflight:
    """Check every job (and every image the syncs list) against its destinations.

    ``max_jobs``: a sync that would leave more jobs than this (with those already left)
    is handed back whole, its listing stopped, for the pipeline's workers to list.
    ``stores``: the caller's store objects (and registry clients), left open.

    The jobs left keep the order they were listed in: the direct executor claims
    blobs in that order, and ``plan`` predicts its uploads and mounts from it.
    """
    result = Preflight()
    owned = stores is None
    stores = StoreCache(options) if stores is None else stores
    # Mostly waiting on registries: as many checks in flight as one registry accepts.
    workers = max(1, parallel, (options or StoreOptions()).registry_concurrency)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="imagepush-preflight") as pool:
            copies = Preflight()
            for job, (left, rows) in bounded_map(lambda j: _check(j, stores, run_id), jobs, workers=workers,
                                                 executor=pool, ordered=True):
                _take(copies, job, left, rows)
            _commit(result, copies)
            for spec in syncs:
                started = now()
                mine = Preflight()
                listing = bounded_map(lambda j: _check(j, stores, run_id), sync_jobs(spec, stores), workers=workers,
                                      executor=pool, ordered=True)
                try:
                    for job, (left, rows) in listing:
                        _take(mine, job, left, rows)
                        if max_jobs is not None and len(result.jobs) + len(mine.jobs) > max_jobs:
                            log.info("%s: more than %d images to copy; its listing is left to the workers",
                                     spec.source, max_jobs)
                            listing.close()
                            result.syncs.append(spec)
                            break
                    else:
                        _commit(result, mine)
                except Exception as exc:
                    # Reported here, as the pipeline's listing step would: listing it there
                    # again would only repeat the client's retries. Images listed before
                    # the failure are still copied.
                    _commit(result, mine)
                    result.rows.extend(listing_failed(spec, run_id, exc, started))
    finally:
        if owned:
            stores.close()
    return result


def _take(result: Preflight, job: CopyJob, left: CopyJob | None, rows: list[AuditRow]) -> None:
    if left is not None:
        result.jobs.append(left)
    result.rows.extend(rows)
    result.current += sum(1 for row in rows if row.role != "child")


def _commit(result: Preflight, part: Preflight) -> None:
    """Add what one sync settled to the run's result, and say so."""
    result.jobs.extend(part.jobs)
    result.rows.extend(part.rows)
    result.current += part.current
    for row in part.rows:
        if row.role != "child" and row.status == CURRENT:
            log.info("%s -> %s: current", row.source, row.destination)


def _check(job: CopyJob, stores: StoreCache, run_id: str) -> tuple[CopyJob | None, list[AuditRow]]:
    """(the job with only its unsettled targets, or None; rows of the current targets)."""
    try:
        return _settle(job, stores, run_id)
    except Exception as exc:  # anything unexpected: the pipeline does the job and reports
        log.debug("preflight: %s left to the pipeline: %s", job.source, errors.one_line(exc))
        return job, []


def _settle(job: CopyJob, stores: StoreCache, run_id: str) -> tuple[CopyJob | None, list[AuditRow]]:
    check = check_current(job, stores)
    rows = [row for tp in check.current
            for row in write_manifests(tp, {}, stores.destination(tp.target.store), run_id).rows]
    rows += [row for tp in check.skipped for row in rows_skipped(tp, run_id)]
    if not check.left:
        return None, rows
    return (job if len(check.left) == len(job.targets) else replace(job, targets=tuple(check.left))), rows
