"""One decompressor for every layer: what it accepts is what skopeo accepts, in bounded pieces."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from imagepush.pipeline.cli import main
from imagepush.transforms.formats.compression import DecompressionError, Decompressor, sniff

try:
    from tests.conftest import require_tool
except ImportError:  # tests/ is not a package
    from conftest import require_tool  # type: ignore[no-redef]

TAR = b"".join(bytes([i]) * 1000 for i in range(200))  # 200 kB, compressible but not trivially
HALF = len(TAR) // 2


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def zst_streamed(data: bytes) -> bytes:
    """A frame written as a stream: no content size, a window descriptor, a checksum."""
    c = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    return c.compress(data) + c.flush()


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A5E, len(payload)) + payload


def decompress(stored: bytes, chunk: int = 65536, out_chunk: int = 1 << 20) -> bytes:
    d = Decompressor(out_chunk)
    pieces = []
    for start in range(0, len(stored), chunk):
        pieces.extend(d.feed(stored[start : start + chunk]))
    pieces.extend(d.finish())
    return b"".join(pieces)


@pytest.mark.parametrize(
    "head, expected",
    [
        (gz(b"x")[:10], "gzip"),
        (zst(b"x")[:10], "zstd"),
        (lzma.compress(b"x")[:10], "xz"),
        (b"BZh91AY&SY", "bzip2"),
        (b"BZh_a_file", "none"),  # a plain tar whose first name starts "BZh"
        (TAR[:10], "none"),
        (b"", "none"),
    ],
)
def test_sniff_reads_magic_bytes(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize(
    "name, stored",
    [
        ("gzip", gz(TAR)),
        ("gzip members", gz(TAR[:HALF]) + gz(TAR[HALF:])),
        ("gzip with an empty member", gz(TAR) + gz(b"")),
        ("zstd", zst(TAR)),
        ("zstd frames", zst(TAR[:HALF]) + zst(TAR[HALF:])),
        ("zstd streamed with a checksum", zst_streamed(TAR)),
        ("zstd with an empty frame", zst(b"") + zst(TAR)),
        ("zstd with skippable frames", zst(TAR[:HALF]) + skippable(b"note") + zst(TAR[HALF:]) + skippable(b"")),
        ("plain tar", TAR),
    ],
)
def test_every_accepted_stream_gives_the_uncompressed_tar(name: str, stored: bytes, chunk: int) -> None:
    assert decompress(stored, chunk) == TAR


def test_bytes_that_are_not_gzip_or_zstd_pass_through() -> None:
    xz = lzma.compress(TAR)
    assert decompress(xz, 1000) == xz
    assert decompress(b"ab", 1) == b"ab"
    assert decompress(b"", 1) == b""


@pytest.mark.parametrize(
    "stored, message",
    [
        (gz(TAR) + b"\0" * 512, "followed by bytes that are not a gzip member"),
        (gz(TAR[:HALF]) + gz(TAR[HALF:]) + b"\0" * 1024, "followed by bytes that are not a gzip member"),
        (gz(TAR) + b"\0", "followed by bytes that are not a gzip member"),
        (gz(TAR) + b"garbage!", "followed by bytes that are not a gzip member"),
        (gz(TAR) + b"\x1f", "truncated"),
        (gz(TAR)[:-3], "truncated"),
        (gz(TAR)[:-8] + bytes(4) + gz(TAR)[-4:], "not valid gzip"),
        (zst(TAR) + b"\0" * 512, "followed by bytes that are not a zstd frame"),
        (zst(TAR) + b"garbage!", "followed by bytes that are not a zstd frame"),
        (zst(TAR)[:-5], "truncated"),
        (zst(TAR) + zst(TAR)[:6], "truncated"),
    ],
    ids=[
        "gzip+zero padding", "gzip members+zero padding", "gzip+one zero", "gzip+garbage",
        "gzip+half a magic", "gzip cut short", "gzip with a wrong checksum",
        "zstd+zero padding", "zstd+garbage", "zstd cut short", "zstd+start of a frame",
    ],
)
def test_anything_after_or_short_of_a_complete_stream_is_refused(stored: bytes, message: str) -> None:
    for chunk in (1, 4096, len(stored)):
        with pytest.raises(DecompressionError, match=message):
            decompress(stored, chunk)


@pytest.mark.parametrize("compress", [gz, zst], ids=["gzip", "zstd"])
def test_output_comes_in_bounded_pieces_whatever_the_ratio(compress) -> None:
    """64 MiB of zeros (a sparse file) compress to a few kB; no piece may exceed the bound."""
    zeros = 64 << 20
    stored = compress(b"\0" * zeros)
    assert len(stored) < 100_000
    d = Decompressor(out_chunk=1 << 20)
    sizes = [len(piece) for piece in d.feed(stored)] + [len(piece) for piece in d.finish()]
    assert sum(sizes) == zeros
    assert max(sizes) <= 1 << 20


# --------------------------------------------------------------------------- skopeo


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(TAR)
        tar.addfile(info, io.BytesIO(TAR))
    return buf.getvalue()


def _oci_layout(path: Path, layer: bytes, diff_id: str) -> None:
    """An OCI layout named ``t`` whose one layer has exactly the given bytes."""
    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": len(layer)}],
    }).encode()
    (path / "blobs" / "sha256").mkdir(parents=True)
    for blob in (layer, config, manifest):
        (path / "blobs" / "sha256" / sha(blob)[7:]).write_bytes(blob)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))


@pytest.mark.integration
@pytest.mark.parametrize("padded", [False, True], ids=["gzip members", "gzip members+zero padding"])
def test_a_layer_is_decompressed_exactly_when_skopeo_decompresses_it(padded: bool, tmp_path: Path) -> None:
    """Writing a docker-archive decompresses every layer, in skopeo as here."""
    skopeo = require_tool("skopeo")
    tar = _layer_tar()
    layer = gz(tar[:3000]) + gz(tar[3000:]) + (b"\0" * 512 if padded else b"")
    _oci_layout(tmp_path / "layout", layer, "sha256:" + hashlib.sha256(tar).hexdigest())
    theirs = subprocess.run(
        [skopeo, "--insecure-policy", "copy", "-q", f"oci:{tmp_path}/layout:t", f"docker-archive:{tmp_path}/skopeo.tar:x/y:1"],
        capture_output=True, timeout=120,
    )
    ours = main(["copy", f"oci:{tmp_path}/layout:t", f"docker-archive:{tmp_path}/ours.tar:x/y:1",
                 "--audit", str(tmp_path / "audit.parquet")])
    if padded:
        assert theirs.returncode != 0 and b"gzip: invalid header" in theirs.stderr
        assert ours == 1
        assert not (tmp_path / "ours.tar").exists()
    else:
        assert theirs.returncode == 0 and ours == 0
        with tarfile.open(tmp_path / "ours.tar") as archive:
            written = {m.name: archive.extractfile(m).read() for m in archive if m.name.endswith(".tar")}
        assert list(written.values()) == [tar]
