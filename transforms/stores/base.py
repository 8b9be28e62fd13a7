"""The small interfaces every transport implements.

A copy engine only ever talks to these: a :class:`Source` lists images and hands out
manifests and raw blob streams; a :class:`Destination` stores blobs through sinks that
become visible only on :meth:`BlobSink.commit`, stores manifests by digest, and
publishes names (tags, ref names) last, in one :meth:`Destination.publish` call per run.

Stores are built from plain configuration (a reference) so that they pickle cheaply
to Beam workers; they open connections or filesystems lazily.
"""

from __future__ import annotations

import abc
import contextlib
import re
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence, TypeVar

from imagepush.transforms.errors import MISMATCH, NOT_FOUND, REFUSED, UNREACHABLE, ImagepushError
from imagepush.transforms.formats.descriptor import Descriptor


class StoreError(ImagepushError):
    """A store could not do what was asked; the message is one line for the user."""

    kind = REFUSED


class NotFound(StoreError):
    """The named image, manifest or blob is not in the store."""

    kind = NOT_FOUND


class Mismatch(StoreError):
    """A store holds, or stored, something other than what was written or expected."""

    kind = MISMATCH


class UploadInterrupted(StoreError):
    """A blob upload broke in a way that starting it again, from a fresh read, can fix.

    A sink raises it (from ``write`` or ``commit``) when the bytes it had sent are lost
    and cannot be replayed by the store itself: a streamed body cut by a reset, a 429 or
    5xx answer to it, an upload session the store forgot. The copier then aborts the
    sink and, within :attr:`Destination.upload_restarts`, opens a new one and streams
    the blob into it again. ``delay`` is how long the store asked to be left alone
    first (a ``Retry-After``), in seconds.
    """

    kind = UNREACHABLE
    delay: float = 0.0


class _RetryTally(threading.local):
    """Per-thread stack of open :func:`counting_retries` counters."""

    def __init__(self) -> None:
        self.stack: list[list[int]] = []


_tally = _RetryTally()


def note_retry() -> None:
    """Count one retry (a request sent again, an upload started again) for the current thread.

    Stores call it wherever they try something again; the engine wraps the work for one
    audit row in :func:`counting_retries` to report how many retries it took. Retries
    happen in the thread that asked (the transport's loop blocks its caller), so a
    thread-local tally attributes them without passing counters through every call.
    """
    for counter in _tally.stack:
        counter[0] += 1


@contextlib.contextmanager
def counting_retries() -> Iterator[list[int]]:
    """Count :func:`note_retry` calls in this thread while open: ``counter[0]`` is the count."""
    counter = [0]
    _tally.stack.append(counter)
    try:
        yield counter
    finally:
        _tally.stack.remove(counter)


@dataclass(frozen=True)
class ManifestBlob:
    """A manifest's exact bytes, its media type and its canonical digest.

    For signed schema1 the digest is over the signed payload, not ``data``.
    """

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class ImageEntry:
    """One named image a source holds, as listed for ``sync`` and ``ls``."""

    #: Name inside the store: an OCI ref.name, ``repo:tag`` in an archive, "" for a dir.
    ref: str
    #: Repository path used by sync's name mapping ("" when the store has none).
    repository: str
    #: Tag used by sync's name mapping (None when the image has no tag).
    tag: str | None
    digest: str
    media_type: str


@dataclass(frozen=True)
class Publication:
    """A root manifest to be made visible under a name at the end of a run."""

    #: Name to publish: a tag, an OCI ref.name, a docker-archive ``repo:tag``; None = unnamed.
    ref: str | None
    #: The root manifest (image or index) as written.
    descriptor: Descriptor
    #: Config digest of a single image (docker-archive stores images by config); None for indexes.
    config_digest: str | None = None
    #: The root manifest bytes, for stores that write the root only when naming it (dir:, registries).
    manifest: bytes | None = None


#: What :meth:`Destination.publish` returns: the error of each publication that was not
#: made visible, by its position in the list given; the others were published.
PublishErrors = dict[int, StoreError]


_T = TypeVar("_T")
_POSITION_RE = re.compile(r"^@(\d+)$")


def select_unnamed(images: Sequence[_T], ref: str | None, where: str, syntax: str) -> _T | None:
    """The image a reference picks without naming it, as skopeo picks in layouts and archives.

    No name picks the store's only image; ``@N`` picks the Nth (from 0). Any other
    ``ref`` is a name, which the store looks up itself: None. ``syntax`` tells the user
    how to name an image when there are several.
    """
    if not ref:
        if not images:
            raise NotFound(f"{where} holds no images")
        if len(images) > 1:
            raise StoreError(f"{where} holds {len(images)} images; name one with {syntax}")
        return images[0]
    position = _POSITION_RE.match(ref)
    if position is None:
        return None
    n = int(position.group(1))
    if n >= len(images):
        raise NotFound(f"{where} has no image @{n} ({len(images)} images)")
    return images[n]


