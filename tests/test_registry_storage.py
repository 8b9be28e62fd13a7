"""RegistryStorageSource reads what a real Distribution wrote to disk, same answers as its API."""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
import pytest

from tests.conftest import require_tool, run
from tests.registry_server import Registry, start_registry, write_registry_storage
from tests.test_stores_contract import store_image, tiny_image

from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.stores.base import NotFound, Publication, StoreError
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.refs import parse_reference
from imagepush.transforms.stores.registry import RegistrySource
from imagepush.transforms.stores.registry_storage import RegistryStorageSource
from imagepush.transforms.stores.transports import open_source


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    require_tool("docker-registry")
    require_tool("skopeo")
    layout = tmp_path_factory.mktemp("samples") / "layout"
    write_oci_samples(str(layout))
    reg = start_registry(tmp_path_factory.mktemp("registry"), schema1=True)
    try:
        for src, dst, extra in [
            ("demo/app:1.0", "app:1.0", []),
            ("demo/app:1.0", "app:v2s2", ["--format", "v2s2"]),
            ("demo/multi:1.0", "multi:1.0", ["--all"]),
            ("demo/app:1.0", "legacy:v1", ["--format", "v2s1"]),
            ("demo/app:1.0", "team/svc/api:2.0", []),
            ("demo/app:1.0", "team:root", []),  # a repository that also has repositories below it
        ]:
            run(["skopeo", "copy", "-q", *extra, "--dest-tls-verify=false", f"oci:{layout}:{src}",
                 f"docker://{reg.host}/{dst}"], timeout=60)
        yield reg
    finally:
        reg.stop()


EXPECTED = [
    ("app:1.0", "app", "1.0"),
    ("app:v2s2", "app", "v2s2"),
    ("legacy:v1", "legacy", "v1"),
    ("multi:1.0", "multi", "1.0"),
    ("team:root", "team", "root"),
    ("team/svc/api:2.0", "team/svc/api", "2.0"),
]


def test_lists_every_tag_like_the_registry(registry: Registry) -> None:
    storage = RegistryStorageSource(str(registry.storage))
    listed = list(storage.list_images())
    assert [(e.ref, e.repository, e.tag) for e in listed] == EXPECTED
    api = {e.ref: e for e in RegistrySource(registry.host, StoreOptions(insecure_registries=(registry.host,))).list_images()}
    for entry in listed:
        assert entry.digest == api[entry.ref].digest  # schema1 included: the payload digest
    kinds = {e.ref: e.media_type for e in listed}
    assert kinds["app:v2s2"] == mt.DOCKER_SCHEMA2 and kinds["multi:1.0"] == mt.OCI_INDEX
    assert kinds["legacy:v1"] == mt.DOCKER_SCHEMA1  # stored unsigned; signed only when served


def test_roots_children_and_blobs(registry: Registry) -> None:
    storage = RegistryStorageSource(str(registry.storage))
    api = RegistrySource(f"{registry.host}/multi", StoreOptions(insecure_registries=(registry.host,)))
    index = storage.get_root("multi:1.0")
    assert index == api.get_root("1.0")
    for child in json.loads(index.data)["manifests"]:
        manifest = storage.get_manifest(child["digest"])
        assert manifest.media_type == mt.OCI_MANIFEST and manifest.digest == child["digest"]
        for desc in json.loads(manifest.data)["layers"]:
            with storage.open_blob(desc["digest"]) as f:
                assert sha256(f.read()) == desc["digest"]
    assert storage.get_root(f"multi@{index.digest}") == index
    legacy = storage.get_root("legacy:v1")
    assert legacy.digest == sha256(legacy.data)
    assert legacy.digest == RegistrySource(f"{registry.host}/legacy", api.options).get_root("v1").digest


def test_errors(registry: Registry, tmp_path: Path) -> None:
    storage = RegistryStorageSource(str(registry.storage))
    with pytest.raises(NotFound, match="no image named app:nope"):
        storage.get_root("app:nope")
    with pytest.raises(StoreError, match="REPOSITORY:TAG"):
        storage.get_root(None)
    with pytest.raises(StoreError, match="not a repository name"):
        storage.get_root("_layers/x:1")
    with pytest.raises(NotFound):
        storage.open_blob("sha256:" + "0" * 64)
    with pytest.raises(NotFound, match="no registry storage"):
        list(RegistryStorageSource(str(tmp_path)).list_images())


def test_reads_through_fsspec_and_pickles(registry: Registry) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/regcopy-{uuid.uuid4().hex}"
    fs.put(str(registry.storage / "docker"), f"{root}/docker", recursive=True)
    storage = RegistryStorageSource(f"memory://{root}")
    assert [(e.ref, e.repository, e.tag) for e in storage.list_images()] == EXPECTED
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.get_root("team/svc/api:2.0") == RegistryStorageSource(str(registry.storage)).get_root("team/svc/api:2.0")
    fs.rm(root, recursive=True)


def test_transport(registry: Registry) -> None:
    src = open_source(parse_reference(f"registry-storage:{registry.storage}"))
    assert isinstance(src, RegistryStorageSource)
    assert next(iter(src.list_images())).ref == "app:1.0"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_contracts_storage_writer_writes_what_distribution_writes(tmp_path: Path) -> None:
    """tests/test_stores_contract.py builds registry-storage trees itself; a real push must give the same files."""
    require_tool("docker-registry")
    require_tool("skopeo")
    image = tiny_image(b"pushed for real\n", oci=True)
    layout = OCILayoutDestination(str(tmp_path / "layout"))
    layout.prepare()
    store_image(layout, image)
    layout.publish([Publication("t", image.root_desc)])
    reg = start_registry(tmp_path / "registry")
    try:
        run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path}/layout:t",
             f"docker://{reg.host}/apps/web:1.0"], timeout=60)
    finally:
        reg.stop()
    write_registry_storage(fsspec.filesystem("file"), str(tmp_path / "ours"), "apps/web:1.0",
                           [image.config, image.layer_gz], [image.manifest])
    pushed = _files(reg.storage)
    assert "docker/registry/v2/repositories/apps/web/_manifests/tags/1.0/current/link" in pushed
    assert _files(tmp_path / "ours") == pushed
