"""A sync through a fault-injecting proxy, at the source and at the destination alike.

The proxy (tests/http_proxy.py) answers about 10% of requests with a 5xx, 5% with a 429
and ``Retry-After``, resets 5% half way through a body and slows some down, with a
fixed seed. Uploads cut that way must start again from a fresh session and a fresh
read of the source, within the default ``--retry-times``; the audit counts the retries.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Iterator

import fsspec
import pyarrow.parquet as pq
import pytest
import requests

from imagepush.pipeline.cli import main
from tests.conftest import require_tool
from tests.http_proxy import FaultMix, HTTPProxy
from tests.registry_server import Registry, start_registry, write_registry_storage

pytestmark = pytest.mark.integration

IMAGES = 25
V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_images(storage: Path) -> dict[str, tuple[str, list[str]]]:
    """25 images written straight into a Distribution storage tree: name -> (manifest digest, blob digests).

    Every fourth image has a 1.3 MB layer, above the size held in memory, so its upload
    is a streamed PUT that a reset cuts half way; the others go in one small PUT.
    """
    rng = random.Random(1130)
    fs = fsspec.filesystem("file")
    written = {}
    for i in range(IMAGES):
        layers = [rng.randbytes(20_000 + 37 * i)]
        if i % 4 == 0:
            layers.append(rng.randbytes(1_300_000 + i))
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Env": [f"IMAGE={i}"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(b"plain" + layer[:64]) for layer in layers]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": V2S2,
            "config": {"mediaType": CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha256(layer), "size": len(layer)} for layer in layers],
        }).encode()
        name = f"faults/app{i:02d}"
        write_registry_storage(fs, str(storage), f"{name}:1", [config, *layers], [manifest])
        written[name] = (sha256(manifest), [sha256(config), *(sha256(layer) for layer in layers)])
    return written


@pytest.fixture
def registries(tmp_path) -> Iterator[tuple[Registry, Registry, dict[str, tuple[str, list[str]]]]]:
    require_tool("docker-registry")
    images = write_images(tmp_path / "src" / "storage")
    regs = [start_registry(tmp_path / name) for name in ("src", "dst")]
    try:
        yield regs[0], regs[1], images
    finally:
        for reg in regs:
            reg.stop()


@pytest.fixture
def faulty_proxy(monkeypatch) -> Iterator[HTTPProxy]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    proxy = HTTPProxy(faults=FaultMix()).start()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    try:
        yield proxy
    finally:
        proxy.stop()


def fetch(url: str, accept: str | None = None) -> bytes:
    """A GET straight to a registry, around the proxy."""
    with requests.Session() as session:
        session.trust_env = False
        reply = session.get(url, headers={"Accept": accept} if accept else {}, timeout=30)
        reply.raise_for_status()
        return reply.content


def test_a_sync_through_faults_at_both_ends_completes(registries, faulty_proxy, tmp_path):
    source, destination, images = registries
    audit = tmp_path / "faults.parquet"
    started = time.monotonic()
    code = main(["sync", f"docker://{source.host}/faults", f"docker://{destination.host}/mirror",
                 "--insecure-registry", source.host, "--insecure-registry", destination.host,
                 "--audit", str(audit)])
    elapsed = time.monotonic() - started
    rows = [r for r in pq.read_table(audit).to_pylist() if r["role"] != "child"]
    copied = [r for r in rows if r["status"] == "copied"]

    # Every fault kind happened, at both registries, and retries were needed and counted.
    assert {"5xx", "429", "reset", "slow"} <= set(faulty_proxy.injected), faulty_proxy.injected
    assert {source.host, destination.host} <= faulty_proxy.targets()
    assert sum(r["retries"] for r in rows) > 0
    assert len(copied) >= IMAGES - 1, (code, [(r["source"], r["error"]) for r in rows if r["status"] != "copied"])
    assert code == (0 if len(copied) == IMAGES else 1)

    # Every copied image is at the destination with its digest, and so is every blob it lists.
    for row in copied:
        name = row["source"].split(f"{source.host}/", 1)[1].rsplit(":", 1)[0]
        manifest_digest, blob_digests = images[name]
        assert row["destination_digest"] == manifest_digest
        copy = row["destination"].split(f"{destination.host}/", 1)[1].rsplit(":", 1)[0]
        manifest = fetch(f"http://{destination.host}/v2/{copy}/manifests/1", V2S2)
        assert sha256(manifest) == manifest_digest
        for digest in blob_digests:
            assert sha256(fetch(f"http://{destination.host}/v2/{copy}/blobs/{digest}")) == digest
    assert elapsed < 90, f"the faulty sync took {elapsed:.0f}s"
