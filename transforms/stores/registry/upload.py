"""Blob uploads: one upload session per blob, which the registry makes visible only at its end.

Small blobs (known size ≤ :data:`SMALL_BLOB_LIMIT` and ≤ ``monolithic_upload_limit``)
are held in memory and sent in one PUT at commit. Others go ``POST`` + streamed
requests: the whole body in the final ``PUT ?digest=`` when its size is known and at
most ``monolithic_upload_limit``, else one ``PATCH`` per ``upload_chunk_size`` and an
empty final PUT. Nothing is visible under the digest before the caller has verified
the bytes, and the registry hashes what it received and refuses a mismatch.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from typing import Callable, Iterator

from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import BlobSink, Mismatch, StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.auth import pull_scope, push_scope
from imagepush.transforms.stores.registry.client import RegistryClient
from imagepush.transforms.stores.registry.errors import (
    AccessDenied,
    AuthenticationError,
    RegistryError,
    RegistryUnavailable,
    RetriableUploadError,
)
from imagepush.transforms.stores.registry.streams import Reply
from imagepush.transforms.stores.registry.wire import with_params
from imagepush.transforms.stores.stopping import OPEN_SINKS, Stopped

log = logging.getLogger(__name__)

#: Blobs up to this size (and ``monolithic_upload_limit``) are held in memory and sent in one PUT.
SMALL_BLOB_LIMIT = 1 << 20
#: Pieces queued between ``write`` and the thread sending the body (backpressure). One
#: read chunk (2 MiB) is enough: the socket's send buffer holds more while it is sent.
PIPE_DEPTH = 1
#: A PATCH body waiting this long for the next ``write`` gives up (the writer died).
PIPE_IDLE_TIMEOUT = 600.0
#: An aborted PATCH with at most this many bytes still to send is finished with zeros
#: rather than cut (see :meth:`_Patch.finish_early`).
ABORT_PAD_LIMIT = 8 << 20
#: How long an abort waits for such a request to end.
ABORT_WAIT = 30.0



def blob_exists(client: RegistryClient, repository: str, digest: str, where: str) -> bool:
    """HEAD the blob. A redirect counts as present: registries redirect only to content they
    hold, and a storage URL signed for GET may refuse a HEAD."""
    reply = client.request(
        "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=[pull_scope(repository)], where=where,
        what=f"blob {digest}", ok=(200, 404, 301, 302, 303, 307, 308),
    )
    return reply.status != 404


#: Registry error codes that mean the upload session is broken or gone, not the blob refused.
SESSION_LOST_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID", "RANGE_INVALID"})


def as_restartable(exc: BaseException) -> BaseException:
    """``exc`` as a :class:`RetriableUploadError` when a fresh session and read can fix it, else ``exc``.

    Restartable: no answer (a reset, a timeout), 429 and 5xx (a request with a streamed
    body is sent once, so the transport could not retry it), and a lost or broken session (404, 416, ``BLOB_UPLOAD_*``: after
    a mid-body reset the registry holds a half-written session that refuses the next
    chunk). A 401 on a streamed body (a token gone stale mid-upload) is already a
    :class:`RetriableUploadError` from the client. Not restartable: a host that stayed
    unreachable through every retry, credentials refused after renewal, and the
    registry's considered refusals (``DIGEST_INVALID``, 403, …), which a second try
    would only repeat.
    """
    if isinstance(exc, RetriableUploadError) or not isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, (RegistryUnavailable, AuthenticationError, AccessDenied)):
        return exc
    status = exc.status
    if (
        status is None or status in (404, 416, 429) or status >= 500
        or (exc.code or "") in SESSION_LOST_CODES
    ):
        restart = RetriableUploadError(f"{exc}; the upload must start again", status=status, code=exc.code)
        restart.__cause__ = exc
        return restart
    return exc


class OpenSession:
    """An upload session the registry opened unasked, for a sink of the same blob to take over.

    A registry answers a mount it cannot make (Distribution: the lender lacks the blob)
    with an ordinary upload session (202, ``Location``), in which the registry API lets
    the upload go on. The upload that follows takes that one instead of cancelling it
    and opening another: two requests fewer. Until a sink takes
    it, it is held in ``OPEN_SINKS``, so that a stop cancels it.
    """

    def __init__(self, client: RegistryClient, location: str, scopes: list[str], where: str, reply: Reply) -> None:
        self.location = location
        #: The registry's smallest chunk (``OCI-Chunk-Min-Length``), as it announced it.
        self.chunk_minimum = reply.headers.get("OCI-Chunk-Min-Length", "")
        self._client = client
        self._scopes = scopes
        self._where = where
        self._lock = threading.Lock()
        self._done = False

    def claim(self) -> str | None:
        """The session's URL for the one sink that takes it; None once taken or cancelled."""
        with self._lock:
            if self._done:
                return None
            self._done = True
            return self.location

    def abort(self) -> None:
        """Cancel the session (DELETE) unless a sink took it."""
        with self._lock:
            if self._done:
                return
            self._done = True
        try:
            self._client.request(
                "DELETE", self.location, scopes=self._scopes, where=self._where, what="cancel upload",
                ok=(202, 204, 404),
            )
        except StoreError as exc:  # the session expires on its own; cleanup is best effort
            log.debug("%s: could not cancel an unused upload: %s", self._where, exc)
        finally:
            OPEN_SINKS.closed(self)


_END = object()
_ABORT = object()


