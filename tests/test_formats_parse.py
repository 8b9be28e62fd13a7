"""Specification of manifest type detection, strict parsing and digests.

Every expectation below is taken from the public fixtures (real files copied from
containers/image, skopeo and go-containerregistry) and tests/fixtures/README.md.
"""

from __future__ import annotations

import re

import orjson
import pytest

from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import FormatError, Platform
from imagepush.transforms.formats.manifest import (
    UNKNOWN_SIZE,
    ImageIndex,
    ImageManifest,
    blobs_of,
    detect_media_type,
    manifest_digest,
    parse_manifest,
)
from imagepush.transforms.formats.schema1 import Schema1Manifest


from tests.conftest import FIXTURES, fixture, sha256  # noqa: E402



# --------------------------------------------------------------------------- jsonio


def test_invalid_json_is_a_one_line_format_error():
    with pytest.raises(FormatError) as info:
        jsonio.loads(b'{"schemaVersion": 2,\n"config": ')
    assert str(info.value).startswith("invalid JSON: ")
    assert "\n" not in str(info.value)


def test_invalid_utf8_is_a_format_error():
    with pytest.raises(FormatError):
        jsonio.loads(b'{"a": "\xff"}')


def test_generated_json_is_compact_and_keeps_insertion_order():
    assert jsonio.dumps({"z": 1, "a": [1, {"y": None, "b": True}]}) == b'{"z":1,"a":[1,{"y":null,"b":true}]}'


def test_generated_json_escapes_html_characters_like_go():
    # Go's encoding/json (containers/image) writes these escapes; matching them keeps digests equal.
    assert jsonio.dumps({"cmd": "a && b <c> \u2028"}) == b'{"cmd":"a \\u0026\\u0026 b \\u003cc\\u003e \\u2028"}'
    assert jsonio.loads(jsonio.dumps({"cmd": "a && b <c>"})) == {"cmd": "a && b <c>"}


def test_load_object_rejects_non_objects():
    with pytest.raises(FormatError, match="is not a JSON object"):
        jsonio.load_object(b"[1, 2]", "manifest")


# --------------------------------------------------------------------------- detection


def test_declared_known_manifest_type_is_authoritative():
    data = fixture("oci-manifest/ci__ociv1nomime.manifest.json")
    assert detect_media_type(data, mt.DOCKER_SCHEMA2) == mt.DOCKER_SCHEMA2


@pytest.mark.parametrize("declared", [None, "", "application/json", "text/plain", "application/octet-stream"])
def test_generic_content_types_are_guessed_from_content(declared):
    assert detect_media_type(fixture("docker-schema2/ci__v2s2.manifest.json"), declared) == mt.DOCKER_SCHEMA2
    assert detect_media_type(fixture("docker-schema1/ci__v2s1.manifest.json"), declared) == mt.DOCKER_SCHEMA1_SIGNED


def test_content_type_parameters_and_case_are_ignored():
    data = fixture("oci-index/ci__oci1index.json")
    assert detect_media_type(data, "Application/JSON; charset=utf-8") == mt.OCI_INDEX
    assert detect_media_type(data, "application/vnd.oci.image.index.v1+json; charset=utf-8") == mt.OCI_INDEX


def test_schema1_is_signed_only_when_signatures_are_present():
    assert detect_media_type(fixture("docker-schema1/ci__v2s1-unsigned.manifest.json"), None) == mt.DOCKER_SCHEMA1
    assert detect_media_type(fixture("docker-schema1/ci__v2s1.manifest.json"), None) == mt.DOCKER_SCHEMA1_SIGNED


def test_oci_manifest_without_media_type_is_guessed_as_oci_manifest():
    assert detect_media_type(fixture("oci-manifest/ci__ociv1nomime.manifest.json"), None) == mt.OCI_MANIFEST
    assert detect_media_type(fixture("oci-artifact/ci__ociv1nomime.artifact.json"), None) == mt.OCI_MANIFEST


def test_index_without_media_type_is_guessed_as_oci_index():
    assert detect_media_type(fixture("oci-index/ci__ociv1nomime.image.index.json"), None) == mt.OCI_INDEX
    assert detect_media_type(fixture("oci-layout-index/ci__manifest.index.json"), "") == mt.OCI_INDEX


def test_docker_schema2_that_lost_its_media_type_is_read_as_oci():
    doc = orjson.loads(fixture("docker-schema2/ci__v2s2.manifest.json"))
    del doc["mediaType"]
    assert detect_media_type(orjson.dumps(doc), None) == mt.OCI_MANIFEST


