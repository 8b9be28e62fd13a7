"""imagepush sync against skopeo sync, registry to registry, on real Docker Distribution.

Run by hand (not in CI); it needs docker-registry, skopeo, umoci and /usr/bin/time:

    .venv/bin/python benchmarks/sync_vs_skopeo.py                  # all workloads, 3 runs each
    .venv/bin/python benchmarks/sync_vs_skopeo.py --workload b --runs 1

Workloads are built once with umoci from real files on this machine and pushed with
skopeo into a source registry kept under --work:

  a  60 repositories x 3 tags over 4 shared base layers (>= 1 GB compressed)
  b  400 tiny images in 200 repositories
  c  workload a into two destination registries in one imagepush run
  d  one image with a single multi-GB layer (memory check)
  e  20 repositories x 3 tags, each repository on its own large layer (16-167 MB of
     gzip here, 1.6 GB in all, each large layer copied once): the cost per byte
  f  workload e into two destination registries in one imagepush run

Each run starts fresh destination registries (empty storage). skopeo is run as its users
run it, ``skopeo sync --src docker --dest docker`` once per repository; imagepush runs one
``imagepush sync`` over the whole source (``--skopeo-parallel 4`` also times skopeo run four
repositories at a time, as a user scripts it to go faster). Runs alternate which tool goes first and the
medians of --runs are reported, with imagepush's peak RSS from ``/usr/bin/time -v`` and,
for workload a, the time of a rerun onto each finished destination. CPU is also given
per GB of the workload's blobs, next to the CPU the registries burnt in the same run (read
from ``/proc/PID/stat``): on this machine they share the cores with the copier, so their
CPU-s divided by the cores is a floor no copier can beat, and the copier's own
CPU-s per GB is what it can change. After every run
(untimed) each destination is read back over plain HTTP: every source tag must be there
with its digest, for either tool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.registry_server import Registry, start_registry  # noqa: E402

IMAGEPUSH = [str(Path(sys.executable).with_name("imagepush"))]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def pick_dirs(target_bytes: int, count: int, exclude: set[Path]) -> list[list[Path]]:
    """Directories of real files near ``target_bytes`` each, for base layers."""
    candidates = []
    for root in (Path("/usr/lib"), Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/share"), Path(sys.prefix) / "lib"):
        if not root.is_dir():
            continue
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink() and child not in exclude:
                candidates.append(child)
    sized = sorted(((dir_size(c), c) for c in candidates), reverse=True)
    chosen: list[list[Path]] = [[] for _ in range(count)]
    totals = [0] * count
    for size, path in sized:
        i = min(range(count), key=lambda k: totals[k])
        if totals[i] >= target_bytes:
            break
        if size > target_bytes * 1.5:
            continue
        chosen[i].append(path)
        totals[i] += size
    return chosen


@dataclass
class Workload:
    name: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (repo, tag)

    @property
    def repos(self) -> list[str]:
        return sorted({r for r, _ in self.images})


def _app_files(seed: int, nbytes: int, out: Path) -> None:
    """Copy real files from /usr/bin (chosen by seed) plus one unique file into ``out``."""
    out.mkdir(parents=True)
    files = sorted(p for p in Path("/usr/bin").iterdir() if p.is_file() and not p.is_symlink())
    total, i = 0, seed * 7
    while total < nbytes:
        src = files[i % len(files)]
        shutil.copyfile(src, out / f"{i}-{src.name}")
        total += src.stat().st_size
        i += 1
    (out / "build-id").write_text(f"image {seed}\n")


#: Workload e: one large layer per repository, compressed sizes spread over this range.
LARGE_REPOS, LARGE_MIN, LARGE_MAX = 20, 20 << 20, 90 << 20
#: What gzip leaves of /usr/lib's files (measured: about 0.33), to aim at compressed sizes.
LIB_GZIP_RATIO = 0.33


def _large_layer_files(repo: int, out: Path) -> None:
    """Real files for repository ``repo``'s own layer, hard-linked (copied across devices) into ``out``.

    Each repository takes a different window of /usr/lib, sized so that its gzip layer
    lands between LARGE_MIN and LARGE_MAX, plus a file naming it, so no two layers share
    a digest.
    """
    files = sorted(p for p in Path("/usr/lib").rglob("*")
                   if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size < 16 << 20)
    target = (LARGE_MIN + (LARGE_MAX - LARGE_MIN) * repo // (LARGE_REPOS - 1)) / LIB_GZIP_RATIO
    out.mkdir(parents=True)
    total, i = 0, repo * len(files) // LARGE_REPOS
    while total < target:
        src = files[i % len(files)]
        dst = out / f"{i}-{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        total += src.stat().st_size
        i += 1
    (out / "layer-id").write_text(f"large layer {repo}\n")


def build_layout(work: Path, name: str) -> Path:
    layout = work / f"layout-{name}"
    if (layout / "index.json").exists():
        return layout
    tmp = work / f"build-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(layout, ignore_errors=True)
    sh(["umoci", "init", "--layout", str(layout)])
    if name == "a":
        groups = pick_dirs(500 << 20, 4, set())
        for k, dirs in enumerate(groups):
            sh(["umoci", "new", "--image", f"{layout}:base{k}"])
            for d in dirs:
                sh(["umoci", "insert", "--rootless", "--image", f"{layout}:base{k}", str(d), f"/base/{d.name}"])
            for repo in range(k, 60, 4):
                for tag in range(3):
                    app = tmp / f"app-{repo}-{tag}"
                    _app_files(repo * 3 + tag, 1_500_000, app)
                    sh(["umoci", "insert", "--rootless", "--image", f"{layout}:base{k}",
                        "--tag", f"repo{repo:02d}-t{tag}", str(app), "/app"])
    elif name == "b":
        base = tmp / "base"
        _app_files(9999, 200_000, base)
        sh(["umoci", "new", "--image", f"{layout}:base"])
        sh(["umoci", "insert", "--rootless", "--image", f"{layout}:base", str(base), "/base"])
        for repo in range(200):
            for tag in range(2):
                app = tmp / f"app-{repo}-{tag}"
                app.mkdir(parents=True)
                (app / "id").write_text(f"tiny {repo} {tag}\n")
                sh(["umoci", "insert", "--rootless", "--image", f"{layout}:base",
                    "--tag", f"repo{repo:03d}-t{tag}", str(app), "/app"])
    elif name == "e":
        for repo in range(LARGE_REPOS):
            base = f"{layout}:large{repo}"
            sh(["umoci", "new", "--image", base])
            _large_layer_files(repo, tmp / f"large-{repo}")
            sh(["umoci", "insert", "--rootless", "--image", base, str(tmp / f"large-{repo}"), "/large"])
            shutil.rmtree(tmp / f"large-{repo}")
            for tag in range(3):
                app = tmp / f"app-{repo}-{tag}"
                _app_files(1000 + repo * 3 + tag, 1_500_000, app)
                sh(["umoci", "insert", "--rootless", "--image", base,
                    "--tag", f"repo{repo:02d}-t{tag}", str(app), "/app"])
    elif name == "d":
        big = pick_dirs(2 << 30, 1, set())[0]
        sh(["umoci", "new", "--image", f"{layout}:big"])
        stage = tmp / "big"
        stage.mkdir(parents=True)
        for d in big:
            sh(["cp", "-a", str(d), str(stage / d.name)])
        sh(["umoci", "insert", "--rootless", "--image", f"{layout}:big", str(stage), "/big"])
    shutil.rmtree(tmp, ignore_errors=True)
    return layout


def workload_images(layout: Path, name: str) -> Workload:
    tags = sh(["umoci", "ls", "--layout", str(layout)]).stdout.split()
    w = Workload(name)
    for tag in tags:
        m = re.match(r"^(repo\d+)-(t\d+)$", tag)
        if m:
            w.images.append((m.group(1), m.group(2)))
        elif name == "d" and tag == "big":
            w.images.append(("big", "latest"))
    return w


def populate_source(work: Path, name: str) -> tuple[Registry, Workload]:
    """A source registry holding the workload; its storage is kept between benchmark runs."""
    root = work / f"source-{name}"
    done = root / "populated"
    layout = build_layout(work, name)
    w = workload_images(layout, name)
    reg = start_registry(root)
    if not done.exists():
        for repo, tag in w.images:
            src_tag = "big" if name == "d" else f"{repo}-{tag}"
            sh(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                f"oci:{layout}:{src_tag}", f"docker://{reg.host}/bench/{repo}:{tag}"])
        done.write_text("ok\n")
    return reg, w


@dataclass
class Timed:
    seconds: float
    rss_mb: float
    #: user + system CPU seconds of the timed process
    cpu: float = 0.0
    #: user + system CPU seconds the registries (source and destinations) spent meanwhile
    registries_cpu: float = 0.0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def registries_cpu(regs: list[Registry]) -> float:
    return sum(process_cpu(r.process.pid) for r in regs)


def timed(cmd: list[str], env: dict | None = None, regs: list[Registry] = ()) -> Timed:
    before = registries_cpu(regs)
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    spent = registries_cpu(regs) - before
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed ({proc.returncode}): {proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(m.group(1)) for m in re.finditer(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    return Timed(elapsed, int(rss.group(1)) / 1024 if rss else float("nan"), cpu, spent)


def skopeo_sync(src: Registry, dst: Registry, w: Workload) -> Timed:
    total, peak, cpu, regs = 0.0, 0.0, 0.0, 0.0
    for repo in w.repos:
        t = timed(["skopeo", "--insecure-policy", "sync", "--src", "docker", "--dest", "docker",
                   "--src-tls-verify=false", "--dest-tls-verify=false",
                   f"{src.host}/bench/{repo}", f"{dst.host}/mirror"], regs=[src, dst])
        total += t.seconds
        peak = max(peak, t.rss_mb)
        cpu += t.cpu
        regs += t.registries_cpu
    return Timed(total, peak, cpu, regs)


def skopeo_sync_parallel(src: Registry, dst: Registry, w: Workload, jobs: int) -> Timed:
    """``skopeo sync`` per repository, ``jobs`` of them at a time: how a user scripts it to go faster."""
    from concurrent.futures import ThreadPoolExecutor

    def one(repo: str) -> Timed:
        return timed(["skopeo", "--insecure-policy", "sync", "--src", "docker", "--dest", "docker",
                      "--src-tls-verify=false", "--dest-tls-verify=false",
                      f"{src.host}/bench/{repo}", f"{dst.host}/mirror"])

    before = registries_cpu([src, dst])
    start = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(one, w.repos))
    elapsed = time.monotonic() - start
    return Timed(elapsed, max(t.rss_mb for t in runs), sum(t.cpu for t in runs), registries_cpu([src, dst]) - before)


def imagepush_sync(
    src: Registry, dsts: list[Registry], work: Path, extra: list[str], program: list[str] = IMAGEPUSH
) -> Timed:
    audit = work / f"audit-{time.time_ns()}.parquet"
    cmd = [*program, "sync", f"docker://{src.host}/bench", *(f"docker://{d.host}/mirror" for d in dsts),
           "--insecure-registry", src.host, *(a for d in dsts for a in ("--insecure-registry", d.host)),
           "--audit", str(audit), *extra]
    try:
        return timed(cmd, regs=[src, *dsts])  # exit 0: every image ok in the audit
    finally:
        audit.unlink(missing_ok=True)


MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


def tag_digests(reg: Registry, prefix: str) -> dict[str, str]:
    """``repo-below-prefix:tag`` -> manifest digest, read with plain HTTP (not imagepush's client)."""
    def get(path: str, method: str = "GET") -> tuple[dict, bytes]:
        request = urllib.request.Request(f"http://{reg.host}{path}", method=method, headers={"Accept": MANIFEST_ACCEPT})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return dict(reply.headers), reply.read()

    found, repos, page = {}, [], "/v2/_catalog?n=1000"
    while page:
        headers, body = get(page)
        repos += json.loads(body)["repositories"] or []
        link = re.match(r"<([^>]+)>", headers.get("Link", ""))
        page = link.group(1) if link else ""
    for repo in (r for r in repos if r.startswith(prefix + "/")):
        for tag in json.loads(get(f"/v2/{repo}/tags/list")[1])["tags"] or []:
            headers, _ = get(f"/v2/{repo}/manifests/{tag}", "HEAD")
            found[f"{repo[len(prefix) + 1:]}:{tag}"] = headers["Docker-Content-Digest"]
    return found


def check_copy(tool: str, src: Registry, dst: Registry) -> None:
    """Every source tag is at the destination with the same digest: timing a wrong copy is pointless."""
    want, got = tag_digests(src, "bench"), tag_digests(dst, "mirror")
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])[:5]
        raise SystemExit(f"{tool} did not copy the workload faithfully: missing {missing}, other digests {differ}")


