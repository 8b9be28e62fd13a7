"""Assembling and running the Beam graph for ``copy``, ``sync`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagepush.transforms.plan import CopyJob, SyncSpec
from imagepush.transforms.stores.options import StoreOptions


@dataclass
class RunSpec:
    """Everything one pipeline run does; built by the CLI or from a YAML config."""

    run_id: str
    audit_url: str
    jobs: list[CopyJob] = field(default_factory=list)
    #: Sources to list; each listed image becomes a job on the workers.
    syncs: list[SyncSpec] = field(default_factory=list)
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

    from imagepush.pipeline.options import pipeline_options
    from imagepush.transforms.migrate import ExpandSyncFn, MigrateImages

    with beam.Pipeline(options=pipeline_options(spec.beam_args)) as p:
        parts = []
        extra = []
        if spec.jobs:
            parts.append(p | "CopyJobs" >> beam.Create(spec.jobs))
        if spec.syncs:
            expanded = (
                p
                | "SyncSpecs" >> beam.Create(spec.syncs)
                | "ListSources" >> beam.ParDo(ExpandSyncFn(spec.run_id, spec.options)).with_outputs(ExpandSyncFn.FAILED, main="jobs")
            )
            parts.append(expanded.jobs)
            extra.append(expanded[ExpandSyncFn.FAILED])
        jobs = parts[0] if len(parts) == 1 else (parts | "AllJobs" >> beam.Flatten())
        extra_rows = None
        if extra:
            extra_rows = extra[0] if len(extra) == 1 else (extra | "ExtraRows" >> beam.Flatten())
        _ = jobs | "Migrate" >> MigrateImages(
            spec.run_id, spec.audit_url, spec.options, extra_rows, spec.parallel, spec.settled_url
        )
