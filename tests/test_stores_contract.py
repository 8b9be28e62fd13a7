"""One contract every file store pair (destination + matching source) must meet.

Runs against the OCI layout, dir: and docker-archive stores, each on a local temporary
directory and on fsspec's ``memory://`` filesystem, so the stores are exercised through
fsspec the way remote URLs (s3://, gs://) would use them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import uuid
from dataclasses import dataclass
from typing import Iterator

import fsspec
import orjson
import pytest

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import Destination, ManifestBlob, NotFound, Publication, Source, StoreError
from imagepush.transforms.stores.refs import ImageReference
from imagepush.transforms.stores.transports import open_destination, open_source

KINDS = ("oci", "dir", "docker-archive")
LOCATIONS = ("local", "memory")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer_tar(files: dict[str, bytes]) -> bytes:
    """A real, deterministic layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@dataclass(frozen=True)
class TinyImage:
    """A schema2 image with one gzip layer, built from scratch so every digest is known."""

    layer_tar: bytes
    layer_gz: bytes
    config: bytes
    manifest: bytes
    #: (manifest, config, layer) media types
    types: tuple[str, str, str] = (mt.DOCKER_SCHEMA2, mt.DOCKER_CONFIG, mt.DOCKER_LAYER_GZIP)

    @property
    def diff_id(self) -> str:
        return sha256(self.layer_tar)

    @property
    def config_desc(self) -> Descriptor:
        return Descriptor(self.types[1], sha256(self.config), len(self.config))

    @property
    def layer_desc(self) -> Descriptor:
        return Descriptor(self.types[2], sha256(self.layer_gz), len(self.layer_gz))

    @property
    def manifest_blob(self) -> ManifestBlob:
        return ManifestBlob(self.manifest, self.types[0], sha256(self.manifest))

    @property
    def root_desc(self) -> Descriptor:
        return Descriptor(self.types[0], sha256(self.manifest), len(self.manifest))


def tiny_image(text: bytes = b"hello\n", arch: str = "amd64", *, oci: bool = False) -> TinyImage:
    """Docker schema2 by default; ``oci=True`` gives the same image with OCI media types."""
    layer_tar = make_layer_tar({"hello.txt": text})
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config = orjson.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
        "history": [{"created_by": "test"}],
    })
    types = (mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER_GZIP) if oci else (
        mt.DOCKER_SCHEMA2, mt.DOCKER_CONFIG, mt.DOCKER_LAYER_GZIP)
    manifest = orjson.dumps({
        "schemaVersion": 2,
        "mediaType": types[0],
        "config": {"mediaType": types[1], "size": len(config), "digest": sha256(config)},
        "layers": [{"mediaType": types[2], "size": len(layer_gz), "digest": sha256(layer_gz)}],
    })
    return TinyImage(layer_tar, layer_gz, config, manifest, types)


@dataclass
class StorePair:
    kind: str
    url: str
    fs: fsspec.AbstractFileSystem
    base: str

    def destination(self) -> Destination:
        return open_destination(ImageReference(self.kind, self.url))

    def source(self) -> Source:
        return open_source(ImageReference(self.kind, self.url))

    @property
    def ref(self) -> str | None:
        return {"oci": "apps/web:1.0", "dir": None, "docker-archive": "example.com/apps/web:1.0"}[self.kind]

    def leftovers(self) -> list[str]:
        """Temporary files a commit/abort/publish should not leave behind."""
        return [p for p in self.fs.find(self.base) if "/.tmp-" in p]


@pytest.fixture(params=[(k, loc) for k in KINDS for loc in LOCATIONS], ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request: pytest.FixtureRequest, tmp_path) -> Iterator[StorePair]:
    kind, location = request.param
    leaf = "image.tar" if kind == "docker-archive" else "image"
    if location == "local":
        base = str(tmp_path)
        url = str(tmp_path / leaf)
        fs = fsspec.filesystem("file")
    else:
        name = f"imagepush-contract-{uuid.uuid4().hex}"
        base = f"/{name}"
        url = f"memory://{name}/{leaf}"
        fs = fsspec.filesystem("memory")
    yield StorePair(kind, url, fs, base)
    if location == "memory" and fs.exists(base):
        fs.rm(base, recursive=True)


def write_blob(dest: Destination, desc: Descriptor, data: bytes, chunk: int = 7) -> None:
    sink = dest.blob_sink(desc)
    for start in range(0, len(data), chunk):
        sink.write(data[start : start + chunk])
    sink.commit()


def store_image(dest: Destination, image: TinyImage) -> None:
    write_blob(dest, image.config_desc, image.config)
    write_blob(dest, image.layer_desc, image.layer_gz)
    dest.put_manifest(image.manifest_blob, root=True)


def publication(image: TinyImage, ref: str | None) -> Publication:
    return Publication(ref=ref, descriptor=image.root_desc, config_digest=image.config_desc.digest,
                       manifest=image.manifest)


