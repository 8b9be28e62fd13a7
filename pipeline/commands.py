"""What each subcommand does, between argument parsing and output."""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
import traceback
from typing import TYPE_CHECKING

import orjson

from imagepush.pipeline import config
from imagepush.pipeline.exits import EXIT_FAILED, EXIT_OK, UsageError
from imagepush.pipeline.graph import RunSpec, run
from imagepush.pipeline.launch import checked_dry_run
from imagepush.pipeline.options import direct_allowed, is_local, is_multiprocess, runner_name, shares_this_machine
from imagepush.pipeline.progress import DEFAULT_INTERVAL, ProgressDisplay, Tally, progress_folder, summary_table, workers_stderr_to
from imagepush.pipeline.platforms import system_platform
from imagepush.pipeline.sides import typed_credentials, with_sides
from imagepush.transforms import audit, records
from imagepush.transforms.engine.progress import NO_PROGRESS, Outcome, ProgressEvent
from imagepush.transforms.errors import one_line
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.stores.refs import ImageReference, ReferenceError, parse_reference
from imagepush.transforms.stores.transports import open_source
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import RegistryMisconfigured, RegistryUnavailable

if TYPE_CHECKING:
    from imagepush.transforms.engine.planning import StoreTotals

log = logging.getLogger(__name__)

#: Most jobs the launcher hands a distributed runner in its job graph (a few hundred
#: bytes each; Dataflow refuses job graphs over 10 MB).
MAX_LAUNCHER_JOBS = 10_000


def store_options(args: argparse.Namespace) -> StoreOptions:
    return with_sides(args, config.from_flags(args).registries.store_options())


def _source(text: str, options: StoreOptions) -> ImageReference:
    ref = parse_reference(text)
    open_source(ref, options)  # raises a one-line StoreError for transports that cannot be read
    return ref


def _default_audit(run_id: str) -> str:
    """The per-user state folder (XDG base directories), so that no run litters the folder it started in.

    Only local runners use it: a distributed run needs ``--audit`` on an object store
    its workers can write to (launch.py says so).
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.abspath(os.path.join(state, "imagepush", "audit", f"{run_id}.parquet"))


def _platforms_of_multi_arch(args: argparse.Namespace) -> None:
    """skopeo's ``--all`` / ``--multi-arch`` as our ``--platform`` (every platform unless told otherwise)."""
    multi_arch = getattr(args, "multi_arch", None)
    if multi_arch == "index-only":
        raise UsageError("--multi-arch index-only is not supported: an index is copied with the images it names "
                         "(all, the default) or narrowed to some (system, --platform)")
    chooses = "--multi-arch system" if multi_arch == "system" else "--all" if getattr(args, "all", False) else None
    if chooses and args.platform:
        raise UsageError(f"{chooses} and --platform both choose platforms: give one")
    if getattr(args, "all", False) and multi_arch == "system":
        raise UsageError("--all and --multi-arch system disagree: give one")
    if multi_arch == "system":
        args.platform = [system_platform()]


def _tagless_destinations(args: argparse.Namespace) -> None:
    """Say once per destination that a tagless registry reference is written as ``latest``."""
    from imagepush.transforms.engine.naming import DEFAULT_TAG, untagged_registry

    if args.command != "copy" or getattr(args, "records", None) is not None:
        return
    for text in args.destinations:
        ref = parse_reference(text)
        if untagged_registry(ref):
            log.info("%s names no tag: writing it as %s", text, ref.named(DEFAULT_TAG))


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
        spec = config.spec_from_file(args.config, run_id, _default_audit(run_id), beam_args)
    else:
        _platforms_of_multi_arch(args)
        spec = config.spec_from_flags(args, run_id, _default_audit(run_id), beam_args)
        spec.options = with_sides(args, spec.options)
    if args.command != "run" and typed_credentials(args) and not is_local(spec.beam_args):
        raise UsageError("--src-creds/--dest-creds work on local runners only: a distributed runner would carry "
                         "them to its workers in the job; give its workers an auth file (--authfile)")
    spec.engine = getattr(args, "engine", None) or spec.engine
    return spec


