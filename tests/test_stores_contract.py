"""One contract for every store: what a source reads back, what a destination writes.

The read side runs on every transport: oci, oci-archive, dir, docker-archive,
registry-storage and a registry (docker); the write side on those that are destinations.
Each file transport runs on a local temporary directory and on fsspec's ``memory://``
filesystem, so the stores are exercised through fsspec the way remote URLs (s3://, gs://)
use them. A registry-storage tree is written here as Distribution writes it
(test_registry_storage.py checks the writer against a real registry). The registry is a
real Docker Distribution started once for the module, with one fresh repository per test,
and is judged by what it keeps on disk below that repository.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import fsspec
import orjson
import pytest

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.formats.manifest import schema2_manifest
from imagepush.transforms.stores.base import (
    Destination,
    ImageEntry,
    ManifestBlob,
    NotFound,
    Publication,
    Source,
    StoreError,
)
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.refs import ImageReference
from imagepush.transforms.stores.transports import open_destination, open_source
from tests.conftest import require_tool
from tests.registry_server import Registry, start_registry, write_registry_storage

#: The registry's kind: its transport name.
REGISTRY = "docker"
WRITABLE = ("oci", "oci-archive", "dir", "docker-archive", REGISTRY)
READABLE = (*WRITABLE, "registry-storage")
#: Where a file store lives; a registry store is a repository of the module's Distribution.
FILE_LOCATIONS = ("local", "memory")
REGISTRY_LOCATIONS = ("distribution",)
#: The name each kind gives the contract's image: dir: names nothing, RepoTags carry a
#: registry, and a registry store is one repository, in which an image is named by its tag.
NAMES = {"oci": "apps/web:1.0", "oci-archive": "apps/web:1.0", "dir": None,
         "docker-archive": "example.com/apps/web:1.0", "registry-storage": "apps/web:1.0",
         REGISTRY: "1.0"}
#: Kinds whose images must be OCI (their destinations convert Docker types to OCI).
OCI_ONLY = frozenset({"oci", "oci-archive"})


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
class Store:
    """One store of one kind at one location, and what the contract wrote into it."""

    kind: str
    #: The reference's location: a path or fsspec URL, or a registry's ``host:port/repository``.
    url: str
    fs: fsspec.AbstractFileSystem
    #: Where the store keeps its files (for a registry: its repository in the registry's storage).
    base: str
    #: Set for a registry, which the contract reaches over plain HTTP.
    options: StoreOptions | None = None

    def destination(self) -> Destination:
        return open_destination(ImageReference(self.kind, self.url), self.options)

    def source(self) -> Source:
        return open_source(ImageReference(self.kind, self.url), self.options)

    @property
    def name(self) -> str | None:
        return NAMES[self.kind]

    def entry(self, digest: str, media_type: str) -> ImageEntry:
        """How ``list_images`` shows the contract's image.

        A registry lists ``ref`` as ``repository:tag`` with the repository's full path below
        the host (so the entry can be fetched from the store that listed it), and as
        ``repository`` the last component of that path, the part a sync appends to its
        destination; the other kinds list the name they were given.
        """
        if self.kind == REGISTRY:
            repository = self.url.split("/", 1)[1]
            return ImageEntry(ref=f"{repository}:{self.name}", repository=repository.rsplit("/", 1)[-1],
                              tag=self.name, digest=digest, media_type=media_type)
        repository, _, tag = (self.name or "").rpartition(":")
        return ImageEntry(ref=self.name or "", repository=repository, tag=tag or None,
                          digest=digest, media_type=media_type)

    def image(self, text: bytes = b"hello\n", arch: str = "amd64") -> TinyImage:
        return tiny_image(text, arch, oci=self.kind in OCI_ONLY)

    def holds(self, roots: list[TinyImage], index: bytes | None = None) -> None:
        """Store ``roots`` under the contract's name (an ``index`` of them, when given), as this kind is written."""
        if self.kind == "registry-storage":
            blobs = [data for image in roots for data in (image.config, image.layer_gz)]
            manifests = [image.manifest for image in roots] + ([index] if index is not None else [])
            write_registry_storage(self.fs, self.url, str(self.name), blobs, manifests)
            return
        dest = self.destination()
        dest.prepare()
        for image in roots:
            write_blob(dest, image.config_desc, image.config)
            write_blob(dest, image.layer_desc, image.layer_gz)
            dest.put_manifest(image.manifest_blob, root=index is None)
        if index is None:
            [image] = roots
            dest.publish([publication(image, self.name)])
            return
        index_desc = Descriptor(mt.OCI_INDEX, sha256(index), len(index))
        dest.put_manifest(ManifestBlob(index, mt.OCI_INDEX, index_desc.digest), root=True)
        dest.publish([Publication(ref=self.name, descriptor=index_desc, manifest=index)])

    def leftovers(self) -> list[str]:
        """Temporary files a commit/abort/publish should not leave behind (a registry's: upload sessions)."""
        marker = "/_uploads/" if self.kind == REGISTRY else "/.tmp-"
        return [p for p in self.fs.find(self.base) if marker in p]


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One Docker Distribution for the module's registry stores; each test takes a repository of its own."""
    require_tool("docker-registry")
    registry = start_registry(tmp_path_factory.mktemp("contract-registry"))
    try:
        yield registry
    finally:
        registry.stop()


