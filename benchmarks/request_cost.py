"""CPU per registry request: imagepush's client against bare urllib3 and http.client.

Run by hand (not in CI); it needs docker-registry:

    .venv/bin/python benchmarks/request_cost.py                     # 2,000 requests, 3 rounds
    .venv/bin/python benchmarks/request_cost.py --requests 5000 --rounds 5
    .venv/bin/python benchmarks/request_cost.py --against /work/main/.venv/bin/python

A sync of small images is thousands of small requests, so what the client spends per
request sets its CPU per image. Each client HEADs a blob missing from a loopback
Distribution (404, no body) ``--requests`` times on one kept-alive connection, after a
warm-up, and the CPU time of this process (user + system; Distribution is another
process) is divided by the count. The median of ``--rounds`` rounds is printed, in µs:

  imagepush   RegistryClient.request, as blob_exists sends it: limiter, auth (anonymous),
              retry loop, redirects, the wire
  urllib3     HTTPConnectionPool.urlopen, retries and redirects off, body read, released
  http.client one HTTPConnection: request, getresponse, read

``--against PYTHON`` measures the imagepush client once more with another interpreter
(another checkout's venv), against the same registry.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
MISSING = "sha256:" + "0" * 64
REPOSITORY = "bench/app"


def cost(one: Callable[[], None], count: int, rounds: int) -> float:
    """The median over ``rounds`` of this process's CPU µs per call of ``one``."""
    for _ in range(min(200, count)):
        one()
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            one()
        figures.append((time.process_time() - started) / count * 1e6)
    return statistics.median(figures)


def imagepush_client(host: str) -> Callable[[], None]:
    from imagepush.transforms.stores.options import StoreOptions
    from imagepush.transforms.stores.registry.client import RegistryClient
    from imagepush.transforms.stores.registry.upload import blob_exists

    client = RegistryClient(host, StoreOptions(insecure_registries=(host,)))

    def one() -> None:
        assert not blob_exists(client, REPOSITORY, MISSING, f"{host}/{REPOSITORY}")

    return one


def bare_urllib3(host: str) -> Callable[[], None]:
    import urllib3

    name, port = host.rsplit(":", 1)
    pool = urllib3.HTTPConnectionPool(name, int(port), maxsize=1)
    path = f"/v2/{REPOSITORY}/blobs/{MISSING}"

    def one() -> None:
        response = pool.urlopen("HEAD", path, retries=False, redirect=False, preload_content=False)
        response.read()
        response.release_conn()
        assert response.status == 404

    return one


def bare_http_client(host: str) -> Callable[[], None]:
    name, port = host.rsplit(":", 1)
    connection = http.client.HTTPConnection(name, int(port))
    path = f"/v2/{REPOSITORY}/blobs/{MISSING}"

    def one() -> None:
        connection.request("HEAD", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 404

    return one


CLIENTS = {"imagepush": imagepush_client, "urllib3": bare_urllib3, "http.client": bare_http_client}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="PYTHON", help="also measure imagepush's client with this interpreter")
    parser.add_argument("--host", help=argparse.SUPPRESS)  # a registry already running (--against's child)
    parser.add_argument("--only", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host:
        print(f"{cost(CLIENTS[args.only or 'imagepush'](args.host), args.requests, args.rounds):.0f}")
        return 0
    sys.path.insert(0, str(REPO))
    from tests.registry_server import start_registry

    with tempfile.TemporaryDirectory(prefix="request-cost-") as folder:
        registry = start_registry(Path(folder) / "registry")
        try:
            print(f"{args.requests} HEAD requests of a missing blob, median of {args.rounds} rounds, "
                  f"load average {os.getloadavg()[0]:.2f}")
            for name, make in CLIENTS.items():
                print(f"  {name:<24} {cost(make(registry.host), args.requests, args.rounds):6.0f} µs CPU per request")
            if args.against:
                figure = subprocess.run(
                    [args.against, __file__, "--host", registry.host, "--requests", str(args.requests),
                     "--rounds", str(args.rounds)],
                    check=True, capture_output=True, text=True, cwd=folder,
                ).stdout.strip()
                print(f"  {'imagepush (' + Path(args.against).parent.parent.parent.name + ')':<24} "
                      f"{float(figure):6.0f} µs CPU per request")
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
