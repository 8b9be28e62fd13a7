"""What a run has to do, as plain records: jobs, resolved manifest trees, per-target plans.

These records are the PCollection elements of the pipeline. They hold manifests and
configs (small, bounded by the 4 MiB manifest limit) and blob *descriptors*, never
layer bytes. Deciding the written format of each manifest is pure, so it lives here
and is tested without Beam.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, Platform
from imagepush.transforms.formats.manifest import ImageIndex, ImageManifest, blobs_of
from imagepush.transforms.formats.schema1 import Schema1Manifest
from imagepush.transforms.engine.selection import TagSelection
from imagepush.transforms.engine.templates import NameTemplate
from imagepush.transforms.stores.base import ManifestBlob

PRESERVE, OCI, V2S2 = "preserve", "oci", "v2s2"

Parsed = ImageManifest | ImageIndex | Schema1Manifest


@dataclass(frozen=True)
class Target:
    """One destination of one image."""

    #: The destination as shown in the audit, with the name the image gets there.
    destination: str
    #: Identity of the store (``transport:location``): publications are grouped by it.
    store: str
    #: Name to publish (tag, ref name, ``repo:tag``); None publishes unnamed.
    name: str | None
    format: str = PRESERVE
    #: Layer compression written: "preserve", "gzip", "zstd" or "none".
    compression: str = PRESERVE
    #: Leave the name alone when it already points at another image (``--no-clobber``).
    no_clobber: bool = False


@dataclass(frozen=True)
class Output:
    """A destination as the user named it, and how images are written there."""

    ref: str
    format: str = PRESERVE
    compression: str = PRESERVE
    no_clobber: bool = False


@dataclass(frozen=True)
class SyncSpec:
    """Copy every image a source store holds to every destination (name-mapped)."""

    source: str
    destinations: tuple[Output, ...]
    platforms: tuple[str, ...] = ()
    #: Which listed images are copied (engine/selection.py): every one by default.
    selection: TagSelection = TagSelection()
    #: How a listed image is named below each destination (engine/templates.py); None
    #: appends its repository path below the source's, tag kept.
    rename: NameTemplate | None = None


@dataclass(frozen=True)
class RecordSource:
    """A records URL (file, folder or glob) of a run, and what applies to rows that do not say otherwise.

    Only this travels in the job graph; the workers read the files (engine/records_io.py).
    """

    url: str
    #: Where rows without a ``destination`` go (the job's ``to:``), each a prefix or a reference.
    outputs: tuple[Output, ...] = ()
    #: Format, compression and platforms for rows that leave them empty.
    format: str = PRESERVE
    compression: str = PRESERVE
    platforms: tuple[str, ...] = ()
    #: Keep only rows whose ``status`` is failed (``retry`` over an audit).
    failed_only: bool = False
    #: Copy the ``source_digest`` a row names rather than what its tag points at now.
    pin_digest: bool = True


@dataclass(frozen=True)
class CopyJob:
    """Copy one root image (an image or an index) from a source to its targets."""

    #: The source store (``transport:location``).
    source_store: str
    #: The source image as shown in the audit.
    source: str
    #: Name of the image inside the source store (None: its only image).
    image: str | None
    #: Select the root by digest instead (untagged entries found by listing).
    digest: str | None
    targets: tuple[Target, ...]
    platforms: tuple[str, ...] = ()
    #: The source image's repository and tag, as its store's listing names them (for the
    #: audit); None when the source has none (a ``dir:``, an image selected by digest).
    repository: str | None = None
    tag: str | None = None


@dataclass
class ManifestNode:
    """A manifest as read, parsed, with its config and (for an index) kept children."""

    manifest: ManifestBlob
    parsed: Parsed
    #: Image config bytes (None for indexes and schema1, whose config is inside the manifest).
    config: bytes | None = None
    #: The entry that pointed at this manifest in its parent index.
    entry: Descriptor | None = None
    children: list["ManifestNode"] = field(default_factory=list)

    @property
    def is_index(self) -> bool:
        return isinstance(self.parsed, ImageIndex)

    def walk(self):
        """Children before parents: the order manifests must be written in."""
        for child in self.children:
            yield from child.walk()
        yield self


@dataclass
class ImagePlan:
    key: str
    job: CopyJob
    started_at: dt.datetime
    root: ManifestNode | None = None
    error: str | None = None
    error_kind: str | None = None


@dataclass(frozen=True)
class BlobNeed:
    """A blob one target needs, and whether its diff_id must be computed on the way."""

    descriptor: Descriptor
    need_diff_id: bool = False
    #: Rewrite the layer with this compression (None: copy the bytes as they are).
    recompress: str | None = None


@dataclass
class TargetPlan:
    """One image for one target: which format each manifest is written in, which blobs."""

    key: str
    image: ImagePlan
    target: Target
    root: ManifestNode | None
    #: manifest digest -> format to write ("oci"/"v2s2"), or None to keep the bytes.
    formats: dict[str, str | None] = field(default_factory=dict)
    blobs: list[BlobNeed] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    #: The destination name already points at the digest this plan would write.
    up_to_date: bool = False
    #: Why the target is left alone on purpose (``--no-clobber``); nothing is written.
    skipped: str | None = None


def family(media_type: str) -> str:
    """The format family a manifest type belongs to."""
    if media_type in (mt.OCI_MANIFEST, mt.OCI_INDEX):
        return OCI
    if media_type in (mt.DOCKER_SCHEMA2, mt.DOCKER_LIST):
        return V2S2
    return "schema1"


def choose_format(media_type: str, requested: str, accepts, preferred: str) -> str | None:
    """None to keep a manifest's bytes, else the format to convert it to.

    ``preserve`` keeps whatever the destination accepts and otherwise converts to the
    destination's preferred format, as containers/image does; an explicit format
    converts only what is not already in it.
    """
    if requested == PRESERVE:
        return None if accepts(media_type) else preferred
    return None if family(media_type) == requested else requested


def filter_platforms(entries: list[Descriptor], platforms: tuple[str, ...]) -> list[Descriptor]:
    """Keep index entries matching any requested platform (all when none is requested)."""
    if not platforms:
        return list(entries)
    wanted = [Platform.parse(p) for p in platforms]
    return [e for e in entries if e.platform is not None and any(e.platform.matches(w) for w in wanted)]


_FOREIGN = ("foreign", "nondistributable")


def _copyable(d: Descriptor) -> bool:
    """Foreign/non-distributable layers are fetched from their URLs by clients, never copied."""
    return not (d.urls and any(word in d.media_type for word in _FOREIGN))


def blob_needs(node: ManifestNode, fmt: str | None) -> list[BlobNeed]:
    """The source blobs an image manifest needs at a destination when written as ``fmt``."""
    p = node.parsed
    if isinstance(p, Schema1Manifest):
        if fmt is None:
            # Kept verbatim, the manifest names every blobSum, collapsed duplicates included.
            seen: dict[str, BlobNeed] = {}
            for d in blobs_of(p):
                seen.setdefault(d.digest, BlobNeed(d))
            return list(seen.values())
        seen = {}
        for layer in p.layers:
            if not layer.throwaway:
                seen.setdefault(
                    layer.blob_sum, BlobNeed(Descriptor(mt.DOCKER_LAYER_GZIP, layer.blob_sum, -1), need_diff_id=True)
                )
        return list(seen.values())
    if isinstance(p, ImageManifest):
        needs = [BlobNeed(d) for d in p.layers if _copyable(d)]
        # A schema2 config converted to OCI is regenerated; every other case copies it.
        if p.has_config_blob and not (fmt == OCI and family(node.manifest.media_type) == V2S2):
            needs.insert(0, BlobNeed(p.config))
        return needs
    return []


@dataclass(frozen=True)
class BlobRequest:
    """One target's need for one source blob at one destination store."""

    source_store: str
    dest_store: str
    target_key: str
    descriptor: Descriptor
    need_diff_id: bool
    recompress: str | None = None


COPIED, PRESENT, MOUNTED, SHARED, FAILED = "copied", "present", "mounted", "shared", "failed"


@dataclass(frozen=True)
class BlobResult:
    """What happened to one blob at one destination, as seen by one target.

    A blob written once for many targets is ``copied`` for exactly one of them (the
    audit's byte counts then add up) and ``shared`` for the others.
    """

    digest: str
    dest_store: str
    status: str
    size: int
    bytes_copied: int = 0
    diff_id: str | None = None
    error: str | None = None
    error_kind: str | None = None
    #: For a recompressed layer: the compression, digest and size of the blob written.
    recompressed: tuple[str, str, int] | None = None
    #: Retries it took (requests sent again, uploads started again), on one result per blob.
    retries: int = 0