class Source(abc.ABC):
    """Read side of a store."""

    @abc.abstractmethod
    def list_images(self, *, details: bool = True) -> Iterator[ImageEntry]:
        """Every named image the store holds (for ``sync`` and ``ls``).

        With ``details=False`` a store may leave ``digest`` and ``media_type`` empty when
        finding them costs a request per image (registries): ``sync`` reads each
        manifest anyway, so it does not pay twice.
        """

    @abc.abstractmethod
    def get_root(self, ref: str | None) -> ManifestBlob:
        """The root manifest named ``ref`` (None: the store's only or default image)."""

    @abc.abstractmethod
    def get_manifest(self, digest: str) -> ManifestBlob:
        """A manifest by digest (an index child, or a root found by listing)."""

    @abc.abstractmethod
    def open_blob(self, digest: str) -> BinaryIO:
        """A raw byte stream of the blob; the caller verifies size and digest while reading."""

    def close(self) -> None:
        """Release connections or open files."""


class BlobSink(abc.ABC):
    """A blob being written; nothing is visible under its digest before :meth:`commit`."""

    #: True when the receiving end checks the content against the digest itself and
    #: refuses a mismatch (a registry's final ``PUT ?digest=``): the copier need not hash.
    verifies_digest: bool = False

    @abc.abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the blob visible. Called only after the caller verified the digest."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written. Safe to call more than once."""


class Destination(abc.ABC):
    """Write side of a store. Every method is idempotent: Beam may retry any bundle."""

    #: Manifest format a destination prefers when the source's cannot be kept ("oci" or "v2s2").
    preferred_format: str = "oci"
    #: Set by stores that choose layer compression themselves (a docker-archive keeps
    #: layers uncompressed): ``--compression`` does not apply to them.
    fixed_layer_compression: str | None = None
    #: How many times a copier may start a blob upload again after its sink raised
    #: :class:`UploadInterrupted` (0: never; local stores do not break that way).
    upload_restarts: int = 0

    def prepare(self) -> None:
        """Check and initialise the store once, on the launcher, before the pipeline runs."""

    def clean_leftovers(self) -> int:
        """Remove what an earlier run that stopped half way left here; how many things.

        Called once per run, on the launcher, after :meth:`prepare`. Only what is clearly
        abandoned goes (see ``stores.fs.LEFTOVER_AGE``): another run, or a retried bundle
        of this one, may be writing the store at the same time. Best effort: a failure is
        logged at debug level and never fails the run.
        """
        return 0

    @abc.abstractmethod
    def accepts_manifest(self, media_type: str) -> bool:
        """Whether the store can hold a manifest of this type unchanged."""

    @abc.abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    def asks_before_upload(self, descriptor: Descriptor) -> bool:
        """Whether a copier asks :meth:`has_blob` before uploading this blob; False: it uploads without asking.

        A store decides when the question costs more than the answer saves: a registry
        re-sends a small blob into a repository that had no tags rather than ask about
        each one (see ``RegistryDestination``). Asking is free for a file store, which
        keeps the default.
        """
        return True

    @abc.abstractmethod
    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        """A sink for one blob; the descriptor's media type tells layer from config."""

    def put_blob(self, descriptor: Descriptor, data: bytes) -> None:
        """Store a small blob held in memory (a generated config)."""
        sink = self.blob_sink(descriptor)
        try:
            sink.write(data)
            sink.commit()
        except BaseException:
            sink.abort()
            raise

    @property
    def blob_domain(self) -> str | None:
        """The stores among which one digest names one shared blob; None: this store alone.

        Stores of one domain can take a blob from each other without copying its bytes
        (:meth:`mount_blob`), so a copier writes it into one of them and mounts the rest.
        """
        return None

    def mount_blob(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        """Make a blob present from another store known to hold it, without copying its bytes.

        ``known_at`` are store ids that hold the blob; the destination decides which of
        them, if any, it can take it from (a registry mounts from a repository of its
        own host). False means the caller copies the blob.
        """
        return False

    def would_mount(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        """Whether :meth:`mount_blob` would take the blob from one of ``known_at``, asked without writing.

        For ``plan``, which must predict a copy without changing the destination; a store
        that overrides :meth:`mount_blob` overrides this with the same choice of lender.
        """
        return False

    def current_digest(self, name: str) -> str | None:
        """The digest ``name`` points at in this store now, None if unknown or unnamed.

        Lets a rerun skip an image that is already there under its name: names are
        published last, after everything they reach, so a name that points at the digest
        we would write means the whole image is present.
        """
        return None

    @abc.abstractmethod
    def put_manifest(self, manifest: ManifestBlob, *, root: bool = False) -> None:
        """Store a manifest by digest, after all the blobs (or children) it references.

        ``root`` marks the manifest a publication will name; stores that keep their
        primary manifest in a fixed file (dir:) write it only at :meth:`publish`.
        """

    @abc.abstractmethod
    def publish(self, publications: list[Publication]) -> PublishErrors:
        """Make names point at root manifests: the last write of a run, once per destination.

        Each name has its own outcome: a store that writes names one by one (a registry
        tag) reports the ones that failed and still writes the rest. A store that writes
        every name in one file (index.json, manifest.json) raises instead, since then
        none of them was written.
        """

    def close(self) -> None:
        """Release connections or open files."""
