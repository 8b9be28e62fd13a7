"""One HTTP exchange on the wire, through urllib3: pools, TLS, proxies and body framing.

urllib3 is used directly, not through requests: a sync of small images sends thousands
of requests, and requests' own layers (preparing a request, its adapter, building its
response) cost about as much CPU again as urllib3's. Nothing here retries or follows a
redirect (``retries=False``, ``redirect=False``); :class:`~imagepush.transforms.stores.
registry.transport.Transport` does both, and classifies urllib3's exceptions.

* **TLS** is verified against certifi's CAs plus ``ca_bundle``, from one context per
  wire (urllib3 would otherwise load the CA file again for every new connection). Only
  the hosts named insecure get an unverified context, so redirects elsewhere (blob
  storage) stay verified.
* **Proxies** come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``,
  ``ALL_PROXY``, ``NO_PROXY``, either case, as curl and skopeo read them), looked up once
  per scheme and host; ``NO_PROXY`` takes names, domain suffixes and, for IP
  addresses, CIDR ranges. Nothing else of the environment is read: no netrc, no
  ``REQUESTS_CA_BUNDLE``; options say that instead.
* **Bodies** go out as requests sent them: bytes and forms with ``Content-Length``, an
  iterable with ``Content-Length`` when its ``len()`` is known and non-zero and chunked
  otherwise (Distribution checks ``Content-Range`` only together with
  ``Content-Length``), and ``Content-Length: 0`` for a bodiless request other than
  GET and HEAD.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlencode, urlsplit

import certifi
import urllib3
from urllib3.exceptions import InsecureRequestWarning

from imagepush.transforms.stores.registry.errors import RegistryMisconfigured

#: Sent with every request unless the caller sets them. Bodies are never decoded:
#: blobs are content-addressed, and a transparently decompressed body fails its digest.
DEFAULT_HEADERS: Mapping[str, str] = {"User-Agent": "imagepush", "Accept-Encoding": "identity", "Accept": "*/*"}
#: Hosts (registries, token servers, blob stores) a proxy's manager keeps pools open for.
POOLS_PER_PROXY = 8
#: Methods that send no ``Content-Length: 0`` without a body (as requests did).
_BODILESS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Outgoing:
    """One request exactly as it goes on the wire: headers final, body framed."""

    method: str
    url: str
    headers: Mapping[str, str]
    #: bytes, an iterable of bytes (streamed), or None.
    body: Any = None


#: What sends one request and returns its answer unread (``preload_content=False``).
#: :class:`Wire` is the real one; a test passes its own to script the answers.
Exchange = Callable[[Outgoing], urllib3.BaseHTTPResponse]


def with_params(url: str, params: Any) -> str:
    """``url`` with query parameters (a mapping or pairs; None values left out) appended to its query."""
    if not params:
        return url
    items = params.items() if isinstance(params, Mapping) else params
    pairs = [
        (name, value)
        for name, values in items
        for value in (values if isinstance(values, (list, tuple)) else [values])
        if value is not None
    ]
    encoded = urlencode(pairs)
    if not encoded:
        return url
    base, _, fragment = url.partition("#")
    joined = f"{base}&{encoded}" if urlsplit(base).query else f"{base.rstrip('?')}?{encoded}"
    return f"{joined}#{fragment}" if fragment else joined


def outgoing(method: str, url: str, headers: Mapping[str, str], body: Any = None, params: Any = None) -> Outgoing:
    """The request on the wire: default headers under the caller's, the body framed as requests framed it."""
    given = {name.lower() for name in headers}
    final = {name: value for name, value in DEFAULT_HEADERS.items() if name.lower() not in given}
    final.update(headers)  # header names are case-insensitive: the caller's replace ours however spelt
    lowered = {name.lower() for name in final}
    framing = "content-length" in lowered or "transfer-encoding" in lowered
    if isinstance(body, Mapping):  # a form (OAuth2 token requests)
        body = urlencode(list(body.items())).encode("ascii")
        if "content-type" not in lowered:
            final["Content-Type"] = "application/x-www-form-urlencoded"
    elif isinstance(body, str):
        body = body.encode("utf-8")
    if not framing:
        if body is None:
            if method.upper() not in _BODILESS:
                final["Content-Length"] = "0"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            if len(body) or method.upper() not in _BODILESS:
                final["Content-Length"] = str(len(body))
        else:
            length = len(body) if hasattr(body, "__len__") else 0
            if length:
                final["Content-Length"] = str(length)
            else:
                final["Transfer-Encoding"] = "chunked"
    return Outgoing(method, with_params(url, params), final, body)


