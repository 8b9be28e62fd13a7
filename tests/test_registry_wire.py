"""What the registry transport puts on the wire, seen by loopback servers: framing, headers, TLS, proxies.

The servers are Python's own HTTP server (plain, or wrapped in TLS with a self-signed
certificate), recording every request as it arrived; no registry is needed.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import RegistryMisconfigured
from imagepush.transforms.stores.registry.streams import Reply
from imagepush.transforms.stores.registry.transport import Transport
from imagepush.transforms.stores.registry.upload import _END, _PipeBody
from imagepush.transforms.stores.registry.wire import environment_proxy, with_params
from tests.registry_server import LOOPBACK, free_port, write_tls_files

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Every header line as sent, repeated names included.
    pairs: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key.lower() == name.lower()]


class Recorder:
    """A loopback HTTP/1.1 server that records each request and answers 200 (or a redirect to ``redirect``)."""

    def __init__(self, context: ssl.SSLContext | None = None, redirect: str | None = None) -> None:
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            break
                        body += chunk
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body, list(self.headers.items())))
                if redirect and self.path.startswith("/v2/"):
                    self.send_response(307)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = b"served"
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_PATCH = do_POST = _answer

        self.server = ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.server.server_address[1]}"

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def no_inherited_proxies(monkeypatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def plain_transport(server: Recorder) -> Transport:
    return Transport(server.host, StoreOptions(insecure_registries=(server.host,)), max_attempts=1)


def send(t: Transport, method: str, url: str, **kw: object) -> Reply:
    return t.send(method, url, where="wire", what="test", **kw).reply(1 << 20)  # type: ignore[arg-type]


def upload_body(length: int | None, pieces: list[bytes]) -> _PipeBody:
    """A body fed by a thread of its own, as a sink's writer feeds it (its queue holds few pieces)."""
    body = _PipeBody(length)

    def feed() -> None:
        for piece in [*pieces, _END]:
            body.queue.put(piece)

    threading.Thread(target=feed, daemon=True).start()
    return body


# -- framing and headers ---------------------------------------------------------------------


def test_an_upload_body_of_known_length_goes_with_content_length_and_one_of_unknown_length_chunked() -> None:
    with Recorder() as server:
        t = plain_transport(server)
        url = f"http://{server.host}/upload"
        send(t, "PATCH", url, body=upload_body(6, [b"abc", b"def"]), replayable=False)
        send(t, "PATCH", url, body=upload_body(None, [b"abc", b"", b"defg"]), replayable=False)
        t.close()
    known, unknown = server.seen
    assert (known.headers.get("Content-Length"), known.headers.get("Transfer-Encoding"), known.body) == \
        ("6", None, b"abcdef")
    assert (unknown.headers.get("Content-Length"), unknown.headers.get("Transfer-Encoding"), unknown.body) == \
        (None, "chunked", b"abcdefg")


def test_every_request_names_imagepush_asks_for_bytes_as_stored_and_frames_small_bodies_with_a_length() -> None:
    with Recorder() as server:
        t = plain_transport(server)
        base = f"http://{server.host}"
        assert send(t, "GET", f"{base}/v2/a/tags/list", params=[("n", "2"), ("last", "b c")]).content == b"served"
        assert send(t, "HEAD", f"{base}/v2/a/blobs/x", headers={"accept": "application/json"}).content == b""
        send(t, "PUT", f"{base}/v2/a/blobs/uploads/1?_state=s", params={"digest": "sha256:00"}, body=b"")
        send(t, "POST", f"{base}/token", body={"grant_type": "refresh_token", "scope": "repository:a:pull"})
        t.close()
    get, head, put, post = server.seen
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/v2/a/tags/list?n=2&last=b+c"), ("HEAD", "/v2/a/blobs/x"),
        ("PUT", "/v2/a/blobs/uploads/1?_state=s&digest=sha256%3A00"), ("POST", "/token"),
    ]
    for seen in server.seen:
        assert (seen.all("User-Agent"), seen.all("Accept-Encoding")) == (["imagepush"], ["identity"])
        assert "Authorization" not in seen.headers
    assert (get.all("Accept"), head.all("Accept")) == (["*/*"], ["application/json"])  # the caller's, however spelt
    assert "Content-Length" not in get.headers and "Content-Length" not in head.headers
    assert (put.headers["Content-Length"], put.body) == ("0", b"")
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.body == b"grant_type=refresh_token&scope=repository%3Aa%3Apull"
    assert post.headers["Content-Length"] == str(len(post.body))


