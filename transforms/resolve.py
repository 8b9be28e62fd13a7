"""The Beam steps that resolve each job's manifest tree and plan it for every target.

Planning decides, per target, which manifests keep their bytes, which are converted,
and which blobs must be present before anything is published.
"""

from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam

from imagepush.transforms import errors
from imagepush.transforms.records import now
from imagepush.transforms.concurrency import StoreDoFn
from imagepush.transforms.plan import BlobRequest, CopyJob, ImagePlan, TargetPlan
from imagepush.transforms.stores.refs import blob_domain
from imagepush.transforms.targets import job_key, plan_target
from imagepush.transforms.tree import resolve_tree

__all__ = ["BLOBS", "PlanTargetsFn", "ResolveImageFn", "job_key", "plan_target"]

log = logging.getLogger(__name__)

BLOBS = "blobs"


class ResolveImageFn(StoreDoFn):
    """CopyJob -> ImagePlan (with the manifest tree, or the error that stopped it)."""

    pool_name = "resolve"

    def work(self, job: CopyJob) -> Iterator[ImagePlan]:
        key = job_key(job)
        plan = ImagePlan(key=key, job=job, started_at=now())
        try:
            plan.root = resolve_tree(self._stores.source(job.source_store), job, configs=False)
        except Exception as exc:
            plan.error = errors.one_line(exc)
            # Reported once, with its destinations, when the image is finalized.
            log.debug("%s: %s", job.source, plan.error)
        yield plan


class PlanTargetsFn(StoreDoFn):
    """ImagePlan -> (key, TargetPlan) per target, and blob requests on the ``blobs`` output.

    Blob requests are keyed by source store and digest, so that one read of a source
    blob serves every destination and every image that needs it.
    """

    pool_name = "plan"

    def work(self, plan: ImagePlan):
        for index, target in enumerate(plan.job.targets):
            try:
                destination = self._stores.destination(target.store)
            except Exception as exc:
                tp = TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root,
                                error=errors.one_line(exc))
            else:
                source = self._stores.source(plan.job.source_store) if plan.root is not None else None
                tp = plan_target(plan, index, destination, source)
            yield (tp.key, tp)
            if tp.error:
                continue
            for need in tp.blobs:
                yield beam.pvalue.TaggedOutput(
                    BLOBS,
                    (
                        f"{blob_domain(plan.job.source_store)}|{need.descriptor.digest}|{need.recompress or ''}",
                        BlobRequest(
                            source_store=plan.job.source_store,
                            dest_store=target.store,
                            target_key=tp.key,
                            descriptor=need.descriptor,
                            need_diff_id=need.need_diff_id,
                            recompress=need.recompress,
                        ),
                    ),
                )
