"""RegistryClient behaviour that a healthy Distribution never shows: retries, redirects,
odd challenges, TLS fallback, concurrency limits. Small loopback stub servers play the
registry; sleeping is replaced so backoff is checked without waiting for it.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import (
    AccessDenied,
    ClientPool,
    RegistryClient,
    RegistryDestination,
    RegistryError,
    RegistryNotFound,
    RegistryMisconfigured,
    RegistrySource,
    RegistryUnavailable,
    RetriableUploadError,
)
from imagepush.transforms.stores.registry.auth import Challenge, parse_challenges
from imagepush.transforms.stores.registry.errors import registry_error_detail
from imagepush.transforms.stores.registry.streams import MAX_RESUMES
from imagepush.transforms.stores.registry.transport import HOST_DOWN_SECONDS, host_matches, retry_after_seconds


#: A stub answer header (never sent) that drops the connection after that many body bytes.
CUT_AFTER = "X-Stub-Cut-After"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    #: The client's port: requests over one kept-alive connection share it.
    peer: int = 0


@dataclass
class Stub:
    """A loopback HTTP server whose answers come from ``handler(seen) -> (status, headers, body)``."""

    handler: Callable[[Seen], tuple[int, dict[str, str], bytes]]
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    #: The port to listen on (0: any free one); a restarted stub takes its predecessor's.
    port: int = 0

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "Stub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding") == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        chunk = self.rfile.read(size + 2)[:-2]
                        if size == 0:
                            break
                        body += chunk
                seen = Seen(self.command, self.path, dict(self.headers.items()), body, self.client_address[1])
                stub.seen.append(seen)
                status, headers, payload = stub.handler(seen)
                headers = dict(headers)
                cut = headers.pop(CUT_AFTER, None)  # announce the whole body, send only part of it
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(payload if cut is None else payload[: int(cut)])
                    except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                        self.close_connection = True
                        return
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.server.daemon_threads = True
        self.server.block_on_close = False  # keep-alive handler threads must not delay teardown
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def stubs() -> Iterator[Callable[..., Stub]]:
    started: list[Stub] = []

    def make(handler: Callable[[Seen], tuple[int, dict[str, str], bytes]], port: int = 0) -> Stub:
        stub = Stub(handler, port=port).start()
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.stop()


def client(host: str, sleeps: list[float] | None = None, **options: Any) -> RegistryClient:
    opts = StoreOptions(insecure_registries=(host,), **options)
    return RegistryClient(host, opts, sleep=(sleeps.append if sleeps is not None else (lambda s: None)))


def ok_ping(seen: Seen) -> tuple[int, dict[str, str], bytes] | None:
    if seen.path == "/v2/":
        return 200, {}, b"{}"
    return None


ERR = lambda code, msg: json.dumps({"errors": [{"code": code, "message": msg}]}).encode()  # noqa: E731


# -- parsing ----------------------------------------------------------------------------


def test_parse_challenges() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope", '
        'Basic realm="say \\"hi\\", please"'
    )
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.params["realm"] == "https://auth.example/token"
    assert bearer.scopes == ["repository:a/b:pull,push", "repository:c:pull"]
    assert bearer.params["error"] == "insufficient_scope"
    assert basic == Challenge("basic", {"realm": 'say "hi", please'})
    assert parse_challenges("Basic realm=simple") == [Challenge("basic", {"realm": "simple"})]
    assert parse_challenges("") == []


def test_small_helpers() -> None:
    assert registry_error_detail(ERR("DENIED", "no\nway")) == ("DENIED", "no way")
    assert registry_error_detail(b"<html>") == (None, None)
    assert registry_error_detail(b'{"error":"invalid_grant"}') == ("invalid_grant", None)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert host_matches("127.0.0.1:5000", ["127.0.0.1:5000"])
    assert host_matches("reg.local:5000", ["reg.local"])
    assert not host_matches("reg.local:5000", ["reg.local:5001", "other"])


# -- scheme and TLS ---------------------------------------------------------------------


def test_insecure_host_falls_back_to_http(stubs) -> None:
    stub = stubs(lambda s: ok_ping(s) or (200, {"Content-Type": "application/json"}, b'{"tags":[]}'))
    c = client(stub.host)
    assert c.base_url() == f"http://{stub.host}"
    reply = c.request("GET", "/v2/x/tags/list", scopes=[], where="w", what="tags")
    assert reply.status == 200 and json.loads(reply.content) == {"tags": []}


def test_secure_host_does_not_fall_back(stubs) -> None:
    stub = stubs(lambda s: (200, {}, b"{}"))
    sleeps: list[float] = []
    c = RegistryClient(stub.host, StoreOptions(), sleep=sleeps.append)
    with pytest.raises(RegistryMisconfigured) as info:
        c.request("GET", "/v2/x/tags/list", scopes=[], where=f"{stub.host}/x", what="tag list")
    assert str(info.value) == f"{stub.host} speaks plain HTTP, not TLS: use --insecure-registry {stub.host}"
    assert sleeps == []  # not retried: the same handshake fails the same way
    with pytest.raises(RegistryMisconfigured, match="^" + re.escape(str(info.value)) + "$"):
        c.request("GET", "/v2/y/tags/list", scopes=[], where=f"{stub.host}/y", what="tag list")
    assert sleeps == []
    assert not stub.seen or all(s.path != "/v2/x/tags/list" for s in stub.seen)


# -- retries ----------------------------------------------------------------------------


def test_retries_5xx_and_429_with_retry_after(stubs) -> None:
    answers = iter([(503, {}, b"busy"), (429, {"Retry-After": "3"}, ERR("TOOMANYREQUESTS", "slow down"))])

    def handler(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        return next(answers, (200, {}, b"{}"))

    stub = stubs(handler)
    sleeps: list[float] = []
    c = client(stub.host, sleeps)
    reply = c.request("GET", "/v2/x/tags/list", scopes=[], where="w", what="tags")
    assert reply.status == 200
    assert len(sleeps) == 2 and sleeps[1] >= 3.0
    assert 0 < sleeps[0] <= 0.5


def test_retries_are_bounded(stubs) -> None:
    stub = stubs(lambda s: ok_ping(s) or (500, {"Content-Type": "application/json"}, ERR("UNKNOWN", "boom")))
    sleeps: list[float] = []
    with pytest.raises(RegistryUnavailable) as info:
        client(stub.host, sleeps).request("PUT", "/v2/x/manifests/t", scopes=[], where="h/x", what="manifest t", body=b"{}")
    assert str(info.value) == "h/x: manifest t failed after 5 attempts (UNKNOWN: boom)"
    assert len([s for s in stub.seen if s.method == "PUT"]) == 5
    assert sleeps == sorted(sleeps) or len(sleeps) == 4  # growing delays with jitter


def test_a_registry_never_reached_that_refuses_fails_at_once_until_its_cool_down() -> None:
    now, sleeps = [0.0], []
    host = "127.0.0.1:1"  # nothing listens on port 1: connection refused
    c = RegistryClient(host, StoreOptions(insecure_registries=(host,)), sleep=sleeps.append,
                       clock=lambda: now[0], max_attempts=3)
    with pytest.raises(RegistryUnavailable) as info:
        c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tag list")
    assert str(info.value) == "127.0.0.1:1: registry check failed: cannot reach 127.0.0.1:1 (connection refused)"
    assert sleeps == []  # a wrong port is no hiccup
    with pytest.raises(RegistryUnavailable) as info:
        c.request("GET", "/v2/y/tags/list", scopes=[], where="h/y", what="tag list")
    assert str(info.value) == "h/y: tag list not attempted: cannot reach 127.0.0.1:1 (connection refused)"
    now[0] = HOST_DOWN_SECONDS + 1
    with pytest.raises(RegistryUnavailable, match=r"registry check failed: cannot reach 127\.0\.0\.1:1 \(connection refused\)$"):
        c.request("GET", "/v2/y/tags/list", scopes=[], where="h/y", what="tag list")
    assert sleeps == []  # tried again, once, when the cool-down was over


def test_a_registry_name_that_does_not_resolve_fails_at_once() -> None:
    sleeps: list[float] = []
    c = RegistryClient("registry.invalid:5000", StoreOptions(), sleep=sleeps.append)
    with pytest.raises(RegistryUnavailable) as info:
        c.request("GET", "/v2/x/tags/list", scopes=[], where="registry.invalid:5000/x", what="tag list")
    assert str(info.value) == ("registry.invalid:5000: registry check failed: "
                               "cannot reach registry.invalid:5000 (the name does not resolve)")
    assert info.value.kind == "unreachable" and sleeps == []


def test_registry_that_goes_away_mid_run_without_grace_fails_the_rest_fast(stubs) -> None:
    stub = stubs(lambda s: ok_ping(s) or (200, {"Content-Type": "application/json"}, b'{"tags": []}'))
    sleeps: list[float] = []
    c = client(stub.host, sleeps, outage_grace=0)
    c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tag list")
    stub.stop()
    c.close()  # the server's end of the kept-alive connection lives on in its handler thread
    with pytest.raises(RegistryUnavailable, match="after 5 attempts"):
        c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tag list")
    assert len(sleeps) == 4
    with pytest.raises(RegistryUnavailable, match="not attempted"):
        c.request("GET", "/v2/z/tags/list", scopes=[], where="h/z", what="tag list")
    assert len(sleeps) == 4


def test_registry_that_goes_away_and_comes_back_within_the_grace_answers_the_waiting_request(stubs) -> None:
    answer = lambda s: ok_ping(s) or (200, {"Content-Type": "application/json"}, b'{"tags": []}')  # noqa: E731
    stub = stubs(answer)
    port = stub.port
    back: list[Stub] = []

    def wait(seconds: float) -> None:  # the registry restarts on its port during the third wait
        if len(waits) == 2:
            back.append(stubs(answer, port=port))
        waits.append(seconds)
        time.sleep(min(seconds, 0.05))

    waits: list[float] = []
    c = RegistryClient(stub.host, StoreOptions(insecure_registries=(stub.host,), registry_retries=1),
                       sleep=wait)
    c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tag list")
    stub.stop()
    c.close()
    reply = c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tag list")
    assert reply.status == 200 and len(waits) == 3 and back  # beyond the budget of two attempts


def test_unreachable_token_server_does_not_mark_the_registry_down(stubs) -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:1/token",service="s"'}
    stub = stubs(lambda s: (401, challenge, b"{}"))
    sleeps: list[float] = []
    c = client(stub.host, sleeps)
    for repository in ("x", "y"):
        with pytest.raises(RegistryUnavailable) as info:
            c.request("GET", f"/v2/{repository}/tags/list", scopes=[], where=f"h/{repository}", what="tag list")
        # The second request tries again ("failed", not "not attempted"): only the token server is down.
        assert str(info.value).startswith(f"h/{repository}: token request failed: cannot reach 127.0.0.1:1 (")
    assert len(sleeps) == 8  # both token requests used all their attempts


def test_streamed_body_is_not_retried(stubs) -> None:
    stub = stubs(lambda s: ok_ping(s) or (500, {}, b""))
    c = client(stub.host)
    with pytest.raises(RetriableUploadError) as info:
        c.send_stream("PATCH", "/v2/x/blobs/uploads/u", iter([b"abc", b"def"]), scopes=[], where="h/x",
                      what="upload", ok=(202,))
    assert "start again" in str(info.value)
    assert [s.method for s in stub.seen].count("PATCH") == 1


def test_error_mapping(stubs) -> None:
    def handler(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        if "denied" in seen.path:
            return 403, {}, ERR("DENIED", "requested access to the resource is denied")
        if "gone" in seen.path:
            return 404, {}, ERR("NAME_UNKNOWN", "repository name not known to registry")
        return 400, {}, b"<html><body>bad</body></html>"

    c = client(stubs(handler).host)
    with pytest.raises(AccessDenied, match=r"^h/denied: tags: access denied \(DENIED: requested access"):
        c.request("GET", "/v2/denied/tags/list", scopes=[], where="h/denied", what="tags")
    with pytest.raises(RegistryNotFound, match="NAME_UNKNOWN"):
        c.request("GET", "/v2/gone/tags/list", scopes=[], where="h/gone", what="tags")
    with pytest.raises(RegistryError, match=r"^h/x: tags failed \(HTTP 400\)$"):
        c.request("GET", "/v2/x/tags/list", scopes=[], where="h/x", what="tags")


# -- redirects, auth, tokens ------------------------------------------------------------


def test_redirect_to_other_host_drops_authorization(stubs, tmp_path: Path) -> None:
    storage = stubs(lambda s: (200, {}, b"blob-bytes"))
    auth = "Basic " + base64.b64encode(b"user:pw").decode()

    def registry(seen: Seen):
        if seen.headers.get("Authorization") != auth:
            return 401, {"WWW-Authenticate": 'Basic realm="stub"'}, ERR("UNAUTHORIZED", "authentication required")
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        return 307, {"Location": f"http://{storage.host}/data/abc?sig=1"}, b""

    reg = stubs(registry)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {reg.host: {"username": "user", "password": "pw"}}}))
    c = client(reg.host, authfile=str(authfile))
    with c.open("GET", "/v2/x/blobs/sha256:abc", scopes=["repository:x:pull"], where="w", what="blob",
                follow_redirects=True) as f:
        assert f.read() == b"blob-bytes"
    assert reg.seen[-1].headers.get("Authorization") == auth
    assert storage.seen[0].path == "/data/abc?sig=1"
    assert "Authorization" not in storage.seen[0].headers


def test_token_cache_and_minimum_lifetime(stubs) -> None:
    tokens: list[str] = []

    def token_server(seen: Seen):
        tokens.append(seen.path)
        return 200, {}, json.dumps({"token": f"tok{len(tokens)}", "expires_in": 1}).encode()

    realm = stubs(token_server)

    def registry(seen: Seen):
        if seen.headers.get("Authorization", "").startswith("Bearer tok"):
            return 200, {}, b"{}"
        return 401, {"WWW-Authenticate": f'Bearer realm="http://{realm.host}/token",service="svc"'}, b""

    c = client(stubs(registry).host)
    for _ in range(3):
        c.request("GET", "/v2/a/tags/list", scopes=["repository:a:pull"], where="w", what="tags")
    assert len(tokens) == 1  # expires_in=1 is treated as 60 s
    assert "scope=repository%3Aa%3Apull" in tokens[0] and "service=svc" in tokens[0]
    c.request("GET", "/v2/a/tags/list", scopes=["repository:a:pull", "repository:b:pull"], where="w", what="tags")
    assert len(tokens) == 2
    assert tokens[1].count("scope=") == 2  # one scope parameter per scope


def test_access_token_field_and_token_errors(stubs) -> None:
    answers = iter([
        (200, {}, json.dumps({"access_token": "AT"}).encode()),
        (401, {}, json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "bad"}]}).encode()),
    ])
    realm = stubs(lambda s: next(answers))

    def registry(seen: Seen):
        if seen.headers.get("Authorization") == "Bearer AT":
            return 200, {}, b"{}"
        return 401, {"WWW-Authenticate": f'Bearer realm="http://{realm.host}/token"'}, b""

    c = client(stubs(registry).host)
    c.request("GET", "/v2/a/tags/list", scopes=["repository:a:pull"], where="w", what="tags")
    with pytest.raises(RegistryError, match="anonymous access refused at token server"):
        c.request("GET", "/v2/b/tags/list", scopes=["repository:b:pull"], where="w", what="tags")


def test_concurrency_is_capped(stubs) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return 200, {}, b"{}"

    c = client(stubs(slow).host, registry_concurrency=2)
    c.base_url()
    threads = [threading.Thread(target=c.request, args=("GET", f"/v2/r{i}/tags/list"),
                                kwargs={"scopes": [], "where": "w", "what": "t"}) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["max"] == 2


def test_upload_locations_relative_and_query_kept(stubs) -> None:
    """The newest (relative) Location is used for every step, with its query string."""
    step = {"n": 0}

    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        if seen.method == "POST":
            return 202, {"Location": "/v2/x/blobs/uploads/u1?_state=s0"}, b""
        if seen.method == "PATCH":
            step["n"] += 1
            start = (step["n"] - 1) * 4
            assert seen.headers["Content-Range"] == f"{start}-{start + len(seen.body) - 1}"
            return 202, {"Location": f"/v2/x/blobs/uploads/u1?_state=s{step['n']}",
                         "Range": f"0-{start + len(seen.body) - 1}"}, b""
        if seen.method == "PUT":
            return 201, {"Docker-Content-Digest": seen.path.split("digest=")[1].replace("%3A", ":")}, b""
        return 404, {}, b""

    stub = stubs(registry)
    dest = RegistryDestination(f"{stub.host}/x", StoreOptions(
        insecure_registries=(stub.host,), upload_chunk_size=4, monolithic_upload_limit=0))
    data = b"0123456789"
    import hashlib

    desc = Descriptor("application/octet-stream", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    sink = dest.blob_sink(desc)
    sink.write(data[:3])
    sink.write(data[3:])
    sink.commit()
    paths = [(s.method, s.path) for s in stub.seen if s.path != "/v2/"]
    assert paths[0] == ("POST", "/v2/x/blobs/uploads/")
    assert paths[1:4] == [("PATCH", f"/v2/x/blobs/uploads/u1?_state=s{i}") for i in range(3)]
    assert paths[4][0] == "PUT" and paths[4][1].startswith("/v2/x/blobs/uploads/u1?_state=s3&digest=sha256")
    assert b"".join(s.body for s in stub.seen if s.method == "PATCH") == data


# -- store behaviour on answers a healthy Distribution does not give ---------------------


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_manifest_answers_are_checked(stubs) -> None:
    from imagepush.transforms.stores.base import StoreError

    good = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    plain = b'{"schemaVersion":2,"manifests":[]}'
    huge = b'{"schemaVersion":2,"manifests":[' + b" " * (4 << 20) + b"]}"

    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        tag = seen.path.rsplit("/", 1)[1]
        if tag == "plain":  # a CDN's generic type: the content decides
            return 200, {"Content-Type": "text/plain"}, plain
        if tag == "lying":
            return 200, {"Content-Type": "application/vnd.oci.image.index.v1+json",
                         "Docker-Content-Digest": "sha256:" + "9" * 64}, good
        if tag == "huge":
            return 200, {"Content-Type": "application/vnd.oci.image.index.v1+json"}, huge
        return 200, {"Content-Type": "application/vnd.oci.image.index.v1+json"}, good

    stub = stubs(registry)
    src = RegistrySource(f"{stub.host}/r", StoreOptions(insecure_registries=(stub.host,)))
    assert src.get_root("ok").digest == _digest(good)
    plain_root = src.get_root("plain")
    assert plain_root.media_type == "application/vnd.oci.image.index.v1+json" and plain_root.data == plain
    with pytest.raises(StoreError, match="but the registry says sha256:9999"):
        src.get_root("lying")
    with pytest.raises(StoreError, match="not the digest asked for"):
        src.get_manifest("sha256:" + "8" * 64)  # the stub answers with other content
    with pytest.raises(StoreError, match="larger than 4 MiB"):
        src.get_root("huge")
    accept = next(s for s in stub.seen if s.path.endswith("/ok")).headers["Accept"]
    assert accept.split(", ")[0] == "application/vnd.oci.image.index.v1+json" and "v1+prettyjws" in accept


def test_manifest_put_retried_on_500(stubs) -> None:
    """Distribution 2.8 answers 500 to racing tag writes; the PUT is simply sent again."""
    from imagepush.transforms.stores.base import ManifestBlob, Publication

    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    answers = iter([(500, {}, ERR("UNKNOWN", "unknown error")), (500, {}, b"")])

    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        assert seen.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json" and seen.body == body
        return next(answers, (201, {"Docker-Content-Digest": _digest(body)}, b""))

    stub = stubs(registry)
    opts = StoreOptions(insecure_registries=(stub.host,))
    dest = RegistryDestination(f"{stub.host}/r", opts, clients=ClientPool(opts, sleep=lambda s: None))
    dest.put_manifest(ManifestBlob(body, "application/vnd.oci.image.index.v1+json", _digest(body)))
    dest.publish([Publication("t", Descriptor("application/vnd.oci.image.index.v1+json", _digest(body), len(body)),
                              manifest=body)])
    puts = [s.path for s in stub.seen if s.method == "PUT"]
    assert puts == [f"/v2/r/manifests/{_digest(body)}"] * 3 + ["/v2/r/manifests/t"]


def test_what_the_registry_stored_under_another_digest_is_a_mismatch(stubs) -> None:
    from imagepush.transforms.stores.base import Mismatch, Publication

    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    other = "sha256:" + "7" * 64

    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        if seen.method == "POST":
            return 202, {"Location": "/v2/r/blobs/uploads/u"}, b""
        if seen.method == "PUT":
            return 201, {"Docker-Content-Digest": other}, b""
        return 404, {}, b""

    stub = stubs(registry)
    dest = RegistryDestination(f"{stub.host}/r", StoreOptions(insecure_registries=(stub.host,)))
    failed = dest.publish([Publication("t", Descriptor("application/vnd.oci.image.index.v1+json", _digest(body),
                                                       len(body)), manifest=body)])
    assert {i: (str(exc), exc.kind) for i, exc in failed.items()} == {
        0: (f"{stub.host}/r: manifest t was stored as {other}, expected {_digest(body)}", "mismatch")}
    layer = b"layer"
    with pytest.raises(Mismatch) as info:
        dest.put_blob(Descriptor("application/octet-stream", _digest(layer), len(layer)), layer)
    assert str(info.value) == f"{stub.host}/r: the registry stored blob {_digest(layer)} as {other}"
    assert info.value.kind == "mismatch"


def test_failed_patch_asks_for_a_fresh_upload(stubs) -> None:
    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        if seen.method == "POST":
            return 202, {"Location": "/v2/r/blobs/uploads/u?_state=a"}, b""
        if seen.method == "PATCH":
            return 503, {}, b""
        return 204, {}, b""

    stub = stubs(registry)
    dest = RegistryDestination(f"{stub.host}/r", StoreOptions(
        insecure_registries=(stub.host,), upload_chunk_size=5, monolithic_upload_limit=0))
    data = b"0123456789abc"
    sink = dest.blob_sink(Descriptor("application/octet-stream", _digest(data), len(data)))
    with pytest.raises(RetriableUploadError, match="start again"):
        sink.write(data)
        sink.commit()
    sink.abort()
    assert [s.method for s in stub.seen].count("PATCH") == 1  # a streamed body is never replayed
    assert stub.seen[-1].method == "DELETE"  # the session is cancelled


# -- broken blob downloads ---------------------------------------------------------------

BLOB = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit, not a multiple of the read size
BLOB_DIGEST = "sha256:" + __import__("hashlib").sha256(BLOB).hexdigest()


def _read_blob(host: str) -> bytes:
    opts = StoreOptions(insecure_registries=(host,))
    with RegistrySource(f"{host}/lib/app", opts).open_blob(BLOB_DIGEST) as stream:
        return b"".join(iter(lambda: stream.read(1 << 16), b""))


def _read_blob_into(host: str) -> bytes:
    """The blob read into the caller's buffer (``readinto``), used again for every read."""
    opts = StoreOptions(insecure_registries=(host,))
    buffer, out = bytearray(100_003), bytearray()  # the blob is no multiple of it: a short last read
    with RegistrySource(f"{host}/lib/app", opts).open_blob(BLOB_DIGEST) as stream:
        while count := stream.readinto(buffer):
            out += buffer[:count]
        assert stream.readinto(buffer) == 0  # the end stays the end
    return bytes(out)


