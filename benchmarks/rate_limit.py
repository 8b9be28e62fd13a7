"""imagepush sync into a rate-limited registry: the adaptive request limit against a fixed one.

Run by hand (not in CI); it needs docker-registry:

    .venv/bin/python benchmarks/rate_limit.py                      # 40 images, 50 requests/s, 3 runs
    .venv/bin/python benchmarks/rate_limit.py --images 60 --rps 30 --runs 1
    .venv/bin/python benchmarks/rate_limit.py --latency 0.05        # a distant registry

A source Distribution holds --images small images (two random layers each, written
straight into its storage). Each run syncs them into a fresh destination Distribution
behind a local proxy (tests/http_proxy.py) that answers 429 with ``Retry-After: 1``
once more than --rps requests reached the destination in the last second, as a
rate-limited registry does; --latency delays every destination request, as distance
does (on loopback even one request at a time can outrun a per-second limit). Modes,
alternating in order between runs:

  adaptive   the default: the limit starts at a quarter of --registry-concurrency 8
             and adapts to the 429s
  fixed      --registry-concurrency-fixed: 8 requests at once from the start
  paced      the default plus --registry-rps set just under the registry's limit

Each run reports its wall time and how many requests the registry refused; the medians
over --runs are printed at the end. A run counts only if imagepush exits 0 and every
image is then at the destination with its digest (read back over plain HTTP).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.http_proxy import HTTPProxy, RateLimit  # noqa: E402
from tests.registry_server import Registry, start_registry, write_registry_storage  # noqa: E402

IMAGEPUSH = [str(Path(sys.executable).with_name("imagepush"))]
V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_images(storage: Path, count: int) -> dict[str, str]:
    """``count`` images ``bench/appNN:1`` in a Distribution storage tree: name:tag -> manifest digest."""
    rng = random.Random(count)
    fs = fsspec.filesystem("file")
    written = {}
    for i in range(count):
        layers = [rng.randbytes(16_000 + 31 * i), rng.randbytes(40_000 + 17 * i)]
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Env": [f"IMAGE={i}"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(b"plain" + layer[:64]) for layer in layers]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": V2S2,
            "config": {"mediaType": CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha256(layer), "size": len(layer)} for layer in layers],
        }).encode()
        write_registry_storage(fs, str(storage), f"bench/app{i:02d}:1", [config, *layers], [manifest])
        written[f"app{i:02d}:1"] = sha256(manifest)
    return written


def check_copy(dst: Registry, want: dict[str, str]) -> None:
    """Every image is at the destination with its digest: timing a wrong copy is pointless."""
    with requests.Session() as session:
        session.trust_env = False
        for name, digest in want.items():
            repository, tag = name.rsplit(":", 1)
            answer = session.head(f"http://{dst.host}/v2/mirror/{repository}/manifests/{tag}",
                                  headers={"Accept": V2S2}, timeout=30)
            if answer.headers.get("Docker-Content-Digest") != digest:
                raise SystemExit(f"mirror/{name} at the destination is {answer.status_code} "
                                 f"{answer.headers.get('Docker-Content-Digest')}, not {digest}")


@dataclass
class Run:
    mode: str
    seconds: float
    refused: int
    lowered: int
    #: Requests that reached the proxy for the destination, refused ones included.
    requests: int


def sync_once(mode: str, src: Registry, work: Path, rps: int, latency: float, want: dict[str, str]) -> Run:
    dst = start_registry(work / f"dst-{mode}-{time.time_ns()}")
    proxy = HTTPProxy(rate_limit=RateLimit(per_second=rps, host=dst.host, retry_after=1, latency=latency)).start()
    extra = {"adaptive": [], "fixed": ["--registry-concurrency-fixed"],
             "paced": ["--registry-rps", str(max(1, rps - 5))]}[mode]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["HTTP_PROXY"] = proxy.url
    audit = work / f"audit-{time.time_ns()}.parquet"
    cmd = [*IMAGEPUSH, "sync", f"docker://{src.host}/bench", f"docker://{dst.host}/mirror",
           "--insecure-registry", src.host, "--insecure-registry", dst.host, "--registry-concurrency", "8",
           "--audit", str(audit), *extra]
    try:
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"{mode}: imagepush exited {proc.returncode}: {proc.stderr[-3000:]}")
        check_copy(dst, want)
        lowered = proc.stderr.count(" is overloaded: now ")
        sent = sum(1 for seen in proxy.seen if dst.host in seen.target)
        return Run(mode, seconds, proxy.injected["rate"], lowered, sent)
    finally:
        proxy.stop()
        dst.stop()
        audit.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rps", type=int, default=50, help="requests per second the destination accepts")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds added to every destination request (a distant registry)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="adaptive,fixed,paced")
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="imagepush-rate-") as tmp:
        work = Path(tmp)
        want = write_images(work / "src" / "storage", args.images)
        src = start_registry(work / "src")
        runs: list[Run] = []
        try:
            for i in range(args.runs):
                order = modes[i % len(modes):] + modes[: i % len(modes)]
                for mode in order:
                    run = sync_once(mode, src, work, args.rps, args.latency, want)
                    runs.append(run)
                    print(f"run {i + 1} {mode:8s} {run.seconds:6.1f}s  {run.refused:4d} x 429  "
                          f"{run.requests:4d} requests  limit lowered {run.lowered}x", flush=True)
        finally:
            src.stop()
    print(f"\n{args.images} images (2 layers each) into a registry accepting {args.rps} requests/s, "
          f"{args.latency * 1000:.0f} ms added per request; median of {args.runs} run(s):")
    for mode in modes:
        mine = [r for r in runs if r.mode == mode]
        print(f"  {mode:8s} {statistics.median(r.seconds for r in mine):6.1f}s  "
              f"{statistics.median(r.refused for r in mine):6.0f} x 429")


if __name__ == "__main__":
    main()
