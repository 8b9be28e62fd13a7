"""Docker image manifest v2, schema 1: payload reconstruction, digest and validation.

Schema1 is the one format whose digest is not the hash of the bytes you download: a
signed manifest ("prettyjws") is the signed payload with a ``signatures`` array spliced
in, and its identity is the sha256 of that payload (docs/formats.md §3). Everything here
therefore works from the payload, never from the whole file — bytes after
``formatLength`` are outside the signature and can carry a smuggled second ``fsLayers``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import FormatError

#: 64 lowercase hex characters, the only v1 image id containers/image accepts.
_V1_ID_RE = re.compile(r"^[a-f0-9]{64}$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")

#: Keys whose presence would make the document look like another manifest format.
_FOREIGN_KEYS = ("config", "layers", "manifests")


@dataclass(frozen=True)
class Schema1Layer:
    """One (fsLayers[i], history[i]) pair after de-duplication.

    ``v1`` is the parsed ``v1Compatibility`` object, kept as a raw map because the
    schema1→schema2 conversion copies unknown keys of the top entry verbatim.
    ``throwaway`` entries changed only metadata: they have no layer in schema2/OCI.
    """

    blob_sum: str
    v1: dict[str, Any]
    throwaway: bool
    #: The ``v1Compatibility`` string as written: the conversion copies the top entry's
    #: values with their original spelling, as containers/image does (empty: unknown).
    v1_raw: str = ""


@dataclass(frozen=True)
class Schema1Manifest:
    """A validated schema1 manifest.

    ``layers`` is **base first** (the reverse of ``fsLayers``), after collapsing runs of
    consecutive entries that share a v1 id, so that it lines up with schema2/OCI order.
    ``all_blob_sums`` lists every ``blobSum`` of the payload base first *before* that
    collapse: a byte-preserving copy must transfer all of them, because the destination
    registry checks every blob the stored manifest names.
    """

    name: str
    tag: str
    architecture: str
    layers: tuple[Schema1Layer, ...]
    payload: bytes
    signed: bool
    digest: str
    all_blob_sums: tuple[str, ...] = field(default=())

    @property
    def media_type(self) -> str:
        """The schema1 type this document is (signed iff it carries signatures)."""
        return mt.DOCKER_SCHEMA1_SIGNED if self.signed else mt.DOCKER_SCHEMA1


def _b64url_decode(text: Any, what: str) -> bytes:
    """Decode JOSE base64url (no padding), strictly: stray characters are errors, not skipped."""
    if not isinstance(text, str) or not _B64URL_RE.match(text) or len(text) % 4 == 1:
        raise FormatError(f"{what} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _format_of(signature: Any, index: int, total_length: int) -> tuple[int, bytes]:
    """``(formatLength, decoded formatTail)`` from one signature's protected header."""
    where = f"signature {index}"
    if not isinstance(signature, dict):
        raise FormatError(f"{where} is not a JWS object")
    if not isinstance(signature.get("header"), dict):
        raise FormatError(f"{where} has no header object")
    if not isinstance(signature.get("signature"), str):
        raise FormatError(f"{where} has no signature string")
    protected = jsonio.loads(_b64url_decode(signature.get("protected"), f"{where} protected header"))
    if not isinstance(protected, dict):
        raise FormatError(f"{where} protected header is not a JSON object")
    length = protected.get("formatLength")
    if not isinstance(length, int) or isinstance(length, bool):
        raise FormatError(f"{where} has no integer formatLength")
    if not 0 < length <= total_length:
        raise FormatError(f"{where} formatLength {length} is outside the {total_length}-byte manifest")
    tail = _b64url_decode(protected.get("formatTail"), f"{where} formatTail")
    return length, tail


def _split_payload(data: bytes) -> tuple[bytes, bool]:
    """``(payload, signed)``; see :func:`payload_of`."""
    doc = jsonio.load_object(data, "schema1 manifest")
    if "signatures" not in doc:
        return data, False
    signatures = doc["signatures"]
    if not isinstance(signatures, list):
        raise FormatError("schema1 signatures is not an array of JWS objects")
    if not signatures:
        raise FormatError("schema1 signatures array is empty; the signed payload cannot be rebuilt")
    formats = {_format_of(sig, i, len(data)) for i, sig in enumerate(signatures)}
    if len(formats) != 1:
        raise FormatError("schema1 signatures disagree on formatLength/formatTail")
    ((length, tail),) = formats
    return data[:length] + tail, True


def payload_of(data: bytes) -> bytes:
    """The bytes that define a schema1 manifest (and that its digest covers).

    Unsigned: the whole document. Signed (a top-level ``signatures`` key exists):
    ``data[:formatLength] + base64url_decode(formatTail)`` as libtrust's pretty signatures
    define it. Every signature must name the same payload; otherwise which one we picked
    would decide the digest and the layers, so disagreement is an error. Signatures are
    not cryptographically verified: the keys are throwaway (AddDummyV2S1Signature) and
    prove nothing about the content.
    """
    return _split_payload(data)[0]