def registry_store(registry: Registry) -> Store:
    """A fresh, empty repository of ``registry``: no test sees another's tags or upload sessions."""
    repository = f"contract/{uuid.uuid4().hex[:12]}"
    return Store(REGISTRY, f"{registry.host}/{repository}", fsspec.filesystem("file"),
                 str(registry.storage / "docker/registry/v2/repositories" / repository),
                 StoreOptions(insecure_registries=(registry.host,)))


@contextmanager
def _store(kind: str, location: str, tmp_path) -> Iterator[Store]:
    """An empty file store of ``kind`` on a local folder or on ``memory://``, removed afterwards."""
    leaf = {"oci-archive": "image.tar", "docker-archive": "image.tar"}.get(kind, "image")
    if location == "local":
        base, url, fs = str(tmp_path), str(tmp_path / leaf), fsspec.filesystem("file")
    else:
        name = f"imagepush-contract-{uuid.uuid4().hex}"
        base, url, fs = f"/{name}", f"memory://{name}/{leaf}", fsspec.filesystem("memory")
    try:
        yield Store(kind, url, fs, base)
    finally:
        if location == "memory" and fs.exists(base):
            fs.rm(base, recursive=True)


def _stores(kinds: tuple[str, ...]):
    """A fixture giving an empty store of each of ``kinds``, at each location."""
    params = [(k, loc) for k in kinds for loc in (REGISTRY_LOCATIONS if k == REGISTRY else FILE_LOCATIONS)]

    @pytest.fixture(params=params, ids=lambda p: f"{p[0]}-{p[1]}")
    def fixture(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
        kind, location = request.param
        if kind == REGISTRY:
            yield registry_store(request.getfixturevalue("distribution"))
            return
        with _store(kind, location, tmp_path) as store:
            yield store

    return fixture


readable = _stores(READABLE)
writable = _stores(WRITABLE)
#: Every kind but docker-archive, which holds single images only.
with_indexes = _stores(tuple(k for k in READABLE if k != "docker-archive"))
writable_with_indexes = _stores(tuple(k for k in WRITABLE if k != "docker-archive"))


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


def index_of(platforms: dict[str, TinyImage]) -> bytes:
    """An OCI index of the images in ``platforms``, each under its architecture."""
    return orjson.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {"mediaType": img.types[0], "digest": img.root_desc.digest, "size": img.root_desc.size,
             "platform": {"architecture": arch, "os": "linux"}}
            for arch, img in platforms.items()
        ],
    })


def archived_manifest(image: TinyImage) -> bytes:
    """What a docker-archive serves for ``image``: it keeps config and uncompressed layers only."""
    return schema2_manifest(image.config_desc, [Descriptor(mt.DOCKER_LAYER, image.diff_id, len(image.layer_tar))])


