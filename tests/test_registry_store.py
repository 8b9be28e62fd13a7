"""RegistrySource / RegistryDestination against a real Docker Distribution 2.8.

skopeo pushes the fixtures and reads our results back, so every check is against
independent implementations of both ends of the protocol, not against our own client.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

try:
    from tests.conftest import require_tool, run
    from tests.registry_server import Registry, start_registry
except ImportError:  # tests/ is not a package
    from conftest import require_tool, run  # type: ignore[no-redef]
    from registry_server import Registry, start_registry  # type: ignore[no-redef]

from imagepush.pipeline.samples import tar_layer
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.formats.schema1 import payload_of
from imagepush.transforms.stores.base import BlobSink as BlobSinkBase
from imagepush.transforms.stores.base import ManifestBlob, NotFound, Publication, StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.refs import parse_reference
from imagepush.transforms.stores.registry import ClientPool, RegistryDestination, RegistryError, RegistrySource
from imagepush.transforms.stores.registry.listing import LISTING_AHEAD
from imagepush.transforms.stores.transports import open_destination, open_source


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return run(["skopeo", *args], timeout=60)


def skopeo_raw(host: str, image: str) -> bytes:
    return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{image}").stdout


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    """A schema1-enabled registry holding app (OCI + v2s2 tags), multi (index), legacy (schema1)."""
    require_tool("docker-registry")
    require_tool("skopeo")
    reg = start_registry(tmp_path_factory.mktemp("registry"), schema1=True)
    try:
        pushes = [
            ("demo/app:1.0", "app:1.0", []),
            ("demo/app:1.0", "app:v2s2", ["--format", "v2s2"]),
            ("demo/multi:1.0", "multi:1.0", ["--all"]),
            ("demo/app:1.0", "legacy:v1", ["--format", "v2s1"]),
            ("demo/app:1.0", "team/svc/api:2.0", []),
            ("demo/app:1.0", "team/web:1.0", []),
        ]
        for src, dst, extra in pushes:
            skopeo("copy", "-q", *extra, "--dest-tls-verify=false", f"oci:{layout}:{src}", f"docker://{reg.host}/{dst}")
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def options(registry: Registry) -> StoreOptions:
    return StoreOptions(insecure_registries=(registry.host,), authfile=None)


def source(registry: Registry, options: StoreOptions, path: str = "", **kw) -> RegistrySource:
    return RegistrySource(f"{registry.host}/{path}" if path else registry.host, options, **kw)


# -- pull -------------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["app:1.0", "app:v2s2", "multi:1.0"])
def test_manifest_digest_matches_skopeo(registry: Registry, options: StoreOptions, image: str) -> None:
    repo, tag = image.split(":")
    raw = skopeo_raw(registry.host, image)
    src = source(registry, options, repo)
    root = src.get_root(tag)
    assert root.data == raw
    assert root.digest == sha256(raw)
    assert root.media_type == json.loads(raw)["mediaType"]
    again = src.get_manifest(root.digest)
    assert again == root
    src.close()


def test_index_children_by_digest(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "multi")
    index = src.get_root("1.0")
    assert index.media_type == mt.OCI_INDEX
    for entry in json.loads(index.data)["manifests"]:
        child = src.get_manifest(entry["digest"])
        assert child.digest == entry["digest"]
        assert child.media_type == mt.OCI_MANIFEST


def test_schema1_payload_digest(registry: Registry, options: StoreOptions) -> None:
    """Distribution re-signs schema1 on every GET: bytes differ, the payload digest does not."""
    raw = skopeo_raw(registry.host, "legacy:v1")
    src = source(registry, options, "legacy")
    root = src.get_root("v1")
    assert root.media_type == mt.DOCKER_SCHEMA1_SIGNED
    assert root.digest == sha256(payload_of(raw))
    assert root.digest != sha256(root.data)
    assert src.get_manifest(root.digest).digest == root.digest
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/legacy:v1").stdout)
    assert inspected["Digest"] == root.digest


def test_blob_streams(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "app")
    manifest = json.loads(src.get_root("1.0").data)
    for desc in [manifest["config"], *manifest["layers"]]:
        with src.open_blob(desc["digest"]) as f:
            pieces = []
            while chunk := f.read(7):
                pieces.append(chunk)
        data = b"".join(pieces)
        assert len(data) == desc["size"] and sha256(data) == desc["digest"]


def test_missing_things_are_not_found(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "app")
    with pytest.raises(NotFound) as info:
        src.get_root("no-such-tag")
    message = str(info.value)
    assert "\n" not in message and "MANIFEST_UNKNOWN" in message and registry.host + "/app" in message
    with pytest.raises(NotFound):
        src.get_manifest("sha256:" + "0" * 64)
    with pytest.raises(NotFound):
        src.open_blob("sha256:" + "0" * 64)
    with pytest.raises(NotFound):
        source(registry, options, "nothing/here").get_root("1.0")


def test_get_root_by_digest_and_full_ref(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "app")
    root = src.get_root("1.0")
    assert src.get_root(root.digest) == root
    whole = source(registry, options)  # a whole-registry source reads the refs it lists
    assert whole.get_root("app:1.0") == root
    assert whole.get_root(f"app@{root.digest}") == root


# -- listing ----------------------------------------------------------------------------


def entries(src: RegistrySource, **kw) -> list[tuple[str, str, str | None]]:
    return sorted((e.ref, e.repository, e.tag) for e in src.list_images(**kw))


def test_list_repository_tags(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "app")
    listed = list(src.list_images())
    assert sorted((e.ref, e.repository, e.tag) for e in listed) == [
        ("app:1.0", "app", "1.0"), ("app:v2s2", "app", "v2s2"),
    ]
    by_tag = {e.tag: e for e in listed}
    assert by_tag["1.0"].digest == sha256(skopeo_raw(registry.host, "app:1.0"))
    assert by_tag["v2s2"].media_type == mt.DOCKER_SCHEMA2
    nested = source(registry, options, "team/svc/api")
    assert entries(nested) == [("team/svc/api:2.0", "api", "2.0")]


def test_list_schema1_entry_has_payload_digest(registry: Registry, options: StoreOptions) -> None:
    (entry,) = source(registry, options, "legacy").list_images()
    assert entry.media_type == mt.DOCKER_SCHEMA1_SIGNED
    assert entry.digest == sha256(payload_of(skopeo_raw(registry.host, "legacy:v1")))


def test_list_prefix_and_whole_registry(registry: Registry, options: StoreOptions) -> None:
    assert entries(source(registry, options, "team")) == [
        ("team/svc/api:2.0", "svc/api", "2.0"), ("team/web:1.0", "web", "1.0"),
    ]
    everything = entries(source(registry, options))
    assert ("team/svc/api:2.0", "team/svc/api", "2.0") in everything
    assert ("legacy:v1", "legacy", "v1") in everything
    assert ("multi:1.0", "multi", "1.0") in everything
    assert entries(source(registry, options, "tea")) == []  # a prefix matches whole path components


def test_catalog_pagination(tmp_path: Path, layout: Path) -> None:
    """More repositories than one page: every page is followed through relative Link headers."""
    require_tool("docker-registry")
    require_tool("skopeo")
    reg = start_registry(tmp_path / "reg", catalog_max_entries=3)
    try:
        # No outage grace: the look-ahead of the listing abandoned below may still be
        # fetching when the registry stops, and must give up then, not wait 30 s for it.
        opts = StoreOptions(insecure_registries=(reg.host,), outage_grace=0)
        dest_names = [f"many/r{i:02d}" for i in range(7)] + ["other"]
        for name in dest_names:
            dest = RegistryDestination(f"{reg.host}/{name}", opts)
            _push_tiny_image(dest, name.encode(), tag="t")
        src = RegistrySource(reg.host, opts, page_size=2)
        seen_urls: list[str] = []
        original = src.client.request

        def spy(method, url, **kw):
            if "_catalog" in url:
                seen_urls.append(url)
            return original(method, url, **kw)

        src.client.request = spy  # type: ignore[method-assign]
        listed = entries(src)
        assert [r for r, _, _ in listed] == sorted(f"{n}:t" for n in dest_names)
        assert len(seen_urls) >= 4  # 8 repositories, 2 per page
        prefixed = entries(RegistrySource(f"{reg.host}/many", opts, page_size=2))
        assert [repo for _, repo, _ in prefixed] == [f"r{i:02d}" for i in range(7)]
        # list_images is a generator: the first entry comes before the catalog is exhausted,
        # with tags of at most LISTING_AHEAD more repositories (three pages of two) fetched ahead.
        seen_urls.clear()
        first = next(iter(src.list_images(page_size=2)))
        assert LISTING_AHEAD == 4
        assert first.ref == "many/r00:t" and len(seen_urls) == 3
    finally:
        reg.stop()


# -- push -------------------------------------------------------------------------------


def _push_tiny_image(
    dest: RegistryDestination, text: bytes, tag: str | None, layer: bytes | None = None
) -> tuple[ManifestBlob, Descriptor]:
    """Upload a one-layer schema2 image through the destination API; returns manifest and layer."""
    layer = layer if layer is not None else gzip.compress(tar_layer({"file.txt": text}), mtime=0)
    layer_desc = Descriptor(mt.DOCKER_LAYER_GZIP, sha256(layer), len(layer))
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(gzip.decompress(layer))]},
    }).encode()
    config_desc = Descriptor(mt.DOCKER_CONFIG, sha256(config), len(config))
    for desc, data in ((config_desc, config), (layer_desc, layer)):
        if not dest.has_blob(desc.digest):
            dest.put_blob(desc, data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_SCHEMA2,
        "config": config_desc.to_dict(), "layers": [layer_desc.to_dict()],
    }, indent=3).encode()
    blob = ManifestBlob(manifest, mt.DOCKER_SCHEMA2, sha256(manifest))
    dest.put_manifest(blob, root=True)
    # A root is written by publish: under its tag, or by digest when it has none.
    dest.publish([Publication(tag, Descriptor(mt.DOCKER_SCHEMA2, blob.digest, len(manifest)), manifest=manifest)])
    return blob, layer_desc


def _write_in_pieces(dest: RegistryDestination, desc: Descriptor, data: bytes, piece: int) -> None:
    sink = dest.blob_sink(desc)
    try:
        for start in range(0, len(data), piece):
            sink.write(data[start : start + piece])
        sink.commit()
    except BaseException:
        sink.abort()
        raise


@pytest.mark.parametrize(
    "size, declared, chunk, limit",
    [
        (300_000, True, 64 << 20, 64 << 20),  # small: buffered, one PUT
        (2_500_000, True, 1_000_000, 1 << 20),  # chunked: three PATCHes with Content-Range
        (2_500_000, True, 1_000_000, 64 << 20),  # under the monolithic limit: one PATCH
        (1_700_000, False, 700_000, 64 << 20),  # unknown size (schema1): chunked encoding
    ],
    ids=["small", "chunked", "one-patch", "unknown-size"],
)
def test_push_blob_and_skopeo_reads_it(
    registry: Registry, tmp_path: Path, size: int, declared: bool, chunk: int, limit: int
) -> None:
    opts = StoreOptions(
        insecure_registries=(registry.host,), upload_chunk_size=chunk, monolithic_upload_limit=limit
    )
    repo = f"pushed/{size}-{chunk}-{limit}-{int(declared)}"
    dest = RegistryDestination(f"{registry.host}/{repo}", opts)
    layer = os.urandom(size)
    layer_desc = Descriptor(mt.DOCKER_LAYER_GZIP, sha256(layer), size if declared else -1)
    assert not dest.has_blob(layer_desc.digest)
    _write_in_pieces(dest, layer_desc, layer, 65_536 + 3)
    assert dest.has_blob(layer_desc.digest)
    # A real image around it, so skopeo can copy it out and verify every digest.
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    dest.put_blob(Descriptor(mt.DOCKER_CONFIG, sha256(config), len(config)), config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_SCHEMA2,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": layer_desc.digest, "size": size}],
    }).encode()
    root = ManifestBlob(body, mt.DOCKER_SCHEMA2, sha256(body))
    dest.put_manifest(root, root=True)
    dest.publish([Publication("v1", Descriptor(mt.DOCKER_SCHEMA2, root.digest, len(body)), manifest=body)])
    assert skopeo_raw(registry.host, f"{repo}:v1") == body
    out = tmp_path / "copied"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{registry.host}/{repo}:v1", f"dir:{out}")
    assert (out / layer_desc.digest.split(":")[1]).read_bytes() == layer
    dest.close()


def test_abort_leaves_nothing(registry: Registry, options: StoreOptions) -> None:
    opts = StoreOptions(insecure_registries=(registry.host,), upload_chunk_size=100_000, monolithic_upload_limit=0)
    dest = RegistryDestination(f"{registry.host}/aborted", opts)
    data = os.urandom(350_000)
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256(data), len(data))
    # Aborted between PATCHes: the session is deleted.
    sink = dest.blob_sink(desc)
    sink.write(data[:200_000])
    sink.abort()
    sink.abort()  # twice is fine
    # (Distribution 2.8 may rewrite an empty hash state after the DELETE; the data is gone.)
    uploads = registry.storage / "docker/registry/v2/repositories/aborted/_uploads"
    assert not list(uploads.rglob("data"))
    # Aborted in the middle of a PATCH: the connection is cut and nothing becomes visible
    # (Distribution may keep the partial session until its upload purging removes it).
    sink = dest.blob_sink(desc)
    sink.write(data[:250_000])
    sink.abort()
    with pytest.raises(StoreError):
        sink.write(b"more")
    assert not dest.has_blob(desc.digest)


def test_wrong_content_is_refused_by_digest(registry: Registry, options: StoreOptions) -> None:
    """Even if a caller committed bad bytes, the registry's digest check keeps them out."""
    dest = RegistryDestination(f"{registry.host}/baddigest", options)
    data = b"x" * 2_000_000
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256(b"other"), len(data))
    with pytest.raises(StoreError) as info:
        _write_in_pieces(dest, desc, data, 500_000)
    assert "DIGEST_INVALID" in str(info.value) or "BLOB" in str(info.value)
    assert not dest.has_blob(desc.digest)


