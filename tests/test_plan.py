"""Which format each manifest is written in, which blobs it needs, and where images go."""

from __future__ import annotations

import json

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, Platform
from imagepush.transforms.engine.naming import copy_job, sync_target
from imagepush.transforms.engine.jobs import ManifestNode, Output, blob_needs, choose_format, filter_platforms
from imagepush.transforms.formats.manifest import parse_manifest
from imagepush.transforms.stores.base import ImageEntry, ManifestBlob
from imagepush.transforms.stores.refs import parse_reference


def accepts_oci_and_docker(media_type: str) -> bool:
    return media_type not in mt.SCHEMA1_TYPES


def test_preserve_keeps_any_type_the_destination_accepts():
    assert choose_format(mt.DOCKER_SCHEMA2, "preserve", accepts_oci_and_docker, "oci") is None
    assert choose_format(mt.OCI_INDEX, "preserve", accepts_oci_and_docker, "oci") is None


def test_preserve_converts_what_the_destination_cannot_hold_to_its_preferred_format():
    assert choose_format(mt.DOCKER_SCHEMA1_SIGNED, "preserve", accepts_oci_and_docker, "oci") == "oci"


def test_explicit_format_converts_only_other_families():
    assert choose_format(mt.OCI_MANIFEST, "oci", accepts_oci_and_docker, "oci") is None
    assert choose_format(mt.DOCKER_SCHEMA2, "oci", accepts_oci_and_docker, "oci") == "oci"
    assert choose_format(mt.DOCKER_LIST, "v2s2", accepts_oci_and_docker, "oci") is None
    assert choose_format(mt.OCI_INDEX, "v2s2", accepts_oci_and_docker, "oci") == "v2s2"
    assert choose_format(mt.DOCKER_SCHEMA1, "v2s2", accepts_oci_and_docker, "oci") == "v2s2"


def _entry(arch: str, variant: str | None = None) -> Descriptor:
    return Descriptor(mt.OCI_MANIFEST, "sha256:" + "0" * 64, 1, platform=Platform(arch, "linux", variant))


def test_platform_filter_without_variant_takes_every_variant():
    entries = [_entry("amd64"), _entry("arm", "v7"), _entry("arm", "v6"), _entry("arm64", "v8")]
    assert filter_platforms(entries, ("linux/arm",)) == entries[1:3]
    assert filter_platforms(entries, ("linux/arm/v7", "linux/amd64")) == entries[:2]
    assert filter_platforms(entries, ()) == entries


def _node(path) -> ManifestNode:
    data = path.read_bytes()
    parsed = parse_manifest(data, None)
    return ManifestNode(ManifestBlob(data, parsed.media_type, "sha256:" + "1" * 64), parsed)


def test_schema2_to_oci_regenerates_the_config_so_only_layers_are_copied(public_fixtures):
    node = _node(public_fixtures / "docker-schema2/ci__v2s2.manifest.json")
    kept = [n.descriptor.digest for n in blob_needs(node, None)]
    converted = [n.descriptor.digest for n in blob_needs(node, "oci")]
    assert kept[0] == node.parsed.config.digest
    assert converted == kept[1:]
    assert len(converted) == len(node.parsed.layers)


def test_schema1_conversion_needs_diff_ids_of_non_throwaway_layers_only(public_fixtures):
    # The fixture's signature covers an older payload; its unsigned body is a real Docker Hub schema1.
    doc = json.loads((public_fixtures / "conversion/ci__schema2-to-schema1-by-docker.json").read_bytes())
    del doc["signatures"]
    data = json.dumps(doc).encode()
    parsed = parse_manifest(data, mt.DOCKER_SCHEMA1)
    node = ManifestNode(ManifestBlob(data, mt.DOCKER_SCHEMA1, "sha256:" + "1" * 64), parsed)
    needs = blob_needs(node, "oci")
    assert all(n.need_diff_id for n in needs)
    empty = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    assert empty not in [n.descriptor.digest for n in needs]
    kept = blob_needs(node, None)
    assert empty in [n.descriptor.digest for n in kept]
    assert len({n.descriptor.digest for n in kept}) == len(kept)


def test_sync_appends_the_repository_path_to_the_destination_prefix():
    entry = ImageEntry(ref="team/app:1", repository="team/app", tag="1", digest="sha256:" + "2" * 64,
                       media_type=mt.OCI_MANIFEST)
    t = sync_target(Output("docker://b:5000/mirror"), entry)
    assert (t.destination, t.store, t.name) == ("docker://b:5000/mirror/team/app:1", "docker://b:5000/mirror/team/app", "1")
    t = sync_target(Output("oci:/data/out"), entry)
    assert (t.destination, t.store, t.name) == ("oci:/data/out:team/app:1", "oci:/data/out", "team/app:1")
    t = sync_target(Output("docker-archive:/x.tar"), entry)
    assert t.name == "team/app:1"


def test_copy_job_selects_registry_images_by_tag_or_digest():
    job = copy_job(parse_reference("docker://a:5000/team/app"), [], ())
    assert (job.source_store, job.image, job.digest) == ("docker://a:5000/team/app", "latest", None)
    digest = "sha256:" + "3" * 64
    job = copy_job(parse_reference(f"docker://a:5000/team/app@{digest}"), [], ())
    assert (job.image, job.digest) == (None, digest)
    job = copy_job(parse_reference("oci:/l:apps/web:1.0"), [Output("dir:/o", "oci")], ())
    assert (job.source_store, job.image) == ("oci:/l", "apps/web:1.0")
    assert job.targets[0].format == "oci" and job.targets[0].name is None


def test_target_whose_name_already_points_at_the_digest_is_up_to_date(tmp_path):
    from imagepush.pipeline.samples import write_oci_samples
    from imagepush.transforms.records import now
    from imagepush.transforms.engine.jobs import ImagePlan
    from imagepush.transforms.engine.plan import plan_target
    from imagepush.transforms.stores.layout.oci import OCILayoutDestination, OCILayoutSource
    from imagepush.transforms.engine.resolve import resolve_tree

    write_oci_samples(str(tmp_path / "s"))
    source = OCILayoutSource(str(tmp_path / "s"))
    job = copy_job(parse_reference(f"oci:{tmp_path}/s:demo/multi:1.0"),
                   [Output(f"oci:{tmp_path}/s:demo/multi:1.0"), Output(f"oci:{tmp_path}/s:other"),
                    Output(f"oci:{tmp_path}/s:demo/multi:1.0", "v2s2")], ())
    plan = ImagePlan("k", job, now(), root=resolve_tree(source, job, configs=False))
    same, other, converted = (plan_target(plan, i, OCILayoutDestination(str(tmp_path / "s")), source)
                              for i in range(3))
    assert (same.up_to_date, same.blobs, same.error) == (True, [], None)
    assert not other.up_to_date and len(other.blobs) == 5
    assert converted.error == (f"oci:{tmp_path}/s:demo/multi:1.0 cannot store "
                               "application/vnd.docker.distribution.manifest.v2+json manifests")
