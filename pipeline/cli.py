"""The ``imagepush`` command line.

User-facing output lives here only: a summary on stdout, progress and one-line errors
on stderr. Exit status: 0 all images done, 1 some failed (see the audit), 2 bad usage
or configuration (nothing written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import traceback
import uuid
from typing import Any, Sequence

from pydantic import BaseModel

from imagepush.pipeline.config import COMPRESSIONS, FORMATS, Defaults, RegistryConfig, RunConfig
from imagepush.pipeline.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from imagepush.pipeline.options import ENGINES, BeamOptionError, BeamOptions, runner_name
from imagepush.pipeline.platforms import system_platform
from imagepush.pipeline.progress import DEFAULT_INTERVAL
from imagepush.pipeline.sides import parse_bool
from imagepush.transforms.errors import is_expected, one_line
from imagepush.transforms.stores.refs import ReferenceError
from imagepush.transforms.stores.stopping import OPEN_SINKS

#: The commands that run a pipeline, and so take Beam options.
RUNS = ("copy", "sync", "run", "retry")
#: skopeo's ``--multi-arch`` values.
MULTI_ARCH = ("all", "system", "index-only")
TLS_VERIFY_FLAGS = ("--tls-verify", "--src-tls-verify", "--dest-tls-verify")
#: The logger of registry request traces (transforms/stores/registry/transport.py), on under --debug.
HTTP_TRACE = "imagepush.http"

EPILOG = """\
references:
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (Distribution HTTP API)
  oci:URL[:REF]                             an OCI image layout (REF = ref name)
  oci-archive:URL[:REF]                     an OCI layout in a tar file (replaced when written)
  dir:URL                                   a skopeo-style directory (one image)
  docker-archive:URL[:REPO:TAG]             a `docker save` tarball
  registry-storage:URL                      source only: a registry's storage tree
  URL is a local path or any fsspec URL (memory://x, s3://bucket/x, gs://bucket/x).

Any other --name value is an Apache Beam option (--runner, --direct_num_workers,
--direct_running_mode, Dataflow's --project, --region, --temp_location ...); one
Beam does not know is refused. The default runner is the in-process FnApiRunner.

exit status: 0 all images done; 1 some images failed (the audit names each);
2 bad usage or configuration (nothing written); 130 interrupted (Ctrl-C or SIGTERM
stops at once, cancelling open uploads; a rerun skips what was finished).
"""


#: One example per command, shown under its ``--help``: a line to copy, then what it does.
EXAMPLES = {
    "copy": """\
examples:
  imagepush copy docker://registry.example.com/team/app:1.0 docker://mirror.example.com/team/app:1.0
  imagepush copy --multi-arch system --digestfile app.digest oci:./layout:app:1.0 docker://localhost:5000/app
      (a registry destination without a tag is written as :latest, as skopeo does)
  imagepush copy --src-creds robot --dest-tls-verify=false docker://quay.example.com/a/b:1 docker://10.0.0.5:5000/b:1
""",
    "sync": """\
examples:
  imagepush sync docker://registry.example.com/team docker://mirror.example.com/hub
      (team/app:1.0 lands at mirror.example.com/hub/team/app:1.0)
  imagepush sync --no-clobber --format oci oci:./layout oci:./mirror
""",
    "run": """\
example:
  imagepush run migration.yaml --digestfile written.txt    (the file format: docs/cli.md)
""",
    "ls": """\
examples:
  imagepush ls docker://registry.example.com/team | head
  imagepush ls --output images.parquet docker://registry.example.com/   (records for copy --records)
""",
    "retry": """\
example:
  imagepush retry ~/.local/state/imagepush/audit/20260101T000000Z-1a2b3c4d.parquet
""",
    "inspect": """\
examples:
  imagepush inspect docker://registry.example.com/team/app:1.0
  imagepush inspect --platform linux/arm64 --config docker://registry.example.com/team/app:1.0
""",
    "verify": """\
examples:
  imagepush verify docker://registry.example.com/team docker://mirror.example.com/hub
  imagepush verify --format oci oci:./layout:app:1.0 docker://mirror.example.com/app:1.0
""",
    "plan": """\
examples:
  imagepush plan docker://registry.example.com/team docker://mirror.example.com/hub
  imagepush plan --output todo.parquet oci:./layout docker://mirror.example.com/hub   (then copy --records)
""",
    "audit": """\
examples:
  imagepush audit --failed ~/.local/state/imagepush/audit/20260101T000000Z-1a2b3c4d.parquet
""",
}


def _epilog(command: str, references: bool = True) -> str:
    return EXAMPLES[command] + ("\n" + EPILOG if references else "")


def _version() -> str:
    """The installed distribution's version: one number, kept in pyproject.toml only."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagepush")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _default(model: type[BaseModel], field: str) -> Any:
    """A flag's default is the run model's, so that leaving out a flag or a YAML key means the same."""
    return model.model_fields[field].default


def _one_of(values: tuple[str, ...]) -> str:
    """The help's ``{a,b,c}``, as argparse shows choices: the values are the model's to check, not argparse's."""
    return "{" + ",".join(values) + "}"


def _output_flags(p: argparse.ArgumentParser, *, runs: bool = False) -> None:
    """-v, -q and --debug; ``runs``: a command that copies, and so shows progress."""
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")
    p.add_argument("--debug", action="store_true",
                   help="log everything, with tracebacks of internal errors and one line per registry request "
                        "(method, URL, status; credentials and tokens left out)")
    if runs:
        p.add_argument("--progress-interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                       help="seconds between two progress lines when stderr is not a terminal "
                            "(default: %(default)s)")


def _side_flags(p: argparse.ArgumentParser, prefixes: tuple[str, ...]) -> None:
    """skopeo's per-side registry flags; each applies to the registry hosts its side names (see sides.py)."""
    for prefix in prefixes:
        side = {"src-": "source ", "dest-": "destination ", "": ""}[prefix]
        p.add_argument(f"--{prefix}creds", metavar="USER[:PASS]",
                       help=f"credentials for the {side}registry (no PASS: asked on the terminal)")
        if prefix:
            p.add_argument(f"--{prefix}authfile", metavar="PATH",
                           help=f"auth file for the {side}registry instead of --authfile")
        p.add_argument(f"--{prefix}tls-verify", type=parse_bool, metavar="BOOL",
                       help=f"--{prefix}tls-verify=false: allow plain HTTP or unverified TLS to the {side}registry")


def _copy_flags(p: argparse.ArgumentParser, *, digestfile: str) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="copy every platform of an index (the default; for skopeo's spelling)")
    p.add_argument("--multi-arch", choices=MULTI_ARCH,
                   help="all: every platform of an index (default); system: only this machine's platform "
                        "(%s); index-only is not supported" % system_platform())
    p.add_argument("--digestfile", metavar="FILE", help=digestfile)
    p.add_argument("--no-clobber", action="store_true",
                   help="never replace a tag (or ref name) that points at another image: such images are "
                        "reported skipped")


def _common(p: argparse.ArgumentParser, *, writes: bool) -> None:
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="keep only these platforms of an index (repeatable; default: all)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                   help="allow plain HTTP or unverified TLS to this registry (repeatable)")
    p.add_argument("--authfile", metavar="PATH",
                   help="registry credentials in docker config.json / containers auth.json form "
                        "(default: the usual docker and containers locations)")
    p.add_argument("--ca-bundle", metavar="PEM", help="extra CA certificates to trust for registries")
    p.add_argument("--registry-concurrency", default=_default(RegistryConfig, "concurrency"), metavar="N",
                   help="most concurrent requests per registry from each worker; the limit starts at a "
                        "quarter of it and adapts to the registry's 429/503 answers (default: %(default)s)")
    p.add_argument("--registry-concurrency-fixed", action="store_true",
                   help="send --registry-concurrency requests at once from the start, never adapting")
    p.add_argument("--registry-rps", default=_default(RegistryConfig, "rps"), metavar="N",
                   help="most requests per second per registry from each worker (default: no limit)")
    p.add_argument("--retry-times", default=_default(RegistryConfig, "retries"), metavar="N",
                   help="retries of a registry request after a connection error, 429 or 5xx, "
                        "with exponential backoff (default: %(default)s)")
    p.add_argument("--outage-grace", default=_default(RegistryConfig, "outage_grace"), metavar="SECONDS",
                   help="how long a registry that answered earlier in the run is retried once it stops "
                        "answering, before its images fail (default: %(default)s)")
    p.add_argument("--parallel", default=_default(RunConfig, "parallel"), metavar="N",
                   help="images and blobs each worker handles at once in every step (default: %(default)s)")
    _output_flags(p, runs=writes)
    if writes:
        p.add_argument("--format", metavar=_one_of(FORMATS), default=_default(Defaults, "format"),
                       help="manifest/config format written (default: preserve bytes and digests)")
        p.add_argument("--compression", metavar=_one_of(COMPRESSIONS), default=_default(Defaults, "compression"),
                       help="layer compression written (default: preserve, layers copied as they are); "
                            "zstd needs OCI manifests; docker-archive always stores layers uncompressed")
        p.add_argument("--no-preflight", dest="preflight", action="store_false",
                       help="skip the launcher's check for images already current at their destinations "
                            "(by default a rerun with nothing to do starts no pipeline); the workers "
                            "then list and check everything, as for a very large catalog on Dataflow")
        p.add_argument("--audit", metavar="URL",
                       help="where the Parquet audit goes (any fsspec URL; default on a local runner "
                            "$XDG_STATE_HOME/imagepush/audit/<run-id>.parquet, ~/.local/state/... without it)")
        p.add_argument("--max-bandwidth", metavar="RATE",
                       help="most bytes per second each worker sends to each destination (a registry host, "
                            "a layout, a bucket path), e.g. 50MB/s or 1.5GiB/s (default: no cap)")
        p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
        _engine_flag(p)


def _engine_flag(p: argparse.ArgumentParser, planned: bool = False) -> None:
    """``--engine``; ``planned``: for ``plan``, which models how the run would copy (its counts follow)."""
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help=("plan the blobs as this executor would copy them: beam groups every image's requests "
                         "for a blob at once, direct takes images one by one in listing order; auto (default): "
                         "direct unless a records file is planned, as a copy or sync chooses") if planned else
                        ("beam: run the Beam pipeline; direct: copy in this process without Beam; auto (default): "
                         "direct when no Beam option and no records file is given, else Beam"))


