"""Start-up cost: small jobs with imagepush against skopeo, registry to registry.

Run by hand (not in CI); it needs docker-registry, skopeo and /usr/bin/time:

    .venv/bin/python benchmarks/startup.py                 # both workloads, medians of 5
    .venv/bin/python benchmarks/startup.py --runs 3 --images 0   # the one-image copy only

Two workloads, each against fresh, empty destination registries on loopback:

  one    one small image (two gzip layers, a few KB): ``imagepush copy`` against
         ``skopeo copy``
  many   --images small images (distinct top layers over one shared base) in
         repositories of three tags: one ``imagepush sync`` of the whole source against
         ``skopeo sync`` run once per repository, as its users run it

Runs rotate which tool goes first. Reported per tool: median wall seconds, median
CPU seconds (user + system of the timed process and its children), median peak RSS; then
imagepush's ratios to skopeo. ``--baseline`` names another installation's console
script (an older version) to time in the same runs, interleaved, so that a busy machine
weighs on both alike; its ratios are reported too.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imagepush.pipeline.samples import gz, tar_layer  # noqa: E402
from imagepush.transforms.formats import digest as digestlib  # noqa: E402
from imagepush.transforms.formats import mediatypes as mt  # noqa: E402
from imagepush.transforms.formats.descriptor import Descriptor  # noqa: E402
from imagepush.transforms.formats.jsonio import dumps  # noqa: E402
from imagepush.transforms.stores.base import ManifestBlob, Publication  # noqa: E402
from imagepush.transforms.stores.layout.oci import OCILayoutDestination  # noqa: E402
from tests.registry_server import Registry, start_registry  # noqa: E402

TAGS_PER_REPO = 3


@dataclass
class Timed:
    seconds: float
    cpu: float
    rss_mb: float


def timed(cmd: list[str]) -> Timed:
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}… failed ({proc.returncode}): {proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(m.group(1)) for m in re.finditer(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    return Timed(elapsed, cpu, int(rss.group(1)) / 1024 if rss else float("nan"))


def write_images(layout: Path, names: list[str]) -> None:
    """One small OCI image per name (``repo:tag``): a shared base layer and a layer of its own."""
    dest = OCILayoutDestination(str(layout))
    dest.prepare()
    base_tar = tar_layer({"etc/os-release": b"NAME=bench\n", "bin/hello": b"#!/bin/sh\necho hello\n"})
    base = gz(base_tar)
    base_desc = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(base), len(base))
    dest.put_blob(base_desc, base)
    publications = []
    for name in names:
        top_tar = tar_layer({"srv/id": name.encode()})
        top = gz(top_tar)
        top_desc = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(top), len(top))
        dest.put_blob(top_desc, top)
        config = dumps({"architecture": "amd64", "os": "linux", "config": {"Env": [f"IMAGE={name}"]},
                        "rootfs": {"type": "layers",
                                   "diff_ids": [digestlib.of_bytes(base_tar), digestlib.of_bytes(top_tar)]}})
        config_desc = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(config), len(config))
        dest.put_blob(config_desc, config)
        manifest = dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config_desc.to_dict(),
                          "layers": [base_desc.to_dict(), top_desc.to_dict()]})
        digest = digestlib.of_bytes(manifest)
        dest.put_manifest(ManifestBlob(manifest, mt.OCI_MANIFEST, digest), root=True)
        publications.append(Publication(name, Descriptor(mt.OCI_MANIFEST, digest, len(manifest))))
    dest.publish(publications)


def push(layout: Path, names: list[str], reg: Registry) -> None:
    for name in names:
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{layout}:{name}", f"docker://{reg.host}/bench/{name}"], check=True,
                       capture_output=True)


def fresh(work: Path) -> Registry:
    return start_registry(Path(tempfile.mkdtemp(prefix="dst-", dir=work)))


def stop(reg: Registry) -> None:
    reg.stop()
    shutil.rmtree(reg.root, ignore_errors=True)


def imagepush_cmd(imagepush: str, command: str, src: str, dst: str, hosts: list[str], work: Path) -> list[str]:
    insecure = [a for h in hosts for a in ("--insecure-registry", h)]
    return [imagepush, command, src, dst, *insecure, "--audit", str(work / f"audit-{time.time_ns()}.parquet")]


def order(tools: dict[str, str], run: int) -> list[str]:
    """The tools of one run, rotated by run so that none always goes first."""
    names = list(tools)
    return names[run % len(names):] + names[:run % len(names)]


def one_image(src: Registry, work: Path, tools: dict[str, str], run: int) -> dict[str, Timed]:
    out = {}
    for tool in order(tools, run):
        dst = fresh(work)
        try:
            if tool != "skopeo":
                out[tool] = timed(imagepush_cmd(tools[tool], "copy", f"docker://{src.host}/bench/one:1",
                                                f"docker://{dst.host}/bench/one:1", [src.host, dst.host], work))
            else:
                out[tool] = timed(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                                   "--dest-tls-verify=false", f"docker://{src.host}/bench/one:1",
                                   f"docker://{dst.host}/bench/one:1"])
        finally:
            stop(dst)
    return out


def many_images(src: Registry, repos: list[str], work: Path, tools: dict[str, str], run: int) -> dict[str, Timed]:
    out = {}
    for tool in order(tools, run):
        dst = fresh(work)
        try:
            if tool != "skopeo":
                out[tool] = timed(imagepush_cmd(tools[tool], "sync", f"docker://{src.host}/bench/many",
                                                f"docker://{dst.host}/mirror", [src.host, dst.host], work))
            else:
                parts = [timed(["skopeo", "--insecure-policy", "sync", "--src", "docker", "--dest", "docker",
                                "--src-tls-verify=false", "--dest-tls-verify=false",
                                f"{src.host}/bench/{repo}", f"{dst.host}/mirror"]) for repo in repos]
                out[tool] = Timed(sum(p.seconds for p in parts), sum(p.cpu for p in parts),
                                  max(p.rss_mb for p in parts))
        finally:
            stop(dst)
    return out


def report(title: str, runs: list[dict[str, Timed]]) -> None:
    med = {tool: Timed(statistics.median(r[tool].seconds for r in runs),
                       statistics.median(r[tool].cpu for r in runs),
                       statistics.median(r[tool].rss_mb for r in runs)) for tool in runs[0]}
    print(f"\n{title} (medians of {len(runs)})")
    for tool, t in sorted(med.items()):
        walls = " ".join(f"{r[tool].seconds:.2f}" for r in runs)
        print(f"  {tool:9}  wall {t.seconds:6.2f} s   cpu {t.cpu:6.2f} s   peak rss {t.rss_mb:6.0f} MB   (runs {walls})")
    ip = med["imagepush"]
    for other in sorted(set(med) - {"imagepush"}):
        o = med[other]
        print(f"  imagepush/{other}: wall x{ip.seconds / o.seconds:.2f}, cpu x{ip.cpu / max(o.cpu, 1e-3):.2f}, "
              f"rss x{ip.rss_mb / o.rss_mb:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=30, help="images of the second workload (0: skip it)")
    parser.add_argument("--imagepush", default=str(Path(sys.executable).with_name("imagepush")),
                        help="the imagepush console script to time (default: this interpreter's)")
    parser.add_argument("--baseline", help="another imagepush console script to time in the same runs")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "/usr/bin/time"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    tools = {"imagepush": args.imagepush, "skopeo": "skopeo"}
    if args.baseline:
        tools["baseline"] = args.baseline
    work = Path(tempfile.mkdtemp(prefix="imagepush-startup-"))
    try:
        many = [f"many/r{i // TAGS_PER_REPO:02d}:t{i % TAGS_PER_REPO}" for i in range(args.images)]
        layout = work / "layout"
        write_images(layout, ["one:1", *many])
        src = start_registry(work / "source")
        try:
            push(layout, ["one:1", *many], src)
            runs = [one_image(src, work, tools, i) for i in range(args.runs)]
            report("one small image, registry -> registry: imagepush copy vs skopeo copy", runs)
            if many:
                repos = sorted({name.split(":")[0] for name in many})
                runs = [many_images(src, repos, work, tools, i) for i in range(args.runs)]
                report(f"{len(many)} small images in {len(repos)} repositories: imagepush sync vs "
                       f"skopeo sync per repository", runs)
        finally:
            src.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
