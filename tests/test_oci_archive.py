"""oci-archive: read as skopeo, podman and buildah write it (and as `tar -C dir .` does), and written for skopeo."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import EXIT_USAGE, main
from imagepush.transforms.stores.base import StoreError
from imagepush.transforms.stores.layout.archive import OCIArchiveDestination, OCIArchiveSource

try:
    from tests.conftest import require_tool, run, sha256
    from tests.test_stores_contract import publication, store_image, tiny_image
except ImportError:  # tests/ is not a package
    from conftest import require_tool, run, sha256  # type: ignore[no-redef]
    from test_stores_contract import publication, store_image, tiny_image  # type: ignore[no-redef]


def blobs_match_their_names(layout: Path) -> None:
    """Every blob of a written layout hashes to its file name."""
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_archive_written_by_skopeo_is_copied_with_its_digest(layout: Path, tmp_path: Path) -> None:
    require_tool("skopeo")
    archive = tmp_path / "app.tar"
    run(["skopeo", "copy", "-q", f"oci:{layout}:demo/app:1.0", f"oci-archive:{archive}:demo/app:1.0"], timeout=60)
    raw = run(["skopeo", "inspect", "--raw", f"oci-archive:{archive}:demo/app:1.0"], timeout=60).stdout
    audit = tmp_path / "audit.parquet"
    assert main(["copy", f"oci-archive:{archive}:demo/app:1.0", f"oci:{tmp_path}/out:app", f"dir:{tmp_path}/dir",
                 "--audit", str(audit)]) == 0
    assert run(["skopeo", "inspect", "--raw", f"oci:{tmp_path}/out:app"], timeout=60).stdout == raw
    assert (tmp_path / "dir" / "manifest.json").read_bytes() == raw
    # skopeo reads every blob back through its own digest checks.
    run(["skopeo", "copy", "-q", f"dir:{tmp_path}/dir", f"oci:{tmp_path}/check:app"], timeout=60)
    assert {r["source_digest"] for r in pq.read_table(audit).to_pylist()} == {sha256(raw)}


def test_archive_with_dot_slash_names_gives_an_index_and_all_its_children(layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "dot.tar"
    with tarfile.open(archive, "w") as tar:  # names "./index.json", "./blobs/…", like `tar -C layout -cf x .`
        tar.add(layout, arcname=".")
    index = json.loads((layout / "index.json").read_bytes())
    multi = next(m for m in index["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == "demo/multi:1.0")
    assert main(["copy", f"oci-archive:{archive}:demo/multi:1.0", f"oci:{tmp_path}/out:multi",
                 "--audit", str(tmp_path / "audit.parquet")]) == 0
    (written,) = json.loads((tmp_path / "out" / "index.json").read_bytes())["manifests"]
    assert written["digest"] == multi["digest"]
    def blob(digest: str) -> dict:
        return json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())

    wanted = {multi["digest"]}
    for child in blob(multi["digest"])["manifests"]:
        manifest = blob(child["digest"])
        wanted |= {child["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    blobs_match_their_names(tmp_path / "out")
    assert {f"sha256:{p.name}" for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()} == wanted


def test_missing_archive_is_a_failed_image_with_one_line(tmp_path: Path, capsys) -> None:
    audit = tmp_path / "audit.parquet"
    assert main(["copy", f"oci-archive:{tmp_path}/none.tar:x", f"oci:{tmp_path}/out", "--audit", str(audit)]) == 1
    (row,) = pq.read_table(audit).to_pylist()
    assert row["error"] == f"oci-archive:{tmp_path}/none.tar: {tmp_path}/none.tar not found"


def test_written_archive_is_read_by_skopeo_with_the_same_digest(layout: Path, tmp_path: Path) -> None:
    require_tool("skopeo")
    archive = tmp_path / "out" / "app.tar"
    assert main(["copy", f"oci:{layout}:demo/app:1.0", f"oci-archive:{archive}:app",
                 "--audit", str(tmp_path / "audit.parquet")]) == 0
    raw = run(["skopeo", "inspect", "--raw", f"oci:{layout}:demo/app:1.0"], timeout=60).stdout
    assert run(["skopeo", "inspect", "--raw", f"oci-archive:{archive}:app"], timeout=60).stdout == raw
    run(["skopeo", "copy", "-q", f"oci-archive:{archive}:app", f"oci:{tmp_path}/check:app"], timeout=60)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["app.tar"]  # no staging left


def test_sync_into_an_archive_replaces_it_with_the_same_bytes(layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "all.tar"
    archive.write_bytes(b"an older archive")
    digests = []
    for run_number in range(2):
        assert main(["sync", f"oci:{layout}", f"oci-archive:{archive}",
                     "--audit", str(tmp_path / f"audit{run_number}.parquet")]) == 0
        digests.append(sha256(archive.read_bytes()))
    assert digests[0] == digests[1]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    index = json.loads((layout / "index.json").read_bytes())
    written = OCIArchiveSource(str(archive))
    assert sorted((e.ref, e.digest) for e in written.list_images()) == sorted(
        (m["annotations"]["org.opencontainers.image.ref.name"], m["digest"]) for m in index["manifests"])
    assert len(names) == 4 + len(list((layout / "blobs" / "sha256").iterdir()))


def test_archive_destination_that_is_a_directory_is_refused(layout: Path, tmp_path: Path, capsys) -> None:
    assert main(["copy", f"oci:{layout}:demo/app:1.0", f"oci-archive:{tmp_path}:app"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"imagepush: oci-archive:{tmp_path}: {tmp_path} is a directory, not an archive file (use oci: for a layout)\n")


def test_a_publish_retried_after_packing_keeps_the_archive_and_refuses_what_it_lacks(tmp_path: Path) -> None:
    """Packing removes the staged layout: a retry can only confirm what the archive holds."""
    archive = tmp_path / "a.tar"
    dest = OCIArchiveDestination(str(archive))
    dest.prepare()
    image, other = tiny_image(b"packed\n", oci=True), tiny_image(b"never staged\n", oci=True)
    store_image(dest, image)
    assert dest.publish([publication(image, "app:1")]) == {}
    packed = archive.read_bytes()
    assert dest.publish([publication(image, "app:1")]) == {}
    assert archive.read_bytes() == packed
    with pytest.raises(StoreError, match="the archive was packed without app:2, and its staged layout is gone"):
        dest.publish([publication(other, "app:2")])
    assert archive.read_bytes() == packed