def _destination_count(spec: RunSpec) -> int:
    """The destinations the user named (a sync's prefix counts once, however many repositories it fills)."""
    named = {t.destination for job in spec.jobs for t in job.targets}
    named |= {out.ref for sync in spec.syncs for out in sync.destinations}
    named |= {out.ref for source in spec.records for out in source.outputs}
    return len(named)


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
    for source in spec.records:  # a row's own destination is only known once the workers read it
        for out in source.outputs:
            ref = parse_reference(out.ref)
            if not ref.per_repository:
                stores.setdefault(ref.store)
    def prepare(store: str) -> BaseException | None:
        try:
            cache.destination(store).prepare()
        except (RegistryUnavailable, RegistryMisconfigured) as exc:
            return exc
        try:  # what an earlier run left when it stopped half way; never a reason to fail
            cache.destination(store).clean_leftovers()
        except Exception:
            log.debug("%s: could not clean up leftovers", store, exc_info=True)
        return None

    # Each store is a round trip or more (a registry's ping, a layout's index): all at once.
    for _, exc in bounded_map(prepare, list(stores), workers=min(len(stores), 8) or 1, ordered=True):
        if isinstance(exc, RegistryMisconfigured):  # no image could be written there: stop before starting
            raise UsageError(one_line(exc)) from None
        if exc is not None:
            log.warning("%s; its images will fail", one_line(exc))


def _direct_wanted(spec: RunSpec) -> bool:
    """Whether the run may go without Beam, before knowing how many images it has.

    ``--engine direct`` always does (refused with records files, which Beam's workers
    read, and with Beam options, which would mean nothing); ``auto`` only without Beam
    options and records files, whatever the number of images: the direct executor
    streams them in a bounded window and spends less CPU and memory than Beam's
    in-process runner on one machine.
    """
    if spec.engine == "direct":
        if spec.records:
            raise UsageError("--engine direct: records files are read by Beam's workers; use --engine beam or auto")
        if spec.beam_args:
            raise UsageError(f"--engine direct runs without Beam: {spec.beam_args[0]} is a Beam option")
        return True
    return spec.engine == "auto" and not spec.records and direct_allowed(spec.beam_args)


def run_job(args: argparse.Namespace, beam_args: list[str], run_id: str) -> int:
    if getattr(args, "dry_run", False):  # ours, --dry-run; Beam's --dry_run is checked_dry_run below
        return dry_run(args, beam_args, run_id)
    spec = build_spec(args, beam_args, run_id)
    if spec.verify:  # a run file of verify jobs
        return verify_spec(spec, quiet=args.quiet)
    if not args.quiet:
        _tagless_destinations(args)
    destinations = _destination_count(spec)
    _check_memory_urls(
        [j.source_store for j in spec.jobs] + [t.store for j in spec.jobs for t in j.targets]
        + [s.source for s in spec.syncs] + [o.ref for s in spec.syncs for o in s.destinations] + [spec.audit_url],
        spec.beam_args,
    )
    if checked_dry_run(spec):
        return EXIT_OK
    check_records(spec)
    direct = _direct_wanted(spec)
    if direct:
        audit.import_in_background()  # the report's writer, ready by the time the copy is done
    settled_rows: list[records.AuditRow] = []
    # One set of store objects on the launcher: a registry is pinged (or found
    # unreachable) once for the preparation, the preflight and a direct run together.
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
            spec.jobs, spec.syncs, settled_rows = settled.jobs, settled.syncs, settled.rows
            if not settled.pipeline_needed and not spec.records:  # every image already current: nothing to start
                audit.write(settled_rows, spec.audit_url)
                return _finish(args, spec.audit_url, time.monotonic() - started, destinations)
        tally = _tally(spec, settled_rows, destinations)
        if direct:
            from imagepush.transforms.engine.direct import migrate

            display = _display(args, tally)
            try:
                rows = migrate(spec.jobs, spec.syncs, spec.run_id, cache, parallel=spec.parallel,
                               reporter=display or NO_PROGRESS)
            except Exception as exc:  # a bug, not a per-image error (those are rows)
                return _failed(exc, args.debug)
            finally:
                if display:
                    display.close()
            audit.write(settled_rows + rows, spec.audit_url)
            return _finish(args, spec.audit_url, time.monotonic() - started, destinations)
    finally:
        cache.close()
    if settled_rows:
        spec.settled_url = f"{spec.audit_url}.settled.parquet"
        audit.write(settled_rows, spec.settled_url)
    try:
        _run_beam(args, spec, tally)
    except Exception as exc:  # a bug or a runner failure, not a per-image error
        return _failed(exc, args.debug)
    finally:
        if spec.settled_url:
            audit.remove(spec.settled_url)
    return _finish(args, spec.audit_url, time.monotonic() - started, destinations)


