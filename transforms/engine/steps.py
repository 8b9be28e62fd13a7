"""The steps of a migration, one function each, shared by the Beam DoFns and the direct executor.

Both ways of running a migration (the Beam graph of ``beam/migrate.py`` and
``engine/direct.py`` for small local runs) must group and order work by the same
rules, or one would copy a blob twice or publish a tag too early where the other does
not. The rules live here, once:

- a job is resolved and planned into one :class:`TargetPlan` per destination;
- blob requests are grouped by :func:`blob_key` (one read of a source blob serves every
  destination and every image that needs it), the largest blobs first;
- a target's manifests are written only once all its blobs are delivered (children
  before the index, in :func:`manifests.finalize`);
- every name of one store is published in one last store call, and each image logs
  one progress line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

from imagepush.transforms.engine.deliver import Stores
from imagepush.transforms.engine.jobs import COPIED, SHARED, BlobRequest, BlobResult, CopyJob, TargetPlan
from imagepush.transforms.engine.manifests import Finalized, finalize
from imagepush.transforms.engine.plan import delivery_key, plan_targets
from imagepush.transforms.engine.publish import publish
from imagepush.transforms.engine.resolve import resolve_image
from imagepush.transforms.records import FAILED as ROW_FAILED, AuditRow

progress = logging.getLogger("imagepush.progress")


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


def publish_store(store: str, finals: Iterable[Finalized], stores: Stores) -> list[AuditRow]:
    """Every name of one store published at once; the audit rows, each image's progress logged."""
    rows = publish(store, finals, lambda: stores.destination(store))
    for row in rows:
        if row.role == "child":
            continue
        # A failure is the summary's to report (grouped, once); progress here would say
        # it a second time, one line per image.
        if row.status == ROW_FAILED:
            progress.debug("%s -> %s: failed: %s", row.source, row.destination, row.error)
        else:
            progress.info("%s -> %s: %s", row.source, row.destination, row.status)
    return rows


class Progress:
    """Throttled progress lines of blobs copied: a local run shows no metrics until the end.

    A registry whose request limit has come down below ``--registry-concurrency`` (it
    answered 429 or 503) is named with its level: it explains a slow copy.
    """

    def __init__(self, every: float = 5.0, levels: Callable[[], Mapping[str, Any]] = dict) -> None:
        self.every, self.last = every, time.monotonic()
        self.blobs = self.bytes = 0
        self._levels = levels

    def add(self, nbytes: int) -> None:
        self.blobs += 1
        self.bytes += nbytes
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            limited = "".join(
                f"; registry {host} at {level.limit}/{level.ceiling} requests"
                for host, level in sorted(self._levels().items()) if level.limit < level.ceiling
            )
            progress.info("copied %d blobs, %.1f MB so far%s", self.blobs, self.bytes / 1e6, limited)
