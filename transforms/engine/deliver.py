"""Making one source blob present at every destination store that needs it.

For one source blob: ask every destination whether it has it; let the ones that can
take it from a store known to hold it (a registry mounting from a sibling repository)
do so; stream the source once into every store still missing it, hashing on the way
and measuring the diff_id when a conversion needs it; then let the stores that share
blobs with a fresh copy take it from there. Every outcome is a value: a store that
fails does not stop the others, and each request gets its own :class:`BlobResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, ContextManager, Iterable, Protocol

from imagepush.transforms import errors
from imagepush.transforms.backoff import MAXIMUM, backoff_delay
from imagepush.transforms.engine.jobs import COPIED, FAILED, MOUNTED, PRESENT, SHARED, BlobRequest, BlobResult
from imagepush.transforms.engine.streaming import DEFAULT_CHUNK, CopyOutcome, recompress, stream_blob
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.pacing import RateBucket
from imagepush.transforms.stores.base import BlobSink, Destination, Source, UploadInterrupted, counting_retries, note_retry

log = logging.getLogger(__name__)

Opener = Callable[[], ContextManager[BinaryIO]]

class Stores(Protocol):
    """What the engine needs of a worker's opened stores (a ``StoreCache`` in practice)."""

    def source(self, store: str) -> Source: ...

    def destination(self, store: str) -> Destination: ...


@dataclass(frozen=True)
class _State:
    """What happened at one destination store."""

    status: str
    error: str | None = None
    kind: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> "_State":
        message, kind = errors.describe(exc)
        return cls(FAILED, message, kind)


def _missing_at_source(exc: BaseException) -> BaseException:
    """A blob an image lists but its source does not have is *missing*, not an unknown name."""
    if errors.error_kind(exc) == errors.NOT_FOUND:
        return _MissingBlob(str(exc))
    return exc


class _MissingBlob(errors.ImagepushError):
    kind = errors.MISSING