def test_unknown_schema_version_cannot_be_detected():
    with pytest.raises(FormatError, match="schemaVersion 99999"):
        detect_media_type(fixture("invalid/ci__unknown-version.manifest.json"), None)


# --------------------------------------------------------------------------- every fixture

# path -> (media type, manifest digest: for schema1 the payload digest in tests/fixtures/README.md,
# otherwise the file's sha256 as in tests/fixtures/origins.json)
DIGESTS = {
    "docker-schema1/ci__schema1-for-oci-config.json": (
        mt.DOCKER_SCHEMA1_SIGNED, "sha256:163ac025575b775d1c0f9bf0bdd0f086883171eb475b5068e7defa4ca9e76516"),
    "docker-schema1/ci__v2s1-unsigned.manifest.json": (
        mt.DOCKER_SCHEMA1, "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"),
    "docker-schema1/ci__v2s1.everything.json": (
        mt.DOCKER_SCHEMA1, "sha256:c7df6b660bbfca36b1982b6bd656e0cbaf7ec3da06f6160204cd7b4aac6381c7"),
    "docker-schema1/ci__v2s1.manifest.json": (
        mt.DOCKER_SCHEMA1_SIGNED, "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"),
    "docker-schema2/ci__v2s2.everything.json": (
        mt.DOCKER_SCHEMA2, "sha256:98647f54ad451f9ec107d39fb09339b25c7d565d7b76d0b524609d58b9295754"),
    "docker-schema2/ci__v2s2.manifest.json": (
        mt.DOCKER_SCHEMA2, "sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"),
    "docker-schema2/ci__v2s2.nondistributable.manifest.json": (
        mt.DOCKER_SCHEMA2, "sha256:daa7b79f2a653c7c9f8d517264dcf136112c2597699b38ae85a9143448fd75a5"),
    "docker-schema2/ci__v2s2.uncompressed.manifest.json": (
        mt.DOCKER_SCHEMA2, "sha256:a0f0dc47597e8c75a04162952c62187eada14be3f4ea3c08f85594d7cd3bcfea"),
    "docker-schema2/skopeo__uncompressed-image-s2.manifest.json": (
        mt.DOCKER_SCHEMA2, "sha256:0d02cf7467013682782839465b03442dfe71c7e2ac994137507bbfb9000f5960"),
    "docker-manifest-list/ci__schema2list.json": (
        mt.DOCKER_LIST, "sha256:6e40af1c2ca008eecf9c4bb03674a3e73af1204e745d06900b7ca75deb94b6af"),
    "docker-manifest-list/ci__v2list.manifest.json": (
        mt.DOCKER_LIST, "sha256:ae55d2bdfcc9f24b2ac571f0081a64d6e6089b2c5e503ff3b718a646c26cbd3d"),
    "oci-manifest/ci__ociv1.encrypted.manifest.json": (
        mt.OCI_MANIFEST, "sha256:7e479471e858abc60460326fbd4c65a3c67e3a81ce04696c20280d22daa4ada9"),
    "oci-manifest/ci__ociv1.manifest.json": (
        mt.OCI_MANIFEST, "sha256:bb76e395cb9021fd062b352172ac87ca159b3e84f5a5758a69db824da876cd4f"),
    "oci-manifest/ci__ociv1.nondistributable.manifest.json": (
        mt.OCI_MANIFEST, "sha256:e90c291b43add9dc30e7e0ce048181aa7a6d257377d142ac735b0720d69301db"),
    "oci-manifest/ci__ociv1.uncompressed.manifest.json": (
        mt.OCI_MANIFEST, "sha256:6190db23be224c28953e8007053ff6cf3b7de83ebd1162bcfc426aff52db2ff8"),
    "oci-manifest/ci__ociv1.zstd.manifest.json": (
        mt.OCI_MANIFEST, "sha256:474b3a7602a3e91e23bad06a57a6533349076f3e568923962a5d823754c284d7"),
    "oci-manifest/ci__ociv1nomime.manifest.json": (
        mt.OCI_MANIFEST, "sha256:f94f91aaa4bfad8e67ef7f5cde3a0e908bd22e758868ca47227e60a8ea623d1c"),
    "oci-index/ci__oci1index.json": (
        mt.OCI_INDEX, "sha256:f2f99b581189a99577e0e8344704b7d00736e554ef748d7e3e3cdc7113c0bf40"),
    "oci-index/ci__ocilist-variants.json": (
        mt.OCI_INDEX, "sha256:65a5c903f49f59eadcdac913a0bf8ad01ecdc341f79ecbe826efeb7dfe244f4a"),
    "oci-index/ci__ociv1.image.index.json": (
        mt.OCI_INDEX, "sha256:d59976e8b293d743edfd0d9f985207acd97bcca66cb27506bc6e974af13f729e"),
    "oci-index/ci__ociv1nomime.image.index.json": (
        mt.OCI_INDEX, "sha256:e23eee643694928ed2881e2bce25afd051cb2c8d2f0cbd46fb9f5e8e84ba23eb"),
    "oci-artifact/ci__ociv1.artifact.json": (
        mt.OCI_MANIFEST, "sha256:ec7d9117f157e92a0fa93de1c9ad07fd8e193dca520684b0a5d67f4f73cd03a0"),
    "oci-artifact/ci__ociv1.everything.json": (
        mt.OCI_MANIFEST, "sha256:06abf9ac6245c106c285facaa0287ea2d37d537b181fc44ec82cd11f92f8fc52"),
    "oci-artifact/ci__ociv1nomime.artifact.json": (
        mt.OCI_MANIFEST, "sha256:d33c74c6e3aacaff74a6a22f22b2e5e6a04b120546a910d320fc6ba033136db8"),
    "oci-layout-index/ci__manifest.index.json": (
        mt.OCI_INDEX, "sha256:675dd2c90c250b6a99bcb78e7d8e3a5bb0bd02b28c8ee7ac4e7904f5a2c6cd90"),
    "oci-layout-index/ci__name_lookups.index.json": (
        mt.OCI_INDEX, "sha256:918a3389e274becd53dfd116f1413037aa08e0fd504c271296e7cda6528aabd0"),
    "oci-layout-index/ci__two_images_manifest.index.json": (
        mt.OCI_INDEX, "sha256:24cfce871e701797d37f6aca09f51c6ad915d30db311631acb5cafd095696707"),
    "invalid/ci__ociv1.invalid.mediatype.manifest.json": (
        mt.OCI_MANIFEST, "sha256:37cb608ff77bcaf5de6a6f33f5055ce5357ce5b807af584886773f81e79f2821"),
}

