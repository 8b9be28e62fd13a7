"""Assembling and running the Beam graph for ``copy``, ``sync`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    #: Check that the jobs' images are at their destinations instead of copying them (``verify``).
    verify: bool = False
    #: How the copy runs: ``beam``, ``direct`` (in this process, without Beam), or ``auto``
    #: (direct for a small local run: see options.direct_allowed and engine/direct.py).
    engine: str = "auto"
    #: A folder on this machine where the workers append progress events for the launcher
    #: to tail (engine/progress.py); None when the workers cannot write there (a remote runner).
    progress_dir: str | None = None


def _build(p: Any, spec: RunSpec) -> None:
    """Apply the whole run to the pipeline ``p``: jobs and listings in, the audit out."""
    import apache_beam as beam
    from apache_beam.utils.shared import Shared

    from imagepush.pipeline.options import dask_partitions, shard_count
    from imagepush.transforms.beam.migrate import ListSyncs, MigrateImages, WriteAudit

    shards = shard_count(spec.beam_args)
    shared = Shared()  # one set of opened stores per worker process, for every step
    parts = []
    if spec.jobs:
        parts.append(p | "CopyJobs" >> beam.Create(spec.jobs))
    if spec.syncs:
        parts.append(p | "SyncSpecs" >> beam.Create(spec.syncs)
                     | "ListSources" >> ListSyncs(spec.run_id, spec.options, shared=shared,
                                                 progress=spec.progress_dir))
    if spec.records:
        from imagepush.transforms.beam.records import ReadRecords

        parts.append(p | "ReadRecords" >> ReadRecords(spec.run_id, spec.records, shards=shards))
    partitions = dask_partitions(spec.beam_args)
    if partitions:
        # On Dask, every GroupByKey keeps the partition count of its input, and a Create
        # of one listing is one partition: these markers (dropped by MigrateImages, which
        # takes jobs and audit rows only) give each step ``partitions`` partitions to
        # spread its shards over. See options.dask_partitions.
        parts.append(p | "DaskPartitions" >> beam.Create([_PartitionMarker(i) for i in range(partitions)]))
    records = parts[0] if len(parts) == 1 else (parts | "AllJobs" >> beam.Flatten())
    _ = (
        records
        | "Migrate" >> MigrateImages(spec.run_id, spec.options, parallel=spec.parallel, shards=shards,
                                     shared=shared, progress=spec.progress_dir)
        | "WriteAudit" >> WriteAudit(spec.audit_url, shards=shards, settled_url=spec.settled_url)
    )


@dataclass(frozen=True)
class _PartitionMarker:
    """An element that only occupies a Dask partition; no step takes it as work."""

    index: int


def run(spec: RunSpec) -> None:
    """Build the pipeline and block until it finishes (the audit is then written)."""
    import apache_beam as beam

    from imagepush.pipeline.options import pipeline_options

    with beam.Pipeline(options=pipeline_options(spec.beam_args)) as p:
        _build(p, spec)


def build_only(spec: RunSpec) -> None:
    """Build the whole job for the run's runner, and neither run nor submit it.

    Dataflow's runner honours ``--dry_run``: it translates the graph, stages nothing and
    returns before submitting, so the job it would launch is built exactly. Other runners
    ignore the option, so for them the graph is built and turned into its portable form
    (every DoFn pickled, every coder chosen), which is as far as a run gets offline.
    """
    import apache_beam as beam

    from imagepush.pipeline.options import is_dataflow, pipeline_options

    p = beam.Pipeline(options=pipeline_options(spec.beam_args))
    _build(p, spec)
    if is_dataflow(spec.beam_args):
        p.run().wait_until_finish()
    else:
        p.to_runner_api()
