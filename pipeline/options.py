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

import logging

DEFAULT_RUNNER = "FnApiRunner"


def _has_flag(args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def beam_argv(extra: list[str]) -> list[str]:
    """The user's Beam flags with our defaults filled in."""
    args = list(extra)
    if not _has_flag(args, "runner"):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return args


class UnknownBeamOption(ValueError):
    """An option neither imagepush nor Beam knows (a typo Beam would silently drop)."""


class _Discarded(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unparseable args" in record.getMessage():
            self.messages.append(record.getMessage())


def pipeline_options(extra: list[str]):
    """Beam's options for this run; an option Beam does not know is an error, not a warning."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(beam_argv(extra))
    handler = _Discarded()
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    saved = beam_log.level, beam_log.propagate
    beam_log.addHandler(handler)
    beam_log.setLevel(logging.WARNING)  # heard here, not printed (the CLI quiets Beam)
    beam_log.propagate = False
    try:
        options.get_all_options()
    finally:
        beam_log.removeHandler(handler)
        beam_log.setLevel(saved[0])
        beam_log.propagate = saved[1]
    if handler.messages:
        raise UnknownBeamOption(handler.messages[0].replace("Discarding unparseable args", "unknown options"))
    return options


def is_multiprocess(extra: list[str]) -> bool:
    args = beam_argv(extra)
    return "multi_processing" in args or "--direct_running_mode=multi_processing" in args


#: Runners that run the pipeline on this machine, in this process or its children.
LOCAL_RUNNERS = frozenset({"fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner", "prismrunner"})


def runner_name(extra: list[str]) -> str:
    """The runner the Beam flags name (the last one wins, as in Beam), or our default."""
    name = DEFAULT_RUNNER
    for i, arg in enumerate(extra):
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
        elif arg == "--runner" and i + 1 < len(extra):
            name = extra[i + 1]
    return name


def is_local(extra: list[str]) -> bool:
    return runner_name(extra).rsplit(".", 1)[-1].lower() in LOCAL_RUNNERS
