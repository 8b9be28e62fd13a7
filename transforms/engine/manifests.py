"""Writing one target's manifests once its blobs are there, and the audit rows that say so.

Beam-free: the launcher's check for current images reports them with the very rows the
pipeline would write.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from imagepush.transforms.records import COPIED as ROW_COPIED, CURRENT, FAILED, SKIPPED, AuditRow, now
from imagepush.transforms.formats.convert import LayerInfo
from imagepush.transforms.formats.manifest import ImageIndex, blobs_of
from imagepush.transforms import errors
from imagepush.transforms.engine.jobs import (
    COPIED,
    FAILED as BLOB_FAILED,
    MOUNTED,
    BlobResult,
    ManifestNode,
    SyncSpec,
    TargetPlan,
)
from imagepush.transforms.engine.render import render_tree
from imagepush.transforms.stores.base import Destination, ManifestBlob, Publication, counting_retries

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
    if tp.skipped:
        return Finalized(None, rows_skipped(tp, run_id))
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
        row = _row(tp, node, run_id, FAILED, finished)
        row.error, row.error_kind = error, kind
        rows.append(row)
    return rows


def rows_skipped(tp: TargetPlan, run_id: str) -> list[AuditRow]:
    """One ``skipped`` row for a target left alone on purpose, its reason in ``error``."""
    row = _row(tp, tp.root, run_id, SKIPPED, now())
    row.error = tp.skipped
    return [row]


def _row(tp: TargetPlan, node: ManifestNode | None, run_id: str, status: str, finished: dt.datetime) -> AuditRow:
    """The columns every row of a target shares: what was asked (so a failed row can be
    retried as it was), which image, which manifest, and the image's own times."""
    job, target = tp.image.job, tp.target
    # A child's platform, from its index entry (also a root narrowed to one child of an index).
    entry = node.entry if node is not None else None
    return AuditRow(
        run_id=run_id,
        source=job.source,
        destination=target.destination,
        source_digest=node.manifest.digest if node is not None else None,
        destination_digest=None,
        media_type=None,
        status=status,
        error=None,
        blobs_copied=0,
        blobs_skipped=0,
        bytes_copied=0,
        started_at=tp.image.started_at,
        finished_at=finished,
        role=_role(tp, node),
        repository=job.repository,
        tag=job.tag,
        platform=str(entry.platform) if entry is not None and entry.platform is not None else None,
        format=target.format,
        compression=target.compression,
        platforms=list(job.platforms),
    )


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
    recompressed = {d: r.recompressed for d, r in blobs.items() if r.recompressed is not None}
    rendered = render_tree(tp.root, tp.formats, layer_info, recompressed)
    status = CURRENT if tp.up_to_date else ROW_COPIED
    counts: dict[int, _Counts] = {}  # by node: one manifest may appear twice in a tree
    written_retries: dict[int, int] = {}
    for item in rendered:
        node = item.node
        if not tp.up_to_date:
            with counting_retries() as retries:
                if item.new_config is not None:
                    destination.put_blob(*item.new_config)
                destination.put_manifest(ManifestBlob(item.data, item.media_type, item.digest), root=node is tp.root)
            written_retries[id(node)] = written_retries.get(id(node), 0) + retries[0]
        counts[id(node)] = _index_counts(node, counts) if node.is_index \
            else _count_blobs(node, blobs, owner, tp.up_to_date)
    # The image is done when its last manifest is written: every row of it ends then.
    finished = now()
    rows: list[AuditRow] = []
    for item in rendered:
        row = _row(tp, item.node, run_id, status, finished)
        row.destination_digest, row.media_type = item.digest, item.media_type
        if item.media_type != item.node.manifest.media_type:
            row.converted_from = item.node.manifest.media_type
        c = counts[id(item.node)]
        if not item.node.is_index:
            row.blobs_copied, row.blobs_mounted, row.blobs_skipped, row.bytes_copied = \
                c.copied, c.mounted, c.skipped, c.bytes_copied
        row.bytes_total = c.bytes_total
        row.retries = c.retries + written_retries.pop(id(item.node), 0)
        rows.append(row)
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


def _referenced(node: ManifestNode) -> dict[str, int]:
    """Digest -> size (-1 when unknown, as in schema1) of every blob an image manifest references."""
    p = node.parsed
    return {d.digest: d.size for d in blobs_of(p)} if not isinstance(p, ImageIndex) else {}


@dataclass
class _Counts:
    copied: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    bytes_total: int = 0
    #: Retries the manifest's blobs took (a blob shared by siblings counts for the first one).
    retries: int = 0
    #: Digest -> size of every blob the manifest (or an index's whole tree) references.
    sizes: dict[str, int] = field(default_factory=dict)


def _count_blobs(
    node: ManifestNode, blobs: dict[str, BlobResult], owner: set[str], all_present: bool = False
) -> _Counts:
    """Blob counts for one manifest; a blob shared by siblings counts for the first one.

    ``all_present``: the image was found complete at the destination, every blob skipped.
    ``bytes_total`` counts every blob the manifest references, shared or not, at its source
    size (a delivered blob's measured size where the descriptor has none).
    """
    counts = _Counts()
    for d, size in _referenced(node).items():
        result = blobs.get(d)
        counts.sizes[d] = result.size if result is not None and result.size >= 0 else max(size, 0)
        if d in owner:
            continue
        if all_present:
            owner.add(d)
            counts.skipped += 1
            continue
        if result is None:
            continue
        owner.add(d)
        counts.retries += result.retries
        if result.status == COPIED:
            counts.copied += 1
            counts.bytes_copied += result.bytes_copied
        elif result.status == MOUNTED:
            counts.mounted += 1
        else:
            counts.skipped += 1
    counts.bytes_total = sum(counts.sizes.values())
    return counts


def _index_counts(node: ManifestNode, counts: dict[int, _Counts]) -> _Counts:
    """An index counts no blobs (its children do); its ``bytes_total`` is its whole tree's, each blob once."""
    sizes: dict[str, int] = {}
    for child in node.children:
        sizes.update(counts[id(child)].sizes)
    return _Counts(sizes=sizes, bytes_total=sum(sizes.values()))


def listing_failed(spec: SyncSpec, run_id: str, exc: BaseException, started: dt.datetime) -> list[AuditRow]:
    """One failed row per destination of a sync whose source could not be listed."""
    error, kind = f"listing {spec.source} failed: {errors.one_line(exc)}", errors.error_kind(exc)
    log.warning(error)
    finished = now()
    return [
        AuditRow(
            run_id=run_id, source=spec.source, destination=out.ref, source_digest=None, destination_digest=None,
            media_type=None, status=FAILED, error=error, blobs_copied=0, blobs_skipped=0, bytes_copied=0,
            started_at=started, finished_at=finished, error_kind=kind, format=out.format,
            compression=out.compression, platforms=list(spec.platforms),
        )
        for out in spec.destinations
    ]
