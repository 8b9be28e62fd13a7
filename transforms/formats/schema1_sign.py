"""Signing a schema1 payload the way Distribution does, so a registry that verifies it accepts it.

Distribution keeps a schema1 manifest as its unsigned payload and signs it afresh on every
GET; a PUT, though, must carry a valid libtrust "pretty" JWS (docs/formats.md §3). A
storage tree therefore holds bytes that its own registry would refuse. Signing them here
with a throwaway key gives a document whose payload — and so whose digest — is exactly
the stored one: the signature proves nothing about the content, it only satisfies the
format, which is all Distribution's own signature does either.

The layout follows libtrust: the payload up to its last value (``formatLength``), then
``,"signatures":[…]`` and a closing brace; what was cut off (``formatTail``, normally
``}`` or ``\\n}``) travels base64url-encoded in the protected header, so that any reader
rebuilds ``payload = file[:formatLength] + formatTail``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats.schema1 import payload_of

#: The JSON key libtrust and Distribution splice the signatures in under.
SIGNATURES_KEY = "signatures"
#: ES256 is the one algorithm a P-256 key signs with in JOSE (and in libtrust).
ALGORITHM = "ES256"
_P256_OCTETS = 32
#: Whitespace as JSON defines it: the only bytes that can sit between the last value and ``}``.
_JSON_SPACE = b" \t\n\r"


def _b64url(data: bytes) -> str:
    """JOSE base64url: URL alphabet, no padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """libtrust's key id: the first 240 bits of sha256(SubjectPublicKeyInfo DER), base32, in groups of 4.

    libtrust checks a ``kid`` in a JWK against the key when one is present, so it must be
    computed exactly as libtrust does, or the registry refuses the signature.
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK of a P-256 public key with coordinates at their full 32 bytes, as JOSE requires."""
    numbers = public_key.public_numbers()
    return {
        "crv": "P-256",
        "kid": key_id(public_key),
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(_P256_OCTETS, "big")),
        "y": _b64url(numbers.y.to_bytes(_P256_OCTETS, "big")),
    }


def _indent_of(payload: bytes) -> str:
    """The indent of a payload written as ``{\\n<indent>"…``, else "" (compact); as libtrust detects it.

    The signatures are laid out in the same style so the signed file reads like its payload.
    """
    if len(payload) > 2 and payload[:2] == b"{\n":
        quote = payload.find(b'"', 1)
        if quote > 0:
            return payload[2:quote].decode("ascii", errors="replace")
    return ""


def _protected_header(format_length: int, format_tail: bytes, signed_at: datetime) -> str:
    header = {
        "formatLength": format_length,
        "formatTail": _b64url(format_tail),
        "time": signed_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return _b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))


def _signature_value(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> str:
    """ES256 as JOSE encodes it: r and s as two 32-byte big-endian integers, not DER."""
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return _b64url(r.to_bytes(_P256_OCTETS, "big") + s.to_bytes(_P256_OCTETS, "big"))


def _signatures_json(signatures: list[dict[str, Any]], indent: str) -> bytes:
    """The array as Go's json.Marshal / MarshalIndent(prefix=indent, indent=indent) writes it."""
    if not indent:
        return json.dumps(signatures, separators=(",", ":")).encode("ascii")
    return json.dumps(signatures, indent=indent).replace("\n", "\n" + indent).encode("ascii")


def sign_schema1(data: bytes, key: ec.EllipticCurvePrivateKey, *, signed_at: datetime | None = None) -> bytes:
    """A signed ("prettyjws") schema1 manifest whose payload is exactly the payload of ``data``.

    ``data`` is a schema1 manifest, unsigned or signed (only its envelope is checked:
    judging the content is the registry's business); existing signatures are dropped
    and replaced by one made with ``key`` (an ECDSA P-256 key, normally generated for the
    run and never stored). The payload is kept byte for byte, so the manifest digest
    (sha256 of the payload) is unchanged. The output bytes are not reproducible: ECDSA
    signatures are randomised and the protected header records ``signed_at`` (default: now),
    which is why only the payload and digest may be relied on, never the file's hash.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise FormatError("schema1 signing needs an ECDSA P-256 private key")
    payload = payload_of(data)
    version = jsonio.load_object(payload, "schema1 payload").get("schemaVersion")
    if version != 1 or isinstance(version, bool):
        raise FormatError(f"schema1 payload has schemaVersion {version!r}, expected 1")
    body = payload.rstrip(_JSON_SPACE)
    if not body.endswith(b"}"):
        raise FormatError("schema1 payload does not end with '}'")
    head = body[:-1].rstrip(_JSON_SPACE)
    if not head or head.endswith((b",", b"{")):
        raise FormatError("schema1 payload has no member before its closing '}'")
    protected = _protected_header(len(head), payload[len(head):], signed_at or datetime.now(timezone.utc))
    signing_input = f"{protected}.{_b64url(payload)}".encode("ascii")
    signature = {
        "header": {"jwk": public_jwk(key.public_key()), "alg": ALGORITHM},
        "signature": _signature_value(key, signing_input),
        "protected": protected,
    }
    indent = _indent_of(payload)
    array = _signatures_json([signature], indent)
    if indent:
        signed = head + b",\n" + indent.encode("ascii") + f'"{SIGNATURES_KEY}": '.encode("ascii") + array + b"\n}"
    else:
        signed = head + f',"{SIGNATURES_KEY}":'.encode("ascii") + array + b"}"
    if payload_of(signed) != payload:  # the one property callers rely on
        raise FormatError("signing changed the schema1 payload")
    return signed
