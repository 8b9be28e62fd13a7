"""Transport-specific behaviour, checked against the public layout fixtures and skopeo.

Expected digests come from the fixture files' names, tests/fixtures/README.md, a
layout's info.txt, or ``sha256sum`` of the members; synthesised docker-archive manifests
are spelled out byte for byte because their digests are what a sync would publish.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import fsspec
import orjson
import pytest
import zstandard

try:  # tests/ is a package
    from tests.conftest import FIXTURES
    from tests.test_stores_contract import make_layer_tar, sha256, tiny_image, write_blob
except ModuleNotFoundError:  # tests/ is a plain directory on sys.path (pytest's rootdir-less mode)
    from conftest import FIXTURES  # type: ignore[no-redef]
    from test_stores_contract import make_layer_tar, sha256, tiny_image, write_blob
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.compression import DecompressionError
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import ManifestBlob, NotFound, Publication, StoreError
from imagepush.transforms.stores.dir import DirDestination, DirSource
from imagepush.transforms.stores.docker_archive.names import canonical_name
from imagepush.transforms.stores.docker_archive.reader import DockerArchiveSource
from imagepush.transforms.stores.docker_archive.writer import DockerArchiveDestination
from imagepush.transforms.stores.layout.index import REF_NAME, split_name
from imagepush.transforms.stores.layout.oci import OCILayoutDestination, OCILayoutSource
from imagepush.transforms.stores.refs import parse_reference
from imagepush.transforms.stores.transports import open_destination

LAYOUTS = FIXTURES / "layouts"
MULTI = LAYOUTS / "containers-image_oci_delete_image_multiple_images"
GGCR_INDEX = LAYOUTS / "go-containerregistry_test_index"
GGCR_ONE = LAYOUTS / "go-containerregistry_test_index_one_image"
ORAS = LAYOUTS / "oras_e2e_artifacts"
SKOPEO_DIR = LAYOUTS / "skopeo_dir_uncompressed-image-s2"
GGCR_TAR = LAYOUTS / "go-containerregistry_docker-archive_test_image_1" / "test_image_1.tar"
TWO_IMAGES = LAYOUTS / "skopeo_docker-archive_two-images" / "docker-two-images.tar.xz"


def read_blob(source, digest: str) -> bytes:
    with source.open_blob(digest) as f:
        return f.read()


# --------------------------------------------------------------------------- OCI layout


def test_oci_multiple_images_lists_seven_names() -> None:
    source = OCILayoutSource(str(MULTI))
    entries = list(source.list_images())
    assert [(e.ref, e.digest.split(":")[1][:12], e.media_type) for e in entries] == [
        ("latest", "a2f798327b3f", mt.OCI_INDEX),
        ("3.18.3", "a2f798327b3f", mt.OCI_INDEX),
        ("3", "93cbd11a4f41", mt.OCI_MANIFEST),
        ("3.18", "93cbd11a4f41", mt.OCI_MANIFEST),
        ("3.17.5", "5b2aba4d3c27", mt.OCI_MANIFEST),
        ("3.16.7", "861d3c014b0e", mt.OCI_INDEX),
        ("1.0.0", "0dc27f36a618", mt.OCI_MANIFEST),
    ]
    assert all(e.repository == "" and e.tag == e.ref for e in entries)
    assert len({e.digest for e in entries}) == 5


def test_oci_multiple_images_lookups() -> None:
    source = OCILayoutSource(str(MULTI))
    root = source.get_root("3.18")
    assert root.digest == "sha256:93cbd11a4f41467a0409b975499ae711bc6f8222de38d9f1b5a4097583195ad5"
    assert root.media_type == mt.OCI_MANIFEST
    assert len(root.data) == 525
    latest = source.get_root("latest")
    assert latest.digest == "sha256:a2f798327b3f25e3eff54badcb769953de235e62e3e32051d57a5e66246de4a1"
    assert latest.media_type == mt.OCI_INDEX
    # A nested child (linux/386 of "latest") is reachable by digest only.
    child = source.get_manifest("sha256:f6d60fd529b234d3e28837e15294d935f55da58ce57c4f9218cad38d0be82ce3")
    assert child.media_type == mt.OCI_MANIFEST
    assert hashlib.sha256(child.data).hexdigest() == "f6d60fd529b234d3e28837e15294d935f55da58ce57c4f9218cad38d0be82ce3"
    # The size quirk: the manifest of 1.0.0 declares 585 bytes, the blob has 584.
    config = read_blob(source, "sha256:913cf3a39d377faf89ed388ad913a318a390488c9f34c46e43424795cdabffe8")
    assert len(config) == 584
    assert source.get_root("@6").digest.startswith("sha256:0dc27f36")
    with pytest.raises(StoreError, match=r"holds 7 images; name one with oci:.*:REF"):
        source.get_root(None)
    with pytest.raises(NotFound):
        source.get_root("nope")
    with pytest.raises(NotFound):
        source.open_blob("sha256:" + "0" * 64)
    with pytest.raises(NotFound):
        source.get_manifest("sha256:" + "0" * 64)


def test_ggcr_test_index_types_come_from_content() -> None:
    """index.json declares OCI manifest, bare descriptor and Docker list; the blobs say otherwise."""
    source = OCILayoutSource(str(GGCR_INDEX))
    listed = {e.ref: (e.digest, e.media_type) for e in source.list_images()}
    assert listed == {
        "1": ("sha256:eebff607b1628d67459b0596643fc07de70d702eccf030f0bc7bb6fc2b278650", mt.DOCKER_SCHEMA2),
        "2": ("sha256:32589985702551b6c56033bb3334432a0a513bf9d6aceda0f67c42b003850720", mt.DOCKER_SCHEMA2),
        "3": ("sha256:05f95b26ed10668b7183c1e2da98610e91372fa9f510046d4ce5812addad86b5", mt.OCI_INDEX),
        # Declared as a Docker list; the blob has no mediaType, which a Docker list must carry.
        "4": ("sha256:2b29a2b8dea3af91ea7d0154be1da0c92d55ddd098540930fc8d3db7de377fdb", mt.OCI_INDEX),
    }
    for ref, (digest, media_type) in listed.items():
        root = source.get_root(ref)
        assert (root.digest, root.media_type) == (digest, media_type)
    assert source.get_manifest(listed["1"][0]).media_type == mt.DOCKER_SCHEMA2


def test_ggcr_one_image_without_name_or_media_type() -> None:
    source = OCILayoutSource(str(GGCR_ONE))
    [entry] = list(source.list_images())
    assert (entry.ref, entry.repository, entry.tag) == ("", "", None)
    root = source.get_root(None)
    assert root.digest == "sha256:98ceaf93e482fe91b9bfd6bba07137c098e49ee2d55e69f09fb6c951e75e0e46"
    assert root.media_type == mt.OCI_MANIFEST
    layer = read_blob(source, "sha256:492b89b9dd3cda4596f94916d17f6901455fb8bd7f4c5a2a90df8d39c90f48a0")
    assert len(layer) == 114 and layer[:2] == b"\x1f\x8b"


def test_oras_artifacts_named_and_unnamed() -> None:
    entries = list(OCILayoutSource(str(ORAS)).list_images())
    assert len(entries) == 20
    assert [e.ref for e in entries if e.ref] == ["unnamed", "multi", "foobar", "v1.3.8", "empty", "config", "blob"]
    assert sum(1 for e in entries if e.tag is None) == 13


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("apps/web:1.0", ("apps/web", "1.0")),
        ("latest", ("", "latest")),
        ("", ("", None)),
        ("index.docker.io/library/busybox:latest", ("index.docker.io/library/busybox", "latest")),
        ("localhost:5000/app", ("localhost:5000/app", None)),
        ("app@sha256:" + "a" * 64, ("app", None)),
    ],
)
def test_split_name(ref: str, expected: tuple[str, str | None]) -> None:
    assert split_name(ref) == expected


def _index_entries(path: Path) -> list[dict]:
    return orjson.loads((path / "index.json").read_bytes())["manifests"]


def test_oci_publish_five_images_in_one_call(tmp_path: Path) -> None:
    dest = OCILayoutDestination(str(tmp_path / "layout"))
    dest.prepare()
    assert (tmp_path / "layout" / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    images = [tiny_image(f"image {i}\n".encode(), oci=True) for i in range(5)]
    for image in images:
        write_blob(dest, image.config_desc, image.config)
        write_blob(dest, image.layer_desc, image.layer_gz)
        dest.put_manifest(image.manifest_blob, root=True)
    dest.publish([Publication(f"app:v{i}", image.root_desc) for i, image in enumerate(images)])
    index = orjson.loads((tmp_path / "layout" / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["mediaType"] == mt.OCI_INDEX
    assert [(m["annotations"][REF_NAME], m["digest"], m["mediaType"]) for m in index["manifests"]] == [
        (f"app:v{i}", image.root_desc.digest, mt.OCI_MANIFEST) for i, image in enumerate(images)
    ]
    source = OCILayoutSource(str(tmp_path / "layout"))
    assert [(e.repository, e.tag) for e in source.list_images()] == [("app", f"v{i}") for i in range(5)]
    assert source.get_root("app:v3").data == images[3].manifest


def test_oci_index_does_not_depend_on_the_order_publications_arrive_in(tmp_path: Path) -> None:
    images = [tiny_image(text, oci=True) for text in (b"one\n", b"two\n", b"three\n")]
    publications = [Publication(f"name-{i}", image.root_desc) for i, image in enumerate(images)]
    publications.append(Publication(None, images[0].root_desc))
    written = []
    for order in (publications, publications[::-1]):
        layout = tmp_path / f"layout-{len(written)}"
        dest = OCILayoutDestination(str(layout))
        dest.prepare()
        for image in images:
            dest.put_manifest(image.manifest_blob)
        dest.publish(list(order))
        written.append((layout / "index.json").read_bytes())
    assert written[0] == written[1]


def test_oci_publish_moves_names_and_replaces_unnamed(tmp_path: Path) -> None:
    """Like containers/image: a name moves to the new image, an unnamed same-digest entry is replaced."""
    layout = tmp_path / "layout"
    dest = OCILayoutDestination(str(layout))
    dest.prepare()
    one, two = tiny_image(b"one\n", oci=True), tiny_image(b"two\n", oci=True)
    for image in (one, two):
        dest.put_manifest(image.manifest_blob)

    def entries() -> list[tuple[str, str | None]]:
        return [(m["digest"], (m.get("annotations") or {}).get(REF_NAME)) for m in _index_entries(layout)]

    dest.publish([Publication(None, one.root_desc)])
    dest.publish([Publication(None, one.root_desc)])  # already there unnamed: no duplicate
    assert entries() == [(one.root_desc.digest, None)]
    dest.publish([Publication("keep", one.root_desc)])  # replaces the unnamed entry
    assert entries() == [(one.root_desc.digest, "keep")]
    dest.publish([Publication("latest", two.root_desc), Publication(None, two.root_desc)])
    assert entries() == [(one.root_desc.digest, "keep"), (two.root_desc.digest, "latest"), (two.root_desc.digest, None)]
    dest.publish([Publication("latest", one.root_desc), Publication("keep", one.root_desc)])
    assert entries() == [
        (one.root_desc.digest, "keep"),  # unchanged entries keep their place
        (two.root_desc.digest, None),
        (one.root_desc.digest, "latest"),  # the name moved from two to one
    ]


def test_oci_prepare_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an OCI layout"):
        OCILayoutDestination(str(tmp_path / "stuff")).prepare()
    # An existing layout is kept, index and all.
    shutil.copytree(GGCR_ONE, tmp_path / "copy")
    before = (tmp_path / "copy" / "index.json").read_bytes()
    OCILayoutDestination(str(tmp_path / "copy")).prepare()
    assert (tmp_path / "copy" / "index.json").read_bytes() == before


def test_oci_rejects_schema1(tmp_path: Path) -> None:
    dest = OCILayoutDestination(str(tmp_path / "l"))
    assert not dest.accepts_manifest(mt.DOCKER_SCHEMA1_SIGNED)
    with pytest.raises(StoreError):
        dest.put_manifest(ManifestBlob(b"{}", mt.DOCKER_SCHEMA1, sha256(b"{}")))


# --------------------------------------------------------------------------- dir:


def test_skopeo_dir_without_version_file() -> None:
    assert not (SKOPEO_DIR / "version").exists()
    source = DirSource(str(SKOPEO_DIR))
    [entry] = list(source.list_images())
    assert entry.ref == "" and entry.repository == "" and entry.tag is None
    assert entry.digest == "sha256:0d02cf7467013682782839465b03442dfe71c7e2ac994137507bbfb9000f5960"
    assert entry.media_type == mt.DOCKER_SCHEMA2
    root = source.get_root(None)
    assert root.data == (SKOPEO_DIR / "manifest.json").read_bytes()
    assert source.get_manifest(entry.digest) == root
    layer = read_blob(source, "sha256:160d823fdc48e62f97ba62df31e55424f8f5eb6b679c865eec6e59adfe304710")
    assert len(layer) == 2048 and hashlib.sha256(layer).hexdigest().startswith("160d823f")
    with pytest.raises(StoreError):
        source.get_root("latest")


def test_dir_prepare_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        DirDestination(str(foreign)).prepare()
    assert (foreign / "data.bin").exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "version").write_bytes(b"Directory Transport Version: 1.1\n")
    (old / "manifest.json").write_bytes(b"{}")
    (old / "abc").write_bytes(b"blob")
    DirDestination(str(old)).prepare()
    assert sorted(p.name for p in old.iterdir()) == ["version"]

    fresh = tmp_path / "fresh" / "nested"
    DirDestination(str(fresh)).prepare()
    assert (fresh / "version").read_bytes() == b"Directory Transport Version: 1.1\n"


def test_dir_holds_one_image(tmp_path: Path) -> None:
    dest = DirDestination(str(tmp_path / "d"))
    dest.prepare()
    one, two = tiny_image(b"1"), tiny_image(b"2")
    with pytest.raises(StoreError, match="dir: holds one image"):
        dest.publish([Publication(None, one.root_desc, manifest=one.manifest),
                      Publication(None, two.root_desc, manifest=two.manifest)])
    with pytest.raises(StoreError, match="no manifest bytes"):
        dest.publish([Publication(None, one.root_desc)])
    dest.put_manifest(one.manifest_blob, root=True)
    assert not (tmp_path / "d" / "manifest.json").exists()
    dest.put_manifest(two.manifest_blob)
    assert (tmp_path / "d" / f"{two.root_desc.digest[7:]}.manifest.json").read_bytes() == two.manifest


# --------------------------------------------------------------------------- docker-archive

GGCR_MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
    b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":330,'
    b'"digest":"sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e"},'
    b'"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":10240,'
    b'"digest":"sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17"}]}'
)


def test_ggcr_docker_archive() -> None:
    source = DockerArchiveSource(str(GGCR_TAR))
    [entry] = list(source.list_images())
    assert (entry.ref, entry.repository, entry.tag) == (
        "bazel/v1/tarball:test_image_1", "bazel/v1/tarball", "test_image_1",
    )
    assert entry.digest == "sha256:0d36dc1577412b3e7dd11d71301403fd3a14a3f2edc55c569d5abd5e87c0e8ec"
    assert entry.digest == sha256(GGCR_MANIFEST)
    root = source.get_root(None)
    assert root == source.get_root("bazel/v1/tarball:test_image_1") == source.get_manifest(entry.digest)
    assert root.data == GGCR_MANIFEST and root.media_type == mt.DOCKER_SCHEMA2
    config = read_blob(source, "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e")
    assert orjson.loads(config)["rootfs"]["diff_ids"] == [
        "sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17"
    ]
    layer = read_blob(source, "sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17")
    assert len(layer) == 10240 and sha256(layer).endswith("8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17")
    with pytest.raises(NotFound):
        source.get_root("bazel/v1/tarball:other")
    # containers/image writes and accepts the qualified spelling of the same name.
    assert source.get_root("docker.io/bazel/v1/tarball:test_image_1") == root


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1", "docker.io/library/busybox:1"),
        ("interop/base:2", "docker.io/interop/base:2"),
        ("docker.io/interop/base:2", "docker.io/interop/base:2"),
        ("index.docker.io/busybox:1", "docker.io/library/busybox:1"),
        ("localhost/app:1", "localhost/app:1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("example.com/empty/but:different", "example.com/empty/but:different"),
    ],
)
def test_canonical_archive_names(ref: str, expected: str) -> None:
    assert canonical_name(ref) == expected


def test_xz_archive_with_two_images_and_symlinked_layer() -> None:
    source = DockerArchiveSource(str(TWO_IMAGES))
    entries = list(source.list_images())
    assert [(e.ref, e.repository, e.tag, e.digest) for e in entries] == [
        ("example.com/empty:latest", "example.com/empty", "latest",
         "sha256:eaec90ebbea8df533ffc9246e6140623bbfe34173b29cf66a79889d3aaff2af9"),
        ("example.com/empty/but:different", "example.com/empty/but", "different",
         "sha256:ed45eb4e6cfcf500fa367f72cc2c4279de666bd7c9215efddaaab67d2f358f6c"),
    ]
    with pytest.raises(StoreError, match="holds 2 images"):
        source.get_root(None)
    second = orjson.loads(source.get_root("example.com/empty/but:different").data)
    assert second["config"] == {
        "mediaType": mt.DOCKER_CONFIG, "size": 1525,
        "digest": "sha256:5a7ef13e1893f2f91d29b3c2b9224e771a57c48ff6fe8d2aee91f3f91062fa2a",
    }
    diff_id = "sha256:dcbaa840b88808e329e03e84c9193dd1d4765998b6643babe2fd24e6771bdca2"
    assert second["layers"] == [{"mediaType": mt.DOCKER_LAYER, "size": 1536, "digest": diff_id}]
    assert sha256(read_blob(source, diff_id)) == diff_id
    assert source.get_root("@0").digest == entries[0].digest


def _tar(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar from (name, bytes) regular files and (name, "->target") symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_ggcr_tarball_write_variant(tmp_path: Path) -> None:
    """Config named ``sha256:<hex>`` and compressed ``<hex>.tar.gz`` / ``.tar.zst`` layers."""
    image = tiny_image()
    layer2 = make_layer_tar({"two.txt": b"2"})
    zst = zstandard.ZstdCompressor().compress(layer2)
    config = orjson.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [image.diff_id, sha256(layer2)]}})
    manifest = orjson.dumps([{
        "Config": f"sha256:{sha256(config)[7:]}",
        "RepoTags": ["ggcr/app:v1"],
        "Layers": [f"{sha256(image.layer_gz)[7:]}.tar.gz", f"{sha256(zst)[7:]}.tar.zst"],
    }])
    path = tmp_path / "ggcr.tar"
    path.write_bytes(_tar([
        (f"sha256:{sha256(config)[7:]}", config),
        (f"{sha256(image.layer_gz)[7:]}.tar.gz", image.layer_gz),
        (f"{sha256(zst)[7:]}.tar.zst", zst),
        ("manifest.json", manifest),
    ]))
    source = DockerArchiveSource(str(path))
    root = source.get_root("ggcr/app:v1")
    # zstd cannot be written in Docker schema2, so this image is described as OCI.
    assert root.media_type == mt.OCI_MANIFEST
    doc = orjson.loads(root.data)
    assert doc["config"] == {"mediaType": mt.OCI_CONFIG, "digest": sha256(config), "size": len(config)}
    assert doc["layers"] == [
        {"mediaType": mt.OCI_LAYER_GZIP, "digest": sha256(image.layer_gz), "size": len(image.layer_gz)},
        {"mediaType": mt.OCI_LAYER_ZSTD, "digest": sha256(zst), "size": len(zst)},
    ]
    assert read_blob(source, sha256(image.layer_gz)) == image.layer_gz
    assert read_blob(source, sha256(zst)) == zst
    assert read_blob(source, sha256(config)) == config


def test_gzip_only_layers_stay_schema2(tmp_path: Path) -> None:
    image = tiny_image()
    path = tmp_path / "a.tar"
    path.write_bytes(_tar([
        ("cfg", image.config),
        ("l.tar.gz", image.layer_gz),
        ("manifest.json", orjson.dumps([{"Config": "cfg", "RepoTags": None, "Layers": ["l.tar.gz"]}])),
    ]))
    source = DockerArchiveSource(str(path))
    [entry] = list(source.list_images())
    assert (entry.ref, entry.repository, entry.tag) == ("", "", None)
    doc = orjson.loads(source.get_root(None).data)
    assert doc["mediaType"] == mt.DOCKER_SCHEMA2
    assert doc["layers"] == [{"mediaType": mt.DOCKER_LAYER_GZIP, "size": len(image.layer_gz),
                              "digest": image.layer_desc.digest}]


def test_docker25_layout_gzip_compressed(tmp_path: Path) -> None:
    """manifest.json pointing into blobs/sha256, the whole archive gzip-compressed."""
    image = tiny_image()
    config_hex, layer_hex = sha256(image.config)[7:], image.diff_id[7:]
    inner = _tar([
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        (f"blobs/sha256/{config_hex}", image.config),
        (f"blobs/sha256/{layer_hex}", image.layer_tar),
        ("index.json", b'{"schemaVersion":2,"manifests":null}'),
        ("manifest.json", orjson.dumps([{
            "Config": f"blobs/sha256/{config_hex}", "RepoTags": ["app:1", "app:2"],
            "Layers": [f"blobs/sha256/{layer_hex}"],
        }])),
        ("./legacy/layer.tar", f"../blobs/sha256/{layer_hex}"),
    ])
    path = tmp_path / "d25.tar.gz"
    path.write_bytes(gzip.compress(inner))
    source = DockerArchiveSource(str(path))
    assert [(e.ref, e.tag) for e in source.list_images()] == [("app:1", "1"), ("app:2", "2")]
    doc = orjson.loads(source.get_root("app:2").data)
    assert doc["layers"][0]["digest"] == image.diff_id
    assert read_blob(source, image.diff_id) == image.layer_tar
    assert read_blob(source, sha256(image.config)) == image.config


def test_docker_archive_layers_are_decompressed_by_magic(tmp_path: Path) -> None:
    """gzip, zstd and a plain tar mislabelled tar.gzip all end up as <diffid>.tar."""
    dest = DockerArchiveDestination(str(tmp_path / "out.tar"))
    dest.prepare()
    tars = [make_layer_tar({f"f{i}": bytes([i]) * (3 << 20)}) for i in range(3)]
    half0, half1 = len(tars[0]) // 2, len(tars[1]) // 3
    zstd = zstandard.ZstdCompressor()
    stored = [
        gzip.compress(tars[0][:half0]) + gzip.compress(tars[0][half0:]),  # two gzip members
        zstd.compress(tars[1][:half1]) + zstd.compress(tars[1][half1:]),  # two zstd frames
        tars[2],
    ]
    for blob in stored:
        write_blob(dest, Descriptor(mt.DOCKER_LAYER_GZIP, sha256(blob), len(blob)), blob, chunk=65536)
        assert dest.has_blob(sha256(blob))
    staging = Path(str(tmp_path / "out.tar") + ".imagepush-staging")
    assert sorted(p.name for p in (staging / "layers").iterdir()) == sorted(f"{sha256(t)[7:]}.tar" for t in tars)
    for tar_bytes in tars:
        assert (staging / "layers" / f"{sha256(tar_bytes)[7:]}.tar").read_bytes() == tar_bytes
    assert (staging / "diffids" / "sha256" / sha256(stored[1])[7:]).read_bytes() == sha256(tars[1]).encode()

    config = orjson.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]}})
    dest.put_blob(Descriptor(mt.DOCKER_CONFIG, sha256(config), len(config)), config)
    dest.publish([Publication("app:1", Descriptor(mt.DOCKER_SCHEMA2, sha256(b"m"), 1), sha256(config)),
                  Publication("mirror.io/app", Descriptor(mt.DOCKER_SCHEMA2, sha256(b"m"), 1), sha256(config))])
    assert not staging.exists()
    with tarfile.open(tmp_path / "out.tar") as tar:
        names = tar.getnames()
        manifest = orjson.loads(tar.extractfile("manifest.json").read())
    assert names == [f"{sha256(config)[7:]}.json", *[f"{sha256(t)[7:]}.tar" for t in tars], "manifest.json"]
    assert manifest == [{
        "Config": f"{sha256(config)[7:]}.json",
        "RepoTags": ["app:1", "mirror.io/app:latest"],
        "Layers": [f"{sha256(t)[7:]}.tar" for t in tars],
    }]


def test_docker_archive_refuses_a_layer_with_bytes_after_its_gzip_stream(tmp_path: Path) -> None:
    """Zero padding after the last member is refused, as skopeo refuses it (tests/test_compression.py)."""
    dest = DockerArchiveDestination(str(tmp_path / "out.tar"))
    dest.prepare()
    padded = tiny_image().layer_gz + b"\0" * 512
    with pytest.raises(DecompressionError, match="not a gzip member"):
        write_blob(dest, Descriptor(mt.DOCKER_LAYER_GZIP, sha256(padded), len(padded)), padded, chunk=65536)
    assert not dest.has_blob(sha256(padded))
    staging = tmp_path / "out.tar.imagepush-staging"
    assert [p for p in staging.rglob("*") if p.is_file()] == []


def test_docker_archive_two_images_share_layers(tmp_path: Path) -> None:
    base = tiny_image(b"base\n")
    config2 = orjson.dumps({"architecture": "arm64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [base.diff_id]}})
    out = tmp_path / "two.tar"
    dest = DockerArchiveDestination(str(out))
    dest.prepare()
    write_blob(dest, base.layer_desc, base.layer_gz)
    dest.put_blob(base.config_desc, base.config)
    dest.put_blob(Descriptor(mt.DOCKER_CONFIG, sha256(config2), len(config2)), config2)
    dest.publish([
        Publication("a:1", base.root_desc, base.config_desc.digest),
        Publication("b:1", base.root_desc, sha256(config2)),
        Publication("a:2", base.root_desc, base.config_desc.digest),
        Publication("b:1", base.root_desc, base.config_desc.digest),  # a tag moves to the last image naming it
    ])
    with tarfile.open(out) as tar:
        assert sum(1 for n in tar.getnames() if n.endswith(".tar")) == 1
    source = DockerArchiveSource(str(out))
    assert [(e.ref, orjson.loads(source.get_manifest(e.digest).data)["config"]["digest"])
            for e in source.list_images()] == [
        ("a:1", base.config_desc.digest), ("a:2", base.config_desc.digest), ("b:1", base.config_desc.digest),
        ("", sha256(config2)),
    ]


def test_docker_archive_missing_layer_is_an_error(tmp_path: Path) -> None:
    image = tiny_image()
    dest = DockerArchiveDestination(str(tmp_path / "x.tar"))
    dest.prepare()
    dest.put_blob(image.config_desc, image.config)
    with pytest.raises(StoreError, match="never written"):
        dest.publish([Publication("x:1", image.root_desc, image.config_desc.digest)])
    assert not (tmp_path / "x.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# --------------------------------------------------------------------------- fsspec


def test_memory_url_archive_read() -> None:
    """A source opened from an fsspec URL, with the xz archive copied to memory://."""
    fs = fsspec.filesystem("memory")
    name = f"/fixtures-{uuid.uuid4().hex}"
    try:
        fs.pipe(f"{name}/two.tar.xz", TWO_IMAGES.read_bytes())
        source = DockerArchiveSource(f"memory://{name}/two.tar.xz")
        assert [e.ref for e in source.list_images()] == ["example.com/empty:latest", "example.com/empty/but:different"]
        root = source.get_root("example.com/empty:latest")
        assert root.digest == "sha256:eaec90ebbea8df533ffc9246e6140623bbfe34173b29cf66a79889d3aaff2af9"
        layer = read_blob(source, "sha256:dcbaa840b88808e329e03e84c9193dd1d4765998b6643babe2fd24e6771bdca2")
        assert len(layer) == 1536
    finally:
        fs.rm(name, recursive=True)


