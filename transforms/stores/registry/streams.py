"""Response bodies: read whole (size-capped), streamed, or as a blob that resumes with ``Range``.

A streamed response holds its slot of the client's concurrency limit until it is
closed or read to the end, so the limit counts open connections, not request starts.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urljoin

import urllib3

from imagepush.transforms.stores.registry.errors import RegistryError, RegistryUnavailable, ResponseTooLarge

log = logging.getLogger(__name__)

#: Error bodies are read only this far; they are for a message, not for data.
ERROR_BODY_LIMIT = 64 << 10
#: A blob body that breaks off is continued from the byte it stopped at (``Range``) up to
#: this many times: a connection reset near the end of a multi-GB layer should not cost
#: the whole layer again, nor fail the images that share it.
MAX_RESUMES = 5
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


class Releasable(Protocol):
    def release(self) -> None: ...


class Lease:
    """One slot of a client's request limit (none: an unlimited request), released exactly once."""

    def __init__(self, semaphore: Releasable | None) -> None:
        self._semaphore = semaphore
        self._released = semaphore is None
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self._released:
                self._released = True
                assert self._semaphore is not None
                self._semaphore.release()


@dataclass(frozen=True)
class Reply:
    """A completed exchange: what the stores need from a response, body included."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    #: The final URL (after redirects): relative ``Location``/``Link`` values resolve against it.
    url: str

    def link(self, rel: str = "next") -> str | None:
        """The absolute URL of ``Link: <…>; rel="next"``, resolved against :attr:`url`."""
        header = self.headers.get("Link")
        if not header:
            return None
        for target, params in parse_links(header):
            if rel in params.get("rel", "").split() and target:
                return urljoin(self.url, target)
        return None

    def location(self) -> str | None:
        """The absolute URL of ``Location`` (registries often send a relative one)."""
        value = self.headers.get("Location")
        return urljoin(self.url, value) if value else None


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_LINK_PARAM = re.compile(r';\s*([^=;,\s]+)\s*(?:=\s*("[^"]*"|[^;,]*))?')


def parse_links(header: str) -> list[tuple[str, dict[str, str]]]:
    """The links of a ``Link`` header (RFC 8288): each target with its parameters, names lower-cased."""
    links = []
    for match in _LINK.finditer(header):
        params = {
            name.lower(): (value or "").strip().strip('"')
            for name, value in _LINK_PARAM.findall(match.group(2))
        }
        links.append((match.group(1).strip(), params))
    return links


class StreamedResponse:
    """A response whose body is read incrementally; closing it frees the connection slot.

    ``read`` returns the bytes exactly as sent (no ``Content-Encoding`` decoding):
    blobs are content-addressed, so a transparently decompressed body would fail its
    digest. Reaching the end releases the slot as well, in case a caller forgets to close.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, lease: Lease, where: str, url: str) -> None:
        self.response = response
        self._lease = lease
        self._where = where
        #: The URL this answer came from (after redirects).
        self.url = url
        self._closed = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    @property
    def status_code(self) -> int:
        return self.response.status

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed registry stream")
        try:
            data = self.response.read(None if size is None or size < 0 else size, decode_content=False)
        except Exception as exc:  # urllib3 protocol errors are not OSErrors
            self.close()
            raise RegistryUnavailable(
                f"{self._where}: connection lost while reading ({type(exc).__name__})"
            ) from None
        if (not data and size != 0) or size is None or size < 0:
            self._lease.release()  # at the end: free the slot even if the caller never closes
        return data or b""

    def read_limited(self, limit: int) -> bytes:
        """The whole body, or a :class:`RegistryError` when it exceeds ``limit`` bytes."""
        chunks, total = [], 0
        while True:
            chunk = self.read(min(1 << 16, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                self.close()
                raise ResponseTooLarge(f"{self._where}: response is larger than the {limit}-byte limit")

    def reply(self, limit: int) -> Reply:
        """Read the whole (size-capped) body and describe the exchange as a :class:`Reply`."""
        content = self.read_limited(limit)
        return Reply(self.response.status, self.response.headers, content, self.url)

    def drain(self, limit: int = ERROR_BODY_LIMIT) -> Reply:
        """Close the response after reading what it says, at most ``limit`` bytes and never failing.

        For answers that are not data (errors, challenges, pings): reading the body
        lets the connection be used again, and a body cut short is no reason to fail.
        """
        try:
            content = read_capped(self.response, limit)
        finally:
            self.close()
        return Reply(self.response.status, self.response.headers, content, self.url)

    def close(self) -> None:
        """Free the connection (kept for the next request when the body was read to its end) and the slot."""
        if not self._closed:
            self._closed = True
            try:
                self.response.close()
                self.response.release_conn()
            finally:
                self._lease.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "StreamedResponse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_capped(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body; errors while reading give what was read."""
    chunks, total = [], 0
    try:
        while total < limit:
            chunk = response.read(min(1 << 16, limit - total), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except Exception:  # an error body is best effort; urllib3 protocol errors included
        pass
    return b"".join(chunks)


class BlobStream(io.RawIOBase):
    """A blob body as a read-only binary file; closing it releases the connection slot.

    Given ``open_at`` (a GET of the same blob from a byte offset), a connection lost
    mid-body is resumed where the bytes handed out so far end, so the caller sees one
    unbroken stream; its digest check is still the judge of the result. A registry that
    ignores ``Range`` answers 200 with the whole blob, and the part already read is
    skipped.
    """

    def __init__(
        self,
        streamed: StreamedResponse,
        open_at: Callable[[int], StreamedResponse] | None = None,
        where: str = "",
    ) -> None:
        super().__init__()
        self._streamed = streamed
        self._open_at = open_at
        self._where = where
        self._offset = 0
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                data = self._streamed.read(size)
            except RegistryUnavailable as exc:
                self._resume(exc)
                continue
            self._offset += len(data)
            return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _resume(self, lost: RegistryUnavailable) -> None:
        """Replace the broken response by one that continues at ``self._offset``."""
        while True:
            if self._open_at is None or self._resumes >= MAX_RESUMES:
                raise lost
            self._resumes += 1
            self._streamed.close()
            log.info("%s; resuming at byte %d (%d of %d)", lost, self._offset, self._resumes, MAX_RESUMES)
            try:
                self._streamed = self._continue_at(self._offset)
                return
            except RegistryUnavailable as again:
                lost = again

    def _continue_at(self, offset: int) -> StreamedResponse:
        streamed = self._open_at(offset)  # type: ignore[misc]  # checked by the caller
        if streamed.status_code == 206:
            match = _CONTENT_RANGE.fullmatch((streamed.headers.get("Content-Range") or "").strip())
            if match is None or int(match.group(1)) != offset:
                streamed.close()
                raise RegistryError(
                    f"{self._where}: asked to resume at byte {offset}, the registry answered "
                    f"Content-Range {streamed.headers.get('Content-Range')!r}"
                )
            return streamed
        remaining = offset  # a 200: the whole blob again
        while remaining:
            skipped = streamed.read(min(remaining, 1 << 20))
            if not skipped:
                streamed.close()
                raise RegistryUnavailable(f"{self._where}: the blob ended before byte {offset} when read again")
            remaining -= len(skipped)
        return streamed

    def close(self) -> None:
        self._streamed.close()
        super().close()