def _v1_compatibility(entry: Any, index: int) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("v1Compatibility"), str):
        raise FormatError(f"schema1 history[{index}] has no v1Compatibility string")
    v1 = jsonio.loads(entry["v1Compatibility"].encode("utf-8", "surrogatepass"))
    if not isinstance(v1, dict):
        raise FormatError(f"schema1 history[{index}] v1Compatibility is not a JSON object")
    v1_id = v1.get("id")
    if not isinstance(v1_id, str) or not _V1_ID_RE.match(v1_id):
        raise FormatError(f"schema1 history[{index}] has invalid v1 id {v1_id!r}")
    parent = v1.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise FormatError(f"schema1 history[{index}] has a non-string parent")
    throwaway = v1.get("throwaway")
    if throwaway is not None and not isinstance(throwaway, bool):
        raise FormatError(f"schema1 history[{index}] has a non-boolean throwaway")
    return v1


def _blob_sum(entry: Any, index: int) -> str:
    if not isinstance(entry, dict):
        raise FormatError(f"schema1 fsLayers[{index}] is not an object")
    blob_sum = entry.get("blobSum")
    try:
        return digestlib.validate(blob_sum)
    except digestlib.DigestError as exc:
        raise FormatError(f"schema1 fsLayers[{index}]: {exc}") from None


def parse_schema1(data: bytes) -> Schema1Manifest:
    """Parse and validate a schema1 manifest (signed or not) from its downloaded bytes.

    Validation follows containers/image so that we accept and reject the same documents:
    equal, non-empty fsLayers/history; 64-hex v1 ids; a base entry without parent; a
    parent chain linking entry i to i+1; an id may repeat only in a consecutive run, and
    such a run collapses to its base-most entry (in both arrays) before anything else.
    """
    payload, signed = _split_payload(data)
    doc = jsonio.load_object(payload, "schema1 manifest payload")
    version = doc.get("schemaVersion")
    if version != 1 or isinstance(version, bool):
        raise FormatError(f"schema1 manifest has schemaVersion {version!r}, expected 1")
    declared = doc.get("mediaType")
    if declared is not None and (not isinstance(declared, str) or declared not in mt.SCHEMA1_TYPES):
        raise FormatError(f"schema1 manifest declares mediaType {declared!r}")
    foreign = [key for key in _FOREIGN_KEYS if doc.get(key) is not None]
    if foreign:
        raise FormatError(f"ambiguous schema1 manifest: unexpected fields {', '.join(foreign)}")
    fs_layers, history = doc.get("fsLayers"), doc.get("history")
    if not isinstance(fs_layers, list) or not isinstance(history, list):
        raise FormatError("schema1 manifest needs fsLayers and history arrays")
    if len(fs_layers) != len(history):
        raise FormatError(f"schema1 manifest has {len(fs_layers)} fsLayers but {len(history)} history entries")
    if not fs_layers:
        raise FormatError("schema1 manifest has no fsLayers")

    blob_sums = [_blob_sum(entry, i) for i, entry in enumerate(fs_layers)]
    v1s = [_v1_compatibility(entry, i) for i, entry in enumerate(history)]
    ids = [v1["id"] for v1 in v1s]
    if v1s[-1].get("parent"):
        raise FormatError("schema1 base layer (last history entry) has a parent")
    seen: set[str] = set()
    for i, v1_id in enumerate(ids):
        if v1_id in seen and ids[i - 1] != v1_id:
            raise FormatError(f"schema1 v1 id {v1_id} appears multiple times, not consecutively")
        seen.add(v1_id)

    # Top-first indexes; walk backwards so deleting entry i keeps later indexes valid.
    keep = list(range(len(ids)))
    for i in range(len(ids) - 2, -1, -1):
        if ids[i] == ids[i + 1]:
            del keep[i]
        elif (v1s[i].get("parent") or "") != ids[i + 1]:
            raise FormatError(
                f"schema1 history[{i}] has parent {v1s[i].get('parent')!r}, expected {ids[i + 1]}"
            )
    layers = tuple(
        Schema1Layer(
            blob_sum=blob_sums[i],
            v1=v1s[i],
            throwaway=bool(v1s[i].get("throwaway")),
            v1_raw=history[i]["v1Compatibility"],
        )
        for i in reversed(keep)
    )
    return Schema1Manifest(
        name=jsonio.optional_str(doc, "name", "schema1"),
        tag=jsonio.optional_str(doc, "tag", "schema1"),
        architecture=jsonio.optional_str(doc, "architecture", "schema1"),
        layers=layers,
        payload=payload,
        signed=signed,
        digest=digestlib.of_bytes(payload),
        all_blob_sums=tuple(reversed(blob_sums)),
    )
