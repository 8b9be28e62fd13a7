"""The Beam-free engine: each step a plain function over real stores, outcomes as values."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.jobs import COPIED, FAILED, PRESENT, SHARED, Output
from imagepush.transforms.engine.manifests import Finalized, finalize
from imagepush.transforms.engine.plan import blob_requests, plan_targets
from imagepush.transforms.engine.publish import publish
from imagepush.transforms.engine.resolve import resolve_image
from imagepush.transforms.engine.naming import copy_job
from imagepush.transforms.records import COPIED as ROW_COPIED
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.base import StoreError
from imagepush.transforms.stores.refs import parse_reference
from imagepush.transforms.stores.registry import RegistryUnavailable

RUN = "run-1"


class CountingStores(StoreCache):
    """Real stores, with every source blob read counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def source(self, store: str):
        opened = super().source(store)
        if not getattr(opened, "counted", False):
            original = opened.open_blob

            def counted(digest: str):
                self.reads.append(digest)
                return original(digest)

            opened.open_blob = counted  # type: ignore[method-assign]
            opened.counted = True  # type: ignore[attr-defined]
        return opened


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "src"
    write_oci_samples(str(path))
    return path


def planned(layout: Path, stores, *destinations: str, image: str = "demo/app:1.0"):
    job = copy_job(parse_reference(f"oci:{layout}:{image}"), [Output(d) for d in destinations], ())
    return plan_targets(resolve_image(job, stores), stores)


def by_blob(targets) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for tp in targets:
        for request in blob_requests(tp):
            grouped.setdefault(request.descriptor.digest, []).append(request)
    return grouped


def test_each_source_blob_is_read_once_for_every_destination_and_copied_once_each(layout, tmp_path):
    stores = CountingStores()
    targets = planned(layout, stores, f"oci:{tmp_path}/a:app:1", f"oci:{tmp_path}/b:app:1", f"dir:{tmp_path}/c")
    delivery = BlobDelivery(stores)
    results = [r for requests in by_blob(targets).values() for _, r in delivery.deliver(requests)]
    assert sorted(stores.reads) == sorted(by_blob(targets))  # 1 config + 2 layers, each read once
    assert len(results) == 9 and {r.status for r in results} == {COPIED}
    for target in targets:  # every destination got each blob, counted once there
        mine = [r for r in results if r.dest_store == target.target.store]
        assert sorted(r.digest for r in mine) == sorted(by_blob(targets))


def test_a_blob_already_at_the_destination_is_present_and_not_read(layout, tmp_path):
    dest = f"oci:{tmp_path}/again:app:1"
    stores = StoreCache()
    first = planned(layout, stores, dest)
    delivery = BlobDelivery(stores)
    for requests in by_blob(first).values():
        delivery.deliver(requests)
    counting = CountingStores()
    results = [r for requests in by_blob(planned(layout, counting, dest)).values()
               for _, r in BlobDelivery(counting).deliver(requests)]
    assert {r.status for r in results} == {PRESENT} and counting.reads == []


def test_two_targets_sharing_a_blob_at_one_store_count_one_copy_and_one_share(layout, tmp_path):
    stores = StoreCache()
    targets = planned(layout, stores, f"oci:{tmp_path}/one:app:1", f"oci:{tmp_path}/one:app:2")
    results = [r for requests in by_blob(targets).values() for _, r in BlobDelivery(stores).deliver(requests)]
    assert sorted(r.status for r in results) == [COPIED] * 3 + [SHARED] * 3


def test_a_blob_the_source_lacks_fails_as_missing_at_every_destination(layout, tmp_path):
    stores = StoreCache()
    targets = planned(layout, stores, f"oci:{tmp_path}/x:app:1", f"dir:{tmp_path}/y")
    requests = next(iter(by_blob(targets).values()))
    source_blob = Path(layout) / "blobs" / "sha256" / requests[0].descriptor.digest.split(":")[1]
    saved = source_blob.read_bytes()
    source_blob.unlink()
    try:
        results = [r for _, r in BlobDelivery(StoreCache()).deliver(requests)]
    finally:
        source_blob.write_bytes(saved)
    assert [(r.status, r.error_kind) for r in results] == [(FAILED, "missing")] * 2


