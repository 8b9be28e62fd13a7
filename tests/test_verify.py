"""``imagepush verify`` against real Distribution registries and OCI layouts, images pushed by skopeo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from imagepush.pipeline.cli import main
from imagepush.pipeline.config import names_one_image

from tests.conftest import running_registry
from tests.registry_server import Registry
from tests.test_registry_pipeline import IMAGES, insecure, push_samples, rows, skopeo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("verify-src")
    for reg in running_registry(root / "registry", schema1=True):
        push_samples(reg, root)
        yield reg


@pytest.fixture
def mirror(source, tmp_path) -> Iterator[Registry]:
    """A registry that a sync of the whole source has just filled (under ``mirror/``)."""
    for reg in running_registry(tmp_path / "mirror", schema1=True):
        assert main(["sync", f"docker://{source.host}/", f"docker://{reg.host}/mirror", *insecure(source, reg),
                     "--audit", str(tmp_path / "sync.parquet")]) == 0
        yield reg


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what a write would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def verify(*args: str, audit: Path) -> int:
    return main(["verify", *args, "--audit", str(audit)])


def by_source(path: Path) -> dict[str, dict]:
    return {r["source"]: r for r in rows(path)}


def test_after_a_sync_everything_is_current_and_nothing_is_written(source, mirror, tmp_path, capsys):
    before = tree(mirror.storage)
    audit = tmp_path / "v.parquet"
    assert verify(f"docker://{source.host}/", f"docker://{mirror.host}/mirror", *insecure(source, mirror),
                  audit=audit) == 0
    found = rows(audit)
    assert len(found) == len(IMAGES)
    assert all(r["status"] == "current" and r["destination_digest"] == r["source_digest"] for r in found)
    assert {r["role"] for r in found} == {"image", "index"}
    assert tree(mirror.storage) == before
    assert f"{len(IMAGES)} images to 1 destination: {len(IMAGES)} current" in capsys.readouterr().out

    # One image, named as copy names it.
    one = tmp_path / "one.parquet"
    assert verify(f"docker://{source.host}/team/multi:1.0", f"docker://{mirror.host}/mirror/team/multi:1.0",
                  *insecure(source, mirror), audit=one) == 0
    assert [r["status"] for r in rows(one)] == ["current"]
    assert tree(mirror.storage) == before


def test_a_deleted_tag_is_missing_and_an_overwritten_one_a_mismatch(source, mirror, tmp_path, capsys):
    tags = mirror.storage / "docker/registry/v2/repositories/mirror/team/app/_manifests/tags"
    shutil.rmtree(tags / "1")
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{source.host}/team/multi:1.0", f"docker://{mirror.host}/mirror/legacy/s1:1")
    before = tree(mirror.storage)
    audit = tmp_path / "v.parquet"
    assert verify(f"docker://{source.host}/", f"docker://{mirror.host}/mirror", *insecure(source, mirror),
                  audit=audit) == 1
    found = by_source(audit)
    deleted = found[f"docker://{source.host}/team/app:1"]
    assert (deleted["status"], deleted["error_kind"], deleted["destination_digest"]) == ("failed", "missing", None)
    overwritten = found[f"docker://{source.host}/legacy/s1:1"]
    assert (overwritten["status"], overwritten["error_kind"]) == ("failed", "mismatch")
    assert overwritten["destination_digest"] != overwritten["source_digest"]
    assert sorted(r["status"] for r in found.values()).count("current") == len(IMAGES) - 2
    assert tree(mirror.storage) == before
    err = capsys.readouterr().err
    assert "FAILED" in err and "team/app:1" in err and "legacy/s1:1" in err


def test_a_converted_layout_is_judged_by_diff_ids(source, tmp_path):
    """v2s2 into an OCI layout (which cannot hold it) is converted: digests differ, layers do not."""
    layout = tmp_path / "layout"
    assert main(["copy", f"docker://{source.host}/team/app:v2s2", f"oci:{layout}:app", *insecure(source),
                 "--audit", str(tmp_path / "copy.parquet")]) == 0
    before = tree(layout)
    audit = tmp_path / "v.parquet"
    assert verify(f"docker://{source.host}/team/app:v2s2", f"oci:{layout}:app", *insecure(source), audit=audit) == 0
    (row,) = rows(audit)
    assert row["status"] == "current" and row["destination_digest"] != row["source_digest"]
    assert tree(layout) == before

    # The same name holding another image (other layers): a mismatch; an absent name: missing.
    assert main(["copy", f"docker://{source.host}/team/multi:1.0", f"oci:{layout}:app", "--platform", "linux/arm64",
                 "--format", "oci", *insecure(source), "--audit", str(tmp_path / "other.parquet")]) == 0
    assert verify(f"docker://{source.host}/team/app:v2s2", f"oci:{layout}:app", *insecure(source), audit=audit) == 1
    (row,) = rows(audit)
    assert (row["status"], row["error_kind"]) == ("failed", "mismatch")
    assert verify(f"docker://{source.host}/team/app:v2s2", f"oci:{layout}:nothing", *insecure(source),
                  audit=audit) == 1
    assert rows(audit)[0]["error_kind"] == "missing"


def test_records_drive_a_verify(source, mirror, tmp_path):
    records = tmp_path / "images.jsonl"
    assert main(["ls", f"docker://{source.host}/", *insecure(source), "--output", str(records)]) == 0
    before = tree(mirror.storage)
    audit = tmp_path / "v.parquet"
    assert verify("--records", str(records), f"docker://{mirror.host}/mirror", *insecure(source, mirror),
                  audit=audit) == 0
    found = rows(audit)
    assert len(found) == len(IMAGES) and {r["status"] for r in found} == {"current"}
    assert tree(mirror.storage) == before


def test_a_run_file_of_verify_jobs(source, mirror, tmp_path):
    audit = tmp_path / "v.parquet"
    config = tmp_path / "verify.yaml"
    config.write_text(json.dumps({
        "audit": str(audit),
        "registries": {"insecure": [source.host, mirror.host]},
        "jobs": [{"verify": f"docker://{source.host}/team", "to": [f"docker://{mirror.host}/mirror/team"],
                  "include": ["app:"]}],
    }))
    assert main(["run", str(config)]) == 0
    assert sorted(r["destination"] for r in rows(audit)) == sorted(
        f"docker://{mirror.host}/mirror/{repo}:{tag}" for repo, tag in IMAGES if repo == "team/app")


def test_a_run_file_cannot_mix_verify_and_copy_jobs(tmp_path, capsys):
    config = tmp_path / "mixed.yaml"
    config.write_text(json.dumps({"jobs": [{"verify": "oci:/x:a", "to": ["oci:/y"]},
                                           {"copy": "oci:/x:a", "to": ["oci:/y:a"]}]}))
    assert main(["run", str(config)]) == 2
    assert "cannot also copy" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "one"), [
    ("docker://h:5000/team/app:1", True), ("docker://h:5000/team/app", False), ("docker://h:5000", False),
    ("oci:/x:app", True), ("oci:/x", False), ("dir:/x", True),
])
def test_verify_checks_one_image_when_the_reference_names_one(text, one):
    from imagepush.transforms.stores.refs import parse_reference

    assert names_one_image(parse_reference(text)) is one
