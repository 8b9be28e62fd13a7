"""Writing manifests once their blobs are present, then publishing names, per store.

Order at every destination: blobs (earlier stage), then image manifests, then the
indexes that list them, then — in one call per store, after every image of the run —
the names (tags, ref names, ``manifest.json``).
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

from apache_beam.metrics import Metrics

from imagepush.transforms import errors
from imagepush.transforms.records import OK, AuditRow, now
from imagepush.transforms.beam.concurrency import DEFAULT_PARALLEL, StoreDoFn
from imagepush.transforms.engine.manifests import Finalized, rows_failed, write_manifests
from imagepush.transforms.engine.jobs import FAILED as BLOB_FAILED, BlobResult, TargetPlan
from imagepush.transforms.stores.base import Publication
from imagepush.transforms.stores.options import StoreOptions

__all__ = ["FinalizeFn", "Finalized", "PublishFn", "write_manifests"]

log = logging.getLogger("imagepush.progress")


class FinalizeFn(StoreDoFn):
    """(target key, {plan, blobs}) -> (store, Finalized): manifests written, name pending."""

    pool_name = "manifests"

    def __init__(self, run_id: str, options: StoreOptions | None = None, parallel: int = DEFAULT_PARALLEL) -> None:
        super().__init__(options, parallel)
        self._run_id = run_id

    def work(self, element) -> Iterator[tuple[str, Finalized]]:
        _, grouped = element
        results = list(grouped["blobs"])
        # Identical jobs share a key; each is finalized (idempotently) and audited.
        for tp in grouped["plan"]:
            yield self._finalize(tp, results)

    def _finalize(self, tp: TargetPlan, results: list[BlobResult]) -> tuple[str, Finalized]:
        store = tp.target.store
        if tp.error:
            return store, Finalized(None, rows_failed(tp, self._run_id, tp.error))
        blobs = {r.digest: r for r in results}
        bad = sorted((r for r in results if r.status == BLOB_FAILED), key=lambda r: r.digest)
        if bad:
            error = f"blob {bad[0].digest}: {bad[0].error}"
            if len(bad) > 1:
                error += f" (and {len(bad) - 1} more blobs failed)"
            return store, Finalized(None, rows_failed(tp, self._run_id, error))
        try:
            finalized = write_manifests(tp, blobs, self._stores.destination(store), self._run_id)
        except Exception as exc:
            return store, Finalized(None, rows_failed(tp, self._run_id, errors.one_line(exc)))
        return store, finalized


class PublishFn(StoreDoFn):
    """(store, [Finalized]) -> audit rows, after publishing every name in one store call."""

    pool_name = "publish"

    def __init__(self, options: StoreOptions | None = None, parallel: int = DEFAULT_PARALLEL) -> None:
        super().__init__(options, parallel)
        self._ok = Metrics.counter("imagepush", "images_ok")
        self._failed = Metrics.counter("imagepush", "images_failed")

    def observe(self, row: AuditRow) -> None:
        if row.role != "child":
            (self._ok if row.status == OK else self._failed).inc()

    def work(self, element: tuple[str, Iterable[Finalized]]) -> Iterator[AuditRow]:
        store, finals = element
        finals = list(finals)
        named = [i for i, f in enumerate(finals) if f.publication is not None]
        failed = self._publish(store, [finals[i].publication for i in named])  # type: ignore[misc]
        error_of = {named[position]: error for position, error in failed.items()}
        finished = now()
        for i, f in enumerate(finals):
            error = error_of.get(i)
            for row in f.rows:
                if error is not None and row.status == OK:
                    row = row.failed(*error, finished)
                if row.role != "child":
                    log.info("%s -> %s: %s", row.source, row.destination, row.status if row.status == OK
                             else f"failed: {row.error}")
                yield row

    def _publish(self, store: str, publications: list[Publication]) -> dict[int, tuple[str, str]]:
        """All names of one store in one call: (message, kind) of each that failed, by position.

        A store that cannot write any name fails them all.
        """
        if not publications:
            return {}
        try:
            failed = self._stores.destination(store).publish(publications)
        except Exception as exc:
            message = f"publishing to {store} failed: {errors.one_line(exc)}"
            log.warning(message)
            return dict.fromkeys(range(len(publications)), (message, errors.error_kind(exc)))
        for position, error in failed.items():
            log.warning("publishing %s failed: %s", publications[position].ref, errors.one_line(error))
        return {position: (errors.one_line(error), errors.error_kind(error)) for position, error in failed.items()}