def _tally(spec: RunSpec, settled: list[records.AuditRow], destinations: int) -> Tally:
    """The display's starting point: the images the launcher knows of, those settled by the preflight done."""
    tally = Tally(total=len({j.source for j in spec.jobs} | {r.source for r in settled if r.role != "child"}),
                  listings=len(spec.syncs), records=bool(spec.records), destinations=max(1, destinations))
    tally.add(ProgressEvent(outcomes=[Outcome(r.source, r.destination, _store_of(r.destination), r.status)
                                      for r in settled if r.role != "child"]))
    return tally


def _display(args: argparse.Namespace, tally: Tally, folder: str | None = None) -> ProgressDisplay | None:
    """The run's progress display, unless ``-q``."""
    if args.quiet:
        return None
    return ProgressDisplay(tally, folder=folder, interval=getattr(args, "progress_interval", DEFAULT_INTERVAL),
                           failures=bool(args.verbose or args.debug))


def _run_beam(args: argparse.Namespace, spec: RunSpec, tally: Tally) -> None:
    """Run the Beam graph with its progress shown: the workers' events tailed from a run-scoped folder.

    Only runners whose workers share this machine's files can write the folder (local
    ones and a Dask cluster on loopback); on any other the display shows what the
    launcher settled, and Beam's metrics (``imagepush`` namespace, in the runner's job
    page) are the live figures. ``multi_processing`` workers log their start-up to the
    stderr they inherit: unless ``--debug``, that goes to a file in the folder.
    """
    if not shares_this_machine(spec.beam_args):
        if not args.quiet:
            log.info("progress of a %s run: see its job page (Beam metrics, namespace imagepush)",
                     runner_name(spec.beam_args))
        run(spec)
        return
    with progress_folder() as folder:
        spec.progress_dir = folder
        quiet_workers = is_multiprocess(spec.beam_args) and not args.debug
        with workers_stderr_to(os.path.join(folder, "workers.log")) if quiet_workers else contextlib.nullcontext():
            display = _display(args, tally, folder)
            try:
                run(spec)
            finally:
                if display:
                    display.close()


def _finish(args: argparse.Namespace, audit_url: str, seconds: float, destinations: int) -> int:
    code = summarize(audit_url, seconds, destinations, notes=not args.quiet,
                     table=not args.quiet and sys.stdout.isatty())
    if getattr(args, "digestfile", None):
        one_image = args.command == "copy" and getattr(args, "records", None) is None and destinations == 1
        write_digestfile(args.digestfile, audit_url, one_image=one_image)
    return code


def write_digestfile(path: str, audit_url: str, *, one_image: bool) -> None:
    """``--digestfile``: the manifest digest at each destination the run wrote (or found current).

    ``copy`` of one image to one destination writes the digest alone, without a newline,
    as skopeo does (and no file when the copy failed or was skipped); otherwise one
    ``REFERENCE DIGEST`` line per image and destination. Failed and skipped images have
    no line: nothing of theirs was written.
    """
    table = audit.read(audit_url, ["destination", "destination_digest", "status", "role"]).to_pylist()
    done = [r for r in _top_level(table)
            if records.status_of(r["status"]) in (records.COPIED, records.CURRENT) and r["destination_digest"]]
    if one_image:
        if not done:  # as skopeo: no digest file for a copy that wrote nothing
            return
        text = done[0]["destination_digest"]
    else:
        text = "".join(f"{r['destination']} {r['destination_digest']}\n" for r in done)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"--digestfile {path}: {exc.strerror}") from None