PARSE_DIRS = (
    "docker-schema1", "docker-schema2", "docker-manifest-list", "oci-manifest", "oci-index", "oci-artifact", "invalid",
)
NEGATIVE = {
    "docker-schema1/ci__v2s1-invalid-signatures.manifest.json": "signatures is not an array",
    "invalid/ci__schema2-invalid-media-type.json":
        "unsupported media type 'application/vnd.docker.image.rootfs.diff.tar.zstd'",
    "invalid/ci__unknown-version.manifest.json": "schemaVersion 99999",
}


def test_every_fixture_in_the_parsed_directories_is_covered():
    on_disk = {f"{d}/{p.name}" for d in PARSE_DIRS for p in (FIXTURES / d).iterdir()}
    assert on_disk == {name for name in DIGESTS if name.split("/")[0] in PARSE_DIRS} | set(NEGATIVE)


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_fixture_parses_as_its_type_with_the_documented_digest(name):
    media_type, expected_digest = DIGESTS[name]
    data = fixture(name)
    parsed = parse_manifest(data, None)
    assert parsed.media_type == media_type
    assert manifest_digest(data, None) == expected_digest
    assert manifest_digest(data, media_type) == expected_digest


@pytest.mark.parametrize("name", sorted(n for n, (t, _) in DIGESTS.items() if t not in mt.SCHEMA1_TYPES))
def test_non_schema1_digest_is_sha256_of_the_exact_bytes(name):
    data = fixture(name)
    assert manifest_digest(data, DIGESTS[name][0]) == sha256(data)


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_fixture_parses_the_same_when_its_type_is_declared(name):
    media_type, _ = DIGESTS[name]
    data = fixture(name)
    assert parse_manifest(data, media_type) == parse_manifest(data, None)


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_negative_fixture_is_rejected(name):
    with pytest.raises(FormatError, match=re.escape(NEGATIVE[name])):
        parse_manifest(fixture(name), None)


# --------------------------------------------------------------------------- schema2 / OCI details


