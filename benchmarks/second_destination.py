"""What a second registry destination costs imagepush's process, split into bytes and requests.

Run by hand (not in CI); it needs docker-registry:

    .venv/bin/python benchmarks/second_destination.py                 # 1600 MiB blob, 3 runs
    .venv/bin/python benchmarks/second_destination.py --mib 400 --runs 1

Issue 14 asks two destinations to cost at most 1.3x the CPU of one. A second registry
destination adds two kinds of work: per byte, one more streamed send of what was read
once (``stream_blob`` into one more ``RegistryBlobSink``, its upload thread, the socket);
per blob and image, its own requests (HEAD, POST, PUT, manifests). This measures both in
this process against real Distribution registries on loopback, with the CPU of the
registries left out:

* bytes: one blob of ``--mib`` MiB streamed into one, then two destinations; the
  difference is the second sink's CPU per GB (compare with the floor of a plain
  loopback send, ``benchmarks/loopback_send.py``);
* requests: a HEAD of an absent blob, and a small blob's whole upload (HEAD, POST, PUT),
  CPU per request.

CPU is the process's user and system time (``getrusage``), so the upload threads count.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imagepush.transforms.engine.streaming import DEFAULT_CHUNK, stream_blob  # noqa: E402
from imagepush.transforms.formats import mediatypes as mt  # noqa: E402
from imagepush.transforms.formats.descriptor import Descriptor  # noqa: E402
from imagepush.transforms.stores.options import StoreOptions  # noqa: E402
from imagepush.transforms.stores.registry.destination import RegistryDestination  # noqa: E402
from tests.registry_server import start_registry  # noqa: E402

MiB = 1 << 20


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class RepeatingSource:
    """``size`` bytes made of one random block repeated; each read returns new bytes, as a source's read does."""

    def __init__(self, block: bytes, size: int) -> None:
        self._view = memoryview(block)
        self._size = size
        self._at = 0

    def read(self, n: int) -> bytes:
        offset = self._at % len(self._view)
        n = min(n, self._size - self._at, len(self._view) - offset)
        self._at += n
        return bytes(self._view[offset:offset + n])


def stream_into(dests: list[RegistryDestination], block: bytes, size: int, digest: str, chunk: int) -> tuple[float, float]:
    """(user, system) CPU-s of streaming the blob into every destination at once."""
    descriptor = Descriptor(mt.OCI_LAYER_GZIP, digest, size)
    u0, s0 = cpu()
    outcome = stream_blob(RepeatingSource(block, size), digest, size,
                          [d.blob_sink(descriptor) for d in dests], chunk_size=chunk)
    u1, s1 = cpu()
    if outcome.sink_errors:
        raise SystemExit(f"upload failed: {outcome.sink_errors}")
    return u1 - u0, s1 - s0


def per_request(dest: RegistryDestination, count: int) -> tuple[float, float]:
    """CPU-ms per HEAD of an absent blob, and per request of a small blob's upload (HEAD, POST, PUT)."""
    c0 = sum(cpu())
    for i in range(count):
        dest.has_blob(f"sha256:{i:064x}")
    c1 = sum(cpu())
    for i in range(count):
        data = f"config {i} {time.time_ns()}".encode()
        descriptor = Descriptor(mt.OCI_CONFIG, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        if not dest.has_blob(descriptor.digest):
            sink = dest.blob_sink(descriptor)
            sink.write(data)
            sink.commit()
    c2 = sum(cpu())
    return 1000 * (c1 - c0) / count, 1000 * (c2 - c1) / (3 * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1600, help="size of the streamed blob")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="read and send size")
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind timed")
    args = parser.parse_args()
    if not shutil.which("docker-registry"):
        raise SystemExit("docker-registry is needed: apt-get install docker-registry")
    block = os.urandom(16 * MiB)
    size = args.mib * MiB
    h = hashlib.sha256()
    for at in range(0, size, len(block)):
        h.update(block[: min(len(block), size - at)])
    digest = "sha256:" + h.hexdigest()
    work = Path(tempfile.mkdtemp(prefix="imagepush-second-destination-"))
    registries = [start_registry(work / f"registry-{i}") for i in range(2)]
    try:
        options = StoreOptions(insecure_registries=tuple(r.host for r in registries))
        one, two = [], []
        for run in range(args.runs):
            for n, into in ((1, one), (2, two)) if run % 2 == 0 else ((2, two), (1, one)):
                dests = [RegistryDestination(f"{r.host}/run{run}-of-{n}", options) for r in registries[:n]]
                for d in dests:
                    d.has_blob(digest)  # connections and sessions open before timing
                into.append(stream_into(dests, block, size, digest, args.chunk))
        gb = size / 1e9
        print(f"second destination on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
              f"{args.mib} MiB in {args.chunk // 1024} KiB chunks, medians of {args.runs}:")
        for label, runs in (("one destination", one), ("two destinations", two)):
            u = statistics.median(r[0] for r in runs)
            s = statistics.median(r[1] for r in runs)
            print(f"  {label:17s} {u + s:.3f} CPU-s (user {u:.3f}, system {s:.3f}); runs "
                  + " ".join(f"{a + b:.3f}" for a, b in runs))
        extra = statistics.median(sum(b) - sum(a) for a, b in zip(one, two))
        extra_sys = statistics.median(b[1] - a[1] for a, b in zip(one, two))
        print(f"  the second sink: {extra:.3f} CPU-s = {extra / gb:.3f} CPU-s/GB (system {extra_sys / gb:.3f})")
        dest = RegistryDestination(f"{registries[0].host}/requests", options)
        dest.has_blob(digest)
        head, upload = per_request(dest, args.requests)
        print(f"  requests: {head:.2f} CPU-ms per HEAD, {upload:.2f} CPU-ms per request of a small "
              f"blob's upload (HEAD + POST + PUT)")
    finally:
        for r in registries:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
