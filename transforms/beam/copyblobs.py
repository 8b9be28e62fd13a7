"""Copying each distinct source blob once, to every destination store that lacks it.

For one source blob the steps are: ask every destination whether it has it; let
registry repositories that lack it mount it from a repository of the same registry
that has it; stream the source once into every store still missing it (hashing, and
measuring the diff_id when a conversion needs it); then mount into the same-registry
repositories that were left for the copy just made.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from typing import Iterable, Iterator

from apache_beam.metrics import Metrics

from imagepush.transforms import errors
from imagepush.transforms.engine.streaming import DEFAULT_CHUNK, recompress, stream_blob
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.engine.jobs import COPIED, FAILED, MOUNTED, PRESENT, SHARED, BlobRequest, BlobResult
from imagepush.transforms.beam.concurrency import DEFAULT_PARALLEL, StoreDoFn, in_global_window
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger("imagepush.progress")


class _Progress:
    """Throttled progress lines: local runners show no metrics until the end."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.last = every, time.monotonic()
        self.blobs = self.bytes = 0

    def add(self, nbytes: int) -> None:
        self.blobs += 1
        self.bytes += nbytes
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            log.info("copied %d blobs, %.1f MB so far", self.blobs, self.bytes / 1e6)


class CopyBlobsFn(StoreDoFn):
    """(source blob key, requests) -> (target key, BlobResult) for every request."""

    pool_name = "copy"

    def __init__(
        self, options: StoreOptions | None = None, parallel: int = DEFAULT_PARALLEL, chunk_size: int = DEFAULT_CHUNK
    ) -> None:
        super().__init__(options, parallel)
        self._chunk = chunk_size
        self._copied = Metrics.counter("imagepush", "blobs_copied")
        self._present = Metrics.counter("imagepush", "blobs_present")
        self._bytes = Metrics.counter("imagepush", "bytes_copied")
        self._failed = Metrics.counter("imagepush", "blobs_failed")

    def setup(self) -> None:
        super().setup()
        self._progress = _Progress()

    def start_bundle(self) -> None:
        self._queued: list[tuple[str, list[BlobRequest]]] = []

    def process(self, element: tuple[str, Iterable[BlobRequest]]) -> Iterator[tuple[str, BlobResult]]:
        """Hold the bundle's requests (small descriptors) to start the largest blobs first.

        With many small blobs and a few big ones, a big blob started last would copy
        alone at the end; largest-first keeps every thread busy until the end.
        """
        key, requests = element
        self._queued.append((key, list(requests)))
        return iter(())

    def finish_bundle(self) -> Iterator:
        queued, self._queued = self._queued, []
        queued.sort(key=lambda item: -max(r.descriptor.size for r in item[1]))
        for item in queued:
            for output in self._pool.submit(self.work, item):
                yield in_global_window(output)
        yield from self._pool.drain()

    def observe(self, output: tuple[str, BlobResult]) -> None:
        result = output[1]
        if result.status == COPIED:
            self._copied.inc()
            self._bytes.inc(result.bytes_copied)
            self._progress.add(result.bytes_copied)
        elif result.status in (PRESENT, MOUNTED):
            self._present.inc()
        elif result.status == FAILED:
            self._failed.inc()

    def _has(self, store: str, digest: str) -> tuple[str, str | None] | None:
        try:
            return (PRESENT, None) if self._stores.destination(store).has_blob(digest) else None
        except Exception as exc:
            return FAILED, errors.one_line(exc)

    def _mount(self, store: str, descriptor: Descriptor, holders: list[str]) -> bool:
        """Let the destination take the blob from a store known to hold it, if it can."""
        try:
            return self._stores.destination(store).mount_blob(descriptor, [h for h in holders if h != store])
        except Exception:  # a refused mount is not an error: the blob is uploaded instead
            log.debug("mount of %s into %s failed", descriptor.digest, store, exc_info=True)
            return False

    def _stream(self, descriptor: Descriptor, open_reader, size: int, stores: list[str], want_diff: bool,
                status: dict):
        """Read the blob once into every store in ``stores``; returns (outcome, error)."""
        digest = descriptor.digest
        sinks, sink_stores = [], []
        for store in stores:
            try:
                sinks.append(self._stores.destination(store).blob_sink(descriptor))
                sink_stores.append(store)
            except Exception as exc:
                status[store] = (FAILED, errors.one_line(exc))
        try:
            with open_reader() as reader:
                outcome = stream_blob(
                    reader, digest, size if size >= 0 else None, sinks,
                    want_diff_id=want_diff, chunk_size=self._chunk,
                )
        except Exception as exc:
            message = errors.one_line(exc)
            log.warning("blob %s: %s", digest, message)
            for store in sink_stores:
                status[store] = (FAILED, message)
            return None, message
        for i, store in enumerate(sink_stores):
            status[store] = (FAILED, outcome.sink_errors[i]) if i in outcome.sink_errors else (COPIED, None)
        return outcome, None

    def _deliver(self, descriptor: Descriptor, open_reader, size: int, stores: list[str], want_diff: bool,
                 holders: list[str]):
        """Make one blob present at every store: check, mount, upload once, mount the rest.

        Returns (status per store, bytes written per copy, size, diff_id).
        """
        digest = descriptor.digest
        status: dict[str, tuple[str, str | None]] = {}
        missing = []
        for store in stores:
            found = self._has(store, digest)
            if found is None:
                missing.append(store)
            else:
                status[store] = found
        holders = holders + [s for s in stores if status.get(s, ("",))[0] == PRESENT]
        later: list[str] = []
        upload: list[str] = []
        domains_uploading: set[str] = set()
        for store in missing:
            if self._mount(store, descriptor, holders):
                status[store] = (MOUNTED, None)
                holders.append(store)
                continue
            domain = self._stores.destination(store).blob_domain
            if domain is not None and domain in domains_uploading:
                later.append(store)  # mount it from the copy about to be made in its domain
            else:
                upload.append(store)
                if domain is not None:
                    domains_uploading.add(domain)

        written, diff_id = 0, None
        if upload or want_diff:
            outcome, error = self._stream(descriptor, open_reader, size, upload, want_diff, status)
            if outcome is not None:
                size, diff_id, written = outcome.size, outcome.diff_id, outcome.size
            elif want_diff:
                for store in stores:
                    if status.get(store, (FAILED,))[0] in (PRESENT, MOUNTED):
                        status[store] = (FAILED, error)
        if later:
            holders += [s for s in upload if status.get(s, (FAILED,))[0] == COPIED]
            retry = [s for s in later if not self._mount(s, descriptor, holders)]
            for store in later:
                if store not in retry:
                    status[store] = (MOUNTED, None)
            if retry:
                self._stream(descriptor, open_reader, size, retry, False, status)
        return status, written, size, diff_id

    def _recompress(self, first: BlobRequest, size: int, stores: list[str]):
        """Rewrite a layer once through a local spool file, then deliver the new blob."""
        digest, compression = first.descriptor.digest, first.recompress
        with tempfile.TemporaryFile(prefix="imagepush-") as spool:
            try:
                with self._stores.source(first.source_store).open_blob(digest) as reader:
                    result = recompress(reader, digest, size if size >= 0 else None, compression, spool,
                                        chunk_size=self._chunk)
            except Exception as exc:
                message = errors.one_line(exc)
                log.warning("blob %s: %s", digest, message)
                return {s: (FAILED, message) for s in stores}, 0, size, None, None
            new = Descriptor(mt.layer_type(mt.OCI_MANIFEST, compression), result.digest, result.size)

            @contextlib.contextmanager
            def reread():
                spool.seek(0)
                yield spool

            status, written, _, _ = self._deliver(new, reread, result.size, stores, False, [])
        return status, written, size, result.diff_id, (compression, result.digest, result.size)

    def work(self, element: tuple[str, Iterable[BlobRequest]]) -> Iterator[tuple[str, BlobResult]]:
        _, requests = element
        requests = sorted(set(requests), key=lambda r: (r.dest_store, r.target_key))
        first = requests[0]
        size = max(r.descriptor.size for r in requests)
        stores = sorted({r.dest_store for r in requests})
        recompressed = None
        if first.recompress:
            status, written, size, diff_id, recompressed = self._recompress(first, size, stores)
        else:
            source = self._stores.source(first.source_store)
            status, written, size, diff_id = self._deliver(
                first.descriptor,
                lambda: source.open_blob(first.descriptor.digest),
                size,
                stores,
                any(r.need_diff_id for r in requests),
                [first.source_store],
            )
        yield from self._results(requests, stores, status, size, written, diff_id, recompressed)

    def _results(self, requests, stores, status, size, written, diff_id, recompressed):
        digest = requests[0].descriptor.digest
        for store in stores:
            state, error = status.get(store, (FAILED, "blob was not copied"))
            attributed = False
            for r in requests:
                if r.dest_store != store:
                    continue
                shown = SHARED if state == COPIED and attributed else state
                yield r.target_key, BlobResult(
                    digest=digest,
                    dest_store=store,
                    status=shown,
                    size=size,
                    bytes_copied=written if shown == COPIED else 0,
                    diff_id=diff_id,
                    error=error,
                    recompressed=recompressed,
                )
                attributed = attributed or state == COPIED
