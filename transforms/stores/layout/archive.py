"""OCI archive (``oci-archive:URL[:REF]``): an OCI image layout in one tar file.

This is what ``skopeo copy … oci-archive:``, ``podman save --format oci-archive`` and
buildah write, the usual way to carry images into an air-gapped network.

Reading unpacks nothing: the tar's member headers are indexed once (seeking past the
data), and every file is then read as a byte range of the archive through a handle of
its own, so blob copies running in parallel never share a file position. Member names
are normalised, so archives made with ``tar -C layout -cf x.tar .`` (``./`` names) read.

Writing stages an OCI layout beside the archive (``URL.imagepush-staging``), then builds
the tar once, at publish, with fixed metadata (the same images give the same bytes) and
renames it into place. As with skopeo, the archive holds the images of one run: an
existing archive is replaced, not added to.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from typing import Any

import fsspec

from imagepush.transforms.stores.base import NotFound, Publication, PublishErrors, StoreError
from imagepush.transforms.stores.fs import (
    CHUNK_SIZE,
    STAGING_SUFFIX,
    BoundedReader,
    atomic_tar,
    member_name,
    remove_leftovers,
    tar_info,
)
from imagepush.transforms.stores.layout.index import INDEX_FILE, LAYOUT_FILE
from imagepush.transforms.stores.layout.oci import OCILayoutDestination, OCILayoutSource

#: Read size while indexing: a remote archive is read header by header, not in the
#: multi-megabyte blocks fsspec would otherwise fetch around every header.
INDEX_BLOCK_SIZE = 64 << 10


class ArchiveMembers:
    """The regular files of a tar archive at an fsspec URL: the two calls the layout reader makes."""

    def __init__(self, url: str, where: str) -> None:
        self._where = where
        self._members: dict[str, tuple[int, int]] = {}
        self._fs, self._path = fsspec.core.url_to_fs(url)
        try:
            with self._fs.open(self._path, "rb", block_size=INDEX_BLOCK_SIZE) as f, \
                    tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if info.isfile():
                        self._members[member_name(info.name)] = (info.offset_data, info.size)
        except FileNotFoundError:
            raise NotFound(f"{where}: {url} not found") from None
        except IsADirectoryError:
            raise StoreError(f"{where}: {url} is a directory, not an archive (use oci: for a layout)") from None
        except tarfile.TarError as exc:
            raise StoreError(f"{where}: {url} is not a tar archive ({exc})") from None

    def isfile(self, path: str) -> bool:
        return member_name(path) in self._members

    def open(self, path: str, mode: str = "rb") -> io.BufferedReader:
        if mode != "rb":
            raise StoreError(f"{self._where}: an oci-archive: is read only")
        found = self._members.get(member_name(path))
        if found is None:
            raise FileNotFoundError(path)
        offset, size = found
        file = self._fs.open(self._path, "rb")
        try:
            file.seek(offset)
        except BaseException:
            file.close()
            raise
        return io.BufferedReader(BoundedReader(file, size, [file], f"{self._where}: {path}"), CHUNK_SIZE)


class OCIArchiveSource(OCILayoutSource):
    """Reads images from an OCI archive, exactly as from the layout it contains."""

    def _where(self) -> str:
        return f"oci-archive:{self.url}"

    def _open(self) -> tuple[Any, str]:
        with self._lock:  # index the archive once, whichever thread asks first
            if self._fs_pair is None:
                self._fs_pair = (ArchiveMembers(self.url, self._where()), "")
            return self._fs_pair


class OCIArchiveDestination(OCILayoutDestination):
    """Writes an OCI archive: an OCI layout staged beside it, packed at publish."""

    def _where(self) -> str:
        return f"oci-archive:{self.url}"

    @property
    def archive(self) -> str:
        return self._open()[1]

    @property
    def root(self) -> str:
        """The staged layout: everything the layout writer does happens there."""
        return self.archive + STAGING_SUFFIX

    def prepare(self) -> None:
        fs = self.fs
        if fs.isdir(self.archive):
            raise StoreError(f"{self._where()}: {self.url} is a directory, not an archive file (use oci: for a layout)")
        if fs.exists(self.root):  # left by a run that stopped before publishing: start clean
            fs.rm(self.root, recursive=True)
        super().prepare()

    def clean_leftovers(self) -> int:
        """A tar an earlier run was packing when it stopped, beside the archive.

        Its staged layout needs nothing here: :meth:`prepare` starts every run with an
        empty one, since the archive holds the images of one run.
        """
        return remove_leftovers(self.fs, [posixpath.dirname(self.archive)], self._where())

    def publish(self, publications: list[Publication]) -> PublishErrors:
        if not publications:
            return {}
        fs = self.fs
        if not fs.exists(self.root) and fs.isfile(self.archive):
            return self._published_before(publications)
        failed = super().publish(publications)
        files = {
            posixpath.relpath(path, self.root): info["size"]
            for path, info in fs.find(self.root, detail=True).items()
            if not posixpath.basename(path).startswith(".")  # a temporary file of an aborted write
        }
        blobs = sorted(name for name in files if name not in (LAYOUT_FILE, INDEX_FILE))
        directories = sorted({posixpath.dirname(name) for name in blobs} | {"blobs"})
        with atomic_tar(fs, self.archive) as tar:
            for name in (LAYOUT_FILE, INDEX_FILE):
                with fs.open(self.path(name), "rb") as f:
                    tar.addfile(tar_info(name, files[name]), f)
            for directory in directories:
                tar.addfile(tar_info(directory + "/", 0, directory=True))
            for name in blobs:
                with fs.open(self.path(name), "rb") as f:
                    tar.addfile(tar_info(name, files[name]), f)
        fs.rm(self.root, recursive=True)
        return failed

    def _published_before(self, publications: list[Publication]) -> PublishErrors:
        """A retried publish (Beam retries bundles) after the archive was packed and its staging removed.

        Packing again would find no blobs left to pack; the archive already says whether
        the retry has anything to add.
        """
        packed = OCIArchiveSource(self.url)
        try:
            entries = {(entry.ref, entry.digest) for entry in packed.list_images()}
        finally:
            packed.close()
        for pub in publications:
            if (pub.ref or "", pub.descriptor.digest) not in entries:
                raise StoreError(
                    f"{self._where()}: the archive was packed without {pub.ref or pub.descriptor.digest}, "
                    "and its staged layout is gone; run again to rebuild it"
                )
        return {}
