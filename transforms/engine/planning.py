"""What a run would do, found out without writing anything (``imagepush plan``, ``--dry-run``).

A migration of thousands of images should be reviewable before it starts: which images
are copied, converted or already current, and how many blobs and bytes go where. The
plan reads what the run itself reads and decides as it decides, with the same code:
each image is resolved (:func:`resolve.resolve_image`) and planned for each target
(:func:`plan.plan_targets`, whose is-it-current rule the preflight and ``verify`` share);
a conversion's manifests are rendered (pure) for the digest they will have. Its blob
requests are grouped into deliveries as the run's executor groups them: all at once by
the copy step's own key (:func:`plan.delivery_key`) for the Beam graph, or image by
image in listing order by the direct executor's own claim rule (``engine/claims.py``)
for a streamed run. For each delivery, every destination is asked what the copy step
asks — whether it would mount the blob (:meth:`Destination.would_mount`, the read-only
twin of ``mount_blob``) from a store known to hold it, else HEAD the blob unless the
store uploads it without asking — by the copy step's own rule for the order
(:func:`deliver.route_blob`).

Nothing is written: destinations are opened, never prepared, and only asked questions.
The counts are the audit's: a blob is uploaded once per destination store and digest;
the other images needing it there count it as skipped, as do images whose blob is
already there; a mount counts for every image needing it. Images found current are
listed, and their blobs not counted (a run never looks at them).

Beam-free, on the launcher: a bounded thread pool over the stores' per-registry limits.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from imagepush.transforms import errors
from imagepush.transforms.engine.claims import BlobClaim, ClaimLedger, domain_of
from imagepush.transforms.engine.deliver import present_at, route_blob
from imagepush.transforms.engine.jobs import (
    COPIED, FAILED, MOUNTED, PRESENT, SHARED, BlobRequest, CopyJob, RecordSource, SyncSpec, Target, TargetPlan,
)
from imagepush.transforms.engine.naming import sync_jobs
from imagepush.transforms.engine.plan import blob_requests, delivery_key, plan_targets
from imagepush.transforms.engine.records_io import jobs_from_file, match_files
from imagepush.transforms.engine.render import render_tree
from imagepush.transforms.engine.resolve import resolve_image
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.records import AuditRow, ImageRecord
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions


#: What a run would do with one image at one destination.
COPY, CONVERT, CURRENT, FAILING = "copy", "convert", "current", "failing"
#: A name ``--no-clobber`` keeps: it points at another image, and the run would leave it.
SKIP = "skip"
ACTIONS = (COPY, CONVERT, CURRENT, SKIP, FAILING)


@dataclass
class PlannedImage:
    """One image at one destination, as the run would leave it."""

    source: str
    destination: str
    #: The destination store (``transport:location``): blobs are counted per store.
    store: str
    action: str
    #: The source root's digest (a records file pins it).
    source_digest: str | None = None
    media_type: str | None = None
    #: The root digest the destination will hold; None when only the copy can tell (a
    #: schema1 conversion needs the layers' diff_ids, recompressed layers their new digests).
    target_digest: str | None = None
    error: str | None = None
    error_kind: str | None = None
    #: The job and target it came from (None for a sync whose source could not be listed).
    job: CopyJob | None = None
    target: Target | None = None
    #: The copy step's target key: blob outcomes are attributed to images by it.
    key: str = ""

    def failed(self, error: str, kind: str) -> None:
        self.action, self.error, self.error_kind, self.target_digest = FAILING, error, kind, None


@dataclass
class StoreTotals:
    """What the run would do at one destination store."""

    images: collections.Counter[str] = field(default_factory=collections.Counter)
    upload: int = 0
    mount: int = 0
    skip: int = 0
    #: Bytes uploaded, each blob once.
    bytes: int = 0
    #: Uploads whose size only the copy measures (schema1 layers, recompressed layers): not in ``bytes``.
    unsized: int = 0

    def add(self, other: "StoreTotals") -> None:
        self.images.update(other.images)
        self.upload += other.upload
        self.mount += other.mount
        self.skip += other.skip
        self.bytes += other.bytes
        self.unsized += other.unsized


@dataclass
class RunPlan:
    """Every (image, destination) of a run, and the blob work per destination store."""

    images: list[PlannedImage] = field(default_factory=list)
    stores: dict[str, StoreTotals] = field(default_factory=dict)

    def total(self) -> StoreTotals:
        whole = StoreTotals()
        for totals in self.stores.values():
            whole.add(totals)
        return whole

    @property
    def failing(self) -> list[PlannedImage]:
        return [p for p in self.images if p.action == FAILING]

    def records(self) -> Iterator[ImageRecord]:
        """One image record per (image, destination) still to do, for ``copy --records`` or a ``records:`` job.

        Current images are left out, and so are those ``--no-clobber`` would skip. Each row names its own destination, format and
        compression, and pins the source digest planned (when it could be read), so the
        reviewed plan is what runs even if a tag moves meanwhile. A failing image is
        kept: the run would try it, and so does its records run.
        """
        for p in self.images:
            if p.action in (CURRENT, SKIP) or p.job is None or p.target is None:
                continue
            yield ImageRecord(
                source=p.job.source, destination=p.target.destination, repository=p.job.repository,
                tag=p.job.tag, source_digest=p.source_digest, media_type=p.media_type, format=p.target.format,
                compression=p.target.compression, platforms=tuple(p.job.platforms),
            )


def plan_run(
    jobs: Iterable[CopyJob],
    syncs: Iterable[SyncSpec] = (),
    records: Iterable[RecordSource] = (),
    options: StoreOptions | None = None,
    parallel: int = 8,
    streamed: bool = False,
) -> RunPlan:
    """The plan of a run's jobs, syncs and records, asking the stores and writing nothing.

    ``streamed``: model the direct executor (images claim blobs one by one in listing
    order) rather than the Beam graph (every request for a blob at once). Their counts
    differ where a blob that a later-listed repository of a registry holds is needed by
    an earlier one (streamed, it is uploaded there; grouped, mounted from the holder),
    and in which image a mount or upload is counted for.
    """
    options = options or StoreOptions()
    stores = StoreCache(options)
    workers = max(1, parallel, options.registry_concurrency)
    result = RunPlan()
    per_image: list[list[BlobRequest]] = []
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="imagepush-plan") as pool:
            planned = bounded_map(lambda job: _plan_job(job, stores), _jobs(jobs, syncs, records, stores, result),
                                  workers=workers, executor=pool, ordered=True)
            for _, (images, requests) in planned:
                result.images.extend(images)
                per_image.append(requests)
            route = _streamed if streamed else _grouped
            outcomes = route(per_image, stores, lambda fn, items: bounded_map(fn, items, workers=workers,
                                                                              executor=pool))
    finally:
        stores.close()
    _count(result, outcomes)
    return result


#: Runs a function over items on the plan's pool: (item, result) pairs, in any order.
_Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterator[tuple[Any, Any]]]


def _grouped(per_image: list[list[BlobRequest]], stores: StoreCache, each: _Mapper) -> list[_Routed]:
    """The Beam graph's deliveries: every request for a source blob, of every image, in one."""
    groups: dict[str, list[BlobRequest]] = collections.defaultdict(list)
    for requests in per_image:
        for request in requests:
            groups[delivery_key(request)].append(request)
    outcomes: list[_Routed] = []
    for _, routed in each(lambda rs: _route(rs, stores), list(groups.values())):
        outcomes.extend(routed)
    return outcomes


