"""Layer compression: which one a blob uses, and its uncompressed bytes in bounded pieces.

Magic bytes decide, never media types: real images label plain tars ``tar.gzip``.

What may follow a compressed stream is containers/image's rule, so that an image we
accept is one skopeo, podman and buildah accept too: a gzip member is followed by another
member or by the end, and zstd frames by other frames (skippable ones are passed over) or
by the end. Zero padding counts as trailing garbage: skopeo 1.9 refuses a layer with it
("gzip: invalid header", or "unexpected EOF" under ten bytes; "magic number mismatch"
for zstd) wherever it decompresses one, and Docker reads gzip with the same Go reader.
"""

from __future__ import annotations

from typing import Iterator

import zstandard
from isal import isal_zlib

from imagepush.transforms.formats.descriptor import FormatError

GZIP = "gzip"
ZSTD = "zstd"
XZ = "xz"
BZIP2 = "bzip2"
NONE = "none"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
_BZIP2_BLOCK_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
#: Leading bytes :func:`sniff` needs to tell every compression apart.
SNIFF_SIZE = 10
#: Leading bytes that tell a layer's compression (gzip or zstd) from none.
_LAYER_SNIFF_SIZE = len(ZSTD_MAGIC)
#: Default bound on one piece of output.
OUT_CHUNK = 1 << 20


class DecompressionError(FormatError):
    """A blob's bytes are not the compressed stream its first bytes announce."""


def sniff(head: bytes) -> str:
    """The compression a stream starting with ``head`` uses: one of the names above."""
    if head.startswith(GZIP_MAGIC):
        return GZIP
    if head.startswith(ZSTD_MAGIC):
        return ZSTD
    if head.startswith(XZ_MAGIC):
        return XZ
    if head.startswith(BZIP2_MAGIC) and head[3:4] in b"123456789" and head[4:10] in _BZIP2_BLOCK_MAGICS:
        # "BZh" alone could begin a plain tar's first file name; the block magic cannot.
        return BZIP2
    return NONE


class Decompressor:
    """A layer's stored bytes in, its uncompressed tar out, in pieces of at most ``out_chunk``.

    The bound is what lets many copies run side by side: 64 MiB of a sparse file's zeros
    are 2 kB of zstd. Layers are gzip, zstd or plain; plain bytes (and xz or bzip2, which
    no layer type names) pass through in the pieces they arrive in.
    """

    def __init__(self, out_chunk: int = OUT_CHUNK) -> None:
        self._out_chunk = out_chunk
        self._head = b""
        self._stream: _Gzip | _Zstd | None = None
        #: The compression found, once enough bytes arrived to tell.
        self.mode: str | None = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.mode is None:
            self._head += data
            if len(self._head) < _LAYER_SNIFF_SIZE:
                return
            data, self._head = self._head, b""
            self._start(data)
        if self._stream is None:
            if data:
                yield data
        else:
            yield from self._stream.feed(data)

    def finish(self) -> Iterator[bytes]:
        """The rest of the output; raises if the stream stopped inside a member or frame."""
        if self.mode is None:  # too short to be compressed
            head, self._head = self._head, b""
            self._start(head)
            if head:
                yield head
        if self._stream is not None:
            self._stream.finish()

    def _start(self, head: bytes) -> None:
        mode = sniff(head)
        if mode == GZIP:
            self._stream = _Gzip(self._out_chunk)
        elif mode == ZSTD:
            self._stream = _Zstd(self._out_chunk)
        else:
            mode = NONE
        self.mode = mode


class _Gzip:
    """gzip members one after another, each inflated by isal with a bound on every call."""

    def __init__(self, out_chunk: int) -> None:
        self._out_chunk = out_chunk
        self._member = None
        #: Bytes after a member, too few yet to tell whether another member starts.
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        data, self._pending = self._pending + data, b""
        while True:
            if self._member is None:
                if len(data) < len(GZIP_MAGIC):
                    self._pending = data
                    return
                if not data.startswith(GZIP_MAGIC):
                    raise DecompressionError("the gzip stream is followed by bytes that are not a gzip member")
                self._member = isal_zlib.decompressobj(wbits=31)
            try:
                out = self._member.decompress(data, self._out_chunk)
            except isal_zlib.error as exc:
                raise DecompressionError(f"not valid gzip ({exc})") from None
            if out:
                yield out
            if self._member.eof:
                data, self._member = self._member.unused_data, None
                continue
            data = self._member.unconsumed_tail
            # A full piece may leave output inside inflate even with no input left.
            if not data and len(out) < self._out_chunk:
                return

    def finish(self) -> None:
        if self._pending and not GZIP_MAGIC.startswith(self._pending):
            raise DecompressionError("the gzip stream is followed by bytes that are not a gzip member")
        if self._member is not None or self._pending:
            raise DecompressionError("the gzip stream is truncated")


