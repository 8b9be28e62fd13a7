"""HTTP client for one registry host: scheme choice, authentication, retries, limits.

Everything a registry store needs from the wire lives here so that the store itself
reads as registry *operations* (get a manifest, upload a blob) and not as HTTP plumbing.
The rules come from docs/formats.md §10 and from what Distribution 2.8 actually does:

* **Scheme.** HTTPS with certificate verification (``ca_bundle`` adds trusted CAs).
  A host listed in ``insecure_registries`` is tried over HTTPS *without* verification
  first and over plain HTTP only if TLS cannot be spoken at all, as docker does.
* **Authentication.** A 401 carries ``WWW-Authenticate`` (possibly several challenges).
  ``Basic`` → resend with the credentials from the auth files. ``Bearer`` → fetch a
  token from the realm for exactly the scopes the operation needs (``pull`` to read,
  ``pull,push`` to write, plus ``pull`` on the source of a mount, ``registry:catalog:*``
  to list), anonymously when there are no credentials. Tokens are cached per scope set
  until they expire, and once a host has challenged us the right credentials are sent
  up front, which saves a round trip on every later request.
* **Retries.** Connection errors, 429 and 5xx are retried with exponential backoff and
  jitter, honouring ``Retry-After``, ``registry_retries`` times (``--retry-times``). A
  request whose body is a *stream* cannot be replayed; it fails with
  :class:`RetriableUploadError` so the caller restarts the whole upload from a fresh
  read of the source. A host that could not be reached at all is not asked again for
  :data:`HOST_DOWN_SECONDS`: its other requests fail at once.
* **Proxies.** ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either
  case) choose a proxy per request URL as curl and skopeo do, for registries, token
  servers and blob storage alike; the rest of the environment (netrc,
  ``REQUESTS_CA_BUNDLE``) is ignored, since options say that instead.
* **Limits.** One :class:`threading.BoundedSemaphore` per client caps concurrent requests
  at ``registry_concurrency``; a streamed response holds its slot until it is closed, so
  the cap counts open connections, not just request starts.
* **Errors.** Every failure is a :class:`~transforms.stores.base.StoreError` subclass with
  a one-line message that names the repository and the registry's error ``code``.
  Credentials never appear in messages, logs or ``repr``.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from imagepush.transforms.stores.registry.authfile import AuthFiles, Credentials
from imagepush.transforms.stores.base import NotFound, StoreError
from imagepush.transforms.errors import AUTH, NOT_FOUND, REFUSED, UNREACHABLE
from imagepush.transforms.stores.options import StoreOptions

log = logging.getLogger(__name__)

#: First backoff delay and cap, in seconds; the delay doubles per attempt.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 16.0
#: A ``Retry-After`` longer than this is clipped: a worker must not sleep for hours.
RETRY_AFTER_MAX = 60.0
#: (connect, read) timeouts. Reads are long because a registry may hash a large blob
#: before it answers the final PUT of an upload.
TIMEOUT = (30.0, 300.0)
#: Token lifetimes below this are raised to it (docs/formats.md §10: default and minimum 60 s).
MIN_TOKEN_LIFETIME = 60
#: A cached token this close to expiry is replaced rather than sent.
TOKEN_EXPIRY_MARGIN = 10.0
#: containers/image caps token responses at 1 MiB; a larger answer is not a token.
TOKEN_RESPONSE_LIMIT = 1 << 20
#: Error bodies are read only this far; they are for a message, not for data.
ERROR_BODY_LIMIT = 64 << 10
MAX_REDIRECTS = 5
#: After a request has used up its attempts without reaching the host, further requests
#: to it fail at once for this long: with a registry down, thousands of images must not
#: each wait out a full backoff before failing.
HOST_DOWN_SECONDS = 30.0
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Sent as OAuth2 ``client_id`` when trading an identity token for an access token.
CLIENT_ID = "imagepush"

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RegistryError(StoreError):
    """A registry answered with an error, or could not be reached.

    ``status`` is the HTTP status (None for connection failures), ``code`` the first
    registry error code from the JSON body (``MANIFEST_UNKNOWN``, ``DENIED``, …) and
    ``detail`` the short description shown in parentheses in the message.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail or code or (f"HTTP {status}" if status else None)

    @property
    def kind(self) -> str:  # type: ignore[override]
        """From the answer: refused, or (no answer, 429, 5xx) unreachable; subclasses are exact."""
        if self.status in (401, 403):
            return AUTH
        if self.status == 404:
            return NOT_FOUND
        if self.status is None or self.status == 429 or self.status >= 500:
            return UNREACHABLE
        return REFUSED


