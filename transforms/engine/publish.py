"""Publishing names, the last write at every destination, with one outcome per name."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from imagepush.transforms import errors
from imagepush.transforms.engine.manifests import Finalized
from imagepush.transforms.records import COPIED, AuditRow, now
from imagepush.transforms.stores.base import Destination

log = logging.getLogger(__name__)


def publish(store: str, finals: Iterable[Finalized], open_destination: Callable[[], Destination]) -> list[AuditRow]:
    """Make every name of one store visible in one store call; the rows, failed where a name failed.

    A registry fails only the tags it could not write; a store that writes all its names
    in one file (an OCI layout's index.json), or that cannot be opened, fails them all.
    A failed row ends when its name failed; a copied one keeps the time its manifests were
    written, so images published together in one store call keep their own times.
    """
    finals = list(finals)
    named = [i for i, f in enumerate(finals) if f.publication is not None]
    failed = _publish(store, open_destination, [finals[i].publication for i in named])  # type: ignore[misc]
    error_of = {named[position]: error for position, error in failed.items()}
    finished = now()
    rows = []
    for i, final in enumerate(finals):
        error = error_of.get(i)
        for row in final.rows:
            if error is not None and row.status == COPIED:
                row = row.failed(*error, finished)
            rows.append(row)
    return rows


def _publish(store: str, open_destination: Callable[[], Destination], publications: list) -> dict[int, tuple[str, str]]:
    """(message, kind) of each publication that failed, by position."""
    if not publications:
        return {}
    try:
        failed = open_destination().publish(publications)
    except Exception as exc:
        message = f"publishing to {store} failed: {errors.one_line(exc)}"
        log.warning(message)
        return dict.fromkeys(range(len(publications)), (message, errors.error_kind(exc)))
    for position, error in failed.items():  # each is in its image's audit row, and so in the summary
        log.debug("publishing %s failed: %s", publications[position].ref, errors.one_line(error))
    return {position: errors.describe(error) for position, error in failed.items()}
