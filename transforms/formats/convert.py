"""Format conversion between Docker schema1, Docker schema2 and OCI, without I/O.

The rules follow containers/image (what skopeo/podman/buildah do, docs/formats.md §6):

* schema2 → OCI rewrites the config through the OCI image struct (Docker-only fields
  vanish, so the config digest changes) and maps layer media types one to one;
* OCI → schema2 reuses the config bytes unchanged and refuses what Docker cannot express
  (non-image artifacts, zstd, unknown layer types);
* schema1 → schema2/OCI builds a config from the top history entry and needs, from the
  caller, every layer's real size and uncompressed diffID, which schema1 never recorded.

Every generated document is serialised with :func:`jsonio.dumps` from dicts built in the
field order of the Go structs those tools marshal, so output is deterministic and, where
the inputs agree, byte-identical to theirs. When no conversion is needed the original
bytes are returned untouched: a re-serialised manifest would get a new digest for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import (
    ImageIndex,
    ImageManifest,
    oci_manifest,
    parse_manifest,
    schema2_manifest,
)
from imagepush.transforms.formats.schema1 import Schema1Manifest

TARGET_OCI = "oci"
TARGET_V2S2 = "v2s2"
_MANIFEST_TARGETS = {TARGET_OCI: mt.OCI_MANIFEST, TARGET_V2S2: mt.DOCKER_SCHEMA2}
_INDEX_TARGETS = {TARGET_OCI: mt.OCI_INDEX, TARGET_V2S2: mt.DOCKER_LIST}

_DOCKER_TO_OCI_LAYER = {
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    mt.DOCKER_LAYER: mt.OCI_LAYER,
    mt.DOCKER_FOREIGN_LAYER: mt.OCI_ND_LAYER,
    mt.DOCKER_FOREIGN_LAYER_GZIP: mt.OCI_ND_LAYER_GZIP,
}
_OCI_TO_DOCKER_LAYER = {oci: docker for docker, oci in _DOCKER_TO_OCI_LAYER.items()}
_ZSTD_LAYERS = frozenset({mt.OCI_LAYER_ZSTD, mt.OCI_ND_LAYER_ZSTD})

#: Manifest types a Docker manifest list may point at (it cannot nest lists).
_DOCKER_LIST_CHILDREN = frozenset({mt.DOCKER_SCHEMA2, mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED})

#: v1Compatibility keys that describe the legacy v1 layer chain, not the image.
_V1_ONLY_KEYS = frozenset({"id", "parent", "parent_id", "layer_id", "throwaway", "Size"})


@dataclass(frozen=True)
class LayerInfo:
    """What schema1 lacks for one compressed layer blob: its size and its diffID.

    The diffID is the digest of the *uncompressed* tar, so someone has to download and
    decompress the layer to know it; conversion itself stays pure and takes it as input.
    """

    size: int
    diff_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise FormatError(f"layer size {self.size!r} is not a non-negative integer")
        try:
            digestlib.validate(self.diff_id)
        except digestlib.DigestError as exc:
            raise FormatError(f"layer diffID: {exc}") from None


@dataclass(frozen=True)
class ConvertedImage:
    """An image manifest in the target format plus the config blob it references.

    ``config_changed`` tells the caller whether ``config`` is a new blob that must be
    uploaded (schema2→OCI and schema1 sources) or the source config unchanged.
    """

    manifest: bytes
    media_type: str
    digest: str
    config: bytes
    config_descriptor: Descriptor
    config_changed: bool


# --------------------------------------------------------------------------- helpers


def _target(table: dict[str, str], target: str) -> str:
    try:
        return table[target]
    except KeyError:
        raise ValueError(f"unknown conversion target {target!r}; use 'oci' or 'v2s2'") from None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` only when ``value`` is not empty: Go's ``omitempty``, which the outputs follow."""
    if value:
        out[key] = value