@dataclass(frozen=True)
class _Delivered:
    """What one delivery left at one store, as an image joining it later sees it."""

    state: _Routed
    #: The delivery measured the blob's diff_id (a request of it needed one, or it recompressed).
    diff_id: bool


def _streamed(per_image: list[list[BlobRequest]], stores: StoreCache, each: _Mapper) -> list[_Routed]:
    """The direct executor's deliveries: images claim blobs in listing order (``engine/claims.py``).

    The claims are made first, without I/O; then the stores are asked about the
    deliveries the first claims start, and after them about those that take the blob
    from a peer store (the run starts those once the peer's delivery is done).
    """
    ledger = ClaimLedger(domain_of(stores))
    claims: list[BlobClaim] = [claim for requests in per_image for claim in ledger.claim(requests)]
    delivered: dict[tuple[str, str], _Delivered] = {}
    outcomes: list[_Routed] = []

    def note(key: str, requests: list[BlobRequest], routed: list[_Routed]) -> None:
        measured = bool(requests[0].recompress) or any(r.need_diff_id for r in requests)
        for o in routed:
            delivered.setdefault((key, o.request.dest_store), _Delivered(o, measured))
        outcomes.extend(routed)

    for claim, routed in each(lambda c: _route(c.fresh_requests, stores), [c for c in claims if c.fresh]):
        note(claim.key, claim.fresh_requests, routed)

    # A store taking the blob from a peer needs to know which peer got it: the first
    # whose state is known and not failed. Each round asks about those whose peers'
    # states are known, in parallel; the earliest left always is (its peers came first).
    waiting = [(c.key, store, peers, requests) for c in claims for store, peers, requests in c.after]
    while waiting:
        ready, later = [], []
        for item in waiting:
            key, _, peers, requests = item
            holder = _holder(key, peers, delivered)
            (later if holder is None else ready).append((item, holder))
        if not ready:
            raise RuntimeError("a store waits on a peer no delivery serves")  # a bug in the ledger
        for ((key, _, _, requests), holder), routed in each(
                lambda pair: _route(pair[0][3], stores, known_at=pair[1]), ready):
            note(key, requests, routed)
        waiting = [item for item, _ in later]
    for claim in claims:
        for store, requests in claim.joined.items():
            outcomes.extend(_joined(delivered[(claim.key, store)], requests))
    return outcomes