class BlobDelivery:
    """Delivers source blobs, each once, to the destination stores that requested it."""

    def __init__(
        self, stores: Stores, chunk_size: int = DEFAULT_CHUNK, *, sleep: Callable[[float], None] = time.sleep,
        pacer: Callable[[str], RateBucket | None] | None = None,
    ) -> None:
        """``pacer``: the rate bucket a destination store's bytes go through (``--max-bandwidth``)."""
        self._stores = stores
        self._pacer = pacer
        self._chunk = chunk_size
        self._sleep = sleep
        self._rng = random.Random()

    def deliver(self, requests: Iterable[BlobRequest], known_at: Iterable[str] = ()) -> list[tuple[str, BlobResult]]:
        """All requests for one source blob -> ``(target key, result)`` for every request.

        ``known_at``: destination stores an earlier delivery left the blob in, which a
        store of their blob-sharing domain may mount from instead of reading the source.

        Every retry made while delivering it (requests sent again by a store, uploads
        started again here) is counted on the first result, so the audit's totals add up.
        """
        with counting_retries() as retries:
            results = self._deliver_all(requests, list(known_at))
        if results and retries[0]:
            key, first_result = results[0]
            results[0] = (key, dataclasses.replace(first_result, retries=first_result.retries + retries[0]))
        return results

    def _deliver_all(self, requests: Iterable[BlobRequest], known_at: list[str]) -> list[tuple[str, BlobResult]]:
        requests = sorted(set(requests), key=lambda r: (r.dest_store, r.target_key))
        first = requests[0]
        size = max(r.descriptor.size for r in requests)
        stores = sorted({r.dest_store for r in requests})
        recompressed = None
        if first.recompress:
            states, written, size, diff_id, recompressed = self._recompress(first, size, stores)
        else:
            source = self._stores.source(first.source_store)
            states, written, size, diff_id = self._deliver(
                first.descriptor,
                lambda: source.open_blob(first.descriptor.digest),
                size,
                stores,
                any(r.need_diff_id for r in requests),
                [first.source_store, *known_at],
            )
        return list(_results(requests, stores, states, size, written, diff_id, recompressed))

    # -- one blob, many stores ------------------------------------------------------

    def _deliver(
        self, descriptor: Descriptor, opener: Opener, size: int, stores: list[str], want_diff: bool,
        holders: list[str],
    ) -> tuple[dict[str, _State], int, int, str | None]:
        """(state per store, bytes written per copy, size, diff_id).

        The questions first (:func:`route_blob`), then one copy per blob-sharing domain,
        then the stores that take that copy from their domain.
        """
        route = route_blob(
            stores, holders,
            mount=lambda store, lenders: self._mount(store, descriptor, lenders),
            present=lambda store: present_at(self._stores.destination(store), descriptor),
            domain=lambda store: self._stores.destination(store).blob_domain,
        )
        states = {store: _State(status) for store, status in route.settled.items()}
        states.update((store, _State.failed(exc)) for store, exc in route.failed.items())
        upload, later = route.upload, route.later

        written, diff_id = 0, None
        if upload or want_diff:
            outcome, failure = self._stream(descriptor, opener, size, upload, want_diff, states)
            if outcome is not None:
                size, diff_id, written = outcome.size, outcome.diff_id, outcome.size
            elif want_diff and failure is not None:
                # Without the diff_id no manifest can be written: present copies fail too.
                for store in stores:
                    if states.get(store, _State(FAILED)).status in (PRESENT, MOUNTED):
                        states[store] = failure
        if later:
            route.holders += [s for s in upload if states.get(s, _State(FAILED)).status == COPIED]
            retry = [s for s in later if not self._mount(s, descriptor, route.learnt)]
            for store in later:
                if store not in retry:
                    states[store] = _State(MOUNTED)
            if retry:
                self._stream(descriptor, opener, size, retry, False, states)
        return states, written, size, diff_id

    def _mount(self, store: str, descriptor: Descriptor, holders: list[str]) -> bool:
        """Let the destination take the blob from a store known to hold it, if it can."""
        try:
            return self._stores.destination(store).mount_blob(descriptor, [h for h in holders if h != store])
        except Exception:  # a refused mount is not an error: the blob is copied instead
            log.debug("mount of %s into %s failed", descriptor.digest, store, exc_info=True)
            return False

    def _stream(
        self, descriptor: Descriptor, opener: Opener, size: int, stores: list[str], want_diff: bool,
        states: dict[str, _State],
    ) -> tuple[CopyOutcome | None, _State | None]:
        """Copy the blob into every store in ``stores``: (outcome of the first read, or its failure).

        The first read serves every store at once. A sink whose upload was interrupted
        (:class:`UploadInterrupted`: a reset, a 429 or 5xx on a streamed body, a lost
        session) has lost bytes that only the source still holds, so the blob is read
        again through ``opener`` for the interrupted stores only, each into a fresh sink,
        as long as each store's ``upload_restarts`` allows, after a backoff that honours
        the store's ``Retry-After``. Re-reading is preferred to spooling every upload to
        disk: memory stays bounded by the chunk size whatever the layer size, a healthy
        run writes nothing locally, and sources already resume their own reads. The other
        stores keep their outcome of the first read.
        """
        used: dict[str, int] = dict.fromkeys(stores, 0)
        pending = list(stores)
        first: CopyOutcome | None = None
        restart = 0
        while True:
            outcome, failure, interrupted = self._stream_once(
                descriptor, opener, size, pending, want_diff and first is None, states,
            )
            if first is None:
                if outcome is None:
                    return None, failure
                first = outcome
            pending = [
                store for store in interrupted
                if used[store] < self._stores.destination(store).upload_restarts
            ]
            if not pending:
                return first, None
            restart += 1
            for store in pending:
                used[store] += 1
                note_retry()
            delay = backoff_delay(restart, self._rng,
                                  at_least=min(MAXIMUM, max(interrupted[s] for s in pending)))
            log.info("blob %s: upload interrupted at %s; starting again in %.1fs",
                     descriptor.digest, ", ".join(pending), delay)
            self._sleep(delay)

    def _stream_once(
        self, descriptor: Descriptor, opener: Opener, size: int, stores: list[str], want_diff: bool,
        states: dict[str, _State],
    ) -> tuple[CopyOutcome | None, _State | None, dict[str, float]]:
        """Read the blob once into every store in ``stores``.

        (outcome, or the failure of the read; the interrupted stores with the delay each asked for).
        """
        sinks, sink_stores = [], []
        for store in stores:
            try:
                sink = self._stores.destination(store).blob_sink(descriptor)
                bucket = self._pacer(store) if self._pacer is not None else None
                sinks.append(PacedSink(sink, bucket) if bucket is not None else sink)
                sink_stores.append(store)
            except Exception as exc:
                states[store] = _State.failed(exc)
        try:
            with opener() as reader:
                outcome = stream_blob(
                    reader, descriptor.digest, size if size >= 0 else None, sinks,
                    want_diff_id=want_diff, chunk_size=self._chunk,
                )
        except Exception as exc:
            # stream_blob aborts the sinks it was given; these are for a source that could not even be opened.
            for sink in sinks:
                _abort_quietly(sink)
            failure = _State.failed(_missing_at_source(exc))
            log.warning("blob %s: %s", descriptor.digest, failure.error)
            for store in sink_stores:
                states[store] = failure
            return None, failure, {}
        interrupted: dict[str, float] = {}
        for i, store in enumerate(sink_stores):
            error = outcome.sink_errors.get(i)
            states[store] = _State.failed(error) if error is not None else _State(COPIED)
            if isinstance(error, UploadInterrupted):
                interrupted[store] = float(getattr(error, "delay", 0.0) or 0.0)
        return outcome, None, interrupted

    def _recompress(self, first: BlobRequest, size: int, stores: list[str]):
        """Rewrite a layer once through a local spool file, then deliver the new blob."""
        digest, compression = first.descriptor.digest, first.recompress
        with tempfile.TemporaryFile(prefix="imagepush-") as spool:
            try:
                with self._stores.source(first.source_store).open_blob(digest) as reader:
                    result = recompress(reader, digest, size if size >= 0 else None, compression, spool,
                                        chunk_size=self._chunk)
            except Exception as exc:
                failure = _State.failed(_missing_at_source(exc))
                log.warning("blob %s: %s", digest, failure.error)
                return dict.fromkeys(stores, failure), 0, size, None, None
            new = Descriptor(mt.layer_type(mt.OCI_MANIFEST, compression), result.digest, result.size)

            @contextlib.contextmanager
            def reread():
                spool.seek(0)
                yield spool

            states, written, _, _ = self._deliver(new, reread, result.size, stores, False, [])
        return states, written, size, result.diff_id, (compression, result.digest, result.size)