# --------------------------------------------------------------------------- skopeo


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("skopeo is required when CI=true")
        pytest.skip("skopeo is not installed")
    return path


def _run(*args: str) -> bytes:
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["oci", "dir", "docker-archive"])
def test_skopeo_reads_what_we_write(kind: str, tmp_path: Path) -> None:
    skopeo = _skopeo()
    # skopeo < 1.14 finds only OCI-typed entries in index.json, so the layout gets an OCI image.
    image = tiny_image(b"skopeo can read this\n", oci=kind == "oci")
    location = str(tmp_path / ("image.tar" if kind == "docker-archive" else "image"))
    ref = {"oci": "v1", "dir": None, "docker-archive": "example.com/app:v1"}[kind]
    dest = open_destination(parse_reference(f"{kind}:{location}"))
    dest.prepare()
    write_blob(dest, image.config_desc, image.config)
    write_blob(dest, image.layer_desc, image.layer_gz)
    dest.put_manifest(image.manifest_blob, root=True)
    dest.publish([Publication(ref, image.root_desc, image.config_desc.digest, image.manifest)])

    name = f"{kind}:{location}" + (f":{ref}" if ref else "")
    config = _run(skopeo, "inspect", "--raw", "--config", name)
    assert sha256(config) == image.config_desc.digest
    raw = _run(skopeo, "inspect", "--raw", name)
    if kind == "docker-archive":
        assert [layer["digest"] for layer in orjson.loads(raw)["layers"]] == [image.diff_id]
        # A full copy makes skopeo stream and verify every blob of the archive.
        copy = tmp_path / "copied"
        _run(skopeo, "copy", name, f"dir:{copy}")
        assert (copy / image.diff_id[7:]).read_bytes() == image.layer_tar
    else:
        assert raw == image.manifest
