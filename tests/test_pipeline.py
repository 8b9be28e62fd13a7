"""End-to-end runs of the Beam pipeline on the bundled sample images (in-process runner)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples, write_schema1_sample
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.stores.dir import DirSource
from imagepush.transforms.stores.docker_archive.reader import DockerArchiveSource
from imagepush.transforms.stores.layout.oci import OCILayoutSource


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    write_oci_samples(str(root / "oci"))
    write_schema1_sample(str(root / "legacy"))
    return root


def imagepush(*argv: str) -> int:
    return main(list(argv))


def audit_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_copy_to_three_kinds_of_store_preserves_digests(samples, tmp_path):
    audit = tmp_path / "audit.parquet"
    code = imagepush(
        "copy", f"oci:{samples}/oci:demo/app:1.0",
        f"oci:{tmp_path}/o1:demo/app:1.0", f"dir:{tmp_path}/o2", f"docker-archive:{tmp_path}/o3.tar:demo/app:1.0",
        "--audit", str(audit),
    )
    assert code == 0
    src = OCILayoutSource(f"{samples}/oci").get_root("demo/app:1.0")
    assert OCILayoutSource(f"{tmp_path}/o1").get_root("demo/app:1.0").digest == src.digest
    assert DirSource(f"{tmp_path}/o2").get_root(None).data == src.data
    config = json.loads(src.data)["config"]["digest"]
    archived = json.loads(DockerArchiveSource(f"{tmp_path}/o3.tar").get_root("demo/app:1.0").data)
    assert archived["config"]["digest"] == config
    rows = audit_rows(audit)
    assert len(rows) == 3 and len({r["run_id"] for r in rows}) == 1
    assert all(r["status"] == "copied" and r["error"] is None for r in rows)
    assert all(r["destination_digest"] == r["source_digest"] == src.digest for r in rows)
    assert {r["destination"] for r in rows} == {
        f"oci:{tmp_path}/o1:demo/app:1.0", f"dir:{tmp_path}/o2", f"docker-archive:{tmp_path}/o3.tar:demo/app:1.0"
    }
    # 1 config + 2 layers at each of three destinations, each counted once.
    assert [r["blobs_copied"] for r in rows] == [3, 3, 3]


def test_index_is_copied_with_children_first_and_shared_blobs_once(samples, tmp_path):
    audit = tmp_path / "audit.parquet"
    assert imagepush("copy", f"oci:{samples}/oci:demo/multi:1.0", f"oci:{tmp_path}/out:multi", "--audit", str(audit)) == 0
    src = OCILayoutSource(f"{samples}/oci").get_root("demo/multi:1.0")
    out = OCILayoutSource(f"{tmp_path}/out")
    assert out.get_root("multi").digest == src.digest
    for child in json.loads(src.data)["manifests"]:
        assert out.get_manifest(child["digest"]).digest == child["digest"]
    rows = audit_rows(audit)
    assert sorted(r["role"] for r in rows) == ["child", "child", "index"]
    # two configs, a shared base layer and one layer per platform: 5 distinct blobs, written once each.
    assert sum(r["blobs_copied"] for r in rows) == 5
    blob_files = list((tmp_path / "out/blobs/sha256").iterdir())
    assert sum(r["bytes_copied"] for r in rows) == sum(
        f.stat().st_size for f in blob_files if f.name not in {src.digest[7:], *(c["digest"][7:] for c in json.loads(src.data)["manifests"])}
    )


def test_second_identical_run_copies_nothing(samples, tmp_path):
    args = ("sync", f"oci:{samples}/oci", f"oci:{tmp_path}/mirror")
    assert imagepush(*args, "--audit", str(tmp_path / "a1.parquet")) == 0
    assert imagepush(*args, "--audit", str(tmp_path / "a2.parquet")) == 0
    first, second = audit_rows(tmp_path / "a1.parquet"), audit_rows(tmp_path / "a2.parquet")
    assert sum(r["bytes_copied"] for r in first) > 0
    assert sum(r["bytes_copied"] for r in second) == 0
    # The base layer shared by both images is copied for one and counted as present for the other.
    assert [sum(r["blobs_copied"] for r in first), sum(r["blobs_skipped"] for r in first)] == [7, 1]
    assert sum(r["blobs_skipped"] for r in second) == 8
    names = sorted(e.ref for e in OCILayoutSource(f"{tmp_path}/mirror").list_images())
    assert names == ["demo/app:1.0", "demo/multi:1.0"]


def test_schema1_to_oci_config_has_diff_ids_of_uncompressed_layers(samples, tmp_path):
    assert imagepush("copy", "--format", "oci", f"dir:{samples}/legacy", f"oci:{tmp_path}/out:legacy",
                     "--audit", str(tmp_path / "a.parquet")) == 0
    out = OCILayoutSource(f"{tmp_path}/out")
    manifest = json.loads(out.get_root("legacy").data)
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    config = json.loads(out.open_blob(manifest["config"]["digest"]).read())
    layers = [out.open_blob(layer["digest"]).read() for layer in manifest["layers"]]
    import gzip

    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(b)).hexdigest() for b in layers]
    assert len(layers) == 2  # the throwaway step is history, not a layer
    assert [h.get("empty_layer", False) for h in config["history"]] == [False, False, True]
    assert config["config"]["Labels"] == {"legacy": "yes"}


def test_corrupt_blob_fails_only_its_image_and_is_never_written(samples, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(samples / "oci", broken)
    src = OCILayoutSource(str(broken))
    app = json.loads(src.get_root("demo/app:1.0").data)
    victim = app["layers"][1]["digest"]  # the app layer, not shared with demo/multi
    path = broken / "blobs/sha256" / victim[7:]
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    audit = tmp_path / "audit.parquet"
    assert imagepush("sync", f"oci:{broken}", f"oci:{tmp_path}/out", "--audit", str(audit)) == 1
    rows = {r["source"]: r for r in audit_rows(audit) if r["role"] != "child"}
    bad = rows[f"oci:{broken}:demo/app:1.0"]
    assert bad["status"] == "failed" and victim in bad["error"]
    assert rows[f"oci:{broken}:demo/multi:1.0"]["status"] == "copied"
    assert not (tmp_path / "out/blobs/sha256" / victim[7:]).exists()
    assert [e.ref for e in OCILayoutSource(f"{tmp_path}/out").list_images()] == ["demo/multi:1.0"]


def test_missing_image_becomes_a_failed_audit_row(samples, tmp_path):
    audit = tmp_path / "audit.parquet"
    assert imagepush("copy", f"oci:{samples}/oci:no/such:tag", f"oci:{tmp_path}/out", "--audit", str(audit)) == 1
    (row,) = audit_rows(audit)
    assert row["status"] == "failed" and "no/such:tag" in row["error"]


DOWN = "127.0.0.1:1"  # nothing listens on port 1: connection refused


@pytest.mark.parametrize("command", ["copy", "sync"])
def test_unreachable_registry_fails_its_images_and_the_other_destination_is_written(samples, tmp_path, command):
    audit = tmp_path / "audit.parquet"
    source = f"oci:{samples}/oci:demo/app:1.0" if command == "copy" else f"oci:{samples}/oci"
    down = f"docker://{DOWN}/mirror/app:1.0" if command == "copy" else f"docker://{DOWN}/mirror"
    assert imagepush(command, source, down, f"oci:{tmp_path}/out" + (":app" if command == "copy" else ""),
                     "--insecure-registry", DOWN, "--retry-times", "0", "--audit", str(audit)) == 1
    rows = [r for r in audit_rows(audit) if r["role"] != "child"]
    failed = [r for r in rows if r["destination"].startswith(f"docker://{DOWN}/")]
    written = [r for r in rows if r["destination"].startswith("oci:")]
    assert len(failed) == len(written) == (1 if command == "copy" else 2)
    assert all(r["status"] == "failed" and f"cannot reach {DOWN}" in r["error"] for r in failed)
    assert all(r["status"] == "copied" for r in written)
    names = {m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((tmp_path / "out" / "index.json").read_bytes())["manifests"]}
    assert names == ({"app"} if command == "copy" else {"demo/app:1.0", "demo/multi:1.0"})


def test_index_converted_to_v2s2_becomes_a_manifest_list(samples, tmp_path):
    assert imagepush("copy", "--format", "v2s2", f"oci:{samples}/oci:demo/multi:1.0", f"dir:{tmp_path}/d",
                     "--audit", str(tmp_path / "a.parquet")) == 0
    out = DirSource(f"{tmp_path}/d")
    root = out.get_root(None)
    assert root.media_type == mt.DOCKER_LIST
    children = json.loads(root.data)["manifests"]
    assert [c["platform"]["architecture"] for c in children] == ["amd64", "arm64"]
    for c in children:
        child = out.get_manifest(c["digest"])
        assert child.media_type == mt.DOCKER_SCHEMA2
        assert json.loads(child.data)["config"]["mediaType"] == mt.DOCKER_CONFIG


def test_pipeline_under_multi_processing_workers(samples, tmp_path):
    import subprocess
    import sys

    audit = tmp_path / "audit.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "imagepush.pipeline", "sync", f"oci:{samples}/oci", f"oci:{tmp_path}/mp",
         "--audit", str(audit), "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 images to 1 destination: 2 copied;" in proc.stdout
    assert sorted(e.ref for e in OCILayoutSource(f"{tmp_path}/mp").list_images()) == ["demo/app:1.0", "demo/multi:1.0"]
    assert all(r["status"] == "copied" for r in audit_rows(audit))

    # Again, plus a new destination: the launcher settles the finished one, and its rows
    # travel through the workers into the audit with those of the new copies.
    again = tmp_path / "again.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "imagepush.pipeline", "sync", f"oci:{samples}/oci", f"oci:{tmp_path}/mp", f"oci:{tmp_path}/mp2",
         "--audit", str(again), "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 images to 2 destinations: 2 copied, 2 current;" in proc.stdout
    copied = {}
    for r in audit_rows(again):
        key = r["destination"].split(":")[1]
        copied[key] = copied.get(key, 0) + r["blobs_copied"]
    assert copied == {f"{tmp_path}/mp": 0, f"{tmp_path}/mp2": 7}
    assert not Path(f"{again}.settled.parquet").exists()


def test_run_config_with_overlapping_jobs_audits_every_image_and_destination(samples, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        f"audit: {tmp_path}/audit.parquet\n"
        "jobs:\n"
        f"  - copy: oci:{samples}/oci:demo/app:1.0\n"
        f"    to: [oci:{tmp_path}/a:demo/app:1.0, dir:{tmp_path}/d]\n"
        f"  - sync: oci:{samples}/oci\n"
        "    platforms: [linux/arm64]\n"
        f"    to: [{{ref: 'oci:{tmp_path}/m', format: oci}}]\n"
        f"  - copy: oci:{samples}/oci:demo/app:1.0\n"
        f"    to: [{{ref: 'dir:{tmp_path}/v2', format: v2s2}}]\n"
    )
    assert imagepush("run", str(config)) == 0
    rows = [r for r in audit_rows(tmp_path / "audit.parquet") if r["role"] != "child"]
    assert sorted(r["destination"] for r in rows) == sorted([
        f"oci:{tmp_path}/a:demo/app:1.0", f"dir:{tmp_path}/d", f"dir:{tmp_path}/v2",
        f"oci:{tmp_path}/m:demo/app:1.0", f"oci:{tmp_path}/m:demo/multi:1.0",
    ])
    multi = OCILayoutSource(f"{tmp_path}/m").get_root("demo/multi:1.0")
    assert [m["platform"]["architecture"] for m in json.loads(multi.data)["manifests"]] == ["arm64"]
    assert DirSource(f"{tmp_path}/v2").get_root(None).media_type == mt.DOCKER_SCHEMA2


def test_zstd_recompression_rewrites_layers_keeping_diff_ids_and_config(samples, tmp_path):
    import zstandard

    args = ("copy", "--compression", "zstd", f"oci:{samples}/oci:demo/app:1.0", f"oci:{tmp_path}/z:app")
    assert imagepush(*args, "--audit", str(tmp_path / "a1.parquet")) == 0
    src_layout = OCILayoutSource(f"{samples}/oci")
    src = json.loads(src_layout.get_root("demo/app:1.0").data)
    out_layout = OCILayoutSource(f"{tmp_path}/z")
    out = json.loads(out_layout.get_root("app").data)
    assert out["config"] == src["config"]
    assert [layer["mediaType"] for layer in out["layers"]] == [mt.OCI_LAYER_ZSTD] * 2
    config = json.loads(src_layout.open_blob(src["config"]["digest"]).read())
    for layer, diff_id in zip(out["layers"], config["rootfs"]["diff_ids"]):
        data = out_layout.open_blob(layer["digest"]).read()
        assert (layer["size"], layer["digest"]) == (len(data), "sha256:" + hashlib.sha256(data).hexdigest())
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
    # Deterministic: a second run finds the same recompressed blobs already there.
    assert imagepush(*args, "--audit", str(tmp_path / "a2.parquet")) == 0
    (row,) = audit_rows(tmp_path / "a2.parquet")
    assert (row["bytes_copied"], row["blobs_skipped"]) == (0, 3)
    assert row["destination_digest"] == out_layout.get_root("app").digest


def test_uncompressed_layers_into_docker_schema2_use_the_docker_tar_type(samples, tmp_path):
    assert imagepush("copy", "--compression", "none", "--format", "v2s2", f"oci:{samples}/oci:demo/app:1.0",
                     f"dir:{tmp_path}/d", "--audit", str(tmp_path / "a.parquet")) == 0
    out = json.loads(DirSource(f"{tmp_path}/d").get_root(None).data)
    assert out["mediaType"] == mt.DOCKER_SCHEMA2
    assert [layer["mediaType"] for layer in out["layers"]] == [mt.DOCKER_LAYER] * 2


def test_zstd_with_v2s2_is_a_usage_error(samples, tmp_path, capsys):
    code = imagepush("copy", "--compression", "zstd", "--format", "v2s2", f"oci:{samples}/oci:demo/app:1.0",
                     f"dir:{tmp_path}/d")
    assert code == 2
    assert "zstd needs OCI manifests" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