@dataclass
class Route:
    """Where one blob stands at each destination store once the questions before a copy are asked."""

    #: Stores that mounted the blob or have it: MOUNTED or PRESENT.
    settled: dict[str, str]
    #: Stores whose question failed, with the failure.
    failed: dict[str, Exception]
    #: Stores the blob is copied into: one per blob-sharing domain, and every store of none.
    upload: list[str]
    #: Stores that take the copy one of ``upload`` makes in their domain.
    later: list[str]
    #: Stores known to hold the blob: the ones given, then those found holding it or mounted.
    holders: list[str]
    #: How many of ``holders`` were given: mounts from those were tried already.
    known: int

    @property
    def learnt(self) -> list[str]:
        """The holders found since the questions began: the lenders still worth asking a mount from."""
        return self.holders[self.known:]


def route_blob(
    stores: list[str], holders: Iterable[str], *, mount: Callable[[str, list[str]], bool],
    present: Callable[[str], bool], domain: Callable[[str], str | None],
) -> Route:
    """The copy step's questions for one blob, in their order; ``plan`` asks the same ones read-only.

    A store that can mount the blob from one known to hold it (``holders``) mounts at
    once: a present blob mounts too, so asking first would only add a request. The
    others are asked whether they have it (``present``: a store may answer no without a
    request, :meth:`Destination.asks_before_upload`). A store still missing it mounts
    from one found holding it since; of the rest, one store per blob-sharing domain
    (``domain``) is sent the blob and the others of its domain wait to take that copy.
    ``mount(store, lenders)`` asks (or, for a plan, would ask) ``store`` to mount the
    blob from one of ``lenders``.
    """
    holders = list(holders)
    known = len(holders)
    settled: dict[str, str] = {}
    failed: dict[str, Exception] = {}
    unmounted = []
    for store in stores:
        if mount(store, holders):
            settled[store] = MOUNTED
            holders.append(store)
        else:
            unmounted.append(store)
    missing = []
    for store in unmounted:
        try:
            found = present(store)
        except Exception as exc:
            failed[store] = exc
            continue
        if found:
            settled[store] = PRESENT
            holders.append(store)
        else:
            missing.append(store)
    upload: list[str] = []
    later: list[str] = []
    uploading: set[str] = set()
    for store in missing:
        if len(holders) > known and mount(store, holders[known:]):
            settled[store] = MOUNTED
            holders.append(store)
            continue
        shared = domain(store)
        if shared is not None and shared in uploading:
            later.append(store)
        else:
            upload.append(store)
            if shared is not None:
                uploading.add(shared)
    return Route(settled, failed, upload, later, holders, known)


