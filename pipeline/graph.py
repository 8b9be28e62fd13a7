"""Assembling and running the Beam graph for ``copy``, ``sync`` and ``run``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from imagepush.transforms.engine.jobs import CopyJob
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """Everything one pipeline run does; built by the CLI or from a YAML config."""

    run_id: str
    audit_url: str
    jobs: list[CopyJob] = field(default_factory=list)
    #: (source, destinations, format, platforms) to expand by listing the source.
    syncs: list = field(default_factory=list)
    beam_args: list[str] = field(default_factory=list)
    options: StoreOptions = field(default_factory=StoreOptions)
    #: Images and blobs handled at once by each I/O step of each worker.
    parallel: int = 8
    #: Settle images already current at their destinations on the launcher, before Beam.
    preflight: bool = True
    #: A report of the rows settled before the pipeline (by the preflight), merged into the audit.
    settled_url: str | None = None


#: Batches per step on a distributed runner: enough to keep a fleet of workers busy.
DISTRIBUTED_SHARDS = 64


def shard_count(beam_args: list[str]) -> int:
    """How many batches each step's work is cut into: one per local process, more on a cluster.

    In one process a single batch puts all of a step's work on its thread pool at once;
    local worker processes each take a batch or two; a distributed runner spreads many.
    """
    from imagepush.pipeline.options import is_local, is_multiprocess

    if not is_local(beam_args):
        return DISTRIBUTED_SHARDS
    if is_multiprocess(beam_args):
        workers = 1
        for i, arg in enumerate(beam_args):
            if arg.startswith("--direct_num_workers="):
                workers = int(arg.split("=", 1)[1] or 1)
            elif arg == "--direct_num_workers" and i + 1 < len(beam_args):
                workers = int(beam_args[i + 1])
        return max(1, 2 * workers)
    return 1


def run(spec: RunSpec) -> None:
    """Build the pipeline and block until it finishes (the audit is then written)."""
    import apache_beam as beam
    from apache_beam.utils.shared import Shared

    from imagepush.pipeline.options import pipeline_options
    from imagepush.transforms.beam.migrate import ListSyncs, MigrateImages, WriteAudit

    shards = shard_count(spec.beam_args)
    shared = Shared()  # one set of opened stores per worker process, for every step
    with beam.Pipeline(options=pipeline_options(spec.beam_args)) as p:
        parts = []
        if spec.jobs:
            parts.append(p | "CopyJobs" >> beam.Create(spec.jobs))
        if spec.syncs:
            parts.append(p | "SyncSpecs" >> beam.Create(spec.syncs)
                         | "ListSources" >> ListSyncs(spec.run_id, spec.options, shared=shared))
        records = parts[0] if len(parts) == 1 else (parts | "AllJobs" >> beam.Flatten())
        _ = (
            records
            | "Migrate" >> MigrateImages(spec.run_id, spec.options, parallel=spec.parallel, shards=shards,
                                         shared=shared)
            | "WriteAudit" >> WriteAudit(spec.audit_url, shards=shards, settled_url=spec.settled_url)
        )
