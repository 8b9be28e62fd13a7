"""The direct path: a small local run copied in this process, without Beam, as Beam would copy it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.graph import RunSpec
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.engine.jobs import CopyJob, SyncSpec
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import Publication
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.layout.oci import OCILayoutDestination, OCILayoutSource
from tests.conftest import require_tool, run, running_registry
from tests.registry_server import Registry, start_registry
from tests.test_registry_pipeline import rows

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
            row["error"] = row["error"] and row["error"].replace(host, role)
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
            # mirror/app:1 already names another image (app:v2s2, whose blobs it brings): skipped, no-clobber.
            run([require_tool("skopeo"), "--insecure-policy", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                 f"docker://{source.host}/team/app:v2s2", f"docker://{mirror.host}/mirror/app:1"], timeout=120)
            config = tmp_path / f"{engine}.yaml"
            config.write_text(json.dumps({
                "audit": str(tmp_path / f"{engine}.parquet"),
                "registries": {"insecure": [source.host, mirror.host]},
                "preflight": False,
                "no_clobber": True,
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
    assert top == {("app:1", "docker"): "skipped", ("app:v2s2", "docker"): "copied", ("multi:1.0", "docker"): "copied",
                   ("app:1", "oci"): "copied", ("app:v2s2", "oci"): "copied", ("multi:1.0", "oci"): "copied",
                   ("gone:1", "docker"): "failed", ("no-layout", "docker"): "failed"}
    assert sorted(r["platform"] for r in rows["direct"] if r["role"] == "child") == \
        ["linux/amd64", "linux/amd64", "linux/arm64", "linux/arm64"]
    # Each blob is written once per destination: the base layer that all three images
    # share is copied for one of them and counted as present (shared) for the others.
    # At the mirror, app:v2s2's blobs were there already (present) and the base layer is
    # mounted into multi's repository from app's.
    for destination, copied in (("MIRROR", 4), ("LAYOUT", 7)):
        at = [r for r in rows["direct"] if destination in r["destination"]]
        assert sum(r["blobs_copied"] for r in at) == copied  # base, app, config x2 (oci, v2s2), 2 arch layers, 2 configs


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


def test_auto_copies_directly_any_number_of_images_without_beam_options_or_records():
    assert commands._direct_wanted(_spec(1)) and commands._direct_wanted(_spec(10_000, syncs=2))
    assert not commands._direct_wanted(_spec(1, beam_args=["--runner=DirectRunner"]))
    assert not commands._direct_wanted(_spec(1, engine="beam"))
    records = _spec(0)
    records.records = [object()]
    assert not commands._direct_wanted(records)


class _Recorder:
    """A store whose calls are noted, in order, in a log the whole run shares."""

    def __init__(self, store: str, inner, log: list, lock: threading.Lock) -> None:
        self._store, self._inner, self._log, self._lock = store, inner, log, lock

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            with self._lock:
                self._log.append((self._store, name, args, kwargs))
            return value(*args, **kwargs)
        return call


def _recording_cache(log: list):
    """A StoreCache whose sources and destinations note every call in ``log``."""
    lock = threading.Lock()

    class Recording(StoreCache):
        def source(self, store):
            return _Recorder(store, super().source(store), log, lock)

        def destination(self, store):
            return _Recorder(store, super().destination(store), log, lock)
    return Recording


@pytest.fixture
def shared_base(tmp_path) -> str:
    """A layout whose 40 tags all point at demo/app's image, and demo/multi: one base layer under every image."""
    url = f"oci:{tmp_path}/samples"
    write_oci_samples(str(tmp_path / "samples"))
    layout = OCILayoutDestination(str(tmp_path / "samples"))
    app = OCILayoutSource(str(tmp_path / "samples")).get_root("demo/app:1.0")
    layout.publish([Publication(f"demo/app:t{i}", Descriptor(app.media_type, app.digest, len(app.data)))
                    for i in range(40)])
    return url