def test_blob_visible_only_after_commit(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    sink = dest.blob_sink(image.layer_desc)
    sink.write(image.layer_gz[:10])
    sink.write(image.layer_gz[10:])
    assert dest.has_blob(image.layer_desc.digest) is False
    sink.commit()
    assert dest.has_blob(image.layer_desc.digest) is True
    write_blob(dest, image.config_desc, image.config)
    assert dest.has_blob(image.config_desc.digest) is True
    assert pair.leftovers() == []


def test_aborted_blob_is_not_visible(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    for desc, data in ((image.layer_desc, image.layer_gz), (image.config_desc, image.config)):
        sink = dest.blob_sink(desc)
        sink.write(data)
        sink.abort()
        sink.abort()  # safe twice
        assert dest.has_blob(desc.digest) is False
    assert pair.leftovers() == []
    with pytest.raises(StoreError):
        sink.write(b"more")


def test_commit_twice_is_idempotent(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    write_blob(dest, image.layer_desc, image.layer_gz)
    write_blob(dest, image.layer_desc, image.layer_gz, chunk=3)
    dest.put_blob(image.config_desc, image.config)
    dest.put_blob(image.config_desc, image.config)
    assert dest.has_blob(image.layer_desc.digest)
    assert dest.has_blob(image.config_desc.digest)
    assert pair.leftovers() == []


def test_publish_and_read_back(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    store_image(dest, image)
    dest.publish([publication(image, pair.ref)])
    assert pair.leftovers() == []

    source = pair.source()
    root = source.get_root(pair.ref)
    entries = list(source.list_images())
    assert len(entries) == 1
    assert entries[0].ref == (pair.ref or "")
    assert entries[0].digest == root.digest
    assert source.get_manifest(root.digest) == root
    if pair.kind == "docker-archive":
        # Archives keep config and uncompressed layers only; the manifest is synthesised.
        doc = orjson.loads(root.data)
        assert root.media_type == image.types[0]
        assert doc["config"]["digest"] == image.config_desc.digest
        assert [layer["digest"] for layer in doc["layers"]] == [image.diff_id]
        assert [layer["mediaType"] for layer in doc["layers"]] == [mt.DOCKER_LAYER]
        assert (entries[0].repository, entries[0].tag) == ("example.com/apps/web", "1.0")
        with source.open_blob(image.diff_id) as f:
            assert f.read() == image.layer_tar
    else:
        assert root.data == image.manifest
        assert root.digest == image.root_desc.digest
        assert root.media_type == image.types[0]
        with source.open_blob(image.layer_desc.digest) as f:
            assert f.read() == image.layer_gz
    with source.open_blob(image.config_desc.digest) as f:
        assert f.read() == image.config
    with pytest.raises(NotFound):
        source.open_blob(sha256(b"not stored"))


def test_publish_twice_is_idempotent(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    store_image(dest, image)
    dest.publish([publication(image, pair.ref)])
    first = {p: pair.fs.cat_file(p) for p in pair.fs.find(pair.base)}
    dest.publish([publication(image, pair.ref)])
    second = {p: pair.fs.cat_file(p) for p in pair.fs.find(pair.base)}
    assert second == first
    assert len(list(pair.source().list_images())) == 1


def test_pickles_cheaply(pair: StorePair) -> None:
    dest = pair.destination()
    dest.prepare()
    image = tiny_image(oci=pair.kind == "oci")
    write_blob(dest, image.config_desc, image.config)  # opens the filesystem and caches
    clone = pickle.loads(pickle.dumps(dest))
    assert len(pickle.dumps(dest)) < 400
    assert clone.has_blob(image.config_desc.digest)
    source = pair.source()
    clone_source = pickle.loads(pickle.dumps(source))
    assert type(clone_source) is type(source)


def test_manifest_types_accepted(pair: StorePair) -> None:
    dest = pair.destination()
    expected = {
        "oci": {mt.OCI_MANIFEST, mt.OCI_INDEX},
        "dir": set(mt.MANIFEST_TYPES),
        "docker-archive": {mt.OCI_MANIFEST, mt.DOCKER_SCHEMA2},
    }[pair.kind]
    assert {t for t in mt.MANIFEST_TYPES if dest.accepts_manifest(t)} == expected
    assert dest.preferred_format == ("v2s2" if pair.kind == "docker-archive" else "oci")


def test_index_with_children(pair: StorePair) -> None:
    """A multi-image root: children stored as manifests, the index published as the root."""
    dest = pair.destination()
    dest.prepare()
    amd64, arm64 = tiny_image(b"amd64\n", "amd64", oci=pair.kind == "oci"), tiny_image(b"arm64\n", "arm64", oci=pair.kind == "oci")
    index = orjson.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {"mediaType": img.types[0], "digest": img.root_desc.digest, "size": img.root_desc.size,
             "platform": {"architecture": arch, "os": "linux"}}
            for img, arch in ((amd64, "amd64"), (arm64, "arm64"))
        ],
    })
    index_desc = Descriptor(mt.OCI_INDEX, sha256(index), len(index))
    for img in (amd64, arm64):
        write_blob(dest, img.config_desc, img.config)
        write_blob(dest, img.layer_desc, img.layer_gz)
        dest.put_manifest(img.manifest_blob)
    root = Publication(ref=pair.ref, descriptor=index_desc, manifest=index)
    if pair.kind == "docker-archive":
        assert not dest.accepts_manifest(mt.OCI_INDEX)
        with pytest.raises(StoreError, match="single images"):
            dest.publish([root])
        return
    dest.put_manifest(ManifestBlob(index, mt.OCI_INDEX, index_desc.digest), root=True)
    assert dest.has_manifest(amd64.root_desc.digest)
    dest.publish([root])
    assert dest.has_manifest(index_desc.digest)
    source = pair.source()
    got = source.get_root(pair.ref)
    assert (got.data, got.media_type, got.digest) == (index, mt.OCI_INDEX, index_desc.digest)
    child = source.get_manifest(arm64.root_desc.digest)
    assert (child.data, child.media_type) == (arm64.manifest, arm64.types[0])
