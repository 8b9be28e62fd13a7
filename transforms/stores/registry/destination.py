"""Writing images into one registry repository.

Blobs go up through :class:`~.upload.RegistryBlobSink`, or are mounted from another
repository of the same host that holds them. Manifests are PUT by digest; :meth:`publish`
PUTs each root under its tag, one repository write at a time (Distribution 2.8 answers
500 to concurrent tag writes in one repository; those are retried as well).
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator, Sequence

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import detect_media_type
from imagepush.transforms.stores import refs
from imagepush.transforms.stores.base import (
    BlobSink,
    Destination,
    ManifestBlob,
    Mismatch,
    Publication,
    PublishErrors,
    StoreError,
)
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.auth import pull_scope, push_scope
from imagepush.transforms.stores.registry.client import ClientPool
from imagepush.transforms.stores.registry.errors import InvalidName, RegistryError
from imagepush.transforms.stores.registry.manifests import MANIFEST_LIMIT, Schema1Signer, head_manifest
from imagepush.transforms.stores.registry.store import RegistryStore
from imagepush.transforms.stores.registry.upload import SMALL_BLOB_LIMIT, OpenSession, RegistryBlobSink, blob_exists
from imagepush.transforms.stores.stopping import OPEN_SINKS, Stopped

log = logging.getLogger(__name__)


class RegistryDestination(RegistryStore, Destination):
    """Writes images into one registry repository."""

    preferred_format = "oci"

    def __init__(self, location: str, options: StoreOptions | None = None, *, clients: ClientPool | None = None) -> None:
        super().__init__(location, options, clients=clients)
        if not self.repository:
            raise StoreError(f"docker://{self.host}: a destination needs a repository (docker://{self.host}/REPO)")
        #: Serialises manifest writes to this repository (Distribution 2.8 races on tags).
        self._manifest_lock = threading.Lock()
        self._new_lock = threading.Lock()
        #: No tags now (None: not asked yet); False once this store published one.
        self._new: bool | None = None
        #: No tags when first asked (None: not asked yet); never changes after.
        self._untagged_at_start: bool | None = None
        #: Blobs this store object uploaded or mounted: present without asking.
        self._present: set[str] = set()
        #: Upload sessions refused mounts opened, by digest, for the blob's upload here.
        self._spares: dict[str, OpenSession] = {}
        #: Signs unsigned schema1 (a storage tree's) before a PUT; its key is this store's alone.
        self._schema1 = Schema1Signer()

    def _is_new_repository(self) -> bool:
        """Whether the repository has no tags (one request, when this store first looks).

        A repository without tags has no tag to point anywhere, so a first migration
        asks once instead of once per image whether its tag is current.
        """
        with self._new_lock:
            self._look_at_tags()
            return bool(self._new)

    def _untagged_when_first_seen(self) -> bool:
        """Whether the repository had no tags when this store first looked (the same one request).

        Tags are written last, so such a repository holds only what an interrupted run
        left (blobs, no tags) and what this run wrote since.
        """
        with self._new_lock:
            self._look_at_tags()
            return bool(self._untagged_at_start)

    def _look_at_tags(self) -> None:
        """Ask for one tag, once; the caller holds ``_new_lock``."""
        if self._untagged_at_start is not None:
            return
        reply = self.client.request(
            "GET", f"/v2/{self.repository}/tags/list", params={"n": "1"},
            scopes=[push_scope(self.repository)], where=self.where(), what="tag list", ok=(200, 404),
        )
        self._untagged_at_start = reply.status == 404
        if self._new is None:
            self._new = self._untagged_at_start

    def _note_present(self, digest: str) -> None:
        with self._new_lock:
            self._present.add(digest)

    def prepare(self) -> None:
        """Fail early, on the launcher, when the registry cannot be reached or refuses us."""
        self.client.base_url()

    def accepts_manifest(self, media_type: str) -> bool:
        # schema1 is accepted here; a registry without schema1 support says so at PUT time.
        return media_type in mt.MANIFEST_TYPES

    def has_blob(self, digest: str) -> bool:
        """Asked of the registry (HEAD) unless this store put the blob there itself.

        A session a refused mount left for the blob is cancelled unless the answer is
        that the blob must be uploaded (it then serves that upload).
        """
        with self._new_lock:
            present = digest in self._present
        if not present:
            try:
                present = blob_exists(self.client, self.repository, digest, self.where())
            except BaseException:
                self._drop_spare(digest)
                raise
        if present:
            self._drop_spare(digest)
        return present

    def asks_before_upload(self, descriptor: Descriptor) -> bool:
        """False for a small blob (known size ≤ ``SMALL_BLOB_LIMIT``) in a repository that had no tags.

        Such a repository holds at most what an interrupted run left, so nearly every
        HEAD there answers 404 and costs a request per blob. A small blob is sent in one
        PUT anyway: re-sending one that an interrupted run left is harmless (the registry
        verifies the digest and keeps one copy) and cheaper than asking about them all.
        Larger blobs are still asked about, so that a rerun does not send an interrupted
        run's big layers again; so is every blob of a repository that has tags.
        """
        size = descriptor.size
        if size is None or size < 0 or size > SMALL_BLOB_LIMIT:
            return True
        with self._new_lock:
            if descriptor.digest in self._present:
                return True  # answered without a request
        return not self._untagged_when_first_seen()

    @property
    def upload_restarts(self) -> int:  # type: ignore[override]
        """An interrupted upload starts again as often as a request is retried (``--retry-times``)."""
        return max(0, int(self.options.registry_retries))

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        digestlib.checked(descriptor.digest, self.where(), StoreError)
        with self._new_lock:
            spare = self._spares.pop(descriptor.digest, None)
        return RegistryBlobSink(
            self.client, self.repository, self.where(), self.options, descriptor, self._note_present, spare
        )

    def close(self) -> None:
        """Cancel the sessions refused mounts left unused (no upload of their blob followed)."""
        with self._new_lock:
            spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            spare.abort()
        super().close()

    def _keep_spare(self, digest: str, spare: OpenSession) -> None:
        with self._new_lock:
            old = self._spares.pop(digest, None)
            self._spares[digest] = spare
        if old is not None:
            old.abort()

    def _drop_spare(self, digest: str) -> None:
        with self._new_lock:
            spare = self._spares.pop(digest, None)
        if spare is not None:
            spare.abort()

    @property
    def blob_domain(self) -> str:
        """Every repository of one registry host shares its blobs (cross-repository mounts)."""
        return self.reference.blob_domain

    def mount_blob(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        """Mount from the first other repository of this host known to hold the blob; False: upload.

        A store of another blob domain (another host, or not a registry) cannot lend its
        blobs, and neither can a store id that is no reference at all.
        """
        return any(self._mount_from(descriptor, repository) for repository in self._lenders(known_at))

    def would_mount(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        """Whether :meth:`mount_blob` would ask to mount: some other repository of this host holds it."""
        return next(iter(self._lenders(known_at)), None) is not None

    def _lenders(self, known_at: Sequence[str]) -> Iterator[str]:
        """The repositories, in order, that :meth:`mount_blob` asks to lend a blob; no request is made."""
        for store in known_at:
            try:
                holder = refs.parse_reference(store)
            except refs.ReferenceError:
                continue
            if holder.blob_domain != self.blob_domain:
                continue
            repository = holder.repository
            if repository and repository != self.repository:
                yield repository

    def _mount_from(self, descriptor: Descriptor, source_repo: str) -> bool:
        try:
            reply = self.client.request(
                "POST", f"/v2/{self.repository}/blobs/uploads/",
                params={"mount": descriptor.digest, "from": source_repo},
                scopes=[push_scope(self.repository), pull_scope(source_repo)], where=self.where(),
                what=f"mount of blob {descriptor.digest} from {source_repo}", ok=(201, 202), body=b"",
            )
        except RegistryError as exc:
            log.info("%s: mount from %s refused, uploading instead: %s", self.where(), source_repo, exc)
            return False
        if reply.status == 201:
            log.debug("%s: mounted %s from %s", self.where(), descriptor.digest, source_repo)
            self._note_present(descriptor.digest)
            self._drop_spare(descriptor.digest)
            return True
        location = reply.location()  # 202: an ordinary upload session, kept for the upload
        if location:
            spare = OpenSession(self.client, location, [push_scope(self.repository)], self.where(), reply)
            try:
                OPEN_SINKS.opened(spare)
            except Stopped:
                spare.abort()
                raise
            self._keep_spare(descriptor.digest, spare)
        return False

    def current_digest(self, name: str) -> str | None:
        if name.startswith(("sha256:", "sha512:")) or not refs.TAG_RE.match(name) or self._is_new_repository():
            return None
        reply = head_manifest(self.client, self.repository, name, self.where())
        return reply.headers.get("Docker-Content-Digest") if reply is not None else None

    def _put_manifest(self, data: bytes, media_type: str, reference: str, digest: str) -> None:
        where = self.where()
        kind = media_type  # errors name the type being copied, even if it travels signed
        data, media_type = self._schema1.for_put(data, media_type, where)
        with self._manifest_lock:
            try:
                reply = self.client.request(
                    "PUT", f"/v2/{self.repository}/manifests/{reference}", scopes=[push_scope(self.repository)],
                    where=where, what=f"manifest {reference}", ok=(201, 200, 202), body=data,
                    headers={"Content-Type": media_type},
                    # Distribution without schema1 support answers a schema1 PUT with a 500.
                    attempts=2 if mt.is_schema1(media_type) else None,
                )
            except RegistryError as exc:
                schema1_refused = mt.is_schema1(media_type) and (
                    exc.code in ("MANIFEST_INVALID", "UNKNOWN", "UNSUPPORTED") or (exc.status or 0) >= 500
                )
                if exc.status in (400, 415) or (exc.code or "").startswith("MANIFEST") or schema1_refused:
                    hint = ""
                    if schema1_refused:
                        hint = "; the registry may not accept schema1 at all (copy with --format v2s2 or oci)"
                    raise RegistryError(
                        f"{where}: registry refused a {kind} manifest ({exc.detail}){hint}",
                        status=exc.status, code=exc.code, detail=exc.detail,
                    ) from None
                raise
        announced = reply.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise Mismatch(f"{where}: manifest {reference} was stored as {announced}, expected {digest}")

    def put_manifest(self, manifest: ManifestBlob, *, root: bool = False) -> None:
        """PUT an index child by digest; a root is written once, by :meth:`publish`.

        The root's PUT under its tag stores it as well, so writing it by digest first
        would double the manifest writes of a sync; it still comes after every child.
        """
        if len(manifest.data) > MANIFEST_LIMIT:
            raise StoreError(f"{self.where()}: manifest {manifest.digest} is larger than 4 MiB")
        if not root:
            self._put_manifest(manifest.data, manifest.media_type, manifest.digest, manifest.digest)

    def _publication_bytes(self, pub: Publication) -> tuple[bytes, str]:
        """The root's bytes and type: the pipeline's publications carry them (a root is PUT only here)."""
        if pub.manifest is None:
            raise StoreError(f"{self.where()}: the publication of {pub.descriptor.digest} carries no manifest bytes")
        try:
            media_type = detect_media_type(pub.manifest, pub.descriptor.media_type)
        except FormatError as exc:
            raise StoreError(f"{self.where()}: root {pub.descriptor.digest} is not a manifest ({exc})") from None
        return pub.manifest, media_type

    def publish(self, publications: list[Publication]) -> PublishErrors:
        """PUT every named root under its tag; a tag that fails fails alone."""
        failed: PublishErrors = {}
        for i, pub in enumerate(publications):
            try:
                self._publish_one(pub)
            except StoreError as exc:
                failed[i] = exc
        return failed

    def _publish_one(self, pub: Publication) -> None:
        digest = pub.descriptor.digest
        ref = pub.ref or digest
        if ref.startswith(("sha256:", "sha512:")):
            if ref != digest:
                raise StoreError(f"{self.where()}: the destination names {ref} but the image written is {digest}")
        elif not refs.TAG_RE.match(ref):
            raise InvalidName(f"{self.where()}: {ref!r} is not a valid tag")
        data, media_type = self._publication_bytes(pub)
        self._put_manifest(data, media_type, ref, digest)
        with self._new_lock:
            self._new = False  # it has a tag now; later questions go to the registry
        log.debug("%s:%s -> %s", self.where(), ref, digest)
