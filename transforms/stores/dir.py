"""skopeo's ``dir:`` layout: one image per directory, blobs named by bare hex digest.

``manifest.json`` holds the primary manifest's exact bytes with no media type beside it,
so its type is always detected from content. Instances of a multi-image copy live in
``<hex>.manifest.json``. Repository fixtures have no ``version`` file, so a reader must
not require one; a writer refuses to empty a directory that was not made by this
transport (the version file is the only proof).
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from imagepush.transforms.formats import digest as digestlib
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
)
from imagepush.transforms.stores.fs import AtomicFileSink, FsStore, digest_parts, open_read, read_bytes, write_atomic

VERSION_FILE = "version"
VERSION_CONTENT = b"Directory Transport Version: 1.1\n"
MANIFEST_FILE = "manifest.json"


def _manifest_type(data: bytes, where: str) -> str:
    """dir: keeps no media type beside a manifest, so it always comes from the content."""
    try:
        return detect_media_type(data, None)
    except FormatError as exc:
        raise StoreError(f"{where} is not a manifest ({exc})") from None


def _encoded(digest: str) -> str:
    """dir: names blobs by the encoded part alone (the algorithm is always sha256 there)."""
    return digest_parts(digest)[1]


class DirSource(FsStore, Source):
    """Reads the single image of a ``dir:`` directory."""

    def _where(self) -> str:
        return f"dir:{self.url}"

    def _primary(self) -> ManifestBlob:
        data = read_bytes(self.fs, self.path(MANIFEST_FILE), f"{self._where()}: manifest.json")
        media_type = _manifest_type(data, f"{self._where()}: manifest.json")
        return ManifestBlob(data=data, media_type=media_type, digest=manifest_digest(data, media_type))

    def list_images(self, *, details: bool = True) -> Iterator[ImageEntry]:
        root = self._primary()
        yield ImageEntry(ref="", repository="", tag=None, digest=root.digest, media_type=root.media_type)

    def get_root(self, ref: str | None) -> ManifestBlob:
        if ref:
            raise StoreError(f"{self._where()}: a dir: store holds one unnamed image, not {ref!r}")
        return self._primary()

    def get_manifest(self, digest: str) -> ManifestBlob:
        path = self.path(f"{_encoded(digest)}.manifest.json")
        if self.fs.isfile(path):
            data = read_bytes(self.fs, path, f"{self._where()}: manifest {digest}")
            media_type = _manifest_type(data, f"{self._where()}: manifest {digest}")
            return ManifestBlob(data=data, media_type=media_type, digest=digest)
        try:
            primary = self._primary()
        except NotFound:
            raise NotFound(f"{self._where()}: manifest {digest} not found") from None
        if primary.digest != digest:
            raise NotFound(f"{self._where()}: manifest {digest} not found")
        return primary

    def open_blob(self, digest: str) -> BinaryIO:
        return open_read(self.fs, self.path(_encoded(digest)), f"{self._where()}: blob {digest}")


class DirDestination(FsStore, Destination):
    """Writes one image into a ``dir:`` directory (the primary manifest at publish)."""

    preferred_format = "oci"

    def _where(self) -> str:
        return f"dir:{self.url}"

    def prepare(self) -> None:
        """Empty a previous dir: image, create the directory otherwise; refuse anything else."""
        fs = self.fs
        if fs.exists(self.root):
            if not fs.isdir(self.root):
                raise StoreError(f"{self._where()}: {self.url} exists and is not a directory")
            children = fs.ls(self.root, detail=False)
            if children:
                version_path = self.path(VERSION_FILE)
                version = fs.cat_file(version_path) if fs.isfile(version_path) else None
                if version != VERSION_CONTENT:
                    raise StoreError(
                        f"{self._where()}: {self.url} is not empty and is not a dir: image "
                        "(no 'Directory Transport Version: 1.1' version file); refusing to overwrite it"
                    )
                for child in children:
                    fs.rm(child, recursive=True)
        fs.makedirs(self.root, exist_ok=True)
        write_atomic(fs, self.path(VERSION_FILE), VERSION_CONTENT)

    def accepts_manifest(self, media_type: str) -> bool:
        return True

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.isfile(self.path(_encoded(digest))))

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        return AtomicFileSink(self.fs, self.path(_encoded(descriptor.digest)))

    def put_manifest(self, manifest: ManifestBlob, *, root: bool = False) -> None:
        """Instances go to ``<hex>.manifest.json``; the root waits for :meth:`publish`."""
        if root:
            return
        write_atomic(self.fs, self.path(f"{_encoded(manifest.digest)}.manifest.json"), manifest.data, overwrite=False)

    def publish(self, publications: list[Publication]) -> PublishErrors:
        if not publications:
            return {}
        if len(publications) != 1:
            raise StoreError(f"dir: holds one image; {len(publications)} were to be published to {self.url}")
        pub = publications[0]
        if pub.manifest is None:
            raise StoreError(f"{self._where()}: the publication of {pub.descriptor.digest} carries no manifest bytes")
        if not digestlib.matches(pub.descriptor.digest, pub.manifest) and manifest_digest(
            pub.manifest, pub.descriptor.media_type
        ) != pub.descriptor.digest:
            raise StoreError(f"{self._where()}: manifest bytes do not match {pub.descriptor.digest}")
        if not self.fs.isfile(self.path(VERSION_FILE)):
            write_atomic(self.fs, self.path(VERSION_FILE), VERSION_CONTENT)
        write_atomic(self.fs, self.path(MANIFEST_FILE), pub.manifest)
        return {}
