"""The steps of a migration, one function each, shared by the Beam DoFns and the direct executor.

Both ways of running a migration (the Beam graph of ``beam/migrate.py`` and
``engine/direct.py``, which streams images through these steps) must group and order
work by the same rules, or one would copy a blob twice or publish a tag too early where
the other does not. The rules live here, once:

- a job is resolved and planned into one :class:`TargetPlan` per destination;
- blob requests are grouped by :func:`blob_key` (one read of a source blob serves every
  destination and every image that needs it), the largest blobs first; a blob written
  once shows as copied for one target and :func:`shared_result` for the others;
- a target's manifests are written only once all its blobs are delivered (children
  before the index, in :func:`manifests.finalize`);
- names are published last, a store's names of one batch in one store call (Beam: every
  name of the store; the direct executor: a registry's per image, a file store's all at
  the end), and each image's outcome is reported then (:class:`Progress` and
  ``engine/progress.py``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

from imagepush.transforms.engine.deliver import Stores
from imagepush.transforms.engine.jobs import COPIED, SHARED, BlobRequest, BlobResult, CopyJob, TargetPlan
from imagepush.transforms.engine.manifests import Finalized, finalize
from imagepush.transforms.engine.plan import delivery_key, plan_targets
from imagepush.transforms.engine.progress import (
    NO_PROGRESS,
    ProgressEvent,
    ProgressReporter,
    blob_delivered,
    blobs_planned,
    published,
)
from imagepush.transforms.engine.publish import publish
from imagepush.transforms.engine.resolve import resolve_image
from imagepush.transforms.records import AuditRow


def plan_job(job: CopyJob, stores: Stores) -> list[TargetPlan]:
    """One job -> a plan per destination: its manifest tree read, the formats and blobs chosen."""
    return plan_targets(resolve_image(job, stores), stores)  # type: ignore[arg-type]


def blob_key(request: BlobRequest) -> str:
    """Requests for one source blob share this key: one read serves them all (``plan`` counts by it too)."""
    return delivery_key(request)


def blob_groups(keyed: Iterable[tuple[str, BlobRequest]]) -> list[list[BlobRequest]]:
    """(blob key, request) pairs -> the requests of each source blob, the largest blobs first.

    One big layer started last would copy alone at the end.
    """
    by_blob: dict[str, list[BlobRequest]] = defaultdict(list)
    for key, request in keyed:
        by_blob[key].append(request)
    return sorted(by_blob.values(), key=lambda rs: -max(r.descriptor.size for r in rs))


def results_by_target(pairs: Iterable[tuple[str, BlobResult]]) -> dict[str, list[BlobResult]]:
    """(target key, result) pairs -> each target's blob results."""
    results: dict[str, list[BlobResult]] = defaultdict(list)
    for target_key, result in pairs:
        results[target_key].append(result)
    return results


def shared_result(first: BlobResult) -> BlobResult:
    """What a blob delivered once shows to every other target at its store: ``shared`` where it was ``copied``.

    The audit's byte and retry counts then add up to what was really written.
    """
    status = SHARED if first.status == COPIED else first.status
    return dataclasses.replace(first, status=status, bytes_copied=0, retries=0)


def finalize_target(tp: TargetPlan, results: list[BlobResult], stores: Stores, run_id: str) -> Finalized:
    """One target whose blobs were delivered: its manifests written, its name still to publish.

    A target that failed earlier is not opened at its destination: it gets failed rows.
    """
    destination = None if tp.error else stores.destination(tp.target.store)
    return finalize(tp, results, destination, run_id)


def finals_by_store(pairs: Iterable[tuple[str, Finalized]]) -> dict[str, list[Finalized]]:
    """(store, finalized target) pairs -> each store's targets, to publish together."""
    by_store: dict[str, list[Finalized]] = defaultdict(list)
    for store, final in pairs:
        by_store[store].append(final)
    return by_store


def publish_store(store: str, finals: Iterable[Finalized], stores: Stores,
                  reporter: ProgressReporter = NO_PROGRESS) -> list[AuditRow]:
    """Every name of one store published at once; the audit rows, each image's outcome reported as it is known."""
    rows = publish(store, finals, lambda: stores.destination(store))
    reporter.report(published(store, rows))
    return rows


class Progress:
    """A step's progress, told to the run's reporter as it goes: one event per blob group or batch.

    The copy steps of both executors report through it, so that the display counts the
    same things whichever runs. ``levels``: the request limit of each registry host this
    process talks to; a level that changed goes with the next blob delivered, so that
    the display can name a registry whose limit came down below ``--registry-concurrency``
    (it answered 429 or 503): it explains a slow copy.
    """

    def __init__(self, reporter: ProgressReporter = NO_PROGRESS,
                 levels: Callable[[], Mapping[str, Any]] = dict) -> None:
        self.reporter = reporter
        self._levels = levels
        self._reported: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def planned(self, groups: list[list[BlobRequest]]) -> None:
        if groups:
            self.reporter.report(blobs_planned(groups))

    def delivered(self, results: Iterable[BlobResult]) -> None:
        event = blob_delivered(results)
        event.registry_levels = self._changed_levels()
        self.reporter.report(event)

    def _changed_levels(self) -> dict[str, tuple[int, int]]:
        now = {host: (level.limit, level.ceiling) for host, level in self._levels().items()}
        with self._lock:
            changed = {host: level for host, level in now.items() if self._reported.get(host) != level}
            self._reported.update(changed)
        return changed

    def finalized(self, images: int) -> None:
        if images:
            self.reporter.report(ProgressEvent(images_blobs_done=images))

    def known(self, images: int) -> None:
        if images:
            self.reporter.report(ProgressEvent(images_known=images))

    def listed(self) -> None:
        """A sync's listing is over: every image it has is known."""
        self.reporter.report(ProgressEvent(listings_done=1))

    def planned_images(self, images: int) -> None:
        if images:
            self.reporter.report(ProgressEvent(images_planned=images))
