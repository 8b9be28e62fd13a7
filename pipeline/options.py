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


def beam_argv(extra: Sequence[str]) -> list[str]:
    """The user's Beam flags with our default runner filled in."""
    args = list(extra)
    if _flag_value(args, "runner") is None:
        args.append(f"--runner={DEFAULT_RUNNER}")
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


def is_local(extra: Sequence[str]) -> bool:
    return runner_name(extra).rsplit(".", 1)[-1].lower() in LOCAL_RUNNERS


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
            self._parser.parse_known_args(list(flags))
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