def test_a_blob_shared_by_many_streamed_images_is_read_once_and_written_once_per_destination(
        shared_base, tmp_path, monkeypatch):
    log: list = []
    monkeypatch.setattr(commands, "StoreCache", _recording_cache(log))
    dsts = [f"oci:{tmp_path}/one", f"oci:{tmp_path}/two"]
    assert main(["sync", shared_base, *dsts, "--engine", "direct", "--no-preflight", "--parallel", "4",
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    reads = Counter(args[0] for store, name, args, _ in log if name == "open_blob")
    writes = Counter((store, args[0].digest) for store, name, args, _ in log if name in ("blob_sink", "put_blob"))
    # demo/app (base, app layer, config), demo/multi (base, two arch layers, two configs): 7 blobs.
    assert len(reads) == 7 and set(reads.values()) == {1}
    assert sorted(Counter(store for store, _ in writes).values()) == [7, 7] and set(writes.values()) == {1}
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len([r for r in rows if r["role"] != "child"]) == 2 * 42
    assert sum(r["blobs_copied"] for r in rows) == 14


def test_auto_copies_a_sync_of_more_than_a_few_dozen_images_without_beam(shared_base, tmp_path):
    assert _modules_after(["sync", shared_base, f"oci:{tmp_path}/out", "--audit", str(tmp_path / "a.parquet")]) == \
        {"status": 0, "beam": False, "pyarrow": True}


def test_streamed_images_write_children_before_their_index_and_names_last(source, tmp_path, monkeypatch):
    """Per destination: every manifest of an image before its name; a registry's names per image, a layout's at the end."""
    log: list = []
    monkeypatch.setattr(commands, "StoreCache", _recording_cache(log))
    mirror = start_registry(tmp_path / "mirror")
    try:
        assert main(["sync", f"docker://{source.host}/team", f"docker://{mirror.host}/mirror", f"oci:{tmp_path}/out",
                     "--insecure-registry", source.host, "--insecure-registry", mirror.host, "--engine", "direct",
                     "--audit", str(tmp_path / "a.parquet")]) == 0
    finally:
        mirror.stop()
    writes = [(store, name, args, kwargs) for store, name, args, kwargs in log if name in ("put_manifest", "publish")]
    indexes = 0
    for store in {store for store, *_ in writes}:
        calls = [(name, args, kwargs) for s, name, args, kwargs in writes if s == store]
        published = [i for i, (name, _, _) in enumerate(calls) if name == "publish"]
        manifests = {args[0].digest: i for i, (name, args, _) in enumerate(calls) if name == "put_manifest"}
        for position in published:
            for publication in calls[position][1][0]:
                assert manifests[publication.descriptor.digest] < position  # its manifest, then its name
        for index in (args[0] for name, args, _ in calls if name == "put_manifest" and mt.is_index(args[0].media_type)):
            indexes += 1
            children = [d["digest"] for d in json.loads(index.data)["manifests"]]
            assert len(children) == 2 and all(manifests[c] < manifests[index.digest] for c in children)
        if store.startswith("oci:"):  # the layout's index.json is written once, after every manifest
            assert published == [len(calls) - 1]
    registry_publishes = [args[0] for store, name, args, _ in writes if name == "publish" and "mirror" in store]
    assert len(registry_publishes) == 3 and all(len(p) == 1 for p in registry_publishes)  # one per image
    assert indexes == 2  # multi:1.0 at the mirror and in the layout


def test_a_streamed_repository_takes_a_blob_from_the_first_earlier_repository_that_got_it(source, tmp_path):
    """The first repository of a registry to need the blobs refuses them: the next uploads, the last mounts.

    ``mirror/refusing`` cannot open an upload session (its ``_uploads`` folder is a file
    in the registry's storage), though it answers HEADs and tag lists as a new
    repository. Images claim blobs in listing order, so ``mirror/second`` waits on the
    refusing repository's delivery, finds it failed and uploads; ``mirror/third`` then
    mounts every blob from ``mirror/second`` rather than uploading them a second time.
    """
    for mirror in running_registry(tmp_path / "mirror"):
        repositories = mirror.storage / "docker/registry/v2/repositories/mirror/refusing"
        repositories.mkdir(parents=True)
        (repositories / "_uploads").write_text("not a folder")
        dst = f"docker://{mirror.host}/mirror"
        config = tmp_path / "run.yaml"
        config.write_text(json.dumps({
            "audit": str(tmp_path / "audit.parquet"),
            "registries": {"insecure": [source.host, mirror.host], "retries": 0},
            "jobs": [{"copy": f"docker://{source.host}/team/app:1", "to": [f"{dst}/{name}:1"]}
                     for name in ("refusing", "second", "third")],
        }))
        assert main(["run", str(config), "--engine", "direct"]) == 1
        by_repository = {r["destination"].rsplit("/", 1)[1]: r for r in rows(tmp_path / "audit.parquet")}
        assert by_repository["refusing:1"]["status"] == "failed"
        assert (by_repository["second:1"]["blobs_copied"], by_repository["second:1"]["blobs_mounted"]) == (3, 0)
        assert (by_repository["third:1"]["status"], by_repository["third:1"]["blobs_copied"],
                by_repository["third:1"]["blobs_mounted"]) == ("copied", 0, 3)