def fresh_registry(work: Path) -> Registry:
    return start_registry(Path(tempfile.mkdtemp(prefix="dst-", dir=work)))


def stop(reg: Registry) -> None:
    reg.stop()
    shutil.rmtree(reg.root, ignore_errors=True)


def settle() -> None:
    """Let the disk finish the previous run's writes and deletions before timing the next.

    Removing a destination's gigabytes leaves the kernel work (journal, freed blocks)
    that otherwise lands on whichever run comes next, the same for either tool.
    """
    os.sync()
    time.sleep(1.0)


#: Workloads copied into two destinations at once, and the workload they copy.
TWO_DESTINATIONS = {"c": "a", "f": "e"}


def workload_bytes(work: Path, name: str) -> int:
    """Bytes of the configs and layers of the workload's images, each blob once: what one destination receives."""
    layout = work / f"layout-{name}"

    def blob(digest: str) -> dict:
        return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())

    sizes: dict[str, int] = {}
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        if re.match(r"^repo\d+-t\d+$", ref) or (name == "d" and ref == "big"):
            manifest = blob(entry["digest"])
            for d in [manifest["config"], *manifest["layers"]]:
                sizes[d["digest"]] = d["size"]
    return sum(sizes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d", "e", "f"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/imagepush-bench"))
    parser.add_argument("--skip-skopeo", action="store_true", help="time imagepush only")
    parser.add_argument("--skopeo-parallel", type=int, default=0, metavar="N",
                        help="also time skopeo run N repositories at a time (the issue's 'four parallel "
                             "skopeos' is N=4), in the same runs")
    parser.add_argument("--against", metavar="IMAGEPUSH",
                        help="another imagepush executable (say, an install of the previous commit) timed "
                             "in the same runs, interleaved with this one (CPU comparisons on a shared machine)")
    parser.add_argument("imagepush_args", nargs="*", help="extra imagepush options (after --)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for tool in ("docker-registry", "skopeo", "umoci", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install docker-registry skopeo umoci time")

    print(f"imagepush benchmark on {os.cpu_count()} cores; command: {' '.join(sys.argv)}")
    results: dict[str, dict] = {}
    for name in args.workload:
        base = TWO_DESTINATIONS.get(name, name)
        src, w = populate_source(args.work, base)
        try:
            ours, theirs, rerun, other, parallel = [], [], [], [], []
            tools = ["skopeo", "imagepush"] + (["against"] if args.against else []) \
                + (["skopeo-parallel"] if args.skopeo_parallel else [])
            for run in range(args.runs):
                order = tools[run % len(tools):] + tools[:run % len(tools)]
                for tool in order:
                    if tool.startswith("skopeo") and (name in TWO_DESTINATIONS or args.skip_skopeo):
                        continue
                    dsts = [fresh_registry(args.work) for _ in range(2 if name in TWO_DESTINATIONS else 1)]
                    settle()
                    try:
                        if tool == "skopeo":
                            theirs.append(skopeo_sync(src, dsts[0], w))
                        elif tool == "skopeo-parallel":
                            parallel.append(skopeo_sync_parallel(src, dsts[0], w, args.skopeo_parallel))
                        elif tool == "against":
                            other.append(imagepush_sync(src, dsts, args.work, args.imagepush_args, [args.against]))
                        else:
                            ours.append(imagepush_sync(src, dsts, args.work, args.imagepush_args))
                            if name == "a":
                                rerun.append(imagepush_sync(src, dsts, args.work, args.imagepush_args))
                        for d in dsts:  # untimed
                            check_copy(tool, src, d)
                    finally:
                        for d in dsts:
                            stop(d)
            results[name] = {"images": len(w.images), "ours": ours, "theirs": theirs, "rerun": rerun,
                             "other": other, "parallel": parallel, "jobs": args.skopeo_parallel, "bytes": workload_bytes(args.work, base)}
            report(name, results[name], results)
        finally:
            src.stop()


