"""Image records as the input of a run, and retry from an audit: real layouts, real files, exact outcomes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms import audit
from imagepush.transforms.engine.jobs import Output, RecordSource
from imagepush.transforms.engine.records_io import jobs_from_file, write_records
from imagepush.transforms.records import FAILED, AuditRow, ImageRecord, now
from imagepush.transforms.stores.layout.oci import OCILayoutSource

#: A copied image's status: schema 1 wrote ``ok``, schema 2 ``copied``.
DONE = {"ok", "copied"}
APP, MULTI = "demo/app:1.0", "demo/multi:1.0"
ALL_COLUMNS = ("source", "destination", "repository", "tag", "source_digest", "media_type", "format",
               "compression", "platforms", "schema_version")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("records-src") / "oci"
    write_oci_samples(str(root))
    return root


def rows(path: Path | str) -> list[dict]:
    return audit.read(str(path)).to_pylist()


def top(path: Path | str) -> dict[str, dict]:
    return {r["source"]: r for r in rows(path) if r["role"] != "child"}


def names(layout: Path) -> dict[str, str]:
    return {e.ref: e.digest for e in OCILayoutSource(str(layout)).list_images()}


def source_digests(samples: Path) -> dict[str, str]:
    return names(samples)


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_each_records_format_drives_a_copy_keeping_digests(samples, tmp_path, ext):
    records = [ImageRecord(f"oci:{samples}:{APP}"),
               ImageRecord(f"oci:{samples}:{MULTI}", destination=f"oci:{tmp_path}/own:multi",
                           platforms=("linux/amd64",))]
    url = str(tmp_path / f"images.{ext}")
    assert write_records(records, url, ALL_COLUMNS) == 2
    report = tmp_path / "audit.parquet"
    assert main(["copy", "--records", url, f"oci:{tmp_path}/out", "--audit", str(report)]) == EXIT_OK
    digests = source_digests(samples)
    # No destination: the prefix, with the image's repository and tag appended, as sync does.
    assert names(tmp_path / "out") == {APP: digests[APP]}
    own = OCILayoutSource(f"{tmp_path}/own")
    index = json.loads(own.get_root("multi").data)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]  # the record's platforms
    outcome = top(report)
    assert {s: r["status"] in DONE for s, r in outcome.items()} == {
        f"oci:{samples}:{APP}": True, f"oci:{samples}:{MULTI}": True}
    assert outcome[f"oci:{samples}:{APP}"]["destination"] == f"oci:{tmp_path}/out:{APP}"


def test_a_folder_and_a_glob_on_the_local_s3_server_are_read_by_the_workers(samples, tmp_path, bucket):
    base = f"s3://{bucket}/lists"
    write_records([ImageRecord(f"oci:{samples}:{APP}")], f"{base}/a.jsonl", ALL_COLUMNS)
    write_records([ImageRecord(f"oci:{samples}:{MULTI}")], f"{base}/b.parquet", ALL_COLUMNS)
    write_records([ImageRecord(f"oci:{samples}:{APP}", destination=f"oci:{tmp_path}/csv:app")],
                  f"{base}/sub/c.csv", ALL_COLUMNS)
    report = f"s3://{bucket}/audit.parquet"
    assert main(["copy", "--records", base, f"oci:{tmp_path}/folder", "--audit", report]) == EXIT_OK
    digests = source_digests(samples)
    assert names(tmp_path / "folder") == {APP: digests[APP], MULTI: digests[MULTI]}
    assert names(tmp_path / "csv") == {"app": digests[APP]}
    assert len([r for r in rows(report) if r["role"] != "child"]) == 3
    assert main(["copy", "--records", f"{base}/*.parquet", f"oci:{tmp_path}/glob",
                 "--audit", str(tmp_path / "g.parquet")]) == EXIT_OK
    assert names(tmp_path / "glob") == {MULTI: digests[MULTI]}


def test_a_bad_row_fails_alone_as_invalid_input_and_the_others_are_copied(samples, tmp_path):
    url = tmp_path / "images.jsonl"
    url.write_text("\n".join([
        json.dumps({"source": f"oci:{samples}:{APP}"}),
        json.dumps({"source": "ftp://example.com/x:1"}),
        json.dumps({"source": "docker://reg.example/Upper/x:1"}),
        json.dumps({"source": f"oci:{samples}:{MULTI}", "format": "v9"}),
    ]) + "\n")
    report = tmp_path / "audit.parquet"
    assert main(["copy", "--records", str(url), f"oci:{tmp_path}/out", "--audit", str(report)]) == EXIT_FAILED
    assert names(tmp_path / "out") == {APP: source_digests(samples)[APP]}
    outcome = top(report)
    assert outcome[f"oci:{samples}:{APP}"]["status"] in DONE
    failed = {s: r for s, r in outcome.items() if r["status"] == FAILED}
    assert sorted(failed) == ["docker://reg.example/Upper/x:1", "ftp://example.com/x:1", f"oci:{samples}:{MULTI}"]
    assert {r["error_kind"] for r in failed.values()} == {"invalid_input"}
    assert {r["destination"] for r in failed.values()} == {f"oci:{tmp_path}/out"}
    assert f"{url} row 2: " in failed["ftp://example.com/x:1"]["error"]
    assert "format 'v9'" in failed[f"oci:{samples}:{MULTI}"]["error"]


@pytest.mark.parametrize("content, message", [
    ('{"image": "oci:/x:y"}\n', "has no 'source' column"),
    ("image,tag\noci:/x:y,1\n", "has no 'source' column"),
    ("not parquet", "cannot be read as records"),
])
def test_records_without_a_source_column_or_unreadable_are_a_usage_error(tmp_path, capsys, content, message):
    ext = "csv" if "," in content else "jsonl" if content.startswith("{") else "parquet"
    url = tmp_path / f"images.{ext}"
    url.write_text(content)
    report = tmp_path / "audit.parquet"
    code = main(["copy", "--records", str(url), f"oci:{tmp_path}/out", "--audit", str(report)])
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (EXIT_USAGE, "", 1)
    assert message in err and str(url) in err
    assert not report.exists() and not (tmp_path / "out").exists()


def test_records_that_match_nothing_are_a_usage_error(tmp_path, capsys):
    assert main(["copy", "--records", str(tmp_path / "none" / "*.parquet"), f"oci:{tmp_path}/out"]) == EXIT_USAGE
    assert "matches no records file" in capsys.readouterr().err


def test_ls_output_then_a_filter_then_run(samples, tmp_path):
    listing = tmp_path / "listing.parquet"
    assert main(["ls", f"oci:{samples}", "--output", str(listing)]) == EXIT_OK
    table = pq.read_table(listing)
    assert table.column_names == ["source", "repository", "tag", "source_digest", "media_type", "schema_version"]
    digests = source_digests(samples)
    assert sorted(zip(table.column("source").to_pylist(), table.column("source_digest").to_pylist())) == sorted(
        (f"oci:{samples}:{ref}", digest) for ref, digest in digests.items())
    chosen = tmp_path / "chosen.parquet"
    try:  # the README's filter; pyarrow's own where DuckDB is not installed
        import duckdb

        duckdb.sql(f"COPY (SELECT * FROM '{listing}' WHERE repository = 'demo/multi') TO '{chosen}' (FORMAT parquet)")
    except ImportError:
        import pyarrow.compute as pc

        pq.write_table(table.filter(pc.equal(table["repository"], "demo/multi")), chosen)
    report = tmp_path / "audit.parquet"
    (tmp_path / "run.yaml").write_text(
        f"audit: {report}\njobs:\n  - records: {tmp_path}/chosen.parquet\n    to: ['oci:{tmp_path}/mirror']\n")
    assert main(["run", str(tmp_path / "run.yaml")]) == EXIT_OK
    assert names(tmp_path / "mirror") == {MULTI: digests[MULTI]}
    (row,) = top(report).values()
    assert (row["source_digest"], row["destination_digest"]) == (digests[MULTI], digests[MULTI])


def test_retry_runs_exactly_the_failed_images_again(samples, tmp_path):
    """A layer is broken: its image fails, the other is copied; repaired, retry copies only it."""
    source = tmp_path / "src"
    shutil.copytree(samples, source)
    app = json.loads(OCILayoutSource(str(source)).get_root(APP).data)
    victim = source / "blobs/sha256" / app["layers"][1]["digest"][7:]  # not shared with demo/multi
    good = victim.read_bytes()
    victim.chmod(0o644)
    victim.write_bytes(good[:-1] + b"!")
    listing = tmp_path / "images.csv"
    write_records([ImageRecord(f"oci:{source}:{APP}", format="oci"), ImageRecord(f"oci:{source}:{MULTI}")],
                  str(listing), ALL_COLUMNS)
    first = tmp_path / "first.parquet"
    assert main(["copy", "--records", str(listing), f"oci:{tmp_path}/out", "--audit", str(first)]) == EXIT_FAILED
    assert top(first)[f"oci:{source}:{APP}"]["status"] == FAILED
    assert list(names(tmp_path / "out")) == [MULTI]

    victim.write_bytes(good)
    second = tmp_path / "second.parquet"
    assert main(["retry", str(first), "--audit", str(second)]) == EXIT_OK
    (row,) = rows(second)  # the failed image only: the index that was copied is not run again
    assert (row["source"], row["destination"], row["role"]) == (
        f"oci:{source}:{APP}", f"oci:{tmp_path}/out:{APP}", "image")
    assert row["status"] in DONE and row["destination_digest"] == names(source)[APP]
    # Only the layer that was broken is copied: the first run wrote the config, and the
    # base layer came with demo/multi.
    assert row["bytes_copied"] == app["layers"][1]["size"] == len(good)
    assert (row["blobs_copied"], row["blobs_skipped"]) == (1, 2)
    assert names(tmp_path / "out") == {APP: names(source)[APP], MULTI: names(source)[MULTI]}

    third = tmp_path / "third.parquet"
    assert main(["retry", str(second), "--audit", str(third)]) == EXIT_OK
    assert rows(third) == []  # nothing failed: nothing to run


def _failed_row(source: str, destination: str, role: str, **kw) -> AuditRow:
    at = now()
    return AuditRow(run_id="r1", source=source, destination=destination, source_digest=kw.pop("digest", None),
                    destination_digest=None, media_type=None, status=kw.pop("status", FAILED), error="boom",
                    blobs_copied=0, blobs_skipped=0, bytes_copied=0, started_at=at, finished_at=at, role=role,
                    error_kind="unreachable", **kw)


def test_retry_reads_each_failed_top_level_row_with_its_settings(tmp_path):
    """Children are left to their index; format, compression and platforms come from the row."""
    digest = "sha256:" + "a" * 64
    report = str(tmp_path / "old.parquet")
    audit.write([
        _failed_row("oci:/in:a", "docker://reg.example/x/a:1", "image", format="oci", compression="zstd",
                    digest=digest),
        _failed_row("oci:/in:m", "oci:/out:m", "index", platforms=["linux/arm64"]),
        _failed_row("oci:/in:m", "oci:/out:m", "child", platform="linux/arm64"),
        _failed_row("oci:/in:b", "oci:/out:b", "image", status="copied"),
    ], report)
    retry = RecordSource(report, failed_only=True, pin_digest=False)
    jobs = sorted(jobs_from_file(report, retry, "r2"), key=lambda j: j.source)
    assert [(j.source, j.image, j.digest, j.platforms) for j in jobs] == [
        ("oci:/in:a", "a", None, ()), ("oci:/in:m", "m", None, ("linux/arm64",))]
    (target,) = jobs[0].targets
    assert (target.destination, target.store, target.name, target.format, target.compression) == (
        "docker://reg.example/x/a:1", "docker://reg.example/x/a", "1", "oci", "zstd")
    pinned = next(iter(jobs_from_file(report, RecordSource(report, failed_only=True, pin_digest=True), "r2")))
    assert (pinned.image, pinned.digest) == (None, digest)


def test_read_records_under_test_pipeline(samples, tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from imagepush.transforms import ReadRecords

    write_records([ImageRecord(f"oci:{samples}:{APP}")], str(tmp_path / "in/a.jsonl"), ALL_COLUMNS)
    write_records([ImageRecord("nope:x"), ImageRecord(f"oci:{samples}:{MULTI}", destination="oci:/o:m")],
                  str(tmp_path / "in/b.parquet"), ALL_COLUMNS)
    source = RecordSource(str(tmp_path / "in"), outputs=(Output("oci:/mirror"),))
    with TestPipeline(runner="FnApiRunner") as p:
        got = (
            p
            | ReadRecords("run", [source], shards=2)
            | beam.Map(lambda r: (type(r).__name__, r.source,
                                  [t.destination for t in r.targets] if hasattr(r, "targets") else
                                  (r.destination, r.error_kind)))
        )
        assert_that(got, equal_to([
            ("CopyJob", f"oci:{samples}:{APP}", [f"oci:/mirror:{APP}"]),
            ("CopyJob", f"oci:{samples}:{MULTI}", ["oci:/o:m"]),
            ("AuditRow", "nope:x", ("oci:/mirror", "invalid_input")),
        ]))

