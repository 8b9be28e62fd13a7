"""Nothing is left behind: a failed or stopped write undoes itself, and a rerun removes what a crash left.

Against the real things: Distribution's storage tree (an upload session is a folder
``repositories/<repo>/_uploads/<uuid>``), a moto S3 server (multipart uploads and object
versions), files on disk, and the ``imagepush`` process itself stopped by SIGTERM.

Distribution 2.8 keeps an empty ``hashstates/`` folder in a session it cancelled (its
issue #4524); a session is *live*, still holding bytes and waiting for more, while it
has its ``data`` or ``startedat`` file. That is what these tests count.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from imagepush.pipeline.cli import STOP_GRACE, main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.engine.streaming import stream_blob
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores import fs as fsmod
from imagepush.transforms.stores.fs import STAGING_SUFFIX, AtomicFileSink
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import RegistryDestination
from tests.conftest import require_tool
from tests.http_proxy import HTTPProxy
from tests.registry_server import Registry, start_registry, write_registry_storage

V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
TWO_HOURS = 2 * 3600


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def live_sessions(registry: Registry) -> list[str]:
    """The upload sessions the registry still holds bytes for (see the module docstring)."""
    v2 = registry.storage / "docker/registry/v2/repositories"
    return sorted(
        str(session.relative_to(v2)) for session in v2.glob("**/_uploads/*")
        if (session / "data").exists() or (session / "startedat").exists()
    )


def temporary_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


class BreaksMidStream(io.RawIOBase):
    """A blob's first ``good`` bytes, then a read error, as a source connection that drops."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__()
        self._data, self._good, self._at = data, good, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._at >= self._good:
            time.sleep(0.3)  # a stall first, as a dropping connection does: the bytes read are sent meanwhile
            raise OSError("the source connection dropped")
        n = min(len(buffer), self._good - self._at)
        buffer[:n] = self._data[self._at:self._at + n]
        self._at += n
        return n


def test_a_chunked_registry_upload_whose_source_breaks_mid_patch_leaves_no_upload_session(registry):
    # 3 MB in 2 MB PATCHes (a blob above --monolithic-upload-limit, or of unknown size).
    data = random.Random(8).randbytes(3_000_000)
    options = StoreOptions(insecure_registries=(registry.host,), monolithic_upload_limit=0,
                           upload_chunk_size=2_000_000)
    dest = RegistryDestination(f"{registry.host}/broken", options)
    descriptor = Descriptor(mt.OCI_LAYER_GZIP, sha256(data), len(data))
    sink = dest.blob_sink(descriptor)

    # The source breaks after 1.5 MB, in the middle of the first PATCH's body.
    with pytest.raises(OSError, match="dropped"):
        stream_blob(io.BufferedReader(BreaksMidStream(data, 1_500_000), 1 << 20), descriptor.digest,
                    len(data), [sink], chunk_size=1 << 20)

    assert live_sessions(registry) == []
    assert not dest.has_blob(descriptor.digest)
    dest.close()


