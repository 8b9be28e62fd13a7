"""Specification of Docker schema1: signed payloads, digests, ordering and validation."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.manifest import manifest_digest, parse_manifest
from imagepush.transforms.formats.schema1 import parse_schema1, payload_of


from tests.conftest import fixture  # noqa: E402


SIGNED = "docker-schema1/ci__v2s1.manifest.json"
UNSIGNED = "docker-schema1/ci__v2s1-unsigned.manifest.json"
PAUSE = "docker-schema1/ci__schema1-for-oci-config.json"
BY_DOCKER = "conversion/ci__schema2-to-schema1-by-docker.json"
V2S1_DIGEST = "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"
EMPTY_GZIP_TAR = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def protected(length: int, tail: bytes = b"\n}") -> str:
    return b64url(orjson.dumps({"formatLength": length, "formatTail": b64url(tail), "time": "2016-04-18T20:54:42Z"}))


def sign(unsigned: bytes, *protected_headers: str) -> bytes:
    """Splice a prettyjws signatures array into ``unsigned`` the way libtrust does."""
    assert unsigned.endswith(b"\n}")
    body = unsigned[:-2]
    sigs = [{"header": {"alg": "ES256", "jwk": {}}, "signature": "c2ln", "protected": p} for p in protected_headers]
    return body + b',\n   "signatures": ' + orjson.dumps(sigs) + b"\n}"


def unsigned_by_docker() -> bytes:
    """The Docker Hub schema1 fixture's payload as it was before the fixture was edited.

    Its ``formatLength`` no longer matches (tests/fixtures/README.md: the JWS does not
    verify), so the signed payload is not JSON; cutting at the signatures key recovers
    the manifest itself.
    """
    data = fixture(BY_DOCKER)
    return data[: data.index(b',\n   "signatures"')] + b"\n}"


def entry(v1_id: str, parent: str | None = None, throwaway: bool = False, **extra) -> dict:
    v1 = {"id": v1_id, **({"parent": parent} if parent else {}), **extra}
    if throwaway:
        v1["throwaway"] = True
    return {"v1Compatibility": orjson.dumps(v1).decode()}


def schema1_doc(entries: list[tuple[str, dict]]) -> bytes:
    """An unsigned schema1 manifest from top-first (blobSum, history entry) pairs."""
    doc = {
        "schemaVersion": 1,
        "name": "test/image",
        "tag": "latest",
        "architecture": "arm64",
        "fsLayers": [{"blobSum": blob} for blob, _ in entries],
        "history": [hist for _, hist in entries],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


ID_A, ID_B, ID_C = "a" * 64, "b" * 64, "c" * 64
BLOB_1, BLOB_2, BLOB_3 = ("sha256:" + c * 64 for c in "123")


# --------------------------------------------------------------------------- payload and digest


def test_signed_schema1_digest_is_over_payload():
    data = fixture(SIGNED)
    assert hashlib.sha256(data).hexdigest() == "e028c450623065a8813712d8018f9a3d49e8adaad885f6e01371a1e26bd2224d"
    m = parse_schema1(data)
    assert m.signed
    assert m.digest == V2S1_DIGEST
    assert manifest_digest(data, mt.DOCKER_SCHEMA1_SIGNED) == V2S1_DIGEST


def test_signed_payload_is_byte_identical_to_the_unsigned_manifest():
    assert payload_of(fixture(SIGNED)) == fixture(UNSIGNED)


def test_unsigned_schema1_payload_is_the_whole_file():
    data = fixture(UNSIGNED)
    assert payload_of(data) == data
    m = parse_schema1(data)
    assert not m.signed
    assert m.media_type == mt.DOCKER_SCHEMA1
    assert m.digest == V2S1_DIGEST


def test_both_v2s1_fixtures_share_one_digest_whatever_type_is_declared():
    for name in (SIGNED, UNSIGNED):
        for declared in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED, None, "application/json"):
            assert manifest_digest(fixture(name), declared) == V2S1_DIGEST


def test_schema1_for_oci_config_payload_digest():
    m = parse_schema1(fixture(PAUSE))
    assert m.signed
    assert m.digest == "sha256:163ac025575b775d1c0f9bf0bdd0f086883171eb475b5068e7defa4ca9e76516"
    assert len(m.payload) == 4133 + 2


def test_everything_fixture_digest_and_fields():
    m = parse_schema1(fixture("docker-schema1/ci__v2s1.everything.json"))
    assert m.digest == "sha256:c7df6b660bbfca36b1982b6bd656e0cbaf7ec3da06f6160204cd7b4aac6381c7"
    assert (m.name, m.tag, m.architecture) == ("registry.example/foo", "notlatest", "a")
    assert len(m.layers) == 1
    layer = m.layers[0]
    assert layer.blob_sum == "sha256:" + "a" * 64
    assert layer.throwaway
    assert layer.v1 == {
        "id": "b" * 64,
        "comment": "comment",
        "created": "1970-01-01T01:00:01+01:00",
        "container_config": {"Cmd": ["cmd"]},
        "author": "author",
        "throwaway": True,
    }


def test_payload_digest_of_edited_docker_hub_fixture_matches_readme():
    # Computed without parsing the payload, so it works even though the payload is damaged.
    data = fixture(BY_DOCKER)
    assert manifest_digest(data, None) == "sha256:c8a08b90c4899c341695c8b52733faace453cda3c20b2f9ad2c4390eac8eaee4"


def test_signed_payload_that_is_not_json_is_rejected():
    with pytest.raises(FormatError, match="invalid JSON"):
        parse_schema1(fixture(BY_DOCKER))


def test_smuggled_layers_after_format_length_are_ignored():
    data = fixture(SIGNED)
    length = orjson.loads(base64.urlsafe_b64decode(orjson.loads(data)["signatures"][0]["protected"] + "=="))[
        "formatLength"
    ]
    forged = b',"fsLayers":[{"blobSum":"' + BLOB_1.encode() + b'"}]'
    smuggled = data[:length] + forged + data[length:]
    # A naive whole-document parse would see the forged key (the last duplicate wins) ...
    assert orjson.loads(smuggled)["fsLayers"] == [{"blobSum": BLOB_1}]
    # ... but the manifest is the signed payload, which is untouched.
    m = parse_schema1(smuggled)
    assert m.digest == V2S1_DIGEST
    assert m.payload == fixture(UNSIGNED)
    assert [layer.blob_sum for layer in m.layers] == [
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    ] * 3
    assert manifest_digest(smuggled, None) == V2S1_DIGEST


def test_invalid_signatures_fixture_is_rejected():
    with pytest.raises(FormatError, match="signatures is not an array of JWS objects"):
        payload_of(fixture("docker-schema1/ci__v2s1-invalid-signatures.manifest.json"))


def test_signatures_must_agree_on_the_payload():
    unsigned = fixture(UNSIGNED)
    length = len(unsigned) - 2
    assert parse_schema1(sign(unsigned, protected(length), protected(length))).digest == V2S1_DIGEST
    with pytest.raises(FormatError, match="disagree"):
        parse_schema1(sign(unsigned, protected(length), protected(length - 1)))


@pytest.mark.parametrize(
    "header, message",
    [
        ("not base64!", "protected header is not base64url"),
        (b64url(b"[1]"), "protected header is not a JSON object"),
        (b64url(b'{"formatTail":"Cn0"}'), "no integer formatLength"),
        (b64url(b'{"formatLength":"5478","formatTail":"Cn0"}'), "no integer formatLength"),
        (b64url(b'{"formatLength":999999,"formatTail":"Cn0"}'), "outside the"),
        (b64url(b'{"formatLength":0,"formatTail":"Cn0"}'), "outside the"),
        (b64url(b'{"formatLength":10,"formatTail":"C*0"}'), "formatTail is not base64url"),
    ],
)
def test_malformed_protected_headers_are_rejected(header, message):
    with pytest.raises(FormatError, match=message):
        payload_of(sign(fixture(UNSIGNED), header))


def test_empty_signatures_array_is_rejected():
    data = fixture(UNSIGNED)[:-2] + b',"signatures":[]\n}'
    with pytest.raises(FormatError, match="empty"):
        payload_of(data)


def test_signature_without_signature_string_is_rejected():
    data = fixture(UNSIGNED)[:-2] + b',"signatures":[{"header":{},"protected":"' + protected(10).encode() + b'"}]\n}'
    with pytest.raises(FormatError, match="no signature string"):
        payload_of(data)


# --------------------------------------------------------------------------- ordering


def test_schema1_history_is_reversed():
    m = parse_schema1(fixture(SIGNED))
    # fsLayers/history are top first; our layers are base first like schema2/OCI.
    assert [layer.v1["id"] for layer in m.layers] == [
        "03dfa1cd1abe452bc2b69b8eb2362fa6beebc20893e65437906318954f6276d4",
        "594075be8d003f784074cc639d970d1fa091a8197850baaae5052c01564ac535",
        "f1b5eb0a1215f663765d509b6cdf3841bc2bcff0922346abb943d1342d469a97",
    ]
    assert m.layers[0].v1["container_config"]["Cmd"][-1].startswith("#(nop) MAINTAINER")
    assert (m.name, m.tag, m.architecture) == ("mitr/busybox", "latest", "amd64")


def test_docker_hub_schema1_layers_line_up_with_the_schema2_original():
    m = parse_schema1(unsigned_by_docker())
    assert len(m.layers) == 15
    real = [layer.blob_sum for layer in m.layers if not layer.throwaway]
    original = orjson.loads(fixture("conversion/ci__schema2.json"))
    assert real == [layer["digest"] for layer in original["layers"]]
    assert {layer.blob_sum for layer in m.layers if layer.throwaway} == {EMPTY_GZIP_TAR}
    assert [layer.throwaway for layer in m.layers] == [
        False, True, True, True, False, True, False, True, True, True, True, False, False, True, True,
    ]


def test_throwaway_flag_is_only_what_v1_compatibility_says():
    # The pause image repeats the empty-tar blob without the throwaway flag: still layers.
    m = parse_schema1(fixture(PAUSE))
    assert [(layer.blob_sum, layer.throwaway) for layer in m.layers] == [
        (EMPTY_GZIP_TAR, False),
        ("sha256:f112334343777b75be77ec1f835e3bbbe7d7bd46e27b6a2ae35c6b3cfea0987c", False),
        (EMPTY_GZIP_TAR, False),
    ]


def test_parse_manifest_dispatches_schema1():
    assert parse_manifest(fixture(SIGNED), None) == parse_schema1(fixture(SIGNED))
    assert parse_manifest(fixture(UNSIGNED), mt.DOCKER_SCHEMA1_SIGNED).digest == V2S1_DIGEST


# --------------------------------------------------------------------------- validation


def test_consecutive_duplicate_ids_collapse_to_the_base_most_entry():
    data = schema1_doc([
        (BLOB_3, entry(ID_C, ID_B, comment="top")),
        (BLOB_2, entry(ID_B, ID_A, comment="upper duplicate")),
        (BLOB_1, entry(ID_B, ID_A, comment="lower duplicate")),
        (BLOB_1, entry(ID_A, comment="base")),
    ])
    m = parse_schema1(data)
    assert [layer.v1["comment"] for layer in m.layers] == ["base", "lower duplicate", "top"]
    assert [layer.blob_sum for layer in m.layers] == [BLOB_1, BLOB_1, BLOB_3]
    # A byte-preserving copy still needs every blob the payload names.
    assert m.all_blob_sums == (BLOB_1, BLOB_1, BLOB_2, BLOB_3)


def test_non_consecutive_duplicate_id_is_rejected():
    data = schema1_doc([
        (BLOB_3, entry(ID_A, ID_B)),
        (BLOB_2, entry(ID_B, ID_A)),
        (BLOB_1, entry(ID_A)),
    ])
    with pytest.raises(FormatError, match="appears multiple times"):
        parse_schema1(data)


def test_broken_parent_chain_is_rejected():
    data = schema1_doc([(BLOB_2, entry(ID_B, ID_C)), (BLOB_1, entry(ID_A))])
    with pytest.raises(FormatError, match=r"history\[0\] has parent"):
        parse_schema1(data)


def test_base_entry_with_parent_is_rejected():
    data = schema1_doc([(BLOB_2, entry(ID_B, ID_A)), (BLOB_1, entry(ID_A, ID_C))])
    with pytest.raises(FormatError, match="base layer"):
        parse_schema1(data)


@pytest.mark.parametrize("bad_id", ["A" * 64, "a" * 63, "g" * 64, "", None])
def test_v1_ids_must_be_64_lowercase_hex(bad_id):
    v1 = {"id": bad_id} if bad_id is not None else {}
    data = schema1_doc([(BLOB_1, {"v1Compatibility": orjson.dumps(v1).decode()})])
    with pytest.raises(FormatError, match="invalid v1 id"):
        parse_schema1(data)


def test_fs_layers_and_history_must_have_equal_length():
    doc = orjson.loads(schema1_doc([(BLOB_2, entry(ID_B, ID_A)), (BLOB_1, entry(ID_A))]))
    doc["history"].pop()
    with pytest.raises(FormatError, match="2 fsLayers but 1 history"):
        parse_schema1(orjson.dumps(doc))


def test_empty_schema1_is_rejected():
    with pytest.raises(FormatError, match="no fsLayers"):
        parse_schema1(schema1_doc([]))


def test_schema1_parser_requires_schema_version_1():
    doc = orjson.loads(fixture(UNSIGNED))
    doc["schemaVersion"] = 2
    with pytest.raises(FormatError, match="expected 1"):
        parse_schema1(orjson.dumps(doc))


def test_schema1_with_schema2_keys_is_ambiguous():
    doc = orjson.loads(fixture(UNSIGNED))
    doc["layers"] = []
    with pytest.raises(FormatError, match="unexpected fields layers"):
        parse_schema1(orjson.dumps(doc))


def test_v1_compatibility_must_be_a_json_object_string():
    data = schema1_doc([(BLOB_1, {"v1Compatibility": "not json"})])
    with pytest.raises(FormatError, match="invalid JSON"):
        parse_schema1(data)
    data = schema1_doc([(BLOB_1, {"v1Compatibility": {"id": ID_A}})])
    with pytest.raises(FormatError, match="no v1Compatibility string"):
        parse_schema1(data)


def test_invalid_blob_sum_is_rejected():
    data = schema1_doc([("sha256:nothex", entry(ID_A))])
    with pytest.raises(FormatError, match=r"fsLayers\[0\]"):
        parse_schema1(data)
