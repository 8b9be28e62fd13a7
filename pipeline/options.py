"""Beam pipeline options for imagepush runs: an explicit, offline-safe local runner.

Beam 2.77's ``DirectRunner`` first tries to download the Prism runner binary; with no
internet that costs a timeout and a logged error before it falls back. Unless the user
names a runner, we use the FnApiRunner directly, which runs in-process and honours
``--direct_num_workers`` and ``--direct_running_mode``.

Parallelism does not come from Beam's local modes by default: each I/O step runs its
elements on a bounded thread pool of its own (``--parallel``), which on two cores costs
far less CPU than the gRPC plumbing of ``multi_threading`` bundles.

Which options exist, and which take a value, is Beam's knowledge: :class:`BeamOptions`
asks Beam's own parser. Beam is imported only when a run has Beam options at all, since
most runs have none and importing it costs a second of start-up.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_RUNNER = "FnApiRunner"

#: Runners that run the pipeline on this machine, in this process or its children.
LOCAL_RUNNERS = frozenset({"fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner", "prismrunner"})

#: Options of Beam's parser that are not pipeline options (``--help`` would print and exit).
_NOT_PIPELINE_OPTIONS = frozenset({"-h", "--help"})


class BeamOptionError(ValueError):
    """A Beam option that Beam does not know or whose value it refuses.

    The message names the option; for an option Beam does not know it never repeats
    the value, which may be anything (a password given to the wrong flag).
    """


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The value of the last ``--name value`` or ``--name=value`` in ``args``: the one Beam keeps."""
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


#: Beam's ``--dry_run`` takes a value, and any value but the empty string is true (even
#: ``False``); we take it as a switch, as users write it, and hand Beam a clean value.
DRY_RUN = "--dry_run"
_FALSE = frozenset({"false", "0", "no", "off", ""})


def is_dry_run(extra: Sequence[str]) -> bool:
    """Whether the last ``--dry_run`` (bare, or ``=true``/``=false``) asks for a dry run."""
    value = None
    for arg in extra:
        if arg == DRY_RUN:
            value = True
        elif arg.startswith(f"{DRY_RUN}="):
            value = arg.split("=", 1)[1].strip().lower() not in _FALSE
    return bool(value)


def _without_dry_run(extra: Sequence[str]) -> list[str]:
    return [arg for arg in extra if arg != DRY_RUN and not arg.startswith(f"{DRY_RUN}=")]


def beam_argv(extra: Sequence[str]) -> list[str]:
    """The user's Beam flags with our default runner filled in, as Beam's parser takes them.

    ``--dry_run`` becomes ``--dry_run=True`` (with ``--no_auth`` on Dataflow) or disappears. On the Dask runner the number
    of Dask partitions is set to :data:`DASK_PARTITIONS` unless the user chose one: see
    :func:`dask_partitions`.
    """
    args = _without_dry_run(extra)
    if is_dry_run(extra):
        args.append(f"{DRY_RUN}=True")
        if is_dataflow(extra) and "--no_auth" not in args:
            args.append("--no_auth")  # a dry run submits nothing, so it needs no credentials
    if _flag_value(args, "runner") is None:
        args.append(f"--runner={DEFAULT_RUNNER}")
    if is_dask(extra) and _flag_value(args, "dask_npartitions") is None \
            and _flag_value(args, "dask_partition_size") is None:
        args.append(f"--dask_npartitions={DASK_PARTITIONS}")
    return args