@pytest.fixture
def versioned_bucket(bucket, s3_endpoint):
    """The ``bucket`` fixture's bucket with versioning on: a deleted object leaves its versions behind."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket, client


def test_an_aborted_s3_write_leaves_no_multipart_upload_and_stores_nothing(versioned_bucket):
    import s3fs

    bucket, client = versioned_bucket
    # 5 MiB parts (S3's smallest): 12 MB written start a multipart upload with two parts sent.
    fs = s3fs.S3FileSystem(default_block_size=5 << 20, skip_instance_cache=True)
    sink = AtomicFileSink(fs, f"{bucket}/layout/blobs/sha256/{'ab' * 32}")
    for _ in range(12):
        sink.write(b"\x01" * 1_000_000)
    assert len(fs.list_multipart_uploads(bucket)) == 1
    sink.abort()

    assert fs.list_multipart_uploads(bucket) == []
    # Not even for a moment: an upload completed and then deleted would leave a version.
    versions = client.list_object_versions(Bucket=bucket)
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []


def test_a_rerun_aborts_the_multipart_upload_a_killed_run_left_and_keeps_a_live_one(bucket, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    dest = OCILayoutDestination(f"s3://{bucket}/layout")
    dest.prepare()

    def upload_with_a_part(key: str) -> None:
        upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"p")

    abandoned, live = (f"layout/blobs/sha256/{tmp_name()}" for _ in range(2))
    upload_with_a_part(abandoned)
    time.sleep(2.5)
    upload_with_a_part(live)
    # Another program's upload in the same folder is never touched, however old.
    upload_with_a_part("layout/blobs/sha256/.tmp-theirs")
    # S3 dates parts by its own clock, to the second: age them by waiting, against a shorter limit.
    monkeypatch.setattr(fsmod, "LEFTOVER_AGE", 1.8)

    assert dest.clean_leftovers() == 1
    assert sorted(u["Key"] for u in fs.list_multipart_uploads(bucket)) == sorted(
        [live, "layout/blobs/sha256/.tmp-theirs"])


def tmp_name() -> str:
    return f".tmp-{uuid.uuid4().hex}"


def _leftover(path: Path, age: float) -> Path:
    """A file as an earlier run left it, last written ``age`` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a blob")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_rerun_removes_what_a_crashed_run_left_in_layouts_and_archives_and_keeps_fresh_files(tmp_path):
    write_oci_samples(str(tmp_path / "src"))
    layout, archive, docker = tmp_path / "layout", tmp_path / "out" / "images.tar", tmp_path / "out" / "docker.tar"
    abandoned = [
        _leftover(layout / "blobs" / "sha256" / tmp_name(), TWO_HOURS),  # a blob being written
        _leftover(layout / tmp_name(), TWO_HOURS),  # index.json being replaced
        _leftover(archive.parent / tmp_name(), TWO_HOURS),  # an archive being packed
        _leftover(Path(f"{docker}{STAGING_SUFFIX}") / "layers" / tmp_name(), TWO_HOURS),  # a layer being staged
        _leftover(Path(f"{archive}{STAGING_SUFFIX}") / "blobs" / "sha256" / ("f" * 64), TWO_HOURS),  # a staged layout
    ]
    kept = [
        _leftover(layout / "blobs" / "sha256" / tmp_name(), 60),  # another run writing right now
        _leftover(archive.parent / tmp_name(), 60),  # another archive being packed right now
        _leftover(archive.parent / ".tmp-not-ours", TWO_HOURS),  # not a name imagepush writes
    ]
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    assert main(["copy", f"oci:{tmp_path}/src:demo/app:1.0", f"oci:{layout}:app", f"oci-archive:{archive}:app",
                 f"docker-archive:{docker}:app:1", "--audit", str(tmp_path / "audit.parquet")]) == 0

    assert [p for p in abandoned if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def write_source_images(storage: Path, count: int) -> None:
    """``count`` images of one 2 MB layer each, straight into a Distribution storage tree."""
    rng = random.Random(915)
    fs = fsspec.filesystem("file")
    for i in range(count):
        layer = rng.randbytes(2_000_000)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": V2S2,
            "config": {"mediaType": CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha256(layer), "size": len(layer)}],
        }).encode()
        write_registry_storage(fs, str(storage), f"stop/app{i}:1", [config, layer], [manifest])


def test_a_sync_stopped_by_sigterm_cancels_its_uploads_removes_its_temporary_files_and_says_so(tmp_path):
    require_tool("docker-registry")
    write_source_images(tmp_path / "src" / "storage", 3)
    source, destination = start_registry(tmp_path / "src"), start_registry(tmp_path / "dst")
    # Uploads paced to 1 MB/s: each 2 MB layer is still on its way when the signal comes.
    proxy = HTTPProxy(upload_rate=1_000_000).start()
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env["HTTP_PROXY"] = proxy.url
    layout = tmp_path / "layout"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagepush.pipeline", "sync", f"docker://{source.host}/stop",
             f"docker://{destination.host}/mirror", f"oci:{layout}",
             "--insecure-registry", source.host, "--insecure-registry", destination.host,
             "--audit", str(tmp_path / "audit.parquet")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while not any((destination.storage / "docker/registry/v2/repositories").glob("mirror/*/_uploads/*/data")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
                time.sleep(0.05)
            time.sleep(0.3)  # well into the bodies
            in_flight = live_sessions(destination)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            stopping = time.monotonic() - signalled
        finally:
            proc.kill()
    finally:
        proxy.stop()
        source.stop()
        destination.stop()

    assert in_flight, "the signal came before any upload had started"
    assert proc.returncode == 130
    lines = err.decode().splitlines()
    assert re.fullmatch(r"imagepush: interrupted by SIGTERM: \d+ uploads in flight finished or cancelled; "
                        r"a rerun skips what was finished", lines[-1]), lines[-3:]
    assert "Traceback" not in err.decode()
    assert stopping < STOP_GRACE + 2
    assert live_sessions(destination) == []
    assert temporary_files(layout) == []

