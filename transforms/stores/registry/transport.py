"""The wire to one registry host: scheme, the one retry loop, redirects, limits, proxies.

* **Scheme.** HTTPS with certificate verification (``ca_bundle`` adds trusted CAs).
  A host listed in ``insecure_registries`` is tried over HTTPS *without* verification
  first and over plain HTTP only if TLS cannot be spoken at all, as docker does.
* **Retries.** Every request goes through :meth:`Transport.send`, whose loop asks
  :func:`is_transient` of each outcome: connection errors, timeouts, 429 and 5xx are
  tried again with exponential backoff and jitter, honouring ``Retry-After``,
  ``registry_retries`` times (``--retry-times``). A request whose body is a *stream*
  cannot be replayed; it fails with :class:`RetriableUploadError` so the caller restarts
  the whole upload from a fresh read of the source (the copy engine does, within the
  same budget). Every retry is counted (:func:`~imagepush.transforms.stores.base.note_retry`)
  for the audit's ``retries`` column. A host that could not be reached at
  all is not asked again for :data:`HOST_DOWN_SECONDS`: its other requests fail at once.
* **Misconfiguration fails fast.** A TLS failure is no hiccup: it fails at once, and a
  registry that answers TLS with plain HTTP says to use ``--insecure-registry``, for
  the rest of the run. A name that does not resolve, or a refused connection, to a
  registry never reached in this process fails at once too.
* **Outages.** A registry that answered earlier in this process and then stops answering
  is retried with backoff for up to ``outage_grace`` seconds (``--outage-grace``), so a
  restart does not fail the images in flight; only then is it marked down.
* **Redirects** are followed by hand, so ``Authorization`` is dropped whenever the target
  is another host (blob GETs are redirected to object storage).
* **Proxies.** ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either
  case) choose a proxy per scheme and host as curl and skopeo do, for registries, token
  servers and blob storage alike; the rest of the environment (netrc,
  ``REQUESTS_CA_BUNDLE``) is ignored, since options say that instead. The wire itself
  (urllib3's pools, TLS contexts, proxies, body framing) is
  :mod:`~imagepush.transforms.stores.registry.wire`.
* **Limits.** One :class:`~imagepush.transforms.stores.registry.limiter.RequestLimiter`
  per transport: concurrent requests adapt below ``registry_concurrency`` to the host's
  429 and 503 answers, ``Retry-After`` pauses every request to the host, and
  ``registry_rps`` caps the rate; a streamed response holds its slot until closed.

urllib3's ``Retry`` is not used: it cannot mark a host down for the requests that come
after, and would replay a streamed upload body it has already consumed.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import ssl
import threading
import time
from datetime import datetime, timezone
import socket
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, PoolError, ProtocolError, ProxyError, SSLError
from urllib3.exceptions import TimeoutError as UrllibTimeout

from imagepush.transforms import backoff
from imagepush.transforms.backoff import backoff_delay
from imagepush.transforms.stores.base import note_retry
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.errors import (
    RegistryError,
    RegistryMisconfigured,
    RegistryUnavailable,
    RetriableUploadError,
)
from imagepush.transforms.stores.registry.limiter import OVERLOAD_STATUSES, Level, RequestLimiter, Slot
from imagepush.transforms.stores.registry.streams import Lease, Reply, StreamedResponse
from imagepush.transforms.stores.registry.wire import Exchange, Wire, outgoing

log = logging.getLogger(__name__)
#: One line per registry answer (method, URL, status), for ``--debug`` only: ``--verbose``
#: leaves it off. Headers are never traced, so no Authorization value can reach a log.
trace = logging.getLogger("imagepush.http")
#: Query parameters whose values say what a request is for and hold nothing secret.
TRACED_PARAMETERS = frozenset({"service", "scope", "n", "last", "digest", "mount", "from", "account"})


def redacted_url(url: str) -> str:
    """``url`` without what may be secret: user info, and query values (pre-signed signatures, tokens)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}={value if name in TRACED_PARAMETERS else '***'}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