def pipeline_options(extra: Sequence[str]) -> PipelineOptions:
    """Beam's options for this run (the flags were checked by :class:`BeamOptions` already)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(beam_argv(extra))


def is_multiprocess(extra: Sequence[str]) -> bool:
    return _flag_value(extra, "direct_running_mode") == "multi_processing"


def runner_name(extra: Sequence[str]) -> str:
    """The runner the Beam flags name (the last one wins, as in Beam), or our default."""
    return _flag_value(extra, "runner") or DEFAULT_RUNNER


def _runner_class(extra: Sequence[str]) -> str:
    return runner_name(extra).rsplit(".", 1)[-1].lower()


def is_local(extra: Sequence[str]) -> bool:
    """Whether every worker runs on this machine (in-process or ``multi_processing``).

    Any other runner is *distributed*: its workers share nothing with the launcher but
    what is on a shared store.
    """
    return _runner_class(extra) in LOCAL_RUNNERS


def shares_this_machine(extra: Sequence[str]) -> bool:
    """Whether the workers can write files the launcher reads: a local runner, or Dask on loopback.

    A Dask runner without ``--dask_client_address`` starts its cluster here.
    """
    if is_local(extra):
        return True
    if not is_dask(extra):
        return False
    address = _flag_value(extra, "dask_client_address") or ""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("", "127.0.0.1", "localhost", "::1")


def is_dask(extra: Sequence[str]) -> bool:
    return _runner_class(extra) == "daskrunner"


def is_dataflow(extra: Sequence[str]) -> bool:
    return _runner_class(extra) in {"dataflowrunner", "testdataflowrunner"}


def dask_partitions(extra: Sequence[str]) -> int:
    """How many Dask partitions a run on the Dask runner should be spread over (0 elsewhere).

    Beam's Dask runner turns each ``Create`` into a Dask bag of 128 elements per
    partition unless told otherwise, and every GroupByKey into a bag ``groupby`` that
    keeps its input's partition count: a run that starts from one listing (or from
    fewer than 129 images) would be one partition from start to end, on one worker,
    however many shard keys it uses. Partitions, not keys, are what Dask spreads.
    """
    if not is_dask(extra):
        return 0
    value = _flag_value(beam_argv(extra), "dask_npartitions")
    return max(1, int(value)) if value else DASK_PARTITIONS


#: Dask partitions of a run on the Dask runner, unless ``--dask_npartitions`` says otherwise.
#: Each GroupByKey becomes a Dask task shuffle whose task count grows with the square of
#: the partitions (64 partitions: about 1,200 tasks per shuffle, most of a small run's
#: time on two cores); 16 keep a few dozen worker processes busy.
DASK_PARTITIONS = 16


class BeamOptions:
    """Beam's own option parser, with the option classes of the run's runner loaded.

    Runners outside Beam's core modules (Dask, a runner of one's own) define their option
    classes beside the runner, so the runner is loaded first, as Beam does when the
    pipeline starts; a runner that cannot be loaded is a usage error now rather than a
    failed pipeline after the destinations were prepared.
    """

    def __init__(self, runner: str) -> None:
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.runners.runner import create_runner

        try:
            create_runner(runner)
        except (ImportError, ValueError) as exc:
            raise BeamOptionError(f"--runner: {str(exc).splitlines()[0]}") from None
        parsers: list[argparse.ArgumentParser] = []
        # Beam builds this parser from every loaded option class and hands it to the callback.
        PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
        self._parser = parsers[0]
        self._parser.exit_on_error = False  # an ArgumentError for us to report, not Beam's usage text
        self._takes_value = {
            flag: action.nargs != 0
            for action in self._parser._actions
            for flag in action.option_strings
            if flag not in _NOT_PIPELINE_OPTIONS
        }
        self._takes_value[DRY_RUN] = False  # a switch for us: see is_dry_run

    def takes_value(self, flag: str) -> bool:
        """Whether ``--flag`` is followed by a value; an option Beam does not know is an error."""
        if flag not in self._takes_value:
            raise BeamOptionError(f"unknown option {flag}")
        return self._takes_value[flag]

    def check(self, flags: Sequence[str]) -> None:
        """Parse ``flags`` (whose names are known) as Beam will.

        A value Beam refuses is then one line now, not Beam's usage text once the pipeline starts.
        """
        try:
            self._parser.parse_known_args(_without_dry_run(flags))
        except argparse.ArgumentError as exc:
            raise BeamOptionError(str(exc)) from None

    def from_mapping(self, options: Mapping[str, Any]) -> list[str]:
        """The flags of ``{name: value}`` options (a run file's ``runner``).

        They mean what Beam's ``PipelineOptions.from_dictionary`` makes of the same
        mapping: true/false switch a flag that takes no value on or off, a list repeats
        the flag, a mapping is passed as JSON and null leaves the option out. Flags rather
        than an options object, so that the command line's Beam options can follow them.
        """
        flags: list[str] = []
        for name, value in options.items():
            flag = f"--{name}"
            takes_value = self.takes_value(flag)
            for item in value if isinstance(value, list) else [value]:
                if not takes_value:
                    if not isinstance(item, bool):
                        raise BeamOptionError(f"{flag} is a switch: give true or false")
                    if item:
                        flags.append(flag)
                elif isinstance(item, bool):
                    flags.append(f"{flag}={str(item).lower()}")
                elif isinstance(item, dict):
                    flags.append(f"{flag}={json.dumps(item)}")
                elif item is not None:
                    flags.append(f"{flag}={item}")
        self.check(flags)
        return flags


#: How a copy runs: ``auto`` chooses, ``beam`` always builds the Beam graph, ``direct``
#: runs the engine's steps in this process without Beam (engine/direct.py).
ENGINES = ("auto", "beam", "direct")


def direct_allowed(extra: Sequence[str]) -> bool:
    """Whether ``--engine auto`` may leave Beam out: the user gave no Beam option at all.

    Naming a runner (even a local one), its workers or its running mode asks for Beam
    itself; only the default in-process runner, chosen by us, may be replaced.
    """
    return not _without_dry_run(extra)


#: Batches per step on a distributed runner: enough to keep a fleet of workers busy.
DISTRIBUTED_SHARDS = 64


def shard_count(extra: Sequence[str]) -> int:
    """How many batches each step's work is cut into: one per local process, more on a cluster.

    In one process a single batch puts all of a step's work on its thread pool at once;
    local worker processes take two batches each; a distributed runner spreads many.
    """
    if not is_local(extra):
        return DISTRIBUTED_SHARDS
    if is_multiprocess(extra):
        return 2 * max(1, int(_flag_value(extra, "direct_num_workers") or 1))
    return 1
