"""The audit of schema 2: what each row says, how the summary and ``imagepush audit`` read it,
and the DuckDB query of the README over many runs' reports."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms import audit, records
from imagepush.transforms.engine.jobs import MOUNTED, PRESENT, Output
from imagepush.transforms.engine.manifests import finalize
from imagepush.transforms.engine.naming import copy_job
from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.plan import blob_requests, plan_targets
from imagepush.transforms.engine.resolve import resolve_image
from imagepush.transforms.formats.manifest import parse_manifest
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.layout.oci import OCILayoutSource
from imagepush.transforms.stores.refs import parse_reference

#: The query the README shows, run as it is written there.
README_QUERY = ("SELECT status, count(*) FROM '~/.local/state/imagepush/audit/*.parquet' WHERE role != 'child' "
                "GROUP BY status")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit-samples")
    write_oci_samples(str(root))
    return root


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def blob_sizes(layout: Path, ref: str) -> dict[str, int]:
    """Digest -> size of every blob the image manifest ``ref`` names, by reading the layout."""
    source = OCILayoutSource(str(layout))
    blob = source.get_manifest(ref) if ref.startswith("sha256:") else source.get_root(ref)
    parsed = parse_manifest(blob.data, blob.media_type)
    return {d.digest: d.size for d in [parsed.config, *parsed.layers]}


def test_a_copy_then_its_rerun_say_copied_then_current_with_every_column(samples, tmp_path):
    first, again = tmp_path / "first.parquet", tmp_path / "again.parquet"
    argv = ["copy", f"oci:{samples}:demo/multi:1.0", f"oci:{tmp_path}/out:multi", "--platform", "linux/arm64",
            "--platform", "linux/amd64"]
    assert main([*argv, "--audit", str(first)]) == 0
    rows = rows_of(first)
    assert [(r["role"], r["status"]) for r in rows] == [("index", "copied"), ("child", "copied"), ("child", "copied")]
    for r in rows:
        assert (r["repository"], r["tag"], r["format"], r["compression"], r["platforms"], r["schema_version"]) == (
            "demo/multi", "1.0", "preserve", "preserve", ["linux/arm64", "linux/amd64"], 3)
        assert r["error"] is None and r["error_kind"] is None and r["blobs_mounted"] == 0
        assert r["converted_from"] is None
    index, *children = rows
    assert index["platform"] is None
    assert sorted(c["platform"] for c in children) == ["linux/amd64", "linux/arm64"]
    source = OCILayoutSource(str(samples))
    entries = {str(e.platform): e.digest for e in parse_manifest(
        source.get_root("demo/multi:1.0").data, source.get_root("demo/multi:1.0").media_type).manifests}
    for child in children:
        assert child["source_digest"] == entries[child["platform"]]
        assert child["bytes_total"] == sum(blob_sizes(samples, child["source_digest"]).values())
    # The index totals its tree, each blob once (the children share one).
    tree: dict[str, int] = {}
    for child in children:
        tree.update(blob_sizes(samples, child["source_digest"]))
    assert index["bytes_total"] == sum(tree.values()) < sum(c["bytes_total"] for c in children)
    assert sum(r["bytes_copied"] for r in rows) == sum(tree.values())

    assert main([*argv, "--audit", str(again)]) == 0
    rows = rows_of(again)
    assert [(r["role"], r["status"], r["blobs_copied"], r["bytes_copied"], r["error"]) for r in rows] == [
        ("index", "current", 0, 0, None), ("child", "current", 0, 0, None), ("child", "current", 0, 0, None)]
    assert [r["bytes_total"] for r in rows] == [index["bytes_total"]] + [c["bytes_total"] for c in children]


def test_a_failed_row_keeps_what_was_asked_so_it_can_be_retried(samples, tmp_path):
    audit_url = tmp_path / "a.parquet"
    assert main(["copy", "--format", "v2s2", "--compression", "gzip", "--platform", "linux/amd64",
                 f"oci:{samples}:no/such:2.0", f"oci:{tmp_path}/out:x", "--audit", str(audit_url)]) == 1
    (row,) = rows_of(audit_url)
    assert (row["status"], row["error_kind"], row["role"]) == ("failed", "not_found", "image")
    assert (row["repository"], row["tag"], row["format"], row["compression"], row["platforms"]) == (
        "no/such", "2.0", "v2s2", "gzip", ["linux/amd64"])


def test_a_sync_names_each_image_by_repository_and_tag(samples, tmp_path):
    audit_url = tmp_path / "a.parquet"
    assert main(["sync", f"oci:{samples}", f"oci:{tmp_path}/out", "--audit", str(audit_url)]) == 0
    top = {(r["repository"], r["tag"]) for r in rows_of(audit_url) if r["role"] != "child"}
    assert top == {("demo/app", "1.0"), ("demo/multi", "1.0")}


def test_registry_sources_are_named_by_their_full_repository():
    job = copy_job(parse_reference("docker://registry.example:5000/team/app:1"), [Output("oci:/x:app")], ())
    assert (job.repository, job.tag) == ("team/app", "1")
    by_digest = copy_job(parse_reference("docker://registry.example/team/app@sha256:" + "a" * 64),
                         [Output("oci:/x:app")], ())
    assert (by_digest.repository, by_digest.tag) == ("team/app", None)
    bare = copy_job(parse_reference("oci:/layout:latest"), [Output("oci:/x:app")], ())
    assert (bare.repository, bare.tag) == (None, "latest")


def test_mounted_blobs_are_counted_apart_from_skipped(samples, tmp_path):
    stores = StoreCache()
    job = copy_job(parse_reference(f"oci:{samples}:demo/app:1.0"), [Output(f"oci:{tmp_path}/out:app")], ())
    (tp,) = plan_targets(resolve_image(job, stores), stores)
    # Deliver the blobs for real, then report the first one as mounted, the second present.
    delivered = [r for request in blob_requests(tp) for _, r in BlobDelivery(stores).deliver([request])]
    delivered = [replace(r, status=status, bytes_copied=0) if status else r
                 for r, status in zip(delivered, [MOUNTED, PRESENT] + [None] * len(delivered))]
    (row,) = finalize(tp, delivered, stores.destination(tp.target.store), "run").rows
    assert (row.status, row.blobs_mounted, row.blobs_skipped, row.blobs_copied) == (
        records.COPIED, 1, 1, len(delivered) - 2)
    assert row.bytes_total == sum(r.size for r in delivered)
    assert row.bytes_copied == sum(r.size for r in delivered[2:])


def test_each_image_has_its_own_times(samples, tmp_path):
    stores = StoreCache()
    plans = []
    for name in ("demo/app:1.0", "demo/multi:1.0"):
        job = copy_job(parse_reference(f"oci:{samples}:{name}"), [Output(f"oci:{tmp_path}/out:{name}")], ())
        plans.append(plan_targets(resolve_image(job, stores), stores)[0])
    finals = [finalize(tp, [], None, "run") if tp.error else None for tp in plans]
    assert finals == [None, None]
    rows = []
    for tp in plans:
        delivered = [r for request in blob_requests(tp) for _, r in BlobDelivery(stores).deliver([request])]
        rows.append(finalize(tp, delivered, stores.destination(tp.target.store), "run").rows)
    app, multi = rows
    # Every row of an image starts when its resolve began and ends when its last manifest was written.
    assert {(r.started_at, r.finished_at) for r in multi} == {(plans[1].image.started_at, multi[0].finished_at)}
    assert app[0].started_at == plans[0].image.started_at < plans[1].image.started_at
    assert app[0].started_at <= app[0].finished_at < multi[0].finished_at


def v1_report(path: Path, statuses: list[tuple[str, str, str]]) -> None:
    """A report as schema version 1 wrote it: its columns only, ``ok`` for every success."""
    v1 = pa.schema([f for f in records.AUDIT_SCHEMA if f.name not in (
        "repository", "tag", "platform", "format", "compression", "platforms", "blobs_mounted", "bytes_total")])
    at = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    rows = [dict(run_id="old", source=source, destination=destination, source_digest=None, destination_digest=None,
                 media_type=None, status=status, error=None if status == "ok" else "boom", blobs_copied=1,
                 blobs_skipped=0, bytes_copied=10, started_at=at, finished_at=at, role="image",
                 error_kind=None if status == "ok" else "refused", schema_version=1)
            for source, destination, status in statuses]
    pq.write_table(pa.Table.from_pylist(rows, schema=v1), path)


def test_an_old_report_reads_ok_as_copied(tmp_path, capsys):
    old = tmp_path / "v1.parquet"
    v1_report(old, [("oci:/s:a", "oci:/d:a", "ok"), ("oci:/s:b", "oci:/d:b", "failed")])
    a, b = audit.read_rows(str(old))
    assert (a.status, a.blobs_mounted, a.bytes_total, a.platforms, a.schema_version) == ("copied", 0, 0, [], 1)
    assert b.status == "failed"
    assert commands.show_audit(argparse.Namespace(url=str(old), json=False, failed=False)) == 0
    out = capsys.readouterr().out
    assert "total: 2 images: 1 copied, 1 failed" in out and " ok " not in out


def summary_rows(run: str) -> list[records.AuditRow]:
    at = records.now()

    def row(source: str, destination: str, status: str, role: str = "image", error: str | None = None):
        return records.AuditRow(
            run_id=run, source=source, destination=destination, source_digest=None, destination_digest=None,
            media_type=None, status=status, error=error, blobs_copied=2 if status == "copied" else 0,
            blobs_skipped=1, bytes_copied=2000 if status == "copied" else 0, started_at=at, finished_at=at,
            role=role, error_kind="unreachable" if error else None, blobs_mounted=1 if status == "copied" else 0,
            retries=3 if error else 0,
        )

    return [
        row("s:a", "d1:a", "copied"), row("s:a", "d2:a", "current"),  # one image, two destinations
        row("s:b", "d1:b", "current"), row("s:b", "d2:b", "current"),
        row("s:c", "d1:c", "copied", "index"), row("s:c", "d1:c", "copied", "child"),
        row("s:d", "d1:d", "failed", error="cannot reach d1"), row("s:d", "d2:d", "copied"),
        row("s:e", "d2:e", "failed", error="cannot reach d1"),
        row("s:f", "d2:f", "failed", error="refused"),
    ]


def test_the_summary_counts_images_by_status_in_one_line(tmp_path, capsys):
    url = str(tmp_path / "run.parquet")
    audit.write(summary_rows("r"), url)
    assert commands.summarize(url, 1.0, destinations=2) == 1
    out, err = capsys.readouterr()
    assert out == (f"6 images to 2 destinations: 3 copied, 3 current, 3 failed; 8 blobs copied, 4 mounted, 10 skipped, 8.0 KB in 1.0s, "
                   f"9 retries; audit: {url}\n")
    assert err.splitlines() == [  # two images failed by one host: one line
        "imagepush: FAILED registry d1 unreachable: 2 images failed (first: s:d -> d1:d: cannot reach d1)",
        "imagepush: FAILED s:f -> d2:f: refused",
    ]


def test_the_summary_groups_repeated_failures_on_the_console_while_the_audit_keeps_every_row(tmp_path, capsys):
    at = records.now()

    def failed(source: str, destination: str, error: str) -> records.AuditRow:
        return records.AuditRow(
            run_id="r", source=source, destination=destination, source_digest=None, destination_digest=None,
            media_type=None, status="failed", error=error, blobs_copied=0, blobs_skipped=0, bytes_copied=0,
            started_at=at, finished_at=at, error_kind="unreachable",
        )

    down = [failed(f"oci:/s:app{i}", f"docker://reg:5000/m/app{i}",
                   f"reg:5000/m/app{i}: tag list not attempted: cannot reach reg:5000 (connection refused)")
            for i in range(37)]
    source_down = [failed(f"docker://src:5000/b{i}:1", f"oci:/o:b{i}:1",
                          f"src:5000/b{i}: manifest failed: cannot reach src:5000 (connection refused)")
                   for i in range(2)]
    same = [failed(f"oci:/s:x{i}", f"docker://tls:443/x{i}", "tls:443 speaks plain HTTP, not TLS: use "
                   "--insecure-registry tls:443") for i in range(3)]
    url = str(tmp_path / "run.parquet")
    audit.write(down + source_down + same, url)
    assert commands.summarize(url, 1.0) == 1
    assert capsys.readouterr().err.splitlines() == [  # in the audit's order (by source)
        "imagepush: FAILED source src:5000 unreachable: 2 images failed (first: docker://src:5000/b0:1 -> oci:/o:b0:1: "
        "src:5000/b0: manifest failed: cannot reach src:5000 (connection refused))",
        "imagepush: FAILED destination reg:5000 unreachable: 37 images failed (first: oci:/s:app0 -> "
        "docker://reg:5000/m/app0: reg:5000/m/app0: tag list not attempted: cannot reach reg:5000 (connection refused))",
        "imagepush: FAILED 3 images: tls:443 speaks plain HTTP, not TLS: use --insecure-registry tls:443",
    ]
    assert len(audit.read_rows(url)) == 42


def test_the_audit_command_totals_by_status_and_destination_and_lists_top_errors(tmp_path, capsys):
    url = str(tmp_path / "run.parquet")
    audit.write(summary_rows("r"), url)
    assert main(["audit", url]) == 0
    out = capsys.readouterr().out
    totals = out[out.index("\ntotal:") + 1:].splitlines()
    assert totals[:2] == ["total: 6 images: 2 copied, 1 current, 3 failed", "by destination:"]
    assert "  d1:a: 1 copied; 2.0 KB copied" in totals
    assert "  d2:d: 1 copied; 2.0 KB copied" in totals
    assert "  d2:f: 1 failed; 0 B copied" in totals
    errors = totals[totals.index("top errors:") + 1:]
    assert errors == ["      2  unreachable: cannot reach d1", "      1  unreachable: refused"]

    assert main(["audit", url, "--failed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("failed ") for line in lines[1:])
    assert main(["audit", url, "--failed", "--json"]) == 0
    failed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["source"] for r in failed) == ["s:d", "s:e", "s:f"]


def test_the_readme_duckdb_query_over_many_runs(samples, tmp_path, monkeypatch):
    duckdb = pytest.importorskip("duckdb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    # Two runs with the default audit location: the copy, then a rerun that finds it current.
    for _ in range(2):
        assert main(["sync", f"oci:{samples}", f"oci:{tmp_path}/mirror"]) == 0
    assert len(list((tmp_path / "home/.local/state/imagepush/audit").glob("*.parquet"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mirror"]  # nothing left in the current folder
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert README_QUERY in readme
    result = sorted(duckdb.connect().execute(README_QUERY).fetchall())
    assert result == [("copied", 2), ("current", 2)]
