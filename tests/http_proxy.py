"""A small forward HTTP proxy on loopback, for tests of proxy settings and of slow links.

It speaks the two things clients ask of a proxy: absolute-URI requests for plain HTTP
(forwarded one request per connection, the answer marked ``Connection: close``) and
``CONNECT`` tunnels for HTTPS. It can require ``Proxy-Authorization`` and can cap the
rate at which request bodies go upstream, so an upload can be caught half way. It
records each request's method and target so a test can see what went through it.
"""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
CHUNK = 64 << 10


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
    seen: list[ProxySeen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: socketserver.ThreadingTCPServer | None = None
        self._lock = threading.Lock()
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
        upstream = socket.create_connection((parts.hostname, parts.port or 80))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = [h for h in headers if not h.lower().startswith((b"proxy-", b"connection:"))]
        upstream.sendall(
            f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(kept) + b"\r\nConnection: close\r\n\r\n"
        )
        self._splice(client, upstream, rest, rewrite_answer=True)

    def _authorized(self, headers: list[bytes]) -> bool:
        if self.auth is None:
            return True
        wanted = b"basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode())
        return any(h.lower().startswith(b"proxy-authorization:") and h.split(b":", 1)[1].strip().lower() == wanted.lower()
                   for h in headers)

    def _splice(self, client: socket.socket, upstream: socket.socket, pending: bytes, rewrite_answer: bool) -> None:
        """Copy both ways until the upstream closes; uploads paced to ``upload_rate``."""

        def upload() -> None:
            try:
                data = pending
                while True:
                    if data:
                        self._pace(len(data))
                        upstream.sendall(data)
                    data = client.recv(CHUNK)
                    if not data:
                        break
            except OSError:
                pass
            finally:
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
                client.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest)
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

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
