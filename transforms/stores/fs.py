"""Small fsspec helpers shared by the file-based stores (OCI layout, dir:, docker-archive).

Every file store is addressed by a URL that may be a plain local path or any fsspec URL
(``memory://``, ``s3://``, ``file://`` ...). Stores keep only that string so they pickle
cheaply to Beam workers and open the filesystem lazily on first use.

Writes go to a temporary sibling and are renamed into place, so a reader (or a retried
Beam bundle) never sees a half-written blob or index under its final name.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import threading
import uuid
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.stores.base import BlobSink, NotFound, StoreError

#: Copy granularity: big enough for throughput, small enough to keep many copies in memory.
CHUNK_SIZE = 1 << 20
#: Prefix of temporary files; stores skip such names when listing.
TMP_PREFIX = ".tmp-"
#: Appended to an archive's path for the folder its content is staged in until publish.
STAGING_SUFFIX = ".imagepush-staging"


def open_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem behind ``url`` and the root path inside it (without trailing ``/``)."""
    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if not path and isinstance(fs, LocalFileSystem):
        path = "/"
    return fs, path


def join(root: str, *parts: str) -> str:
    """Join fsspec paths, which always use ``/`` whatever the local OS."""
    return posixpath.join(root, *parts) if root else posixpath.join(*parts)


def digest_parts(digest: str, where: str = "") -> tuple[str, str]:
    """The algorithm and the encoded part of a digest, which name a blob's folder and file.

    Validated first, since a digest that only looks right could name a path outside the
    store; a malformed one is refused like any other bad request to the store.
    """
    return digestlib.checked(digest, where, StoreError)


def member_name(name: str) -> str:
    """A tar member's name as archives look it up: ``./``, a leading ``/`` and ``dir/..`` folded away."""
    normalized = posixpath.normpath(name.lstrip("/"))
    return "" if normalized == "." else normalized


def _replace(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Rename ``src`` over ``dst``; atomic on local filesystems (``os.replace``)."""
    if isinstance(fs, LocalFileSystem):
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def _remove_quietly(fs: AbstractFileSystem, path: str) -> None:
    """Delete a file if it is there; cleanup must not mask the error that caused it."""
    try:
        if fs.exists(path):
            fs.rm(path)
    except (OSError, StoreError):
        pass


class AtomicFileSink(BlobSink):
    """Streams a file to ``<dir>/.tmp-<uuid>`` and renames it into place on commit.

    With ``overwrite=False`` (content-addressed blobs) a final path that already exists
    wins: the temporary file is dropped, which makes retried copies idempotent. With
    ``overwrite=True`` (index.json, manifest.json) the new content replaces the old.
    """

    def __init__(self, fs: AbstractFileSystem, path: str, *, overwrite: bool = False) -> None:
        self._fs = fs
        self.path = path
        self._overwrite = overwrite
        self._tmp = join(posixpath.dirname(path), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        self._file: Any = None
        self._finished = False
        self.size = 0

    def _ensure_open(self) -> None:
        if self._file is None:
            self._fs.makedirs(posixpath.dirname(self._tmp), exist_ok=True)
            self._file = self._fs.open(self._tmp, "wb")

    def write(self, chunk: bytes) -> None:
        if self._finished:
            raise StoreError(f"write to {self.path} after commit or abort")
        self._ensure_open()
        self._file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        self.commit_to(self.path)

    def commit_to(self, path: str) -> None:
        """Commit under ``path`` instead of the name given at construction.

        Needed when the final name is only known after the content was seen (a layer
        stored by the digest of its decompressed bytes).
        """
        if self._finished:
            raise StoreError(f"{self.path} was already committed or aborted")
        self._ensure_open()  # an empty blob still needs a file
        try:
            self._file.close()
            self._file = None
            if not self._overwrite and self._fs.exists(path):
                _remove_quietly(self._fs, self._tmp)
            else:
                self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
                _replace(self._fs, self._tmp, path)
        except BaseException:
            self.abort()
            raise
        self.path = path
        self._finished = True

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if not self._finished:
            _remove_quietly(self._fs, self._tmp)
        self._finished = True


def write_atomic(fs: AbstractFileSystem, path: str, data: bytes, *, overwrite: bool = True) -> None:
    """Write a small file so that readers see either the old or the new content."""
    sink = AtomicFileSink(fs, path, overwrite=overwrite)
    try:
        for start in range(0, len(data), CHUNK_SIZE):
            sink.write(data[start : start + CHUNK_SIZE])
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def read_bytes(fs: AbstractFileSystem, path: str, what: str) -> bytes:
    """A small file's bytes, with a missing file reported as :class:`NotFound`."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFound(f"{what} not found") from None
    except IsADirectoryError:
        raise StoreError(f"{what} is a directory") from None


def open_read(fs: AbstractFileSystem, path: str, what: str) -> BinaryIO:
    """Open a file for streaming, with a missing file reported as :class:`NotFound`."""
    try:
        if not fs.isfile(path):
            raise NotFound(f"{what} not found")
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{what} not found") from None


def copy_stream(src: BinaryIO, write: Any, limit: int | None = None) -> int:
    """Copy ``src`` to ``write`` in bounded chunks; returns the number of bytes copied."""
    total = 0
    while limit is None or total < limit:
        want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - total)
        chunk = src.read(want)
        if not chunk:
            break
        write(chunk)
        total += len(chunk)
    return total


