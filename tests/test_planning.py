"""``imagepush plan`` (and ``--dry-run``) against real Distribution registries: it predicts the run and writes nothing.

The mirror is half done before each plan: one image is current, one has lost its tag
(its blobs are still there), two were never copied and share blobs with each other
and with the one whose tag is gone (present in its repository, mountable from there). The plan's counts
must be the following run's audit totals, exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
from imagepush.pipeline.cli import main
from imagepush.transforms.engine.jobs import Output, SyncSpec
from imagepush.transforms.engine.planning import (
    CONVERT,
    COPY,
    CURRENT,
    FAILING,
    RunPlan,
    plan_run,
)
from imagepush.transforms.engine.records_io import read_rows
from imagepush.transforms.stores.options import StoreOptions

from tests.conftest import running_registry
from tests.registry_server import Registry
from tests.test_registry_pipeline import IMAGES, insecure, push_samples, rows
from tests.test_verify import tree

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("plan-src")
    for reg in running_registry(root / "registry", schema1=True):
        push_samples(reg, root)
        yield reg


@pytest.fixture
def half_mirror(source, tmp_path) -> Iterator[Registry]:
    """``legacy/s1:1`` copied (current); ``team/multi:1.0`` copied, then its tag deleted; ``team/app`` never copied.

    ``team/app``'s images share a layer with ``team/multi``'s (mounted from there) and
    their config with each other (uploaded once, then skipped).
    """
    for reg in running_registry(tmp_path / "mirror", schema1=True):
        for image in ("legacy/s1:1", "team/multi:1.0"):
            assert main(["copy", f"docker://{source.host}/{image}", f"docker://{reg.host}/mirror/{image}",
                         *insecure(source, reg), "--audit", str(tmp_path / "seed.parquet")]) == 0
        shutil.rmtree(reg.storage / "docker/registry/v2/repositories/mirror/team/multi/_manifests/tags/1.0")
        yield reg


def sync_plan(source: Registry, mirror: Registry, streamed: bool) -> RunPlan:
    """The plan of a sync of every image to the mirror, for the direct executor (``streamed``) or Beam."""
    spec = SyncSpec(f"docker://{source.host}/", (Output(f"docker://{mirror.host}/mirror"),))
    return plan_run([], [spec], options=StoreOptions(insecure_registries=(source.host, mirror.host)),
                    streamed=streamed)


def audit_totals(path: Path) -> tuple[int, int, int, int]:
    """(blobs copied, bytes copied, blobs mounted, blobs skipped) of the images the run wrote."""
    written = [r for r in rows(path) if r["status"] == "copied"]
    return (sum(r["blobs_copied"] for r in written), sum(r["bytes_copied"] for r in written),
            sum(r["blobs_mounted"] for r in written), sum(r["blobs_skipped"] for r in written))


def plan_totals(plan: RunPlan) -> tuple[int, int, int, int]:
    total = plan.total()
    assert total.unsized == 0
    return total.upload, total.bytes, total.mount, total.skip


def statuses(path: Path) -> dict[str, str]:
    return {r["source"]: r["status"] for r in rows(path) if r["role"] != "child"}


@pytest.mark.parametrize(("engine", "blobs"), [
    # Images claim blobs in listing order: team/app:1 (listed before team/multi) needs
    # a layer that team/multi holds, knows no store holding it yet, and uploads it;
    # team/app:v2s2 shares that upload, and team/multi mounts it from team/app without
    # asking whether it holds it already (a mount of a present blob succeeds too).
    ("auto", (3, 1, 7)),
    # Beam groups every image's requests for that layer: team/multi is found holding
    # it, so both team/app images mount it from there.
    ("beam", (2, 2, 7)),
])
def test_a_plan_of_a_half_mirrored_registry_is_what_the_sync_with_its_engine_then_does_and_writes_nothing(
        source, half_mirror, tmp_path, capsys, engine, blobs):
    src, dst = f"docker://{source.host}", f"docker://{half_mirror.host}/mirror"
    flags = insecure(source, half_mirror)
    before = tree(half_mirror.storage)
    plan = sync_plan(source, half_mirror, streamed=engine == "auto")
    actions = {p.source: p.action for p in plan.images}
    assert actions == {f"{src}/legacy/s1:1": CURRENT, f"{src}/team/multi:1.0": COPY,
                       f"{src}/team/app:1": COPY, f"{src}/team/app:v2s2": COPY}
    assert all(p.target_digest == p.source_digest for p in plan.images)
    upload, nbytes, mount, skip = plan_totals(plan)
    assert (upload, mount, skip) == blobs  # (uploaded, mounted, skipped)

    capsys.readouterr()
    assert main(["plan", f"{src}/", dst, *flags, "--engine", engine]) == 0
    printed = capsys.readouterr().out
    assert main(["sync", f"{src}/", dst, *flags, "--dry-run", "--engine", engine]) == 0
    assert capsys.readouterr().out == printed
    assert tree(half_mirror.storage) == before  # the plan and the dry run wrote nothing
    current = next(p for p in plan.images if p.action == CURRENT)
    assert f"current  {src}/legacy/s1:1 -> {dst}/legacy/s1:1  {current.target_digest}" in printed.splitlines()
    total = printed.splitlines()[-1]
    assert total.startswith(f"plan: 4 images at destinations, 3 copy, 1 current; blobs: {upload} upload (")
    assert total.endswith(f"), {mount} mount, {skip} skip; nothing written")

    audit = tmp_path / "sync.parquet"
    assert main(["sync", f"{src}/", dst, *flags, "--audit", str(audit), "--engine", engine]) == 0
    assert statuses(audit) == {s: "current" if a == CURRENT else "copied" for s, a in actions.items()}
    assert audit_totals(audit) == (upload, nbytes, mount, skip)
    written = {r["source"]: r["destination_digest"] for r in rows(audit) if r["role"] != "child"}
    assert written == {p.source: p.target_digest for p in plan.images}


def test_the_records_of_a_plan_copy_exactly_the_planned_images(source, half_mirror, tmp_path, capsys):
    src, dst = f"docker://{source.host}", f"docker://{half_mirror.host}/mirror"
    flags = insecure(source, half_mirror)
    planned = tmp_path / "plan.parquet"
    assert main(["plan", f"{src}/", dst, *flags, "--output", str(planned)]) == 0
    records = [row for _, row in read_rows(str(planned))]
    plan = sync_plan(source, half_mirror, streamed=False)  # records are copied by Beam
    to_do = {(p.source, p.destination, p.source_digest) for p in plan.images if p.action != CURRENT}
    assert {(r["source"], r["destination"], r["source_digest"]) for r in records} == to_do
    assert len(records) == len(IMAGES) - 1

    audit = tmp_path / "records.parquet"
    assert main(["copy", "--records", str(planned), *flags, "--audit", str(audit)]) == 0
    assert statuses(audit) == {source_ref: "copied" for source_ref, _, _ in to_do}
    assert audit_totals(audit) == plan_totals(plan)
    # Everything is now current, and a plan says so.
    again = sync_plan(source, half_mirror, streamed=True)
    assert {p.action for p in again.images} == {CURRENT} and plan_totals(again) == (0, 0, 0, 0)


def test_copy_dry_run_is_the_plan_and_names_the_digest_a_conversion_writes(source, tmp_path, capsys):
    src = f"docker://{source.host}/team/app:v2s2"
    layout = tmp_path / "layout"
    capsys.readouterr()
    assert main(["plan", src, f"oci:{layout}:app", *insecure(source)]) == 0
    printed = capsys.readouterr().out
    assert main(["copy", src, f"oci:{layout}:app", *insecure(source), "--dry-run"]) == 0
    assert capsys.readouterr().out == printed
    assert not layout.exists()
    (line,) = [ln for ln in printed.splitlines() if ln.startswith(CONVERT)]  # an OCI layout cannot hold v2s2
    digest = line.rsplit(" ", 1)[-1]

    audit = tmp_path / "copy.parquet"
    assert main(["copy", src, f"oci:{layout}:app", *insecure(source), "--audit", str(audit)]) == 0
    assert [r["destination_digest"] for r in rows(audit)] == [digest]

    # A source that cannot be read fails in the plan as it would in the run: exit 1, its error named.
    capsys.readouterr()
    assert main(["plan", f"docker://{source.host}/team/absent:1", f"oci:{layout}:x", *insecure(source)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{FAILING}  docker://{source.host}/team/absent:1 -> oci:{layout}:x  error: ")
    assert "1 failing" in out.splitlines()[-1]


def test_run_dry_run_prints_the_plan_of_its_file_and_writes_not_even_an_audit(layout, tmp_path, capsys):
    out, audit = tmp_path / "mirror", tmp_path / "audit.parquet"
    config = tmp_path / "run.yaml"
    config.write_text(f"audit: {audit}\njobs:\n  - sync: oci:{layout}\n    to: [oci:{out}]\n")
    capsys.readouterr()
    assert main(["plan", f"oci:{layout}", f"oci:{out}"]) == 0
    printed = capsys.readouterr().out
    assert main(["run", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out == printed
    assert printed.splitlines()[-1].startswith("plan: 2 images at destinations, 2 copy; blobs: ")
    assert not out.exists() and not audit.exists()
