"""Producing the bytes of every manifest of an image tree for one target format.

Pure: given the resolved tree, the chosen format of each manifest and (for schema1
sources) the sizes and diff_ids measured while copying layers, it returns what to
write, children first. Writing is the caller's business (a destination, or stdout
for ``inspect --as``).
"""

from __future__ import annotations

from dataclasses import dataclass

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.convert import LayerInfo, convert_image, convert_index, replace_layers
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.engine.jobs import ManifestNode, family


@dataclass(frozen=True)
class Rendered:
    node: ManifestNode
    data: bytes
    media_type: str
    digest: str
    #: A config the conversion generated, to be written before the manifest.
    new_config: tuple[Descriptor, bytes] | None
    #: The image config the written manifest points at (None for indexes).
    config_digest: str | None
    #: The descriptor a parent index uses for this manifest.
    descriptor: Descriptor


def render_tree(
    root: ManifestNode,
    formats: dict[str, str | None],
    layer_info: dict[str, LayerInfo],
    recompressed: dict[str, tuple[str, str, int]] | None = None,
) -> list[Rendered]:
    """``recompressed`` maps a source layer digest to (compression, digest, size) written."""
    out: list[Rendered] = []
    written: dict[str, Descriptor] = {}
    for node in root.walk():
        fmt = formats[node.manifest.digest]
        raw = node.manifest.data
        new_config = None
        config_digest = None
        if node.is_index:
            children = {c.manifest.digest: written[c.manifest.digest] for c in node.children}
            data, media_type, digest = convert_index(
                node.parsed, fmt or family(node.manifest.media_type), children, raw, keep=set(children)
            )
        elif fmt is None:
            data, media_type, digest = raw, node.manifest.media_type, node.manifest.digest
            config = getattr(node.parsed, "config", None)
            config_digest = config.digest if config is not None else None
        else:
            conv = convert_image(node.parsed, node.config, fmt, layer_info, raw=raw)
            if conv.config_changed:
                new_config = (conv.config_descriptor, conv.config)
            data, media_type, digest = conv.manifest, conv.media_type, conv.digest
            config_digest = conv.config_descriptor.digest
        if not node.is_index and recompressed:
            data, digest = _point_at_recompressed(node, data, media_type, digest, recompressed)
        entry = node.entry
        descriptor = Descriptor(
            media_type=media_type,
            digest=digest,
            size=len(data),
            urls=entry.urls if entry else (),
            annotations=entry.annotations if entry else (),
            platform=entry.platform if entry else None,
            artifact_type=entry.artifact_type if entry else None,
        )
        written[node.manifest.digest] = descriptor
        out.append(Rendered(node, data, media_type, digest, new_config, config_digest, descriptor))
    return out


def _point_at_recompressed(
    node: ManifestNode, data: bytes, media_type: str, digest: str, recompressed: dict[str, tuple[str, str, int]]
) -> tuple[bytes, str]:
    layers = getattr(node.parsed, "layers", ())
    replacements = {}
    for layer in layers:
        digest_of = getattr(layer, "digest", None) or getattr(layer, "blob_sum", None)
        if digest_of in recompressed:
            compression, new_digest, size = recompressed[digest_of]
            replacements[digest_of] = Descriptor(mt.layer_type(media_type, compression), new_digest, size)
    if not replacements:
        return data, digest
    return replace_layers(data, replacements)
