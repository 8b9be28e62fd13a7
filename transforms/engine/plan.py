"""Planning one image for one target: formats, blobs, and whether it is already there.

Beam-free, so that the launcher's check for current images (``preflight``) and the
``PlanTargets`` step decide exactly the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagepush.transforms import errors
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.engine.jobs import (
    BlobNeed,
    BlobRequest,
    ImagePlan,
    ManifestNode,
    TargetPlan,
    blob_needs,
    choose_format,
)
from imagepush.transforms.stores.base import Destination, Source, StoreError
from imagepush.transforms.stores.refs import blob_domain
from imagepush.transforms.engine.resolve import load_config

if TYPE_CHECKING:
    from imagepush.transforms.engine.deliver import Stores

#: ``plan_target``'s ``current`` when the destination has not been asked yet.
UNKNOWN = object()


def plan_target(
    plan: ImagePlan, index: int, destination: Destination, source: Source | None = None, current: object = UNKNOWN
) -> TargetPlan:
    """Decide formats and blobs for one target; ``source`` reads configs conversions need.

    ``current``: the digest the target's name points at, when the caller already asked.
    """
    target = plan.job.targets[index]
    tp = TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root, error=plan.error,
                    error_kind=plan.error_kind)
    if tp.error:
        return tp
    if target.no_clobber and target.name:
        from imagepush.transforms.engine.current import clobber_refused  # current.py plans with this module

        if current is UNKNOWN:
            current = destination.current_digest(target.name)
        tp.skipped = clobber_refused(target, current, plan.root.manifest.digest)  # type: ignore[arg-type]
        if tp.skipped:
            return tp
    root = plan.root
    holds_indexes = destination.accepts_manifest(mt.OCI_INDEX) or destination.accepts_manifest(mt.DOCKER_LIST)
    if root.is_index and not holds_indexes:
        # Stores that hold single images (docker-archive) take an index narrowed to one image.
        if len(root.children) != 1:
            tp.error = (
                f"{target.destination} holds single images and {plan.job.source} is an index of "
                f"{len(root.children)}; choose one with --platform"
            )
            tp.error_kind = errors.INVALID_INPUT
            return tp
        root = tp.root = root.children[0]
    compression = target.compression
    if destination.fixed_layer_compression is not None:
        compression = "preserve"
    try:
        needs: dict[str, BlobNeed] = {}
        for node in root.walk():
            fmt = choose_format(
                node.manifest.media_type, target.format, destination.accepts_manifest, destination.preferred_format
            )
            if node.is_index:
                fmt = _index_format(node, fmt, tp.formats)
            elif compression != "preserve":
                fmt = _format_for_compression(node, fmt, compression, target, destination)
            written_type = _written_type(node, fmt)
            if not destination.accepts_manifest(written_type):
                raise StoreError(f"{target.destination} cannot store {written_type} manifests")
            if fmt is not None and not node.is_index and source is not None:
                load_config(source, node)
            tp.formats[node.manifest.digest] = fmt
            for need in blob_needs(node, fmt):
                if compression != "preserve":
                    need = _recompressed(need, compression)
                old = needs.get(need.descriptor.digest)
                if old is None or (need.need_diff_id and not old.need_diff_id):
                    needs[need.descriptor.digest] = need
        tp.blobs = list(needs.values())
        if target.name and compression == "preserve" and all(f is None for f in tp.formats.values()) \
                and (destination.current_digest(target.name) if current is UNKNOWN else current) \
                == root.manifest.digest:
            tp.up_to_date, tp.blobs = True, []
    except Exception as exc:
        tp.error, tp.error_kind = errors.describe(exc)
    return tp


def _recompressed(need: BlobNeed, compression: str) -> BlobNeed:
    """Mark a layer for rewriting when its compression differs from the one asked for."""
    current = mt.layer_compression(need.descriptor.media_type)
    if current == "unknown" or current == compression or need.descriptor.urls:
        return need
    return BlobNeed(need.descriptor, need_diff_id=need.need_diff_id, recompress=compression)


def _format_for_compression(node: ManifestNode, fmt, compression: str, target, destination: Destination):
    """Recompressed layers change the manifest: schema1 cannot be edited and Docker has no zstd."""
    if fmt is None and node.manifest.media_type in mt.SCHEMA1_TYPES:
        fmt = "oci" if compression == "zstd" else destination.preferred_format
    if compression == "zstd" and _written_type(node, fmt) != mt.OCI_MANIFEST:
        if target.format == "v2s2":
            raise StoreError("zstd layers need OCI manifests: use --format oci (or preserve)")
        fmt = "oci"
    return fmt


def _index_format(node: ManifestNode, fmt, formats: dict[str, str | None]):
    """A Docker manifest list cannot list OCI manifests: follow children converted to OCI."""
    if _written_type(node, fmt) != mt.DOCKER_LIST:
        return fmt
    for child in node.children:
        if _written_type(child, formats[child.manifest.digest]) in (mt.OCI_MANIFEST, mt.OCI_INDEX):
            return "oci"
    return fmt


def _written_type(node: ManifestNode, fmt: str | None) -> str:
    if fmt is None:
        return node.manifest.media_type
    if node.is_index:
        return mt.OCI_INDEX if fmt == "oci" else mt.DOCKER_LIST
    return mt.OCI_MANIFEST if fmt == "oci" else mt.DOCKER_SCHEMA2


def plan_targets(plan: ImagePlan, stores: "Stores") -> list[TargetPlan]:
    """Every target of a resolved image, planned; a destination that cannot be opened fails its own."""
    planned = []
    source = stores.source(plan.job.source_store) if plan.root is not None else None
    for index, target in enumerate(plan.job.targets):
        try:
            destination = stores.destination(target.store)
        except Exception as exc:
            message, kind = errors.describe(exc)
            planned.append(TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root,
                                      error=message, error_kind=kind))
            continue
        planned.append(plan_target(plan, index, destination, source))
    return planned


def blob_requests(tp: TargetPlan) -> list[BlobRequest]:
    """The blobs one planned target needs from its image's source."""
    if tp.error:
        return []
    job = tp.image.job
    return [
        BlobRequest(
            source_store=job.source_store,
            dest_store=tp.target.store,
            target_key=tp.key,
            descriptor=need.descriptor,
            need_diff_id=need.need_diff_id,
            recompress=need.recompress,
        )
        for need in tp.blobs
    ]


def delivery_key(request: BlobRequest) -> str:
    """Requests for one source blob share this key: one delivery reads it once for all of them.

    Keyed by the source's blob-sharing domain, so a blob that many repositories of one
    source registry hold is read once.
    """
    return f"{blob_domain(request.source_store)}|{request.descriptor.digest}|{request.recompress or ''}"
