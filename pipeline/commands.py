"""What each subcommand does, between argument parsing and output."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import orjson

from imagepush.pipeline import config
from imagepush.pipeline.exits import EXIT_FAILED, EXIT_OK, UsageError
from imagepush.pipeline.graph import RunSpec, run
from imagepush.pipeline.launch import checked_dry_run
from imagepush.pipeline.options import is_local, is_multiprocess
from imagepush.transforms import audit, records
from imagepush.transforms.errors import one_line
from imagepush.transforms.stores.refs import ImageReference, parse_reference
from imagepush.transforms.stores.transports import open_source
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import RegistryUnavailable


log = logging.getLogger(__name__)

#: Most jobs the launcher hands a distributed runner in its job graph (a few hundred
#: bytes each; Dataflow refuses job graphs over 10 MB).
MAX_LAUNCHER_JOBS = 10_000


def store_options(args: argparse.Namespace) -> StoreOptions:
    return config.from_flags(args).registries.store_options()


def _source(text: str, options: StoreOptions) -> ImageReference:
    ref = parse_reference(text)
    open_source(ref, options)  # raises a one-line StoreError for transports that cannot be read
    return ref


def _default_audit(run_id: str) -> str:
    return os.path.abspath(os.path.join("imagepush-audit", f"{run_id}.parquet"))


def _check_memory_urls(refs: list[str], beam_args: list[str]) -> None:
    if is_multiprocess(beam_args):
        for text in refs:
            if "memory://" in text:
                raise UsageError(
                    f"{text}: memory:// stores live in one process and cannot be shared with "
                    "--direct_running_mode multi_processing workers"
                )


def build_spec(args: argparse.Namespace, beam_args: list[str], run_id: str) -> RunSpec:
    if args.command == "run":
        return config.spec_from_file(args.config, run_id, _default_audit(run_id), beam_args)
    return config.spec_from_flags(args, run_id, _default_audit(run_id), beam_args)


def prepare_destinations(spec: RunSpec, cache: StoreCache) -> None:
    """Check and initialise every destination store before anything is copied.

    A destination that is wrong (not a layout, not a registry, …) stops the run with
    exit 2. One that cannot be reached right now does not: its images fail, each with
    an audit row, while the other destinations are written.
    """
    stores: dict[str, None] = {}
    for job in spec.jobs:
        for t in job.targets:
            stores.setdefault(t.store)
    for sync in spec.syncs:
        for out in sync.destinations:
            ref = parse_reference(out.ref)
            if not ref.per_repository:  # those stores are only known once the source is listed
                stores.setdefault(ref.store)
    for store in stores:
        try:
            cache.destination(store).prepare()
        except RegistryUnavailable as exc:
            log.warning("%s; its images will fail", one_line(exc))


def run_job(args: argparse.Namespace, beam_args: list[str], run_id: str) -> int:
    spec = build_spec(args, beam_args, run_id)
    _check_memory_urls(
        [j.source_store for j in spec.jobs] + [t.store for j in spec.jobs for t in j.targets]
        + [s.source for s in spec.syncs] + [o.ref for s in spec.syncs for o in s.destinations] + [spec.audit_url],
        spec.beam_args,
    )
    if checked_dry_run(spec):
        return EXIT_OK
    # One set of store objects on the launcher: a registry is pinged (or found
    # unreachable) once for the preparation and the preflight together.
    cache = StoreCache(spec.options)
    try:
        prepare_destinations(spec, cache)
        started = time.monotonic()
        if spec.preflight:
            from imagepush.transforms.engine.preflight import preflight

            # A distributed runner receives the jobs inside its job graph: past a bound, a
            # sync's listing is left to its workers instead.
            limit = None if is_local(spec.beam_args) else MAX_LAUNCHER_JOBS
            settled = preflight(spec.jobs, spec.syncs, spec.run_id, spec.options, spec.parallel, max_jobs=limit,
                                stores=cache)
    finally:
        cache.close()
    if spec.preflight:
        spec.jobs, spec.syncs = settled.jobs, settled.syncs
        if not settled.pipeline_needed:  # every image already current: no pipeline to start
            audit.write(settled.rows, spec.audit_url)
            return summarize(spec.audit_url, time.monotonic() - started)
        if settled.rows:
            spec.settled_url = f"{spec.audit_url}.settled.parquet"
            audit.write(settled.rows, spec.settled_url)
    try:
        run(spec)
    except Exception as exc:  # a bug or a runner failure, not a per-image error
        print(f"imagepush: the pipeline failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        if spec.settled_url:
            audit.remove(spec.settled_url)
    return summarize(spec.audit_url, time.monotonic() - started)


#: What the summary needs: timestamps would cost a timezone-aware datetime per row.
SUMMARY_COLUMNS = ["source", "destination", "status", "error", "role", "blobs_copied", "blobs_skipped", "bytes_copied"]


def summarize(audit_url: str, seconds: float) -> int:
    table = audit.read(audit_url, SUMMARY_COLUMNS).to_pylist()
    images = [r for r in table if r["role"] != "child"]
    failed = [r for r in images if r["status"] != records.OK]
    copied = sum(r["blobs_copied"] for r in table)
    skipped = sum(r["blobs_skipped"] for r in table)
    nbytes = sum(r["bytes_copied"] for r in table)
    for r in failed:
        print(f"imagepush: FAILED {r['source']} -> {r['destination']}: {r['error']}", file=sys.stderr)
    print(
        f"{len(images) - len(failed)} images ok, {len(failed)} failed; "
        f"{copied} blobs copied, {skipped} skipped, {_size(nbytes)} in {seconds:.1f}s; audit: {audit_url}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB")
    scale = 0
    while n >= 1000 and scale < len(units) - 1:
        n /= 1000
        scale += 1
    return f"{n:.0f} B" if scale == 0 else f"{n:.1f} {units[scale]}"


def ls(args: argparse.Namespace) -> int:
    options = store_options(args)
    ref = _source(args.source, options)
    source = open_source(ref.named(None), options)
    out = sys.stdout.buffer
    for entry in source.list_images():
        record = {
            "ref": str(ref.listed(entry)),
            "repository": entry.repository,
            "tag": entry.tag,
            "digest": entry.digest,
            "media_type": entry.media_type,
        }
        out.write(orjson.dumps(record) + b"\n")
    out.flush()
    return EXIT_OK


def inspect(args: argparse.Namespace) -> int:
    from imagepush.transforms.engine.inspection import inspect_image

    settings = config.from_flags(args)
    options = settings.registries.store_options()
    ref = _source(args.source, options)
    data = inspect_image(ref, config=args.config, as_format=args.as_format, platforms=tuple(settings.defaults.platforms),
                         options=options)
    sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
    sys.stdout.flush()
    return EXIT_OK


def show_audit(args: argparse.Namespace) -> int:
    try:
        rows = audit.read(args.url).to_pylist()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read audit {args.url}: {exc}") from None
    out = sys.stdout
    if args.json:
        for r in rows:
            out.write(orjson.dumps(r, default=str).decode() + "\n")
        return EXIT_OK
    out.write(f"{'status':6} {'role':5} {'copied':>6} {'skip':>4} {'bytes':>9}  source -> destination  [written digest, type]\n")
    for r in rows:
        digest = (r["destination_digest"] or "-")[:19]
        kind = (r["media_type"] or "-").rsplit("/", 1)[-1]
        line = (f"{r['status']:6} {r['role']:5} {r['blobs_copied']:>6} {r['blobs_skipped']:>4} "
                f"{_size(r['bytes_copied']):>9}  {r['source']} -> {r['destination']}  [{digest}, {kind}]")
        if r["error"]:
            line += f"  error: {r['error']}"
        out.write(line + "\n")
    return EXIT_OK
