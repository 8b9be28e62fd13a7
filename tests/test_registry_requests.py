"""The requests a copy sends to a destination registry, counted on the wire by a proxy.

On a small machine a registry's CPU per request is most of a sync's cost, so which
questions a copy asks is part of its specification: a blob a sibling repository holds is
mounted without asking first, and a small blob bound for a repository that had no tags
is sent without asking; a large one is still asked about, so that a rerun finds what an
interrupted run left.
"""

from __future__ import annotations

import collections
import contextlib
import random
import re
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import gz, tar_layer
from imagepush.transforms.engine.jobs import Output, SyncSpec
from imagepush.transforms.engine.planning import plan_run
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.formats.jsonio import dumps
from imagepush.transforms.stores.base import Destination, ManifestBlob, Publication
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.upload import SMALL_BLOB_LIMIT
from tests.conftest import running_registry
from tests.http_proxy import HTTPProxy

pytestmark = pytest.mark.integration

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy(monkeypatch) -> Iterator[HTTPProxy]:
    """Every registry request of the test goes through this proxy, which records it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    p = HTTPProxy().start()
    monkeypatch.setenv("HTTP_PROXY", p.url)
    try:
        yield p
    finally:
        p.stop()


def write_images(path: Path, images: dict[str, int]) -> None:
    """An OCI layout of ``name -> own layer size``: each image has its own config and layer, and one shared base layer."""
    dest = OCILayoutDestination(str(path))
    dest.prepare()
    rng = random.Random(14)
    base_tar = tar_layer({"base.txt": b"the base every image shares\n"})
    for name, own_size in images.items():
        own_tar = tar_layer({"own.bin": rng.randbytes(own_size)})
        layers = [(base_tar, gz(base_tar)), (own_tar, gz(own_tar))]
        config = dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"name": name}},
                        "rootfs": {"type": "layers", "diff_ids": [digestlib.of_bytes(t) for t, _ in layers]}})
        descs = []
        for media_type, blob in [(mt.OCI_CONFIG, config), *((mt.OCI_LAYER_GZIP, z) for _, z in layers)]:
            desc = Descriptor(media_type, digestlib.of_bytes(blob), len(blob))
            dest.put_blob(desc, blob)
            descs.append(desc)
        manifest = dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": descs[0].to_dict(),
                          "layers": [d.to_dict() for d in descs[1:]]})
        root = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(manifest), len(manifest))
        dest.put_manifest(ManifestBlob(manifest, mt.OCI_MANIFEST, root.digest), root=True)
        assert dest.publish([Publication(name, root)]) == {}


def requests_by_kind(proxy: HTTPProxy, host: str) -> collections.Counter[str]:
    """``METHOD what[?params]`` of every request the proxy forwarded to ``host``, but the pings (``GET /v2/``)."""
    kinds: collections.Counter[str] = collections.Counter()
    for seen in proxy.seen:
        parts = urlsplit(seen.target)
        if parts.netloc != host or parts.path == "/v2/":
            continue
        path = re.sub(r"/blobs/uploads/[^/]+$", "/blobs/uploads/SESSION", parts.path)
        what = next(k for k in ("tags/list", "manifests", "blobs/uploads/SESSION", "blobs/uploads", "blobs")
                    if k in path)
        params = sorted({k for k, _ in parse_qsl(parts.query)} - {"_state", "n"})
        kinds[f"{seen.method} {what}" + ("?" + "&".join(params) if params else "")] += 1
    return kinds


@contextlib.contextmanager
def prepared_destination(proxy: HTTPProxy, options: StoreOptions, store: str) -> Iterator[Destination]:
    """A prepared registry destination whose requests the proxy counts from here on; closed after."""
    stores = StoreCache(options)
    try:
        dest = stores.destination(store)
        dest.prepare()
        proxy.seen.clear()
        yield dest
    finally:
        stores.close()


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_a_fresh_sync_uploads_small_blobs_without_asking_and_mounts_the_shared_base_without_asking(
        proxy, tmp_path):
    write_images(tmp_path / "layout", {f"team/{repo}:{tag}": 200 for repo in "abc" for tag in (1, 2)})
    for dst in running_registry(tmp_path / "dst"):
        audit = tmp_path / "sync.parquet"
        assert main(["sync", f"oci:{tmp_path / 'layout'}", f"docker://{dst.host}/mirror",
                     "--insecure-registry", dst.host, "--audit", str(audit), "-q"]) == 0
        # 6 images: 6 configs and 6 own layers uploaded, the base uploaded once and
        # mounted into the two other repositories; one tag list per repository.
        assert requests_by_kind(proxy, dst.host) == {
            "GET tags/list": 3,
            "POST blobs/uploads": 13,
            "PUT blobs/uploads/SESSION?digest": 13,
            "POST blobs/uploads?from&mount": 2,
            "PUT manifests": 6,
        }
        # Many threads start at once; one of them asks GET /v2/, the others wait for its answer.
        pings = [seen for seen in proxy.seen if urlsplit(seen.target).netloc == dst.host
                 and urlsplit(seen.target).path == "/v2/"]
        assert len(pings) == 1
        copied = [r for r in rows(audit) if r["status"] == "copied"]
        assert len(copied) == 6
        assert sum(r["blobs_copied"] for r in copied) == 13
        # A mount counts for every image needing it; the base uploaded into team/a is skipped by its other image.
        assert sum(r["blobs_mounted"] for r in copied) == 4
        assert sum(r["blobs_skipped"] for r in copied) == 1


def test_a_blob_another_repository_of_the_registry_holds_is_mounted_with_no_head(proxy, tmp_path):
    write_images(tmp_path / "layout", {"team/a:1": 200})
    for reg in running_registry(tmp_path / "reg"):
        assert main(["copy", f"oci:{tmp_path / 'layout'}:team/a:1", f"docker://{reg.host}/team/a:1",
                     "--insecure-registry", reg.host, "-q"]) == 0
        proxy.seen.clear()
        audit = tmp_path / "copy.parquet"
        assert main(["copy", f"docker://{reg.host}/team/a:1", f"docker://{reg.host}/other/a:1",
                     "--insecure-registry", reg.host, "--audit", str(audit), "-q"]) == 0
        assert requests_by_kind(proxy, reg.host) == {
            "GET manifests": 1,  # the source image
            "GET tags/list": 1,  # is other/a new?
            "POST blobs/uploads?from&mount": 3,
            "PUT manifests": 1,
        }
        (row,) = rows(audit)
        assert (row["status"], row["blobs_mounted"], row["blobs_copied"]) == ("copied", 3, 0)


def test_a_repository_an_interrupted_run_left_blobs_in_gets_its_small_blobs_again_and_keeps_its_large_one(
        proxy, tmp_path):
    large = SMALL_BLOB_LIMIT + (256 << 10)
    write_images(tmp_path / "layout", {"team/a:1": large})
    src = f"oci:{tmp_path / 'layout'}"
    for dst in running_registry(tmp_path / "dst"):
        assert main(["sync", src, f"docker://{dst.host}/mirror", "--insecure-registry", dst.host, "-q"]) == 0
        # What an interrupted run leaves: every blob, and no tag (tags are written last).
        shutil.rmtree(dst.storage / "docker/registry/v2/repositories/mirror/team/a/_manifests/tags")
        spec = SyncSpec(src, (Output(f"docker://{dst.host}/mirror"),))
        plan = plan_run([], [spec], options=StoreOptions(insecure_registries=(dst.host,)))
        total = plan.total()
        assert (total.upload, total.mount, total.skip) == (3 - 1, 0, 1)
        proxy.seen.clear()
        audit = tmp_path / "rerun.parquet"
        assert main(["sync", src, f"docker://{dst.host}/mirror", "--insecure-registry", dst.host,
                     "--audit", str(audit), "-q"]) == 0
        assert requests_by_kind(proxy, dst.host) == {
            "GET tags/list": 1,
            "HEAD blobs": 1,  # the large layer, found
            "POST blobs/uploads": 2,  # the config and the base, sent again
            "PUT blobs/uploads/SESSION?digest": 2,
            "PUT manifests": 1,
        }
        (row,) = rows(audit)
        assert (row["status"], row["blobs_copied"], row["blobs_skipped"], row["blobs_mounted"]) == ("copied", 2, 1, 0)
        assert (row["blobs_copied"], row["blobs_skipped"]) == (total.upload, total.skip)  # the plan was the run


def test_the_upload_after_a_refused_mount_takes_the_session_the_mount_opened(proxy, tmp_path):
    blob = b"a blob no other repository holds"
    desc = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob))
    for reg in running_registry(tmp_path / "reg"):
        options = StoreOptions(insecure_registries=(reg.host,))
        with prepared_destination(proxy, options, f"docker://{reg.host}/team/b") as dest:
            # Distribution answers a mount from a repository without the blob with a new upload session.
            assert dest.mount_blob(desc, [f"docker://{reg.host}/team/a"]) is False
            sink = dest.blob_sink(desc)
            sink.write(blob)
            sink.commit()
            assert requests_by_kind(proxy, reg.host) == {
                "POST blobs/uploads?from&mount": 1,
                "PUT blobs/uploads/SESSION?digest": 1,
            }
        assert StoreCache(options).destination(f"docker://{reg.host}/team/b").has_blob(desc.digest)
        assert not list((reg.storage / "docker/registry/v2/repositories/team/b/_uploads").rglob("data"))


def test_the_session_a_refused_mount_opened_is_cancelled_when_the_blob_is_found_there(proxy, tmp_path):
    blob = b"a blob team/b has already"
    desc = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob))
    for reg in running_registry(tmp_path / "reg"):
        options = StoreOptions(insecure_registries=(reg.host,))
        StoreCache(options).destination(f"docker://{reg.host}/team/b").put_blob(desc, blob)
        with prepared_destination(proxy, options, f"docker://{reg.host}/team/b") as dest:
            assert dest.mount_blob(desc, [f"docker://{reg.host}/team/a"]) is False
            assert dest.has_blob(desc.digest) is True
            assert requests_by_kind(proxy, reg.host) == {
                "POST blobs/uploads?from&mount": 1,
                "HEAD blobs": 1,
                "DELETE blobs/uploads/SESSION": 1,
            }
        assert not list((reg.storage / "docker/registry/v2/repositories/team/b/_uploads").rglob("data"))