class _PipeBody:
    """The body of one streamed PATCH: pieces handed over by ``write`` through a queue.

    ``__len__`` makes the transport send ``Content-Length`` instead of chunked encoding when
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
            request = ("PUT", with_params(sink._location, {"digest": sink.descriptor.digest}), (201, 204))
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
                    raise RetriableUploadError("upload connection ended before the data was sent")

    def finish(self) -> Reply:
        self.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    def finish_early(self, limit: int) -> Reply | None:
        """End an aborted PATCH whole, zeros standing in for the bytes never sent; its answer.

        A body cut short leaves Distribution (2.8) a session whose stored size no longer
        matches the offset in its ``_state``, and it then refuses every request for that
        session, the cancelling DELETE included, until its upload purging runs (days
        later). A PATCH sent whole answers with the session's new state, with which the
        DELETE cancels it. (A final PUT gains nothing from this: once its bytes are in,
        2.8 refuses the DELETE whether the PUT was cut or failed its digest check.)
        None when more than ``limit`` bytes are missing or the request already failed:
        then it is cut.
        """
        if self.error is not None or not self._thread.is_alive():
            return None
        missing = self.capacity - self.sent if self.body.length is not None else 0
        if missing > limit:
            return None
        zeros = bytes(min(missing, 1 << 20))
        try:
            while missing > 0:
                piece = zeros[: min(missing, len(zeros))]
                self.put(piece)
                self.sent += len(piece)
                missing -= len(piece)
            self.put(_END)
        except BaseException:
            return None
        self._thread.join(ABORT_WAIT)
        return None if self._thread.is_alive() else self.reply

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

    Failures that a fresh start can fix (see :func:`as_restartable`) are raised from
    :meth:`write` and :meth:`commit` as :class:`RetriableUploadError`: the bytes sent are
    gone and the session may be half-written, so retrying inside this session could only
    end in ``BLOB_UPLOAD_INVALID``. The caller aborts this sink (which DELETEs the
    session) and copies again into a new sink from a fresh source read; the copy engine
    does that within the destination's ``upload_restarts`` (``--retry-times``).
    """

    verifies_digest = True

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        where: str,
        options: StoreOptions,
        descriptor: Descriptor,
        on_present: Callable[[str], None],
        session: OpenSession | None = None,
    ) -> None:
        """``session``: one already open for this blob, used instead of starting one."""
        self.descriptor = descriptor
        self._client = client
        self._repository = repository
        self._where = where
        #: Told the digest once the blob is in the registry, however it got there.
        self._on_present = on_present
        self._scopes = [push_scope(repository)]
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
        self._offered = session

    def _start_session(self) -> None:
        offered, self._offered = self._offered, None
        location = offered.claim() if offered is not None else None
        if offered is not None and location is not None:
            minimum = offered.chunk_minimum
        else:
            reply = self._client.request(
                "POST", f"/v2/{self._repository}/blobs/uploads/", scopes=self._scopes, where=self._where,
                what=f"upload of blob {self.descriptor.digest}", ok=(202,), body=b"",
            )
            location = reply.location()
            if not location:
                raise RegistryError(f"{self._where}: the registry started an upload without a Location")
            minimum = reply.headers.get("OCI-Chunk-Min-Length", "")
        self._location = location
        try:
            OPEN_SINKS.opened(self)  # from here on a stop must cancel the session
        except Stopped:
            self._finished = False
            self.abort()
            raise
        finally:
            if offered is not None:
                OPEN_SINKS.closed(offered)  # this sink answers for it now
        if self._finished:  # aborted by a stopping process while the POST was on its way
            self._finished = False
            self.abort()
            raise Stopped("imagepush is stopping")
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
        try:
            self._write(chunk)
        except RegistryError as exc:
            raise as_restartable(exc) from None

    def _write(self, chunk: bytes) -> None:
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
        # Bytes cannot change: the queue may hold views of them. A caller's buffer can.
        keep = bytes if not isinstance(data, bytes) else (lambda piece: piece)
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
            self._patch.put(keep(piece))
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
                        "PUT", with_params(self._location, {"digest": digest}), scopes=self._scopes, where=self._where,
                        what=f"upload of blob {digest}", ok=(201, 204), body=body,
                        headers={"Content-Type": "application/octet-stream"},
                    )
            except RegistryError as exc:
                # The PUT may have succeeded with its answer lost, and a retry then finds
                # the session gone: the blob being there is what counts.
                if blob_exists(self._client, self._repository, digest, self._where):
                    log.debug("%s: blob %s present after a failed final PUT (%s)", self._where, digest, exc)
                    self._finished = True
                    OPEN_SINKS.closed(self)
                    self._on_present(digest)
                    return
                raise as_restartable(exc) from None
            announced = reply.headers.get("Docker-Content-Digest")
            if announced and announced != digest:
                raise Mismatch(f"{self._where}: the registry stored blob {digest} as {announced}")
            self._finished = True
            OPEN_SINKS.closed(self)
            self._on_present(digest)
        except RegistryError as exc:
            self.abort()
            raise as_restartable(exc) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Cancel the upload session (DELETE), so that the registry keeps nothing of it."""
        if self._finished:
            return
        self._finished = True
        self._buffer = bytearray()
        patch, self._patch = self._patch, None
        if patch is not None:
            reply = None if self._monolithic else patch.finish_early(ABORT_PAD_LIMIT)
            if reply is None:
                patch.cancel()
            elif reply.location():
                self._location = reply.location()  # the session's state after the bytes it took
        if self._location is not None:
            try:
                self._client.request(
                    "DELETE", self._location, scopes=self._scopes, where=self._where,
                    what=f"cancel upload of {self.descriptor.digest}", ok=(202, 204, 404),
                )
                log.debug("%s: cancelled the upload of %s", self._where, self.descriptor.digest)
            except StoreError as exc:  # the session expires on its own; cleanup is best effort
                log.debug("%s: could not cancel an upload: %s", self._where, exc)
            self._location = None
        if self._offered is not None:  # never started: the session it was offered goes too
            self._offered.abort()
            self._offered = None
        OPEN_SINKS.closed(self)
