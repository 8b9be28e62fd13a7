"""Registry stores (``docker://HOST[:PORT][/REPO]``): the Docker Registry v2 / OCI distribution API.

Source
    ``get_root``/``get_manifest`` GET manifests with an ``Accept`` of every manifest type,
    keep the exact bytes, and check the canonical digest (the payload digest for signed
    schema1, which Distribution re-signs on every GET) against ``Docker-Content-Digest``
    and against the digest asked for. ``open_blob`` streams, and continues a body that
    breaks off with ``Range``. ``list_images`` lists the tags of the repository, or —
    when the location is a prefix or a bare host — walks ``/v2/_catalog`` page by page
    (a generator: a catalog can be huge).

Destination
    Blobs go up through :class:`RegistryBlobSink`: small ones (known size ≤ 1 MiB and
    ≤ ``monolithic_upload_limit``) in one PUT at commit; others by ``POST`` + streamed
    ``PATCH`` requests (one per ``upload_chunk_size``, or a single one for blobs up to
    ``monolithic_upload_limit``) + a final ``PUT ?digest=`` at commit, so nothing is
    visible under the digest before the caller has verified the bytes. Manifests are
    PUT by digest; :meth:`RegistryDestination.publish` PUTs each root again under its
    tag, one repository write at a time (Distribution 2.8 answers 500 to concurrent tag
    writes in one repository; those are retried as well).

Image entries of a registry source follow the ``sync`` convention: ``ref`` is
``<full repository path>:<tag>`` below the host, ``repository`` the path relative to
the source location (the last path component when the source *is* a repository, as
``skopeo sync`` does), so that name mapping can append it to a destination.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from typing import Any, BinaryIO, Iterator, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, FormatError
from imagepush.transforms.formats.manifest import detect_media_type, manifest_digest
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.stores.base import (
    BlobSink,
    Destination,
    ImageEntry,
    ManifestBlob,
    Publication,
    PublishErrors,
    Source,
    StoreError,
)
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.transport import (
    ClientPool,
    CATALOG_SCOPE,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    Reply,
    BlobStream,
    StreamedResponse,
    RetriableUploadError,
    pull_scope,
    push_scope,
)

log = logging.getLogger(__name__)

#: Distribution and containers/image cap manifests at 4 MiB; a larger body is not one.
MANIFEST_LIMIT = 4 << 20
#: Blobs up to this size (and ``monolithic_upload_limit``) are held in memory and sent in one PUT.
SMALL_BLOB_LIMIT = 1 << 20
#: Pieces queued between ``write`` and the thread sending the PATCH body (backpressure).
PIPE_DEPTH = 4
#: A PATCH body waiting this long for the next ``write`` gives up (the writer died).
PIPE_IDLE_TIMEOUT = 600.0
#: Repositories whose first tag page is fetched ahead while a registry is listed.
LISTING_AHEAD = 4
ACCEPT = ", ".join(mt.ACCEPT_MANIFESTS)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_REF_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def split_location(location: str) -> tuple[str, str]:
    """``host[:port][/repo/path]`` -> ``(host, repo/path)``; a ``docker://`` prefix is allowed."""
    text = location[len("docker://") :] if location.startswith("docker://") else location
    host, _, repository = text.partition("/")
    if not host:
        raise StoreError(f"{location!r}: no registry host")
    return host, repository.strip("/")


def _with_query(url: str, **params: str) -> str:
    """``url`` with more query parameters, keeping the ones it has (Distribution's ``_state``)."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _media_type(data: bytes, content_type: str | None, where: str) -> str:
    """The manifest type: a known Content-Type, else detected from the bytes."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in mt.MANIFEST_TYPES:
        return declared
    try:
        return detect_media_type(data, declared)
    except FormatError as exc:
        raise StoreError(f"{where}: answered something that is not a manifest ({exc})") from None


