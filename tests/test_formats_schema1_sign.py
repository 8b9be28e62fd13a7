"""Specification of schema1 signing: libtrust's pretty JWS over a payload that stays byte for byte."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone

import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.manifest import detect_media_type, manifest_digest
from imagepush.transforms.formats.schema1 import parse_schema1, payload_of
from imagepush.transforms.formats.schema1_sign import key_id, sign_schema1
from tests.conftest import fixture, sha256

SIGNED = "docker-schema1/ci__v2s1.manifest.json"
UNSIGNED = "docker-schema1/ci__v2s1-unsigned.manifest.json"
#: Signed by libtrust, and its signature still verifies (tests/fixtures/README.md).
VERIFIES = "docker-schema1/ci__schema1-for-oci-config.json"
V2S1_DIGEST = "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"
SIGNED_AT = datetime(2017, 6, 1, 12, 30, 5, tzinfo=timezone.utc)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact() -> bytes:
    """The fixture manifest as Distribution stores it: compact JSON, no trailing newline."""
    return orjson.dumps(orjson.loads(fixture(UNSIGNED)))


def verify(signed: bytes) -> list[dict]:
    """Check every signature as libtrust does (ES256 over ``protected.base64url(payload)``); their headers."""
    headers = []
    payload = base64.urlsafe_b64encode(payload_of(signed)).rstrip(b"=")
    for signature in json.loads(signed)["signatures"]:
        jwk = signature["header"]["jwk"]
        assert (signature["header"]["alg"], jwk["kty"], jwk["crv"]) == ("ES256", "EC", "P-256")
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64url_decode(jwk["x"]), "big"), int.from_bytes(b64url_decode(jwk["y"]), "big"), ec.SECP256R1()
        ).public_key()
        assert key_id(key) == jwk["kid"]
        raw = b64url_decode(signature["signature"])
        assert len(raw) == 64
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        key.verify(der, signature["protected"].encode() + b"." + payload, ec.ECDSA(hashes.SHA256()))
        headers.append(json.loads(b64url_decode(signature["protected"])))
    return headers


def test_the_verifier_of_these_tests_accepts_a_signature_libtrust_made():
    """Key id and signature check agree with real libtrust output, so they can judge ours."""
    (header,) = verify(fixture(VERIFIES))
    assert header["formatLength"] == 4133
    tampered = fixture(VERIFIES).replace(b'"tag": "3.0"', b'"tag": "3.1"')
    with pytest.raises(InvalidSignature):
        verify(tampered)


def test_a_compact_payload_as_distribution_stores_it_is_signed_without_changing_a_byte():
    payload = compact()
    signed = sign_schema1(payload, ec.generate_private_key(ec.SECP256R1()), signed_at=SIGNED_AT)
    assert payload_of(signed) == payload
    assert manifest_digest(signed, mt.DOCKER_SCHEMA1_SIGNED) == sha256(payload)
    assert detect_media_type(signed, None) == mt.DOCKER_SCHEMA1_SIGNED
    assert parse_schema1(signed).signed
    assert signed.startswith(payload[:-1] + b',"signatures":[{"header":{"jwk":{"crv":"P-256","kid":"')
    assert signed.endswith(b'"}]}')
    (header,) = verify(signed)
    assert header == {"formatLength": len(payload) - 1, "formatTail": "fQ", "time": "2017-06-01T12:30:05Z"}
    assert b64url_decode(header["formatTail"]) == b"}"


def test_an_indented_payload_is_signed_in_the_layout_libtrust_gives_it():
    """Same bytes as the libtrust-signed fixture of this very payload, except the key, signature and header."""
    payload = fixture(UNSIGNED)
    signed = sign_schema1(payload, ec.generate_private_key(ec.SECP256R1()), signed_at=SIGNED_AT)
    assert payload_of(signed) == payload
    (header,) = verify(signed)
    assert (header["formatLength"], b64url_decode(header["formatTail"])) == (len(payload) - 2, b"\n}")

    def blank(data: bytes) -> bytes:
        return re.sub(rb'"(kid|x|y|signature|protected)": "[^"]*"', rb'"\1": ""', data)

    assert blank(signed) == blank(fixture(SIGNED))


def test_an_already_signed_manifest_gets_one_new_signature_over_the_same_payload():
    signed = sign_schema1(fixture(SIGNED), ec.generate_private_key(ec.SECP256R1()), signed_at=SIGNED_AT)
    assert payload_of(signed) == fixture(UNSIGNED)
    assert manifest_digest(signed, mt.DOCKER_SCHEMA1_SIGNED) == V2S1_DIGEST
    assert len(verify(signed)) == 1  # the fixture's own signature no longer verifies; ours does


def test_trailing_whitespace_of_the_payload_travels_in_the_format_tail():
    payload = fixture(UNSIGNED) + b"\n"
    signed = sign_schema1(payload, ec.generate_private_key(ec.SECP256R1()))
    assert payload_of(signed) == payload
    assert signed.endswith(b"]\n}")
    (header,) = verify(signed)
    assert b64url_decode(header["formatTail"]) == b"\n}\n"


def test_two_signings_differ_in_bytes_but_never_in_payload_or_digest():
    key = ec.generate_private_key(ec.SECP256R1())
    one, two = (sign_schema1(compact(), key, signed_at=SIGNED_AT) for _ in range(2))
    assert one != two  # ECDSA signatures are randomised
    assert payload_of(one) == payload_of(two) == compact()
    assert json.loads(one)["signatures"][0]["header"] == json.loads(two)["signatures"][0]["header"]


def test_only_a_p256_key_signs():
    with pytest.raises(FormatError, match="ECDSA P-256"):
        sign_schema1(compact(), ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize("data, message", [
    (fixture("docker-schema2/ci__v2s2.manifest.json"), "schemaVersion 2, expected 1"),
    (b"[1]", "not a JSON object"),
])
def test_what_is_not_schema1_is_not_signed(data, message):
    with pytest.raises(FormatError, match=message):
        sign_schema1(data, ec.generate_private_key(ec.SECP256R1()))
