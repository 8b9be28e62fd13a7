"""``docker save`` tarballs (``docker-archive:PATH[:REPO:TAG]``).

An archive stores no registry manifest: ``manifest.json`` lists, per image, a config
file and layer files (normally uncompressed tars whose sha256 is the diff_id). Reading
synthesises a deterministic Docker schema2 manifest per image so the rest of the tool can
treat the archive like any other store. Writing stages blobs beside the archive and
builds the tarball once, at publish, because a tar cannot be appended to safely by
parallel workers and ``docker load`` wants uncompressed layers.

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
from imagepush.transforms.formats.compression import Decompressor, sniff
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.stores.base import (
    BlobSink,
    Destination,
    ImageEntry,
    ManifestBlob,
    NotFound,
    Publication,
    PublishErrors,
    Source,
    StoreError,
)
from imagepush.transforms.stores.fs import (
    CHUNK_SIZE,
    AtomicFileSink,
    BoundedReader,
    FsStore,
    TarTarget,
    copy_stream,
    join,
    tar_info,
    write_atomic,
)

STAGING_SUFFIX = ".imagepush-staging"
#: JSON members (manifest.json, configs) up to this size are kept from the first pass.
_SMALL_JSON = 4 << 20
#: Longest chain of symlinks/hardlinks followed inside an archive.
_MAX_LINKS = 32


def split_repo_tag(ref: str) -> tuple[str, str | None]:
    """``example.com:5000/a/b:tag`` -> ``("example.com:5000/a/b", "tag")``: the last ``:`` after the last ``/``."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :] or None
    return ref, None


def _normalize_tag(ref: str) -> str:
    """RepoTags always carry a tag; Docker defaults a bare repository to ``latest``."""
    repository, tag = split_repo_tag(ref)
    return f"{repository}:{tag or 'latest'}"


def canonical_name(ref: str) -> str:
    """A RepoTags entry in fully qualified form, so that spellings of one name compare equal.

    Docker writes familiar names (``busybox:latest``), containers/image writes
    ``docker.io/interop/base:2``; both mean ``docker.io/library/busybox:latest`` and
    ``docker.io/interop/base:2``. A first component without ``.`` or ``:`` (and not
    ``localhost``) is a Docker Hub path, and official images live under ``library/``.
    """
    name, tag = split_repo_tag(ref)
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        first, rest = "docker.io", name
    if first == "index.docker.io":
        first = "docker.io"
    if first == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    return f"{first}/{rest}:{tag or 'latest'}"


def _member_name(name: str) -> str:
    """Tar member names compare after dropping ``./`` and leading ``/``."""
    normalized = posixpath.normpath(name.lstrip("/"))
    return "" if normalized == "." else normalized


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
            compression = sniff(raw.read(16))
            raw.seek(0)
        if compression == "gzip":
            stream: Any = igzip.IGzipFile(fileobj=raw, mode="rb")
        elif compression == "xz":
            stream = lzma.LZMAFile(raw)
        elif compression == "bzip2":
            stream = bz2.BZ2File(raw)
        elif compression == "zstd":
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
                    name = _member_name(info.name)
                    if info.isreg():
                        archive.members[name] = self._scan_member(tar, info, name)
                    elif info.issym():
                        links[name] = _member_name(posixpath.join(posixpath.dirname(name), info.linkname))
                    elif info.islnk():
                        links[name] = _member_name(info.linkname)
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
        head = f.read(16)
        member = _Member(name=name, offset=info.offset_data, size=info.size, head=head)
        if sniff(head) in ("gzip", "zstd"):
            h = hashlib.sha256(head)
            copy_stream(f, h.update)
            member.digest = f"sha256:{h.hexdigest()}"
        elif head[:1] in (b"{", b"[") and info.size <= _SMALL_JSON:
            member.content = head + f.read()
        return member

    def _build_index(self) -> _Archive:
        archive, links = self._scan()

        def resolve(path: str) -> _Member:
            name = _member_name(path)
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
                archive.blobs.setdefault(diff_id if compression == "none" else str(member.digest), member.name)
                layers.append((compression, desc))
                continue
            if compression == "gzip":
                desc = Descriptor(mt.DOCKER_LAYER_GZIP, str(member.digest), member.size)
            elif compression == "zstd":
                desc = Descriptor(mt.OCI_LAYER_ZSTD, str(member.digest), member.size)
            elif compression == "none":
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
        if not ref:
            if not images:
                raise NotFound(f"{self._where()} holds no images")
            if len(images) > 1:
                raise StoreError(
                    f"{self._where()} holds {len(images)} images; name one with docker-archive:{self.url}:REPO:TAG"
                )
            return images[0]
        if ref.startswith("@") and ref[1:].isdigit():  # containers/image's docker-archive:PATH:@N
            n = int(ref[1:])
            if n >= len(images):
                raise NotFound(f"{self._where()} has no image @{n} ({len(images)} images)")
            return images[n]
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
    """The manifest a registry would serve for this image: compact JSON, same bytes every time.

    Docker schema2 cannot name zstd layers, so an image with one becomes an OCI manifest.
    """
    if any(compression == "zstd" for compression, _ in layers):
        oci_types = {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD, "none": mt.OCI_LAYER}
        config = Descriptor(mt.OCI_CONFIG, config.digest, config.size)
        layer_dicts = [
            (d if d.urls else Descriptor(oci_types[c], d.digest, d.size)).to_dict() for c, d in layers
        ]
        document = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config.to_dict(), "layers": layer_dicts}
        media_type = mt.OCI_MANIFEST
    else:
        document = {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_SCHEMA2,
            "config": _docker_descriptor(config),
            "layers": [_docker_descriptor(d) for _, d in layers],
        }
        media_type = mt.DOCKER_SCHEMA2
    data = orjson.dumps(document)
    return ManifestBlob(data=data, media_type=media_type, digest=digestlib.of_bytes(data))


