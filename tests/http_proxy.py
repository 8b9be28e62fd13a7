"""A small forward HTTP proxy on loopback, for tests of proxy settings and of slow links.

It speaks the two things clients ask of a proxy: absolute-URI requests for plain HTTP
(forwarded one request per connection, the answer marked ``Connection: close``) and
``CONNECT`` tunnels for HTTPS. It can require ``Proxy-Authorization`` and can cap the
rate at which request bodies go upstream, so an upload can be caught half way. It
records each request's method and target so a test can see what went through it.

Given a :class:`FaultMix`, it also injects faults into plain-HTTP requests, as a flaky
registry or network would: 5xx and 429 (with ``Retry-After``) answers in place of the
upstream's, connections reset half way through a request or answer body, and slow
answers. Which request gets which fault is decided by a seeded random number per
request *kind* (method and path, upload session ids masked) and its count, not by
arrival order, so a run's faults do not depend on how its threads interleave.

Given a :class:`RateLimit`, it plays a rate-limited registry: plain-HTTP requests to
the limited host beyond so many in the last second are answered 429 with
``Retry-After`` (only the requests it lets through count towards the limit).
"""

from __future__ import annotations

import base64
import random
import re
import socket
import struct
import socketserver
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
CHUNK = 64 << 10


#: An upload session's id in a path: masked so that every session's requests count as one kind.
_SESSION_RE = re.compile(r"(/blobs/uploads/)[^/?]+")


@dataclass(frozen=True)
class FaultMix:
    """Shares of plain-HTTP requests that get each fault; the rest are forwarded untouched."""

    seed: int = 20261130
    #: Answered 500/502/503 by the proxy; the upstream never sees the request.
    server_error: float = 0.10
    #: Answered 429 with ``Retry-After: retry_after``.
    too_many: float = 0.05
    #: Forwarded, then both connections reset half way through the request body (an
    #: upload) or the answer body (a download); before the answer head when it has none.
    reset: float = 0.05
    #: Forwarded after ``slow_seconds``.
    slow: float = 0.05
    retry_after: int = 1
    slow_seconds: float = 0.4

    def choose(self, method: str, path: str, count: int) -> str | None:
        """The fault for the ``count``-th request of this kind: "5xx", "429", "reset", "slow" or None."""
        kind = _SESSION_RE.sub(r"\1*", path.split("?", 1)[0])
        roll = random.Random(f"{self.seed}|{method}|{kind}|{count}").random()
        for name, share in (("5xx", self.server_error), ("429", self.too_many), ("reset", self.reset),
                            ("slow", self.slow)):
            if roll < share:
                return name
            roll -= share
        return None


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_second`` requests to ``host`` (``host:port``; None: any) in any one second."""

    per_second: int
    host: str | None = None
    retry_after: int = 1
    #: Seconds each admitted request to ``host`` is held before it is forwarded: a
    #: distant registry's round trip, which bounds the rate of one request at a time.
    latency: float = 0.0


@dataclass
class ProxySeen:
    """One request as the proxy saw it: ``CONNECT host:port`` or ``GET http://…``."""

    method: str
    target: str
    authorized: bool