class BoundedReader(io.RawIOBase):
    """Reads ``size`` bytes of an archive member from a stream positioned at its data.

    ``closers`` (the stream and whatever it wraps) are closed with the reader; a stream
    that ends early is a truncated archive, not a short file.
    """

    def __init__(self, stream: Any, size: int, closers: list[Any], what: str) -> None:
        super().__init__()
        self._stream = stream
        self._remaining = size
        self._closers = closers
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._remaining <= 0:
            return 0
        want = min(len(buffer), self._remaining, CHUNK_SIZE)
        data = self._stream.read(want)
        if not data:
            raise StoreError(f"{self._what} is truncated")
        buffer[: len(data)] = data
        self._remaining -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            for closer in reversed(self._closers):
                try:
                    closer.close()
                except OSError:
                    pass
        super().close()


class _TarTarget:
    """Adapts a sink to the ``write``/``tell`` file interface tarfile writes through."""

    def __init__(self, sink: AtomicFileSink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink.write(bytes(data))
        return len(data)

    def tell(self) -> int:
        return self._sink.size


@contextmanager
def atomic_tar(fs: AbstractFileSystem, path: str) -> Iterator[tarfile.TarFile]:
    """A tar built in a temporary sibling that replaces ``path`` only when the block ends without error.

    Archives are written whole, once a run has everything (a tar cannot be appended to
    safely by parallel workers), so a reader sees the old archive or the new one.
    """
    sink = AtomicFileSink(fs, path, overwrite=True)
    try:
        with tarfile.open(fileobj=_TarTarget(sink), mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
            yield tar
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def tar_info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    """Fixed metadata, so the same images always give the same archive bytes."""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mtime = 0
    info.mode = 0o755 if directory else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class FsStore:
    """Base for stores that live at one fsspec URL.

    Only ``url`` is pickled; the filesystem object (which may hold sessions or
    credentials) and any caches are recreated lazily in each worker.
    """

    def __init__(self, url: str) -> None:
        if not url:
            raise StoreError("a store needs a path or URL")
        self.url = url
        self._fs_pair: tuple[AbstractFileSystem, str] | None = None
        self._lock = threading.RLock()
        self._reset_cache()

    def _reset_cache(self) -> None:
        """Forget cached content; subclasses extend this with their own caches."""

    @property
    def fs(self) -> AbstractFileSystem:
        return self._open()[0]

    @property
    def root(self) -> str:
        return self._open()[1]

    def _open(self) -> tuple[AbstractFileSystem, str]:
        if self._fs_pair is None:
            self._fs_pair = open_fs(self.url)
        return self._fs_pair

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
