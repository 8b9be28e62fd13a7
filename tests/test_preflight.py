"""The launcher's check for images already current: what it settles, and what it leaves."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.engine.naming import copy_job
from imagepush.transforms.engine.jobs import Output, SyncSpec
from imagepush.transforms.engine.preflight import preflight
from imagepush.transforms.stores.layout.oci import OCILayoutSource
from imagepush.transforms.stores.refs import parse_reference

#: Columns that differ between two runs doing the same thing.
PER_RUN = ("run_id", "started_at", "finished_at")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples") / "oci"
    write_oci_samples(str(root))
    return root


@pytest.fixture
def mirror(samples, tmp_path) -> Path:
    """An OCI layout that a finished sync of the samples wrote."""
    out = tmp_path / "mirror"
    assert main(["sync", f"oci:{samples}", f"oci:{out}", "--audit", str(tmp_path / "first.parquet")]) == 0
    return out


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in PER_RUN} for r in pq.read_table(path).to_pylist()]


def no_pipeline(spec) -> None:
    raise AssertionError(f"a pipeline was started for {spec.jobs} {spec.syncs}")


def test_rerun_of_a_finished_sync_starts_no_pipeline(samples, mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "run", no_pipeline)
    assert main(["sync", f"oci:{samples}", f"oci:{mirror}", "--audit", str(tmp_path / "again.parquet")]) == 0
    assert capsys.readouterr().out.startswith("2 images to 1 destination: 2 current; 0 blobs copied, 0 mounted, 8 skipped, 0 B in ")
    again = rows(tmp_path / "again.parquet")
    assert [(r["role"], r["status"], r["blobs_copied"], r["bytes_copied"]) for r in again] == [
        ("image", "current", 0, 0), ("index", "current", 0, 0), ("child", "current", 0, 0),
        ("child", "current", 0, 0),
    ]


def test_settled_rows_are_the_rows_the_pipeline_writes(samples, mirror, tmp_path):
    args = ["sync", f"oci:{samples}", f"oci:{mirror}"]
    assert main([*args, "--audit", str(tmp_path / "settled.parquet")]) == 0
    assert main([*args, "--no-preflight", "--audit", str(tmp_path / "piped.parquet")]) == 0
    assert rows(tmp_path / "settled.parquet") == rows(tmp_path / "piped.parquet")


def test_only_targets_that_are_not_current_go_to_the_pipeline(samples, mirror, tmp_path):
    current = Output(f"oci:{mirror}:demo/app:1.0")
    missing = Output(f"oci:{tmp_path}/new:demo/app:1.0")
    job = copy_job(parse_reference(f"oci:{samples}:demo/app:1.0"), [current, missing], ())
    result = preflight([job], [], "run-1")
    assert result.current == 1
    (left,) = result.jobs
    assert [t.destination for t in left.targets] == [missing.ref]
    (row,) = result.rows
    assert (row.destination, row.status, row.blobs_skipped, row.run_id) == (current.ref, "current", 3, "run-1")
    assert row.destination_digest == OCILayoutSource(str(samples)).get_root("demo/app:1.0").digest


def test_conversions_and_unreadable_images_are_left_to_the_pipeline(samples, mirror, tmp_path):
    # The name exists, but a v2s2 copy would write a different digest: only the pipeline can tell.
    convert = copy_job(parse_reference(f"oci:{samples}:demo/app:1.0"),
                       [Output(f"oci:{mirror}:demo/app:1.0", format="v2s2")], ())
    recompress = copy_job(parse_reference(f"oci:{samples}:demo/app:1.0"),
                          [Output(f"oci:{mirror}:demo/app:1.0", compression="zstd")], ())
    gone = copy_job(parse_reference(f"oci:{tmp_path}/nowhere:demo/app:1.0"), [Output(f"oci:{mirror}:demo/app:1.0")], ())
    result = preflight([convert, recompress, gone], [], "run-1")
    assert (result.rows, result.current) == ([], 0)
    assert sorted(result.jobs, key=repr) == sorted([convert, recompress, gone], key=repr)


def test_a_sync_whose_source_cannot_be_listed_is_reported_by_the_launcher(tmp_path):
    spec = SyncSpec(f"oci:{tmp_path}/no-such-layout", (Output(f"oci:{tmp_path}/a"), Output(f"oci:{tmp_path}/b")))
    result = preflight([], [spec], "run-1")
    assert (result.jobs, result.current, result.pipeline_needed) == ([], 0, False)
    assert [(r.destination, r.status, r.error) for r in result.rows] == [
        (f"oci:{tmp_path}/{d}", "failed", f"listing {spec.source} failed: oci:{tmp_path}/no-such-layout: "
         "index.json not found")
        for d in ("a", "b")
    ]


@pytest.mark.parametrize("flags", [[], ["--no-preflight"]], ids=["preflight", "workers-list"])
def test_sync_of_an_unlistable_source_exits_1_with_the_same_audit_row(tmp_path, capsys, flags):
    audit = tmp_path / "audit.parquet"
    assert main(["sync", f"oci:{tmp_path}/none", f"oci:{tmp_path}/out", "--audit", str(audit), *flags]) == 1
    (row,) = rows(audit)
    assert (row["source"], row["destination"], row["status"]) == (f"oci:{tmp_path}/none", f"oci:{tmp_path}/out", "failed")
    assert row["error"] == f"listing oci:{tmp_path}/none failed: oci:{tmp_path}/none: index.json not found"
    assert f"imagepush: FAILED oci:{tmp_path}/none -> oci:{tmp_path}/out: listing" in capsys.readouterr().err


def test_a_new_tag_in_the_source_is_the_only_job_left(samples, mirror, tmp_path):
    grown = tmp_path / "grown"
    write_oci_samples(str(grown))
    assert main(["copy", f"oci:{grown}:demo/app:1.0", f"oci:{grown}:demo/app:2.0",
                 "--audit", str(tmp_path / "tag.parquet")]) == 0
    result = preflight([], [SyncSpec(f"oci:{grown}", (Output(f"oci:{mirror}"),))], "run-1")
    assert [j.source for j in result.jobs] == [f"oci:{grown}:demo/app:2.0"]
    assert sorted({r.source for r in result.rows}) == [f"oci:{grown}:demo/app:1.0", f"oci:{grown}:demo/multi:1.0"]


def test_rows_settled_before_a_pipeline_reach_its_audit(samples, mirror, tmp_path):
    audit = tmp_path / "both.parquet"
    assert main(["sync", f"oci:{samples}", f"oci:{mirror}", f"oci:{tmp_path}/new", "--audit", str(audit)]) == 0
    copied = {}
    for r in rows(audit):
        copied[r["destination"].rsplit(":", 2)[0]] = copied.get(r["destination"].rsplit(":", 2)[0], 0) + r["blobs_copied"]
    assert copied == {f"oci:{mirror}": 0, f"oci:{tmp_path}/new": 7}
    assert not Path(f"{audit}.settled.parquet").exists()


def test_a_sync_with_more_images_than_a_distributed_runner_takes_is_left_to_its_workers(samples, tmp_path):
    spec = SyncSpec(f"oci:{samples}", (Output(f"oci:{tmp_path}/empty"),))
    assert preflight([], [spec], "run-1", max_jobs=2).jobs != []
    result = preflight([], [spec], "run-1", max_jobs=1)
    assert (result.syncs, result.jobs, result.rows, result.pipeline_needed) == ([spec], [], [], True)