def _filter_flags(p: argparse.ArgumentParser) -> None:
    """A sync's regular-expression filters (a run file's job has the others: tags, semver, latest)."""
    p.add_argument("--include", action="append", default=[], metavar="REGEX",
                   help="copy only images whose REPOSITORY:TAG matches (repeatable: any of them)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="skip images whose REPOSITORY:TAG matches (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagepush",
        description="Copy, sync and convert container images in bulk, on Apache Beam.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagepush {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    jobs = (
        ("copy", "copy one image (or an index with its children) to every DST",
         "the image: a registry tag or digest, an oci: ref name, a dir:, a docker-archive: image",
         "where it goes, each with its own name (a tag, ref name or repo:tag)"),
        ("sync", "copy every image SRC holds (all repositories, all tags)",
         "a registry (docker://HOST), a repository prefix (docker://HOST/team) or repository, an OCI layout, "
         "a docker-archive, a registry-storage: tree",
         "a registry prefix (the repository path below SRC is appended, tags kept), "
         "an OCI layout (ref names REPO:TAG) or a docker-archive"),
    )
    for name, summary, source, destinations in jobs:
        p = sub.add_parser(name, help=summary, epilog=_epilog(name), formatter_class=fmt)
        # With --records, copy has no SRC: every positional is a DST_PREFIX (checked by the run model).
        p.add_argument("source", metavar="SRC", help=source, nargs="?" if name == "copy" else None)
        p.add_argument("destinations", metavar="DST", nargs="*" if name == "copy" else "+", help=destinations)
        _common(p, writes=True)
        _side_flags(p, ("src-", "dest-"))
        _copy_flags(p, digestfile="write the digest of the manifest written (as skopeo does)" if name == "copy"
                    else "write one line per image written: REFERENCE DIGEST")
        if name == "copy":
            _records_flags(p)
        else:
            _filter_flags(p)

    p = sub.add_parser("run", help="run the batch job described by a YAML file",
                       epilog=_epilog("run"), formatter_class=fmt)
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--digestfile", metavar="FILE", help="write one line per image written: REFERENCE DIGEST")
    _output_flags(p, runs=True)
    p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    _engine_flag(p)

    p = sub.add_parser("ls", help="print the image records SRC holds, one JSON object per line",
                       epilog=_epilog("ls", references=False), formatter_class=fmt)
    p.add_argument("source", metavar="SRC", help="any source store or registry (prefix)")
    _common(p, writes=False)
    _side_flags(p, ("",))
    p.add_argument("--output", metavar="URL",
                   help="write image records to this file instead (any fsspec URL; .jsonl, .parquet or .csv), "
                        "for `copy --records` or a `records:` job")

    p = sub.add_parser("retry", help="run again the images an audit reports as failed",
                       epilog=_epilog("retry"), formatter_class=fmt)
    p.add_argument("records", metavar="AUDIT_URL",
                   help="an audit (or a folder or glob of them): its failed image and index rows are run again, "
                        "each to its destination with its format, compression and platforms")
    p.add_argument("--pin-digest", action="store_true",
                   help="copy the source digest the audit recorded (default: resolve the tag again)")
    _common(p, writes=True)

    p = sub.add_parser("inspect", help="print the manifest (or config) of an image as JSON",
                       epilog=_epilog("inspect", references=False), formatter_class=fmt)
    p.add_argument("source", metavar="SRC", help="one image, as for copy")
    p.add_argument("--config", action="store_true", help="print the image config instead")
    p.add_argument("--as", dest="as_format", choices=("oci", "v2s2"),
                   help="print it converted to this format")
    _common(p, writes=False)
    _side_flags(p, ("",))

    _verify_parser(sub, fmt)
    _plan_parser(sub, fmt)

    p = sub.add_parser("audit", help="print an audit report: its rows, totals by status and destination, "
                                     "the top errors (or JSON lines with --json)",
                       epilog=_epilog("audit", references=False), formatter_class=fmt)
    p.add_argument("url", metavar="URL")
    _output_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--failed", action="store_true", help="only the failed rows")
    return parser


def _verify_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``verify SRC DST…``: the flags of a copy that say what the destination should hold, and nothing that writes."""
    p = sub.add_parser("verify", help="check that every image of SRC is at each DST (as copy or sync would have "
                                      "left it), writing nothing there; exit 1 if any is missing or different",
                       epilog=_epilog("verify"), formatter_class=fmt)
    p.add_argument("source", metavar="SRC", nargs="?",
                   help="one image (a tag, digest or ref name: checked as copy copies it), or a registry, "
                        "repository prefix, layout or archive (every image listed, checked as sync maps it)")
    p.add_argument("destinations", metavar="DST", nargs="*",
                   help="where the images should be: an image reference for one image, a prefix or store for a listing")
    _common(p, writes=False)
    _filter_flags(p)
    _side_flags(p, ("src-", "dest-"))
    p.add_argument("--format", metavar=_one_of(FORMATS), default=_default(Defaults, "format"),
                   help="the format the migration wrote: preserve is checked by digest, a conversion "
                        "by the layers' diff_ids (default: %(default)s)")
    p.add_argument("--compression", metavar=_one_of(COMPRESSIONS), default=_default(Defaults, "compression"),
                   help="the layer compression the migration wrote (recompressed layers are checked by diff_ids)")
    p.add_argument("--audit", metavar="URL",
                   help="where the Parquet audit goes (default $XDG_STATE_HOME/imagepush/audit/<run-id>.parquet)")
    p.add_argument("--records", metavar="URL",
                   help="check the images a records file names (as copy --records reads it); the positionals "
                        "are then DST_PREFIXes for rows without a destination")


DRY_RUN_HELP = ("print what this run would do (as `imagepush plan`) and write nothing; "
                "Beam's --dry_run, with an underscore, builds the job offline instead")


def _plan_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``plan SRC DST…``: what a copy or sync would do, found out with its own checks; nothing written."""
    p = sub.add_parser("plan", help="print what a copy or sync would do, writing nothing: each image copied, "
                                    "converted, current or failing, with the digest it gets, and the blobs to "
                                    "upload, mount and skip and the bytes to transfer per destination",
                       epilog=_epilog("plan"), formatter_class=fmt)
    p.add_argument("source", metavar="SRC", nargs="?",
                   help="one image (a tag, digest or ref name: planned as copy copies it), or a registry, "
                        "repository prefix, layout or archive (every image listed, planned as sync maps it)")
    p.add_argument("destinations", metavar="DST", nargs="*",
                   help="where the images go: an image reference for one image, a prefix or store for a listing")
    _common(p, writes=False)
    _side_flags(p, ("src-", "dest-"))
    p.add_argument("--format", metavar=_one_of(FORMATS), default=_default(Defaults, "format"),
                   help="manifest/config format the run would write (default: %(default)s)")
    p.add_argument("--compression", metavar=_one_of(COMPRESSIONS), default=_default(Defaults, "compression"),
                   help="layer compression the run would write (default: %(default)s)")
    p.add_argument("--records", metavar="URL",
                   help="plan the images a records file names (as copy --records reads it); the positionals "
                        "are then DST_PREFIXes for rows without a destination")
    p.add_argument("--output", metavar="URL",
                   help="write the images still to copy (not the current ones) as image records, each with its "
                        "destination and pinned source digest (.jsonl, .parquet or .csv), for `copy --records`")
    _engine_flag(p, planned=True)


def _records_flags(p: argparse.ArgumentParser) -> None:
    """``copy --records URL [DST_PREFIX …]``: the images come from a records file, not from SRC."""
    p.add_argument("--records", metavar="URL",
                   help="copy the images a records file names (JSON Lines, Parquet or CSV; a file, folder or glob "
                        "on any fsspec URL), read on the workers; the positionals are then DST_PREFIXes for rows "
                        "without a destination")


def _quiet_beam_import_notes(record: logging.LogRecord) -> bool:
    """Beam logs, on the root logger, that optional GCP clients are missing: not our users' concern."""
    return not (record.name == "root" and "apitools" in str(record.msg))


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imagepush: %(message)s"))
    handler.addFilter(_quiet_beam_import_notes)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("imagepush").setLevel(logging.INFO)
    logging.getLogger(HTTP_TRACE).setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)