@dataclass
class HTTPProxy:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is what clients are given."""

    #: ``(user, password)`` the proxy demands, or None for an open proxy.
    auth: tuple[str, str] | None = None
    #: Upload bytes per second towards the upstream; None for no limit.
    upload_rate: float | None = None
    #: Faults injected into plain-HTTP requests; None forwards every request untouched.
    faults: FaultMix | None = None
    #: A registry's rate limit, enforced with 429 answers; None: no limit.
    rate_limit: RateLimit | None = None
    seen: list[ProxySeen] = field(default_factory=list)
    #: How many of each fault were injected.
    injected: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._server: socketserver.ThreadingTCPServer | None = None
        self._lock = threading.Lock()
        self._kinds: Counter = Counter()
        self._admitted: deque[float] = deque()
        self.port = 0

    @property
    def url(self) -> str:
        if self.auth is None:
            return f"http://{LOOPBACK}:{self.port}"
        return f"http://{self.auth[0]}:{self.auth[1]}@{LOOPBACK}:{self.port}"

    def targets(self) -> set[str]:
        """The ``host:port`` of every upstream reached through the proxy."""
        with self._lock:
            return {s.target if s.method == "CONNECT" else urlsplit(s.target).netloc for s in self.seen}

    def start(self) -> "HTTPProxy":
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- one client connection ------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        head, rest = _read_head(client)
        if head is None:
            return
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        headers = [line for line in lines[1:] if line]
        authorized = self._authorized(headers)
        with self._lock:
            self.seen.append(ProxySeen(method, target, authorized))
        if not authorized:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                           b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._splice(client, upstream, rest, rewrite_answer=False)
            return
        parts = urlsplit(target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fault = self._fault(method, path)
        length = _content_length(headers)
        if fault in ("5xx", "429"):
            self._refuse(client, fault, rest, length, self.faults.retry_after if self.faults else 1)
            return
        if self._over_rate(parts.netloc):
            assert self.rate_limit is not None
            self._refuse(client, "429", rest, length, self.rate_limit.retry_after)
            return
        if self.rate_limit is not None and self.rate_limit.latency and parts.netloc == self.rate_limit.host:
            time.sleep(self.rate_limit.latency)
        if fault == "slow":
            time.sleep(self.faults.slow_seconds if self.faults else 0)
        upstream = socket.create_connection((parts.hostname, parts.port or 80))
        kept = [h for h in headers if not h.lower().startswith((b"proxy-", b"connection:"))]
        upstream.sendall(
            f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(kept) + b"\r\nConnection: close\r\n\r\n"
        )
        if fault == "reset":
            # Cut the request body half way when there is one, else the answer's.
            cut_upload = (length or 0) > 1 or _chunked(headers)
            self._splice(client, upstream, rest, rewrite_answer=True,
                         cut_upload_at=max(1, (length or 32768) // 2) if cut_upload else None,
                         cut_answer=not cut_upload)
            return
        self._splice(client, upstream, rest, rewrite_answer=True)

    def _fault(self, method: str, path: str) -> str | None:
        if self.faults is None:
            return None
        kind = method + " " + _SESSION_RE.sub(r"\1*", path.split("?", 1)[0])
        with self._lock:
            self._kinds[kind] += 1
            fault = self.faults.choose(method, path, self._kinds[kind])
            if fault is not None:
                self.injected[fault] += 1
        return fault

    def _over_rate(self, host: str) -> bool:
        """Whether a request to ``host`` now goes over the rate limit (counted as ``injected["rate"]``)."""
        limit = self.rate_limit
        if limit is None or (limit.host is not None and host != limit.host):
            return False
        with self._lock:
            now = time.monotonic()
            while self._admitted and now - self._admitted[0] >= 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= limit.per_second:
                self.injected["rate"] += 1
                return True
            self._admitted.append(now)
            return False

    def _refuse(self, client: socket.socket, fault: str, rest: bytes, length: int | None, retry_after: int) -> None:
        """Answer in the upstream's place, after taking the request body (so the client reads the answer)."""
        try:
            left = (length or 0) - len(rest)
            client.settimeout(10)
            while left > 0:
                data = client.recv(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
            if fault == "429":
                head = f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\n"
            else:
                status = random.Random(f"{left}|{length}").choice((500, 502, 503))
                head = f"HTTP/1.1 {status} Injected Fault\r\n"
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
            client.sendall(
                (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n").encode() + body
            )
        except OSError:
            pass
        finally:
            _close(client)

    def _authorized(self, headers: list[bytes]) -> bool:
        if self.auth is None:
            return True
        wanted = b"basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode())
        return any(h.lower().startswith(b"proxy-authorization:") and h.split(b":", 1)[1].strip().lower() == wanted.lower()
                   for h in headers)

    def _splice(
        self, client: socket.socket, upstream: socket.socket, pending: bytes, rewrite_answer: bool,
        *, cut_upload_at: int | None = None, cut_answer: bool = False,
    ) -> None:
        """Copy both ways until the upstream closes; uploads paced to ``upload_rate``.

        ``cut_upload_at``: reset both connections once that many request-body bytes went
        upstream. ``cut_answer``: reset them half way through the answer body.
        """
        cut = threading.Event()

        def reset() -> None:
            cut.set()
            for s in (client, upstream):
                _close(s, reset=True)

        def upload() -> None:
            sent = 0
            try:
                data = pending
                while True:
                    if data:
                        if cut_upload_at is not None and sent + len(data) >= cut_upload_at:
                            upstream.sendall(data[: max(0, cut_upload_at - sent)])
                            time.sleep(0.05)  # let the upstream take the partial body first
                            reset()
                            return
                        self._pace(len(data))
                        upstream.sendall(data)
                        sent += len(data)
                    data = client.recv(CHUNK)
                    if not data:
                        break
            except OSError:
                pass
            finally:
                if not cut.is_set():
                    try:
                        upstream.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        try:
            if rewrite_answer:  # one request per connection: tell the client so
                head, rest = _read_head(upstream)
                if head is None:
                    return
                lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
                if cut_answer:
                    half = (_content_length(lines[1:]) or 0) // 2
                    if half <= 0:  # no body to cut: the answer is lost before its head
                        reset()
                        return
                    data = rest
                    while len(data) < half:
                        more = upstream.recv(CHUNK)
                        if not more:
                            break
                        data += more
                    client.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + data[:half])
                    reset()
                    return
                client.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest)
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            if not cut.is_set():
                for s in (client, upstream):
                    _close(s)

    def _pace(self, nbytes: int) -> None:
        if self.upload_rate:
            time.sleep(nbytes / self.upload_rate)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """Bytes up to the blank line that ends a request or answer head, and what came after."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(CHUNK)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    """Close ``sock``; ``reset`` sends a TCP RST (linger 0) instead of an orderly FIN."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Wakes a thread blocked reading this socket (close alone would not, and the
            # RST would wait for it), without the FIN that SHUT_WR would send first.
            sock.shutdown(socket.SHUT_RD)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _header(headers: list[bytes], name: bytes) -> bytes | None:
    prefix = name.lower() + b":"
    for h in headers:
        if h.lower().startswith(prefix):
            return h.split(b":", 1)[1].strip()
    return None


def _content_length(headers: list[bytes]) -> int | None:
    value = _header(headers, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _chunked(headers: list[bytes]) -> bool:
    return (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked"