def test_mount_between_repositories(registry: Registry, options: StoreOptions) -> None:
    first = RegistryDestination(f"{registry.host}/mount/a", options)
    _, layer_desc = _push_tiny_image(first, b"mount me", tag="1")
    second = RegistryDestination(f"{registry.host}/mount/b", options)
    assert not second.has_blob(layer_desc.digest)
    assert second.mount_blob(layer_desc, [f"docker://{registry.host}/mount/a"]) is True
    assert second.has_blob(layer_desc.digest)
    # Not mountable: unknown blob (202: a session kept for its upload, cancelled unused
    # when the store closes), other host, other transport.
    missing = Descriptor(mt.DOCKER_LAYER_GZIP, "sha256:" + "1" * 64, 5)
    assert second.mount_blob(missing, [f"docker://{registry.host}/mount/a"]) is False
    assert second.mount_blob(layer_desc, ["docker://elsewhere.invalid/mount/a"]) is False
    assert second.mount_blob(layer_desc, ["oci:/tmp/layout"]) is False
    second.close()
    uploads = registry.storage / "docker/registry/v2/repositories/mount/b/_uploads"
    assert not list(uploads.rglob("data"))


def test_publish_tags_and_idempotence(registry: Registry, options: StoreOptions) -> None:
    dest = RegistryDestination(f"{registry.host}/published", options)
    blob, _ = _push_tiny_image(dest, b"published", tag=None)
    assert source(registry, options, "published").get_manifest(blob.digest).data == blob.data  # untagged: by digest
    pub = [Publication(t, Descriptor(blob.media_type, blob.digest, len(blob.data)), manifest=blob.data)
           for t in ("a", "b", "c")]
    assert dest.publish(pub) == {}
    assert dest.publish(pub) == {}  # retried bundle: same result
    for tag in ("a", "b", "c"):
        assert skopeo_raw(registry.host, f"published:{tag}") == blob.data
    # A bad name fails alone, and so does a publication without the root's bytes; the
    # names beside them are written.
    failed = dest.publish([Publication(tag, Descriptor(blob.media_type, blob.digest, len(blob.data)), manifest=blob.data)
                           for tag in ("e", "bad tag", "f")]
                          + [Publication("d", Descriptor(blob.media_type, blob.digest, len(blob.data)))])
    assert {i: (str(exc), exc.kind) for i, exc in failed.items()} == {
        1: (f"{registry.host}/published: 'bad tag' is not a valid tag", "invalid_input"),
        3: (f"{registry.host}/published: the publication of {blob.digest} carries no manifest bytes", "refused"),
    }
    assert skopeo_raw(registry.host, "published:e") == skopeo_raw(registry.host, "published:f") == blob.data


