"""Writing ``docker save`` tarballs that ``docker load`` and skopeo read.

Blobs are staged beside the archive (``PATH.imagepush-staging``) and the tarball is built
once, at publish, because a tar cannot be appended to safely by parallel workers. Layers
are stored uncompressed, as ``docker load`` wants them: each is decompressed while it is
written and filed under its diff_id.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from typing import BinaryIO, Callable

import orjson

from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.compression import Decompressor
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import (
    BlobSink,
    Destination,
    ManifestBlob,
    NotFound,
    Publication,
    PublishErrors,
    StoreError,
)
from imagepush.transforms.stores.docker_archive.names import normalize_tag
from imagepush.transforms.stores.docker_archive.reader import DockerArchiveSource
from imagepush.transforms.stores.fs import (
    CHUNK_SIZE,
    STAGING_SUFFIX,
    AtomicFileSink,
    FsStore,
    atomic_tar,
    digest_parts,
    join,
    remove_leftovers,
    tar_info,
    write_atomic,
)

class _LayerSink(BlobSink):
    """Stores a layer decompressed as ``layers/<diffid-hex>.tar`` plus a blob-digest -> diff_id map.

    The diff_id is known only at the end, so the data goes to a temporary file that is
    renamed once the hash of the uncompressed stream is complete.
    """

    def __init__(self, dest: "DockerArchiveDestination", blob_digest: str) -> None:
        self._dest = dest
        self._blob_digest = blob_digest
        self._out = AtomicFileSink(dest.fs, join(dest.staging, "layers", "pending.tar"))
        self._hash = hashlib.sha256()
        self._decompressor = Decompressor(CHUNK_SIZE)

    def _emit(self, data: bytes) -> None:
        self._hash.update(data)
        self._out.write(data)

    def write(self, chunk: bytes) -> None:
        try:
            for piece in self._decompressor.feed(chunk):
                self._emit(piece)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        try:
            for piece in self._decompressor.finish():
                self._emit(piece)
            diff_id = f"sha256:{self._hash.hexdigest()}"
            self._out.commit_to(self._dest.layer_path(diff_id))
            write_atomic(self._dest.fs, self._dest.diffid_path(self._blob_digest), diff_id.encode())
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._out.abort()


class DockerArchiveDestination(FsStore, Destination):
    """Writes a ``docker save``-compatible tarball: blobs are staged, the tar is built at publish."""

    preferred_format = "v2s2"
    fixed_layer_compression = "none"

    def _where(self) -> str:
        return f"docker-archive:{self.url}"

    @property
    def staging(self) -> str:
        return self.root + STAGING_SUFFIX

    def blob_path(self, digest: str) -> str:
        algorithm, encoded = digest_parts(digest)
        return join(self.staging, "blobs", algorithm, encoded)

    def diffid_path(self, digest: str) -> str:
        algorithm, encoded = digest_parts(digest)
        return join(self.staging, "diffids", algorithm, encoded)

    def layer_path(self, diff_id: str) -> str:
        return join(self.staging, "layers", f"{digest_parts(diff_id)[1]}.tar")

    def prepare(self) -> None:
        fs = self.fs
        if fs.isdir(self.root):
            raise StoreError(f"{self._where()}: {self.url} is a directory, not an archive file")
        parent = posixpath.dirname(self.root)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.makedirs(self.staging, exist_ok=True)

    def clean_leftovers(self) -> int:
        """Temporary files of writes that never finished: in the staging folder and beside the archive.

        What an earlier run staged and committed stays: blobs are named by their digest,
        so this run takes them as they are instead of copying them again.
        """
        fs = self.fs
        folders = [posixpath.dirname(self.root), join(self.staging, "layers")]
        for kind in ("blobs", "diffids"):
            try:
                entries = fs.ls(join(self.staging, kind), detail=True)
            except FileNotFoundError:
                continue
            folders += [e["name"] for e in entries if e.get("type") == "directory"]
        return remove_leftovers(fs, folders, self._where())

    def accepts_manifest(self, media_type: str) -> bool:
        return media_type in mt.IMAGE_MANIFEST_TYPES

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.isfile(self.blob_path(digest)) or self.fs.isfile(self.diffid_path(digest)))

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        if mt.layer_compression(descriptor.media_type) != "unknown":
            return _LayerSink(self, descriptor.digest)
        return AtomicFileSink(self.fs, self.blob_path(descriptor.digest))

    def put_manifest(self, manifest: ManifestBlob, *, root: bool = False) -> None:
        """Archives keep no manifests: ``docker load`` rebuilds the image from config and layers."""

    def publish(self, publications: list[Publication]) -> PublishErrors:
        """Build the whole archive once: configs, each layer once, and manifest.json."""
        if not publications:
            return {}
        groups = self._group(publications)
        fs = self.fs
        previous = DockerArchiveSource(self.url) if fs.isfile(self.root) else None
        try:
            images = [(digest, tags, self._config(digest, previous)) for digest, tags in groups.items()]
            layers: dict[str, tuple[int, Callable[[], BinaryIO]]] = {}
            entries = []
            for config_digest, tags, config_bytes in images:
                diff_ids = _diff_ids(config_bytes, config_digest, self._where())
                for diff_id in diff_ids:
                    if diff_id not in layers:
                        layers[diff_id] = self._layer(diff_id, config_digest, previous)
                entries.append({
                    "Config": f"{digest_parts(config_digest)[1]}.json",
                    "RepoTags": tags or None,
                    "Layers": [f"{digest_parts(d)[1]}.tar" for d in diff_ids],
                })
            with atomic_tar(fs, self.root) as tar:
                for config_digest, _, config_bytes in images:
                    name = f"{digest_parts(config_digest)[1]}.json"
                    tar.addfile(tar_info(name, len(config_bytes)), io.BytesIO(config_bytes))
                for diff_id, (size, opener) in layers.items():
                    with opener() as layer:
                        tar.addfile(tar_info(f"{digest_parts(diff_id)[1]}.tar", size), layer)
                manifest = jsonio.dumps(entries)
                tar.addfile(tar_info("manifest.json", len(manifest)), io.BytesIO(manifest))
        finally:
            if previous is not None:
                previous.close()
        if fs.exists(self.staging):
            fs.rm(self.staging, recursive=True)
        return {}

    def _group(self, publications: list[Publication]) -> dict[str, list[str]]:
        """Tags per config digest; a tag given twice goes to the last image that names it."""
        groups: dict[str, list[str]] = {}
        for pub in publications:
            if pub.config_digest is None:
                raise StoreError(
                    f"{self._where()}: an archive holds single images; {pub.descriptor.digest} "
                    f"({pub.descriptor.media_type}) has no config"
                )
            tags = groups.setdefault(pub.config_digest, [])
            if pub.ref:
                tag = normalize_tag(pub.ref)
                for other in groups.values():
                    if tag in other:
                        other.remove(tag)
                tags.append(tag)
        return groups

    def _config(self, digest: str, previous: DockerArchiveSource | None) -> bytes:
        path = self.blob_path(digest)
        if self.fs.isfile(path):
            return self.fs.cat_file(path)
        if previous is not None:  # a retried publish after the staging folder was removed
            try:
                with previous.open_blob(digest) as f:
                    return f.read()
            except NotFound:
                pass
        raise StoreError(f"{self._where()}: config {digest} was never written")

    def _layer(
        self, diff_id: str, config_digest: str, previous: DockerArchiveSource | None
    ) -> tuple[int, Callable[[], BinaryIO]]:
        path = self.layer_path(diff_id)
        fs = self.fs
        if fs.isfile(path):
            return int(fs.size(path)), lambda: fs.open(path, "rb")
        if previous is not None:
            try:
                size = previous.blob_size(diff_id)
            except NotFound:
                pass
            else:
                return size, lambda: previous.open_blob(diff_id)
        raise StoreError(f"{self._where()}: layer {diff_id} of image {config_digest} was never written")


def _diff_ids(config: bytes, digest: str, where: str) -> list[str]:
    try:
        diff_ids = orjson.loads(config)["rootfs"]["diff_ids"] or []
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise StoreError(f"{where}: config {digest} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise StoreError(f"{where}: config {digest} has an invalid rootfs.diff_ids")
    for d in diff_ids:
        digest_parts(d)
    return diff_ids
