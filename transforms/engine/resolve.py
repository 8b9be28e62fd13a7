"""Reading an image's manifest tree: manifests and configs only, never layer bytes.

Beam-free, so that ``inspect`` and ``ls`` start fast and the DoFns stay thin.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import logging
from typing import TYPE_CHECKING

from imagepush.transforms.engine.streaming import BlobVerificationError
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import ImageIndex, ImageManifest, parse_manifest
from imagepush.transforms import errors
from imagepush.transforms.engine.jobs import CopyJob, ImagePlan, ManifestNode, filter_platforms
from imagepush.transforms.records import now
from imagepush.transforms.stores.base import NotFound, Source, StoreError

if TYPE_CHECKING:
    from imagepush.transforms.engine.deliver import Stores

log = logging.getLogger(__name__)

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
    if not digestlib.matches(descriptor.digest, data):
        raise BlobVerificationError(f"config blob does not match its digest {descriptor.digest}")
    if len(data) != descriptor.size:
        raise BlobVerificationError(
            f"config {descriptor.digest} has {len(data)} bytes, its descriptor says {descriptor.size}"
        )
    return data


def job_key(job: CopyJob) -> str:
    """A key unique to the job: the same image may be copied by several jobs of one run."""
    text = repr((job.source_store, job.source, job.image, job.digest, job.targets, job.platforms))
    return f"{job.source}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def resolve_image(job: CopyJob, stores: "Stores") -> ImagePlan:
    """The job's manifest tree, or the error that stopped reading it, as a plan to go on with.

    Configs are left unread: a copy that keeps manifests never needs them, and planning
    reads the ones a conversion does. The error is reported with each destination when
    the image is finalized, so it is only logged at debug level here.
    """
    plan = ImagePlan(key=job_key(job), job=job, started_at=now())
    try:
        plan.root = resolve_tree(stores.source(job.source_store), job, configs=False)
    except Exception as exc:
        plan.error, plan.error_kind = errors.describe(exc)
        log.debug("%s: %s", job.source, plan.error)
    return plan


def resolve_tree(source: Source, job: CopyJob, *, configs: bool = True) -> ManifestNode:
    """The job's root manifest and the children its platforms keep.

    ``configs=False`` leaves image configs unread: a copy that keeps manifests as they
    are never needs them, and a sync of thousands of images saves a request for each.
    """
    if job.digest:
        root = source.get_manifest(job.digest)
    else:
        try:
            root = source.get_root(job.image)
        except Exception as exc:
            if errors.error_kind(exc) != errors.NOT_FOUND or job.image is None:
                raise
            close = closest_names(source, job.image)
            if not close:
                raise
            raise NotFound(f"{errors.one_line(exc)}; closest names it holds: {', '.join(close)}") from exc
    return _node(source, root, None, job.platforms, 0, configs)


#: How many near names a not-found error suggests, and how alike they must be (difflib's ratio).
SUGGESTIONS = 3
SUGGESTION_CUTOFF = 0.5
#: Names read at most: a registry without the repository lists the ones below it instead.
SUGGESTION_LISTING = 1000


def closest_names(source: Source, name: str) -> list[str]:
    """The names ``source`` holds that look most like ``name``, for a not-found message.

    Asked only after a name was not found, of a store whose listing is one cheap read
    (a layout's index, an archive's manifest, a registry repository's tags); a listing
    that fails suggests nothing rather than hiding the not-found error.
    """
    try:
        listing = itertools.islice(source.list_images(details=False), SUGGESTION_LISTING)
        names = [entry.ref for entry in listing if entry.ref]
    except Exception as exc:
        log.debug("no names to suggest for %s: %s", name, errors.one_line(exc))
        return []
    tag = name.rpartition(":")[2] if ":" in name else name
    by_tag = {n.rpartition(":")[2] if ":" in n else n: n for n in names}
    close = difflib.get_close_matches(name, names, n=SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    if not close:  # a registry lists REPO:TAG where the name asked for is a bare tag
        close = [by_tag[t] for t in difflib.get_close_matches(tag, list(by_tag), n=SUGGESTIONS,
                                                              cutoff=SUGGESTION_CUTOFF)]
    return close


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