def test_concurrent_tag_pushes_to_one_repository(registry: Registry, options: StoreOptions) -> None:
    """Distribution 2.8 may answer 500 to concurrent tag writes; separate store objects retry."""
    from concurrent.futures import ThreadPoolExecutor

    blob, _ = _push_tiny_image(RegistryDestination(f"{registry.host}/race", options), b"race", tag=None)
    desc = Descriptor(blob.media_type, blob.digest, len(blob.data))

    def tag(i: int) -> None:
        RegistryDestination(f"{registry.host}/race", options).publish([Publication(f"t{i}", desc, manifest=blob.data)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tag, range(16)))
    listed = entries(source(registry, options, "race"))
    assert [t for _, _, t in listed] == sorted(f"t{i}" for i in range(16))


def test_schema1_pushed_under_another_name_keeps_digest(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "legacy")
    root = src.get_root("v1")
    dest = RegistryDestination(f"{registry.host}/renamed/legacy", options)
    for layer in json.loads(payload_of(root.data))["fsLayers"]:
        digest = layer["blobSum"]
        if not dest.mount_blob(Descriptor(mt.DOCKER_LAYER_GZIP, digest, -1), [f"docker://{registry.host}/legacy"]):
            raise AssertionError(f"mount of {digest} failed")
    dest.put_manifest(root, root=True)
    dest.publish([Publication("v1", Descriptor(root.media_type, root.digest, len(root.data)), manifest=root.data)])
    back = source(registry, options, "renamed/legacy").get_root("v1")
    assert back.digest == root.digest