def _failed(exc: Exception, debug: bool = False) -> int:
    """A bug or a runner failure, not a per-image error: one line (and with ``--debug`` its traceback)."""
    if debug:
        traceback.print_exc()
    print(f"imagepush: the pipeline failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
          file=sys.stderr)
    return EXIT_FAILED


#: What the summary needs: timestamps would cost a timezone-aware datetime per row.
SUMMARY_COLUMNS = ["source", "destination", "status", "error", "role", "blobs_copied", "blobs_mounted",
                   "blobs_skipped", "bytes_copied", "retries", "format", "media_type", "destination_digest",
                   "source_digest", "converted_from"]


def _top_level(rows: list[dict]) -> list[dict]:
    """The (image, destination) rows: an index's children would count its image again."""
    return [r for r in rows if r["role"] != "child"]


def _image_statuses(rows: list[dict]) -> collections.Counter[str]:
    """Images by status, each image once whatever its number of destinations.

    An image failed if it failed anywhere; otherwise it was copied if it was written
    anywhere, skipped if it was left alone anywhere, and current if it was current at
    every destination.
    """
    rank = {records.FAILED: 0, records.COPIED: 1, records.SKIPPED: 2, records.CURRENT: 3}
    by_image: dict[str, str] = {}
    for r in _top_level(rows):
        status = records.status_of(r["status"])
        old = by_image.get(r["source"])
        if old is None or rank.get(status, 0) < rank.get(old, 0):
            by_image[r["source"]] = status
    return collections.Counter(by_image.values())


def _counted(statuses: collections.Counter[str]) -> str:
    """``3 copied, 1 current, 1 failed``: the statuses that occur, in a fixed order."""
    order = list(records.STATUSES) + sorted(set(statuses) - set(records.STATUSES))
    return ", ".join(f"{statuses[s]} {s}" for s in order if statuses[s]) or "none"


#: A failure of a whole registry host, not of one image (the transport's wording).
UNREACHABLE_HOST = re.compile(r"cannot reach (?P<host>[^\s()]+)")


def _names_host(ref: str, host: str) -> bool:
    """Whether an image reference (``docker://HOST/…`` or ``HOST/…``) is on the registry ``host``."""
    return ref.startswith(host + "/") or f"//{host}/" in ref


def _failure_lines(failed: list[dict]) -> list[str]:
    """The FAILED lines for the console: one per failure, except that repeated ones are grouped.

    Images that failed because a registry host could not be reached make one line per
    host ("destination HOST unreachable: 37 images failed"), and images that failed with
    the very same message (a misconfigured host says it the same way each time) one line
    for that message: a registry that is down must not bury the run under one line per
    image. The audit keeps a row per image either way.
    """
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in failed:
        error = r["error"] or ""
        found = UNREACHABLE_HOST.search(error)
        if found:
            host = found["host"]
            side = ("destination" if _names_host(r["destination"], host)
                    else "source" if _names_host(r["source"], host) else "registry")
            key: tuple[str, ...] = ("host", side, host)
        else:
            key = ("same", error)
        groups.setdefault(key, []).append(r)
    lines = []
    for key, rows in groups.items():
        images = len({r["source"] for r in rows})
        first = rows[0]
        if images == 1:
            lines.extend(f"imagepush: FAILED {r['source']} -> {r['destination']}: {r['error']}" for r in rows)
        elif key[0] == "host":
            lines.append(f"imagepush: FAILED {key[1]} {key[2]} unreachable: {images} images failed "
                         f"(first: {first['source']} -> {first['destination']}: {first['error']})")
        else:
            lines.append(f"imagepush: FAILED {images} images: {first['error']}")
    return lines


