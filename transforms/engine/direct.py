"""A migration run in this process without Beam: the path for small local runs.

Starting Beam costs about a second of imports and graph set-up before its first
bundle, more than copying a few small images takes. For a run on this machine with
few images the launcher calls :func:`migrate` instead: the same steps
(``engine/steps.py``), in the same order and with the same grouping rules as the Beam
graph with one shard (every step's work in one batch on a bounded thread pool), and
the same audit rows. Each step finishes before the next starts, as a GroupByKey makes
it in the graph: every blob is delivered before any manifest is written, and every
manifest of a store before its names are published.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.jobs import CopyJob, SyncSpec, TargetPlan
from imagepush.transforms.engine.manifests import Finalized, listing_failed
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.engine.plan import blob_requests
from imagepush.transforms.engine.progress import NO_PROGRESS, ProgressReporter
from imagepush.transforms.engine.steps import (
    Progress,
    blob_groups,
    blob_key,
    finalize_target,
    finals_by_store,
    plan_job,
    publish_store,
    results_by_target,
)
from imagepush.transforms.engine.streaming import DEFAULT_CHUNK
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.records import AuditRow, now
from imagepush.transforms.stores.cache import StoreCache

#: Most images (jobs left after the preflight) a run may have for ``--engine auto`` to
#: run it directly; past it, Beam's start-up is small beside the copy and its steps overlap.
MAX_DIRECT_JOBS = 32


def migrate(
    jobs: Iterable[CopyJob],
    syncs: Iterable[SyncSpec],
    run_id: str,
    stores: StoreCache,
    parallel: int = 8,
    chunk_size: int = DEFAULT_CHUNK,
    reporter: ProgressReporter = NO_PROGRESS,
) -> list[AuditRow]:
    """Copy every job (and every image the syncs list): the audit rows, one per manifest and destination.

    ``stores``: the caller's opened stores (the preflight's, with their registry
    sessions), left open. ``reporter`` is told each step's progress as it happens
    (see engine/progress.py): blobs as each is delivered, images as each store publishes.
    """
    workers = max(1, parallel)
    rows: list[AuditRow] = []
    jobs = list(jobs)
    progress = Progress(reporter, levels=stores.registry_levels)
    for spec in syncs:  # only with --no-preflight: the preflight lists syncs on this machine
        started = now()
        try:
            for job in sync_jobs(spec, stores):
                jobs.append(job)
                progress.known(1)
        except Exception as exc:  # images listed before the failure are still copied, as in ListSyncs
            rows.extend(listing_failed(spec, run_id, exc, started))
        progress.listed()
    with ThreadPoolExecutor(workers, thread_name_prefix="imagepush-direct") as pool:
        def each(fn, items):
            return bounded_map(fn, items, workers=workers, executor=pool)

        plans: list[TargetPlan] = [tp for _, planned in each(lambda job: plan_job(job, stores), jobs) for tp in planned]
        progress.planned_images(len(jobs))
        delivery = BlobDelivery(stores, chunk_size, pacer=stores.pacer)
        delivered = []
        groups = blob_groups((blob_key(r), r) for tp in plans for r in blob_requests(tp))
        progress.planned(groups)
        for _, results in each(delivery.deliver, groups):
            progress.delivered(result for _, result in results)
            delivered.extend(results)
        results = results_by_target(delivered)
        finals: list[tuple[str, Finalized]] = [
            (tp.target.store, final)
            for tp, final in each(lambda tp: _finalized_each(
                progress, finalize_target(tp, results.get(tp.key, []), stores, run_id)), plans)
        ]
        for _, published in each(lambda item: publish_store(item[0], item[1], stores, reporter),
                                 finals_by_store(finals).items()):
            rows.extend(published)
    return rows


def _finalized_each(progress: Progress, final: Finalized) -> Finalized:
    progress.finalized(1)
    return final