class _RegistryStore:
    """What source and destination share: a location, options and a lazily built client.

    Only ``location`` and ``options`` are pickled; the client (sessions, tokens, locks)
    is rebuilt on first use in each worker.
    """

    def __init__(self, location: str, options: StoreOptions | None = None, *, clients: ClientPool | None = None) -> None:
        self.location = location
        self.options = options or StoreOptions()
        self.host, self.repository = split_location(location)
        self._client: RegistryClient | None = None
        self._client_lock = threading.Lock()
        #: Shared per-host clients of the owner (a worker's store cache); None: a private one.
        self._clients = clients

    @property
    def client(self) -> RegistryClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._clients.get(self.host) if self._clients else RegistryClient(self.host, self.options)
            return self._client

    def where(self, repository: str | None = None) -> str:
        repo = self.repository if repository is None else repository
        return f"{self.host}/{repo}" if repo else self.host

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None and self._clients is None:
                self._client.close()  # a shared client is closed by its pool
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- manifests (both sides read them) ------------------------------------------

    def _fetch_manifest(self, repository: str, reference: str, expected: str | None) -> ManifestBlob:
        where = self.where(repository)
        what = f"manifest {reference}"
        with self.client.open(
            "GET", f"/v2/{repository}/manifests/{reference}", scopes=[pull_scope(repository)],
            where=where, what=what, headers={"Accept": ACCEPT},
        ) as response:
            try:
                data = response.read_limited(MANIFEST_LIMIT)
            except RegistryError:
                raise StoreError(f"{where}: {what} is larger than {MANIFEST_LIMIT >> 20} MiB") from None
            headers = response.headers
        media_type = _media_type(data, headers.get("Content-Type"), f"{where}: {what}")
        try:
            digest = manifest_digest(data, media_type)
        except FormatError as exc:
            raise StoreError(f"{where}: {what} cannot be digested ({exc})") from None
        announced = headers.get("Docker-Content-Digest")
        if announced and announced != digest and not _whole_file_digest(announced, data, media_type):
            raise StoreError(f"{where}: {what} has digest {digest} but the registry says {announced}")
        if expected is not None and expected != digest and not _whole_file_digest(expected, data, media_type):
            raise StoreError(f"{where}: {what} has digest {digest}, not the digest asked for")
        return ManifestBlob(data=data, media_type=media_type, digest=digest)

    def _head_manifest(self, repository: str, reference: str) -> Reply | None:
        reply = self.client.request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", scopes=[pull_scope(repository)],
            where=self.where(repository), what=f"manifest {reference}", headers={"Accept": ACCEPT},
            ok=(200, 404),
        )
        return reply if reply.status == 200 else None


def _whole_file_digest(candidate: str, data: bytes, media_type: str) -> bool:
    """True for schema1 named by the digest of its signed bytes rather than of its payload.

    Only old registries do that; the bytes still match what was named, so it is no
    corruption, while the canonical digest stays the payload digest.
    """
    if not mt.is_schema1(media_type):
        return False
    try:
        return digestlib.matches(candidate, data)
    except digestlib.DigestError:
        return False


