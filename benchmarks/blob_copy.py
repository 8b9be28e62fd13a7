"""The CPU of imagepush's blob data path alone, registry to registry, per GB copied.

Run by hand (not in CI); it needs what ``sync_vs_skopeo.py`` needs and reuses its
workloads (built and pushed once, kept under --work):

    .venv/bin/python benchmarks/blob_copy.py --workload e --runs 3
    .venv/bin/python benchmarks/blob_copy.py --workload e --destinations 2

A whole ``imagepush sync`` also pays for Python and Beam start-up, planning and
manifests, which do not grow with the bytes. This copies every layer and config of the
workload's images (each once per repository, largest first, on ``--parallel`` threads as
the pipeline does) from the source registry into fresh destination registries through
the stores and the copy engine only (``RegistrySource.open_blob`` -> ``stream_blob`` ->
``RegistryBlobSink``), and reports this process's CPU per GB (``getrusage``), its peak
RSS, and the registries' CPU in the same time (``/proc/PID/stat``). The registries share
the cores with the copier, so their CPU-s divided by the cores is the floor of the wall
time; the copier's own CPU-s per GB is what the data path can change.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from sync_vs_skopeo import fresh_registry, populate_source, registries_cpu, settle, stop  # noqa: E402

from imagepush.transforms.engine.streaming import stream_blob  # noqa: E402
from imagepush.transforms.formats.descriptor import Descriptor  # noqa: E402
from imagepush.transforms.stores.options import StoreOptions  # noqa: E402
from imagepush.transforms.stores.registry.client import ClientPool  # noqa: E402
from imagepush.transforms.stores.registry.destination import RegistryDestination  # noqa: E402
from imagepush.transforms.stores.registry.source import RegistrySource  # noqa: E402


@dataclass(frozen=True)
class Blob:
    repository: str
    descriptor: Descriptor


def workload_blobs(layout: Path) -> list[Blob]:
    """Every layer and config of the layout's ``repoNN-tN`` images, once per repository, largest first."""
    def blob(digest: str) -> dict:
        return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())

    found: dict[tuple[str, str], Blob] = {}
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        name = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        if "-t" not in name:
            continue  # a base image, not one of the workload's tags
        repository = name.split("-t")[0]
        manifest = blob(entry["digest"])
        for d in [manifest["config"], *manifest["layers"]]:
            found[(repository, d["digest"])] = Blob(repository, Descriptor(d["mediaType"], d["digest"], d["size"]))
    return sorted(found.values(), key=lambda b: -b.descriptor.size)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Measured:
    seconds: float
    cpu: float
    registries_cpu: float


def copy_all(src_host: str, dst_hosts: list[str], blobs: list[Blob], parallel: int) -> None:
    options = StoreOptions(insecure_registries=(src_host, *dst_hosts))
    clients = ClientPool(options)

    def one(b: Blob) -> None:
        source = RegistrySource(f"{src_host}/bench/{b.repository}", options, clients=clients)
        sinks = [RegistryDestination(f"{host}/mirror/{b.repository}", options, clients=clients).blob_sink(b.descriptor)
                 for host in dst_hosts]
        with source.open_blob(b.descriptor.digest) as reader:
            outcome = stream_blob(reader, b.descriptor.digest, b.descriptor.size, sinks)
        if outcome.sink_errors:
            raise SystemExit(f"blob {b.descriptor.digest}: {outcome.sink_errors}")

    try:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, blobs))
    finally:
        clients.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="e", choices=["a", "e"])
    parser.add_argument("--destinations", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/imagepush-bench"))
    args = parser.parse_args()

    src, _ = populate_source(args.work, args.workload)
    blobs = workload_blobs(args.work / f"layout-{args.workload}")
    gb = sum(b.descriptor.size for b in blobs) / 1e9
    runs: list[Measured] = []
    try:
        for _ in range(args.runs):
            dsts = [fresh_registry(args.work) for _ in range(args.destinations)]
            settle()
            try:
                regs, cpu, start = registries_cpu([src, *dsts]), cpu_seconds(), time.monotonic()
                copy_all(src.host, [d.host for d in dsts], blobs, args.parallel)
                runs.append(Measured(time.monotonic() - start, cpu_seconds() - cpu,
                                     registries_cpu([src, *dsts]) - regs))
            finally:
                for d in dsts:
                    stop(d)
    finally:
        src.stop()
    cpu = statistics.median(r.cpu for r in runs)
    wall = statistics.median(r.seconds for r in runs)
    regs = statistics.median(r.registries_cpu for r in runs)
    floor = regs / (os.cpu_count() or 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[{args.workload} blobs -> {args.destinations} destination(s)] {len(blobs)} blobs, {gb:.2f} GB: "
          f"{wall:.1f}s, {cpu:.2f} CPU-s = {cpu / gb:.2f} CPU-s/GB, peak RSS {rss:.0f} MB; registries "
          f"{regs:.1f} CPU-s, floor {floor:.1f}s, run / floor {wall / floor:.2f}")
    print("    runs: " + " ".join(f"{r.seconds:.1f}s/{r.cpu:.2f}" for r in runs), flush=True)


if __name__ == "__main__":
    main()
