"""Stores and the audit on s3:// URLs, against a local S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.stores.layout.oci import OCILayoutSource


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] and s3fs are required under CI=true")
        pytest.skip("moto[server] or s3fs not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the local S3 server did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    import fsspec
    import s3fs

    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fsspec.config.set_conf_env(fsspec.config.conf)
    s3fs.S3FileSystem.clear_instance_cache()
    name = f"imagepush-{time.monotonic_ns()}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.config.conf.pop("s3", None)


def test_copy_into_and_out_of_s3_keeps_digests_and_writes_audit_there(tmp_path, bucket):
    import s3fs

    write_oci_samples(str(tmp_path / "src"))
    assert main(["copy", f"oci:{tmp_path}/src:demo/multi:1.0", f"oci:s3://{bucket}/layout:multi",
                 f"dir:s3://{bucket}/dir", "--audit", f"s3://{bucket}/audit/run.parquet"]) == 0
    assert main(["copy", f"oci:s3://{bucket}/layout:multi", f"oci:{tmp_path}/back:multi",
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    src = OCILayoutSource(f"{tmp_path}/src").get_root("demo/multi:1.0")
    assert OCILayoutSource(f"{tmp_path}/back").get_root("multi").digest == src.digest
    assert OCILayoutSource(f"s3://{bucket}/layout").get_root("multi").data == src.data
    fs = s3fs.S3FileSystem()
    assert fs.cat(f"{bucket}/dir/manifest.json") == src.data
    with fs.open(f"{bucket}/audit/run.parquet", "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert sorted(r["role"] for r in rows) == ["child", "child", "child", "child", "index", "index"]
    assert all(r["status"] == "copied" for r in rows)
    # Nothing half-written is left behind: no temporary objects beside the blobs.
    assert not [p for p in fs.find(f"{bucket}/layout") if ".tmp" in p]
    assert json.loads(fs.cat(f"{bucket}/layout/index.json"))["manifests"][0]["digest"] == src.digest


def test_oci_archive_is_read_from_s3_in_place(tmp_path, bucket):
    import s3fs
    import tarfile

    write_oci_samples(str(tmp_path / "src"))
    with tarfile.open(tmp_path / "images.tar", "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(tmp_path / "src" / name, arcname=name)
    s3fs.S3FileSystem().put(str(tmp_path / "images.tar"), f"{bucket}/images.tar")
    assert main(["copy", f"oci-archive:s3://{bucket}/images.tar:demo/multi:1.0", f"oci:{tmp_path}/back:multi",
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    src = OCILayoutSource(f"{tmp_path}/src").get_root("demo/multi:1.0")
    assert OCILayoutSource(f"{tmp_path}/back").get_root("multi").data == src.data