def report(name: str, r: dict, results: dict) -> None:
    ours = statistics.median(t.seconds for t in r["ours"])
    rss = max(t.rss_mb for t in r["ours"])
    cpu = statistics.median(t.cpu for t in r["ours"])
    gb = r["bytes"] / 1e9
    line = f"[{name}] {r['images']} images, {gb:.2f} GB: imagepush {ours:.1f}s " \
           f"({1000 * ours / r['images']:.0f} ms/image, {cpu:.1f} CPU-s = {cpu / gb:.2f} CPU-s/GB, peak RSS {rss:.0f} MB)"
    if r["theirs"]:
        theirs = statistics.median(t.seconds for t in r["theirs"])
        their_cpu = statistics.median(t.cpu for t in r["theirs"])
        line += f"; skopeo {theirs:.1f}s ({1000 * theirs / r['images']:.0f} ms/image, {their_cpu:.1f} CPU-s = " \
                f"{their_cpu / gb:.2f} CPU-s/GB); ratio {ours / theirs:.2f}"
    if r["parallel"]:
        par = statistics.median(t.seconds for t in r["parallel"])
        line += f"; skopeo {r['jobs']} at a time {par:.1f}s, ratio {ours / par:.2f}"
    one_name = next((one for two, one in TWO_DESTINATIONS.items() if two == name), None)
    if one_name in results:
        one = statistics.median(t.seconds for t in results[one_name]["ours"])
        one_cpu = statistics.median(t.cpu for t in results[one_name]["ours"])
        line += f"; vs one destination {ours / one:.2f}x the time, {cpu / one_cpu:.2f}x the CPU"
    if r["rerun"]:
        again = statistics.median(t.seconds for t in r["rerun"])
        line += f"; rerun {again:.2f}s = {100 * again / ours:.0f}% of the first run"
    print(line, flush=True)
    print(f"    runs: imagepush {_list(r['ours'])} (CPU-s {_cpus(r['ours'])})"
          + (f"; skopeo {_list(r['theirs'])}" if r["theirs"] else "")
          + (f"; reruns {_list(r['rerun'])}" if r["rerun"] else "")
          + (f"; skopeo {r['jobs']} at a time {_list(r['parallel'])}" if r["parallel"] else ""), flush=True)
    if r["other"]:
        other_cpu = statistics.median(t.cpu for t in r["other"])
        print(f"    against {other_cpu:.2f} CPU-s = {other_cpu / gb:.2f} CPU-s/GB (runs "
              f"{_list(r['other'])}, CPU-s {_cpus(r['other'])}, peak RSS {max(t.rss_mb for t in r['other']):.0f} MB); "
              f"this one / against: {cpu / other_cpu:.2f} of the CPU", flush=True)
    for tool, runs in (("imagepush", r["ours"]), ("against", r["other"]), ("skopeo", r["theirs"])):
        if runs:
            # The registries run on the same cores: their CPU over the cores bounds any run from below.
            regs = statistics.median(t.registries_cpu for t in runs)
            wall = statistics.median(t.seconds for t in runs)
            floor = regs / (os.cpu_count() or 1)
            print(f"    {tool}: registries {regs:.1f} CPU-s, floor {floor:.1f}s on {os.cpu_count()} cores, "
                  f"run / floor {wall / floor:.2f}", flush=True)


def _list(times: list[Timed]) -> str:
    return " ".join(f"{t.seconds:.2f}" for t in times)


def _cpus(times: list[Timed]) -> str:
    return " ".join(f"{t.cpu:.2f}" for t in times)


if __name__ == "__main__":
    main()