def _holder(key: str, peers: tuple[str, ...], delivered: dict[tuple[str, str], _Delivered]) -> list[str] | None:
    """The peer a store takes a blob from: ``[]`` when every peer failed it, None while a peer's state is unknown."""
    for peer in peers:
        state = delivered.get((key, peer))
        if state is None:
            return None
        if state.state.status != FAILED:
            return [peer]
    return []


def _joined(first: _Delivered, requests: list[BlobRequest]) -> list[_Routed]:
    """An image served by an earlier image's delivery: ``shared`` where that one was ``copied``.

    A request that needs the diff_id a delivery did not measure has the blob read once
    more (``direct._Stream._wait``), and by then finds it at the store.
    """
    state = first.state
    shown = SHARED if state.status == COPIED else state.status
    return [_Routed(r, PRESENT if r.need_diff_id and not first.diff_id and state.status != FAILED else shown,
                    0, state.error, state.error_kind) for r in requests]


def _jobs(jobs: Iterable[CopyJob], syncs: Iterable[SyncSpec], records: Iterable[RecordSource], stores: StoreCache,
          result: RunPlan) -> Iterator[CopyJob]:
    """Every job of the run, lazily; a listing or records file that fails adds failing images instead."""
    yield from jobs
    for spec in syncs:
        try:
            yield from sync_jobs(spec, stores)
        except Exception as exc:
            message, kind = errors.describe(exc)
            result.images.extend(
                PlannedImage(source=spec.source, destination=out.ref, store=out.ref, action=FAILING,
                             error=f"listing {spec.source} failed: {message}", error_kind=kind)
                for out in spec.destinations
            )
    for source in records:
        try:
            urls = match_files(source.url)
        except Exception as exc:
            message, kind = errors.describe(exc)
            result.images.extend(PlannedImage(source=source.url, destination=out.ref, store=out.ref, action=FAILING,
                                              error=message, error_kind=kind) for out in source.outputs)
            continue
        for url in urls:
            for item in jobs_from_file(url, source, run_id="plan"):
                if isinstance(item, AuditRow):  # a row that is no job: failing, with its reason
                    result.images.append(PlannedImage(source=item.source, destination=item.destination,
                                                      store=item.destination, action=FAILING, error=item.error,
                                                      error_kind=item.error_kind))
                else:
                    yield item


def _plan_job(job: CopyJob, stores: StoreCache) -> tuple[list[PlannedImage], list[BlobRequest]]:
    """The job resolved and planned for each target, as the pipeline's first two steps do; its blob requests."""
    plan = resolve_image(job, stores)
    images, requests = [], []
    try:
        for tp in plan_targets(plan, stores):
            images.append(_planned(tp))
            requests.extend(blob_requests(tp))
    except Exception as exc:  # anything unexpected fails this image alone, as the run would
        message, kind = errors.describe(exc)
        return [PlannedImage(source=job.source, destination=t.destination, store=t.store, action=FAILING,
                             error=message, error_kind=kind, job=job, target=t) for t in job.targets], []
    return images, requests


def _planned(tp: TargetPlan) -> PlannedImage:
    job, root = tp.image.job, tp.image.root
    image = PlannedImage(source=job.source, destination=tp.target.destination, store=tp.target.store, action=COPY,
                         source_digest=root.manifest.digest if root is not None else None,
                         media_type=root.manifest.media_type if root is not None else None,
                         job=job, target=tp.target, key=tp.key)
    if tp.error:
        image.failed(tp.error, tp.error_kind or errors.INTERNAL)
    elif tp.skipped:
        image.action, image.error = SKIP, tp.skipped
    elif tp.up_to_date:
        image.action, image.target_digest = CURRENT, tp.root.manifest.digest
    elif all(f is None for f in tp.formats.values()) and not any(n.recompress for n in tp.blobs):
        image.target_digest = tp.root.manifest.digest
    else:
        image.action = CONVERT
        try:
            image.target_digest = _rendered_digest(tp)
        except Exception as exc:  # the copy would fail writing its manifests the same way
            image.failed(*errors.describe(exc))
    return image


