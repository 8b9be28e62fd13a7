"""Is an image already where it should be? The one rule, for the preflight, the plan and ``verify``.

Only a name can be current, and only an image whose manifests would be written as they
are (no conversion, no recompression) can be known current without reading its
layers: then the name pointing at the digest a verbatim copy would write means every
manifest and blob it reaches is there, since names are published last.
``verify`` asks the same question of a finished migration, with the same plan: a
verbatim target is judged by that digest; a converted one, whose digest no rule
predicts, by its images' layers (config ``diff_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import orjson

from imagepush.transforms import errors
from imagepush.transforms.engine.jobs import PRESERVE, CopyJob, ImagePlan, ManifestNode, Target, TargetPlan
from imagepush.transforms.engine.plan import plan_target
from imagepush.transforms.engine.resolve import job_key, load_config, resolve_tree
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.schema1 import Schema1Manifest
from imagepush.transforms.stores.base import Source, StoreError
from imagepush.transforms.records import now

if TYPE_CHECKING:
    from imagepush.transforms.engine.deliver import Stores


@dataclass
class CurrentCheck:
    """Which targets of a job are current (planned, nothing to write), left alone on purpose, or left to copy."""

    current: list[TargetPlan] = field(default_factory=list)
    left: list[Target] = field(default_factory=list)
    #: Targets whose name points at another image, kept under ``--no-clobber``.
    skipped: list[TargetPlan] = field(default_factory=list)


def clobber_refused(target: Target, named: str | None, digest: str) -> str | None:
    """Why a target is left alone: its name points at another image and it may not be replaced.

    The one ``--no-clobber`` rule, asked by the preflight here and by the pipeline's plan,
    so that both leave the same names alone. A name that points at the very digest the
    copy would write is no clobbering: that target is current as usual.
    """
    if not target.no_clobber or named is None or named == digest:
        return None
    return f"{target.destination} already points at {named} (not {digest}); kept (--no-clobber)"


def check_current(job: CopyJob, stores: "Stores") -> CurrentCheck:
    """Ask each named destination what its name points at; read the source only if one might match."""
    named: list[str | None] = [
        stores.destination(t.store).current_digest(t.name)
        if t.name and (t.compression == PRESERVE or t.no_clobber) else None
        for t in job.targets
    ]
    if not any(named):
        return CurrentCheck(left=list(job.targets))
    plan = ImagePlan(key=job_key(job), job=job, started_at=now())
    plan.root = resolve_tree(stores.source(job.source_store), job, configs=False)
    check = CurrentCheck()
    for index, target in enumerate(job.targets):
        refused = clobber_refused(target, named[index], plan.root.manifest.digest)
        if refused is not None:
            tp = TargetPlan(key=f"{plan.key}#{index}", image=plan, target=target, root=plan.root, skipped=refused)
            check.skipped.append(tp)
            continue
        if named[index] is None or named[index] != plan.root.manifest.digest:
            check.left.append(target)
            continue
        tp = plan_target(plan, index, stores.destination(target.store), None, current=named[index])
        if tp.error or not tp.up_to_date:
            check.left.append(target)
        else:
            check.current.append(tp)
    return check


@dataclass
class Verdict:
    """What ``verify`` found for one target of a job: current, or failed (``missing``, ``mismatch``, …)."""

    target: Target
    #: The source root as it would be written there (an index narrowed for single-image stores).
    root: ManifestNode | None
    #: The digest the destination's name points at, when it points anywhere.
    found: str | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def current(self) -> bool:
        return self.error is None


def verify_job(job: CopyJob, stores: "Stores") -> list[Verdict]:
    """Judge every target of a job without writing anything; a source that cannot be read fails them all."""
    plan = ImagePlan(key=job_key(job), job=job, started_at=now())
    try:
        plan.root = resolve_tree(stores.source(job.source_store), job, configs=False)
    except Exception as exc:
        message, kind = errors.describe(exc)
        return [Verdict(t, None, error=f"source: {message}", error_kind=kind) for t in job.targets]
    return [verify_target(plan, index, stores) for index in range(len(job.targets))]


def verify_target(plan: ImagePlan, index: int, stores: "Stores") -> Verdict:
    """Is the image at this target, as a copy of this run's settings would have left it?

    The plan decides, as for a copy, whether the target is written verbatim. Then the
    name must point at the source digest: one manifest HEAD at a registry. Otherwise
    (a conversion or recompression) digests cannot match, and what must match is the
    image's content: the config ``diff_ids`` (uncompressed layer digests) of every image
    manifest, read through the destination's source side.
    """
    target = plan.job.targets[index]
    verdict = Verdict(target, plan.root)
    try:
        destination = stores.destination(target.store)
        named = destination.current_digest(target.name) if target.name else None
        tp = plan_target(plan, index, destination, None, current=named)
        verdict.root = tp.root
        if tp.error:
            verdict.error, verdict.error_kind = tp.error, tp.error_kind
            return verdict
        if _verbatim(tp):
            verdict.found = named or _named_digest(stores, target)
            if verdict.found is None:
                return _missing(verdict)
            if verdict.found != tp.root.manifest.digest:
                verdict.error = f"{target.destination} is {verdict.found}, the source is {tp.root.manifest.digest}"
                verdict.error_kind = errors.MISMATCH
            return verdict
        return _same_layers(verdict, plan, stores)
    except Exception as exc:
        verdict.error, verdict.error_kind = errors.describe(exc)
        return verdict


def _verbatim(tp: TargetPlan) -> bool:
    """Written as it is: no manifest converted, no layer recompressed (then digests must match)."""
    return all(f is None for f in tp.formats.values()) and not any(n.recompress for n in tp.blobs)


def _missing(verdict: Verdict) -> Verdict:
    verdict.error = f"{verdict.target.destination}: not found"
    verdict.error_kind = errors.MISSING
    return verdict


def _absent(exc: BaseException) -> bool:
    return errors.error_kind(exc) == errors.NOT_FOUND


def _named_digest(stores: "Stores", target: Target) -> str | None:
    """What the name points at, read through the store's source side (for stores without ``current_digest``)."""
    try:
        return stores.source(target.store).get_root(target.name).digest
    except Exception as exc:
        if _absent(exc):
            return None
        raise