def _store_of(destination: str) -> str:
    """The store an audit row's destination is in (the reference without its image name)."""
    try:
        return parse_reference(destination).store
    except ReferenceError:
        return destination


def _conversion_notes(rows: list[dict]) -> list[str]:
    """One line per image that ``--format preserve`` could not keep as it was (its digest changed)."""
    return [
        f"imagepush: note: {r['source']} -> {r['destination']}: written as {r['media_type']} "
        f"({r['destination_digest']}): the destination cannot hold {r['converted_from']} "
        f"({r['source_digest']}), so its digest changed"
        for r in _top_level(rows)
        if r["converted_from"] and r["format"] == "preserve" and records.status_of(r["status"]) == records.COPIED
    ]


def summarize(audit_url: str, seconds: float, destinations: int | None = None, *, notes: bool = True,
              table: bool = False) -> int:
    """One line on stdout for the run, and FAILED lines on stderr (grouped, see :func:`_failure_lines`).

    The line counts images (each once), the destinations they went to, and the
    outcomes of every image at every destination: ``3 images to 2 destinations: 6 copied``.
    ``table``: first a table of the outcomes per destination store (on a terminal).
    """
    rows = audit.read(audit_url, SUMMARY_COLUMNS).to_pylist()
    failed = [r for r in _top_level(rows) if records.status_of(r["status"]) == records.FAILED]
    images = len({r["source"] for r in _top_level(rows)})
    pairs = collections.Counter(records.status_of(r["status"]) for r in _top_level(rows))
    if not destinations:
        destinations = len({_store_of(r["destination"]) for r in _top_level(rows)})
    copied = sum(r["blobs_copied"] for r in rows)
    mounted = sum(r["blobs_mounted"] or 0 for r in rows)
    skipped = sum(r["blobs_skipped"] for r in rows)
    nbytes = sum(r["bytes_copied"] for r in rows)
    retries = sum(r.get("retries") or 0 for r in rows)
    if notes:
        for line in _conversion_notes(rows):
            print(line, file=sys.stderr)
    for line in _failure_lines(failed):
        print(line, file=sys.stderr)
    if table:
        by_store: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        stored: collections.Counter[str] = collections.Counter()
        for r in _top_level(rows):
            by_store[_store_of(r["destination"])][records.status_of(r["status"])] += 1
        for r in rows:
            stored[_store_of(r["destination"])] += r["bytes_copied"] or 0
        summary_table(by_store, stored, sys.stdout)
    print(
        f"{images} image{'' if images == 1 else 's'} to {destinations} "
        f"destination{'' if destinations == 1 else 's'}: {_counted(pairs)}; "
        f"{copied} blobs copied, {mounted} mounted, {skipped} skipped, {_size(nbytes)} in {seconds:.1f}s, "
        f"{retries} retr{'y' if retries == 1 else 'ies'}; "
        f"audit: {audit_url}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB")
    scale = 0
    while n >= 1000 and scale < len(units) - 1:
        n /= 1000
        scale += 1
    return f"{n:.0f} B" if scale == 0 else f"{n:.1f} {units[scale]}"


def check_records(spec: RunSpec) -> None:
    """Refuse, before anything is written, records that no worker could read.

    Cheap on purpose: the URL is matched and the first file's header (or Parquet
    schema) opened, never a file read through; the rows are the workers' to read.
    """
    if not spec.records:
        return
    from imagepush.transforms.engine.records_io import RecordsError, check_source

    _check_memory_urls([s.url for s in spec.records] + [o.ref for s in spec.records for o in s.outputs],
                       spec.beam_args)
    for source in spec.records:
        try:
            check_source(source.url)
        except RecordsError as exc:
            raise UsageError(str(exc)) from None


