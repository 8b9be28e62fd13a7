"""Copying each distinct source blob once, to every destination store that lacks it."""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import errors
from transforms.blobio import DEFAULT_CHUNK, stream_blob
from transforms.plan import COPIED, FAILED, PRESENT, SHARED, BlobRequest, BlobResult
from transforms.storecache import StoreCache

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


class CopyBlobsFn(beam.DoFn):
    """(source blob key, requests) -> (target key, BlobResult) for every request."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK) -> None:
        self._chunk = chunk_size
        self._copied = Metrics.counter("imagepush", "blobs_copied")
        self._present = Metrics.counter("imagepush", "blobs_present")
        self._bytes = Metrics.counter("imagepush", "bytes_copied")
        self._failed = Metrics.counter("imagepush", "blobs_failed")

    def setup(self) -> None:
        self._stores = StoreCache()
        self._progress = _Progress()

    def process(self, element: tuple[str, Iterable[BlobRequest]]) -> Iterator[tuple[str, BlobResult]]:
        _, requests = element
        requests = sorted(set(requests), key=lambda r: (r.dest_store, r.target_key))
        first = requests[0]
        digest = first.descriptor.digest
        size = max(r.descriptor.size for r in requests)
        want_diff = any(r.need_diff_id for r in requests)
        stores = sorted({r.dest_store for r in requests})

        status: dict[str, tuple[str, str | None]] = {}
        missing: list[str] = []
        for store in stores:
            try:
                if self._stores.destination(store).has_blob(digest):
                    status[store] = (PRESENT, None)
                else:
                    missing.append(store)
            except Exception as exc:
                status[store] = (FAILED, errors.one_line(exc))

        written, diff_id = 0, None
        if missing or want_diff:
            sinks, sink_stores = [], []
            try:
                for store in missing:
                    try:
                        sinks.append(self._stores.destination(store).blob_sink(first.descriptor))
                        sink_stores.append(store)
                    except Exception as exc:
                        status[store] = (FAILED, errors.one_line(exc))
                with self._stores.source(first.source_store).open_blob(digest) as reader:
                    outcome = stream_blob(
                        reader, digest, size if size >= 0 else None, sinks,
                        want_diff_id=want_diff, chunk_size=self._chunk,
                    )
                size, diff_id = outcome.size, outcome.diff_id
                for i, store in enumerate(sink_stores):
                    status[store] = (FAILED, outcome.sink_errors[i]) if i in outcome.sink_errors else (COPIED, None)
                written = outcome.size
            except Exception as exc:
                message = errors.one_line(exc)
                log.warning("blob %s: %s", digest, message)
                for store in missing:
                    status[store] = (FAILED, message)
                for store in stores:
                    if want_diff and status[store][0] == PRESENT:
                        status[store] = (FAILED, message)

        for store in stores:
            state, error = status[store]
            if state == COPIED:
                self._copied.inc()
                self._bytes.inc(written)
                self._progress.add(written)
            elif state == PRESENT:
                self._present.inc()
            else:
                self._failed.inc()
            attributed = False
            for r in requests:
                if r.dest_store != store:
                    continue
                shown = state
                if state == COPIED and attributed:
                    shown = SHARED
                yield r.target_key, BlobResult(
                    digest=digest,
                    dest_store=store,
                    status=shown,
                    size=size,
                    bytes_copied=written if shown == COPIED else 0,
                    diff_id=diff_id,
                    error=error,
                )
                attributed = attributed or state == COPIED

    def teardown(self) -> None:
        self._stores.close()
