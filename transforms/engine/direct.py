"""A migration run in this process without Beam: images streamed through the steps.

Starting Beam costs about a second of imports and graph set-up before its first
bundle, and Beam's own handling of every element costs CPU on one machine. For a local
run the launcher calls :func:`migrate` instead: the same steps (``engine/steps.py``)
under the same rules as the Beam graph, and the same audit rows, but images flow:
while the blobs of the next images are delivered, the manifests of earlier ones are
written and their names published. What Beam's GroupByKeys guarantee is kept per
image and per blob instead of per step:

- each source blob is delivered once per destination store (keyed by blob key and
  store): the first image to need it starts the delivery and every later image waits
  on that same delivery; a store of the same blob-sharing domain takes it from the
  first earlier store whose delivery did not fail (a registry mount) rather than
  reading the source again (the rule is ``engine/claims.py``, which ``plan`` follows);
- images claim deliveries in the order they were listed, so the image a blob is
  ``copied`` for (and ``shared`` for the others) is the one Beam picks;
- an image's manifests are written once all of its blobs are present (children
  before the index, by ``manifests.finalize``), its names after them;
- a registry's names are published per image as soon as it is written; a store that
  holds all its names in one file (an OCI layout's index.json, an archive) publishes
  them all in one call at the end, as Beam does.

Memory stays bounded: the listing is read lazily and at most a window of images
(a few times ``parallel``) is in flight; finished images keep only their rows.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from imagepush.transforms.engine.claims import ClaimLedger, domain_of
from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.jobs import FAILED, BlobRequest, BlobResult, CopyJob, SyncSpec
from imagepush.transforms.engine.manifests import Finalized, listing_failed
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.engine.plan import blob_requests
from imagepush.transforms.engine.progress import NO_PROGRESS, ProgressReporter
from imagepush.transforms.engine.steps import (
    Progress,
    finalize_target,
    finals_by_store,
    plan_job,
    publish_store,
    results_by_target,
    shared_result,
)
from imagepush.transforms.engine.streaming import DEFAULT_CHUNK
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.records import AuditRow, now
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.refs import REGISTRY_TRANSPORT, parse_reference

#: Images in flight per worker of ``parallel``: enough that blobs of the next images go
#: up while earlier ones wait on their last blob or write their manifests.
IMAGES_PER_WORKER = 4


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
    (see engine/progress.py): blobs as each is delivered, images as each is written and published.
    """
    rows: list[AuditRow] = []
    workers = max(1, parallel)
    window = workers * IMAGES_PER_WORKER
    with ThreadPoolExecutor(workers, thread_name_prefix="imagepush-blobs") as blob_pool, \
            ThreadPoolExecutor(window, thread_name_prefix="imagepush-images") as image_pool:
        progress = Progress(reporter, levels=stores.registry_levels)
        run = _Stream(stores, run_id, BlobDelivery(stores, chunk_size, pacer=stores.pacer), blob_pool, progress)
        listed = _every_job(jobs, syncs, stores, run_id, rows, progress)
        for _, (published, held) in bounded_map(run.image, enumerate(listed),
                                                 workers=window, limit=window, executor=image_pool):
            rows.extend(published)
            run.hold(held)
        rows.extend(run.publish_held(image_pool, workers))
    return rows


def _every_job(
    jobs: Iterable[CopyJob], syncs: Iterable[SyncSpec], stores: StoreCache, run_id: str, rows: list[AuditRow],
    progress: Progress,
) -> Iterator[CopyJob]:
    """The jobs, then each sync's listing read lazily (only with --no-preflight: the preflight lists syncs)."""
    yield from jobs
    for spec in syncs:
        started = now()
        try:
            for job in sync_jobs(spec, stores):
                progress.known(1)
                yield job
        except Exception as exc:  # images listed before the failure are still copied, as in ListSyncs
            rows.extend(listing_failed(spec, run_id, exc, started))
        progress.listed()


def _publishes_per_image(store: str) -> bool:
    """A registry writes each tag on its own; other stores rewrite one file (or archive) for all their names."""
    return parse_reference(store).transport == REGISTRY_TRANSPORT


@dataclass
class _Claim:
    """One image's share of one blob at one store: its requests and the delivery that serves them."""

    requests: list[BlobRequest]
    store: str
    #: The delivery's result for this store, as seen by the request it was copied for.
    result: Future
    #: Started for this image: its requests get the delivery's own results.
    own: Future | None = None
    #: Delivered after the deliveries of earlier stores of its domain (``claims.BlobClaim.after``),
    #: from the first that did not fail, by this image's thread: (peer store, its result) in claim order.
    after: list[tuple[str, Future]] | None = None


