"""How the cost per image grows with the number of images: a records-driven sync at 1,000 and 10,000.

Run by hand (not in CI); it needs docker-registry and /usr/bin/time:

    .venv/bin/python benchmarks/scale_records.py                    # 1,000 then 10,000 images
    .venv/bin/python benchmarks/scale_records.py --images 1000 --mode sync

The source is a Docker Distribution whose storage tree is written directly (one tiny
image per tag, two tags per repository), which takes seconds instead of the minutes a
push of 10,000 images would. A records file (JSON Lines, one ``source`` per image) drives
``imagepush copy --records FILE docker://DST/mirror`` into a fresh destination registry;
``--mode sync`` runs ``imagepush sync`` over the whole source instead. Reported: wall time,
ms/image, the CPU seconds and the peak RSS of imagepush (the largest of its processes),
and the growth of the cost per image against the smallest run.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import fsspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.registry_server import start_registry, write_registry_storage  # noqa: E402

IMAGEPUSH = str(Path(sys.executable).with_name("imagepush"))
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def tiny_image(n: int) -> tuple[list[bytes], bytes]:
    """One image of one unique 1-file layer: (blobs, manifest), deterministic in ``n``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        body = f"image {n}\n".encode()
        info = tarfile.TarInfo(f"srv/{n}.txt")
        info.size, info.mtime = len(body), 1496275200
        tar.addfile(info, io.BytesIO(body))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = "sha256:" + __import__("hashlib").sha256(raw.getvalue()).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": [f"N={n}"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, separators=(",", ":")).encode()

    def desc(media_type: str, data: bytes) -> dict:
        return {"mediaType": media_type, "size": len(data),
                "digest": "sha256:" + __import__("hashlib").sha256(data).hexdigest()}

    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, config),
                           "layers": [desc(LAYER, layer)]}, separators=(",", ":")).encode()
    return [config, layer], manifest


def name_of(n: int) -> str:
    return f"bench/r{n // 2:05d}:{'ab'[n % 2]}"


def source_tree(work: Path, images: int) -> Path:
    """A registry root holding ``images`` images; kept between runs (it is deterministic)."""
    root = work / f"scale-source-{images}"
    done = root / "populated"
    if not done.exists():
        fs = fsspec.filesystem("file")
        for n in range(images):
            blobs, manifest = tiny_image(n)
            write_registry_storage(fs, str(root / "storage"), name_of(n), blobs, [manifest])
        done.write_text(str(images))
    return root


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of a command that must succeed."""
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}… failed ({proc.returncode}): {proc.stderr[-3000:]}")
    cpu = sum(float(m.group(1)) for m in re.finditer(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, cpu, int(rss.group(1)) / 1024 if rss else float("nan")


def run(work: Path, images: int, mode: str, extra: list[str]) -> tuple[float, float, float]:
    source = start_registry(source_tree(work, images))
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        dest = start_registry(Path(tmp) / "dest")
        try:
            flags = ["--insecure-registry", source.host, "--insecure-registry", dest.host,
                     "--audit", f"{tmp}/audit.parquet", *extra]
            if mode == "records":
                records = Path(tmp) / "images.jsonl"
                records.write_text("".join(json.dumps({"source": f"docker://{source.host}/{name_of(n)}"}) + "\n"
                                           for n in range(images)))
                cmd = [IMAGEPUSH, "copy", "--records", str(records), f"docker://{dest.host}/mirror", *flags]
            else:
                cmd = [IMAGEPUSH, "sync", f"docker://{source.host}/bench", f"docker://{dest.host}/mirror", *flags]
            return measure(cmd)
        finally:
            dest.stop()
            source.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--mode", choices=["records", "sync"], default="records")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/imagepush-bench"))
    parser.add_argument("imagepush_args", nargs="*", help="extra imagepush options (after --)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"imagepush scale benchmark, {args.mode}-driven; command: {' '.join(sys.argv)}")
    base = None
    for images in sorted(args.images):
        wall, cpu, rss = run(args.work, images, args.mode, args.imagepush_args)
        per_image = 1000 * wall / images
        base = base or per_image
        print(f"{images:>6} images: {wall:6.1f} s, {per_image:5.1f} ms/image ({per_image / base:.2f}× the smallest run), "
              f"{cpu:6.1f} CPU-s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