def test_schema1_refused_clearly_without_schema1_support(tmp_path: Path) -> None:
    require_tool("docker-registry")
    reg = start_registry(tmp_path / "reg", schema1=False)
    try:
        opts = StoreOptions(insecure_registries=(reg.host,))
        dest = RegistryDestination(f"{reg.host}/old", opts)
        payload = json.dumps({
            "schemaVersion": 1, "name": "old", "tag": "1", "architecture": "amd64",
            "fsLayers": [{"blobSum": "sha256:" + "3" * 64}], "history": [{"v1Compatibility": "{}"}],
        }).encode()
        with pytest.raises(RegistryError) as info:
            dest.put_manifest(ManifestBlob(payload, mt.DOCKER_SCHEMA1, sha256(payload)))
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{reg.host}/old: registry refused a {mt.DOCKER_SCHEMA1} manifest (")
        # Signed on the way (Distribution refuses unsigned schema1 anyway): a registry
        # without schema1 answers a signed one with a 500, named with the hint.
        assert "(UNKNOWN" in message or "MANIFEST" in message or "UNSUPPORTED" in message
        assert message.endswith("(copy with --format v2s2 or oci)")
    finally:
        reg.stop()


def test_manifest_blob_unknown_is_reported(registry: Registry, options: StoreOptions) -> None:
    dest = RegistryDestination(f"{registry.host}/incomplete", options)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "4" * 64, "size": 2},
        "layers": [],
    }).encode()
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        dest.put_manifest(ManifestBlob(body, mt.OCI_MANIFEST, sha256(body)))