READS = pytest.mark.parametrize("read_blob", [_read_blob, _read_blob_into], ids=["read", "readinto"])


def _range_start(seen: Seen) -> int | None:
    header = seen.headers.get("Range")
    return None if header is None else int(header.removeprefix("bytes=").rstrip("-"))


@READS
def test_broken_blob_download_resumes_where_it_stopped(stubs, read_blob) -> None:
    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        start = _range_start(seen)
        if start is None:
            return 200, {CUT_AFTER: str(1 << 20)}, BLOB
        return 206, {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB[start:]

    stub = stubs(registry)
    assert read_blob(stub.host) == BLOB
    gets = [seen for seen in stub.seen if seen.path.endswith(BLOB_DIGEST)]
    assert [_range_start(seen) for seen in gets] == [None, 1 << 20]


@READS
def test_registry_that_ignores_range_is_read_again_from_the_start(stubs, read_blob) -> None:
    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        first = len([s for s in stub.seen if s.path.endswith(BLOB_DIGEST)]) == 1
        return 200, ({CUT_AFTER: str(2 << 20)} if first else {}), BLOB

    stub = stubs(registry)
    assert read_blob(stub.host) == BLOB
    assert [_range_start(s) for s in stub.seen if s.path.endswith(BLOB_DIGEST)] == [None, 2 << 20]


def test_a_blob_read_to_its_end_into_a_buffer_frees_its_slot_and_keeps_its_connection(stubs) -> None:
    def registry(seen: Seen):
        return (200, {}, BLOB) if seen.path.endswith(BLOB_DIGEST) else (200, {}, b"{}")

    stub = stubs(registry)
    source = RegistrySource(f"{stub.host}/lib/app", StoreOptions(insecure_registries=(stub.host,),
                                                                 registry_concurrency=1))
    stream = source.open_blob(BLOB_DIGEST)
    buffer, total = bytearray(1 << 20), 0
    while count := stream.readinto(buffer):
        total += count
    assert total == len(BLOB)
    # Not closed: the end of the body is enough. With one slot, a held one would block this.
    second = threading.Thread(target=lambda: source.open_blob(BLOB_DIGEST).close(), daemon=True)
    second.start()
    second.join(timeout=10)
    assert not second.is_alive()
    gets = [seen.peer for seen in stub.seen if seen.path.endswith(BLOB_DIGEST)]
    assert len(gets) == 2 and gets[0] == gets[1]  # the same connection, back in the pool


@READS
def test_blob_resumes_are_bounded(stubs, read_blob) -> None:
    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        start = _range_start(seen) or 0
        body = BLOB[start:]
        return (206 if start else 200), {CUT_AFTER: "0",
                                         "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}, body

    stub = stubs(registry)
    with pytest.raises(RegistryUnavailable, match="connection lost while reading"):
        read_blob(stub.host)
    assert len([s for s in stub.seen if s.path.endswith(BLOB_DIGEST)]) == 1 + MAX_RESUMES


def test_resume_at_the_wrong_offset_is_refused(stubs) -> None:
    def registry(seen: Seen):
        if seen.path == "/v2/":
            return 200, {}, b"{}"
        if _range_start(seen) is None:
            return 200, {CUT_AFTER: str(1 << 20)}, BLOB
        return 206, {"Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB

    stub = stubs(registry)
    with pytest.raises(RegistryError, match=r"asked to resume at byte 1048576, the registry answered Content-Range 'bytes 0-"):
        _read_blob(stub.host)