# zstd framing (RFC 8878), read only to know where each block ends.
_SKIPPABLE_MAGICS = range(0x184D2A50, 0x184D2A60)
_DICT_ID_SIZES = (0, 1, 2, 4)
_CONTENT_SIZE_SIZES = (0, 2, 4, 8)
_RLE_BLOCK, _RESERVED_BLOCK = 1, 3
_MAGIC, _FRAME_FLAGS, _FRAME_FIELDS, _BLOCK_HEADER, _BLOCK, _CHECKSUM, _SKIP_SIZE, _SKIP = range(8)


class _Zstd:
    """zstd frames one after another, handed to zstandard one block at a time.

    zstandard's ``decompressobj`` returns all that a call decodes, without a limit, and a
    four-byte RLE block stands for 128 KiB: a 16 KiB slice of a sparse file's layer comes
    out as 500 MiB at once. No block decodes to more than 128 KiB, so the input is cut
    after every block; the headers are read here only to find those cuts (zstandard still
    checks everything), and skippable frames, which hold no image data, are dropped.
    """

    def __init__(self, out_chunk: int) -> None:
        self._out_chunk = out_chunk
        self._frame = None
        self._field = _MAGIC
        self._want = 4
        self._head = b""
        #: Bytes of the current block, checksum or skippable frame still to come.
        self._remaining = 0
        self._last_block = False
        self._has_checksum = False
        #: Input for zstandard, held until the next cut.
        self._input: list[bytes] = []

    def feed(self, data: bytes) -> Iterator[bytes]:
        pos = 0
        while pos < len(data):
            if self._field in (_BLOCK, _CHECKSUM, _SKIP):
                take = min(self._remaining, len(data) - pos)
                if self._field != _SKIP:
                    self._input.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    yield from self._end_of_body()
                continue
            take = min(self._want - len(self._head), len(data) - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._want:
                head, self._head = self._head, b""
                yield from self._header(head)
        yield from self._decode()

    def finish(self) -> None:
        if self._field != _MAGIC or self._head:
            raise DecompressionError("the zstd stream is truncated")

    def _header(self, head: bytes) -> Iterator[bytes]:
        field = self._field
        if field == _MAGIC:
            if head == ZSTD_MAGIC:
                self._frame = zstandard.ZstdDecompressor().decompressobj()
                self._input.append(head)
                self._expect(_FRAME_FLAGS, 1)
            elif int.from_bytes(head, "little") in _SKIPPABLE_MAGICS:
                self._expect(_SKIP_SIZE, 4)
            else:
                raise DecompressionError("the zstd stream is followed by bytes that are not a zstd frame")
        elif field == _SKIP_SIZE:
            self._body(_SKIP, int.from_bytes(head, "little"))
        elif field == _FRAME_FLAGS:
            self._input.append(head)
            flags = head[0]
            single_segment = bool(flags & 0x20)
            self._has_checksum = bool(flags & 0x04)
            content_size = _CONTENT_SIZE_SIZES[flags >> 6] or (1 if single_segment else 0)
            rest = (0 if single_segment else 1) + _DICT_ID_SIZES[flags & 0x03] + content_size
            if rest:
                self._expect(_FRAME_FIELDS, rest)
            else:
                self._expect(_BLOCK_HEADER, 3)
        elif field == _FRAME_FIELDS:
            self._input.append(head)
            self._expect(_BLOCK_HEADER, 3)
        else:  # _BLOCK_HEADER
            self._input.append(head)
            header = int.from_bytes(head, "little")
            block_type = (header >> 1) & 0x03
            if block_type == _RESERVED_BLOCK:
                raise DecompressionError("not valid zstd (a block of the reserved type)")
            self._last_block = bool(header & 0x01)
            size = 1 if block_type == _RLE_BLOCK else header >> 3
            self._body(_BLOCK, size)
            if not size:
                yield from self._end_of_body()

    def _end_of_body(self) -> Iterator[bytes]:
        field = self._field
        if field == _SKIP:
            self._expect(_MAGIC, 4)
            return
        if field == _BLOCK:
            yield from self._decode()
            if not self._last_block:
                self._expect(_BLOCK_HEADER, 3)
                return
            if self._has_checksum:
                self._body(_CHECKSUM, 4)
                return
        yield from self._decode()
        if self._frame is None or not self._frame.eof:
            raise DecompressionError("not valid zstd (a frame ends before its last block)")
        self._frame = None
        self._expect(_MAGIC, 4)

    def _expect(self, field: int, size: int) -> None:
        self._field, self._want = field, size

    def _body(self, field: int, size: int) -> None:
        self._field, self._remaining = field, size
        if field == _SKIP and not size:
            self._expect(_MAGIC, 4)

    def _decode(self) -> Iterator[bytes]:
        if not self._input or self._frame is None:
            return
        data, self._input = b"".join(self._input), []
        try:
            out = self._frame.decompress(data)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"not valid zstd ({exc})") from None
        for start in range(0, len(out), self._out_chunk):
            yield out[start : start + self._out_chunk]
