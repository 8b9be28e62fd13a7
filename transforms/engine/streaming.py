"""Streaming blob copies: bounded chunks, digests verified before anything is visible.

A blob is read once and fanned out to every sink that still needs it, so one source
read serves many destinations. The uncompressed digest (diff_id) can be computed in
the same pass, which conversion from schema1 needs and nothing else provides.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Sequence

import zstandard
from isal import isal_zlib

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats.compression import Decompressor
from imagepush.transforms.errors import DIGEST_MISMATCH, ImagepushError
from imagepush.transforms.stores.base import BlobSink

log = logging.getLogger(__name__)

#: Read size. Every chunk costs a read, a hand-off and a send per destination in Python:
#: 2 MiB (with one chunk queued per registry upload) costs a second registry destination
#: about 7 % less CPU than 1 MiB (benchmarks/sync_vs_skopeo.py, workload f) at the same
#: peak RSS (about 150 MB); 4 MiB saved no more and raised the peak to 190-210 MB.
DEFAULT_CHUNK = 2 << 20


class BlobVerificationError(ImagepushError):
    """The bytes read do not match the digest or size that names them."""

    kind = DIGEST_MISMATCH


class DiffIdHasher:
    """sha256 of a layer's uncompressed tar, fed with its stored (maybe compressed) bytes."""

    def __init__(self, out_chunk: int = DEFAULT_CHUNK) -> None:
        self._h = hashlib.sha256()
        self._d = Decompressor(out_chunk)
        self.uncompressed_size = 0

    def _take(self, pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            self._h.update(piece)
            self.uncompressed_size += len(piece)

    def update(self, chunk: bytes) -> None:
        self._take(self._d.feed(chunk))

    def hexdigest(self) -> str:
        self._take(self._d.finish())
        return self._h.hexdigest()

    def digest(self) -> str:
        return f"sha256:{self.hexdigest()}"


@dataclass
class CopyOutcome:
    size: int
    diff_id: str | None
    #: Index of each sink that failed while writing, with the error; those were aborted.
    sink_errors: dict[int, Exception] = field(default_factory=dict)


def stream_blob(
    reader: BinaryIO,
    expected_digest: str,
    expected_size: int | None,
    sinks: Sequence[BlobSink],
    *,
    want_diff_id: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> CopyOutcome:
    """Copy ``reader`` into every sink, committing them only if the digest verifies.

    A sink that fails is aborted and reported; the others go on, so one bad
    destination does not cost the rest a second read of the source. When every sink
    verifies the digest itself before the blob becomes visible (a registry's final PUT),
    hashing here too would only spend CPU the receivers spend anyway, so it is skipped.
    """
    verified_downstream = bool(sinks) and all(s.verifies_digest for s in sinks)
    h = None if verified_downstream else digestlib.hasher(expected_digest)
    diff = DiffIdHasher() if want_diff_id else None
    live = dict(enumerate(sinks))
    errors: dict[int, Exception] = {}
    size = 0
    try:
        while True:
            chunk = reader.read(chunk_size)
            if not chunk:
                break
            size += len(chunk)
            if expected_size is not None and expected_size >= 0 and size > expected_size:
                raise BlobVerificationError(
                    f"blob {expected_digest} is larger than its descriptor's {expected_size} bytes"
                )
            if h is not None:
                h.update(chunk)
            if diff is not None:
                diff.update(chunk)
            for i, sink in list(live.items()):
                try:
                    sink.write(chunk)
                except Exception as exc:  # one destination failing must not stop the others
                    errors[i] = exc
                    _abort(sink)
                    del live[i]
        if expected_size is not None and expected_size >= 0 and size != expected_size:
            raise BlobVerificationError(
                f"blob {expected_digest} has {size} bytes, its descriptor says {expected_size}"
            )
        if h is not None:
            actual = digestlib.of_hasher(h)
            if actual != expected_digest:
                raise BlobVerificationError(f"blob content is {actual}, not {expected_digest}")
        diff_id = diff.digest() if diff is not None else None
    except BaseException:
        for sink in live.values():
            _abort(sink)
        raise
    for i, sink in live.items():
        try:
            sink.commit()
        except Exception as exc:
            errors[i] = exc
            _abort(sink)
    return CopyOutcome(size=size, diff_id=diff_id, sink_errors=errors)


def _abort(sink: BlobSink) -> None:
    try:
        sink.abort()
    except Exception:  # cleanup is best effort; the original error is what matters
        log.debug("abort failed", exc_info=True)


#: Compression settings used when layers are rewritten: fixed, so output is deterministic.
GZIP_LEVEL = 1  # isal's level 1: several times zlib's speed at a similar ratio for tars
ZSTD_LEVEL = 3


class _Compressor:
    def __init__(self, compression: str) -> None:
        self.compression = compression
        if compression == "gzip":
            self._c = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        elif compression == "zstd":
            self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        elif compression == "none":
            self._c = None
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def compress(self, data: bytes) -> bytes:
        return data if self._c is None else self._c.compress(data)

    def flush(self) -> bytes:
        return b"" if self._c is None else self._c.flush()


@dataclass
class Recompressed:
    digest: str
    size: int
    diff_id: str


def recompress(
    reader: BinaryIO,
    expected_digest: str,
    expected_size: int | None,
    compression: str,
    out: BinaryIO,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> Recompressed:
    """Rewrite a layer with another compression into ``out`` (a local spool file).

    The source is verified against its digest as it streams; the new blob's digest and
    the layer's diff_id are computed on the way, so one read gives everything a manifest
    needs. Nothing is committed anywhere here: the caller writes ``out`` to destinations
    once its digest is known.
    """
    src_hash = digestlib.hasher(expected_digest)
    out_hash = hashlib.sha256()
    diff = hashlib.sha256()
    decomp = Decompressor(chunk_size)
    comp = _Compressor(compression)
    size = written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        if data:
            out.write(data)
            out_hash.update(data)
            written += len(data)

    def plain(pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            diff.update(piece)
            emit(comp.compress(piece))

    while chunk := reader.read(chunk_size):
        size += len(chunk)
        if expected_size is not None and expected_size >= 0 and size > expected_size:
            raise BlobVerificationError(f"blob {expected_digest} is larger than its descriptor's {expected_size} bytes")
        src_hash.update(chunk)
        plain(decomp.feed(chunk))
    plain(decomp.finish())
    emit(comp.flush())
    if expected_size is not None and expected_size >= 0 and size != expected_size:
        raise BlobVerificationError(f"blob {expected_digest} has {size} bytes, its descriptor says {expected_size}")
    actual = digestlib.of_hasher(src_hash)
    if actual != expected_digest:
        raise BlobVerificationError(f"blob content is {actual}, not {expected_digest}")
    return Recompressed(digest=f"sha256:{out_hash.hexdigest()}", size=written, diff_id=f"sha256:{diff.hexdigest()}")
