"""The public PTransforms under TestPipeline on the in-process runner, judged with assert_that."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.beam.migrate import ListSyncs, MigrateImages, WriteAudit, _Sharded
from imagepush.transforms.engine.jobs import Output, SyncSpec
from imagepush.transforms.engine.naming import copy_job
from imagepush.transforms.records import AuditRow
from imagepush.transforms.stores.refs import parse_reference

RUN = "run-beam"
WHEN = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def local() -> TestPipeline:
    return TestPipeline(runner="FnApiRunner", blocking=True)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("beam") / "src"
    write_oci_samples(str(path))
    return path


def row(n: int) -> AuditRow:
    return AuditRow(run_id=RUN, source=f"src/{n:04d}", destination="dst", source_digest=None,
                    destination_digest=None, media_type=None, status="failed", error="listing failed",
                    blobs_copied=0, blobs_skipped=0, bytes_copied=0, started_at=WHEN, finished_at=WHEN,
                    error_kind="unreachable")


@pytest.mark.parametrize("shards", [1, 7, 64])
def test_batching_on_a_shard_key_loses_and_repeats_nothing(shards):
    with local() as p:
        out = (
            p
            | beam.Create(range(1000))
            | beam.Map(lambda n: (str(n), n))
            | _Sharded(shards)
            | beam.FlatMap(lambda batch: batch[1])
        )
        assert_that(out, equal_to(list(range(1000))))


def test_migrate_images_copies_an_index_and_an_image_with_one_row_per_manifest(layout, tmp_path):
    jobs = [
        copy_job(parse_reference(f"oci:{layout}:demo/multi:1.0"), [Output(f"oci:{tmp_path}/out:multi")], ()),
        copy_job(parse_reference(f"oci:{layout}:demo/app:1.0"), [Output(f"dir:{tmp_path}/app")], ()),
    ]
    with local() as p:
        rows = p | beam.Create(jobs) | MigrateImages(RUN, shards=3)
        assert_that(
            rows | beam.Map(lambda r: (r.source.rsplit(":", 2)[-2] + ":" + r.source.rsplit(":", 1)[-1], r.role,
                                       r.status)),
            equal_to([("demo/multi:1.0", "index", "copied"), ("demo/multi:1.0", "child", "copied"),
                      ("demo/multi:1.0", "child", "copied"), ("demo/app:1.0", "image", "copied")]),
        )


def test_rows_in_the_input_pass_through_and_the_audit_holds_every_row_once(tmp_path):
    audit = tmp_path / "audit.parquet"
    with local() as p:
        counts = p | beam.Create([row(n) for n in range(300)]) | MigrateImages(RUN, shards=5) \
            | WriteAudit(str(audit), shards=5)
        assert_that(counts, equal_to([300]))
    table = pq.read_table(audit).to_pylist()
    assert [r["source"] for r in table] == [f"src/{n:04d}" for n in range(300)]  # one file, in report order
    assert not Path(f"{audit}.parts").exists()


def test_an_empty_run_still_writes_an_empty_audit(tmp_path):
    audit = tmp_path / "empty.parquet"
    with local() as p:
        counts = p | beam.Create([], reshuffle=False).with_output_types(AuditRow) | WriteAudit(str(audit))
        assert_that(counts, equal_to([0]))
    assert pq.read_table(audit).num_rows == 0


def test_a_source_that_cannot_be_listed_gives_one_failed_row_per_destination(tmp_path):
    spec = SyncSpec(f"oci:{tmp_path}/nowhere", (Output(f"oci:{tmp_path}/a"), Output(f"oci:{tmp_path}/b")))
    with local() as p:
        rows = p | beam.Create([spec]) | ListSyncs(RUN)
        assert_that(rows | beam.Map(lambda r: (r.destination, r.status, r.error_kind)),
                    equal_to([(f"oci:{tmp_path}/a", "failed", "not_found"),
                              (f"oci:{tmp_path}/b", "failed", "not_found")]))