def _rendered_digest(tp: TargetPlan) -> str | None:
    """The converted root's digest, rendered as the copy renders it; None when it depends on layer bytes."""
    if any(n.recompress for n in tp.blobs):
        return None  # the manifest names the recompressed layers' digests, known once they are written
    if any(tp.formats[node.manifest.digest] is not None and mt.is_schema1(node.manifest.media_type)
           for node in tp.root.walk()):
        return None  # schema1 has no diff_ids: the copy measures them from the layers
    return render_tree(tp.root, tp.formats, {})[-1].digest


@dataclass(frozen=True)
class _Routed:
    """What the copy step would do with one blob request: a blob-result status, and the bytes it uploads."""

    request: BlobRequest
    status: str
    #: Bytes uploaded for this request (only the first at a store uploads); -1 when unknown.
    nbytes: int = 0
    error: str | None = None
    error_kind: str | None = None


def _route(requests: list[BlobRequest], stores: StoreCache, known_at: Iterable[str] = ()) -> list[_Routed]:
    """What the copy step would do for one delivery of a source blob, for every request of it.

    The copy step's own questions in its order (:func:`deliver.route_blob`), with the
    read-only twin of a mount (``would_mount``) and holders starting from the source and
    ``known_at`` (stores an earlier delivery left the blob in); the stores of a domain
    that take its one upload mount from it. A recompressed layer is a new blob whose
    digest only the copy computes: it is uploaded (size unknown) by one store per domain.
    """
    requests = sorted(set(requests), key=lambda r: (r.dest_store, r.target_key))
    first = requests[0]
    size = max(r.descriptor.size for r in requests)
    names = sorted({r.dest_store for r in requests})
    descriptor = first.descriptor
    route = route_blob(
        names, [] if first.recompress else [first.source_store, *known_at],
        mount=lambda store, lenders: _would_mount(stores, store, first, lenders),
        # A recompressed layer's digest is known only once the copy has made it.
        present=lambda store: not first.recompress and present_at(stores.destination(store), descriptor),
        domain=lambda store: stores.destination(store).blob_domain,
    )
    states = {store: _Routed(first, status) for store, status in route.settled.items()}
    for store, exc in route.failed.items():
        message, kind = errors.describe(exc)
        states[store] = _Routed(first, FAILED, error=message, error_kind=kind)
    states.update((store, _Routed(first, COPIED)) for store in route.upload)
    route.holders += route.upload
    for store in route.later:
        states[store] = _Routed(first, MOUNTED if _would_mount(stores, store, first, route.learnt) else COPIED)
    unknown = size < 0 or bool(first.recompress)
    routed = []
    for store in names:
        state = states[store]
        attributed = False
        for r in requests:
            if r.dest_store != store:
                continue
            shown = SHARED if state.status == COPIED and attributed else state.status
            nbytes = (-1 if unknown else size) if shown == COPIED else 0
            routed.append(_Routed(r, shown, nbytes, state.error, state.error_kind))
            attributed = attributed or state.status == COPIED
    return routed


def _would_mount(stores: StoreCache, store: str, request: BlobRequest, holders: list[str]) -> bool:
    try:
        return stores.destination(store).would_mount(request.descriptor, [h for h in holders if h != store])
    except Exception:  # the copy step uploads when a mount is refused
        return False


def _count(result: RunPlan, outcomes: list[_Routed]) -> None:
    """Blob outcomes onto their stores' totals (failing images' too); images by action, per store."""
    by_key: dict[str, list[PlannedImage]] = collections.defaultdict(list)
    for image in result.images:
        by_key[image.key].append(image)
    uploaded: set[tuple[str, str, str | None]] = set()
    for o in outcomes:
        totals = result.stores.setdefault(o.request.dest_store, StoreTotals())
        key = (o.request.dest_store, o.request.descriptor.digest, o.request.recompress)
        if o.status == COPIED and key in uploaded:
            # The same blob from another source domain is another delivery: whichever
            # finishes first uploads, and the other finds it there.
            totals.skip += 1
        elif o.status == FAILED:  # the copy would fail the image: its blob could not be checked
            for image in by_key.get(o.request.target_key, ()):
                image.failed(f"blob {o.request.descriptor.digest}: {o.error}", o.error_kind or errors.INTERNAL)
        elif o.status == COPIED:
            uploaded.add(key)
            totals.upload += 1
            if o.nbytes < 0:
                totals.unsized += 1
            else:
                totals.bytes += o.nbytes
        elif o.status == MOUNTED:
            totals.mount += 1
        else:  # PRESENT, SHARED
            totals.skip += 1
    for image in result.images:
        result.stores.setdefault(image.store, StoreTotals()).images[image.action] += 1