def _same_layers(verdict: Verdict, plan: ImagePlan, stores: "Stores") -> Verdict:
    """A converted target: its images must carry the source's layers, by ``diff_ids``.

    Compared as a sorted list of per-image layer lists: platforms are not compared, since
    a store holding single images keeps an index's one child without its platform.
    """
    target = verdict.target
    try:
        dest_source = stores.source(target.store)
        written = resolve_tree(dest_source, replace(plan.job, image=target.name, digest=None), configs=True)
    except Exception as exc:
        if _absent(exc):
            return _missing(verdict)
        raise
    verdict.found = written.manifest.digest
    source = stores.source(plan.job.source_store)
    wanted = sorted(_layers(source, node) for node in verdict.root.walk() if not node.is_index)
    found = sorted(_layers(dest_source, node) for node in written.walk() if not node.is_index)
    if wanted != found:
        verdict.error = (f"{target.destination} ({verdict.found}) has other layers than the source "
                         f"{verdict.root.manifest.digest} (by config diff_ids)")
        verdict.error_kind = errors.MISMATCH
    return verdict


def _layers(source: Source, node: ManifestNode) -> tuple[str, ...]:
    """An image manifest's uncompressed layer digests, from its config.

    Schema1 has no config to read them from; its non-empty layers' blob digests stand
    in, which a conversion keeps unless it recompresses (then ``verify`` cannot tell
    without reading the layers, and says so).
    """
    parsed = node.parsed
    if isinstance(parsed, Schema1Manifest):
        return tuple(layer.blob_sum for layer in parsed.layers if not layer.throwaway)
    config = load_config(source, node)
    if config is None:
        raise StoreError(f"manifest {node.manifest.digest} has no image config to compare layers by")
    try:
        return tuple(str(d) for d in orjson.loads(config)["rootfs"]["diff_ids"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"config of {node.manifest.digest} has no rootfs.diff_ids") from exc
