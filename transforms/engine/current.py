"""Is an image already where it should be? The one rule, for the preflight and the plan alike.

Only a name can be current, and only an image whose manifests would be written as they
are (no conversion, no recompression) can be known current without reading its
layers: then the name pointing at the digest a verbatim copy would write means every
manifest and blob it reaches is there, since names are published last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagepush.transforms.engine.jobs import PRESERVE, CopyJob, ImagePlan, Target, TargetPlan
from imagepush.transforms.engine.plan import plan_target
from imagepush.transforms.engine.resolve import job_key, resolve_tree
from imagepush.transforms.records import now

if TYPE_CHECKING:
    from imagepush.transforms.engine.deliver import Stores


@dataclass
class CurrentCheck:
    """Which targets of a job are current (planned, nothing to write) and which are left."""

    current: list[TargetPlan] = field(default_factory=list)
    left: list[Target] = field(default_factory=list)


def check_current(job: CopyJob, stores: "Stores") -> CurrentCheck:
    """Ask each named destination what its name points at; read the source only if one might match."""
    named: list[str | None] = [
        stores.destination(t.store).current_digest(t.name) if t.name and t.compression == PRESERVE else None
        for t in job.targets
    ]
    if not any(named):
        return CurrentCheck(left=list(job.targets))
    plan = ImagePlan(key=job_key(job), job=job, started_at=now())
    plan.root = resolve_tree(stores.source(job.source_store), job, configs=False)
    check = CurrentCheck()
    for index, target in enumerate(job.targets):
        if named[index] is None or named[index] != plan.root.manifest.digest:
            check.left.append(target)
            continue
        tp = plan_target(plan, index, stores.destination(target.store), None, current=named[index])
        if tp.error or not tp.up_to_date:
            check.left.append(target)
        else:
            check.current.append(tp)
    return check
