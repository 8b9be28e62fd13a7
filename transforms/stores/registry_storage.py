"""A Distribution registry's storage tree as a source (``registry-storage:URL``), read-only.

Reading the tree directly (a filesystem backup, a bucket the registry writes to, an
old registry that can no longer be started) migrates images without the registry's
HTTP front end and without its CPU cost. The layout is docs/formats.md §9::

    <URL>/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data
    <URL>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link

``<name>`` may have several path components (``team/app``), and a directory can be a
repository *and* hold deeper repositories; components that start with ``_`` are the
registry's own bookkeeping, never repositories. Listing walks the tree lazily, one
directory at a time, so a large registry starts yielding images at once.

Distribution stores schema1 manifests as their unsigned payload (it signs them again on
every GET), so a schema1 root is read here as ``v1+json`` with the same payload digest
the registry announced.
"""

from __future__ import annotations

import logging
import re
from typing import BinaryIO, Iterator

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.manifest import detect_media_type, manifest_digest
from imagepush.transforms.stores.base import ImageEntry, ManifestBlob, NotFound, Source, StoreError
from imagepush.transforms.stores.fs import FsStore, digest_parts, open_read, read_bytes

log = logging.getLogger(__name__)

V2 = ("docker", "registry", "v2")
_LINK_RE = re.compile(r"^[a-z0-9]+:[a-f0-9]+$")


class RegistryStorageSource(FsStore, Source):
    """Images of a Distribution storage tree at an fsspec URL (its ``rootdirectory``)."""

    def _where(self) -> str:
        return f"registry-storage:{self.url}"

    def _v2(self, *parts: str) -> str:
        return self.path(*V2, *parts)

    def _blob_path(self, digest: str) -> str:
        algorithm, encoded = digest_parts(digest, self._where())
        return self._v2("blobs", algorithm, encoded[:2], encoded, "data")

    def _read_link(self, path: str, what: str) -> str:
        text = read_bytes(self.fs, path, f"{self._where()}: {what}").decode("ascii", errors="replace").strip()
        if not _LINK_RE.match(text):
            raise StoreError(f"{self._where()}: {what} holds {text[:80]!r}, not a digest")
        return text

    # -- reading ------------------------------------------------------------------

    def get_manifest(self, digest: str) -> ManifestBlob:
        data = read_bytes(self.fs, self._blob_path(digest), f"{self._where()}: manifest {digest}")
        try:
            media_type = detect_media_type(data, None)
            canonical = manifest_digest(data, media_type)
        except FormatError as exc:
            raise StoreError(f"{self._where()}: blob {digest} is not a manifest ({exc})") from None
        if canonical != digest and not digestlib.matches(digest, data):
            raise StoreError(f"{self._where()}: blob {digest} does not match its digest (content is {canonical})")
        return ManifestBlob(data=data, media_type=media_type, digest=canonical)

    def _split_ref(self, ref: str | None) -> tuple[str, str]:
        """``repo/path:tag`` or ``repo/path@sha256:…`` -> (repository, tag or digest)."""
        if not ref:
            raise StoreError(f"{self._where()} holds many images; name one as REPOSITORY:TAG")
        if "@" in ref:
            repository, _, digest = ref.partition("@")
            return repository, digest
        repository, sep, tag = ref.rpartition(":")
        if not sep or not repository or "/" in tag:
            raise StoreError(f"{self._where()}: {ref!r} is not REPOSITORY:TAG")
        return repository, tag

    def _repo_dir(self, repository: str) -> str:
        parts = repository.split("/")
        if any(not p or p.startswith("_") or p in (".", "..") for p in parts):
            raise StoreError(f"{self._where()}: {repository!r} is not a repository name")
        return self._v2("repositories", *parts)

    def get_root(self, ref: str | None) -> ManifestBlob:
        repository, name = self._split_ref(ref)
        repo_dir = self._repo_dir(repository)
        if "@" in (ref or ""):
            link = f"{repo_dir}/_manifests/revisions/{name.replace(':', '/')}/link"
            self._read_link(link, f"manifest {name} in {repository}")
            return self.get_manifest(name)
        try:
            digest = self._read_link(f"{repo_dir}/_manifests/tags/{name}/current/link", f"tag {repository}:{name}")
        except NotFound:
            raise NotFound(f"{self._where()}: no image named {repository}:{name}") from None
        return self.get_manifest(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        return open_read(self.fs, self._blob_path(digest), f"{self._where()}: blob {digest}")

    # -- listing ------------------------------------------------------------------

    def _subdirs(self, path: str) -> list[str]:
        """Names of the directories in ``path`` (sorted), or [] if it does not exist."""
        try:
            listing = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        names = []
        for info in listing:
            if info.get("type") == "directory":
                names.append(info["name"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    def _repositories(self, path: str, name: str) -> Iterator[tuple[str, str]]:
        """(repository name, directory) for every repository at or below ``path``, depth first."""
        children = self._subdirs(path)
        if name and "_manifests" in children:
            yield name, path
        for child in children:
            if child.startswith("_"):
                continue
            yield from self._repositories(f"{path}/{child}", f"{name}/{child}" if name else child)

    def list_images(self, *, details: bool = True) -> Iterator[ImageEntry]:
        root = self._v2("repositories")
        if not self.fs.exists(self._v2()):
            raise NotFound(f"{self._where()}: no registry storage (no docker/registry/v2 below it)")
        for repository, directory in self._repositories(root, ""):
            for tag in self._subdirs(f"{directory}/_manifests/tags"):
                try:
                    digest = self._read_link(
                        f"{directory}/_manifests/tags/{tag}/current/link", f"tag {repository}:{tag}"
                    )
                    manifest = self.get_manifest(digest)
                except NotFound:
                    log.warning("%s: tag %s:%s points at a missing manifest; skipped", self._where(), repository, tag)
                    continue
                yield ImageEntry(
                    ref=f"{repository}:{tag}", repository=repository, tag=tag,
                    digest=manifest.digest, media_type=manifest.media_type,
                )