def test_docker_schema2_manifest_fields():
    m = parse_manifest(fixture("docker-schema2/ci__v2s2.manifest.json"), None)
    assert isinstance(m, ImageManifest)
    assert m.is_docker and m.is_image
    assert m.config.media_type == mt.DOCKER_CONFIG
    assert m.config.digest == "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
    assert m.config.size == 7023
    assert [(layer.media_type, layer.digest, layer.size) for layer in m.layers] == [
        (mt.DOCKER_LAYER_GZIP, "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f", 32654),
        (mt.DOCKER_LAYER_GZIP, "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b", 16724),
        (mt.DOCKER_LAYER_GZIP, "sha256:ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736", 73109),
    ]
    assert m.annotations == () and m.subject is None and m.artifact_type is None


def test_docker_schema2_keeps_urls_of_config_and_layers():
    m = parse_manifest(fixture("docker-schema2/ci__v2s2.everything.json"), None)
    assert m.config.urls == ("https://some.example/config",)
    assert m.layers[0].urls == ("https://some.example/layer",)


def test_early_schema2_with_octet_stream_config_is_accepted():
    m = parse_manifest(fixture("docker-schema2/skopeo__uncompressed-image-s2.manifest.json"), None)
    assert m.config.media_type == "application/octet-stream"
    assert m.config.size == 1272
    assert [(layer.media_type, layer.size) for layer in m.layers] == [(mt.DOCKER_LAYER_GZIP, 2048)]


def test_docker_foreign_and_uncompressed_layer_types_are_accepted():
    foreign = parse_manifest(fixture("docker-schema2/ci__v2s2.nondistributable.manifest.json"), None)
    assert [layer.media_type for layer in foreign.layers] == [mt.DOCKER_FOREIGN_LAYER]
    plain = parse_manifest(fixture("docker-schema2/ci__v2s2.uncompressed.manifest.json"), None)
    assert {layer.media_type for layer in plain.layers} == {mt.DOCKER_LAYER}


def test_oci_manifest_keeps_annotations_in_document_order():
    m = parse_manifest(fixture("oci-manifest/ci__ociv1.manifest.json"), None)
    assert m.annotations == (("com.example.key1", "value1"), ("com.example.key2", "value2"))
    assert m.config.media_type == mt.OCI_CONFIG
    assert len(m.layers) == 3 and {layer.media_type for layer in m.layers} == {mt.OCI_LAYER_GZIP}


def test_unknown_oci_layer_media_types_are_not_parse_errors():
    encrypted = parse_manifest(fixture("oci-manifest/ci__ociv1.encrypted.manifest.json"), None)
    assert {layer.media_type for layer in encrypted.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}
    assert encrypted.layers[0].annotations == (("org.opencontainers.image.enc.…", "layer1"),)
    odd = parse_manifest(fixture("invalid/ci__ociv1.invalid.mediatype.manifest.json"), None)
    assert odd.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+unknown"


def test_oci_zstd_layers_parse():
    m = parse_manifest(fixture("oci-manifest/ci__ociv1.zstd.manifest.json"), None)
    assert {layer.media_type for layer in m.layers} == {mt.OCI_LAYER_ZSTD}


def test_oci_artifact_with_every_field():
    m = parse_manifest(fixture("oci-artifact/ci__ociv1.everything.json"), None)
    assert m.artifact_type == "application/our-artifact"
    assert not m.is_image
    assert m.config.media_type == "application/our-artifact-config"
    assert m.config.urls == ("https://some.example/config",)
    assert m.config.annotations == (("config", "1"),)
    assert m.config.data == "YQ=="
    assert m.layers[0].media_type == "application/our-artifact-layer"
    assert m.layers[0].data == "YmM="
    assert m.subject is not None
    assert m.subject.digest == "sha256:" + "c" * 64
    assert m.subject.artifact_type == "application/our-subject"
    assert m.subject.platform == Platform(
        architecture="a", os="b", variant="e", os_version="c", os_features=("d",)
    )
    assert m.annotations == (("top", "0"),)


@pytest.mark.parametrize("name", ["oci-artifact/ci__ociv1.artifact.json", "oci-artifact/ci__ociv1nomime.artifact.json"])
def test_artifact_with_null_layers_and_placeholder_config_is_tolerated(name):
    m = parse_manifest(fixture(name), None)
    assert m.layers == ()
    assert m.config.media_type == "application/vnd.oci.custom.artifact.config.v1+json"
    assert (m.config.digest, m.config.size) == ("", 0)
    assert not m.has_config_blob
    assert blobs_of(m) == []


