"""A real Dask distributed cluster on loopback: one ``dask scheduler``, two worker processes.

The processes are the ones a user starts (``dask scheduler``, ``dask worker``), each in a
process group of its own so that stopping it by PID also stops the nanny's worker
processes. Workers get their environment when they start: whatever a run needs on the
workers (object store endpoints and keys, registry auth files) is given here, as it
would be on a real cluster, never through the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.registry_server import LOOPBACK, free_port

#: Seconds to wait for the scheduler to answer and both workers to register.
START_TIMEOUT = 90


@dataclass
class DaskCluster:
    address: str
    processes: list[subprocess.Popen]
    logs: Path

    def worker_addresses(self) -> list[str]:
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return sorted(client.scheduler_info(n_workers=-1)["workers"])


def _dask_command() -> list[str]:
    """The ``dask`` CLI of this interpreter's environment; a missing one fails under CI=true."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("dask[distributed] is required under CI=true but is not installed")
        pytest.skip("dask[distributed] is not installed")
    beside = Path(sys.executable).parent / "dask"  # the CLI installed with this interpreter's dask
    return [str(beside)] if beside.exists() else [require_tool("dask")]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started, by its leader's PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def dask_cluster(logs: Path, env: Mapping[str, str] | None = None, workers: int = 2) -> Iterator[DaskCluster]:
    """A scheduler and ``workers`` single-threaded worker processes, until the block ends."""
    dask = _dask_command()
    logs.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **(env or {})}
    port = free_port()
    address = f"tcp://{LOOPBACK}:{port}"
    processes: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (the process owns it)
        processes.append(subprocess.Popen(
            [*dask, *args], stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=logs,
            start_new_session=True,
        ))
        log.close()

    try:
        start("scheduler", ["scheduler", "--host", LOOPBACK, "--port", str(port), "--no-dashboard"])
        start("workers", ["worker", address, "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard",
                          "--host", LOOPBACK, "--local-directory", str(logs / "work")])
        from distributed import Client

        try:
            with Client(address, timeout=START_TIMEOUT) as client:
                client.wait_for_workers(workers, timeout=START_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            text = "\n".join((logs / f).read_text(errors="replace")[-1500:] for f in ("scheduler.log", "workers.log"))
            pytest.fail(f"the Dask cluster did not start: {exc}\n{text}")
        yield DaskCluster(address, processes, logs)
    finally:
        for proc in reversed(processes):
            _stop(proc)