# -- store plumbing ---------------------------------------------------------------------


def test_destination_needs_repository(registry: Registry, options: StoreOptions) -> None:
    with pytest.raises(StoreError, match="needs a repository"):
        RegistryDestination(registry.host, options)


def test_stores_pickle_cheaply(registry: Registry, options: StoreOptions) -> None:
    src = source(registry, options, "app", page_size=5)
    src.get_root("1.0")  # opens the client, which must not travel
    clone = pickle.loads(pickle.dumps(src))
    assert clone.page_size == 5 and clone.location == src.location
    assert clone.get_root("1.0") == src.get_root("1.0")
    assert len(pickle.dumps(src)) < 1000
    dest = RegistryDestination(f"{registry.host}/x", options)
    dest.has_blob("sha256:" + "5" * 64)
    assert pickle.loads(pickle.dumps(dest)).repository == "x"


def test_transports_open_registry_stores(registry: Registry, options: StoreOptions) -> None:
    src = open_source(parse_reference(f"docker://{registry.host}/app"), options)
    assert isinstance(src, RegistrySource)
    assert src.get_root("1.0").digest == sha256(skopeo_raw(registry.host, "app:1.0"))
    dest = open_destination(parse_reference(f"docker://{registry.host}/new/repo:tag"), options)
    assert isinstance(dest, RegistryDestination) and dest.repository == "new/repo"
    assert dest.accepts_manifest(mt.DOCKER_SCHEMA1_SIGNED) and dest.accepts_manifest(mt.OCI_INDEX)
    assert dest.preferred_format == "oci"


