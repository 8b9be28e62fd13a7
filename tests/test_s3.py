"""Stores and the audit on s3:// URLs, against a local S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.stores.layout.oci import OCILayoutSource


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