class RegistrySource(_RegistryStore, Source):
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
        if _DIGEST_REF_RE.match(ref) and ref.split(":", 1)[0] in (digestlib.SHA256, digestlib.SHA512):
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
        return self._fetch_manifest(repository, reference, expected)

    def get_manifest(self, digest: str) -> ManifestBlob:
        try:
            digestlib.validate(digest)
        except digestlib.DigestError as exc:
            raise StoreError(f"{self.where()}: {exc}") from None
        return self._fetch_manifest(self._require(self.repository), digest, digest)

    def open_blob(self, digest: str) -> BinaryIO:
        repository = self._require(self.repository)
        try:
            digestlib.validate(digest)
        except digestlib.DigestError as exc:
            raise StoreError(f"{self.where()}: {exc}") from None
        where, path, scopes = self.where(), f"/v2/{repository}/blobs/{digest}", [pull_scope(repository)]

        def open_at(offset: int) -> StreamedResponse:
            return self.client.open(
                "GET", path, scopes=scopes, where=where, what=f"blob {digest} from byte {offset}",
                headers={"Range": f"bytes={offset}-"}, ok=(200, 206), follow_redirects=True,
            )

        response = self.client.open("GET", path, scopes=scopes, where=where, what=f"blob {digest}",
                                    follow_redirects=True)
        return BlobStream(response, open_at, where)  # type: ignore[return-value]  # a RawIOBase is a binary file

    # -- listing --------------------------------------------------------------------

    def _pages(
        self, first: str, scopes: list[str], where: str, what: str, key: str, page_size: int | None
    ) -> Iterator[list[str]]:
        """Each page's list under ``key``, following ``Link: <…>; rel="next"`` verbatim."""
        url: str | None = first
        params: dict[str, int] | None = {"n": page_size} if page_size else None
        seen: set[str] = set()
        while url is not None:
            reply = self.client.request("GET", url, scopes=scopes, where=where, what=what, params=params)
            params = None  # the next link carries its own query
            try:
                doc = _json_object(reply.content)
            except ValueError:
                raise StoreError(f"{where}: {what} answered something that is not a JSON object") from None
            items = doc.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise StoreError(f"{where}: {what} has no list of names under {key!r}")
            yield items
            url = reply.link("next")
            if url is not None:
                if url in seen:  # a registry that loops its links must not loop us forever
                    raise StoreError(f"{where}: {what} pagination repeats {urlsplit(url).query}")
                seen.add(url)

    def _tags(self, repository: str, page_size: int | None) -> Iterator[str] | None:
        """The tags of ``repository``, or None if the repository does not exist."""
        where = self.where(repository)
        pages = self._pages(
            f"/v2/{repository}/tags/list", [pull_scope(repository)], where, "tag list", "tags", page_size
        )
        try:
            first = next(pages, [])
        except RegistryNotFound:
            return None

        def walk() -> Iterator[str]:
            yield from first
            for page in pages:
                yield from page

        return walk()

    def _repositories(self, page_size: int | None) -> Iterator[str]:
        """Catalog entries equal to or below the location's prefix, lazily."""
        prefix = self.repository
        for page in self._pages("/v2/_catalog", [CATALOG_SCOPE], self.host, "catalog", "repositories", page_size):
            for repository in page:
                if not prefix or repository == prefix or repository.startswith(prefix + "/"):
                    yield repository

    def _entry(self, repository: str, tag: str, relative: str, details: bool = True) -> ImageEntry | None:
        if not details:
            return ImageEntry(ref=f"{repository}:{tag}", repository=relative, tag=tag, digest="", media_type="")
        reply = self._head_manifest(repository, tag)
        if reply is None:
            return None  # tag deleted between listing and now
        digest = reply.headers.get("Docker-Content-Digest")
        content_type = (reply.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not digest or content_type not in mt.MANIFEST_TYPES:
            manifest = self._fetch_manifest(repository, tag, None)
            digest, content_type = manifest.digest, manifest.media_type
        return ImageEntry(
            ref=f"{repository}:{tag}", repository=relative, tag=tag, digest=digest, media_type=content_type
        )

    def list_images(self, *, details: bool = True, page_size: int | None = None) -> Iterator[ImageEntry]:
        """Tags of the repository; or, for a prefix / bare host, of every repository below it.

        ``page_size`` (or the constructor's) is sent as ``n=`` on the first catalog and
        tag-list request; later pages follow the registry's ``Link`` headers verbatim.
        """
        page_size = page_size if page_size is not None else self.page_size
        if self.repository:
            tags = self._tags(self.repository, page_size)
            if tags is not None:
                first = next(tags, None)
                if first is not None:
                    relative = self.repository.rsplit("/", 1)[-1]
                    for tag in _chain(first, tags):
                        entry = self._entry(self.repository, tag, relative, details)
                        if entry is not None:
                            yield entry
                    return
        prefix = self.repository
        for repository, tags in self._tags_ahead(self._repositories(page_size), page_size):
            if tags is None:
                continue
            if repository == prefix:
                relative = prefix.rsplit("/", 1)[-1]
            elif prefix:
                relative = repository[len(prefix) + 1 :]
            else:
                relative = repository
            for tag in tags:
                entry = self._entry(repository, tag, relative, details)
                if entry is not None:
                    yield entry


    def _tags_ahead(
        self, repositories: Iterator[str], page_size: int | None
    ) -> Iterator[tuple[str, Iterator[str] | None]]:
        """Each repository with its tags, in catalog order, first tag pages fetched ahead.

        One tag-list request per repository, made one after another, is most of the
        time of listing a registry of many small repositories (and of a rerun that finds
        everything current). A few are kept in flight, within the client's per-registry
        limit; the look-ahead is bounded, so a huge catalog is still listed lazily.
        """
        workers = max(1, min(LISTING_AHEAD, self.options.registry_concurrency))
        yield from bounded_map(
            lambda repository: self._tags(repository, page_size), repositories,
            workers=workers, limit=workers + 1, ordered=True, name="tags",
        )


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _json_object(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    return doc


# -- uploads ------------------------------------------------------------------------------

_END = object()
_ABORT = object()


class _PipeBody:
    """The body of one streamed PATCH: pieces handed over by ``write`` through a queue.

    ``__len__`` makes requests send ``Content-Length`` instead of chunked encoding when
    the length is known (Distribution checks ``Content-Range`` only together with it).
    Setting :attr:`aborted` makes the body raise, which cuts the request's connection.
    """

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.queue: "queue.Queue[object]" = queue.Queue(maxsize=PIPE_DEPTH)
        self.aborted = threading.Event()

    def __len__(self) -> int:
        return self.length or 0

    def __bool__(self) -> bool:
        # A zero __len__ (unknown length) must not make the body look absent to urllib3.
        return True

    def __iter__(self) -> Iterator[bytes]:
        idle_since = time.monotonic()
        while True:
            if self.aborted.is_set():
                raise _UploadAborted()
            try:
                item = self.queue.get(timeout=0.25)
            except queue.Empty:
                if time.monotonic() - idle_since > PIPE_IDLE_TIMEOUT:
                    raise StoreError("upload stalled: no data from the source") from None
                continue
            idle_since = time.monotonic()
            if item is _END:
                return
            if item is _ABORT or self.aborted.is_set():
                raise _UploadAborted()
            yield item  # type: ignore[misc]


class _UploadAborted(Exception):
    """Raised inside the PATCH body to cut the connection when the copy is aborted."""


class _Patch:
    """One streamed upload request (a PATCH chunk, or a whole-blob PUT) in a helper thread
    while ``write`` feeds its body."""

    def __init__(
        self, sink: "RegistryBlobSink", start: int, length: int | None, capacity: int, *, monolithic: bool = False
    ) -> None:
        self.capacity = capacity  # bytes this request may carry
        self.sent = 0
        self.body = _PipeBody(length)
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        headers = {"Content-Type": "application/octet-stream"}
        assert sink._location is not None
        if monolithic:
            # The whole blob in the final PUT: the registry hashes it as it arrives and
            # links it only if it matches the digest, with no chunk state to save.
            request = ("PUT", _with_query(sink._location, digest=sink.descriptor.digest), (201, 204))
        else:
            request = ("PATCH", sink._location, (202,))
            if length is not None:
                headers["Content-Range"] = f"{start}-{start + length - 1}"
        self._thread = threading.Thread(
            target=self._run, args=(sink, request, headers), name="imagepush-upload", daemon=True
        )
        self._thread.start()

    def _run(self, sink: "RegistryBlobSink", request: tuple[str, str, tuple[int, ...]], headers: dict[str, str]) -> None:
        method, url, ok = request
        try:
            self.reply = sink._client.send_stream(
                method, url, self.body, scopes=sink._scopes, where=sink._where,
                what=f"upload of blob {sink.descriptor.digest}", ok=ok, headers=headers,
            )
        except BaseException as exc:  # handed to the writer thread, which raises it
            self.error = exc
            # Unblock a writer waiting on a full queue: nobody reads it any more.
            while True:
                try:
                    self.body.queue.get_nowait()
                except queue.Empty:
                    break

    @property
    def room(self) -> int:
        return self.capacity - self.sent

    def put(self, item: object) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.body.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    if self.error is not None:
                        raise self.error
                    raise StoreError("upload connection ended before the data was sent")

    def finish(self) -> Reply:
        self.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    def cancel(self) -> None:
        """Cut the PATCH short; a thread stuck in a send ends at the socket timeout."""
        self.body.aborted.set()
        try:
            self.body.queue.put_nowait(_ABORT)
        except queue.Full:
            pass
        self._thread.join(timeout=30)


class RegistryBlobSink(BlobSink):
    """Uploads one blob; the registry makes it visible only at the final PUT in :meth:`commit`.

    The final ``PUT ?digest=`` makes the registry hash what it received and refuse a
    mismatch (``DIGEST_INVALID``), so this sink :attr:`verifies_digest` itself.

    Failures of the streamed part are :class:`RetriableUploadError`: the bytes are gone,
    and the caller must copy again from a fresh source read.
    """

    verifies_digest = True

    def __init__(self, destination: "RegistryDestination", descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self._destination = destination
        self._client = destination.client
        self._repository = destination.repository
        self._where = destination.where()
        self._scopes = [push_scope(self._repository)]
        options = destination.options
        self._chunk = max(1, int(options.upload_chunk_size))
        size = descriptor.size if descriptor.size is not None and descriptor.size >= 0 else None
        self._size = size
        limit = int(options.monolithic_upload_limit)
        self._small = size is not None and size <= min(limit, SMALL_BLOB_LIMIT)
        #: Known sizes up to the monolithic limit stream in one PUT; others in chunk-sized PATCHes.
        self._monolithic = size is not None and 0 < size <= limit and not self._small
        self._patch_size = size if self._monolithic else self._chunk
        self._buffer = bytearray()
        self._location: str | None = None
        self._offset = 0
        self._patch: _Patch | None = None
        self._finished = False

    def _start_session(self) -> None:
        reply = self._client.request(
            "POST", f"/v2/{self._repository}/blobs/uploads/", scopes=self._scopes, where=self._where,
            what=f"upload of blob {self.descriptor.digest}", ok=(202,), body=b"",
        )
        location = reply.location()
        if not location:
            raise RegistryError(f"{self._where}: the registry started an upload without a Location")
        self._location = location
        minimum = reply.headers.get("OCI-Chunk-Min-Length", "")
        if minimum.isdigit() and int(minimum) > self._chunk:
            # Registries backed by multipart object storage refuse smaller chunks.
            self._chunk = int(minimum)
            if self._size is None or self._patch_size < self._chunk:
                self._patch_size = self._chunk

    def write(self, chunk: bytes) -> None:
        if self._finished:
            raise StoreError(f"{self._where}: write to blob {self.descriptor.digest} after commit or abort")
        if not chunk:
            return
        if self._small:
            self._buffer += chunk
            if len(self._buffer) <= SMALL_BLOB_LIMIT:
                return
            # More than announced: stream it after all (the caller's size check will fail).
            self._small, data = False, bytes(self._buffer)
            self._buffer = bytearray()
            self._feed(data)
            return
        self._feed(chunk)

    def _feed(self, data: bytes) -> None:
        if self._location is None:
            self._start_session()
        view = memoryview(data)
        while view:
            if self._patch is None:
                self._begin_patch()
            assert self._patch is not None
            if self._patch.room == 0:  # only a whole-blob PUT stays open when full
                raise StoreError(
                    f"{self._where}: blob {self.descriptor.digest} has more than its {self._size} bytes"
                )
            piece = view[: self._patch.room]
            self._patch.put(bytes(piece))
            self._patch.sent += len(piece)
            view = view[len(piece) :]
            if self._patch.room == 0 and not self._monolithic:
                self._end_patch()

    def _begin_patch(self) -> None:
        if self._size is not None:
            left = self._size - self._offset
            if left <= 0:
                raise StoreError(
                    f"{self._where}: blob {self.descriptor.digest} has more than its {self._size} bytes"
                )
            length: int | None = min(self._patch_size, left)
            capacity = length
        else:
            length, capacity = None, self._chunk  # unknown size: chunked encoding, no range
        self._patch = _Patch(self, self._offset, length, capacity, monolithic=self._monolithic)

    def _finish_monolithic(self) -> Reply:
        """End the whole-blob PUT; its answer is the commit."""
        patch, self._patch = self._patch, None
        if patch is None or patch.sent != self._size:
            raise StoreError(f"{self._where}: blob {self.descriptor.digest} ended before its {self._size} bytes")
        return patch.finish()

    def _end_patch(self) -> None:
        patch, self._patch = self._patch, None
        assert patch is not None
        reply = patch.finish()
        self._offset += patch.sent
        location = reply.location()
        if location:
            self._location = location  # always continue at the newest Location
        received = reply.headers.get("Range")
        if received and re.match(r"^(?:bytes=)?0-\d+$", received):
            end = int(received.rsplit("-", 1)[1])
            if end != self._offset - 1 and self._offset > 0:
                raise RetriableUploadError(
                    f"{self._where}: upload of blob {self.descriptor.digest} is at byte {end + 1}, "
                    f"expected {self._offset}; the upload must start again"
                )

    def commit(self) -> None:
        """The final PUT; the registry checks the digest itself and only then links the blob."""
        if self._finished:
            return
        digest = self.descriptor.digest
        try:
            monolithic = self._monolithic and self._location is not None
            if not monolithic:
                if self._small or self._location is None:
                    body = bytes(self._buffer)
                    self._start_session()
                else:
                    if self._patch is not None:
                        self._end_patch()
                    body = b""
            assert self._location is not None
            try:
                if monolithic:
                    reply = self._finish_monolithic()
                else:
                    reply = self._client.request(
                        "PUT", _with_query(self._location, digest=digest), scopes=self._scopes, where=self._where,
                        what=f"upload of blob {digest}", ok=(201, 204), body=body,
                        headers={"Content-Type": "application/octet-stream"},
                    )
            except RegistryError as exc:
                # The PUT may have succeeded with its answer lost, and a retry then finds
                # the session gone: the blob being there is what counts.
                if _blob_exists(self._client, self._repository, digest, self._where):
                    log.debug("%s: blob %s present after a failed final PUT (%s)", self._where, digest, exc)
                    self._finished = True
                    self._destination._note_present(digest)
                    return
                if isinstance(exc, RetriableUploadError):
                    raise
                raise RetriableUploadError(str(exc), status=exc.status, code=exc.code) from None
            announced = reply.headers.get("Docker-Content-Digest")
            if announced and announced != digest:
                raise StoreError(f"{self._where}: the registry stored blob {digest} as {announced}")
            self._finished = True
            self._destination._note_present(digest)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer = bytearray()
        if self._patch is not None:
            self._patch.cancel()
            self._patch = None
        if self._location is not None:
            try:
                self._client.request(
                    "DELETE", self._location, scopes=self._scopes, where=self._where,
                    what=f"cancel upload of {self.descriptor.digest}", ok=(202, 204, 404),
                )
            except StoreError as exc:  # the session expires on its own; cleanup is best effort
                log.debug("%s: could not cancel an upload: %s", self._where, exc)
            self._location = None


def _blob_exists(client: RegistryClient, repository: str, digest: str, where: str) -> bool:
    """HEAD the blob. A redirect counts as present: registries redirect only to content they
    hold, and a storage URL signed for GET may refuse a HEAD."""
    reply = client.request(
        "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=[pull_scope(repository)], where=where,
        what=f"blob {digest}", ok=(200, 404, 301, 302, 303, 307, 308),
    )
    return reply.status != 404


class RegistryDestination(_RegistryStore, Destination):
    """Writes images into one registry repository."""

    preferred_format = "oci"

    def __init__(self, location: str, options: StoreOptions | None = None, *, clients: ClientPool | None = None) -> None:
        super().__init__(location, options, clients=clients)
        if not self.repository:
            raise StoreError(f"docker://{self.host}: a destination needs a repository (docker://{self.host}/REPO)")
        #: Serialises manifest writes to this repository (Distribution 2.8 races on tags).
        self._manifest_lock = threading.Lock()
        self._new_lock = threading.Lock()
        self._new: bool | None = None
        #: Blobs this store object uploaded or mounted: present without asking.
        self._present: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])  # type: ignore[misc]

    def _is_new_repository(self) -> bool:
        """Whether the repository had no tags when this store first looked (one request).

        A repository without tags has no tag to point anywhere, so a first migration
        asks once instead of once per image whether its tag is current. It says nothing
        about blobs: tags are written last, so a migration that was interrupted leaves a
        repository with blobs and no tags, and those blobs must not be sent again.
        """
        with self._new_lock:
            if self._new is None:
                reply = self.client.request(
                    "GET", f"/v2/{self.repository}/tags/list", params={"n": "1"},
                    scopes=[push_scope(self.repository)], where=self.where(), what="tag list", ok=(200, 404),
                )
                self._new = reply.status == 404
            return self._new

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

        Always asked, tags or no tags: an interrupted run leaves blobs in a repository
        that has no tag yet, and a rerun must find them instead of sending them again.
        """
        with self._new_lock:
            if digest in self._present:
                return True
        return _blob_exists(self.client, self.repository, digest, self.where())

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        try:
            digestlib.validate(descriptor.digest)
        except digestlib.DigestError as exc:
            raise StoreError(f"{self.where()}: {exc}") from None
        return RegistryBlobSink(self, descriptor)

    @property
    def blob_domain(self) -> str:
        """Every repository of one registry host shares its blobs (cross-repository mounts)."""
        return f"docker://{self.host}"

    def mount_blob(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        """Mount from the first repository of this host known to hold the blob; False: upload."""
        for store in known_at:
            if not store.startswith("docker://"):
                continue
            host, repository = split_location(store)
            repository = re.split(r"[:@]", repository, maxsplit=1)[0] if repository else repository
            if host != self.host or not repository or repository == self.repository:
                continue
            if self._mount_from(descriptor, repository):
                return True
        return False

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
            return True
        location = reply.location()  # 202: an ordinary upload session we do not want
        if location:
            try:
                self.client.request(
                    "DELETE", location, scopes=[push_scope(self.repository)], where=self.where(),
                    what="cancel upload", ok=(202, 204, 404),
                )
            except StoreError as exc:
                log.debug("%s: could not cancel the unused upload: %s", self.where(), exc)
        return False

    def current_digest(self, name: str) -> str | None:
        if name.startswith(("sha256:", "sha512:")) or not _TAG_RE.match(name) or self._is_new_repository():
            return None
        reply = self._head_manifest(self.repository, name)
        return reply.headers.get("Docker-Content-Digest") if reply is not None else None

    def _put_manifest(self, data: bytes, media_type: str, reference: str, digest: str) -> None:
        where = self.where()
        kind = media_type
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
            raise StoreError(f"{where}: manifest {reference} was stored as {announced}, expected {digest}")

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
        if pub.manifest is not None:
            data = pub.manifest
        else:  # published by another worker than the one that wrote it: read it back
            data = self._fetch_manifest(self.repository, pub.descriptor.digest, pub.descriptor.digest).data
        try:
            media_type = detect_media_type(data, pub.descriptor.media_type)
        except FormatError as exc:
            raise StoreError(f"{self.where()}: root {pub.descriptor.digest} is not a manifest ({exc})") from None
        return data, media_type

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
        elif not _TAG_RE.match(ref):
            raise StoreError(f"{self.where()}: {ref!r} is not a valid tag")
        data, media_type = self._publication_bytes(pub)
        self._put_manifest(data, media_type, ref, digest)
        with self._new_lock:
            self._new = False  # it has a tag now; later questions go to the registry
        log.debug("%s:%s -> %s", self.where(), ref, digest)
