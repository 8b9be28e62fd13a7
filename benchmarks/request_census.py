"""How many requests of each kind one registry-to-registry sync sends to each registry.

Run by hand (not in CI), after ``sync_vs_skopeo.py`` has built and cached the workload's
source registry under --work (it needs docker-registry; building a workload also needs
skopeo and umoci):

    .venv/bin/python benchmarks/request_census.py --workload b
    .venv/bin/python benchmarks/request_census.py --workload b --imagepush OTHER/bin/imagepush

One ``imagepush sync --debug`` of the workload into a fresh Distribution; its trace lines
(``imagepush: METHOD URL -> STATUS``, one per answer, retries included) are counted per
registry and per kind: the method, what the path names (tag list, manifest, blob, upload
session), the query's parameter names and the status. Each registry's share of a sync's
CPU on a small machine grows with these counts, so this is what to compare when changing
which questions a copy asks.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sync_vs_skopeo import IMAGEPUSH, fresh_registry, populate_source, stop  # noqa: E402

TRACE = re.compile(r"imagepush: ([A-Z]+) (\S+) -> (\d+)$")
#: What a registry API path names, most specific first.
PATH_KINDS = (
    (re.compile(r"^/v2/$"), "/v2/"),
    (re.compile(r"/tags/list$"), "tags/list"),
    (re.compile(r"/manifests/[^/]+$"), "manifests"),
    (re.compile(r"/blobs/uploads/[^/]+$"), "uploads/SESSION"),
    (re.compile(r"/blobs/uploads/$"), "uploads"),
    (re.compile(r"/blobs/[^/]+$"), "blobs"),
)


def kind_of(method: str, url: str, status: str) -> tuple[str, str]:
    """(host, ``METHOD kind[?params] -> status``) of one traced request."""
    parts = urlsplit(url)
    kind = next((name for pattern, name in PATH_KINDS if pattern.search(parts.path)), parts.path)
    params = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)} - {"_state", "n"})
    query = "?" + "&".join(params) if params else ""
    if method == "POST" and kind == "uploads" and status == "201":
        kind = "uploads (mount)"  # only a mount answers a POST with 201 (the trace may omit its query)
    return parts.netloc, f"{method} {kind}{query} -> {status}"


def census(lines: list[str]) -> dict[str, collections.Counter[str]]:
    """Requests per kind, per host, from a run's stderr."""
    hosts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in lines:
        m = TRACE.search(line)
        if m:
            host, kind = kind_of(*m.groups())
            hosts[host][kind] += 1
    return hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="b", choices=["a", "b", "e"])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/imagepush-bench"))
    parser.add_argument("--imagepush", default=IMAGEPUSH[0], help="the imagepush executable to count")
    parser.add_argument("imagepush_args", nargs="*", help="extra imagepush options (after --)")
    args = parser.parse_args()
    src, workload = populate_source(args.work, args.workload)
    dst = fresh_registry(args.work)
    try:
        cmd = [args.imagepush, "sync", f"docker://{src.host}/bench", f"docker://{dst.host}/mirror",
               "--insecure-registry", src.host, "--insecure-registry", dst.host, "--debug", "-q",
               *args.imagepush_args]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"imagepush failed ({proc.returncode}): {proc.stderr[-2000:]}")
    finally:
        stop(dst)
        src.stop()
    counts = census(proc.stderr.splitlines())
    images = len(workload.images)
    print(f"{args.imagepush} sync of workload {args.workload} ({images} images) in {seconds:.1f}s, "
          f"load average {os.getloadavg()[0]:.2f}")
    total = 0
    for host, role in ((dst.host, "destination"), (src.host, "source")):
        kinds = counts.get(host, collections.Counter())
        n = sum(kinds.values())
        total += n
        print(f"{role} ({host}): {n} requests, {n / images:.2f} per image")
        for kind, count in sorted(kinds.items()):
            print(f"  {count:6d}  {kind}")
    print(f"all: {total} requests, {total / images:.2f} per image")


if __name__ == "__main__":
    main()
