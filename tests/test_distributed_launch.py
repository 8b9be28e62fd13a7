"""Launching for a distributed runner: the Dataflow dry run, and what such a run refuses up front.

The dry run builds the real Dataflow job from ``configs/dataflow.yaml`` with every
socket to anything but loopback refused and no credentials anywhere: it must succeed,
and no store may have been touched.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.options import beam_argv, is_dry_run

REPO_ROOT = Path(__file__).resolve().parent.parent
DASK = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address", "127.0.0.1:1"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (every connect refused and recorded) and no Google credentials."""
    attempts: list[object] = []

    def refuse(self, address, *args, **kw):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    return attempts


def test_the_dataflow_example_builds_offline_with_a_bare_dry_run_and_touches_nothing(offline, monkeypatch, capsys):
    gcsfs = _dataflow_extra()

    opened: list[str] = []
    monkeypatch.setattr(gcsfs.GCSFileSystem, "__init__",
                        lambda self, *a, **kw: opened.append("gcs") or pytest.fail("a gs:// store was opened"))
    monkeypatch.chdir(REPO_ROOT)  # the config's setup_file is ./pyproject.toml
    assert main(["run", "configs/dataflow.yaml", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: the DataflowRunner job of 0 copy jobs and 1 syncs was built" in out
    assert offline == [] and opened == []


def _dataflow_extra():
    """gcsfs, with Beam's Dataflow runner: missing is a skip, or a failure under CI=true (make test installs them)."""
    try:
        import gcsfs
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the dataflow extra is required under CI=true but is not installed")
        pytest.skip("the dataflow extra is not installed")
    return gcsfs


def test_dry_run_is_a_switch_and_reaches_beam_as_a_clean_value():
    assert is_dry_run(["--dry_run"]) and not is_dry_run(["--dry_run=false"]) and not is_dry_run([])
    assert "--dry_run=True" in beam_argv(["--dry_run"])
    assert not any(a.startswith("--dry_run") for a in beam_argv(["--dry_run=False"]))


def test_a_dry_run_on_the_local_runner_copies_nothing(tmp_path, layout, capsys):
    out = tmp_path / "out"
    assert main(["sync", f"oci:{layout}", f"oci:{out}", "--audit", str(tmp_path / "a.parquet"), "--dry_run"]) == 0
    assert not out.exists() and not (tmp_path / "a.parquet").exists()
    assert "nothing was read, written or submitted" in capsys.readouterr().out


@pytest.mark.parametrize("args, named", [
    (["oci:./images", "oci:s3://b/mirror", "--audit", "s3://b/a.parquet"], "oci:./images: DaskRunner workers"),
    (["docker://a.example/", "oci:memory://m", "--audit", "s3://b/a.parquet"], "memory:// store"),
    (["docker://a.example/", "docker://b.example/m"], "--audit "),
    (["docker://a.example/", "docker://b.example/m", "--audit", "/tmp/a.parquet"], "object store"),
])
def test_a_distributed_runner_refuses_what_its_workers_cannot_share(offline, args, named, capsys, tmp_path):
    assert main(["sync", *args, *DASK]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert offline == []  # refused before any store or the scheduler was contacted


def test_a_distributed_runner_refuses_records_on_a_local_path(offline, capsys, tmp_path):
    records = tmp_path / "images.jsonl"
    records.write_text('{"source": "docker://a.example/app:1"}\n')
    assert main(["copy", "--records", str(records), "docker://b.example/m", "--audit", "s3://b/a.parquet", *DASK]) == 2
    err = capsys.readouterr().err
    assert f"{records}: DaskRunner workers read the records" in err and len(err.strip().splitlines()) == 1
    assert offline == []


def test_dataflow_option_problems_are_one_line_with_every_reason(offline, capsys):
    flags = ["--runner", "DataflowRunner", "--temp_location", "gs://b/tmp", "--dry_run", "--region", "r",
             "--job_name", "Bad_Name"]
    assert main(["sync", "docker://a.example/", "docker://b.example/m", "--audit", "gs://b/a.parquet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Dataflow refuses these options:" in err
    assert "project" in err and "job_name" in err.lower()
    assert offline == []


def test_dataflow_without_a_cloud_storage_temp_location_is_refused_at_once(offline, capsys):
    assert main(["sync", "docker://a.example/", "docker://b.example/m", "--audit", "gs://b/a.parquet",
                 "--runner", "DataflowRunner", "--project", "p", "--region", "r"]) == 2
    assert "--temp_location gs://" in capsys.readouterr().err
    assert offline == []
