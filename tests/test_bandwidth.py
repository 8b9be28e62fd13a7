"""--max-bandwidth: the bytes a worker sends to one destination are spaced out in time."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.config import parse_rate
from imagepush.pipeline.samples import gz, tar_layer
from imagepush.transforms.engine.deliver import PacedSink
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.formats.jsonio import dumps
from imagepush.transforms.pacing import RateBucket
from imagepush.transforms.stores.base import BlobSink, ManifestBlob, Publication
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from imagepush.transforms.stores.options import StoreOptions
from tests.clock import FakeClock


class Recording(BlobSink):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.committed = self.aborted = False

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.parametrize("text, rate", [
    ("50MB/s", 50e6), ("50M", 50e6), ("1.5GiB/s", 1.5 * (1 << 30)), ("800KB/s", 800e3), ("800kib", 800 * 1024),
    ("1000", 1000.0), (2048, 2048.0), (" 2 MB/s ", 2e6),
])
def test_a_bandwidth_is_read_in_decimal_and_binary_units(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "50MB/h", "0MB/s", "-1", "1.5.2M", ""])
def test_a_bandwidth_that_is_not_a_positive_rate_is_refused(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_each_write_reserves_its_bytes_worth_of_time_and_the_first_goes_at_once():
    clock = FakeClock()
    bucket = RateBucket(1000.0, clock=clock, sleep=clock.sleep)
    sink = Recording()
    paced = PacedSink(sink, bucket)
    for size in (500, 1500, 1000):
        paced.write(b"x" * size)
    paced.commit()
    # 500 bytes at once, then 0.5 s for them; 1500 bytes reserve 1.5 s before the last write.
    assert clock.sleeps == [0.5, 1.5]
    assert [len(c) for c in sink.chunks] == [500, 1500, 1000] and sink.committed and not sink.aborted


def test_a_read_chunk_larger_than_a_mib_reaches_a_capped_destination_a_mib_at_a_time():
    # Blobs are read 2 MiB at a time; taken whole, each chunk would leave as one burst.
    clock = FakeClock()
    mib = 1 << 20
    bucket = RateBucket(float(mib), clock=clock, sleep=clock.sleep)
    sink = Recording()
    data = bytes(range(256)) * (10 * mib // 256 + 1)
    PacedSink(sink, bucket).write(data[: 3 * mib + 5])
    assert [len(c) for c in sink.chunks] == [mib, mib, mib, 5]
    assert b"".join(sink.chunks) == data[: 3 * mib + 5]
    assert clock.sleeps == [1.0, 1.0, 1.0]


def test_the_cap_is_per_destination_domain_and_absent_without_the_option():
    capped = StoreCache(StoreOptions(max_bandwidth=1e6))
    assert capped.pacer("oci:/a") is capped.pacer("oci:/a")
    assert capped.pacer("oci:/a") is not capped.pacer("oci:/b")
    assert capped.pacer("oci:/a").rate == 1e6
    assert StoreCache().pacer("oci:/a") is None


def write_layout(path: Path, layer_bytes: int) -> str:
    """One image ``bw/app:1`` with one incompressible layer; returns the layer's digest."""
    dest = OCILayoutDestination(str(path))
    dest.prepare()
    tar = tar_layer({"data.bin": random.Random(7).randbytes(layer_bytes)})
    layer = gz(tar)
    config = dumps({"architecture": "amd64", "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": [digestlib.of_bytes(tar)]}})
    descs = []
    for media_type, blob in ((mt.OCI_CONFIG, config), (mt.OCI_LAYER_GZIP, layer)):
        desc = Descriptor(media_type, digestlib.of_bytes(blob), len(blob))
        dest.put_blob(desc, blob)
        descs.append(desc)
    manifest = dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": descs[0].to_dict(),
                      "layers": [descs[1].to_dict()]})
    root = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(manifest), len(manifest))
    dest.put_manifest(ManifestBlob(manifest, mt.OCI_MANIFEST, root.digest), root=True)
    assert dest.publish([Publication("bw/app:1", root)]) == {}
    return descs[1].digest


@pytest.mark.parametrize("engine", ["direct", "beam"])
def test_a_copy_under_max_bandwidth_takes_at_least_its_bytes_over_the_rate(tmp_path, engine):
    layer = write_layout(tmp_path / "src", 3 << 20)
    audit = tmp_path / "audit.parquet"
    started = time.monotonic()
    code = main(["copy", f"oci:{tmp_path / 'src'}:bw/app:1", f"oci:{tmp_path / 'dst'}:bw/app:1",
                 "--max-bandwidth", "2MB/s", "--engine", engine, "--audit", str(audit), "-q"])
    took = time.monotonic() - started
    assert code == 0
    rows = pq.read_table(audit).to_pylist()
    assert [(r["status"], r["blobs_copied"]) for r in rows] == [("copied", 2)]
    assert (tmp_path / "dst/blobs/sha256" / layer.split(":")[1]).stat().st_size > 3 << 20
    # 3 MiB at 2 MB/s: everything after the first 1 MiB chunk waits at least 1.05 s.
    assert took >= 1.0


def test_a_run_file_sets_the_cap_as_the_flag_does_and_a_bad_one_is_placed():
    from imagepush.pipeline.config import spec_from_yaml
    from imagepush.pipeline.exits import UsageError

    jobs = "jobs: [{copy: 'oci:/in:a:1', to: ['oci:/out:a:1']}]\n"
    assert spec_from_yaml("max_bandwidth: 50MB/s\n" + jobs, "r", "/tmp/a").options.max_bandwidth == 50e6
    assert spec_from_yaml(jobs, "r", "/tmp/a").options.max_bandwidth is None
    with pytest.raises(UsageError) as refused:
        spec_from_yaml("max_bandwidth: fast\n" + jobs, "r", "/tmp/a", name="run.yaml")
    assert str(refused.value) == ("config: run.yaml:1:1: max_bandwidth: 'fast' is not a rate: "
                                  "write it as 50MB/s, 1.5GiB/s or 800KB/s")