#: First backoff delay and cap, in seconds; the delay doubles per attempt.
BACKOFF_BASE = backoff.BASE
BACKOFF_MAX = backoff.MAXIMUM
#: A ``Retry-After`` longer than this is clipped: a worker must not sleep for hours.
RETRY_AFTER_MAX = 60.0
#: Connect and read timeouts. Reads are long because a registry may hash a large blob
#: before it answers the final PUT of an upload.
TIMEOUT = urllib3.Timeout(connect=30.0, read=300.0)
MAX_REDIRECTS = 5
#: After a request has used up its attempts without reaching the host, further requests
#: to it fail at once for this long: with a registry down, thousands of images must not
#: each wait out a full backoff before failing.
HOST_DOWN_SECONDS = 30.0
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Docker Hub is named ``docker.io`` in references but served from another host.
ENDPOINT_ALIASES = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


#: urllib3's exceptions for a request that got no answer: the connection could not be
#: made (refused, unresolved, timed out, the proxy failed), broke (reset, closed early:
#: urllib3 wraps the socket's ``OSError`` in a ``ProtocolError``) or timed out waiting.
CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    NewConnectionError, UrllibTimeout, ProtocolError, ProxyError, PoolError,
)


def is_transient(outcome: BaseException | int) -> bool:
    """Whether the same request may succeed later: an exception raised sending it, or a status.

    The connection failed or timed out, or the registry is busy (429) or failing (5xx).
    Anything else is the registry's considered answer, and asking again changes nothing.
    """
    if isinstance(outcome, BaseException):
        if isinstance(outcome, (SSLError, ssl.SSLError)):
            return False  # a certificate or protocol mismatch: the same handshake fails again
        return isinstance(outcome, CONNECTION_FAILURES)
    return outcome == 429 or outcome >= 500


class Authorization(Protocol):
    """What :meth:`Transport.send` needs of authentication, which it knows nothing else about."""

    def header(self) -> str | None:
        """The ``Authorization`` value for the next attempt (None: send none)."""

    def renew(self, headers: Mapping[str, str], body: bytes) -> None:
        """Act on a 401 (its headers and body) so that the next attempt can succeed, or raise."""


def host_matches(host: str, entries: Iterable[str]) -> bool:
    """Whether ``host`` (``name[:port]``) is listed; an entry without a port covers every port."""
    host = host.lower()
    name = host.rsplit(":", 1)[0] if re.search(r":\d+$", host) else host
    return any(entry.strip().lower() in (host, name) for entry in entries if entry.strip())


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


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description of a transport exception.

    urllib3's messages embed the host and the connection object (long and noisy); the
    innermost cause names the actual problem (refused, reset, timed out).
    """
    inner: BaseException = exc
    for _ in range(10):  # the chain is short; the bound only guards against odd exceptions
        wrapped = [inner.__cause__, inner.__context__, getattr(inner, "reason", None), *inner.args]
        nested = next((e for e in wrapped if isinstance(e, BaseException)), None)
        if nested is None:
            break
        inner = nested
    name = type(exc).__name__
    reason = type(inner).__name__
    return name if reason == name else f"{name}: {reason}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: urllib3 nests the socket's error in ``reason``, ``args`` and the chain."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < 20:  # the chain is short; the bound only guards against odd exceptions
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(e for e in nested if isinstance(e, BaseException))


#: What OpenSSL says when the other side answers a ClientHello in plain text (an HTTP
#: 400): "wrong version number" up to OpenSSL 3.1, "record layer failure" and "packet
#: length too long" in later or other builds.
PLAIN_HTTP_SIGNS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")


def tls_failure_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason for a failed TLS exchange (``CERTIFICATE_VERIFY_FAILED``, …), or None if TLS did not fail."""
    if not isinstance(exc, SSLError):
        return None
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return str(cause.reason)
    text = str(exc).upper().replace(" ", "_")
    return next((sign for sign in PLAIN_HTTP_SIGNS if sign in text), "SSLError")


def never_there(exc: BaseException) -> str | None:
    """Why a connection was never made, when asking again cannot help a host never reached.

    "the name does not resolve" (DNS) or "connection refused": a misspelt host or port,
    not a hiccup. None for anything else (timeouts, resets), which stays transient.
    """
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror) or type(cause).__name__ == "NameResolutionError":
            return "the name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    return None


