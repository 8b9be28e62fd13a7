"""Small fsspec helpers shared by the file-based stores (OCI layout, dir:, docker-archive).

Every file store is addressed by a URL that may be a plain local path or any fsspec URL
(``memory://``, ``s3://``, ``file://`` ...). Stores keep only that string so they pickle
cheaply to Beam workers and open the filesystem lazily on first use.

Writes go to a temporary sibling and are renamed into place, so a reader (or a retried
Beam bundle) never sees a half-written blob or index under its final name.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import posixpath
import re
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterable, Iterator

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.stores.base import BlobSink, NotFound, StoreError
from imagepush.transforms.stores.stopping import OPEN_SINKS

log = logging.getLogger(__name__)

#: Copy granularity: big enough for throughput, small enough to keep many copies in memory.
CHUNK_SIZE = 1 << 20
#: Prefix of temporary files; stores skip such names when listing.
TMP_PREFIX = ".tmp-"
#: The whole name of a temporary file this project writes: only those are ever cleaned up,
#: never another program's ``.tmp-`` files in a folder an archive shares with them.
TMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{32}$")
#: Appended to an archive's path for the folder its content is staged in until publish.
STAGING_SUFFIX = ".imagepush-staging"
#: A temporary file untouched this long belongs to a run that stopped (a crash, a kill):
#: a later run removes it when it prepares the store. A live writer touches its file at
#: least once per chunk, and several runs (or a retried Beam bundle) may write one store
#: at once, so only what is clearly abandoned goes.
LEFTOVER_AGE = 3600.0


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


def _discard(file: Any) -> None:
    """Close a file being written without publishing what it holds.

    Closing an fsspec buffered file (S3, GCS) completes its upload, a multipart upload
    included; ``discard`` aborts it instead, so nothing of an aborted write is stored.
    """
    try:
        if isinstance(file, AbstractBufferedFile):
            if not file.closed:
                file.discard()
                file.closed = True  # or its close (and __del__) would upload the buffer
        else:
            file.close()
    except Exception:  # cleanup is best effort; the error that caused it is what matters
        log.debug("could not discard a temporary file", exc_info=True)


def _modified(info: dict[str, Any]) -> float | None:
    """An fsspec listing entry's modification time, in seconds since the epoch, if it says."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "Initiated"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp() if value.tzinfo else value.replace(tzinfo=dt.timezone.utc).timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def is_abandoned(info: dict[str, Any], older_than: float, now: float | None = None) -> bool:
    """Whether a listed entry was last modified more than ``older_than`` seconds ago."""
    modified = _modified(info)
    return modified is not None and (time.time() if now is None else now) - modified > older_than


def remove_leftovers(fs: AbstractFileSystem, folders: Iterable[str], where: str,
                     older_than: float | None = None) -> int:
    """Remove the abandoned temporary files (``.tmp-<uuid>``) directly inside ``folders``: how many.

    One listing per folder; a folder that is not there has nothing to clean, and a file
    that cannot be removed is left for the next run (cleanup never fails a run). On S3,
    the multipart uploads of such files that a killed run never finished are aborted too.
    """
    older_than = LEFTOVER_AGE if older_than is None else older_than
    folders = list(folders)
    removed = _abort_stale_multipart(fs, folders, where, older_than)
    now = time.time()
    for folder in folders:
        try:
            entries = fs.ls(folder, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except Exception:
            log.debug("%s: could not list %s for leftovers", where, folder, exc_info=True)
            continue
        for info in entries:
            path = info["name"]
            if not TMP_NAME.match(posixpath.basename(path.rstrip("/"))):
                continue
            if not is_abandoned(info, older_than, now):
                continue
            try:
                fs.rm(path, recursive=info.get("type") == "directory")
            except Exception:
                log.debug("%s: could not remove %s", where, path, exc_info=True)
                continue
            log.debug("%s: removed %s, left by an earlier run", where, path)
            removed += 1
    return removed


def _abort_stale_multipart(fs: AbstractFileSystem, folders: list[str], where: str, older_than: float) -> int:
    """Abort the multipart uploads of abandoned temporary files in or below ``folders`` (S3 through s3fs).

    A process killed while writing a large file leaves its multipart upload open: no
    object, but parts the bucket keeps (and bills) until someone aborts them. Below the
    folders too, since a blob folder holds no object until its first blob is written. An
    upload is abandoned when its last part (or its start, with none) is older than
    ``older_than``: a long upload that is still sending parts is left alone.
    """
    if not all(hasattr(fs, name) for name in ("list_multipart_uploads", "abort_mpu", "call_s3")):
        return 0
    wanted = {folder.rstrip("/") for folder in folders}
    aborted = 0
    now = time.time()
    for bucket in sorted({folder.split("/", 1)[0] for folder in wanted}):
        try:
            uploads = fs.list_multipart_uploads(bucket)
        except Exception:
            log.debug("%s: could not list the multipart uploads of %s", where, bucket, exc_info=True)
            continue
        for upload in uploads:
            path = f"{bucket}/{upload.get('Key', '')}"
            folder = posixpath.dirname(path)
            if not TMP_NAME.match(posixpath.basename(path)) or not any(
                folder == w or folder.startswith(w + "/") for w in wanted
            ):
                continue
            try:
                if not is_abandoned(upload, older_than, now):
                    continue
                parts = fs.call_s3("list_parts", Bucket=bucket, Key=upload["Key"],
                                   UploadId=upload["UploadId"]).get("Parts") or []
                if any(not is_abandoned(part, older_than, now) for part in parts):
                    continue
                fs.abort_mpu(bucket, upload["Key"], upload["UploadId"])
            except Exception:
                log.debug("%s: could not abort the multipart upload of %s", where, path, exc_info=True)
                continue
            log.debug("%s: aborted the multipart upload of %s, left by an earlier run", where, path)
            aborted += 1
    return aborted


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
            OPEN_SINKS.opened(self)  # from here on a stop must remove the temporary file
            try:
                self._fs.makedirs(posixpath.dirname(self._tmp), exist_ok=True)
                self._file = self._fs.open(self._tmp, "wb")
                if self._finished:  # aborted by a stopping process meanwhile
                    raise StoreError(f"write to {self.path} after abort")
            except BaseException:
                self._finished = False
                self.abort()
                raise

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
        OPEN_SINKS.closed(self)

    def abort(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            _discard(file)
        if not self._finished:
            _remove_quietly(self._fs, self._tmp)
        self._finished = True
        OPEN_SINKS.closed(self)


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