def test_null_layers_in_an_oci_image_manifest_are_rejected():
    doc = orjson.loads(fixture("oci-manifest/ci__ociv1.manifest.json"))
    doc["layers"] = None
    with pytest.raises(FormatError, match="layers is not an array"):
        parse_manifest(orjson.dumps(doc), None)


# --------------------------------------------------------------------------- indexes


def test_docker_manifest_list_platforms():
    index = parse_manifest(fixture("docker-manifest-list/ci__schema2list.json"), None)
    assert isinstance(index, ImageIndex) and index.is_docker
    assert [str(entry.platform) for entry in index.manifests] == [
        "linux/amd64", "linux/arm/v5", "linux/arm/v6", "linux/arm64/v8", "linux/386", "linux/ppc64le", "linux/s390x",
    ]
    assert index.manifests[0].digest == "sha256:030fcb92e1487b18c974784dcc110a93147c9fc402188370fbfd17efabffc6af"
    assert index.manifests[5].size == 528


def test_docker_manifest_list_keeps_cpu_features():
    index = parse_manifest(fixture("docker-manifest-list/ci__v2list.manifest.json"), None)
    assert index.manifests[1].platform.features == ("sse",)
    assert {entry.media_type for entry in index.manifests} == {mt.DOCKER_SCHEMA1}


def test_oci_index_entries_keep_artifact_type_and_os_features():
    index = parse_manifest(fixture("oci-index/ci__oci1index.json"), None)
    assert [entry.size for entry in index.manifests] == [7143, 7682, 8221]
    assert index.manifests[1].platform.os_features == ("sse4",)
    assert index.manifests[2].artifact_type == "application/x-tar"
    assert index.annotations == (("com.example.key1", "value1"), ("com.example.key2", "value2"))


def test_index_entries_with_unknown_media_types_parse():
    index = parse_manifest(fixture("oci-layout-index/ci__name_lookups.index.json"), None)
    assert [entry.annotation("org.opencontainers.image.ref.name") for entry in index.manifests] == [
        "a", "b", "c", "d", "invalid-mime",
    ]
    assert index.manifests[4].media_type == "x-completely-unknown"
    assert all(entry.platform is None for entry in index.manifests)


def test_oci_index_with_null_manifests_is_empty():
    # Docker 25 writes this for an untagged `docker save`.
    data = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":null}'
    index = parse_manifest(data, None)
    assert index.manifests == ()


def test_index_yields_no_blobs():
    assert blobs_of(parse_manifest(fixture("oci-index/ci__oci1index.json"), None)) == []


# --------------------------------------------------------------------------- strictness


def _doc(name: str) -> dict:
    return orjson.loads(fixture(name))


def test_media_type_field_contradicting_the_declared_type_is_rejected():
    data = fixture("docker-schema2/ci__v2s2.manifest.json")
    with pytest.raises(FormatError, match="declares mediaType"):
        parse_manifest(data, mt.OCI_MANIFEST)


def test_declared_index_type_on_an_image_manifest_is_rejected_as_ambiguous():
    with pytest.raises(FormatError, match="unexpected fields config, layers"):
        parse_manifest(fixture("oci-manifest/ci__ociv1nomime.manifest.json"), mt.OCI_INDEX)


def test_manifest_with_manifests_key_is_ambiguous():
    doc = _doc("docker-schema2/ci__v2s2.manifest.json")
    doc["manifests"] = []
    with pytest.raises(FormatError, match="ambiguous .*unexpected fields manifests"):
        parse_manifest(orjson.dumps(doc), None)


def test_index_with_layers_key_is_ambiguous():
    doc = _doc("oci-index/ci__oci1index.json")
    doc["layers"] = []
    with pytest.raises(FormatError, match="unexpected fields layers"):
        parse_manifest(orjson.dumps(doc), None)


def test_image_manifest_with_fs_layers_is_ambiguous():
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    doc["fsLayers"] = [{"blobSum": "sha256:" + "a" * 64}]
    with pytest.raises(FormatError, match="unexpected fields fsLayers"):
        parse_manifest(orjson.dumps(doc), None)


def test_null_foreign_keys_do_not_make_a_manifest_ambiguous():
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    doc["manifests"] = None
    assert parse_manifest(orjson.dumps(doc), None).media_type == mt.OCI_MANIFEST


def test_wrong_schema_version_for_declared_type_is_rejected():
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    doc["schemaVersion"] = 1
    with pytest.raises(FormatError, match="needs schemaVersion 2"):
        parse_manifest(orjson.dumps(doc), mt.OCI_MANIFEST)


