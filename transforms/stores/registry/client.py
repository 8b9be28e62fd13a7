"""Requests as the stores make them: one host's transport and authentication together.

A store asks for an operation's scopes and the statuses it accepts; the client sends the
request with the right credentials (renewing them once on a 401), and turns any other
answer into a :class:`~imagepush.transforms.stores.registry.errors.RegistryError` whose
message names the repository and the registry's error code.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence
from urllib.parse import urljoin

from imagepush.transforms.stores.base import StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.auth import Authenticator
from imagepush.transforms.stores.registry.authfile import Credentials
from imagepush.transforms.stores.registry.errors import (
    RegistryError,
    RegistryUnavailable,
    RetriableUploadError,
    describe,
    error_for,
    registry_error_detail,
)
from imagepush.transforms.stores.registry.limiter import Level
from imagepush.transforms.stores.registry.streams import ERROR_BODY_LIMIT, Reply, StreamedResponse
from imagepush.transforms.stores.registry.transport import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    RETRY_AFTER_MAX,
    Transport,
    is_transient,
    retry_after_seconds,
)


class RegistryClient:
    """Requests to one registry host on behalf of the stores of one owner.

    Thread-safe, like its transport and authenticator. ``sleep``, ``clock`` and the
    backoff parameters go to the transport so tests can check retries without waiting.
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
        # This host's own settings (a ``registries:`` entry) replace the run's here, once.
        self.options = (options or StoreOptions()).for_host(host)
        entry = self.options.host_entry(host)
        if credentials is None and entry is not None and (entry.username or entry.password):
            password = entry.password.value if entry.password is not None else ""
            credentials = Credentials(entry.username or "", password, origin=f"registries: {entry.host}")
        self.transport = Transport(
            host, self.options, max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max,
            sleep=sleep, clock=clock,
        )
        self.auth = Authenticator(host, self.transport, self.options, credentials)
        self._lock = threading.Lock()
        #: Held by the one thread pinging the host; the others wait for its answer.
        self._ping_lock = threading.Lock()
        self._base: str | None = None

    @property
    def insecure(self) -> bool:
        return self.transport.insecure

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, insecure={self.insecure})"

    def close(self) -> None:
        self.transport.close()

    def credentials(self, scopes: Sequence[str] = ()) -> Credentials | None:
        """The credentials a request with ``scopes`` would use (None: anonymous)."""
        return self.auth.credentials(scopes)

    def base_url(self) -> str:
        """``https://host`` or (insecure hosts without TLS) ``http://host``; pings once.

        The ping (``GET /v2/``) also learns how the host authenticates, so the first
        real request already carries credentials instead of collecting a 401. The first
        requests of a run come from many threads at once; one pings and the others wait
        for its answer rather than each asking the host again.
        """
        with self._lock:
            if self._base is not None:
                return self._base
        with self._ping_lock:
            with self._lock:
                if self._base is not None:
                    return self._base
            base, answer = self.transport.ping()
            if answer.status == 401:
                self.auth.learn(answer.headers)
            elif answer.status == 404:
                raise RegistryError(f"{self.host}: not a registry (GET /v2/ answered 404)", status=404)
            with self._lock:
                self._base = base
                return self._base

    def url(self, path_or_url: str) -> str:
        """An absolute URL: registry paths are joined to the base, absolute URLs kept."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        path = path_or_url.lstrip("/")
        if "./" in path or path.endswith("."):  # dot segments: resolved as a browser would
            return urljoin(self.base_url() + "/", path)
        return f"{self.base_url()}/{path}"  # the same URL, without urljoin's parsing per request

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
        budget = min(attempts or self.transport.max_attempts, self.transport.max_attempts)
        attempt = 0
        while True:
            attempt += 1
            with self._perform(
                method, path_or_url, scopes=scopes, where=where, what=what, ok=ok, headers=headers,
                body=body, params=params, follow_redirects=follow_redirects, replayable=True,
                attempts=attempts,
            ) as streamed:
                try:
                    return streamed.reply(limit)
                except RegistryUnavailable:
                    # The answer was cut mid-body (a reset): the request is replayable and
                    # its body small, so it is asked again like any transient failure.
                    if attempt >= budget:
                        raise
            self.transport.pause(attempt, where, what, "connection lost while reading the answer")

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
        with self._perform(
            method, path_or_url, scopes=scopes, where=where, what=what, ok=ok, headers=headers,
            body=body, params=None, follow_redirects=False, replayable=False,
        ) as streamed:
            return streamed.reply(ERROR_BODY_LIMIT)

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
        self.transport.fail_if_down(where, what)
        url = self.url(path_or_url)
        authorization = self.auth.for_request(scopes, where)
        streamed = self.transport.send(
            method, url, where=where, what=what, headers=headers, body=body, params=params,
            follow_redirects=follow_redirects, replayable=replayable, attempts=attempts, authorization=authorization,
        )
        status = streamed.status_code
        if status in ok:
            return streamed
        drained = streamed.drain()
        error_body = drained.content
        if status == 401:
            if not replayable:
                raise RetriableUploadError(
                    f"{where}: {what}: the registry asked to authenticate again; the upload must start again",
                    status=401,
                )
            raise self.auth.failed(error_body, where, authorization.scopes)  # renewed once already
        if is_transient(status) and not replayable:
            code, message = registry_error_detail(error_body)
            raise RetriableUploadError(
                f"{where}: {what} failed ({describe(status, code, message, error_body)}); the upload must start again",
                status=status, code=code,
                delay=min(retry_after_seconds(drained.headers.get("Retry-After")) or 0.0, RETRY_AFTER_MAX),
            )
        raise error_for(status, error_body, where, what, self.transport.max_attempts)


class ClientPool:
    """One :class:`RegistryClient` per registry host for all the stores of one owner.

    Stores are per repository, but connections, tokens, the scheme probe and the
    concurrency bound belong to the host: sharing the client makes a sync of thousands
    of repositories pay for them once per worker instead of once per repository.
    ``sleep`` goes to every client, so tests can share clients without waiting out backoff.
    """

    def __init__(self, options: StoreOptions | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options or StoreOptions()
        self._sleep = sleep
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, host: str) -> RegistryClient:
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                client = self._clients[host] = RegistryClient(host, self.options, sleep=self._sleep)
            return client

    def levels(self) -> dict[str, Level]:
        """Each opened host's request limit now and at most: a snapshot for progress lines."""
        with self._lock:
            clients = list(self._clients.values())
        return {client.host: client.transport.level for client in clients}

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
