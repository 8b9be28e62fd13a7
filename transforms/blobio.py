"""Streaming blob copies: bounded chunks, digests verified before anything is visible.

A blob is read once and fanned out to every sink that still needs it, so one source
read serves many destinations. The uncompressed digest (diff_id) can be computed in
the same pass, which conversion from schema1 needs and nothing else provides.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import BinaryIO, Sequence

import zstandard
from isal import isal_zlib

from transforms.formats import digest as digestlib
from transforms.stores.base import BlobSink

log = logging.getLogger(__name__)

#: Read size: large enough for throughput, small enough that N parallel copies stay bounded.
DEFAULT_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class BlobVerificationError(Exception):
    """The bytes read do not match the digest or size that names them."""


class _HashWriter:
    """File-like sink for zstandard's stream_writer that only hashes what it is given."""

    def __init__(self, h: "hashlib._Hash") -> None:
        self._h = h

    def write(self, data: bytes) -> int:
        self._h.update(data)
        return len(data)


class DiffIdHasher:
    """sha256 of a layer's uncompressed tar, fed with its stored (maybe compressed) bytes.

    The compression is sniffed from magic bytes rather than trusted from the media
    type: real images label uncompressed tars as ``tar.gzip``. Output is produced in
    bounded pieces, so a highly compressible layer cannot blow up memory.
    """

    def __init__(self, out_chunk: int = DEFAULT_CHUNK) -> None:
        self._h = hashlib.sha256()
        self._head = b""
        self._mode: str | None = None
        self._gz = None
        self._zst = None
        self._out_chunk = out_chunk
        self.uncompressed_size = 0

    def update(self, chunk: bytes) -> None:
        if self._mode is None:
            self._head += chunk
            if len(self._head) < 4:
                return
            chunk, self._head = self._head, b""
            if chunk.startswith(_GZIP_MAGIC):
                self._mode = "gzip"
                self._gz = isal_zlib.decompressobj(wbits=31)
            elif chunk.startswith(_ZSTD_MAGIC):
                self._mode = "zstd"
                self._zst = zstandard.ZstdDecompressor().stream_writer(
                    _SizeCounting(self), write_size=self._out_chunk, closefd=False
                )
            else:
                self._mode = "none"
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        if self._mode == "none":
            self._h.update(chunk)
            self.uncompressed_size += len(chunk)
        elif self._mode == "zstd":
            self._zst.write(chunk)
        else:
            self._feed_gzip(chunk)

    def _feed_gzip(self, data: bytes) -> None:
        while data:
            out = self._gz.decompress(data, self._out_chunk)
            self._h.update(out)
            self.uncompressed_size += len(out)
            if self._gz.eof:
                # Concatenated gzip members are one stream (pigz, some layer builders).
                data = self._gz.unused_data
                self._gz = isal_zlib.decompressobj(wbits=31)
                if data and not data.startswith(_GZIP_MAGIC):
                    raise BlobVerificationError("trailing garbage after gzip stream")
            else:
                data = self._gz.unconsumed_tail

    def hexdigest(self) -> str:
        if self._mode is None:  # fewer than 4 bytes in all: cannot be compressed
            self._mode = "none"
            head, self._head = self._head, b""
            self._feed(head)
        if self._mode == "zstd":
            self._zst.flush()
        return self._h.hexdigest()

    def digest(self) -> str:
        return f"sha256:{self.hexdigest()}"


class _SizeCounting:
    def __init__(self, owner: DiffIdHasher) -> None:
        self._owner = owner

    def write(self, data: bytes) -> int:
        self._owner._h.update(data)
        self._owner.uncompressed_size += len(data)
        return len(data)


@dataclass
class CopyOutcome:
    size: int
    diff_id: str | None
    #: Index of each sink that failed while writing, with the error; those were aborted.
    sink_errors: dict[int, str] = field(default_factory=dict)


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
    destination does not cost the rest a second read of the source.
    """
    h = digestlib.hasher(expected_digest)
    diff = DiffIdHasher() if want_diff_id else None
    live = dict(enumerate(sinks))
    errors: dict[int, str] = {}
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
            h.update(chunk)
            if diff is not None:
                diff.update(chunk)
            for i, sink in list(live.items()):
                try:
                    sink.write(chunk)
                except Exception as exc:  # one destination failing must not stop the others
                    errors[i] = _one_line(exc)
                    _abort(sink)
                    del live[i]
        if expected_size is not None and expected_size >= 0 and size != expected_size:
            raise BlobVerificationError(
                f"blob {expected_digest} has {size} bytes, its descriptor says {expected_size}"
            )
        actual = f"{expected_digest.split(':', 1)[0]}:{h.hexdigest()}"
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
            errors[i] = _one_line(exc)
            _abort(sink)
    return CopyOutcome(size=size, diff_id=diff_id, sink_errors=errors)


def _abort(sink: BlobSink) -> None:
    try:
        sink.abort()
    except Exception:  # cleanup is best effort; the original error is what matters
        log.debug("abort failed", exc_info=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
