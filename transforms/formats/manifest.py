"""Manifest and index models, media type detection and strict parsing.

Parsing is strict about *structure* (wrong schemaVersion, a ``mediaType`` that
contradicts the declared type, keys of another format, bad descriptors) because a
document we misread would be copied or converted wrongly without anyone noticing.
It is deliberately lenient about *unknown media types inside OCI documents*: OCI
artifacts carry arbitrary config and layer types, and a copy must treat those as
opaque blobs (docs/formats.md §1, §5).

Models keep what conversion and copying need; the original bytes remain the source of
truth for anything copied unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.schema1 import Schema1Manifest, parse_schema1, payload_of

#: Content types that say nothing about which manifest format a body is, so we guess
#: from the content (registries behind CDNs, ``dir:`` layouts, plain files).
GUESS_TYPES = frozenset({"application/json", "text/plain", "application/octet-stream", ""})

#: The layer types a Docker schema2 manifest may use (containers/image rejects others).
DOCKER_LAYER_TYPES = frozenset(
    {mt.DOCKER_LAYER_GZIP, mt.DOCKER_LAYER, mt.DOCKER_FOREIGN_LAYER_GZIP, mt.DOCKER_FOREIGN_LAYER}
)

#: ``size`` of schema1 blob descriptors from :func:`blobs_of`: schema1 records no sizes.
UNKNOWN_SIZE = -1

# Keys that identify each family; any of another family's keys (with a non-null value)
# makes a document ambiguous, as in containers/image ValidateUnambiguousManifestFormat.
_FORMAT_KEYS = ("fsLayers", "history", "config", "layers", "manifests")
_ALLOWED_KEYS = {
    "schema1": frozenset({"fsLayers", "history"}),
    "image": frozenset({"config", "layers"}),
    "index": frozenset({"manifests"}),
}


@dataclass(frozen=True)
class ImageManifest:
    """A Docker schema2 or OCI image manifest (OCI artifacts included).

    ``layers`` is base first. ``annotations``, ``subject`` and ``artifact_type`` exist only
    in OCI; they are always empty/None for Docker schema2.
    """

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_SCHEMA2

    @property
    def is_image(self) -> bool:
        """True for container images, False for OCI artifacts (non-image config types)."""
        return self.is_docker or self.config.media_type == mt.OCI_CONFIG

    @property
    def has_config_blob(self) -> bool:
        """False only for the tolerated artifact placeholder config (empty digest, size 0)."""
        return bool(self.config.digest)


@dataclass(frozen=True)
class ImageIndex:
    """A Docker manifest list or an OCI image index; entries keep their ``platform``."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_LIST


Manifest = ImageManifest | ImageIndex | Schema1Manifest


def _normalise_declared(declared: str | None) -> str:
    """Drop Content-Type parameters (``; charset=utf-8``) and case, which carry no type."""
    if declared is None:
        return ""
    return declared.split(";", 1)[0].strip().lower()


def detect_media_type(data: bytes, declared: str | None) -> str:
    """The manifest media type of ``data``.

    A declared known manifest type (HTTP Content-Type, a descriptor's mediaType) is
    authoritative. Anything else — the generic types in :data:`GUESS_TYPES`, nothing at
    all, or a type we do not know — is a guess from content, as containers/image does:
    a known top-level ``mediaType`` wins; ``schemaVersion`` 1 is schema1 (signed iff a
    ``signatures`` key exists); ``schemaVersion`` 2 without a known ``mediaType`` is an OCI
    index if it has ``manifests`` and an OCI manifest otherwise (so a Docker schema2 body
    that lost its ``mediaType`` is read as OCI, exactly like containers/image).
    """
    normalised = _normalise_declared(declared)
    if normalised in mt.MANIFEST_TYPES:
        return normalised
    doc = jsonio.load_object(data, "manifest")
    top = doc.get("mediaType")
    if isinstance(top, str) and top in mt.MANIFEST_TYPES:
        return top
    version = doc.get("schemaVersion")
    if isinstance(version, int) and not isinstance(version, bool):
        if version == 1:
            return mt.DOCKER_SCHEMA1_SIGNED if "signatures" in doc else mt.DOCKER_SCHEMA1
        if version == 2:
            return mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST
    what = f" (declared {declared!r})" if normalised and normalised not in GUESS_TYPES else ""
    raise FormatError(f"not a recognisable manifest{what}: schemaVersion {version!r}")