def _bypassed(host: str, netloc: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names the host: by domain suffix (the stdlib's rule) or, for an IP, by CIDR."""
    if urllib.request.proxy_bypass_environment(netloc, {"no": no_proxy}):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        entry = entry.strip()
        if "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def environment_proxy(scheme: str, netloc: str) -> str | None:
    """The environment's proxy URL for a request to ``scheme://netloc``, or None to go direct."""
    proxies = urllib.request.getproxies()
    host = urlsplit(f"//{netloc}").hostname or netloc
    no_proxy = proxies.get("no", "")
    if no_proxy and _bypassed(host, netloc, no_proxy):
        return None
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def verified_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying TLS context trusting certifi's CAs and those of ``ca_bundle`` (a PEM file or a folder)."""
    context = urllib3.util.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle:
        try:
            if os.path.isdir(ca_bundle):
                context.load_verify_locations(capath=ca_bundle)
            else:
                context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise RegistryMisconfigured(f"cannot load the CA bundle {ca_bundle} ({reason})") from None
    return context


def unverified_context() -> ssl.SSLContext:
    """TLS without verification, for the hosts the user named insecure."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


#: How a route's requests are sent: its own pool (asked with the path), or a proxy's
#: manager (asked with the absolute URL).
Route = tuple[urllib3.HTTPConnectionPool | urllib3.PoolManager, bool]


class Wire:
    """The connection pools of one transport; callable as its :data:`Exchange`.

    A route (scheme and host) is settled on its first request: its proxy and whether
    its TLS is verified. A route without a proxy has a connection pool of its own, asked
    directly (a pool manager would parse the URL and look the pool up again on every
    request); routes through a proxy share that proxy's manager. Thread-safe.
    """

    def __init__(
        self, *, insecure_hosts: Iterable[str], ca_bundle: str | None, maxsize: int, timeout: urllib3.Timeout
    ) -> None:
        self._insecure = frozenset(insecure_hosts)
        self._ca_bundle = ca_bundle
        self._maxsize = maxsize
        self._timeout = timeout
        self._lock = threading.Lock()
        #: (scheme, host) -> what sends its requests, and whether it takes the absolute URL.
        self._routes: dict[tuple[str, str], Route] = {}
        self._managers: dict[tuple[str, str], urllib3.PoolManager] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}

    def __call__(self, request: Outgoing) -> urllib3.BaseHTTPResponse:
        parts = urlsplit(request.url)
        sender, absolute = self._routes.get((parts.scheme, parts.netloc)) or self._route(parts.scheme, parts.netloc)
        if absolute:
            target = request.url
        else:
            target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
        return sender.urlopen(
            request.method, target, body=request.body, headers=request.headers, retries=False, redirect=False,
            assert_same_host=False, preload_content=False, decode_content=False, timeout=self._timeout,
        )

    def close(self) -> None:
        with self._lock:
            routes = list(self._routes.values())
            managers = list(self._managers.values())
            self._routes.clear()
            self._managers.clear()
        for sender, absolute in routes:
            if isinstance(sender, urllib3.HTTPConnectionPool):
                sender.close()
        for manager in managers:
            manager.clear()

    def _route(self, scheme: str, netloc: str) -> Route:
        with self._lock:
            route = self._routes.get((scheme, netloc))
            if route is None:
                proxy = environment_proxy(scheme, netloc)
                if scheme == "https" or (proxy or "").startswith("https:"):
                    tls = "unverified" if netloc in self._insecure else "verified"
                else:
                    tls = "none"
                if proxy is None:
                    route = (self._pool(scheme, netloc, tls), False)
                else:
                    manager = self._managers.get((proxy, tls))
                    if manager is None:
                        manager = self._managers[(proxy, tls)] = self._proxy_manager(proxy, tls)
                    route = (manager, True)
                self._routes[(scheme, netloc)] = route
            return route

    def _pool(self, scheme: str, netloc: str, tls: str) -> urllib3.HTTPConnectionPool:
        where = urllib3.util.parse_url(f"{scheme}://{netloc}")
        if scheme == "https":
            return urllib3.HTTPSConnectionPool(
                where.host, where.port, maxsize=self._maxsize, ssl_context=self._context(tls)
            )
        if scheme == "http":
            return urllib3.HTTPConnectionPool(where.host, where.port, maxsize=self._maxsize)
        raise urllib3.exceptions.URLSchemeUnknown(scheme)

    def _proxy_manager(self, proxy: str, tls: str) -> urllib3.PoolManager:
        settings: dict[str, Any] = {"num_pools": POOLS_PER_PROXY, "maxsize": self._maxsize}
        if tls != "none":
            settings["ssl_context"] = self._context(tls)
        parts = urlsplit(proxy)
        username, password = unquote(parts.username or ""), unquote(parts.password or "")
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never shown with its password
        if parts.scheme not in ("http", "https"):
            raise RegistryMisconfigured(f"the environment names a {parts.scheme} proxy ({bare}); "
                                        "only HTTP and HTTPS proxies are supported")
        if username or password:
            settings["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=f"{username}:{password}")
        return urllib3.ProxyManager(bare, **settings)

    def _context(self, tls: str) -> ssl.SSLContext:
        context = self._contexts.get(tls)
        if context is None:
            if tls == "verified":
                context = verified_context(self._ca_bundle)
            else:
                # The user named these hosts insecure on purpose; urllib3 would otherwise
                # print a multi-line warning per connection to them. Only unverified
                # requests raise it, and only these hosts make them.
                warnings.filterwarnings("ignore", category=InsecureRequestWarning)
                context = unverified_context()
            self._contexts[tls] = context
        return context
