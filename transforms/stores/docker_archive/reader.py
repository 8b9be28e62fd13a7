"""Reading ``docker save`` tarballs: one pass indexes the tar, manifests are synthesised.

Reading synthesises a deterministic manifest per image so the rest of the tool can treat
the archive like any other store. The tar is scanned once per store object: member
offsets, small JSON members kept in memory, and the sha256 of compressed members (their
blob digest), so a later blob read is one seek into the archive.

Variants read here: the legacy layout (``<id>/layer.tar``, duplicate layers as symlinks),
Docker 25+ (``manifest.json`` pointing into ``blobs/sha256``), ggcr's ``tarball.Write``
(config member ``sha256:<hex>``, compressed ``<hex>.tar.gz`` layers), and whole archives
compressed with gzip, xz or bzip2.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

import orjson
from isal import igzip

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.compression import BZIP2, GZIP, NONE, SNIFF_SIZE, XZ, ZSTD, sniff
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import oci_manifest, schema2_manifest
from imagepush.transforms.stores.base import ImageEntry, ManifestBlob, NotFound, Source, StoreError, select_unnamed
from imagepush.transforms.stores.docker_archive.names import canonical_name
from imagepush.transforms.stores.refs import split_repo_tag
from imagepush.transforms.stores.fs import CHUNK_SIZE, BoundedReader, FsStore, copy_stream, member_name

#: JSON members (manifest.json, configs) up to this size are kept from the first pass.
_SMALL_JSON = 4 << 20
#: Longest chain of symlinks/hardlinks followed inside an archive.
_MAX_LINKS = 32


# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class _Member:
    name: str
    #: Offset of the member's data in the (decompressed) tar stream.
    offset: int
    size: int
    #: First bytes, to sniff layer compression without another read.
    head: bytes
    #: sha256 of the bytes, computed in the first pass for compressed members only.
    digest: str | None = None
    #: Small JSON members (manifest.json, configs), kept so they need no second read.
    content: bytes | None = None


@dataclass
class _Image:
    config_digest: str
    repo_tags: list[str]
    manifest: ManifestBlob


@dataclass
class _Archive:
    compression: str
    members: dict[str, _Member] = field(default_factory=dict)
    images: list[_Image] = field(default_factory=list)
    manifests: dict[str, ManifestBlob] = field(default_factory=dict)
    #: blob digest -> member name
    blobs: dict[str, str] = field(default_factory=dict)


class DockerArchiveSource(FsStore, Source):
    """Reads images from a ``docker save`` tarball, indexing it once per store object."""

    def _reset_cache(self) -> None:
        self._archive: _Archive | None = None

    def _where(self) -> str:
        return f"docker-archive:{self.url}"

    # -- low-level access ---------------------------------------------------------------

    def _open_stream(self, compression: str | None = None) -> tuple[Any, list[Any], str]:
        """A seekable stream of the uncompressed tar, the objects to close, and the compression."""
        try:
            raw = self.fs.open(self.root, "rb")
        except FileNotFoundError:
            raise NotFound(f"{self._where()}: no such archive") from None
        if compression is None:
            compression = sniff(raw.read(SNIFF_SIZE))
            raw.seek(0)
        if compression == GZIP:
            stream: Any = igzip.IGzipFile(fileobj=raw, mode="rb")
        elif compression == XZ:
            stream = lzma.LZMAFile(raw)
        elif compression == BZIP2:
            stream = bz2.BZ2File(raw)
        elif compression == ZSTD:
            raw.close()
            raise StoreError(f"{self._where()}: zstd-compressed archives are not supported")
        else:
            return raw, [raw], compression
        return stream, [raw, stream], compression

    def _open_member(self, member: _Member) -> BinaryIO:
        if member.content is not None:
            return io.BytesIO(member.content)
        archive = self._index()
        stream, closers, _ = self._open_stream(archive.compression)
        try:
            stream.seek(member.offset)
        except BaseException:
            for closer in reversed(closers):
                closer.close()
            raise
        what = f"{self._where()}: member {member.name}"
        return io.BufferedReader(BoundedReader(stream, member.size, closers, what), CHUNK_SIZE)

    def _member_bytes(self, member: _Member) -> bytes:
        if member.content is not None:
            return member.content
        with self._open_member(member) as f:
            return f.read()

    # -- indexing ------------------------------------------------------------------------

    def _index(self) -> _Archive:
        with self._lock:
            if self._archive is None:
                self._archive = self._build_index()
            return self._archive

    def _scan(self) -> tuple[_Archive, dict[str, str]]:
        """One forward pass over the tar: member offsets, small JSON, hashes of compressed members."""
        stream, closers, compression = self._open_stream()
        archive = _Archive(compression=compression)
        links: dict[str, str] = {}
        try:
            try:
                tar = tarfile.open(fileobj=stream, mode="r:")
            except tarfile.TarError as exc:
                raise StoreError(f"{self._where()}: not a tar archive ({exc})") from None
            try:
                for info in tar:
                    name = member_name(info.name)
                    if info.isreg():
                        archive.members[name] = self._scan_member(tar, info, name)
                    elif info.issym():
                        links[name] = member_name(posixpath.join(posixpath.dirname(name), info.linkname))
                    elif info.islnk():
                        links[name] = member_name(info.linkname)
            except tarfile.TarError as exc:
                raise StoreError(f"{self._where()}: corrupt tar archive ({exc})") from None
        finally:
            for closer in reversed(closers):
                closer.close()
        return archive, links

    @staticmethod
    def _scan_member(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> _Member:
        f = tar.extractfile(info)
        assert f is not None  # regular files always have data
        head = f.read(SNIFF_SIZE)
        member = _Member(name=name, offset=info.offset_data, size=info.size, head=head)
        if sniff(head) in (GZIP, ZSTD):
            h = hashlib.sha256(head)
            copy_stream(f, h.update)
            member.digest = f"sha256:{h.hexdigest()}"
        elif head[:1] in (b"{", b"[") and info.size <= _SMALL_JSON:
            member.content = head + f.read()
        return member

    def _build_index(self) -> _Archive:
        archive, links = self._scan()

        def resolve(path: str) -> _Member:
            name = member_name(path)
            for _ in range(_MAX_LINKS):
                if name in archive.members:
                    return archive.members[name]
                if name not in links:
                    break
                name = links[name]
            raise StoreError(f"{self._where()}: the archive has no file {path!r}")

        if "manifest.json" not in archive.members:
            raise StoreError(f"{self._where()}: no manifest.json (not a docker save archive)")
        try:
            entries = orjson.loads(self._member_bytes(archive.members["manifest.json"]))
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"{self._where()}: manifest.json is not JSON ({exc})") from None
        if not isinstance(entries, list):
            raise StoreError(f"{self._where()}: manifest.json is not a list")
        for position, entry in enumerate(entries):
            image = self._image(archive, entry, position, resolve)
            archive.images.append(image)
            archive.manifests[image.manifest.digest] = image.manifest
        return archive

    def _image(
        self, archive: _Archive, entry: Any, position: int, resolve: Callable[[str], _Member]
    ) -> _Image:
        where = f"{self._where()}: manifest.json entry {position}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise StoreError(f"{where} has no Config")
        layer_names = entry.get("Layers") or []
        tags = entry.get("RepoTags") or []
        if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
            raise StoreError(f"{where}: Layers is not a list of file names")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise StoreError(f"{where}: RepoTags is not a list of names")
        config_member = resolve(entry["Config"])
        config_bytes = self._member_bytes(config_member)
        config_digest = digestlib.of_bytes(config_bytes)
        archive.blobs[config_digest] = config_member.name
        try:
            config = orjson.loads(config_bytes)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        except (orjson.JSONDecodeError, AttributeError):
            raise StoreError(f"{where}: config {entry['Config']} is not an image config") from None
        if len(diff_ids) != len(layer_names):
            raise StoreError(
                f"{where} lists {len(layer_names)} layers but its config has {len(diff_ids)} diff_ids"
            )
        sources = entry.get("LayerSources") or {}
        layers: list[tuple[str, Descriptor]] = []
        for layer_name, diff_id in zip(layer_names, diff_ids):
            member = resolve(layer_name)
            compression = sniff(member.head)
            if isinstance(sources, dict) and diff_id in sources:
                # Foreign layer: the manifest must keep the original descriptor and urls.
                try:
                    desc = Descriptor.from_dict(sources[diff_id])
                except FormatError as exc:
                    raise StoreError(f"{where}: LayerSources[{diff_id}]: {exc}") from None
                # The archive holds the layer's bytes, so serve them under their own digest.
                archive.blobs.setdefault(diff_id if compression == NONE else str(member.digest), member.name)
                layers.append((compression, desc))
                continue
            if compression == GZIP:
                desc = Descriptor(mt.DOCKER_LAYER_GZIP, str(member.digest), member.size)
            elif compression == ZSTD:
                desc = Descriptor(mt.OCI_LAYER_ZSTD, str(member.digest), member.size)
            elif compression == NONE:
                desc = Descriptor(mt.DOCKER_LAYER, diff_id, member.size)
            else:
                raise StoreError(f"{where}: layer {layer_name} is {compression}-compressed, which images cannot carry")
            archive.blobs.setdefault(desc.digest, member.name)
            layers.append((compression, desc))
        config_desc = Descriptor(mt.DOCKER_CONFIG, config_digest, len(config_bytes))
        manifest = _synthesise(config_desc, layers)
        return _Image(config_digest=config_digest, repo_tags=list(tags), manifest=manifest)

    # -- Source API ----------------------------------------------------------------------

    def list_images(self, *, details: bool = True) -> Iterator[ImageEntry]:
        for image in self._index().images:
            names = image.repo_tags or [""]
            for ref in names:
                repository, tag = split_repo_tag(ref) if ref else ("", None)
                yield ImageEntry(
                    ref=ref, repository=repository, tag=tag,
                    digest=image.manifest.digest, media_type=image.manifest.media_type,
                )

    def _select(self, ref: str | None) -> _Image:
        images = self._index().images
        picked = select_unnamed(images, ref, self._where(), f"docker-archive:{self.url}:REPO:TAG")
        if picked is not None:
            return picked
        for image in images:
            if ref in image.repo_tags:
                return image
        wanted = canonical_name(ref)
        for image in images:
            if any(canonical_name(tag) == wanted for tag in image.repo_tags):
                return image
        raise NotFound(f"{self._where()}: no image tagged {ref!r}")

    def get_root(self, ref: str | None) -> ManifestBlob:
        return self._select(ref).manifest

    def get_manifest(self, digest: str) -> ManifestBlob:
        manifest = self._index().manifests.get(digest)
        if manifest is None:
            raise NotFound(f"{self._where()}: manifest {digest} not found")
        return manifest

    def open_blob(self, digest: str) -> BinaryIO:
        archive = self._index()
        name = archive.blobs.get(digest)
        if name is None:
            raise NotFound(f"{self._where()}: blob {digest} not found")
        return self._open_member(archive.members[name])

    def blob_size(self, digest: str) -> int:
        """Size of a blob as stored in the archive (a tar header needs it before the data)."""
        archive = self._index()
        name = archive.blobs.get(digest)
        if name is None:
            raise NotFound(f"{self._where()}: blob {digest} not found")
        return archive.members[name].size


def _synthesise(config: Descriptor, layers: list[tuple[str, Descriptor]]) -> ManifestBlob:
    """The manifest a registry would serve for this image: the same bytes every time.

    Docker schema2 cannot name zstd layers, so an image with one becomes an OCI manifest.
    """
    if any(compression == ZSTD for compression, _ in layers):
        oci_types = {GZIP: mt.OCI_LAYER_GZIP, ZSTD: mt.OCI_LAYER_ZSTD, NONE: mt.OCI_LAYER}
        data = oci_manifest(
            Descriptor(mt.OCI_CONFIG, config.digest, config.size),
            [d if d.urls else Descriptor(oci_types[c], d.digest, d.size) for c, d in layers],
        )
        media_type = mt.OCI_MANIFEST
    else:
        data = schema2_manifest(config, [d for _, d in layers])
        media_type = mt.DOCKER_SCHEMA2
    return ManifestBlob(data=data, media_type=media_type, digest=digestlib.of_bytes(data))
