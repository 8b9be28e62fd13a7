"""Request limits per registry as the user sets and sees them: flags, the run file, progress, a rate-limited registry.

The limiter's own rules are specified in tests/test_registry_limiter.py; here a sync
meets a real Distribution behind a proxy that answers 429 above a request rate.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import requests

from imagepush.pipeline.cli import build_parser, main
from imagepush.pipeline.config import spec_from_flags, spec_from_yaml
from imagepush.pipeline.progress import Tally
from imagepush.pipeline.samples import _image, tar_layer
from imagepush.transforms.engine.jobs import BlobResult
from imagepush.transforms.engine.steps import Progress
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import Publication
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.limiter import Level
from tests.http_proxy import HTTPProxy, RateLimit

IMAGES = 12
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def flags_options(argv: list[str]) -> StoreOptions:
    return spec_from_flags(build_parser().parse_args(argv), "r", "/audit.parquet").options


def yaml_options(registries: str) -> StoreOptions:
    text = f"registries: {registries}\njobs: [{{sync: 'oci:/in', to: ['oci:/out']}}]\n"
    return spec_from_yaml(text, "r", "/audit.parquet").options


def test_the_rate_and_fixed_concurrency_flags_and_run_file_keys_mean_the_same():
    flags = flags_options(["sync", "oci:/in", "oci:/out", "--registry-rps", "2.5", "--registry-concurrency-fixed"])
    assert (flags.registry_rps, flags.adaptive_concurrency) == (2.5, False)
    assert flags == yaml_options("{rps: 2.5, concurrency_fixed: true}")
    defaults = flags_options(["sync", "oci:/in", "oci:/out"])
    assert (defaults.registry_rps, defaults.adaptive_concurrency) == (None, True)
    assert defaults == yaml_options("{}")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_request_rate_must_be_above_zero(value, tmp_path, capsys):
    assert main(["ls", "--registry-rps", value, "oci:/in"]) == 2
    assert capsys.readouterr().err.strip() == "imagepush: --registry-rps: Input should be greater than 0"
    config = tmp_path / "run.yaml"
    config.write_text(f"registries: {{rps: {value}}}\njobs: [{{sync: 'oci:/in', to: ['oci:/out']}}]\n")
    assert main(["run", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"imagepush: config: {config}:1:14: registries.rps: Input should be greater than 0"


def test_a_worker_s_stores_report_each_registry_s_request_limit():
    cache = StoreCache(StoreOptions(registry_concurrency=12))
    assert cache.registry_levels() == {}
    cache.source("docker://reg.example:5000/team/app").client
    cache.destination("docker://other.example/x").client
    assert cache.registry_levels() == {"reg.example:5000": Level(3, 12), "other.example": Level(3, 12)}
    fixed = StoreCache(StoreOptions(registry_concurrency=12, adaptive_concurrency=False))
    fixed.source("docker://reg.example:5000/team/app").client
    assert fixed.registry_levels() == {"reg.example:5000": Level(12, 12)}


def test_a_progress_line_names_the_registries_held_below_their_ceiling():
    tally = Tally(total=1)
    levels = {"b.example": Level(3, 8), "a.example:5000": Level(1, 8), "c.example": Level(8, 8)}
    progress = Progress(SimpleNamespace(report=tally.add), levels=lambda: dict(levels))
    blob = BlobResult("sha256:" + "a" * 64, "oci:/out", "copied", 2_000_000, bytes_copied=2_000_000)
    progress.delivered([blob])
    assert [f for f in tally.fields(1.0) if f.startswith("registry")] == [
        "registry a.example:5000 at 1/8 requests", "registry b.example at 3/8 requests"]
    levels.update({"a.example:5000": Level(8, 8), "b.example": Level(4, 8)})  # one recovered, one grew
    progress.delivered([blob])
    assert [f for f in tally.fields(1.0) if f.startswith("registry")] == ["registry b.example at 4/8 requests"]
    assert tally.fields(1.0)[3] == "4.0 MB copied at 4.0 MB/s"


def small_images(path: Path, count: int) -> list[str]:
    """An OCI layout of ``count`` images ``rate/appN:1``, each with its own small layer; their names."""
    dest = OCILayoutDestination(str(path))
    dest.prepare()
    names, publications = [], []
    for i in range(count):
        descriptor = _image(dest, "amd64", [tar_layer({"data": os.urandom(2048)})], f"N={i}")
        names.append(f"rate/app{i}:1")
        publications.append(Publication(names[-1], Descriptor(descriptor.media_type, descriptor.digest,
                                                              descriptor.size)))
    dest.publish(publications)
    return names


def test_a_rate_limited_registry_gets_every_image_and_the_limit_comes_down(registry, tmp_path, monkeypatch, capsys):
    names = small_images(tmp_path / "layout", IMAGES)
    proxy = HTTPProxy(rate_limit=RateLimit(per_second=25, host=registry.host, retry_after=1)).start()
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    try:
        code = main(["sync", f"oci:{tmp_path}/layout", f"docker://{registry.host}/mirror",
                     "--insecure-registry", registry.host, "--audit", str(tmp_path / "a.parquet")])
    finally:
        proxy.stop()
    rows = [r for r in pq.read_table(tmp_path / "a.parquet").to_pylist() if r["role"] != "child"]
    assert code == 0, [(r["destination"], r["error"]) for r in rows if r["status"] != "copied"]
    assert sorted(r["destination"] for r in rows) == sorted(f"docker://{registry.host}/mirror/{n}" for n in names)
    assert {r["status"] for r in rows} == {"copied"}
    for row in rows:
        repository, tag = row["destination"].split(f"{registry.host}/", 1)[1].rsplit(":", 1)
        with requests.Session() as session:
            session.trust_env = False
            answer = session.head(f"http://{registry.host}/v2/{repository}/manifests/{tag}",
                                  headers={"Accept": OCI_MANIFEST}, timeout=10)
        assert answer.headers["Docker-Content-Digest"] == row["destination_digest"]
    # The registry did refuse requests, and the limit came down from its ceiling because of it.
    assert proxy.injected["rate"] > 0
    lowered = re.findall(rf"imagepush: {re.escape(registry.host)} is overloaded: now (\d+) requests at once \(of 8\)",
                         capsys.readouterr().err)
    assert lowered and all(1 <= int(limit) < 8 for limit in lowered)
