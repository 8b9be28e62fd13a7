"""``inspect``: an image's manifest or config, as stored or converted, without a pipeline."""

from __future__ import annotations

from imagepush.transforms.engine.streaming import DEFAULT_CHUNK, DiffIdHasher
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats.convert import LayerInfo
from imagepush.transforms.formats.schema1 import Schema1Manifest
from imagepush.transforms.engine.naming import copy_job
from imagepush.transforms.engine.jobs import ManifestNode, choose_format
from imagepush.transforms.engine.render import render_tree
from imagepush.transforms.engine.resolve import resolve_tree
from imagepush.transforms.stores.base import Source, StoreError
from imagepush.transforms.stores.refs import ImageReference
from imagepush.transforms.engine.streaming import BlobVerificationError
from imagepush.transforms.stores.cache import StoreCache
from imagepush.transforms.stores.options import StoreOptions


def measure_layers(source: Source, node: ManifestNode) -> dict[str, LayerInfo]:
    """Sizes and diff_ids of a schema1 image's layers, read (and verified) from the source."""
    info: dict[str, LayerInfo] = {}
    for sub in node.walk():
        if not isinstance(sub.parsed, Schema1Manifest):
            continue
        for layer in sub.parsed.layers:
            if layer.throwaway or layer.blob_sum in info:
                continue
            h, diff, size = digestlib.hasher(layer.blob_sum), DiffIdHasher(), 0
            with source.open_blob(layer.blob_sum) as f:
                while chunk := f.read(DEFAULT_CHUNK):
                    h.update(chunk)
                    diff.update(chunk)
                    size += len(chunk)
            if digestlib.of_hasher(h) != layer.blob_sum:
                raise BlobVerificationError(f"layer {layer.blob_sum} does not match its digest")
            info[layer.blob_sum] = LayerInfo(size=size, diff_id=diff.digest())
    return info


def inspect_image(
    ref: ImageReference,
    *,
    config: bool,
    as_format: str | None,
    platforms: tuple[str, ...],
    options: StoreOptions | None = None,
) -> bytes:
    job = copy_job(ref, [], platforms)
    stores = StoreCache(options)
    try:
        source = stores.source(job.source_store)
        root = resolve_tree(source, job)
        if platforms and root.is_index:
            # Platforms pick images of an index: what is shown is the image chosen, not the
            # index with the others left out (which no store holds).
            if len(root.children) != 1:
                raise StoreError(f"{ref}: --platform {', '.join(platforms)} selects {len(root.children)} images "
                                 f"of its index; name one platform")
            root = root.children[0]
        if config and root.is_index:
            if len(root.children) != 1:
                raise StoreError(f"{ref} is an index of {len(root.children)} images; choose one with --platform")
            root = root.children[0]
        if as_format is None:
            if not config:
                return root.manifest.data
            if root.config is None:
                raise StoreError(f"{ref} has no image config (a schema1 manifest keeps it inside; use --as)")
            return root.config
        formats = {
            n.manifest.digest: choose_format(n.manifest.media_type, as_format, lambda _: True, as_format)
            for n in root.walk()
        }
        rendered = render_tree(root, formats, measure_layers(source, root))[-1]
        if not config:
            return rendered.data
        if rendered.new_config is not None:
            return rendered.new_config[1]
        return root.config
    finally:
        stores.close()
