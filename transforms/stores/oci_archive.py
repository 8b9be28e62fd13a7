"""OCI archive (``oci-archive:URL[:REF]``, read only): an OCI image layout in one tar file.

This is what ``skopeo copy … oci-archive:``, ``podman save --format oci-archive`` and
buildah write, the usual way to carry images into an air-gapped network. Nothing is
unpacked: the tar's member headers are indexed once (seeking past the data), and every
file is then read as a byte range of the archive through a handle of its own, so blob
copies running in parallel never share a file position. Member names are normalised,
so archives made with ``tar -C layout -cf x.tar .`` (names starting ``./``) read too.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from typing import Any

import fsspec

from transforms.stores.base import NotFound, StoreError
from transforms.stores.fs import CHUNK_SIZE, BoundedReader
from transforms.stores.oci_layout import OCILayoutSource

#: Read size while indexing: a remote archive is read header by header, not in the
#: multi-megabyte blocks fsspec would otherwise fetch around every header.
INDEX_BLOCK_SIZE = 64 << 10


def _member(name: str) -> str:
    return posixpath.normpath(name).lstrip("/")


class ArchiveMembers:
    """The regular files of a tar archive at an fsspec URL: the two calls the layout reader makes."""

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self._where = where
        self._members: dict[str, tuple[int, int]] = {}
        self._fs, self._path = fsspec.core.url_to_fs(url)
        try:
            with self._fs.open(self._path, "rb", block_size=INDEX_BLOCK_SIZE) as f, \
                    tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if info.isfile():
                        self._members[_member(info.name)] = (info.offset_data, info.size)
        except FileNotFoundError:
            raise NotFound(f"{where}: {url} not found") from None
        except IsADirectoryError:
            raise StoreError(f"{where}: {url} is a directory, not an archive (use oci: for a layout)") from None
        except tarfile.TarError as exc:
            raise StoreError(f"{where}: {url} is not a tar archive ({exc})") from None

    def isfile(self, path: str) -> bool:
        return _member(path) in self._members

    def open(self, path: str, mode: str = "rb") -> io.BufferedReader:
        if mode != "rb":
            raise StoreError(f"{self._where}: an oci-archive: is read only")
        found = self._members.get(_member(path))
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
