"""Reading an image's manifest tree: manifests and configs only, never layer bytes.

Beam-free, so that ``inspect`` and ``ls`` start fast and the DoFns stay thin.
"""

from __future__ import annotations

import hashlib

from imagepush.transforms.engine.streaming import BlobVerificationError
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import ImageIndex, ImageManifest, parse_manifest
from imagepush.transforms.engine.jobs import CopyJob, ManifestNode, filter_platforms
from imagepush.transforms.stores.base import Source, StoreError

#: Manifests and configs above this are refused, as registries and containers/image do.
MAX_DOCUMENT = 4 << 20
_CONFIG_TYPES = frozenset({mt.DOCKER_CONFIG, mt.OCI_CONFIG, "application/octet-stream"})
_MAX_DEPTH = 4



def read_small_blob(source: Source, descriptor: Descriptor) -> bytes:
    """Read a config-sized blob whole, verifying its digest."""
    if descriptor.size > MAX_DOCUMENT:
        raise FormatError(f"config {descriptor.digest} is {descriptor.size} bytes, over the 4 MiB limit")
    with source.open_blob(descriptor.digest) as f:
        data = f.read(MAX_DOCUMENT + 1)
    algorithm, encoded = descriptor.digest.split(":", 1)
    if hashlib.new(algorithm, data).hexdigest() != encoded:
        raise BlobVerificationError(f"config blob does not match its digest {descriptor.digest}")
    if len(data) != descriptor.size:
        raise BlobVerificationError(
            f"config {descriptor.digest} has {len(data)} bytes, its descriptor says {descriptor.size}"
        )
    return data


def resolve_tree(source: Source, job: CopyJob, *, configs: bool = True) -> ManifestNode:
    """The job's root manifest and the children its platforms keep.

    ``configs=False`` leaves image configs unread: a copy that keeps manifests as they
    are never needs them, and a sync of thousands of images saves a request for each.
    """
    root = source.get_manifest(job.digest) if job.digest else source.get_root(job.image)
    return _node(source, root, None, job.platforms, 0, configs)


def load_config(source: Source, node: ManifestNode) -> bytes | None:
    """Read (once) the config of an image manifest whose conversion needs it."""
    parsed = node.parsed
    if node.config is None and isinstance(parsed, ImageManifest) and parsed.has_config_blob \
            and parsed.config.media_type in _CONFIG_TYPES:
        node.config = read_small_blob(source, parsed.config)
    return node.config


def _node(source: Source, blob, entry: Descriptor | None, platforms, depth: int, configs: bool) -> ManifestNode:
    if len(blob.data) > MAX_DOCUMENT:
        raise FormatError(f"manifest {blob.digest} is over the 4 MiB limit")
    parsed = parse_manifest(blob.data, blob.media_type)
    node = ManifestNode(manifest=blob, parsed=parsed, entry=entry)
    if isinstance(parsed, ImageIndex):
        if depth >= _MAX_DEPTH:
            raise FormatError(f"index {blob.digest} nests deeper than {_MAX_DEPTH} levels")
        nested = [e for e in parsed.manifests if mt.is_index(e.media_type) and e.platform is None]
        kept = filter_platforms([e for e in parsed.manifests if e not in nested], platforms) + nested
        if not kept:
            wanted = ", ".join(platforms) or "any platform"
            raise StoreError(f"index {blob.digest} has no manifest for {wanted}")
        for e in parsed.manifests:
            if e in kept:
                node.children.append(_node(source, source.get_manifest(e.digest), e, platforms, depth + 1, configs))
    elif configs:
        load_config(source, node)
    return node
