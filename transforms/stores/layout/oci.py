"""OCI image layout (``oci:PATH[:REF]``): ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.

Names live only in ``index.json`` as the ``org.opencontainers.image.ref.name`` annotation.
The descriptor media types written there are not trusted (ggcr's ``test_index`` layout
labels Docker manifests as OCI ones), so the type of a root is detected from its bytes
with the declared type only as a hint.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterator

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import detect_media_type, manifest_digest
from imagepush.transforms.stores.base import (
    BlobSink,
    Destination,
    ImageEntry,
    ManifestBlob,
    NotFound,
    Publication,
    PublishErrors,
    Source,
    StoreError,
    select_unnamed,
)
from imagepush.transforms.stores.fs import (
    AtomicFileSink,
    FsStore,
    digest_parts,
    open_read,
    read_bytes,
    remove_leftovers,
    write_atomic,
)
from imagepush.transforms.stores.layout.index import (
    INDEX_FILE,
    LAYOUT_CONTENT,
    LAYOUT_FILE,
    REF_NAME,
    add_entry,
    dump_index,
    entry_ref,
    load_index,
    split_name,
)

#: What an OCI layout destination stores unchanged. Docker types are converted to OCI,
#: as containers/image does: skopeo and umoci look up ref names among OCI entries only.
ACCEPTED = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX})


def _blob(store: FsStore, digest: str) -> str:
    algorithm, encoded = digest_parts(digest)
    return store.path("blobs", algorithm, encoded)


def detect_from_content(data: bytes, declared: str | None) -> str:
    """A manifest's type from its bytes; the declared type only fills in when they say nothing.

    index.json descriptors can disagree with the blob they point at (docs/formats.md
    §7), so content decides: an explicit ``mediaType``, else the shape, as containers/image
    guesses (a Docker list or schema2 always carries its ``mediaType``, so a document
    without one is OCI). Only a blob that is not a recognisable manifest keeps its
    declared type, so unknown root types are listed and copied instead of failing.
    """
    try:
        return detect_media_type(data, None)
    except FormatError:
        if declared:
            return declared
        raise


class OCILayoutSource(FsStore, Source):
    """Reads images from an OCI image layout."""

    def _reset_cache(self) -> None:
        self._entries_cache: list[Descriptor] | None = None

    def _where(self) -> str:
        return f"oci:{self.url}"

    def _entries(self) -> list[Descriptor]:
        """The descriptors of index.json, parsed once per store object."""
        with self._lock:
            if self._entries_cache is None:
                data = read_bytes(self.fs, self.path(INDEX_FILE), f"{self._where()}: index.json")
                index = load_index(data, self._where())
                entries = []
                for position, raw in enumerate(index["manifests"]):
                    try:
                        entries.append(Descriptor.from_dict(raw))
                    except FormatError as exc:
                        raise StoreError(f"{self._where()}: index.json entry {position}: {exc}") from None
                self._entries_cache = entries
            return self._entries_cache

    def _read_manifest(self, digest: str, hint: str | None) -> ManifestBlob:
        data = read_bytes(self.fs, _blob(self, digest), f"{self._where()}: manifest {digest}")
        if not digestlib.matches(digest, data):
            raise StoreError(f"{self._where()}: blob {digest} does not match its digest")
        try:
            media_type = detect_from_content(data, hint)
        except FormatError as exc:
            raise StoreError(f"{self._where()}: {digest} is not a manifest ({exc})") from None
        canonical = manifest_digest(data, media_type) if mt.is_schema1(media_type) else digest
        return ManifestBlob(data=data, media_type=media_type, digest=canonical)

    def _detected_type(self, desc: Descriptor) -> str:
        """Type of a root for listing; a root whose blob is missing keeps its declared type."""
        try:
            data = read_bytes(self.fs, _blob(self, desc.digest), "blob")
        except NotFound:
            return desc.media_type
        return detect_from_content(data, desc.media_type)

    def list_images(self, *, details: bool = True) -> Iterator[ImageEntry]:
        for desc in self._entries():
            ref = desc.annotation(REF_NAME) or ""
            repository, tag = split_name(ref)
            yield ImageEntry(
                ref=ref, repository=repository, tag=tag, digest=desc.digest,
                media_type=self._detected_type(desc),
            )

    def _select(self, ref: str | None) -> Descriptor:
        entries = self._entries()
        picked = select_unnamed(entries, ref, self._where(), f"{self._where()}:REF")
        if picked is not None:
            return picked
        found = [d for d in entries if d.annotation(REF_NAME) == ref]
        if not found:
            raise NotFound(f"{self._where()}: no image named {ref!r}")
        if len({d.digest for d in found}) > 1:
            raise StoreError(f"{self._where()}: the name {ref!r} is given to several different images")
        return found[0]

    def get_root(self, ref: str | None) -> ManifestBlob:
        desc = self._select(ref)
        return self._read_manifest(desc.digest, desc.media_type)

    def get_manifest(self, digest: str) -> ManifestBlob:
        hint = next((d.media_type for d in self._entries() if d.digest == digest), None)
        return self._read_manifest(digest, hint)

    def open_blob(self, digest: str) -> BinaryIO:
        return open_read(self.fs, _blob(self, digest), f"{self._where()}: blob {digest}")


class OCILayoutDestination(FsStore, Destination):
    """Writes images into an OCI image layout; names are added to index.json at publish."""

    preferred_format = "oci"

    def _where(self) -> str:
        return f"oci:{self.url}"

    def _reset_cache(self) -> None:
        #: ref name -> digest from index.json, read once per store object (cleared by publish).
        self._names: dict[str, str] | None = None

    def prepare(self) -> None:
        fs = self.fs
        if fs.exists(self.root):
            if not fs.isdir(self.root):
                raise StoreError(f"{self._where()}: {self.url} exists and is not a directory")
            children = fs.ls(self.root, detail=False)
            if children and not fs.exists(self.path(LAYOUT_FILE)):
                raise StoreError(
                    f"{self._where()}: {self.url} is not empty and is not an OCI layout (no oci-layout file)"
                )
        else:
            fs.makedirs(self.root, exist_ok=True)
        if not fs.exists(self.path(LAYOUT_FILE)):
            write_atomic(fs, self.path(LAYOUT_FILE), LAYOUT_CONTENT)
        if not fs.exists(self.path(INDEX_FILE)):
            write_atomic(fs, self.path(INDEX_FILE), dump_index({}))

    def clean_leftovers(self) -> int:
        """Temporary files of writes that never finished: beside index.json and among the blobs."""
        return remove_leftovers(self.fs, [self.root, *self._blob_folders()], self._where())

    def _blob_folders(self) -> list[str]:
        """``blobs/<algorithm>`` folders, where blob writes keep their temporary files."""
        try:
            entries = self.fs.ls(self.path("blobs"), detail=True)
        except FileNotFoundError:
            return []
        return [e["name"] for e in entries if e.get("type") == "directory"]

    def accepts_manifest(self, media_type: str) -> bool:
        return media_type in ACCEPTED

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.isfile(_blob(self, digest)))

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        return AtomicFileSink(self.fs, _blob(self, descriptor.digest))

    def current_digest(self, name: str) -> str | None:
        with self._lock:
            if self._names is None:
                path = self.path(INDEX_FILE)
                names: dict[str, str] = {}
                if self.fs.exists(path):
                    index = load_index(read_bytes(self.fs, path, f"{self._where()}: index.json"), self._where())
                    for entry in index["manifests"]:
                        ref = entry_ref(entry)
                        if ref is not None and isinstance(entry.get("digest"), str):
                            names[ref] = entry["digest"]
                self._names = names
            digest = self._names.get(name)
        return digest if digest is not None and self.has_blob(digest) else None

    def put_manifest(self, manifest: ManifestBlob, *, root: bool = False) -> None:
        if not self.accepts_manifest(manifest.media_type):
            raise StoreError(f"{self._where()}: cannot store a {manifest.media_type} manifest")
        path = _blob(self, manifest.digest)
        if not self.fs.exists(path):
            write_atomic(self.fs, path, manifest.data, overwrite=False)

    def publish(self, publications: list[Publication]) -> PublishErrors:
        """One read-modify-write of index.json so no publication of the run is lost."""
        if not publications:
            return {}
        with self._lock:
            self._names = None
        fs = self.fs
        index_path = self.path(INDEX_FILE)
        if fs.exists(index_path):
            index = load_index(read_bytes(fs, index_path, f"{self._where()}: index.json"), self._where())
        else:
            if not fs.exists(self.path(LAYOUT_FILE)):
                write_atomic(fs, self.path(LAYOUT_FILE), LAYOUT_CONTENT)
            index = {}
        manifests: list[Any] = list(index.get("manifests") or [])
        # Publications arrive in whatever order the runner grouped them; sorted, the same
        # images always give the same index.json (and the same oci-archive bytes).
        for pub in sorted(publications, key=lambda p: (p.ref is None, p.ref or "", p.descriptor.digest)):
            manifests = add_entry(manifests, pub)
        index["schemaVersion"] = 2
        index["mediaType"] = mt.OCI_INDEX
        index["manifests"] = manifests
        write_atomic(fs, index_path, dump_index(index))
        return {}