def test_query_parameters_join_the_query_a_url_already_has() -> None:
    assert with_params("https://r/v2/a/tags/list", {"n": 1, "last": None}) == "https://r/v2/a/tags/list?n=1"
    assert with_params("https://r/u?_state=x", [("digest", "sha256:ab"), ("scope", "a"), ("scope", "b")]) == \
        "https://r/u?_state=x&digest=sha256%3Aab&scope=a&scope=b"
    assert with_params("https://r/u", None) == with_params("https://r/u", {}) == "https://r/u"


def test_link_headers_give_the_next_page_resolved_against_the_answering_url() -> None:
    reply = Reply(200, {"Link": '</v2/_catalog?last=b&n=2>; rel="next", <https://other/first>; rel=first'},
                  b"", "https://r.example/v2/_catalog?n=2")
    assert reply.link() == "https://r.example/v2/_catalog?last=b&n=2"
    assert reply.link("first") == "https://other/first"
    assert reply.link("prev") is None
    assert Reply(200, {}, b"", "https://r.example/").link() is None


# -- TLS ---------------------------------------------------------------------------------------


def tls_server_context(folder: Path) -> tuple[ssl.SSLContext, Path]:
    folder.mkdir()
    cert, key = write_tls_files(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def test_only_the_insecure_host_goes_unverified_a_redirect_elsewhere_is_verified_with_the_ca_bundle(tmp_path) -> None:
    storage_context, storage_cert = tls_server_context(tmp_path / "storage")
    registry_context, _ = tls_server_context(tmp_path / "registry")
    with Recorder(storage_context) as storage:
        blob = f"https://{storage.host}/blob"
        with Recorder(registry_context, redirect=blob) as registry:
            url = f"https://{registry.host}/v2/a/blobs/sha256:00"
            untrusting = Transport(registry.host, StoreOptions(insecure_registries=(registry.host,)), max_attempts=1)
            with pytest.raises(RegistryMisconfigured) as info:
                send(untrusting, "GET", url, follow_redirects=True, headers={"Authorization": "Bearer t"})
            assert str(info.value) == f"wire: test failed: TLS with {storage.host} failed (CERTIFICATE_VERIFY_FAILED)"
            trusting = Transport(registry.host, StoreOptions(insecure_registries=(registry.host,),
                                                             ca_bundle=str(storage_cert)), max_attempts=1)
            reply = send(trusting, "GET", url, follow_redirects=True, headers={"Authorization": "Bearer t"})
            assert (reply.status, reply.content, reply.url) == (200, b"served", blob)
            verified = Transport(registry.host, StoreOptions(ca_bundle=str(storage_cert)), max_attempts=1)
            with pytest.raises(RegistryMisconfigured, match=r"CERTIFICATE_VERIFY_FAILED"):
                send(verified, "GET", url)  # the registry itself, named insecure nowhere, is verified
            for t in (untrusting, trusting, verified):
                t.close()
    assert [s.headers.get("Authorization") for s in registry.seen] == ["Bearer t", "Bearer t"]
    assert [s.headers.get("Authorization") for s in storage.seen] == [None]  # another host: dropped


# -- proxies from the environment ------------------------------------------------------------


def test_the_proxy_comes_from_the_environment_by_scheme_with_all_proxy_as_fallback_and_no_proxy_as_exception(
    monkeypatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.example:8080")
    monkeypatch.setenv("NO_PROXY", "internal.example, .corp.example, 10.0.0.0/8, 127.0.0.1")
    assert environment_proxy("https", "registry.example") == "http://proxy.example:3128"
    assert environment_proxy("http", "registry.example:5000") == "http://all.example:8080"
    for direct in ("internal.example", "r.internal.example:443", "a.corp.example", "10.1.2.3:5000", "127.0.0.1:5000"):
        assert environment_proxy("https", direct) is None, direct
    assert environment_proxy("https", "notinternal.example") == "http://proxy.example:3128"
    assert environment_proxy("https", "11.0.0.1") == "http://proxy.example:3128"
    monkeypatch.setenv("https_proxy", "http://lower.example:1")  # the lower-case name wins, as curl's does
    assert environment_proxy("https", "registry.example") == "http://lower.example:1"


def test_a_host_s_proxy_is_looked_up_once_so_a_later_environment_change_does_not_reroute_it(monkeypatch) -> None:
    with Recorder() as server:
        t = plain_transport(server)
        assert send(t, "GET", f"http://{server.host}/v2/").status == 200
        monkeypatch.setenv("http_proxy", f"http://{LOOPBACK}:{free_port()}")  # nothing listens there
        assert send(t, "GET", f"http://{server.host}/v2/").status == 200
        t.close()
    assert len(server.seen) == 2