def test_a_target_whose_blob_failed_is_finalized_as_failed_rows_with_the_blob_error(layout, tmp_path):
    stores = StoreCache()
    (tp,) = planned(layout, stores, f"oci:{tmp_path}/f:app:1")
    results = []
    for requests in by_blob([tp]).values():
        results += [r for _, r in BlobDelivery(stores).deliver(requests)]
    broken = [results[0].__class__(**{**results[0].__dict__, "status": FAILED, "error": "disk full",
                                      "error_kind": "refused"})] + results[1:]
    final = finalize(tp, broken, stores.destination(tp.target.store), RUN)
    assert final.publication is None
    assert [(r.status, r.error, r.error_kind) for r in final.rows] == [
        ("failed", f"blob {broken[0].digest}: disk full", "refused")]


def test_an_image_that_is_not_there_fails_every_target_as_not_found(layout, tmp_path):
    stores = StoreCache()
    targets = planned(layout, stores, f"oci:{tmp_path}/n:app:1", f"dir:{tmp_path}/m", image="demo/absent:9")
    rows = [row for tp in targets for row in finalize(tp, [], None, RUN).rows]
    assert [(r.status, r.error_kind) for r in rows] == [("failed", "not_found")] * 2
    assert all("demo/absent:9" in r.error for r in rows)


class RefusingSecond:
    """A destination that writes every name but the second, as a registry refusing one tag does."""

    def publish(self, publications):
        return {1: StoreError("registry refused a schema1 manifest")}


def test_publish_fails_only_the_names_the_store_refused(layout, tmp_path):
    stores = StoreCache()
    finals: list[Finalized] = []
    for tag in ("a", "b", "c"):
        (tp,) = planned(layout, stores, f"oci:{tmp_path}/p:app:{tag}")
        results = [r for requests in by_blob([tp]).values() for _, r in BlobDelivery(stores).deliver(requests)]
        finals.append(finalize(tp, results, stores.destination(tp.target.store), RUN))
    rows = publish(f"oci:{tmp_path}/p", finals, RefusingSecond)  # type: ignore[arg-type]
    assert [(r.destination.rsplit(":", 1)[1], r.status, r.error_kind) for r in rows] == [
        ("a", ROW_COPIED, None), ("b", "failed", "refused"), ("c", ROW_COPIED, None)]
    assert rows[1].error == "registry refused a schema1 manifest"


def test_publish_to_a_store_that_cannot_be_reached_fails_every_row(layout, tmp_path):
    stores = StoreCache()
    (tp,) = planned(layout, stores, f"oci:{tmp_path}/q:app:1")
    results = [r for requests in by_blob([tp]).values() for _, r in BlobDelivery(stores).deliver(requests)]
    final = finalize(tp, results, stores.destination(tp.target.store), RUN)
    def unreachable():
        raise RegistryUnavailable("registry.example: cannot reach registry.example (ConnectionError) after 5 attempts")

    (row,) = publish(f"oci:{tmp_path}/q", [final], unreachable)
    assert (row.status, row.error_kind) == ("failed", "unreachable")
    assert row.error == (f"publishing to oci:{tmp_path}/q failed: "
                         "registry.example: cannot reach registry.example (ConnectionError) after 5 attempts")


def test_an_image_is_current_only_where_its_name_points_at_the_digest_a_verbatim_copy_writes(layout, tmp_path):
    from imagepush.transforms.engine.current import check_current

    stores = StoreCache()
    (tp,) = planned(layout, stores, f"oci:{tmp_path}/cur:app:1")
    results = [r for requests in by_blob([tp]).values() for _, r in BlobDelivery(stores).deliver(requests)]
    final = finalize(tp, results, stores.destination(tp.target.store), RUN)
    publish(tp.target.store, [final], lambda: stores.destination(tp.target.store))

    fresh = StoreCache()
    outputs = [Output(f"oci:{tmp_path}/cur:app:1"), Output(f"oci:{tmp_path}/cur:app:2"),
               Output(f"oci:{tmp_path}/cur:app:1", format="v2s2")]
    check = check_current(copy_job(parse_reference(f"oci:{layout}:demo/app:1.0"), outputs, ()), fresh)
    assert [t.target.destination for t in check.current] == [f"oci:{tmp_path}/cur:app:1"]
    assert [(t.destination, t.format) for t in check.left] == [
        (f"oci:{tmp_path}/cur:app:2", "preserve"), (f"oci:{tmp_path}/cur:app:1", "v2s2")]
