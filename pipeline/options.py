"""Beam pipeline options for imagepush runs: an explicit, offline-safe local runner.

Beam 2.77's ``DirectRunner`` first tries to download the Prism runner binary; with no
internet that costs a timeout and a logged error before it falls back. Unless the user
names a runner, we use the FnApiRunner directly, which runs in-process and honours
``--direct_num_workers`` and ``--direct_running_mode``.

Parallelism does not come from Beam's local modes by default: each I/O step runs its
elements on a bounded thread pool of its own (``--parallel``), which on two cores costs
far less CPU than the gRPC plumbing of ``multi_threading`` bundles.
"""

from __future__ import annotations

DEFAULT_RUNNER = "FnApiRunner"


def _has_flag(args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def beam_argv(extra: list[str]) -> list[str]:
    """The user's Beam flags with our defaults filled in."""
    args = list(extra)
    if not _has_flag(args, "runner"):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return args


def pipeline_options(extra: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(beam_argv(extra))


def runner_name(extra: list[str]) -> str:
    return runner_name_of(beam_argv(extra))


def runner_name_of(args: list[str]) -> str:
    for i, a in enumerate(args):
        if a.startswith("--runner="):
            return a.split("=", 1)[1]
        if a == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return DEFAULT_RUNNER


def is_multiprocess(extra: list[str]) -> bool:
    args = beam_argv(extra)
    return "multi_processing" in args or "--direct_running_mode=multi_processing" in args