class Transport:
    """Requests to one registry host, and to the token servers and storage it sends us to.

    Thread-safe: Beam runs several bundles per worker, and a blob fan-out uploads from
    worker threads. The connection pools and the limiter are per transport; nothing is
    module-global. ``sleep``, ``clock`` and the backoff parameters exist so tests can
    check retries and the host-down mark without waiting; ``exchange`` replaces the
    wire (:class:`~imagepush.transforms.stores.registry.wire.Wire`), so a test can
    script answers and see each request as it would go out.
    """

    def __init__(
        self,
        host: str,
        options: StoreOptions,
        *,
        max_attempts: int | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        exchange: Exchange | None = None,
    ) -> None:
        self.host = host
        self.options = options
        self.endpoint = ENDPOINT_ALIASES.get(host, host)
        self.insecure = host_matches(host, options.insecure_registries)
        #: Attempts per request: the options' retries plus the first try, unless given.
        self.max_attempts = max(1, max_attempts if max_attempts is not None else options.registry_retries + 1)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._rng = random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        #: (until, reason): the host could not be reached; requests fail fast until then.
        self._down: tuple[float, str] | None = None
        #: The message of a TLS failure with this host: its every request fails with it, for good.
        self._misconfigured: str | None = None
        #: Whether this host has answered in this process; only then is an outage ridden out.
        self._answered = False
        #: When this host (after answering) stopped answering; None while it answers.
        self._outage_since: float | None = None
        self._outage_grace = max(0.0, float(options.outage_grace))
        concurrency = max(1, int(options.registry_concurrency))
        self._limiter = RequestLimiter(
            host, concurrency, adaptive=options.adaptive_concurrency, rate=options.registry_rps,
            clock=clock, sleep=sleep,
        )
        # Unverified TLS for this host only: redirects elsewhere (blob storage) stay verified.
        self._wire = Wire(
            insecure_hosts={host, self.endpoint} if self.insecure else (), ca_bundle=options.ca_bundle,
            maxsize=concurrency + 2, timeout=TIMEOUT,
        )
        self._exchange: Exchange = exchange or self._wire

    def close(self) -> None:
        self._wire.close()

    def ping(self) -> tuple[str, Reply]:
        """Choose the scheme and ask ``GET /v2/``: the base URL and the answer.

        The answer says how the host authenticates (a 401's challenge) or that it is no
        registry (404); the caller remembers both, so this runs once per host.
        """
        self.fail_if_down(self.host, "registry check")
        base = f"https://{self.endpoint}"
        if self.insecure:
            # One try, no retries: failing is the answer (this host speaks no TLS).
            try:
                response, url = self._send_raw("GET", f"{base}/v2/", {}, None, None)
                self._answer_seen()
                return base, StreamedResponse(response, Lease(None), self.host, url).drain()
            except (SSLError, NewConnectionError, ConnectTimeoutError, ProtocolError, ProxyError, PoolError):
                # Not a read timeout: a host that took the handshake and then stayed silent speaks TLS.
                base = f"http://{self.endpoint}"
                log.debug("%s does not speak TLS; using plain HTTP (insecure registry)", self.host)
        streamed = self.send("GET", f"{base}/v2/", where=self.host, what="registry check", limited=False)
        return base, streamed.drain()

    def fail_if_down(self, where: str, what: str) -> None:
        """Fail at once while the host is known to be unreachable (see HOST_DOWN_SECONDS) or misconfigured."""
        if self._misconfigured is not None:
            raise RegistryMisconfigured(self._misconfigured)
        with self._lock:
            down = self._down
            if down is not None and self._clock() >= down[0]:
                self._down = down = None  # time to try again
        if down is not None:
            raise RegistryUnavailable(f"{where}: {what} not attempted: cannot reach {down[1]}")

    def send(
        self,
        method: str,
        url: str,
        *,
        where: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        params: Any = None,
        follow_redirects: bool = False,
        replayable: bool = True,
        attempts: int | None = None,
        limited: bool = True,
        authorization: Authorization | None = None,
    ) -> StreamedResponse:
        """Send until the outcome is not transient or the attempts run out; the caller closes the answer.

        The answer is returned whatever its status: what a status means is the caller's
        business. ``replayable=False`` (a streamed body) sends exactly once, and a
        transient exception then is a :class:`RetriableUploadError`. ``attempts`` lowers
        the budget for requests whose server errors are more likely refusals than
        hiccups. ``authorization`` is asked for a header before every attempt and, once
        per request, to act on a 401. ``limited=False`` keeps the request out of the
        concurrency limit (the ping and token requests, made while a slot may be held).
        """
        budget = min(attempts or self.max_attempts, self.max_attempts)
        attempt, renewed = 0, False
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            value = authorization.header() if authorization is not None else None
            if value:
                request_headers["Authorization"] = value
            slot = self._limiter.acquire() if limited else None
            lease = Lease(slot)
            visited: list[str] = []
            try:
                response, final_url = self._send_raw(
                    method, url, request_headers, body, params, follow_redirects, visited
                )
            except BaseException as exc:
                lease.release()
                # The host that failed: after a redirect, blob storage rather than this registry.
                failed = visited[-1] if visited else url
                if tls_failure_reason(exc) is not None:
                    raise self._tls_failed(failed, where, what, exc) from None
                if not is_transient(exc):
                    raise
                own = urlsplit(failed).netloc == self.endpoint
                why = never_there(exc) if own and not self._answered else None
                if why is not None:
                    raise self._unreachable(failed, where, what, exc, attempt, why) from None
                if not replayable:
                    raise RetriableUploadError(
                        f"{where}: {what} interrupted ({describe_exception(exc)}); the upload must start again"
                    ) from None
                remaining = self._outage_remaining() if own and self._answered else None
                if remaining is not None:
                    if remaining <= 0:
                        raise self._unreachable(failed, where, what, exc, attempt) from None
                    self._pause(attempt, None, where, what, f"{describe_exception(exc)}, outage", cap=remaining)
                    continue
                if attempt >= budget:
                    raise self._unreachable(failed, where, what, exc, attempt) from None
                self._pause(attempt, None, where, what, describe_exception(exc))
                continue
            if urlsplit(url).netloc == self.endpoint:
                self._answer_seen()
            streamed = StreamedResponse(response, lease, where, final_url)
            status = response.status
            if trace.isEnabledFor(logging.DEBUG):
                trace.debug("%s %s -> %d", method, redacted_url(url), status)
            if slot is not None:
                self._tell_limiter(slot, streamed)
            if status == 401 and authorization is not None and replayable and not renewed:
                challenge = streamed.drain()
                authorization.renew(challenge.headers, challenge.content)
                renewed = True
                continue
            if is_transient(status) and replayable and attempt < budget:
                streamed.drain()
                self._pause(attempt, streamed, where, what, f"HTTP {status}")
                continue
            return streamed

    @property
    def level(self) -> Level:
        """How many requests this host gets at once now, and at most (for progress lines)."""
        return self._limiter.level

    def _tell_limiter(self, slot: Slot, response: StreamedResponse) -> None:
        """An overload answer (with its ``Retry-After``) lowers the host's limit; any other answer counts towards raising it."""
        status = response.status_code
        if status in OVERLOAD_STATUSES:
            wanted = retry_after_seconds(response.headers.get("Retry-After"))
            self._limiter.overloaded(slot, min(wanted, RETRY_AFTER_MAX) if wanted is not None else None)
        elif status < 500:
            self._limiter.succeeded(slot)

    def _answer_seen(self) -> None:
        """This host answered: it is known to exist, and any outage is over."""
        with self._lock:
            if self._outage_since is not None:
                log.info("%s answers again after %.1fs", self.host, self._clock() - self._outage_since)
            self._answered, self._outage_since = True, None

    def _outage_remaining(self) -> float | None:
        """Seconds of ``outage_grace`` left for a host that answered before (None: no grace configured)."""
        if self._outage_grace <= 0:
            return None
        with self._lock:
            now = self._clock()
            if self._outage_since is None:
                self._outage_since = now
                log.warning("%s stopped answering; waiting up to %.0fs for it", self.host, self._outage_grace)
            return self._outage_grace - (now - self._outage_since)

    def pause(self, attempt: int, where: str, what: str, reason: str) -> None:
        """Wait (and count a retry) before asking again after a failure seen above the transport."""
        self._pause(attempt, None, where, what, reason)

    def _pause(
        self, attempt: int, response: StreamedResponse | None, where: str, what: str, reason: str,
        cap: float | None = None,
    ) -> None:
        """Wait before the next attempt: exponential backoff with jitter, at least ``Retry-After``.

        ``cap`` bounds the wait (what is left of an outage's grace), so a host back in
        time is asked again before the grace ends.
        """
        wanted = retry_after_seconds(response.headers.get("Retry-After")) if response is not None else None
        delay = backoff_delay(
            attempt, self._rng, base=self._backoff_base, maximum=self._backoff_max, cap=cap,
            at_least=min(wanted, RETRY_AFTER_MAX) if wanted is not None else None,
        )
        log.info("%s: %s: %s; retrying in %.1fs", where, what, reason, delay)
        note_retry()
        self._sleep(delay)

    def _unreachable(
        self, url: str, where: str, what: str, exc: BaseException, attempts: int, why: str | None = None
    ) -> RegistryUnavailable:
        """The final error for a host that did not answer (``why``: it never could, see :func:`never_there`).

        When that host is this registry (not a token server or a blob store it redirects
        to), its other requests fail at once for :data:`HOST_DOWN_SECONDS`.
        """
        host = urlsplit(url).netloc
        own = host == self.endpoint
        name = self.host if own else host
        if why is not None:
            reason = f"{name} ({why})"
        else:
            reason = f"{name} ({describe_exception(exc)}) after {attempts} attempt{'' if attempts == 1 else 's'}"
        if own:
            with self._lock:
                self._down = (self._clock() + HOST_DOWN_SECONDS, reason)
        return RegistryUnavailable(f"{where}: {what} failed: cannot reach {reason}")

    def _tls_failed(self, url: str, where: str, what: str, exc: BaseException) -> RegistryMisconfigured:
        """The error for a failed TLS exchange, which no retry mends.

        For this registry it holds for the rest of the run (every later request fails at
        once with it), and it names the flag that fixes it: a host that answers TLS with
        plain HTTP needs ``--insecure-registry``; one whose certificate is not trusted
        needs ``--ca-bundle`` (or ``--insecure-registry``).
        """
        host = urlsplit(url).netloc
        reason = tls_failure_reason(exc) or "SSLError"
        if host != self.endpoint:
            return RegistryMisconfigured(f"{where}: {what} failed: TLS with {host} failed ({reason})")
        if any(sign in reason.upper() for sign in PLAIN_HTTP_SIGNS):
            advice = f"{self.host} speaks plain HTTP, not TLS: use --insecure-registry {self.host}"
        else:
            advice = f"TLS with {self.host} failed ({reason}): trust its CA with --ca-bundle, " \
                     f"or use --insecure-registry {self.host}"
        # One problem of the host, not of the repository asking: said the same way every
        # time, so that the summary says it once for all the images it failed.
        with self._lock:
            self._misconfigured = advice
        return RegistryMisconfigured(advice)

    def _send_raw(
        self, method: str, url: str, headers: Mapping[str, str], body: Any, params: Any,
        follow_redirects: bool = False, visited: list[str] | None = None,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """One exchange (plus redirects when asked), unread and never retried here; the answer and its URL.

        Each URL is appended to ``visited`` before it is asked, so that a failure is
        blamed on the host that failed.
        """
        current_headers = dict(headers)
        current_url, current_params = url, params
        for _ in range(MAX_REDIRECTS + 1):
            request = outgoing(method, current_url, current_headers, body, current_params)
            if visited is not None:
                visited.append(request.url)
            response = self._exchange(request)
            location = response.headers.get("Location")
            if not (follow_redirects and response.status in REDIRECT_STATUSES and location):
                return response, request.url
            response.close()
            response.release_conn()
            target = urljoin(request.url, location)
            if urlsplit(target).netloc != urlsplit(current_url).netloc or (
                urlsplit(target).scheme != urlsplit(current_url).scheme
            ):
                current_headers.pop("Authorization", None)
            log.debug("following redirect to %s", urlsplit(target).netloc)
            current_url, current_params = target, None
        raise RegistryError(f"{self.host}: too many redirects for {urlsplit(url).path}")