@dataclass
class _Stream:
    """The state one streamed run shares between its image threads."""

    stores: StoreCache
    run_id: str
    delivery: BlobDelivery
    blob_pool: ThreadPoolExecutor
    progress: Progress
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Sequence number -> the event that lets that image claim its blobs (set for 0).
    _turns: dict[int, threading.Event] = field(default_factory=dict)
    #: (blob key, destination store) -> the future result of its one delivery there.
    _delivered: dict[tuple[str, str], Future] = field(default_factory=dict)
    _ledger: ClaimLedger = field(init=False)
    _held: list[tuple[str, Finalized]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ledger = ClaimLedger(domain_of(self.stores))
        self._turn_of(0).set()

    # -- one image ------------------------------------------------------------------

    def image(self, numbered: tuple[int, CopyJob]) -> tuple[list[AuditRow], list[tuple[str, Finalized]]]:
        """One image through every step: (rows published now, targets whose store publishes at the end).

        The one place an image's outcome is produced.
        """
        seq, job = numbered
        try:
            plans = plan_job(job, self.stores)
            requests = [r for tp in plans for r in blob_requests(tp)]
            self.progress.planned_images(1)
        except BaseException:  # a bug: the images after this one must still get their turn
            self._in_turn(seq, [])
            raise
        claims = self._in_turn(seq, requests)
        results = results_by_target(pair for claim in claims for pair in self._wait(claim))
        published: list[AuditRow] = []
        held: list[tuple[str, Finalized]] = []
        for tp in plans:
            final = finalize_target(tp, results.get(tp.key, []), self.stores, self.run_id)
            self.progress.finalized(1)
            if _publishes_per_image(tp.target.store):
                published.extend(publish_store(tp.target.store, [final], self.stores, self.progress.reporter))
            else:
                held.append((tp.target.store, final))
        return published, held

    def hold(self, held: list[tuple[str, Finalized]]) -> None:
        self._held.extend(held)

    def publish_held(self, pool: ThreadPoolExecutor, workers: int) -> list[AuditRow]:
        """Every file store's names, one call per store, once all its images are written."""
        rows: list[AuditRow] = []
        for _, published in bounded_map(lambda item: publish_store(item[0], item[1], self.stores, self.progress.reporter),
                                        finals_by_store(self._held).items(), workers=workers, executor=pool):
            rows.extend(published)
        return rows

    # -- blobs ----------------------------------------------------------------------

    def _in_turn(self, seq: int, requests: list[BlobRequest]) -> list[_Claim]:
        """Claims in listing order: the first image to need a blob is the one it is copied for.

        Each image waits on an event of its own, set by the one before it: a window of
        waiting threads is not woken for every turn.
        """
        self._turn_of(seq).wait()
        try:
            return self._claim(requests)
        finally:
            with self._lock:
                del self._turns[seq]
            self._turn_of(seq + 1).set()

    def _turn_of(self, seq: int) -> threading.Event:
        with self._lock:
            return self._turns.setdefault(seq, threading.Event())

    def _claim(self, requests: list[BlobRequest]) -> list[_Claim]:
        """Each of the image's blobs at each store: joined to the delivery already started, or started now.

        Called in listing order; the rule is the ledger's (``engine/claims.py``, which
        ``plan`` follows too). The stores of one blob that nothing has claimed yet share
        one new delivery (one read of the source); a store whose domain was sent the
        blob already waits for that delivery and then takes it from there.
        """
        claims: list[_Claim] = []
        with self._lock:
            blobs = self._ledger.claim(requests)
        for blob in blobs:
            fresh: dict[str, Future] = {}
            with self._lock:
                for store, joined in blob.joined.items():
                    claims.append(_Claim(joined, store, self._delivered[(blob.key, store)]))
                for store, peers, later in blob.after:
                    result: Future = Future()
                    self._delivered[(blob.key, store)] = result
                    claims.append(_Claim(later, store, result,
                                         after=[(peer, self._delivered[(blob.key, peer)]) for peer in peers]))
                    self.progress.planned([later])
                for store in blob.fresh:
                    fresh[store] = self._delivered[(blob.key, store)] = Future()
            if fresh:
                self.progress.planned([blob.fresh_requests])
                own = self.blob_pool.submit(self._deliver, blob.fresh_requests, fresh, [])
                claims.extend(_Claim(blob.fresh[store], store, fresh[store], own=own) for store in fresh)
        return claims

    def _deliver(self, requests: list[BlobRequest], futures: dict[str, Future], known_at: list[str]):
        """One delivery; the first result at each store is what later images at that store are shown.

        The one place a blob result is produced.
        """
        try:
            results = self.delivery.deliver(requests, known_at=known_at)
        except BaseException as exc:  # deliver returns failures as values: this is a bug, waiters must not hang
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
            raise
        for store, future in futures.items():
            future.set_result(next(r for _, r in results if r.dest_store == store))
        self.progress.delivered(result for _, result in results)
        return results

    def _wait(self, claim: _Claim) -> list[tuple[str, BlobResult]]:
        """This image's results for one blob at one store."""
        if claim.own is not None:
            return [(key, r) for key, r in claim.own.result() if r.dest_store == claim.store]
        if claim.after is not None:
            holder: list[str] = []
            for peer, peer_result in claim.after:
                try:
                    failed = peer_result.result().status == FAILED
                except BaseException as exc:  # the peer's delivery hit a bug: so does this one, for every waiter
                    claim.result.set_exception(exc)
                    raise
                if not failed:
                    holder = [peer]
                    break
            return self._deliver(claim.requests, {claim.store: claim.result}, holder)
        template: BlobResult = claim.result.result()
        needs_diff = [r for r in claim.requests if r.need_diff_id]
        if needs_diff and template.diff_id is None and template.status != FAILED:
            # Delivered for images that did not need its diff_id: read once more to measure it.
            others = [r for r in claim.requests if not r.need_diff_id]
            self.progress.planned([needs_diff])
            return self._deliver(needs_diff, {}, []) + [(r.target_key, shared_result(template)) for r in others]
        return [(r.target_key, shared_result(template)) for r in claim.requests]
