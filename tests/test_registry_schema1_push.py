"""Schema1 from a registry's storage tree into another registry: signed on the way, digest unchanged.

Distribution stores schema1 unsigned and refuses an unsigned schema1 PUT, so the tree a
real registry wrote is the source here, and a second real registry the judge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.schema1 import parse_schema1, payload_of
from imagepush.transforms.formats.schema1_sign import sign_schema1
from imagepush.transforms.stores.registry.manifests import Schema1Signer
from imagepush.transforms.stores.registry_storage import RegistryStorageSource
from tests.conftest import fixture, require_tool, run, sha256
from tests.registry_server import Registry, start_registry

pytestmark = pytest.mark.integration


def skopeo(*args: str) -> bytes:
    return run([require_tool("skopeo"), "--insecure-policy", *args], timeout=120).stdout


@pytest.fixture(scope="module")
def tree_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A schema1-enabled Distribution holding ``legacy/app:v1`` as schema1 (pushed by skopeo) and an OCI image."""
    require_tool("docker-registry")
    root = tmp_path_factory.mktemp("schema1-tree")
    write_oci_samples(str(root / "layout"))
    reg = start_registry(root / "registry", schema1=True)
    try:
        skopeo("copy", "-q", "--format", "v2s1", "--dest-tls-verify=false",
               f"oci:{root}/layout:demo/app:1.0", f"docker://{reg.host}/legacy/app:v1")
        skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{root}/layout:demo/app:1.0",
               f"docker://{reg.host}/legacy/app:oci")
        yield reg
    finally:
        reg.stop()


def manifest_file(reg: Registry, digest: str) -> Path:
    hexa = digest.split(":", 1)[1]
    return reg.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def rows(path: Path) -> dict[str, dict]:
    return {r["source"].rsplit(":", 1)[1]: r for r in pq.read_table(path).to_pylist()}


def test_a_storage_tree_with_schema1_syncs_into_a_schema1_registry_with_the_same_digest(tree_registry, tmp_path,
                                                                                        monkeypatch):
    stored = RegistryStorageSource(str(tree_registry.storage)).get_root("legacy/app:v1")
    assert stored.media_type == mt.DOCKER_SCHEMA1  # Distribution kept the payload only
    dest = start_registry(tmp_path / "dest", schema1=True)
    try:
        audit = tmp_path / "a.parquet"
        assert main(["sync", f"registry-storage:{tree_registry.storage}", f"docker://{dest.host}/moved",
                     "--insecure-registry", dest.host, "--audit", str(audit)]) == 0
        outcome = rows(audit)
        assert sorted(outcome) == ["oci", "v1"]
        assert all(r["status"] == "copied" and r["destination_digest"] == r["source_digest"] for r in outcome.values())
        assert outcome["v1"]["destination_digest"] == stored.digest == sha256(stored.data)

        # The destination names it by that digest (containers/image digests the payload) and
        # stored exactly the payload the source tree holds.
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest.host}/moved/legacy/app:v1"))
        assert inspected["Digest"] == stored.digest
        served = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest.host}/moved/legacy/app:v1")
        assert parse_schema1(served).signed and payload_of(served) == stored.data
        assert manifest_file(dest, stored.digest).read_bytes() == manifest_file(tree_registry, stored.digest).read_bytes()
        skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{dest.host}/moved/legacy/app:v1",
               f"dir:{tmp_path}/pulled")
        assert payload_of((tmp_path / "pulled" / "manifest.json").read_bytes()) == stored.data

        # Current now: the rerun is settled by the launcher and writes nothing.
        monkeypatch.setattr(commands, "run", lambda spec: pytest.fail(f"pipeline started for {spec.jobs}"))
        again = tmp_path / "again.parquet"
        assert main(["sync", f"registry-storage:{tree_registry.storage}", f"docker://{dest.host}/moved",
                     "--insecure-registry", dest.host, "--audit", str(again)]) == 0
        assert {tag: r["destination_digest"] for tag, r in rows(again).items()} == \
            {tag: r["destination_digest"] for tag, r in outcome.items()}
        assert sum(r["bytes_copied"] for r in rows(again).values()) == 0
    finally:
        dest.stop()


def test_a_registry_without_schema1_still_refuses_it_with_the_format_hint(tree_registry, tmp_path):
    plain = start_registry(tmp_path / "plain")  # Distribution's default: schema1 disabled
    try:
        audit = tmp_path / "a.parquet"
        assert main(["sync", f"registry-storage:{tree_registry.storage}", f"docker://{plain.host}/moved",
                     "--insecure-registry", plain.host, "--audit", str(audit)]) == 1
        outcome = rows(audit)
        assert (outcome["oci"]["status"], outcome["v1"]["status"]) == ("copied", "failed")
        assert f"registry refused a {mt.DOCKER_SCHEMA1} manifest (" in outcome["v1"]["error"]
        assert "copy with --format v2s2 or oci" in outcome["v1"]["error"]
    finally:
        plain.stop()


def test_the_signer_signs_only_unsigned_schema1_and_with_one_key_per_store():
    signer = Schema1Signer()
    signed = fixture("docker-schema1/ci__v2s1.manifest.json")
    assert signer.for_put(signed, mt.DOCKER_SCHEMA1_SIGNED, "here") == (signed, mt.DOCKER_SCHEMA1_SIGNED)
    v2s2 = fixture("docker-schema2/ci__v2s2.manifest.json")
    assert signer.for_put(v2s2, mt.DOCKER_SCHEMA2, "here") == (v2s2, mt.DOCKER_SCHEMA2)

    unsigned = fixture("docker-schema1/ci__v2s1-unsigned.manifest.json")
    first, kind = signer.for_put(unsigned, mt.DOCKER_SCHEMA1, "here")
    second, _ = signer.for_put(unsigned, mt.DOCKER_SCHEMA1, "here")
    other, _ = Schema1Signer().for_put(unsigned, mt.DOCKER_SCHEMA1, "here")
    assert kind == mt.DOCKER_SCHEMA1_SIGNED
    assert payload_of(first) == payload_of(second) == payload_of(other) == unsigned

    def kid(data: bytes) -> str:
        return json.loads(data)["signatures"][0]["header"]["jwk"]["kid"]

    assert kid(first) == kid(second) != kid(other)
    assert kid(sign_schema1(unsigned, ec.generate_private_key(ec.SECP256R1()))) != kid(first)