# --------------------------------------------------------------------------- reading


def test_lists_the_image_under_its_name(readable: Store) -> None:
    image = readable.image()
    readable.holds([image])
    manifest = archived_manifest(image) if readable.kind == "docker-archive" else image.manifest
    assert list(readable.source().list_images()) == [readable.entry(sha256(manifest), image.types[0])]


def test_root_by_name_and_by_digest(readable: Store) -> None:
    image = readable.image()
    readable.holds([image])
    source = readable.source()
    root = source.get_root(readable.name)
    manifest = archived_manifest(image) if readable.kind == "docker-archive" else image.manifest
    assert root == ManifestBlob(manifest, image.types[0], sha256(manifest))
    assert source.get_manifest(root.digest) == root


def test_blobs_read_back_exactly(readable: Store) -> None:
    image = readable.image()
    readable.holds([image])
    source = readable.source()
    layer = {image.diff_id: image.layer_tar} if readable.kind == "docker-archive" else {
        image.layer_desc.digest: image.layer_gz}
    for digest, data in {image.config_desc.digest: image.config, **layer}.items():
        with source.open_blob(digest) as f:
            assert f.read() == data


def test_what_is_not_there_is_not_found(readable: Store) -> None:
    readable.holds([readable.image()])
    source = readable.source()
    with pytest.raises(NotFound):
        source.open_blob(sha256(b"not stored"))
    with pytest.raises(NotFound):
        source.get_manifest(sha256(b"not stored"))
    if readable.kind == "dir":
        with pytest.raises(StoreError, match="holds one unnamed image"):
            source.get_root("other:1")
    else:
        with pytest.raises(NotFound):
            source.get_root("other:1")


def test_source_pickles_cheaply_and_reads_the_same(readable: Store) -> None:
    readable.holds([readable.image()])
    source = readable.source()
    root = source.get_root(readable.name)  # opens the filesystem and fills caches
    assert len(pickle.dumps(source)) < 400
    clone = pickle.loads(pickle.dumps(source))
    assert type(clone) is type(source)
    assert clone.get_root(readable.name) == root


def test_index_and_its_children(with_indexes: Store) -> None:
    """A multi-image root is served as written, its children by digest."""
    readable = with_indexes
    amd64, arm64 = readable.image(b"amd64\n", "amd64"), readable.image(b"arm64\n", "arm64")
    index = index_of({"amd64": amd64, "arm64": arm64})
    readable.holds([amd64, arm64], index)
    source = readable.source()
    assert source.get_root(readable.name) == ManifestBlob(index, mt.OCI_INDEX, sha256(index))
    for img in (amd64, arm64):
        assert source.get_manifest(img.root_desc.digest) == img.manifest_blob
        with source.open_blob(img.layer_desc.digest) as f:
            assert f.read() == img.layer_gz


# --------------------------------------------------------------------------- writing


def test_blob_visible_only_after_commit(writable: Store) -> None:
    dest = writable.destination()
    dest.prepare()
    image = writable.image()
    sink = dest.blob_sink(image.layer_desc)
    sink.write(image.layer_gz[:10])
    sink.write(image.layer_gz[10:])
    assert dest.has_blob(image.layer_desc.digest) is False
    sink.commit()
    assert dest.has_blob(image.layer_desc.digest) is True
    write_blob(dest, image.config_desc, image.config)
    assert dest.has_blob(image.config_desc.digest) is True
    assert writable.leftovers() == []


def test_aborted_blob_is_not_visible(writable: Store) -> None:
    dest = writable.destination()
    dest.prepare()
    image = writable.image()
    for desc, data in ((image.layer_desc, image.layer_gz), (image.config_desc, image.config)):
        sink = dest.blob_sink(desc)
        sink.write(data)
        sink.abort()
        sink.abort()  # safe twice
        assert dest.has_blob(desc.digest) is False
    assert writable.leftovers() == []
    with pytest.raises(StoreError):
        sink.write(b"more")