def present_at(destination: Destination, descriptor: Descriptor) -> bool:
    """Whether the store says it has the blob; a store that uploads without asking says no at once."""
    return destination.asks_before_upload(descriptor) and destination.has_blob(descriptor.digest)


def _abort_quietly(sink: BlobSink) -> None:
    """Abort a sink (a second abort does nothing); cleanup never hides the failure that caused it."""
    try:
        sink.abort()
    except Exception:
        log.debug("abort failed", exc_info=True)


def _results(requests, stores, states, size, written, diff_id, recompressed):
    """One result per request; a blob written once counts as copied for one request only."""
    digest = requests[0].descriptor.digest
    for store in stores:
        state = states.get(store, _State(FAILED, "blob was not copied", errors.INTERNAL))
        attributed = False
        for r in requests:
            if r.dest_store != store:
                continue
            shown = SHARED if state.status == COPIED and attributed else state.status
            yield r.target_key, BlobResult(
                digest=digest,
                dest_store=store,
                status=shown,
                size=size,
                bytes_copied=written if shown == COPIED else 0,
                diff_id=diff_id,
                error=state.error,
                error_kind=state.kind,
                recompressed=recompressed,
            )
            attributed = attributed or state.status == COPIED


#: The most bytes a capped destination is sent at once, whatever the read size.
PACED_PIECE = 1 << 20


class PacedSink(BlobSink):
    """A sink whose writes wait their turn under a destination's bandwidth cap.

    The one read of a source blob feeds every destination's sink in turn, so a capped
    destination also paces the others receiving the same blob; blobs not bound for it
    are not held up.
    """

    def __init__(self, sink: BlobSink, bucket: RateBucket) -> None:
        self._sink = sink
        self._bucket = bucket
        self.verifies_digest = sink.verifies_digest

    def write(self, chunk: bytes) -> None:
        # In pieces: a read chunk of a few MiB taken at once would leave as one burst.
        # (A capped destination is slow by choice: copying the pieces costs it nothing.)
        for start in range(0, len(chunk), PACED_PIECE):
            piece = chunk if len(chunk) <= PACED_PIECE else chunk[start:start + PACED_PIECE]
            self._bucket.take(len(piece))
            self._sink.write(piece)

    def commit(self) -> None:
        self._sink.commit()

    def abort(self) -> None:
        self._sink.abort()
