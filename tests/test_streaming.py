"""Streaming blob copies (engine/streaming.py): bounded chunks, verified before anything is visible."""

from __future__ import annotations

import gzip
import hashlib
import io

import pytest
import zstandard

from imagepush.transforms.engine.streaming import BlobVerificationError, DiffIdHasher, stream_blob
from imagepush.transforms.stores.base import BlobSink


class RecordingSink(BlobSink):
    def __init__(self, fail_on_write: bool = False) -> None:
        self.data = bytearray()
        self.committed = self.aborted = False
        self.fail_on_write = fail_on_write

    def write(self, chunk: bytes) -> None:
        if self.fail_on_write:
            raise OSError("disk full")
        self.data += chunk

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: several chunks


def test_blob_is_committed_to_every_sink_when_digest_matches():
    sinks = [RecordingSink(), RecordingSink()]
    outcome = stream_blob(io.BytesIO(PAYLOAD), sha(PAYLOAD), len(PAYLOAD), sinks, chunk_size=65536)
    assert outcome.size == len(PAYLOAD)
    assert outcome.sink_errors == {}
    assert all(s.committed and not s.aborted and bytes(s.data) == PAYLOAD for s in sinks)


class TricklingReader(io.RawIOBase):
    """A body that arrives a few bytes at a time, as a socket may hand it over: short ``readinto``s."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at, self._step = data, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._step = self._step % 7 + 1
        piece = self._data[self._at:self._at + min(len(buffer), self._step * 997)]
        buffer[: len(piece)] = piece
        self._at += len(piece)
        return len(piece)


class KeepingSink(RecordingSink):
    """Keeps every chunk as it was handed over."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def write(self, chunk) -> None:
        self.chunks.append(bytes(chunk))


def test_short_reads_deliver_every_byte_in_order_in_pieces_of_at_most_the_chunk_size():
    sinks = [RecordingSink(), KeepingSink()]
    outcome = stream_blob(TricklingReader(PAYLOAD), sha(PAYLOAD), len(PAYLOAD), sinks, chunk_size=4096)
    assert outcome.size == len(PAYLOAD) and outcome.sink_errors == {}
    assert bytes(sinks[0].data) == PAYLOAD and b"".join(sinks[1].chunks) == PAYLOAD
    assert max(len(c) for c in sinks[1].chunks) <= 4096 and all(s.committed for s in sinks)


def test_blob_with_wrong_content_is_never_committed():
    sink = RecordingSink()
    with pytest.raises(BlobVerificationError, match="not sha256:"):
        stream_blob(io.BytesIO(PAYLOAD + b"x"), sha(PAYLOAD), None, [sink])
    assert sink.aborted and not sink.committed


def test_blob_longer_than_descriptor_size_is_refused():
    sink = RecordingSink()
    with pytest.raises(BlobVerificationError, match="larger than its descriptor"):
        stream_blob(io.BytesIO(PAYLOAD), sha(PAYLOAD), 100, [sink], chunk_size=1000)
    assert sink.aborted and not sink.committed


def test_blob_shorter_than_descriptor_size_is_refused():
    sink = RecordingSink()
    with pytest.raises(BlobVerificationError, match="descriptor says"):
        stream_blob(io.BytesIO(PAYLOAD), sha(PAYLOAD), len(PAYLOAD) + 1, [sink])
    assert sink.aborted and not sink.committed


def test_one_failing_destination_does_not_stop_the_others():
    good, bad = RecordingSink(), RecordingSink(fail_on_write=True)
    outcome = stream_blob(io.BytesIO(PAYLOAD), sha(PAYLOAD), len(PAYLOAD), [good, bad])
    assert {i: str(e) for i, e in outcome.sink_errors.items()} == {1: "disk full"}
    assert good.committed and bad.aborted and not bad.committed


def test_diff_id_of_gzip_layer_is_sha256_of_uncompressed_bytes():
    compressed = gzip.compress(PAYLOAD, mtime=0)
    outcome = stream_blob(io.BytesIO(compressed), sha(compressed), None, [], want_diff_id=True, chunk_size=3)
    assert outcome.diff_id == sha(PAYLOAD)


def test_diff_id_spans_concatenated_gzip_members():
    compressed = gzip.compress(PAYLOAD[:1000], mtime=0) + gzip.compress(PAYLOAD[1000:], mtime=0)
    h = DiffIdHasher(out_chunk=4096)
    for i in range(0, len(compressed), 777):
        h.update(compressed[i : i + 777])
    assert h.digest() == sha(PAYLOAD)
    assert h.uncompressed_size == len(PAYLOAD)


def test_diff_id_of_zstd_layer():
    compressed = zstandard.ZstdCompressor().compress(PAYLOAD)
    h = DiffIdHasher()
    h.update(compressed)
    assert h.digest() == sha(PAYLOAD)


def test_uncompressed_layer_labelled_gzip_is_sniffed(public_fixtures):
    # skopeo's fixture labels a plain 2048-byte tar as tar.gzip.
    blobs = [p for p in (public_fixtures / "layouts/skopeo_dir_uncompressed-image-s2").iterdir()
             if p.name != "manifest.json" and p.stat().st_size == 2048]
    assert len(blobs) == 1
    data = blobs[0].read_bytes()
    h = DiffIdHasher()
    h.update(data)
    assert h.digest() == sha(data) == "sha256:" + blobs[0].name


def test_diff_id_of_tiny_blob_without_magic():
    h = DiffIdHasher()
    h.update(b"ab")
    assert h.digest() == sha(b"ab")


@pytest.mark.parametrize("target", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("source", ["gzip", "zstd", "none"])
def test_recompressed_layer_keeps_its_diff_id_and_is_deterministic(source, target):
    from imagepush.transforms.engine.streaming import recompress

    encode = {"gzip": lambda b: gzip.compress(b, mtime=0), "zstd": zstandard.ZstdCompressor().compress,
              "none": lambda b: b}
    stored = encode[source](PAYLOAD)
    outs = []
    for _ in range(2):
        out = io.BytesIO()
        result = recompress(io.BytesIO(stored), sha(stored), len(stored), target, out, chunk_size=50_000)
        outs.append(out.getvalue())
        assert result.diff_id == sha(PAYLOAD)
        assert (result.digest, result.size) == (sha(out.getvalue()), len(out.getvalue()))
    assert outs[0] == outs[1]
    decode = {"gzip": gzip.decompress, "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
              "none": lambda b: b}
    assert decode[target](outs[0]) == PAYLOAD


def test_recompression_refuses_a_source_that_does_not_match_its_digest():
    from imagepush.transforms.engine.streaming import recompress

    with pytest.raises(BlobVerificationError):
        recompress(io.BytesIO(PAYLOAD), sha(PAYLOAD + b"!"), None, "gzip", io.BytesIO())


class VerifyingSink(RecordingSink):
    verifies_digest = True


def test_hashing_is_left_to_receivers_that_verify_the_digest_themselves():
    sinks = [VerifyingSink(), VerifyingSink()]
    outcome = stream_blob(io.BytesIO(PAYLOAD + b"x"), sha(PAYLOAD), None, sinks)
    # The registry's final PUT would refuse this content; no local check stands in its way.
    assert outcome.sink_errors == {} and all(s.committed for s in sinks)


def test_one_non_verifying_sink_keeps_the_local_check():
    sinks = [VerifyingSink(), RecordingSink()]
    with pytest.raises(BlobVerificationError):
        stream_blob(io.BytesIO(PAYLOAD + b"x"), sha(PAYLOAD), None, sinks)
    assert all(s.aborted and not s.committed for s in sinks)