class AuthenticationError(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    kind = AUTH  # type: ignore[assignment]


class AccessDenied(RegistryError):
    """Authenticated, but not allowed to do this (HTTP 403, ``DENIED``)."""

    kind = AUTH  # type: ignore[assignment]


class RegistryNotFound(NotFound, RegistryError):
    """The repository, manifest, blob or upload session does not exist (HTTP 404)."""


class RegistryUnavailable(RegistryError):
    """Connection failures, 429 or 5xx that persisted through every retry."""

    kind = UNREACHABLE  # type: ignore[assignment]


class RetriableUploadError(RegistryError):
    """A streamed request failed after its body was (partly) consumed.

    The stream cannot be replayed, so the client does not retry it; the upload as a
    whole may succeed if the caller starts again with a fresh read of the source.
    """


def collapse(text: str, limit: int = 200) -> str:
    """Collapse whitespace (registry messages may span lines) and cap the length."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def registry_error_detail(body: bytes) -> tuple[str | None, str | None]:
    """``(code, message)`` of the first entry of ``{"errors":[{"code","message"}]}``."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = errors[0].get("code"), errors[0].get("message")
            detail = errors[0].get("detail")
            text = str(message) if message else ""
            if isinstance(detail, str) and detail and detail not in text:
                text = f"{text}; {detail}" if text else detail
            return (str(code) if code else None), (collapse(text) if text else None)
        # OAuth2 token servers answer {"error": "...", "error_description": "..."}.
        if isinstance(doc.get("error"), str):
            desc = doc.get("error_description")
            return doc["error"], collapse(str(desc)) if desc else None
    return None, None


def describe(status: int, code: str | None, message: str | None, body: bytes = b"") -> str:
    """``MANIFEST_INVALID: manifest invalid`` / ``HTTP 502`` — the parenthesised part of messages."""
    if code and message and message.lower() != code.lower().replace("_", " "):
        return f"{code}: {message}"
    if code:
        return code
    text = collapse(body.decode("utf-8", errors="replace"), 120) if body else ""
    if text and not text.lstrip().startswith("<"):  # skip HTML error pages
        return f"HTTP {status}: {text}"
    return f"HTTP {status}"


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lower-case scheme and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> list[str]:
        return (self.params.get("scope") or "").split()


def parse_challenges(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges: ``Bearer realm="…",service="…", Basic realm="…"``.

    Values may be quoted (with backslash escapes) or bare tokens; a token not followed
    by ``=`` starts a new challenge. Malformed trailing text is ignored rather than
    fatal: a registry's odd header should not hide the challenges we can use.
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        m = _TOKEN_RE.match(header, pos)
        if not m:
            break
        name, pos = m.group(0), m.end()
        probe = pos
        while probe < n and header[probe] in " \t":
            probe += 1
        if probe < n and header[probe] == "=" and challenges:
            pos = probe + 1
            while pos < n and header[pos] in " \t":
                pos += 1
            if pos < n and header[pos] == '"':
                pos += 1
                chars: list[str] = []
                while pos < n and header[pos] != '"':
                    if header[pos] == "\\" and pos + 1 < n:
                        pos += 1
                    chars.append(header[pos])
                    pos += 1
                pos += 1  # closing quote
                value = "".join(chars)
            else:
                end = pos
                while end < n and header[end] not in ", \t":
                    end += 1
                value, pos = header[pos:end], end
            params[name.lower()] = value
        else:
            params = {}
            challenges.append(Challenge(name.lower(), params))
    return challenges


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date in the future."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


CATALOG_SCOPE = "registry:catalog:*"


def scope_repository(scopes: Iterable[str]) -> str:
    """The repository whose credentials a request with ``scopes`` uses; ``""`` for none.

    A mount asks for push on the destination and pull on the source in one token: the
    account that may push is the one to use.
    """
    repositories = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            if "push" in actions.split(","):
                return name
            repositories.append(name)
    return repositories[0] if repositories else ""

#: Docker Hub is named ``docker.io`` in references but served from another host.
ENDPOINT_ALIASES = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


def host_matches(host: str, entries: Iterable[str]) -> bool:
    """Whether ``host`` (``name[:port]``) is listed; an entry without a port covers every port."""
    host = host.lower()
    name = host.rsplit(":", 1)[0] if re.search(r":\d+$", host) else host
    return any(entry.strip().lower() in (host, name) for entry in entries if entry.strip())


class _Lease:
    """One slot of the client's semaphore, released exactly once."""

    def __init__(self, semaphore: threading.BoundedSemaphore) -> None:
        self._semaphore = semaphore
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self._released:
                self._released = True
                self._semaphore.release()


@dataclass
class _Token:
    value: str
    expires_at: float


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
        for link in requests.utils.parse_header_links(header):
            if link.get("rel") == rel and link.get("url"):
                return urljoin(self.url, link["url"])
        return None

    def location(self) -> str | None:
        """The absolute URL of ``Location`` (registries often send a relative one)."""
        value = self.headers.get("Location")
        return urljoin(self.url, value) if value else None


class StreamedResponse:
    """A response whose body is read incrementally; closing it frees the connection slot.

    ``read`` returns the bytes exactly as sent (no ``Content-Encoding`` decoding):
    blobs are content-addressed, so a transparently decompressed body would fail its
    digest. Reaching the end releases the slot as well, in case a caller forgets to close.
    """

    def __init__(self, response: requests.Response, lease: _Lease, where: str) -> None:
        self.response = response
        self._lease = lease
        self._where = where
        self._closed = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    @property
    def status_code(self) -> int:
        return self.response.status_code

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed registry stream")
        try:
            data = self.response.raw.read(None if size is None or size < 0 else size, decode_content=False)
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
                raise RegistryError(f"{self._where}: response is larger than the {limit}-byte limit")

    def reply(self, limit: int) -> Reply:
        """Read the whole (size-capped) body and describe the exchange as a :class:`Reply`."""
        content = self.read_limited(limit)
        return Reply(self.response.status_code, self.response.headers, content, self.response.url)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.response.close()
            finally:
                self._lease.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "StreamedResponse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A blob body that breaks off is continued from the byte it stopped at (``Range``) up to
#: this many times: a connection reset near the end of a multi-GB layer should not cost
#: the whole layer again, nor fail the images that share it.
MAX_RESUMES = 5
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


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


class _UnverifiedTLSAdapter(HTTPAdapter):
    """TLS without verification for an ``--insecure-registry`` host, from one context.

    Given no context, urllib3 loads the system CA store for every new TLS connection,
    even one it will not verify: tens of milliseconds of CPU per connection, and every
    worker's first request to an insecure host makes one to learn whether it speaks TLS.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A TLS tunnel through a proxy needs the same unverified context.
        return super().proxy_manager_for(proxy, ssl_context=self._context, **proxy_kwargs)


class RegistryClient:
    """Requests to one registry host on behalf of one store object.

    Thread-safe: Beam runs several bundles per worker, and a blob fan-out uploads from
    worker threads. The session, token cache and semaphore are per client; nothing is
    module-global, so two runs in one process cannot see each other's credentials.
    ``sleep`` and the backoff parameters exist so tests can check retries without waiting.
    """

    def __init__(
        self,
        host: str,
        options: StoreOptions | None = None,
        *,
        max_attempts: int | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        sleep: Callable[[float], None] = time.sleep,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not host or "/" in host:
            raise StoreError(f"{host!r} is not a registry host[:port]")
        self.host = host
        self.options = options or StoreOptions()
        self.insecure = host_matches(host, self.options.insecure_registries)
        # Attempts per request: the options' retries plus the first try, unless given.
        self._max_attempts = max(1, max_attempts if max_attempts is not None else self.options.registry_retries + 1)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._rng = random.Random()
        self._clock = clock
        #: (until, reason): the host could not be reached; requests fail fast until then.
        self._down: tuple[float, str] | None = None
        concurrency = max(1, int(self.options.registry_concurrency))
        self._semaphore = threading.BoundedSemaphore(concurrency)
        self._session = requests.Session()
        # netrc and REQUESTS_CA_BUNDLE from the environment would change which credentials
        # and CAs requests use; options say that instead. Proxies are taken from the
        # environment per URL (:meth:`_proxies`), as curl and skopeo take them.
        self._session.trust_env = False
        self._proxy_cache: dict[tuple[str, str], dict[str, str]] = {}
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=concurrency + 2, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        if self.insecure:  # only this host: redirects elsewhere (blob storage) stay verified
            unverified = _UnverifiedTLSAdapter(pool_connections=1, pool_maxsize=concurrency + 2, max_retries=0)
            for name in {host, ENDPOINT_ALIASES.get(host, host)}:
                self._session.mount(f"https://{name}/", unverified)
        self._session.headers.update({"User-Agent": "imagepush", "Accept-Encoding": "identity"})
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._credentials = credentials  # given: used for every repository (tests, embedders)
        self._auth_files: AuthFiles | None = None
        self._repository_credentials: dict[str, Credentials | None] = {}

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, insecure={self.insecure})"

    # -- plumbing -----------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def credentials(self, scopes: Sequence[str] = ()) -> Credentials | None:
        """Credentials for the repository ``scopes`` act on (or the host), from the auth files.

        The files are read once per client and each repository looked up once: auth.json
        may hold a different account per namespace of one registry.
        """
        if self._credentials is not None:
            return self._credentials
        repository = scope_repository(scopes)
        with self._lock:
            if repository not in self._repository_credentials:
                if self._auth_files is None:
                    self._auth_files = AuthFiles(self.options.authfile)
                self._repository_credentials[repository] = self._auth_files.find(self.host, repository)
            return self._repository_credentials[repository]

    def _verify(self, url: str) -> bool | str:
        """TLS verification for ``url``: off only for this host when it is insecure."""
        if self.insecure and urlsplit(url).netloc in (self.host, ENDPOINT_ALIASES.get(self.host)):
            return False
        return self.options.ca_bundle or True

    def base_url(self) -> str:
        """``https://host`` or (insecure hosts without TLS) ``http://host``; pings once.

        The ping (``GET /v2/``) also learns how the host authenticates, so the first
        real request already carries credentials instead of collecting a 401.
        """
        with self._lock:
            if self._base is not None:
                return self._base
        self._fail_if_down(self.host, "registry check")
        endpoint = ENDPOINT_ALIASES.get(self.host, self.host)
        base = f"https://{endpoint}"
        response: requests.Response | None = None
        if self.insecure:
            try:
                response = self._session.get(
                    f"{base}/v2/", verify=False, timeout=TIMEOUT, allow_redirects=False,
                    proxies=self._proxies(f"{base}/v2/"),
                )
                response.close()
            except (requests.exceptions.SSLError, requests.ConnectionError):
                base = f"http://{endpoint}"
                response = None
                log.debug("%s does not speak TLS; using plain HTTP (insecure registry)", self.host)
        if response is None:
            url = f"{base}/v2/"
            response = self._retrying("GET", url, where=self.host, what="registry check", stream=False)
        if response.status_code == 401:
            self._learn_challenge(response)
        elif response.status_code == 404:
            raise RegistryError(f"{self.host}: not a registry (GET /v2/ answered 404)", status=404)
        with self._lock:
            if self._base is None:
                self._base = base
            return self._base

    def url(self, path_or_url: str) -> str:
        """An absolute URL: registry paths are joined to the base, absolute URLs kept."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return urljoin(self.base_url() + "/", path_or_url.lstrip("/"))

    def _unreachable(self, url: str, where: str, what: str, exc: BaseException, attempts: int) -> RegistryUnavailable:
        """The final error for a host that never answered.

        When that host is this registry (not a token server or a blob store it redirects
        to), its other requests fail at once for :data:`HOST_DOWN_SECONDS`.
        """
        host = urlsplit(url).netloc
        own = host == ENDPOINT_ALIASES.get(self.host, self.host)
        reason = f"{self.host if own else host} ({_exc_name(exc)}) after {attempts} attempts"
        if own:
            with self._lock:
                self._down = (self._clock() + HOST_DOWN_SECONDS, reason)
        return RegistryUnavailable(f"{where}: {what} failed: cannot reach {reason}")

    def _fail_if_down(self, where: str, what: str) -> None:
        """Fail at once while the host is known to be unreachable (see HOST_DOWN_SECONDS)."""
        with self._lock:
            down = self._down
            if down is not None and self._clock() >= down[0]:
                self._down = down = None  # time to try again
        if down is not None:
            raise RegistryUnavailable(f"{where}: {what} not attempted: cannot reach {down[1]}")

    def _backoff(self, attempt: int, response: requests.Response | None) -> float:
        delay = min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1)))
        delay *= 0.5 + self._rng.random() / 2  # jitter: spread retries of parallel workers
        if response is not None:
            wanted = retry_after_seconds(response.headers.get("Retry-After"))
            if wanted is not None:
                delay = max(delay, min(wanted, RETRY_AFTER_MAX))
        return delay

    def _send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Any,
        params: Any,
        *,
        stream: bool,
        follow_redirects: bool = False,
    ) -> requests.Response:
        """One exchange (plus redirects when asked), never retried here.

        Redirects are followed by hand so that ``Authorization`` is dropped whenever
        the target is another host (blob GETs are redirected to object storage).
        """
        current_headers = dict(headers)
        current_url, current_params = url, params
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send_once(method, current_url, current_headers, body, current_params, stream)
            location = response.headers.get("Location")
            if not (follow_redirects and response.status_code in REDIRECT_STATUSES and location):
                return response
            response.close()
            target = urljoin(response.url, location)
            if urlsplit(target).netloc != urlsplit(current_url).netloc or (
                urlsplit(target).scheme != urlsplit(current_url).scheme
            ):
                current_headers.pop("Authorization", None)
            log.debug("following redirect to %s", urlsplit(target).netloc)
            current_url, current_params = target, None
        raise RegistryError(f"{self.host}: too many redirects for {urlsplit(url).path}")

    def _send_once(
        self, method: str, url: str, headers: Mapping[str, str], body: Any, params: Any, stream: bool
    ) -> requests.Response:
        """One request straight through the connection pool's adapter.

        ``Session.request`` merges environment settings, cookies and hooks on every call;
        registries use none of them (``trust_env`` is off; proxies are looked up once per
        host), and skipping that work halves the client's CPU per request — thousands
        of requests in a sync of small images.
        """
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=method, url=url, headers={**self._session.headers, **headers}, data=body, params=params
        )
        adapter = self._session.get_adapter(url)
        response = adapter.send(
            prepared, stream=stream, timeout=TIMEOUT, verify=self._verify(url), proxies=self._proxies(url)
        )
        if not stream:
            response.content  # read the body now, as Session.send does, so the connection is returned
        return response

    def _proxies(self, url: str) -> dict[str, str]:
        """The environment's proxy for ``url`` (honouring ``NO_PROXY``), looked up once per host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._proxy_cache.get(key)
        if found is None:
            found = self._proxy_cache[key] = requests.utils.get_environ_proxies(url)
        return found

    def _retrying(
        self,
        method: str,
        url: str,
        *,
        where: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        params: Any = None,
        stream: bool = True,
    ) -> requests.Response:
        """Send until the answer is not transient or attempts run out (no auth: pings, tokens)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._send_raw(method, url, dict(headers or {}), body, params, stream=stream)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self._max_attempts:
                    raise self._unreachable(url, where, what, exc, attempt) from None
                delay = self._backoff(attempt, None)
                log.info("%s: %s: %s; retrying in %.1fs", where, what, _exc_name(exc), delay)
                self._sleep(delay)
                continue
            if (response.status_code == 429 or response.status_code >= 500) and attempt < self._max_attempts:
                delay = self._backoff(attempt, response)
                log.info("%s: %s: HTTP %d; retrying in %.1fs", where, what, response.status_code, delay)
                response.close()
                self._sleep(delay)
                continue
            return response

    # -- authentication -----------------------------------------------------------

    def _learn_challenge(self, response: requests.Response) -> Challenge | None:
        """Remember the most capable challenge of a 401 (Bearer over Basic)."""
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        chosen = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if chosen is None:
            chosen = next((c for c in challenges if c.scheme == "basic"), None)
        if chosen is not None:
            with self._lock:
                self._challenge = Challenge(chosen.scheme, {k: v for k, v in chosen.params.items() if k != "error"})
        return chosen

    def _auth_header(self, scopes: Sequence[str], where: str) -> str | None:
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(scopes)
            if creds is None or not creds.has_password:
                return None
            return _basic(creds)
        return f"Bearer {self._token(challenge, scopes, where)}"

    def _token(self, challenge: Challenge, scopes: Sequence[str], where: str, *, refresh: bool = False) -> str:
        key = frozenset(scopes)
        with self._token_lock:
            cached = self._tokens.get(key)
            if cached is not None and not refresh and cached.expires_at - TOKEN_EXPIRY_MARGIN > time.monotonic():
                return cached.value
            token = self._fetch_token(challenge, sorted(key), where)
            self._tokens[key] = token
            return token.value

    def _fetch_token(self, challenge: Challenge, scopes: list[str], where: str) -> _Token:
        """Trade credentials (or nothing: anonymous) for a bearer token at the realm."""
        realm = challenge.params["realm"]
        service = challenge.params.get("service")
        creds = self.credentials(scopes)
        realm_host = urlsplit(realm).netloc or realm
        started = time.monotonic()
        response: requests.Response | None = None
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": CLIENT_ID,
                    "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            response = self._retrying("POST", realm, where=where, what="token request", body=form)
            if response.status_code in (404, 405):  # realm without OAuth2 support: plain GET below
                response.close()
                response = None
        if response is None:
            params: list[tuple[str, str]] = [("service", service)] if service else []
            params += [("scope", s) for s in scopes]
            headers: dict[str, str] = {}
            if creds is not None and creds.has_password:
                params.append(("account", creds.username))
                headers["Authorization"] = _basic(creds)
            response = self._retrying("GET", realm, where=where, what="token request", headers=headers,
                                      params=params)
        try:
            body = _read_capped(response, TOKEN_RESPONSE_LIMIT)
        finally:
            response.close()
        if response.status_code in (401, 403):
            code, message = registry_error_detail(body)
            detail = describe(response.status_code, code or "UNAUTHORIZED", message)
            who = "authentication failed" if creds is not None else "anonymous access refused"
            raise AuthenticationError(
                f"{where}: {who} at token server {realm_host} ({detail})", status=response.status_code, code=code
            )
        if response.status_code != 200:
            code, message = registry_error_detail(body)
            raise RegistryError(
                f"{where}: token server {realm_host} answered {describe(response.status_code, code, message, body)}",
                status=response.status_code, code=code,
            )
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        value = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{where}: token server {realm_host} answered without a token")
        try:
            lifetime = int(doc.get("expires_in") or MIN_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = MIN_TOKEN_LIFETIME
        lifetime = max(MIN_TOKEN_LIFETIME, lifetime)
        log.debug("%s: got a token for %s (valid %ds)", where, " ".join(scopes) or "no scope", lifetime)
        return _Token(value, started + lifetime)

    def _authentication_failed(self, body: bytes, where: str, scopes: Sequence[str]) -> AuthenticationError:
        code, message = registry_error_detail(body)
        code = code or "UNAUTHORIZED"
        creds = self.credentials(scopes)
        if creds is None:
            return AuthenticationError(
                f"{where}: authentication required ({code}); no credentials for {self.host} in the auth files",
                status=401, code=code,
            )
        return AuthenticationError(
            f"{where}: authentication failed ({code}) with the credentials from {creds.origin}",
            status=401, code=code,
        )

    # -- requests -----------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Sequence[str],
        where: str,
        what: str,
        ok: Collection[int] = (200,),
        headers: Mapping[str, str] | None = None,
        body: bytes | Mapping[str, str] | None = None,
        params: Any = None,
        follow_redirects: bool = False,
        limit: int = 4 << 20,
        attempts: int | None = None,
    ) -> Reply:
        """A request with a replayable body; the response body is read completely.

        Statuses in ``ok`` are returned; anything else becomes a :class:`RegistryError`
        subclass. Use :meth:`open` for large responses. ``attempts`` lowers the retry
        budget for requests whose server errors are more likely refusals than hiccups.
        """
        streamed = self._perform(
            method, path_or_url, scopes=scopes, where=where, what=what, ok=ok, headers=headers,
            body=body, params=params, follow_redirects=follow_redirects, replayable=True,
            attempts=attempts,
        )
        try:
            return streamed.reply(limit)
        finally:
            streamed.close()

    def open(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Sequence[str],
        where: str,
        what: str,
        ok: Collection[int] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        follow_redirects: bool = False,
    ) -> StreamedResponse:
        """A request whose response body is streamed; the caller must close it."""
        return self._perform(
            method, path_or_url, scopes=scopes, where=where, what=what, ok=ok, headers=headers,
            body=None, params=params, follow_redirects=follow_redirects, replayable=True,
        )

    def send_stream(
        self,
        method: str,
        path_or_url: str,
        body: Iterable[bytes],
        *,
        scopes: Sequence[str],
        where: str,
        what: str,
        ok: Collection[int],
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send a streamed body once; any transient failure is a :class:`RetriableUploadError`.

        Authentication is settled before the body starts flowing (the caller made an
        authenticated request to this repository just before), so a 401 here means the
        token went stale mid-upload, and restarting the upload fixes it.
        """
        streamed = self._perform(
            method, path_or_url, scopes=scopes, where=where, what=what, ok=ok, headers=headers,
            body=body, params=None, follow_redirects=False, replayable=False,
        )
        try:
            return streamed.reply(ERROR_BODY_LIMIT)
        finally:
            streamed.close()

    def _perform(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Sequence[str],
        where: str,
        what: str,
        ok: Collection[int],
        headers: Mapping[str, str] | None,
        body: Any,
        params: Any,
        follow_redirects: bool,
        replayable: bool,
        attempts: int | None = None,
    ) -> StreamedResponse:
        max_attempts = min(attempts or self._max_attempts, self._max_attempts)
        self._fail_if_down(where, what)
        url = self.url(path_or_url)
        scopes = list(scopes)
        attempt = 0
        authenticated_retry = False
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            auth = self._auth_header(scopes, where)
            if auth:
                request_headers["Authorization"] = auth
            self._semaphore.acquire()
            lease = _Lease(self._semaphore)
            try:
                response = self._send_raw(
                    method, url, request_headers, body, params, stream=True, follow_redirects=follow_redirects
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                lease.release()
                if not replayable:
                    raise RetriableUploadError(
                        f"{where}: {what} interrupted ({_exc_name(exc)}); the upload must start again"
                    ) from None
                if attempt >= max_attempts:
                    raise self._unreachable(url, where, what, exc, attempt) from None
                delay = self._backoff(attempt, None)
                log.info("%s: %s: %s; retrying in %.1fs", where, what, _exc_name(exc), delay)
                self._sleep(delay)
                continue
            except BaseException:
                lease.release()
                raise
            status = response.status_code
            if status in ok:
                return StreamedResponse(response, lease, where)
            try:
                error_body = _read_capped(response, ERROR_BODY_LIMIT)
            finally:
                response.close()
                lease.release()
            if status == 401:
                if not replayable:
                    raise RetriableUploadError(
                        f"{where}: {what}: the registry asked to authenticate again; the upload must start again",
                        status=401,
                    )
                if authenticated_retry:
                    raise self._authentication_failed(error_body, where, scopes)
                authenticated_retry = True
                scopes = self._prepare_auth(response, scopes, error_body, where)
                continue
            transient = status == 429 or status >= 500
            if transient and not replayable:
                code, message = registry_error_detail(error_body)
                raise RetriableUploadError(
                    f"{where}: {what} failed ({describe(status, code, message, error_body)}); the upload must start again",
                    status=status, code=code,
                )
            if transient and attempt < max_attempts:
                delay = self._backoff(attempt, response)
                log.info("%s: %s: HTTP %d; retrying in %.1fs", where, what, status, delay)
                self._sleep(delay)
                continue
            raise self.error_for(status, error_body, where, what)

    def _prepare_auth(self, response: requests.Response, scopes: list[str], body: bytes, where: str) -> list[str]:
        """After a 401: pick the challenge, and make sure the next attempt can succeed."""
        challenge = self._learn_challenge(response)
        if challenge is None:
            code, message = registry_error_detail(body)
            raise AuthenticationError(
                f"{where}: authentication required with an unsupported scheme "
                f"({describe(401, code or 'UNAUTHORIZED', message)})",
                status=401, code=code,
            )
        if challenge.scheme == "basic":
            creds = self.credentials(scopes)
            if creds is None or not creds.has_password:
                raise self._authentication_failed(body, where, scopes)
            return scopes
        wider = sorted(set(scopes) | set(challenge.scopes))
        # A cached token was refused (expired early, or too narrow): fetch a fresh one.
        self._token(Challenge(challenge.scheme, challenge.params), wider, where, refresh=True)
        return wider

    def error_for(self, status: int, body: bytes, where: str, what: str) -> RegistryError:
        """The exception for a final non-success answer, with the registry's code."""
        code, message = registry_error_detail(body)
        detail = describe(status, code, message, body)
        info: dict[str, Any] = {"status": status, "code": code, "detail": detail}
        if status == 401:
            return AuthenticationError(f"{where}: {what}: authentication failed ({detail})", **info)
        if status == 403:
            return AccessDenied(f"{where}: {what}: access denied ({detail})", **info)
        if status == 404:
            return RegistryNotFound(f"{where}: {what}: not found ({detail})", **info)
        if status == 429 or status >= 500:
            return RegistryUnavailable(f"{where}: {what} failed after {self._max_attempts} attempts ({detail})", **info)
        return RegistryError(f"{where}: {what} failed ({detail})", **info)


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _read_capped(response: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body; errors while reading give what was read."""
    chunks, total = [], 0
    try:
        while total < limit:
            chunk = response.raw.read(min(1 << 16, limit - total), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except Exception:  # an error body is best effort; urllib3 protocol errors included
        pass
    return b"".join(chunks)


def _exc_name(exc: BaseException) -> str:
    """A short, secret-free description of a transport exception.

    requests' messages embed the full URL (never credentials here, but long and noisy);
    the innermost cause names the actual problem (refused, reset, timed out).
    """
    inner: BaseException = exc
    for _ in range(10):  # the chain is short; the bound only guards against odd exceptions
        if inner.__context__ is None:
            break
        inner = inner.__context__
    name = type(exc).__name__
    reason = type(inner).__name__
    return name if reason == name else f"{name}: {reason}"


class ClientPool:
    """One :class:`RegistryClient` per registry host for all the stores of one owner.

    Stores are per repository, but connections, tokens, the scheme probe and the
    concurrency bound belong to the host: sharing the client makes a sync of thousands
    of repositories pay for them once per worker instead of once per repository.
    """

    def __init__(self, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, host: str) -> RegistryClient:
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                client = self._clients[host] = RegistryClient(host, self.options)
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