def test_missing_config_is_rejected():
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    del doc["config"]
    with pytest.raises(FormatError, match="has no config descriptor"):
        parse_manifest(orjson.dumps(doc), None)


def test_docker_schema2_declared_without_media_type_field_is_rejected():
    doc = _doc("docker-schema2/ci__v2s2.manifest.json")
    del doc["mediaType"]
    with pytest.raises(FormatError, match="has no mediaType field"):
        parse_manifest(orjson.dumps(doc), mt.DOCKER_SCHEMA2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["layers"][1].update(digest="sha256:short"), r"layers\[1\]: invalid sha256 digest"),
        (lambda d: d["layers"][0].update(size=-1), r"layers\[0\]: descriptor .* invalid size"),
        (lambda d: d["layers"][0].update(size="12"), "invalid size"),
        (lambda d: d["layers"][2].pop("mediaType"), r"layers\[2\]: descriptor has no mediaType"),
        (lambda d: d["config"].update(digest="md5:abc"), "config: unsupported digest algorithm"),
        (lambda d: d["layers"][0].update(urls="https://x"), "urls is not an array of strings"),
        (lambda d: d.update(annotations={"a": 1}), "annotations is not a map of strings"),
        (lambda d: d.update(layers=[1]), r"layers\[0\] is not a descriptor object"),
    ],
)
def test_bad_descriptors_are_rejected_with_their_location(mutate, message):
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        parse_manifest(orjson.dumps(doc), None)


def test_oci_image_config_placeholder_digest_is_not_tolerated():
    doc = _doc("oci-manifest/ci__ociv1.manifest.json")
    doc["config"].update(digest="", size=0)
    with pytest.raises(FormatError, match="invalid digest"):
        parse_manifest(orjson.dumps(doc), None)


def test_index_entry_platform_must_be_valid():
    doc = _doc("docker-manifest-list/ci__schema2list.json")
    doc["manifests"][0]["platform"] = {"os": "linux"}
    with pytest.raises(FormatError, match=r"manifests\[0\]: platform needs string architecture and os"):
        parse_manifest(orjson.dumps(doc), None)
    doc = _doc("docker-manifest-list/ci__v2list.manifest.json")
    doc["manifests"][1]["platform"]["features"] = "sse"
    with pytest.raises(FormatError, match=r"manifests\[1\] platform features is not an array of strings"):
        parse_manifest(orjson.dumps(doc), None)


def test_docker_list_entry_without_platform_parses():
    doc = _doc("docker-manifest-list/ci__schema2list.json")
    del doc["manifests"][0]["platform"]
    assert parse_manifest(orjson.dumps(doc), None).manifests[0].platform is None


def test_schema1_with_non_string_media_type_is_rejected():
    doc = _doc("docker-schema1/ci__v2s1-unsigned.manifest.json")
    doc["mediaType"] = ["x"]
    with pytest.raises(FormatError, match="declares mediaType"):
        parse_manifest(orjson.dumps(doc), mt.DOCKER_SCHEMA1)


# --------------------------------------------------------------------------- blobs


def test_blobs_of_image_manifest_is_config_then_layers():
    m = parse_manifest(fixture("oci-manifest/ci__ociv1.manifest.json"), None)
    assert [d.digest for d in blobs_of(m)] == [
        "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
        "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
        "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
        "sha256:ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736",
    ]


def test_blobs_of_schema1_lists_every_blob_sum_base_first_with_unknown_size():
    m = parse_manifest(fixture("docker-schema1/ci__schema1-for-oci-config.json"), None)
    assert isinstance(m, Schema1Manifest)
    blobs = blobs_of(m)
    assert [d.digest for d in blobs] == [
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
        "sha256:f112334343777b75be77ec1f835e3bbbe7d7bd46e27b6a2ae35c6b3cfea0987c",
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
    ]
    assert {d.size for d in blobs} == {UNKNOWN_SIZE}


def test_a_streaming_hash_names_the_digest_of_what_went_through_it():
    from imagepush.transforms.formats import digest as digestlib

    for digest in (sha256(b"layer bytes"), "sha512:" + __import__("hashlib").sha512(b"layer bytes").hexdigest()):
        h = digestlib.hasher(digest)
        h.update(b"layer ")
        h.update(b"bytes")
        assert digestlib.of_hasher(h) == digest
