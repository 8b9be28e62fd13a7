"""Reading images from a registry repository, a repository prefix, or a whole registry.

``get_root``/``get_manifest`` keep a manifest's exact bytes and check its canonical digest
(the payload digest for signed schema1, which Distribution re-signs on every GET).
``open_blob`` streams, and continues a body that breaks off with ``Range``.
``list_images`` lists the tags of the repository, or walks the catalog when the
location is a prefix or a bare host (see :mod:`.listing`).
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterator

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.stores.base import ImageEntry, ManifestBlob, Source, StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import listing
from imagepush.transforms.stores.registry.auth import pull_scope
from imagepush.transforms.stores.registry.client import ClientPool
from imagepush.transforms.stores.registry.manifests import fetch_manifest
from imagepush.transforms.stores.registry.store import RegistryStore
from imagepush.transforms.stores.registry.streams import BlobStream, StreamedResponse


class RegistrySource(RegistryStore, Source):
    """Reads images from a registry repository, a repository prefix, or a whole registry."""

    def __init__(
        self,
        location: str,
        options: StoreOptions | None = None,
        *,
        page_size: int | None = None,
        clients: ClientPool | None = None,
    ) -> None:
        super().__init__(location, options, clients=clients)
        self.page_size = page_size

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "page_size": self.page_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"], page_size=state.get("page_size"))  # type: ignore[misc]

    def _name(self, ref: str | None) -> tuple[str, str]:
        """``(repository, tag or digest)`` for a ref: a tag, a digest, or ``repo/path:tag``.

        The last form is what :meth:`list_images` puts in ``ref``, relative to the host,
        so an entry can be fetched from the store that listed it.
        """
        if ref is None or ref == "":
            ref = "latest"
        if "@" in ref:
            repository, _, reference = ref.partition("@")
            return repository or self.repository, reference
        if digestlib.DIGEST_RE.match(ref) and ref.split(":", 1)[0] in (digestlib.SHA256, digestlib.SHA512):
            return self.repository, ref
        if ":" in ref:
            repository, _, tag = ref.rpartition(":")
            return repository, tag
        if "/" in ref:
            raise StoreError(f"{self.where()}: {ref!r} is neither a tag, a digest nor REPOSITORY:TAG")
        return self.repository, ref

    def _require(self, repository: str) -> str:
        if not repository:
            raise StoreError(f"{self.host}: no repository given (use docker://{self.host}/REPOSITORY:TAG)")
        return repository

    def get_root(self, ref: str | None) -> ManifestBlob:
        repository, reference = self._name(ref)
        repository = self._require(repository)
        expected = reference if ":" in reference else None
        return fetch_manifest(self.client, repository, reference, expected, self.where(repository))

    def get_manifest(self, digest: str) -> ManifestBlob:
        digestlib.checked(digest, self.where(), StoreError)
        return fetch_manifest(self.client, self._require(self.repository), digest, digest, self.where())

    def open_blob(self, digest: str) -> BinaryIO:
        repository = self._require(self.repository)
        digestlib.checked(digest, self.where(), StoreError)
        where, path, scopes = self.where(), f"/v2/{repository}/blobs/{digest}", [pull_scope(repository)]

        def open_at(offset: int) -> StreamedResponse:
            return self.client.open(
                "GET", path, scopes=scopes, where=where, what=f"blob {digest} from byte {offset}",
                headers={"Range": f"bytes={offset}-"}, ok=(200, 206), follow_redirects=True,
            )

        response = self.client.open("GET", path, scopes=scopes, where=where, what=f"blob {digest}",
                                    follow_redirects=True)
        return BlobStream(response, open_at, where)  # type: ignore[return-value]  # a RawIOBase is a binary file

    def list_images(self, *, details: bool = True, page_size: int | None = None) -> Iterator[ImageEntry]:
        """See :func:`.listing.list_images`; ``page_size`` defaults to the constructor's."""
        return listing.list_images(
            self, details=details, page_size=page_size if page_size is not None else self.page_size
        )