def write_listing(args: argparse.Namespace) -> int:
    """``ls SRC --output URL``: the listing as image records, in the format the URL's name says.

    Streamed: the file is written a batch at a time while the source is listed, and
    appears whole at the end.
    """
    from imagepush.transforms.engine.records_io import RecordsError, listing_record, record_format, write_records

    try:
        record_format(args.output)
    except RecordsError as exc:
        raise UsageError(f"--output: {exc}") from None
    options = store_options(args)
    ref = _source(args.source, options)
    source = open_source(ref.named(None), options)
    count = write_records((listing_record(ref, entry) for entry in source.list_images()), args.output)
    print(f"{count} image records written to {args.output}", file=sys.stderr)
    return EXIT_OK


def ls(args: argparse.Namespace) -> int:
    if getattr(args, "output", None):
        return write_listing(args)
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
    options = with_sides(args, settings.registries.store_options())
    ref = _source(args.source, options)
    data = inspect_image(ref, config=args.config, as_format=args.as_format, platforms=tuple(settings.defaults.platforms),
                         options=options)
    sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
    sys.stdout.flush()
    return EXIT_OK


#: Errors ``imagepush audit`` lists, most frequent first.
TOP_ERRORS = 10


def show_audit(args: argparse.Namespace) -> int:
    """Print a report: its rows, then totals by status and by destination, then the top errors.

    ``--failed`` keeps the failed rows only (and prints nothing else), ``--json`` prints the
    rows as JSON lines. A report of schema version 1 is shown as this version reads it:
    its ``ok`` as ``copied``.
    """
    try:
        rows = audit.read(args.url).to_pylist()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read audit {args.url}: {exc}") from None
    for r in rows:
        r["status"] = records.status_of(r["status"])
    if getattr(args, "failed", False):
        rows = [r for r in rows if r["status"] == records.FAILED]
    out = sys.stdout
    if args.json:
        for r in rows:
            out.write(orjson.dumps(r, default=str).decode() + "\n")
        return EXIT_OK
    out.write(f"{'status':7} {'role':5} {'copied':>6} {'skip':>4} {'bytes':>9}  source -> destination  [written digest, type]\n")
    for r in rows:
        digest = (r["destination_digest"] or "-")[:19]
        kind = (r["media_type"] or "-").rsplit("/", 1)[-1]
        line = (f"{r['status']:7} {r['role']:5} {r['blobs_copied']:>6} {r['blobs_skipped']:>4} "
                f"{_size(r['bytes_copied']):>9}  {r['source']} -> {r['destination']}  [{digest}, {kind}]")
        if r["error"]:
            line += f"  error: {r['error']}"
        out.write(line + "\n")
    if not getattr(args, "failed", False):
        _audit_totals(rows, out)
    return EXIT_OK


def _audit_totals(rows: list[dict], out) -> None:
    """Images by status, (image, destination) pairs by destination, and the most frequent errors."""
    top = _top_level(rows)
    statuses = _image_statuses(rows)
    images = sum(statuses.values())
    out.write(f"\ntotal: {images} image{'' if images == 1 else 's'}: {_counted(statuses)}\n")
    by_destination: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    copied: collections.Counter[str] = collections.Counter()
    for r in top:
        by_destination[r["destination"]][r["status"]] += 1
    for r in rows:
        copied[r["destination"]] += r["bytes_copied"] or 0
    out.write("by destination:\n")
    for destination in sorted(by_destination):
        out.write(f"  {destination}: {_counted(by_destination[destination])}; {_size(copied[destination])} copied\n")
    errors = collections.Counter(
        (r.get("error_kind") or "internal", r["error"] or "") for r in top if r["status"] == records.FAILED
    )
    if errors:
        out.write("top errors:\n")
        for (kind, message), count in errors.most_common(TOP_ERRORS):
            out.write(f"  {count:>5}  {kind}: {message}\n")


def verify_images(args: argparse.Namespace, run_id: str) -> int:
    """``verify SRC DST…`` (or ``verify --records URL [DST_PREFIX…]``): check, write only the audit."""
    spec = config.spec_from_flags(args, run_id, _default_audit(run_id))
    spec.options = with_sides(args, spec.options)
    spec.verify = True
    return verify_spec(spec, quiet=args.quiet)


