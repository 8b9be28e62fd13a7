"""What the launcher checks before a run starts anywhere, and the dry run.

A *distributed* runner (Dask, Dataflow, any runner not in ``options.LOCAL_RUNNERS``) has
workers on other machines, which see neither the launcher's disk nor its process
memory. A local path or a ``memory://`` store given to such a run would be read and
written on each worker's own disk, or in each worker's own memory: images silently
scattered, an audit written where nobody looks, or pieces of the audit on several
machines. So they are refused here, in one line and before anything is prepared,
listed or written; the audit, merged from parts written by the workers, must be on an
object store they all reach.

Dataflow's own option checks run here too, offline, so that their reasons are shown
whole instead of after a pipeline was set up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from imagepush.pipeline.exits import UsageError
from imagepush.pipeline.graph import RunSpec, build_only
from imagepush.pipeline.options import (
    is_dataflow,
    is_dry_run,
    is_local,
    pipeline_options,
    runner_name,
)

#: fsspec protocols of object stores: one namespace that every worker reaches.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
#: fsspec protocols whose data lives on one machine or in one process.
MACHINE_LOCAL = frozenset({"file", "local", "memory", "tmp"})


def protocol(url: str) -> str:
    """The fsspec protocol of a URL or path (``file`` for a plain path), without importing fsspec."""
    head, sep, _ = url.partition("://")
    if not sep or "/" in head or ":" in head:
        return "file"
    return head.split("::")[-1].lower()


def _store_locations(spec: RunSpec) -> Iterator[tuple[str, str]]:
    """(reference as the user wrote it, fsspec location) of every file-backed store of the run."""
    from imagepush.transforms.stores.refs import parse_reference

    texts = [j.source_store for j in spec.jobs] + [t.store for j in spec.jobs for t in j.targets]
    texts += [s.source for s in spec.syncs] + [o.ref for s in spec.syncs for o in s.destinations]
    texts += [o.ref for r in spec.records for o in r.outputs]
    for text in dict.fromkeys(texts):
        ref = parse_reference(text)
        if ref.transport != "docker":
            yield text, ref.location


def refuse_unshared_stores(spec: RunSpec) -> None:
    """On a distributed runner: every store shared by all workers, the audit on an object store."""
    if is_local(spec.beam_args):
        return
    runner = runner_name(spec.beam_args).rsplit(".", 1)[-1]
    for text, location in _store_locations(spec):
        if protocol(location) in MACHINE_LOCAL:
            raise UsageError(f"{text}: {runner} workers run on other machines and cannot reach a "
                             f"{_kind(location)}; use an object store (s3://, gs://, ...) or a registry")
    for source in spec.records:
        if protocol(source.url) in MACHINE_LOCAL:
            raise UsageError(f"{source.url}: {runner} workers read the records and cannot reach a "
                             f"{_kind(source.url)}; put the records on an object store (s3://, gs://, ...)")
    if protocol(spec.audit_url) not in OBJECT_STORES:
        raise UsageError(f"--audit {spec.audit_url}: on {runner} the workers write the audit, so it must be on "
                         "an object store they all reach (s3://, gs://, ...)")


def _kind(location: str) -> str:
    return "memory:// store (it lives in one process)" if protocol(location) == "memory" else "local path"


def check_dataflow_options(spec: RunSpec) -> None:
    """Dataflow's own option checks, offline, every reason in one message.

    Beam runs them again when the pipeline is made (and, except in a dry run, asks Cloud
    Storage about the buckets' soft-delete policy, as a launch would); here a problem
    stops the run before anything is prepared, with all its reasons. Without ``--temp_location`` it would first try for minutes to create a
    default bucket on Cloud Storage, so that option is asked for before anything else.
    """
    if not is_dataflow(spec.beam_args):
        return
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    options = pipeline_options(spec.beam_args)
    cloud = options.view_as(GoogleCloudOptions)
    if not (cloud.temp_location or "").startswith("gs://"):
        raise UsageError("Dataflow needs --temp_location gs://BUCKET/PATH (and takes --staging_location "
                         "gs://BUCKET/PATH, or uses the temp location)")
    if not cloud.staging_location:
        cloud.staging_location = cloud.temp_location  # what Beam would do, without asking Cloud Storage
    errors = PipelineOptionsValidator(options, create_runner(runner_name(spec.beam_args))).validate()
    if errors:
        reasons = "; ".join(" ".join(str(e).split()) for e in errors)
        raise UsageError(f"Dataflow refuses these options: {reasons}")


def checked_dry_run(spec: RunSpec) -> bool:
    """The launcher's checks, then for ``--dry_run`` the whole job built (True) and nothing else.

    A dry run reads, writes and submits nothing: no destination is prepared, no
    preflight lists anything, no audit is written.
    """
    refuse_unshared_stores(spec)
    check_dataflow_options(spec)
    if not is_dry_run(spec.beam_args):
        return False
    build_only(spec)
    runner = runner_name(spec.beam_args).rsplit(".", 1)[-1]
    print(f"dry run: the {runner} job of {len(spec.jobs)} copy jobs and {len(spec.syncs)} syncs was built; "
          "nothing was read, written or submitted")
    sys.stdout.flush()
    return True
