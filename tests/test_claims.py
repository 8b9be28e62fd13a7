"""The claim rule of streamed runs (engine/claims.py): which delivery serves each blob, image after image.

The direct executor and ``plan`` both follow it, so these are the decisions a default
local run makes, stated without a registry.
"""

from __future__ import annotations

from imagepush.transforms.engine.claims import PEERS, ClaimLedger
from imagepush.transforms.engine.jobs import BlobRequest
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.refs import blob_domain

SOURCE = "docker://src.example/team/app"
BASE = Descriptor(mt.OCI_LAYER, "sha256:" + "b" * 64, 1000)
CONFIG = Descriptor(mt.OCI_CONFIG, "sha256:" + "c" * 64, 10)


def needs(image: str, *stores: str, blobs: tuple[Descriptor, ...] = (BASE,)) -> list[BlobRequest]:
    """One image's requests: every blob at every store (its target key names the image and store)."""
    return [BlobRequest(SOURCE, store, f"{image}@{store}", blob, need_diff_id=False) for store in stores
            for blob in blobs]


def ledger() -> ClaimLedger:
    return ClaimLedger(blob_domain)


def test_the_first_image_to_need_a_blob_delivers_it_to_all_its_stores_at_once():
    claims = ledger().claim(needs("a", "docker://dst/x", "docker://dst/y", "oci:/layout"))
    assert [sorted(c.fresh) for c in claims] == [["docker://dst/x", "docker://dst/y", "oci:/layout"]]
    assert claims[0].joined == {} and claims[0].after == []


def test_a_later_image_at_the_same_store_joins_the_delivery_already_claimed():
    run = ledger()
    run.claim(needs("a", "docker://dst/x"))
    later = run.claim(needs("b", "docker://dst/x"))
    assert [(c.fresh, list(c.joined), c.after) for c in later] == [({}, ["docker://dst/x"], [])]


def test_a_later_repository_of_the_registry_takes_the_blob_from_the_one_that_claimed_it_first():
    """Listed first, ``x`` is the peer; ``y`` and then ``z`` wait on the repositories before them."""
    run = ledger()
    run.claim(needs("a", "docker://dst/x"))
    second = run.claim(needs("b", "docker://dst/y"))
    third = run.claim(needs("c", "docker://dst/z", "oci:/layout"))
    assert [(store, peers) for store, peers, _ in second[0].after] == [("docker://dst/y", ("docker://dst/x",))]
    assert [(store, peers) for store, peers, _ in third[0].after] == [
        ("docker://dst/z", ("docker://dst/x", "docker://dst/y"))]
    assert list(third[0].fresh) == ["oci:/layout"]  # another domain: a delivery of its own


def test_a_blob_that_a_later_listed_repository_would_lend_is_still_claimed_by_the_earlier_image():
    """The rule sees only what was claimed before: the later image's repository is not a peer of the earlier."""
    run = ledger()
    first = run.claim(needs("app", "docker://dst/team/app"))
    later = run.claim(needs("multi", "docker://dst/team/multi"))
    assert list(first[0].fresh) == ["docker://dst/team/app"] and first[0].after == []
    assert [peers for _, peers, _ in later[0].after] == [("docker://dst/team/app",)]


def test_the_largest_blobs_are_claimed_first_and_peers_stop_at_a_few():
    run = ledger()
    stores = [f"docker://dst/r{i:02}" for i in range(PEERS + 3)]
    for i, store in enumerate(stores):
        claims = run.claim(needs(f"i{i}", store, blobs=(CONFIG, BASE)))
        assert [c.key.split("|")[1] for c in claims] == [BASE.digest, CONFIG.digest]
    *_, (store, peers, _) = claims[0].after
    assert store == stores[-1] and peers == tuple(stores[:PEERS])
