"""The direct path: a small local run copied in this process, without Beam, as Beam would copy it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.graph import RunSpec
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.engine.direct import MAX_DIRECT_JOBS
from imagepush.transforms.engine.jobs import CopyJob, SyncSpec
from tests.conftest import require_tool, run
from tests.registry_server import Registry, start_registry

pytestmark = pytest.mark.integration

#: Columns that differ between any two runs, whatever copied them.
RUN_DEPENDENT = ("run_id", "started_at", "finished_at")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Registry]:
    """team/app:1 and team/app:v2s2 (one image, two manifests, the same layers) and team/multi:1.0
    (an index whose children share app's base layer), pushed by skopeo."""
    require_tool("docker-registry")
    root = tmp_path_factory.mktemp("direct-src")
    write_oci_samples(str(root / "layout"))
    reg = start_registry(root / "registry")
    try:
        for ref, flags, name in (("demo/app:1.0", [], "team/app:1"), ("demo/app:1.0", ["--format", "v2s2"], "team/app:v2s2"),
                                 ("demo/multi:1.0", ["--all"], "team/multi:1.0")):
            run([require_tool("skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false", *flags,
                 f"oci:{root}/layout:{ref}", f"docker://{reg.host}/{name}"], timeout=120)
        yield reg
    finally:
        reg.stop()


def normalized(path: Path, hosts: dict[str, str]) -> list[dict]:
    """The audit's rows without their run-dependent columns, each destination host named by its role."""
    out = []
    for row in pq.read_table(path).to_pylist():
        for column in RUN_DEPENDENT:
            row.pop(column)
        for host, role in hosts.items():
            row["destination"] = row["destination"].replace(host, role)
        out.append(row)
    return sorted(out, key=lambda r: (r["source"], r["destination"], r["role"], r["source_digest"] or ""))


ATTRIBUTION = ("blobs_copied", "blobs_skipped", "bytes_copied")


def _without_attribution(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ATTRIBUTION} for row in rows]


def _attributed(rows: list[dict], destination: str) -> tuple[int, ...]:
    return tuple(sum(r[column] for r in rows if destination in r["destination"]) for column in ATTRIBUTION)


def test_the_direct_path_writes_the_audit_rows_beam_writes(source, tmp_path):
    """A sync with shared blobs and an index, a copy that fails and a source that cannot be listed.

    Without the preflight, so that the direct path lists the syncs itself, as Beam's workers do.
    """
    rows = {}
    for engine in ("beam", "direct"):
        mirror = start_registry(tmp_path / f"mirror-{engine}")
        try:
            config = tmp_path / f"{engine}.yaml"
            config.write_text(json.dumps({
                "audit": str(tmp_path / f"{engine}.parquet"),
                "registries": {"insecure": [source.host, mirror.host]},
                "preflight": False,
                "jobs": [
                    {"sync": f"docker://{source.host}/team", "to": [f"docker://{mirror.host}/mirror",
                                                                  f"oci:{tmp_path}/layout-{engine}"]},
                    {"copy": f"docker://{source.host}/team/gone:1", "to": [f"docker://{mirror.host}/mirror/gone:1"]},
                    {"sync": f"oci:{tmp_path}/no-layout", "to": [f"docker://{mirror.host}/other"]},
                ],
            }))
            assert main(["run", str(config), "--engine", engine]) == 1  # the missing image failed
            rows[engine] = normalized(tmp_path / f"{engine}.parquet",
                                      {mirror.host: "MIRROR", f"layout-{engine}": "LAYOUT"})
        finally:
            mirror.stop()
    # Which image a blob shared by several counts as copied for is a tie-break: Beam picks
    # the first target key of the grouped requests, the streaming executor the first image
    # listed. Everything else is equal row by row, and the counts add up per destination.
    assert _without_attribution(rows["direct"]) == _without_attribution(rows["beam"])
    for destination in ("MIRROR", "LAYOUT"):
        assert _attributed(rows["direct"], destination) == _attributed(rows["beam"], destination)
    top = {(r["source"].rsplit("/", 1)[-1], r["destination"].split(":")[0]): r["status"]
           for r in rows["direct"] if r["role"] != "child"}
    assert top == {("app:1", "docker"): "copied", ("app:v2s2", "docker"): "copied", ("multi:1.0", "docker"): "copied",
                   ("app:1", "oci"): "copied", ("app:v2s2", "oci"): "copied", ("multi:1.0", "oci"): "copied",
                   ("gone:1", "docker"): "failed", ("no-layout", "docker"): "failed"}
    assert sorted(r["platform"] for r in rows["direct"] if r["role"] == "child") == \
        ["linux/amd64", "linux/amd64", "linux/arm64", "linux/arm64"]
    # Each blob is written once per destination: the base layer that all three images
    # share is copied for one of them and counted as present (shared) for the others.
    for destination in ("MIRROR", "LAYOUT"):
        at = [r for r in rows["direct"] if destination in r["destination"]]
        assert sum(r["blobs_copied"] for r in at) == 7  # base, app, config x2 (oci, v2s2), 2 arch layers, 2 configs


def _modules_after(args: list[str]) -> dict:
    """Run the command line in a fresh interpreter; its exit status and which heavy modules it imported."""
    code = (
        "import sys\n"
        "from imagepush.pipeline.cli import main\n"
        "try:\n"
        f"    status = main({args!r})\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "print('RESULT', status, 'apache_beam' in sys.modules, 'pyarrow' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    _, status, beam, arrow = line.split()
    return {"status": int(status), "beam": beam == "True", "pyarrow": arrow == "True"}


def test_a_small_copy_never_imports_beam_and_the_commands_that_run_nothing_import_neither(source, tmp_path):
    dst = f"oci:{tmp_path}/layout:app"
    copy = _modules_after(["copy", f"docker://{source.host}/team/app:1", dst,
                           "--insecure-registry", source.host, "--audit", str(tmp_path / "a.parquet")])
    assert copy == {"status": 0, "beam": False, "pyarrow": True}  # the report is Parquet
    for args in (["--help"], ["ls", f"docker://{source.host}/team", "--insecure-registry", source.host],
                 ["inspect", f"docker://{source.host}/team/app:1", "--insecure-registry", source.host]):
        assert _modules_after(args) == {"status": 0, "beam": False, "pyarrow": False}, args


def test_engine_beam_runs_beam_for_a_copy_auto_would_run_directly(source, tmp_path):
    copy = _modules_after(["copy", f"docker://{source.host}/team/app:1", f"oci:{tmp_path}/layout:app",
                           "--insecure-registry", source.host, "--audit", str(tmp_path / "a.parquet"),
                           "--engine", "beam"])
    assert copy == {"status": 0, "beam": True, "pyarrow": True}


def test_engine_direct_refuses_what_only_beam_can_do(tmp_path, capsys):
    records = tmp_path / "images.jsonl"
    records.write_text(json.dumps({"source": f"oci:{tmp_path}/nowhere:x"}) + "\n")
    out = f"oci:{tmp_path}/out"
    assert main(["copy", "--records", str(records), out, "--engine", "direct"]) == 2
    assert "records files are read by Beam's workers" in capsys.readouterr().err
    assert main(["copy", f"oci:{tmp_path}/nowhere:x", out, "--engine", "direct", "--direct_num_workers", "2"]) == 2
    assert "--engine direct runs without Beam: --direct_num_workers is a Beam option" in capsys.readouterr().err


def _spec(jobs: int, syncs: int = 0, engine: str = "auto", beam_args: list[str] | None = None) -> RunSpec:
    job = CopyJob(source_store="oci:/x", source="oci:/x:a", image="a", digest=None, targets=())
    return RunSpec("run", "audit.parquet", jobs=[job] * jobs, syncs=[SyncSpec("oci:/x", ())] * syncs,
                   engine=engine, beam_args=beam_args or [])


def test_auto_copies_directly_up_to_a_few_dozen_images_known_after_the_preflight_and_without_beam_options():
    assert commands._direct_wanted(_spec(1)) and commands._runs_direct(_spec(MAX_DIRECT_JOBS))
    assert not commands._runs_direct(_spec(MAX_DIRECT_JOBS + 1))
    assert not commands._runs_direct(_spec(1, syncs=1))  # a listing left unlisted (--no-preflight)
    assert not commands._direct_wanted(_spec(1, beam_args=["--runner=DirectRunner"]))
    assert not commands._direct_wanted(_spec(1, engine="beam"))
    assert commands._runs_direct(_spec(MAX_DIRECT_JOBS + 1, syncs=1, engine="direct"))
