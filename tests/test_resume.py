"""A sync killed half way, then run again, sends only what the first run did not finish."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import gz, tar_layer
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.formats.jsonio import dumps
from imagepush.transforms.stores.base import ManifestBlob, Publication
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.registry.upload import SMALL_BLOB_LIMIT
from tests.conftest import require_tool
from tests.http_proxy import HTTPProxy
from tests.registry_server import start_registry

pytestmark = pytest.mark.integration

IMAGES = 12
LAYER_BYTES = 1 << 20


def write_layout(path: Path) -> dict[str, int]:
    """IMAGES images ``resume/app:vN``, each one incompressible layer; returns every blob's size."""
    rng = random.Random(20261130)
    dest = OCILayoutDestination(str(path))
    dest.prepare()
    sizes: dict[str, int] = {}
    publications = []
    for n in range(IMAGES):
        tar = tar_layer({f"data/{n}.bin": rng.randbytes(LAYER_BYTES)})
        layer = gz(tar)
        config = dumps({"architecture": "amd64", "os": "linux", "config": {"Env": [f"N={n}"]},
                        "rootfs": {"type": "layers", "diff_ids": [digestlib.of_bytes(tar)]}})
        descs = []
        for media_type, blob in ((mt.OCI_CONFIG, config), (mt.OCI_LAYER_GZIP, layer)):
            desc = Descriptor(media_type, digestlib.of_bytes(blob), len(blob))
            dest.put_blob(desc, blob)
            sizes[desc.digest] = desc.size
            descs.append(desc)
        manifest = dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": descs[0].to_dict(),
                          "layers": [descs[1].to_dict()]})
        root = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(manifest), len(manifest))
        dest.put_manifest(ManifestBlob(manifest, mt.OCI_MANIFEST, root.digest), root=True)
        publications.append(Publication(f"resume/app:v{n}", root))
    assert dest.publish(publications) == {}
    return sizes


def linked_blobs(storage: Path, repository: str) -> set[str]:
    """Blobs the registry would answer a HEAD for in ``repository``: its layer links."""
    links = storage / "docker/registry/v2/repositories" / repository / "_layers/sha256"
    return {f"sha256:{p.name}" for p in links.iterdir() if (p / "link").is_file()} if links.is_dir() else set()


def settled(storage: Path, repository: str) -> set[str]:
    """The links once the registry has finished what was in flight when the client died."""
    before = linked_blobs(storage, repository)
    for _ in range(50):
        time.sleep(0.2)
        now = linked_blobs(storage, repository)
        if now == before:
            return now
        before = now
    return before


def test_rerun_after_a_killed_sync_sends_only_the_missing_blobs(tmp_path):
    require_tool("docker-registry")
    sizes = write_layout(tmp_path / "layout")
    layers = {d for d, size in sizes.items() if size > LAYER_BYTES}
    reg = start_registry(tmp_path / "dst")
    # Uploads go through a proxy that sends 1 MB/s per connection, so the run can be
    # caught with some of its layers in the registry and others not.
    proxy = HTTPProxy(upload_rate=LAYER_BYTES).start()
    try:
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "no_proxy", "all_proxy")}
        env["HTTP_PROXY"] = proxy.url
        first = subprocess.Popen(
            [sys.executable, "-m", "imagepush.pipeline", "sync", f"oci:{tmp_path}/layout", f"docker://{reg.host}/mirror",
             "--insecure-registry", reg.host, "--parallel", "2", "--audit", str(tmp_path / "first.parquet")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while len(linked_blobs(reg.storage, "mirror/resume/app") & layers) < 3:
            assert first.poll() is None, f"the first run ended before it could be stopped: {first.stderr.read()!r}"
            assert time.monotonic() < deadline, "the first run copied nothing within 120 s"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
        present = settled(reg.storage, "mirror/resume/app")
        tags = reg.storage / "docker/registry/v2/repositories/mirror/resume/app/_manifests/tags"
        tagged = tags.is_dir() and any(tags.iterdir())
        assert 3 <= len(present & layers) < len(layers)

        audit = tmp_path / "rerun.parquet"
        assert main(["sync", f"oci:{tmp_path}/layout", f"docker://{reg.host}/mirror",
                     "--insecure-registry", reg.host, "--audit", str(audit)]) == 0
        rows = pq.read_table(audit).to_pylist()
        assert len(rows) == IMAGES
        # The streamed first run tags each image as soon as its blobs are in: an image it
        # finished before the kill is current now, the others are copied.
        assert all(r["status"] in ("copied", "current") and r["destination_digest"] == r["source_digest"]
                   for r in rows)
        assert any(r["status"] == "copied" for r in rows)
        missing = set(sizes) - present
        # Killed before its first tag, the repository gets its small blobs (the configs)
        # again rather than a HEAD for each; its layers are looked up either way.
        sent = missing | (set() if tagged else {d for d in present if sizes[d] <= SMALL_BLOB_LIMIT})
        assert sum(r["bytes_copied"] for r in rows) == sum(sizes[d] for d in sent)
        assert sum(r["blobs_copied"] for r in rows) == len(sent)
        assert sum(r["blobs_skipped"] for r in rows) <= len(present)
        assert linked_blobs(reg.storage, "mirror/resume/app") == set(sizes)
    finally:
        proxy.stop()
        reg.stop()