def _docker_descriptor(desc: Descriptor) -> dict[str, Any]:
    """A schema2 descriptor in the key order Docker's Go structs emit (mediaType, size, digest)."""
    out: dict[str, Any] = {"mediaType": desc.media_type, "size": desc.size, "digest": desc.digest}
    if desc.urls:
        out["urls"] = list(desc.urls)
    return out


# ---------------------------------------------------------------------------------------
# Writing


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
        algorithm, encoded = _split(digest)
        return join(self.staging, "blobs", algorithm, encoded)

    def diffid_path(self, digest: str) -> str:
        algorithm, encoded = _split(digest)
        return join(self.staging, "diffids", algorithm, encoded)

    def layer_path(self, diff_id: str) -> str:
        return join(self.staging, "layers", f"{_split(diff_id)[1]}.tar")

    def prepare(self) -> None:
        fs = self.fs
        if fs.isdir(self.root):
            raise StoreError(f"{self._where()}: {self.url} is a directory, not an archive file")
        parent = posixpath.dirname(self.root)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.makedirs(self.staging, exist_ok=True)

    def accepts_manifest(self, media_type: str) -> bool:
        return media_type in mt.IMAGE_MANIFEST_TYPES

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.isfile(self.blob_path(digest)) or self.fs.isfile(self.diffid_path(digest)))

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        if mt.layer_compression(descriptor.media_type) != "unknown":
            return _LayerSink(self, descriptor.digest)
        return AtomicFileSink(self.fs, self.blob_path(descriptor.digest))

    def has_manifest(self, digest: str) -> bool:
        """Archives keep no manifests, so none is ever present."""
        return False

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
                    "Config": f"{_split(config_digest)[1]}.json",
                    "RepoTags": tags or None,
                    "Layers": [f"{_split(d)[1]}.tar" for d in diff_ids],
                })
            sink = AtomicFileSink(fs, self.root, overwrite=True)
            try:
                with tarfile.open(fileobj=TarTarget(sink), mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
                    for config_digest, _, config_bytes in images:
                        name = f"{_split(config_digest)[1]}.json"
                        tar.addfile(tar_info(name, len(config_bytes)), io.BytesIO(config_bytes))
                    for diff_id, (size, opener) in layers.items():
                        with opener() as layer:
                            tar.addfile(tar_info(f"{_split(diff_id)[1]}.tar", size), layer)
                    manifest = orjson.dumps(entries)
                    tar.addfile(tar_info("manifest.json", len(manifest)), io.BytesIO(manifest))
                sink.commit()
            except BaseException:
                sink.abort()
                raise
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
                tag = _normalize_tag(pub.ref)
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


def _split(digest: str) -> tuple[str, str]:
    try:
        return digestlib.split(digest)
    except digestlib.DigestError as exc:
        raise StoreError(str(exc)) from None


def _diff_ids(config: bytes, digest: str, where: str) -> list[str]:
    try:
        diff_ids = orjson.loads(config)["rootfs"]["diff_ids"] or []
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise StoreError(f"{where}: config {digest} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise StoreError(f"{where}: config {digest} has an invalid rootfs.diff_ids")
    for d in diff_ids:
        _split(d)
    return diff_ids