def test_commit_twice_is_idempotent(writable: Store) -> None:
    dest = writable.destination()
    dest.prepare()
    image = writable.image()
    write_blob(dest, image.layer_desc, image.layer_gz)
    write_blob(dest, image.layer_desc, image.layer_gz, chunk=3)
    dest.put_blob(image.config_desc, image.config)
    dest.put_blob(image.config_desc, image.config)
    assert dest.has_blob(image.layer_desc.digest)
    assert dest.has_blob(image.config_desc.digest)
    assert writable.leftovers() == []


def test_publish_leaves_no_temporary_files(writable: Store) -> None:
    writable.holds([writable.image()])
    assert writable.leftovers() == []


def test_publish_twice_is_idempotent(writable: Store) -> None:
    """Beam retries bundles: the same publish again changes no byte, even after an archive was packed."""
    dest = writable.destination()
    dest.prepare()
    image = writable.image()
    store_image(dest, image)
    dest.publish([publication(image, writable.name)])
    first = {p: writable.fs.cat_file(p) for p in writable.fs.find(writable.base)}
    assert first  # the files of the store itself are judged, not an empty folder
    dest.publish([publication(image, writable.name)])
    second = {p: writable.fs.cat_file(p) for p in writable.fs.find(writable.base)}
    assert second == first
    assert len(list(writable.source().list_images())) == 1


def test_destination_pickles_cheaply(writable: Store) -> None:
    dest = writable.destination()
    dest.prepare()
    image = writable.image()
    write_blob(dest, image.config_desc, image.config)  # opens the filesystem and caches
    clone = pickle.loads(pickle.dumps(dest))
    assert len(pickle.dumps(dest)) < 400
    assert clone.has_blob(image.config_desc.digest)


def test_manifest_types_accepted(writable: Store) -> None:
    dest = writable.destination()
    expected = {
        "oci": {mt.OCI_MANIFEST, mt.OCI_INDEX},
        "oci-archive": {mt.OCI_MANIFEST, mt.OCI_INDEX},
        "dir": set(mt.MANIFEST_TYPES),
        "docker-archive": {mt.OCI_MANIFEST, mt.DOCKER_SCHEMA2},
        # schema1 too: a registry that does not take it says so when it is PUT.
        REGISTRY: set(mt.MANIFEST_TYPES),
    }[writable.kind]
    assert {t for t in mt.MANIFEST_TYPES if dest.accepts_manifest(t)} == expected
    assert dest.preferred_format == ("v2s2" if writable.kind == "docker-archive" else "oci")


def test_children_are_present_before_their_index(writable_with_indexes: Store) -> None:
    """A child is stored when it is put (after its blobs), so the index put after it finds it.

    A registry refuses an index that names a manifest it does not hold, and a manifest
    whose blobs it does not hold: the order blobs, children, index is what every
    destination is given, and what a child put by digest must already satisfy.
    """
    store = writable_with_indexes
    dest = store.destination()
    dest.prepare()
    child = store.image()
    write_blob(dest, child.config_desc, child.config)
    write_blob(dest, child.layer_desc, child.layer_gz)
    dest.put_manifest(child.manifest_blob)
    index = index_of({"amd64": child})
    index_desc = Descriptor(mt.OCI_INDEX, sha256(index), len(index))
    dest.put_manifest(ManifestBlob(index, mt.OCI_INDEX, index_desc.digest), root=True)
    assert dest.publish([Publication(ref=store.name, descriptor=index_desc, manifest=index)]) == {}
    source = store.source()
    assert source.get_root(store.name) == ManifestBlob(index, mt.OCI_INDEX, index_desc.digest)
    assert source.get_manifest(child.root_desc.digest) == child.manifest_blob


def test_docker_archive_refuses_an_index(tmp_path) -> None:
    with _store("docker-archive", "local", tmp_path) as store:
        dest = store.destination()
        dest.prepare()
        index = orjson.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []})
        assert not dest.accepts_manifest(mt.OCI_INDEX)
        with pytest.raises(StoreError, match="an archive holds single images"):
            dest.publish([Publication(ref=store.name, descriptor=Descriptor(mt.OCI_INDEX, sha256(index), len(index)))])