def test_concurrency_limit_holds(registry: Registry) -> None:
    """Open blob streams hold their slot: with registry_concurrency=2 a third waits."""
    import threading

    opts = StoreOptions(insecure_registries=(registry.host,), registry_concurrency=2)
    src = source(registry, opts, "app")
    digest = json.loads(src.get_root("1.0").data)["layers"][0]["digest"]
    a, b = src.open_blob(digest), src.open_blob(digest)
    started = threading.Event()
    done = threading.Event()

    def third() -> None:
        started.set()
        with src.open_blob(digest) as f:
            f.read()
        done.set()

    t = threading.Thread(target=third)
    t.start()
    started.wait()
    time.sleep(0.3)
    assert not done.is_set()
    a.read()  # reading to the end frees the slot even before close
    assert done.wait(10)
    a.close()
    b.close()
    t.join()


def test_empty_blob(registry: Registry, options: StoreOptions) -> None:
    dest = RegistryDestination(f"{registry.host}/empty", options)
    desc = Descriptor(mt.OCI_EMPTY, sha256(b""), 0)
    dest.put_blob(desc, b"")
    assert dest.has_blob(desc.digest)
    with source(registry, options, "empty").open_blob(desc.digest) as f:
        assert f.read() == b""


def test_copy_engine_registry_to_registry(registry: Registry) -> None:
    """The pipeline's stream_blob: one source read fanned out to two registry sinks."""
    from imagepush.transforms.engine.streaming import BlobVerificationError, stream_blob

    opts = StoreOptions(insecure_registries=(registry.host,), upload_chunk_size=300_000, monolithic_upload_limit=0)
    src = source(registry, opts, "app")
    manifest = json.loads(src.get_root("1.0").data)
    dests = [RegistryDestination(f"{registry.host}/engine/{n}", opts) for n in ("one", "two")]
    for desc in [manifest["config"], *manifest["layers"]]:
        d = Descriptor(desc["mediaType"], desc["digest"], desc["size"])
        with src.open_blob(d.digest) as reader:
            outcome = stream_blob(reader, d.digest, d.size, [x.blob_sink(d) for x in dests], want_diff_id=True)
        assert outcome.sink_errors == {} and outcome.size == d.size
        assert all(x.has_blob(d.digest) for x in dests)
    # A source whose bytes do not match: the registries check the digest themselves at
    # the final PUT and refuse it; nothing becomes visible under that digest.
    big = os.urandom(700_000)
    fake = Descriptor(mt.OCI_LAYER_GZIP, sha256(b"not these bytes"), len(big))
    import io

    outcome = stream_blob(io.BytesIO(big), fake.digest, fake.size, [x.blob_sink(fake) for x in dests],
                          chunk_size=100_000)
    assert sorted(outcome.sink_errors) == [0, 1]
    assert all("DIGEST_INVALID" in str(e) for e in outcome.sink_errors.values()), outcome.sink_errors
    assert not any(x.has_blob(fake.digest) for x in dests)
    # A store that does not verify by itself among them: checked here, all aborted.
    with pytest.raises(BlobVerificationError):
        stream_blob(io.BytesIO(big), fake.digest, fake.size, [dests[0].blob_sink(fake), _Unverified()],
                    chunk_size=100_000)
    assert not dests[0].has_blob(fake.digest)


class _Unverified(BlobSinkBase):
    def write(self, chunk: bytes) -> None:
        pass

    def commit(self) -> None:
        raise AssertionError("must not be committed")

    def abort(self) -> None:
        pass


