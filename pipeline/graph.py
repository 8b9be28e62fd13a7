"""Assembling and running the Beam graph for ``copy``, ``sync`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagepush.transforms.engine.jobs import CopyJob, RecordSource, SyncSpec
from imagepush.transforms.stores.options import StoreOptions


@dataclass
class RunSpec:
    """Everything one pipeline run does; built by the CLI or from a YAML config."""

    run_id: str
    audit_url: str
    jobs: list[CopyJob] = field(default_factory=list)
    #: Sources to list; each listed image becomes a job on the workers.
    syncs: list[SyncSpec] = field(default_factory=list)
    #: Records files to read on the workers; each row becomes a job there.
    records: list[RecordSource] = field(default_factory=list)
    beam_args: list[str] = field(default_factory=list)
    options: StoreOptions = field(default_factory=StoreOptions)
    #: Images and blobs handled at once by each I/O step of each worker.
    parallel: int = 8
    #: Settle images already current at their destinations on the launcher, before Beam.
    preflight: bool = True
    #: A report of the rows settled before the pipeline (by the preflight), merged into the audit.
    settled_url: str | None = None


def run(spec: RunSpec) -> None:
    """Build the pipeline and block until it finishes (the audit is then written)."""
    import apache_beam as beam
    from apache_beam.utils.shared import Shared

    from imagepush.pipeline.options import pipeline_options, shard_count
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
        if spec.records:
            from imagepush.transforms.beam.records import ReadRecords

            parts.append(p | "ReadRecords" >> ReadRecords(spec.run_id, spec.records, shards=shards))
        records = parts[0] if len(parts) == 1 else (parts | "AllJobs" >> beam.Flatten())
        _ = (
            records
            | "Migrate" >> MigrateImages(spec.run_id, spec.options, parallel=spec.parallel, shards=shards,
                                         shared=shared)
            | "WriteAudit" >> WriteAudit(spec.audit_url, shards=shards, settled_url=spec.settled_url)
        )
