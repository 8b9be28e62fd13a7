"""The Beam steps that resolve each job's manifest tree and plan it for every target.

Planning decides, per target, which manifests keep their bytes, which are converted,
and which blobs must be present before anything is published.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterator

import apache_beam as beam

from transforms import errors
from transforms.audit import now
from transforms.formats import mediatypes as mt
from transforms.plan import (
    BlobNeed,
    BlobRequest,
    CopyJob,
    ImagePlan,
    ManifestNode,
    TargetPlan,
    blob_needs,
    choose_format,
)
from transforms.storecache import StoreCache
from transforms.stores.base import Destination, StoreError
from transforms.stores.options import StoreOptions
from transforms.tree import resolve_tree

log = logging.getLogger(__name__)

BLOBS = "blobs"


def job_key(job: CopyJob) -> str:
    """A key unique to the job: the same image may be copied by several jobs of one run."""
    text = repr((job.source_store, job.source, job.image, job.digest, job.targets, job.platforms))
    return f"{job.source}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class ResolveImageFn(beam.DoFn):
    """CopyJob -> ImagePlan (with the manifest tree, or the error that stopped it)."""

    def __init__(self, options: StoreOptions | None = None) -> None:
        self._options = options

    def setup(self) -> None:
        self._stores = StoreCache(self._options)

    def process(self, job: CopyJob) -> Iterator[ImagePlan]:
        key = job_key(job)
        plan = ImagePlan(key=key, job=job, started_at=now())
        try:
            plan.root = resolve_tree(self._stores.source(job.source_store), job)
        except Exception as exc:
            plan.error = errors.one_line(exc)
            log.warning("%s: %s", job.source, plan.error)
        yield plan

    def teardown(self) -> None:
        self._stores.close()


def plan_target(plan: ImagePlan, index: int, destination: Destination) -> TargetPlan:
    target = plan.job.targets[index]
    tp = TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root, error=plan.error)
    if tp.error:
        return tp
    root = plan.root
    if root.is_index and not destination.accepts_manifest(root.manifest.media_type) and target.format == "preserve":
        # Stores that hold single images (docker-archive) take an index narrowed to one image.
        if len(root.children) != 1:
            tp.error = (
                f"{target.destination} holds single images and {plan.job.source} is an index of "
                f"{len(root.children)}; choose one with --platform"
            )
            return tp
        root = tp.root = root.children[0]
    try:
        needs: dict[str, BlobNeed] = {}
        for node in root.walk():
            fmt = choose_format(
                node.manifest.media_type, target.format, destination.accepts_manifest, destination.preferred_format
            )
            written_type = _written_type(node, fmt)
            if not destination.accepts_manifest(written_type):
                raise StoreError(f"{target.destination} cannot store a {written_type} manifest")
            tp.formats[node.manifest.digest] = fmt
            for need in blob_needs(node, fmt):
                old = needs.get(need.descriptor.digest)
                if old is None or (need.need_diff_id and not old.need_diff_id):
                    needs[need.descriptor.digest] = need
        tp.blobs = list(needs.values())
    except Exception as exc:
        tp.error = errors.one_line(exc)
    return tp


def _written_type(node: ManifestNode, fmt: str | None) -> str:
    if fmt is None:
        return node.manifest.media_type
    if node.is_index:
        return mt.OCI_INDEX if fmt == "oci" else mt.DOCKER_LIST
    return mt.OCI_MANIFEST if fmt == "oci" else mt.DOCKER_SCHEMA2


class PlanTargetsFn(beam.DoFn):
    """ImagePlan -> (key, TargetPlan) per target, and blob requests on the ``blobs`` output.

    Blob requests are keyed by source store and digest, so that one read of a source
    blob serves every destination and every image that needs it.
    """

    def __init__(self, options: StoreOptions | None = None) -> None:
        self._options = options

    def setup(self) -> None:
        self._stores = StoreCache(self._options)

    def process(self, plan: ImagePlan):
        for index, target in enumerate(plan.job.targets):
            try:
                destination = self._stores.destination(target.store)
            except Exception as exc:
                tp = TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root,
                                error=errors.one_line(exc))
            else:
                tp = plan_target(plan, index, destination)
            yield (tp.key, tp)
            if tp.error:
                continue
            for need in tp.blobs:
                yield beam.pvalue.TaggedOutput(
                    BLOBS,
                    (
                        f"{plan.job.source_store}|{need.descriptor.digest}",
                        BlobRequest(
                            source_store=plan.job.source_store,
                            dest_store=target.store,
                            target_key=tp.key,
                            descriptor=need.descriptor,
                            need_diff_id=need.need_diff_id,
                        ),
                    ),
                )

    def teardown(self) -> None:
        self._stores.close()
