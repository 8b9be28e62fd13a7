"""Writing one target's manifests once its blobs are there, and the audit rows that say so.

Beam-free: the launcher's check for current images reports them with the very rows the
pipeline would write.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from imagepush.transforms.records import FAILED, OK, AuditRow, now
from imagepush.transforms.formats.convert import LayerInfo
from imagepush.transforms.formats.manifest import ImageIndex, blobs_of
from imagepush.transforms import errors
from imagepush.transforms.engine.jobs import COPIED, FAILED as BLOB_FAILED, BlobResult, ManifestNode, SyncSpec, TargetPlan
from imagepush.transforms.engine.render import render_tree
from imagepush.transforms.stores.base import Destination, ManifestBlob, Publication

log = logging.getLogger(__name__)


@dataclass
class Finalized:
    """One target's outcome before its name is published."""

    publication: Publication | None
    rows: list[AuditRow] = field(default_factory=list)


def finalize(tp: TargetPlan, results: list[BlobResult], destination: Destination | None, run_id: str) -> Finalized:
    """A target whose blobs were delivered: its manifests written, its name still to publish.

    A target that failed earlier (resolving, planning, or any of its blobs) gets its
    failed rows instead; ``destination`` may then be None.
    """
    if tp.error:
        return Finalized(None, rows_failed(tp, run_id, tp.error, tp.error_kind or errors.INTERNAL))
    bad = sorted((r for r in results if r.status == BLOB_FAILED), key=lambda r: r.digest)
    if bad:
        error = f"blob {bad[0].digest}: {bad[0].error}"
        if len(bad) > 1:
            error += f" (and {len(bad) - 1} more blobs failed)"
        return Finalized(None, rows_failed(tp, run_id, error, bad[0].error_kind or errors.INTERNAL))
    try:
        assert destination is not None, "a target without an error has a destination"
        return write_manifests(tp, {r.digest: r for r in results}, destination, run_id)
    except Exception as exc:
        return Finalized(None, rows_failed(tp, run_id, *errors.describe(exc)))


def rows_failed(tp: TargetPlan, run_id: str, error: str, kind: str) -> list[AuditRow]:
    finished = now()
    nodes = list(tp.root.walk()) if tp.root is not None else [None]
    rows = []
    for node in nodes:
        rows.append(
            AuditRow(
                run_id=run_id,
                source=tp.image.job.source,
                destination=tp.target.destination,
                source_digest=node.manifest.digest if node else None,
                destination_digest=None,
                media_type=None,
                status=FAILED,
                error=error,
                blobs_copied=0,
                blobs_skipped=0,
                bytes_copied=0,
                started_at=tp.image.started_at,
                finished_at=finished,
                role=_role(tp, node),
                error_kind=kind,
            )
        )
    return rows


def _role(tp: TargetPlan, node: ManifestNode | None) -> str:
    if node is None or node is tp.root:
        return "index" if node is not None and node.is_index else "image"
    return "child"


def write_manifests(
    tp: TargetPlan, blobs: dict[str, BlobResult], destination: Destination, run_id: str
) -> Finalized:
    """Convert (if planned) and store every manifest of the target, children first."""
    layer_info = {
        d: LayerInfo(size=r.size, diff_id=r.diff_id) for d, r in blobs.items() if r.diff_id is not None
    }
    owner: set[str] = set()
    rows: list[AuditRow] = []
    recompressed = {d: r.recompressed for d, r in blobs.items() if r.recompressed is not None}
    rendered = render_tree(tp.root, tp.formats, layer_info, recompressed)
    for item in rendered:
        node = item.node
        if not tp.up_to_date:
            if item.new_config is not None:
                destination.put_blob(*item.new_config)
            destination.put_manifest(ManifestBlob(item.data, item.media_type, item.digest), root=node is tp.root)
        copied, skipped, nbytes = (0, 0, 0) if node.is_index else _count_blobs(node, blobs, owner, tp.up_to_date)
        rows.append(
            AuditRow(
                run_id=run_id,
                source=tp.image.job.source,
                destination=tp.target.destination,
                source_digest=node.manifest.digest,
                destination_digest=item.digest,
                media_type=item.media_type,
                status=OK,
                error=None,
                blobs_copied=copied,
                blobs_skipped=skipped,
                bytes_copied=nbytes,
                started_at=tp.image.started_at,
                finished_at=now(),
                role=_role(tp, node),
            )
        )
    root = rendered[-1]
    if tp.up_to_date:  # the name already points at this digest: nothing to publish
        return Finalized(publication=None, rows=rows)
    publication = Publication(
        ref=tp.target.name,
        descriptor=root.descriptor,
        config_digest=root.config_digest,
        manifest=root.data,
    )
    return Finalized(publication=publication, rows=rows)


def _referenced(node: ManifestNode) -> list[str]:
    p = node.parsed
    return [d.digest for d in blobs_of(p)] if not isinstance(p, ImageIndex) else []


def _count_blobs(
    node: ManifestNode, blobs: dict[str, BlobResult], owner: set[str], all_present: bool = False
) -> tuple[int, int, int]:
    """Blob counts for one manifest; a blob shared by siblings counts for the first one.

    ``all_present``: the image was found complete at the destination, every blob skipped.
    """
    copied = skipped = nbytes = 0
    for d in _referenced(node):
        if d in owner:
            continue
        if all_present:
            owner.add(d)
            skipped += 1
            continue
        if d not in blobs:
            continue
        owner.add(d)
        r = blobs[d]
        if r.status == COPIED:
            copied += 1
            nbytes += r.bytes_copied
        else:
            skipped += 1
    return copied, skipped, nbytes


def listing_failed(spec: SyncSpec, run_id: str, exc: BaseException, started: dt.datetime) -> list[AuditRow]:
    """One failed row per destination of a sync whose source could not be listed."""
    error, kind = f"listing {spec.source} failed: {errors.one_line(exc)}", errors.error_kind(exc)
    log.warning(error)
    finished = now()
    return [
        AuditRow(
            run_id=run_id, source=spec.source, destination=out.ref, source_digest=None, destination_digest=None,
            media_type=None, status=FAILED, error=error, blobs_copied=0, blobs_skipped=0, bytes_copied=0,
            started_at=started, finished_at=finished, error_kind=kind,
        )
        for out in spec.destinations
    ]