def _set_verbosity(args: argparse.Namespace) -> None:
    """``--quiet`` keeps errors only (the summary is printed, not logged); ``--debug`` adds request traces."""
    if getattr(args, "debug", False):
        logging.getLogger("imagepush").setLevel(logging.DEBUG)
        logging.getLogger(HTTP_TRACE).setLevel(logging.DEBUG)
    elif getattr(args, "verbose", False):
        logging.getLogger("imagepush").setLevel(logging.DEBUG)
    elif getattr(args, "quiet", False):
        logging.getLogger("imagepush").setLevel(logging.ERROR)


def _tls_verify_as_skopeo(argv: list[str]) -> list[str]:
    """A bare ``--tls-verify`` (skopeo's boolean without a value) means ``=true``; a value needs ``=``."""
    return [f"{arg}=true" if arg in TLS_VERIFY_FLAGS else arg for arg in argv]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option any of our commands defines: argparse has no public list of them."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _option_strings(sub)
    return names


def split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate Beam's options from ours, before argparse sees the line.

    Beam's own parser says which options exist and which take a value: a Beam switch
    never takes the next argument (a source, say) for its value, and an option nobody
    knows is refused by its name alone, whatever follows it. Beam is imported only
    when the line has an option that is not ours.
    """
    known = _option_strings(build_parser())

    def foreign(arg: str) -> bool:
        return arg.startswith("--") and len(arg) > 2 and arg.split("=", 1)[0] not in known

    first = next((arg.split("=", 1)[0] for arg in argv if foreign(arg)), None)
    if first is None:
        return list(argv), []
    # The command is the first word: nothing before it takes a value. Only a command
    # that runs a pipeline has Beam options, so the others never need to import Beam.
    if next((arg for arg in argv if not arg.startswith("-")), None) not in RUNS:
        raise UsageError(f"unknown option {first}")
    ours: list[str] = []
    beam_args: list[str] = []
    try:
        beam = BeamOptions(runner_name(argv))
        i = 0
        while i < len(argv):
            arg = argv[i]
            if not foreign(arg):
                ours.append(arg)
            else:
                name, has_value, _ = arg.partition("=")
                beam_args.append(arg)
                if beam.takes_value(name) and not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    beam_args.append(argv[i + 1])
                    i += 1
            i += 1
        beam.check(beam_args)
    except BeamOptionError as exc:
        raise UsageError(str(exc)) from None
    return ours, beam_args


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()  # first: Beam, when the line has options of its own, logs as it is imported
    command = None
    debug = "--debug" in argv
    try:
        ours, beam_args = split_beam_args(_tls_verify_as_skopeo(argv))
        args = build_parser().parse_args(ours)
        command = args.command
        _set_verbosity(args)
        from imagepush.pipeline import commands

        if command in RUNS:
            return commands.run_job(args, beam_args, new_run_id())
        if command == "ls":
            return commands.ls(args)
        if command == "verify":
            return commands.verify_images(args, new_run_id())
        if command == "plan":
            return commands.plan_images(args, new_run_id())
        if command == "audit":
            return commands.show_audit(args)
        return commands.inspect(args)
    except BrokenPipeError:
        # The reader went away (`imagepush ls … | head`): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (UsageError, ReferenceError) as exc:
        print(f"imagepush: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not is_expected(exc):
            raise
        if debug:
            traceback.print_exc()
        # Nothing could be read (ls, inspect) or a destination refused to be prepared
        # (copy, sync, run): a problem with the stores, not with the command line.
        print(f"imagepush: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if command in RUNS else EXIT_FAILED
    except KeyboardInterrupt:
        print("imagepush: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


#: How long a stopped run may take to cancel its open uploads and remove its temporary files.
STOP_GRACE = 10.0


def _stop_on_signal(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: end the writes in flight within :data:`STOP_GRACE`, then exit.

    Nothing is half-visible: files are renamed into place (and registry uploads
    committed) only once verified, and names are written last, so a rerun skips what
    this run finished. Nothing new starts; blob writes in flight get half the grace to
    finish, then the rest are aborted: registry upload sessions cancelled, temporary
    files and S3 multipart uploads removed (see ``stores.stopping``). Beam would
    otherwise wait for every copy on its worker threads, then print a traceback; a
    second signal exits without waiting.
    """
    if OPEN_SINKS.stopping:
        os._exit(EXIT_INTERRUPTED)
    name = signal.Signals(signum).name
    try:
        in_flight, left = OPEN_SINKS.stop(STOP_GRACE)
        ended = ""
        if in_flight:
            ended = f": {in_flight} upload{'s' if in_flight != 1 else ''} in flight finished or cancelled"
            if left:
                ended += f" ({left} not in time)"
        # sys.stderr: during a multi_processing run, descriptor 2 is the workers' log (progress.workers_stderr_to).
        os.write(sys.stderr.fileno(), f"imagepush: interrupted by {name}{ended}; a rerun skips what was finished\n".encode())
    finally:
        os._exit(EXIT_INTERRUPTED)


def entry() -> None:
    """The console script (and ``python -m imagepush.pipeline``): :func:`main`, then an immediate exit.

    By then every destination and the audit are written and closed. Skipping the
    interpreter's teardown keeps native threads that Beam's dependencies leave running
    from being destroyed under C++ static destructors (one benchmark run ended in
    ``terminate called without an active exception`` after its work was done), and
    saves the teardown time of a short run.
    """
    # numpy (under pyarrow) starts an OpenBLAS thread per core that spins for a while;
    # nothing here does linear algebra, and on two cores that is CPU a registry needs.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_on_signal)
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