def test_tls_verification_and_ca_bundle(tmp_path: Path) -> None:
    """HTTPS is verified (ca_bundle adds a CA); insecure hosts skip verification, not TLS."""
    import warnings

    require_tool("docker-registry")
    reg = start_registry(tmp_path / "reg", tls=True)
    try:
        assert reg.certificate is not None
        trusted = RegistryDestination(f"{reg.host}/tls", StoreOptions(ca_bundle=str(reg.certificate)))
        _push_tiny_image(trusted, b"over tls", tag="1")
        assert trusted.client.base_url() == f"https://{reg.host}"
        untrusted = RegistrySource(f"{reg.host}/tls", StoreOptions(), clients=ClientPool(StoreOptions(), sleep=lambda s: None))
        with pytest.raises(RegistryError) as info:
            untrusted.get_root("1")
        assert str(info.value) == (f"TLS with {reg.host} failed (CERTIFICATE_VERIFY_FAILED): trust its CA "
                                   f"with --ca-bundle, or use --insecure-registry {reg.host}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3 warns about the unverified request
            insecure = RegistrySource(f"{reg.host}/tls", StoreOptions(insecure_registries=(reg.host,)))
            assert insecure.get_root("1").media_type == mt.DOCKER_SCHEMA2
            assert insecure.client.base_url() == f"https://{reg.host}"  # TLS kept, only unverified
    finally:
        reg.stop()


def test_known_size_blob_streams_in_one_put_after_its_post(registry: Registry, options: StoreOptions) -> None:
    """The cheapest upload for a registry: POST, then the whole body in the final PUT."""
    dest = RegistryDestination(f"{registry.host}/monolithic/put", options)
    layer = os.urandom(3 << 20)
    desc = Descriptor(mt.DOCKER_LAYER_GZIP, sha256(layer), len(layer))
    calls: list[str] = []
    client = dest.client
    request, send_stream = client.request, client.send_stream
    client.request = lambda method, *a, **k: calls.append(method) or request(method, *a, **k)  # type: ignore[method-assign]
    client.send_stream = lambda method, *a, **k: calls.append(f"stream {method}") or send_stream(method, *a, **k)  # type: ignore[method-assign]
    _write_in_pieces(dest, desc, layer, 1 << 20)
    assert calls == ["POST", "stream PUT"]
    assert dest.has_blob(desc.digest)


def test_more_bytes_than_announced_fail_without_a_hang(registry: Registry, options: StoreOptions) -> None:
    dest = RegistryDestination(f"{registry.host}/monolithic/long", options)
    layer = os.urandom(2 << 20)
    sink = dest.blob_sink(Descriptor(mt.DOCKER_LAYER_GZIP, sha256(layer), len(layer) - 10))
    with pytest.raises(StoreError, match="more than its"):
        sink.write(layer)
    sink.abort()
    assert not dest.has_blob(sha256(layer))


def test_a_repository_without_tags_is_asked_once_for_tags_and_per_blob_for_blobs(
    registry: Registry, options: StoreOptions
) -> None:
    """An interrupted first migration leaves blobs and no tags: a rerun finds the blobs."""
    dest = RegistryDestination(f"{registry.host}/fresh/repo", options)
    calls: list[str] = []
    client = dest.client
    request = client.request
    client.request = lambda method, path, **k: calls.append(f"{method} {path.split('/v2/')[-1]}") or request(method, path, **k)  # type: ignore[method-assign]
    digests = [sha256(f"blob {i}".encode()) for i in range(2)]
    assert [dest.has_blob(d) for d in digests] == [False, False]
    assert dest.current_digest("v1") is None
    assert dest.current_digest("v2") is None
    assert calls == [f"HEAD fresh/repo/blobs/{digests[0]}", f"HEAD fresh/repo/blobs/{digests[1]}",
                     "GET fresh/repo/tags/list"]
    layer = b"fresh layer"
    _write_in_pieces(dest, Descriptor(mt.DOCKER_LAYER_GZIP, sha256(layer), len(layer)), layer, 4)
    calls.clear()
    assert dest.has_blob(sha256(layer))  # what this store wrote is known present, unasked
    assert calls == []
    # The run stops here, before any tag. A rerun's store object finds the blob.
    assert RegistryDestination(f"{registry.host}/fresh/repo", options).has_blob(sha256(layer)) is True
