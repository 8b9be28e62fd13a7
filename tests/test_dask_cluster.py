"""A registry -> registry sync through Beam's Dask runner on a real local Dask cluster.

A ``dask scheduler`` and two ``dask worker`` processes on loopback run the same command a
user runs; skopeo judges every tag and digest written, and each worker process is asked
afterwards which stores it opened, so the test proves that both did part of the copying.
The audit goes to the local S3 server: on a distributed runner it must be on an object
store, and the workers reach that store with the endpoint and keys of their own
environment, as they reach registries with their own auth files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from tests.conftest import running_registry
from tests.dask_cluster import DaskCluster, dask_cluster
from tests.registry_server import Registry
from tests.test_registry_pipeline import (
    IMAGES,
    digest_of,
    insecure,
    push_samples,
    skopeo,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
#: Copies of team/app (two tags each) added to the source registry, so that the run has
#: enough images, spread over enough shards and Dask partitions, that no schedule can
#: leave one worker without work.
COPIES = 12


def s3_env(endpoint: str) -> dict[str, str]:
    """What a worker needs to reach the S3 server: the environment, as on a real cluster."""
    return {
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory) -> Iterator[DaskCluster]:
    # PYTHONPATH: the probe below is a function of this test module, which the workers import.
    env = {**s3_env(s3_endpoint), "PYTHONPATH": str(REPO_ROOT)}
    with dask_cluster(tmp_path_factory.mktemp("dask"), env) as running:
        yield running


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[tuple[Registry, dict[tuple[str, str], str]]]:
    """A registry with the sample images, plus COPIES repositories holding team/app's tags.

    The copies are made in the registry's storage tree (a repository there is links to
    shared blobs), which is how Distribution itself would store them after a push.
    """
    root = tmp_path_factory.mktemp("dask-src")
    for reg in running_registry(root / "registry", schema1=True):
        push_samples(reg, root)
        repositories = reg.storage / "docker" / "registry" / "v2" / "repositories"
        for i in range(COPIES):
            shutil.copytree(repositories / "team" / "app", repositories / "spread" / f"app{i}")
        want = {image: digest_of(reg.host, f"{image[0]}:{image[1]}") for image in IMAGES}
        for i in range(COPIES):
            for tag in ("1", "v2s2"):
                want[(f"spread/app{i}", tag)] = want[("team/app", tag)]
        yield reg, want


def opened_stores() -> list[str]:
    """Run on a worker: the stores its process opened (its StoreCache, kept by Beam's Shared)."""
    import gc

    from imagepush.transforms.stores.cache import StoreCache

    return sorted({store for obj in gc.get_objects() if isinstance(obj, StoreCache)
                   for store in (*obj._sources, *obj._destinations)})


def imagepush(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagepush.pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_registry_to_registry_sync_on_a_dask_cluster_uses_both_workers(cluster, source, s3_endpoint,
                                                                      tmp_path):
    import s3fs

    src, want = source
    bucket = f"dask-{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")[:60]
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")
    fs.mkdir(bucket)
    audit = f"s3://{bucket}/audit/run.parquet"
    for mirror in running_registry(tmp_path / "mirror", schema1=True):
        proc = imagepush("sync", f"docker://{src.host}/", f"docker://{mirror.host}/mirror", *insecure(src, mirror),
                         "--audit", audit, "--runner", DASK_RUNNER, "--dask_client_address", cluster.address,
                         env=s3_env(s3_endpoint))
        assert proc.returncode == 0, proc.stderr[-3000:]

        for (repo, tag), digest in want.items():
            raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{mirror.host}/mirror/{repo}:{tag}")
            got = digest_of(mirror.host, f"mirror/{repo}:{tag}") if repo.startswith("legacy") \
                else "sha256:" + hashlib.sha256(raw).hexdigest()
            assert got == digest, (repo, tag)
        index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{src.host}/team/multi:1.0"))
        for child in index["manifests"]:
            skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{mirror.host}/mirror/team/multi@{child['digest']}")

        with fs.open(f"{bucket}/audit/run.parquet", "rb") as f:
            rows = pq.read_table(f).to_pylist()
        top = [r for r in rows if r["role"] != "child"]
        assert sorted((r["source"].split("/", 3)[-1]) for r in top) == sorted(f"{repo}:{tag}" for repo, tag in want)
        assert all(r["status"] == "copied" and r["destination_digest"] == r["source_digest"] for r in top)
        # The workers' progress events reached the launcher (the cluster is on loopback): one outcome per image.
        outcomes = [line for line in proc.stderr.splitlines() if line.endswith(": copied")]
        assert sorted(line.split(" -> ")[0].split("/", 3)[-1] for line in outcomes) == \
            sorted(f"{repo}:{tag}" for repo, tag in want), proc.stderr[-3000:]

        # Each worker process opened registry stores of its own: both did part of the work.
        from distributed import Client

        with Client(cluster.address, timeout=30) as client:
            opened = client.run(opened_stores)
        assert len(opened) == 2
        hosts = (src.host, mirror.host)
        for worker, stores in opened.items():
            assert any(host in store for store in stores for host in hosts), f"{worker} did no work: {stores}"


def test_a_records_driven_run_on_a_dask_cluster_writes_an_oci_layout_on_s3(cluster, source, s3_endpoint, tmp_path):
    """The records file and the layout are on S3; the workers read one and write the other."""
    import s3fs

    src, want = source
    bucket = f"dask-rec-{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")[:60]
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")
    fs.mkdir(bucket)
    # OCI manifests and indexes keep their digests in an OCI layout; Docker ones are converted.
    kept = {image: digest for image, digest in want.items() if image[1] in ("1", "1.0") and image[0] != "legacy/s1"}
    fs.pipe_file(f"{bucket}/lists/images.jsonl", "".join(
        json.dumps({"source": f"docker://{src.host}/{repo}:{tag}"}) + "\n" for repo, tag in sorted(kept)).encode())
    proc = imagepush("copy", "--records", f"s3://{bucket}/lists/*.jsonl", f"oci:s3://{bucket}/layout",
                     *insecure(src), "--audit", f"s3://{bucket}/audit.parquet",
                     "--runner", DASK_RUNNER, "--dask_client_address", cluster.address, env=s3_env(s3_endpoint))
    assert proc.returncode == 0, proc.stderr[-3000:]

    local = tmp_path / "layout"
    fs.get(f"{bucket}/layout", str(local), recursive=True)
    for (repo, tag), digest in kept.items():
        raw = skopeo("inspect", "--raw", f"oci:{local}:{repo}:{tag}")
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest, (repo, tag)
    with fs.open(f"{bucket}/audit.parquet", "rb") as f:
        top = [r for r in pq.read_table(f).to_pylist() if r["role"] != "child"]
    assert sorted((r["repository"], r["tag"], r["status"]) for r in top) == sorted(
        (repo, tag, "copied") for repo, tag in kept)

    from distributed import Client

    with Client(cluster.address, timeout=30) as client:
        opened = client.run(opened_stores)
    layout = f"oci:s3://{bucket}/layout"
    assert all(layout in stores for stores in opened.values()), opened