def _str_list(value: Any, where: str, *, allow_string: bool = False) -> list[str]:
    """A list of strings; Docker's StrSlice also accepts one bare string (``allow_string``)."""
    if value is None:
        return []
    if allow_string and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"{where} is not an array of strings")
    return value


def _set_map(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """A Go ``map[string]struct{}`` (ExposedPorts, Volumes): keys sorted, values ``{}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(v is None or isinstance(v, dict) for v in value.values()):
        raise FormatError(f"{where} is not a map of objects")
    return {key: {} for key in sorted(value)}


def _str_map(value: Any, where: str) -> dict[str, str]:
    """A Go ``map[string]string`` (Labels): keys sorted like Go's encoder emits them."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{where} is not a map of strings")
    return {key: value[key] for key in sorted(value)}


def _check_config_bytes(m: ImageManifest, config: bytes) -> None:
    """Refuse to build on config bytes that are not the ones the manifest names.

    A conversion derives the new config (and with it the new digests) from these bytes; a
    mix-up between images would otherwise produce a plausible, wrong image.
    """
    if not digestlib.matches(m.config.digest, config):
        raise FormatError(f"config bytes do not match the manifest's config digest {m.config.digest}")


# --------------------------------------------------------------------------- configs


def _oci_runtime_config(value: Any) -> dict[str, Any]:
    """The OCI ``config`` object: only fields the OCI ImageConfig has, empty ones omitted."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError("image config config is not an object")
    where = "image config config"
    out: dict[str, Any] = {}
    _put(out, "User", jsonio.optional_str(value, "User", where))
    _put(out, "ExposedPorts", _set_map(value.get("ExposedPorts"), f"{where} ExposedPorts"))
    _put(out, "Env", _str_list(value.get("Env"), f"{where} Env"))
    _put(out, "Entrypoint", _str_list(value.get("Entrypoint"), f"{where} Entrypoint", allow_string=True))
    _put(out, "Cmd", _str_list(value.get("Cmd"), f"{where} Cmd", allow_string=True))
    _put(out, "Volumes", _set_map(value.get("Volumes"), f"{where} Volumes"))
    _put(out, "WorkingDir", jsonio.optional_str(value, "WorkingDir", where))
    _put(out, "Labels", _str_map(value.get("Labels"), f"{where} Labels"))
    _put(out, "StopSignal", jsonio.optional_str(value, "StopSignal", where))
    args_escaped = value.get("ArgsEscaped")
    if args_escaped is not None and not isinstance(args_escaped, bool):
        raise FormatError(f"{where} ArgsEscaped is not a boolean")
    if args_escaped:
        out["ArgsEscaped"] = True
    return out


def _oci_rootfs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError("image config has no rootfs object; an OCI config requires one")
    rootfs_type = value.get("type")
    if not isinstance(rootfs_type, str):
        raise FormatError("image config rootfs type is not a string")
    raw_ids = value.get("diff_ids")
    diff_ids = None if raw_ids is None else _str_list(raw_ids, "image config rootfs diff_ids")
    # Go's RootFS.DiffIDs has no omitempty: an absent list is written as null, not [].
    return {"type": rootfs_type, "diff_ids": diff_ids}


def _oci_history(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError("image config history is not an array")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise FormatError(f"image config history[{i}] is not an object")
        where = f"image config history[{i}]"
        item: dict[str, Any] = {}
        created = jsonio.optional_str(entry, "created", where)
        if created:  # "" is taken as absent, like the top-level created
            item["created"] = jsonio.go_time(created, f"{where} created")
        for key in ("created_by", "author", "comment"):
            text = jsonio.optional_str(entry, key, where)
            if text:
                item[key] = text
        empty = entry.get("empty_layer")
        if empty is not None and not isinstance(empty, bool):
            raise FormatError(f"{where} empty_layer is not a boolean")
        if empty:
            item["empty_layer"] = True
        out.append(item)
    return out


def docker_config_to_oci(config: bytes) -> bytes:
    """Rewrite a Docker image config as an OCI image config.

    Mirrors containers/image, which unmarshals the Docker config into the OCI ``Image``
    struct and marshals it again: only OCI fields survive (``container``,
    ``container_config``, ``docker_version``, ``id``, ``parent``, ``Size``, ``Hostname``,
    ``OnBuild``, ``Healthcheck`` … are dropped), keys come out in the struct order of the
    image-spec version skopeo 1.9.3 vendors (``variant`` between ``architecture`` and
    ``os``), map keys sorted, empty optional fields omitted, timestamps in Go's canonical
    form (:func:`jsonio.go_time`). ``architecture`` and ``os`` have no ``omitempty`` in that
    struct, so a config without them gets empty strings, exactly as containers/image
    writes it; nothing is guessed (the converting host's platform would make the output
    depend on where it ran, and any fixed default would break byte-equality with skopeo).
    A missing ``rootfs`` is an error rather than an invalid empty one. ``config`` is always
    present (possibly ``{}``) because Go's encoder cannot omit a struct.
    """
    doc = jsonio.load_object(config, "image config")
    where = "image config"
    out: dict[str, Any] = {}
    created = jsonio.optional_str(doc, "created", where)
    if created:
        out["created"] = jsonio.go_time(created, f"{where} created")
    _put(out, "author", jsonio.optional_str(doc, "author", where))
    out["architecture"] = jsonio.optional_str(doc, "architecture", where)
    _put(out, "variant", jsonio.optional_str(doc, "variant", where))
    out["os"] = jsonio.optional_str(doc, "os", where)
    _put(out, "os.version", jsonio.optional_str(doc, "os.version", where))
    _put(out, "os.features", _str_list(doc.get("os.features"), f"{where} os.features"))
    out["config"] = _oci_runtime_config(doc.get("config"))
    out["rootfs"] = _oci_rootfs(doc.get("rootfs"))
    _put(out, "history", _oci_history(doc.get("history")))
    return jsonio.dumps(out)


def oci_config_to_docker(config: bytes) -> bytes:
    """The Docker schema2 config for an OCI image config: the very same bytes.

    An OCI image config is a valid Docker image config (Docker's format is the OCI one plus
    optional extras), and containers/image converts OCI→schema2 by only changing the config
    descriptor's media type. Returning the bytes unchanged keeps the config digest — the
    image ID — stable, so the converted image is recognisably the same image.
    """
    return config


def schema1_to_docker_config(m: Schema1Manifest, diff_ids: list[str]) -> bytes:
    """Build a Docker schema2 config for a schema1 image, as containers/image does.

    Starts from the top (newest) entry's v1Compatibility as a raw map — unknown keys, and
    even ``container_config``/``docker_version``, are kept — drops the v1 chain keys
    (``id``, ``parent``, ``parent_id``, ``layer_id``, ``throwaway``, ``Size``) and adds
    ``rootfs`` with ``diff_ids`` (uncompressed digests of the non-throwaway layers, base
    first) and ``history`` with one entry per schema1 entry, base first, throwaway entries
    marked ``empty_layer``. ``created_by`` is ``container_config.Cmd`` joined by spaces, the
    way Docker recorded build steps; history ``created`` is always present, in Go's
    canonical form (the zero time when the entry had none), while the top-level values,
    ``created`` included, are copied as they were (containers/image keeps them as raw JSON).
    Top-level keys are sorted, as Go emits a map. A missing ``os`` or ``architecture`` stays
    missing: containers/image adds neither, and filling them in (as kpod/buildah-era
    defaults did) would give a config, and an image ID, that skopeo never produces.
    """
    wanted = sum(1 for layer in m.layers if not layer.throwaway)
    if len(diff_ids) != wanted:
        raise FormatError(f"schema1 image has {wanted} non-empty layers but {len(diff_ids)} diffIDs were given")
    for diff_id in diff_ids:
        try:
            digestlib.validate(diff_id)
        except digestlib.DigestError as exc:
            raise FormatError(f"diffID: {exc}") from None

    history = []
    for i, layer in enumerate(m.layers):
        where = f"schema1 layer {i} (base first) v1Compatibility"
        container_config = layer.v1.get("container_config")
        if container_config is not None and not isinstance(container_config, dict):
            raise FormatError(f"{where} container_config is not an object")
        cmd = _str_list((container_config or {}).get("Cmd"), f"{where} container_config.Cmd")
        created = jsonio.optional_str(layer.v1, "created", where)
        # Schema2History.Created is a time.Time without omitempty: always written, the
        # zero time when the entry had none, and in Go's canonical spelling.
        item: dict[str, Any] = {
            "created": jsonio.go_time(created, f"{where} created") if created else jsonio.GO_ZERO_TIME
        }
        for key, value in (
            ("author", jsonio.optional_str(layer.v1, "author", where)),
            ("created_by", " ".join(cmd)),
            ("comment", jsonio.optional_str(layer.v1, "comment", where)),
        ):
            if value:
                item[key] = value
        if layer.throwaway:
            item["empty_layer"] = True
        history.append(item)

    top = m.layers[-1]
    values = jsonio.raw_members(top.v1_raw, "schema1 top v1Compatibility") if top.v1_raw else top.v1
    raw = {key: value for key, value in values.items() if key not in _V1_ONLY_KEYS}
    rootfs: dict[str, Any] = {"type": "layers"}
    if diff_ids:
        rootfs["diff_ids"] = list(diff_ids)
    raw["rootfs"] = rootfs
    raw["history"] = history
    return jsonio.dumps({key: raw[key] for key in sorted(raw)})


# --------------------------------------------------------------------------- manifests


def _schema2_to_oci(m: ImageManifest, config: bytes) -> ConvertedImage:
    layers = []
    for i, layer in enumerate(m.layers):
        new_type = _DOCKER_TO_OCI_LAYER.get(layer.media_type)
        if new_type is None:
            raise FormatError(
                f"layer {i} ({layer.digest}) has media type {layer.media_type!r}, unknown to OCI conversion"
            )
        layers.append(Descriptor(new_type, layer.digest, layer.size, urls=layer.urls))
    _check_config_bytes(m, config)
    oci_config = docker_config_to_oci(config)
    config_descriptor = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(oci_config), len(oci_config))
    manifest = oci_manifest(config_descriptor, layers)
    return ConvertedImage(
        manifest=manifest,
        media_type=mt.OCI_MANIFEST,
        digest=digestlib.of_bytes(manifest),
        config=oci_config,
        config_descriptor=config_descriptor,
        config_changed=config_descriptor.digest != m.config.digest,
    )


def _oci_to_schema2(m: ImageManifest, config: bytes) -> ConvertedImage:
    if m.config.media_type != mt.OCI_CONFIG:
        raise FormatError(
            f"cannot convert a non-image artifact (config media type {m.config.media_type!r}) to Docker schema2"
        )
    layers = []
    for i, layer in enumerate(m.layers):
        if layer.media_type in _ZSTD_LAYERS:
            raise FormatError(
                f"zstd layers cannot be written as Docker schema2 (layer {i}, {layer.digest}); recompress to gzip first"
            )
        new_type = _OCI_TO_DOCKER_LAYER.get(layer.media_type)
        if new_type is None:
            raise FormatError(
                f"layer {i} ({layer.digest}) has media type {layer.media_type!r}, which Docker schema2 cannot express"
            )
        layers.append(Descriptor(new_type, layer.digest, layer.size, urls=layer.urls))
    _check_config_bytes(m, config)
    config_descriptor = Descriptor(mt.DOCKER_CONFIG, m.config.digest, len(config), urls=m.config.urls)
    manifest = schema2_manifest(config_descriptor, layers)
    return ConvertedImage(
        manifest=manifest,
        media_type=mt.DOCKER_SCHEMA2,
        digest=digestlib.of_bytes(manifest),
        config=oci_config_to_docker(config),
        config_descriptor=config_descriptor,
        config_changed=False,
    )


def _from_schema1(m: Schema1Manifest, target_type: str, layer_info: dict[str, LayerInfo] | None) -> ConvertedImage:
    if layer_info is None:
        raise FormatError("converting a schema1 manifest needs the size and diffID of every layer")
    kept = [layer for layer in m.layers if not layer.throwaway]
    infos = []
    for layer in kept:
        info = layer_info.get(layer.blob_sum)
        if info is None:
            raise FormatError(f"no size/diffID known for schema1 layer {layer.blob_sum}")
        infos.append(info)
    docker_config = schema1_to_docker_config(m, [info.diff_id for info in infos])
    if target_type == mt.OCI_MANIFEST:
        config, config_type, layer_type = docker_config_to_oci(docker_config), mt.OCI_CONFIG, mt.OCI_LAYER_GZIP
    else:
        config, config_type, layer_type = docker_config, mt.DOCKER_CONFIG, mt.DOCKER_LAYER_GZIP
    config_descriptor = Descriptor(config_type, digestlib.of_bytes(config), len(config))
    layers = [Descriptor(layer_type, layer.blob_sum, info.size) for layer, info in zip(kept, infos)]
    if target_type == mt.OCI_MANIFEST:
        manifest = oci_manifest(config_descriptor, layers)
    else:
        manifest = schema2_manifest(config_descriptor, layers)
    return ConvertedImage(
        manifest=manifest,
        media_type=target_type,
        digest=digestlib.of_bytes(manifest),
        config=config,
        config_descriptor=config_descriptor,
        config_changed=True,
    )


def convert_image(
    m: ImageManifest | Schema1Manifest,
    config: bytes,
    target: str,
    layer_info: dict[str, LayerInfo] | None = None,
    raw: bytes | None = None,
) -> ConvertedImage:
    """Convert one image manifest to ``target`` (``"oci"`` or ``"v2s2"``).

    ``config`` is the source config blob (ignored for schema1, which has none).
    ``layer_info`` maps compressed layer digests to :class:`LayerInfo` and is needed only
    for schema1 sources. ``raw`` is the source manifest's exact bytes: when the source is
    already in the target format they are returned unchanged (digest preserved), which
    is containers/image's copy policy — convert only when the destination requires it.
    """
    target_type = _target(_MANIFEST_TARGETS, target)
    if isinstance(m, Schema1Manifest):
        return _from_schema1(m, target_type, layer_info)
    if not isinstance(m, ImageManifest):
        raise TypeError(f"cannot convert {type(m).__name__}; indexes go through convert_index")
    if m.media_type == target_type:
        if raw is None:
            raise ValueError("raw manifest bytes are required when no conversion is needed")
        return ConvertedImage(
            manifest=raw,
            media_type=target_type,
            digest=digestlib.of_bytes(raw),
            config=config,
            config_descriptor=m.config,
            config_changed=False,
        )
    if target_type == mt.OCI_MANIFEST:
        return _schema2_to_oci(m, config)
    return _oci_to_schema2(m, config)


# --------------------------------------------------------------------------- indexes


def _updated_entry(old: Descriptor, new: Descriptor | None) -> Descriptor:
    """An index entry pointing at the (possibly converted) child ``new``.

    Media type, digest and size come from the child. Platform and annotations describe the
    entry, not the bytes, so they stay (the child's platform fills in only where the entry
    had none). ``urls`` and ``data`` describe the old bytes and are dropped when those change.
    """
    if new is None:
        return old
    same = new.digest == old.digest
    return Descriptor(
        media_type=new.media_type,
        digest=new.digest,
        size=new.size,
        urls=old.urls if same else new.urls,
        annotations=old.annotations,
        platform=old.platform or new.platform,
        artifact_type=old.artifact_type if same else new.artifact_type,
        data=old.data if same else None,
    )


def _docker_list_entry(d: Descriptor) -> dict[str, Any]:
    if d.platform is None:
        raise FormatError(f"index entry {d.digest} has no platform; a Docker manifest list needs one")
    if d.media_type not in _DOCKER_LIST_CHILDREN:
        raise FormatError(
            f"index entry {d.digest} is {d.media_type!r}, which a Docker manifest list cannot reference"
        )
    out = d.to_docker_dict()
    out["platform"] = d.platform.to_dict(docker=True)
    return out


def convert_index(
    index: ImageIndex,
    target: str,
    children: dict[str, Descriptor],
    raw: bytes,
    keep: set[str] | frozenset[str] | None = None,
) -> tuple[bytes, str, str]:
    """Convert a Docker manifest list or OCI index; returns ``(bytes, media type, digest)``.

    ``children`` maps each child's *old* digest to the descriptor of what was written for
    it (new media type, digest, size). Entries keep their platform; going to OCI drops
    Docker's CPU ``features`` (no OCI field); going to Docker drops annotations, subject and
    artifactType and refuses entries without a platform instead of inventing the host's,
    as containers/image would. With ``keep``, entries whose digest is not in it (filtered
    out by platform) are dropped. Nothing changed and the type already matches: ``raw`` is
    returned as is.
    """
    target_type = _target(_INDEX_TARGETS, target)
    kept = [entry for entry in index.manifests if keep is None or entry.digest in keep]
    entries = [_updated_entry(entry, children.get(entry.digest)) for entry in kept]
    changed = len(kept) != len(index.manifests) or any(
        (old.media_type, old.digest, old.size) != (new.media_type, new.digest, new.size)
        for old, new in zip(kept, entries)
    )
    if not changed and index.media_type == target_type:
        return raw, target_type, digestlib.of_bytes(raw)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": target_type}
    if target_type == mt.DOCKER_LIST:
        doc["manifests"] = [_docker_list_entry(entry) for entry in entries]
    else:
        if index.artifact_type:
            doc["artifactType"] = index.artifact_type
        doc["manifests"] = [entry.to_dict() for entry in entries]
        if index.subject is not None:
            doc["subject"] = index.subject.to_dict()
        if index.annotations:
            doc["annotations"] = dict(sorted(index.annotations))
    data = jsonio.dumps(doc)
    return data, target_type, digestlib.of_bytes(data)


def replace_layers(manifest: bytes, replacements: dict[str, Descriptor]) -> tuple[bytes, str]:
    """Point an image manifest's layers at recompressed blobs; returns (bytes, digest).

    containers/image writes a recompressed image by marshalling its manifest struct again,
    so the result is rebuilt the same way: fields in the Go struct order, annotation maps
    sorted, fields the struct does not know dropped. A replaced layer takes the new
    ``mediaType``, ``digest`` and ``size`` and loses its ``annotations`` and ``urls``: they
    describe the old compressed bytes (a stargz TOC digest, a zstd:chunked checksum, a
    mirror of the old blob) and would be wrong for the new ones, which is also why
    skopeo drops them. Layers that were not replaced keep everything.
    """
    m = parse_manifest(manifest, None)
    if not isinstance(m, ImageManifest):
        raise FormatError("only an image manifest has layers to replace")
    layers = []
    for layer in m.layers:
        new = replacements.get(layer.digest)
        layers.append(layer if new is None else Descriptor(new.media_type, new.digest, new.size))
    if m.media_type == mt.DOCKER_SCHEMA2:
        data = schema2_manifest(m.config, layers)
    else:
        data = oci_manifest(m.config, layers, m.annotations, m.subject, m.artifact_type)
        if "mediaType" not in jsonio.load_object(manifest, "manifest"):
            # OCI's mediaType is optional (omitempty in Go): a manifest without it stays without.
            doc = jsonio.load_object(data, "manifest")
            del doc["mediaType"]
            data = jsonio.dumps(doc)
    return data, digestlib.of_bytes(data)