def verify_spec(spec: RunSpec, *, quiet: bool = False) -> int:
    """Check every image of the run at its destinations, without Beam (see engine/verify.py).

    Exit 1 when any image is missing or different, as a copy with a failed image does:
    the summary and the audit say which.
    """
    from imagepush.transforms.engine.verify import verify

    check_records(spec)
    started = time.monotonic()
    destinations = _destination_count(spec)
    rows = verify(spec.jobs, spec.syncs, spec.records, spec.run_id, spec.options, spec.parallel)
    audit.write(rows, spec.audit_url)
    return summarize(spec.audit_url, time.monotonic() - started, destinations, notes=not quiet)


def plan_images(args: argparse.Namespace, run_id: str) -> int:
    """``plan SRC DST…`` (or ``plan --records URL [DST_PREFIX…]``): what a copy or sync would do.

    SRC selects as ``verify`` does: a reference naming an image is one copy, a store is
    listed and name-mapped as ``sync`` maps it.
    """
    spec = config.spec_from_flags(args, run_id, _default_audit(run_id))
    spec.options = with_sides(args, spec.options)
    spec.engine = args.engine
    return show_plan(spec, args.output)


def dry_run(args: argparse.Namespace, beam_args: list[str], run_id: str) -> int:
    """``copy``, ``sync``, ``run`` or ``retry`` with ``--dry-run``: the plan of exactly that run, nothing written."""
    spec = build_spec(args, beam_args, run_id)
    if spec.verify:
        raise UsageError("--dry-run: a file of verify jobs writes nothing already; run it as it is")
    return show_plan(spec, None)


def show_plan(spec: RunSpec, output: str | None) -> int:
    """Plan the run (see engine/planning.py) for the executor it would use, print it, write its records to ``output``.

    Exit 1 when an image would fail (a source that cannot be read), as the run would.
    """
    from imagepush.transforms.engine.planning import plan_run
    from imagepush.transforms.engine.records_io import RecordsError, record_format, write_records

    if output:
        try:
            record_format(output)
        except RecordsError as exc:
            raise UsageError(f"--output: {exc}") from None
    check_records(spec)
    # The executor the run would use decides how blobs are grouped, and so the counts.
    plan = plan_run(spec.jobs, spec.syncs, spec.records, spec.options, spec.parallel,
                    streamed=_direct_wanted(spec))
    out = sys.stdout
    for image in plan.images:
        line = f"{image.action:8} {image.source} -> {image.destination}"
        if image.error:
            line += f"  error: {image.error}"
        else:
            line += f"  {image.target_digest or '(digest known once the layers are read)'}"
        out.write(line + "\n")
    for store in sorted(plan.stores):
        out.write(f"{store}: {_plan_totals(plan.stores[store])}\n")
    total = plan.total()
    pairs = sum(total.images.values())
    out.write(f"plan: {pairs} image{'' if pairs == 1 else 's'} at destinations, {_plan_totals(total)}; "
              "nothing written\n")
    if output:
        count = write_records(plan.records(), output, columns=PLAN_COLUMNS)
        print(f"{count} image records written to {output}", file=sys.stderr)
    return EXIT_FAILED if plan.failing else EXIT_OK


#: The columns a plan's records hold: every image record column, each row naming its destination.
PLAN_COLUMNS = tuple(field.name for field in dataclasses.fields(records.ImageRecord))


def _plan_totals(totals: StoreTotals) -> str:
    """``2 copy, 1 current; blobs: 3 upload (1.2 MB), 1 mount, 4 skip``."""
    from imagepush.transforms.engine.planning import ACTIONS

    images = ", ".join(f"{totals.images[a]} {a}" for a in ACTIONS if totals.images[a]) or "no images"
    unsized = f" + {totals.unsized} of unknown size" if totals.unsized else ""
    return (f"{images}; blobs: {totals.upload} upload ({_size(totals.bytes)}{unsized}), "
            f"{totals.mount} mount, {totals.skip} skip")