def _check_envelope(doc: dict[str, Any], media_type: str, family: str) -> None:
    """schemaVersion 2, a non-contradicting mediaType, and no keys of another format."""
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise FormatError(f"{media_type} needs schemaVersion 2, got {version!r}")
    top = doc.get("mediaType")
    if top is not None and top != media_type:
        raise FormatError(f"document declares mediaType {top!r} but was expected to be {media_type}")
    allowed = _ALLOWED_KEYS[family]
    foreign = [key for key in _FORMAT_KEYS if key not in allowed and doc.get(key) is not None]
    if foreign:
        raise FormatError(f"ambiguous {media_type}: unexpected fields {', '.join(foreign)}")


def _descriptor(data: Any, where: str) -> Descriptor:
    """A descriptor with the field types the specs require; errors say where it was."""
    if not isinstance(data, dict):
        raise FormatError(f"{where} is not a descriptor object")
    urls = data.get("urls")
    if urls is not None and (not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
        raise FormatError(f"{where} urls is not an array of strings")
    for key in ("artifactType", "data"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise FormatError(f"{where} {key} is not a string")
    platform = data.get("platform")
    if isinstance(platform, dict):
        for key in ("variant", "os.version"):
            if platform.get(key) is not None and not isinstance(platform[key], str):
                raise FormatError(f"{where} platform {key} is not a string")
        for key in ("os.features", "features"):
            value = platform.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise FormatError(f"{where} platform {key} is not an array of strings")
    try:
        return Descriptor.from_dict(data)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _annotations(doc: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    value = doc.get("annotations")
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{where} annotations is not a map of strings")
    return tuple(value.items())


def _oci_extras(doc: dict[str, Any], where: str) -> tuple[tuple[tuple[str, str], ...], Descriptor | None, str | None]:
    """``annotations``, ``subject`` and ``artifactType`` of an OCI manifest or index."""
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise FormatError(f"{where} artifactType is not a string")
    subject = doc.get("subject")
    return (
        _annotations(doc, where),
        _descriptor(subject, f"{where} subject") if subject is not None else None,
        artifact_type or None,
    )


def _config(doc: dict[str, Any], media_type: str) -> Descriptor:
    config = doc.get("config")
    if config is None:
        raise FormatError(f"{media_type} has no config descriptor")
    if (
        media_type == mt.OCI_MANIFEST
        and isinstance(config, dict)
        and config.get("digest") == ""
        and config.get("size") == 0
        and isinstance(config.get("mediaType"), str)
        and config["mediaType"] not in (mt.OCI_CONFIG, "")
    ):
        # Artifacts seen in the wild (and containers/image test data) use a placeholder
        # config with no content at all; there is no blob to copy, so accept it as such.
        return Descriptor(media_type=config["mediaType"], digest="", size=0)
    return _descriptor(config, f"{media_type} config")


def _parse_image(doc: dict[str, Any], media_type: str) -> ImageManifest:
    _check_envelope(doc, media_type, "image")
    docker = media_type == mt.DOCKER_SCHEMA2
    if docker and doc.get("mediaType") is None:
        # containers/image rejects this too (SupportedSchema2MediaType("")); a schema2
        # body without mediaType is only ever read as OCI when its type is guessed.
        raise FormatError(f"{media_type} document has no mediaType field")
    config = _config(doc, media_type)
    raw_layers = doc.get("layers")
    if raw_layers is None and not docker and config.media_type != mt.OCI_CONFIG:
        raw_layers = []  # "layers": null in OCI artifacts: nothing to carry.
    if not isinstance(raw_layers, list):
        raise FormatError(f"{media_type} layers is not an array")
    layers = tuple(_descriptor(layer, f"{media_type} layers[{i}]") for i, layer in enumerate(raw_layers))
    if docker:
        for i, layer in enumerate(layers):
            if layer.media_type not in DOCKER_LAYER_TYPES:
                raise FormatError(f"{media_type} layers[{i}] has unsupported media type {layer.media_type!r}")
        return ImageManifest(media_type=media_type, config=config, layers=layers)
    annotations, subject, artifact_type = _oci_extras(doc, media_type)
    return ImageManifest(media_type, config, layers, annotations, subject, artifact_type)


def _parse_index(doc: dict[str, Any], media_type: str) -> ImageIndex:
    _check_envelope(doc, media_type, "index")
    docker = media_type == mt.DOCKER_LIST
    if "manifests" not in doc:
        raise FormatError(f"{media_type} has no manifests array")
    raw = doc["manifests"]
    if raw is None and not docker:
        raw = []  # Docker 25 writes "manifests": null for an untagged `docker save`.
    if not isinstance(raw, list):
        raise FormatError(f"{media_type} manifests is not an array")
    manifests = tuple(_descriptor(entry, f"{media_type} manifests[{i}]") for i, entry in enumerate(raw))
    if docker:
        return ImageIndex(media_type=media_type, manifests=manifests)
    annotations, subject, artifact_type = _oci_extras(doc, media_type)
    return ImageIndex(media_type, manifests, annotations, subject, artifact_type)


def parse_manifest(data: bytes, media_type: str | None) -> ImageManifest | ImageIndex | Schema1Manifest:
    """Parse ``data`` strictly as the type :func:`detect_media_type` settles on.

    Raises :class:`FormatError` with a one-line message for anything malformed. Unknown
    config/layer media types are accepted in OCI manifests (artifacts), not in Docker
    schema2, matching containers/image.
    """
    kind = detect_media_type(data, media_type)
    if kind in mt.SCHEMA1_TYPES:
        return parse_schema1(data)
    doc = jsonio.load_object(data, kind)
    if kind in mt.IMAGE_MANIFEST_TYPES:
        return _parse_image(doc, kind)
    return _parse_index(doc, kind)


def manifest_digest(data: bytes, media_type: str | None) -> str:
    """The canonical digest of a manifest: schema1 payload digest, else sha256 of the bytes.

    For schema1 the payload digest applies whatever the declared schema1 flavour is, since
    it is the content (a ``signatures`` key) that makes the file differ from its payload.
    """
    if detect_media_type(data, media_type) in mt.SCHEMA1_TYPES:
        return digestlib.of_bytes(payload_of(data))
    return digestlib.of_bytes(data)


def blobs_of(m: ImageManifest | ImageIndex | Schema1Manifest) -> list[Descriptor]:
    """Every blob a manifest references, in manifest order: config first, then layers.

    Duplicates are kept (a layer may legitimately appear twice); copiers de-duplicate.
    An index references manifests, not blobs, so it yields nothing. A schema1 manifest
    yields every ``blobSum`` of its payload base first — including throwaway entries and
    entries collapsed by de-duplication, because the destination must hold them all —
    with Docker's gzip layer type and :data:`UNKNOWN_SIZE`, since schema1 records no sizes.
    """
    if isinstance(m, ImageIndex):
        return []
    if isinstance(m, Schema1Manifest):
        sums = m.all_blob_sums or tuple(layer.blob_sum for layer in m.layers)
        return [Descriptor(mt.DOCKER_LAYER_GZIP, blob_sum, UNKNOWN_SIZE) for blob_sum in sums]
    if isinstance(m, ImageManifest):
        config = [m.config] if m.has_config_blob else []
        return config + list(m.layers)
    raise TypeError(f"not a manifest model: {type(m).__name__}")


def schema2_manifest(config: Descriptor, layers: Iterable[Descriptor]) -> bytes:
    """A Docker schema2 manifest we generate (conversion, a docker-archive's image)."""
    return jsonio.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_SCHEMA2,
            "config": config.to_docker_dict(),
            "layers": [layer.to_docker_dict() for layer in layers],
        }
    )


def oci_manifest(
    config: Descriptor,
    layers: Iterable[Descriptor],
    annotations: tuple[tuple[str, str], ...] = (),
    subject: Descriptor | None = None,
    artifact_type: str | None = None,
) -> bytes:
    """An OCI image manifest we generate, fields in image-spec's Go order."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.to_dict()
    doc["layers"] = [layer.to_dict() for layer in layers]
    if subject is not None:
        doc["subject"] = subject.to_dict()
    if annotations:
        doc["annotations"] = dict(sorted(annotations))
    return jsonio.dumps(doc)
