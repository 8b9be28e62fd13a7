"""Authentication against real Distribution: htpasswd (Basic) and token (Bearer) auth.

Also the promise that secrets never show: not in exception messages, not in logs (at
DEBUG, urllib3 included), not in any ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

try:
    from tests.conftest import require_tool, run
    from tests.registry_server import Registry, TokenServer, start_registry
except ImportError:  # tests/ is not a package
    from conftest import require_tool, run  # type: ignore[no-redef]
    from registry_server import Registry, TokenServer, start_registry  # type: ignore[no-redef]


from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.registry.authfile import find_credentials
from imagepush.transforms.stores.base import ManifestBlob, Publication, StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import (
    AuthenticationError,
    ClientPool,
    RegistryClient,
    RegistryDestination,
    RegistrySource,
)

PASSWORD = "s3cret-Pa55word!"
TOKEN_PASSWORD = "t0ken-Pa55word?"
REFRESH_TOKEN = "refresh-7f1c2b9e"
CAROL_PASSWORD = "c4rol-Pa55word#"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_authfile(path: Path, host: str, user: str, password: str) -> Path:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": raw}}}))
    return path


def secrets_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text
    for secret in secrets:  # "user:password" in base64, as sent in Basic headers
        for user in ("alice", "bob"):
            assert base64.b64encode(f"{user}:{secret}".encode()).decode() not in text


# -- Basic (htpasswd) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    require_tool("docker-registry")
    require_tool("skopeo")
    reg = start_registry(tmp_path_factory.mktemp("basic"), htpasswd={"alice": PASSWORD})
    try:
        run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", f"alice:{PASSWORD}",
             f"oci:{layout}:demo/app:1.0", f"docker://{reg.host}/private/app:1.0"], timeout=60)
        yield reg
    finally:
        reg.stop()


def test_basic_auth_with_right_password(basic_registry: Registry, tmp_path: Path) -> None:
    host = basic_registry.host
    opts = StoreOptions(insecure_registries=(host,), authfile=str(write_authfile(tmp_path / "a.json", host, "alice", PASSWORD)))
    src = RegistrySource(f"{host}/private/app", opts)
    root = src.get_root("1.0")
    assert root.media_type == mt.OCI_MANIFEST
    assert [e.ref for e in RegistrySource(host, opts).list_images()] == ["private/app:1.0"]
    dest = RegistryDestination(f"{host}/private/copy", opts)
    layer = os.urandom(3000)
    dest.put_blob(Descriptor(mt.OCI_LAYER_GZIP, sha256(layer), len(layer)), layer)
    assert dest.has_blob(sha256(layer))
    assert dest.mount_blob(Descriptor(mt.OCI_CONFIG, json.loads(root.data)["config"]["digest"], 0),
                           [f"docker://{host}/private/app"])


def test_basic_auth_wrong_password_is_one_clear_line(
    basic_registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = basic_registry.host
    wrong = "Wr0ng-Secret-Value"
    opts = StoreOptions(insecure_registries=(host,), authfile=str(write_authfile(tmp_path / "a.json", host, "alice", wrong)))
    src = RegistrySource(f"{host}/private/app", opts)
    with pytest.raises(AuthenticationError) as info:
        src.get_root("1.0")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{host}/private/app: authentication failed (UNAUTHORIZED)")
    secrets_absent(message, wrong)
    secrets_absent(caplog.text, wrong)
    secrets_absent(repr(src) + repr(src.client) + repr(src.client.credentials()) + str(src.client.credentials()), wrong)
    assert "***" in repr(src.client.credentials())
    with pytest.raises(AuthenticationError):
        RegistryDestination(f"{host}/private/app", opts).has_blob("sha256:" + "0" * 64)


def test_basic_auth_without_credentials(basic_registry: Registry, tmp_path: Path) -> None:
    host = basic_registry.host
    other = tmp_path / "other.json"
    write_authfile(other, "elsewhere.example:5000", "alice", PASSWORD)
    opts = StoreOptions(insecure_registries=(host,), authfile=str(other))
    with pytest.raises(AuthenticationError) as info:
        RegistrySource(f"{host}/private/app", opts).get_root("1.0")
    assert str(info.value) == (
        f"{host}/private/app: authentication required (UNAUTHORIZED); no credentials for {host} in the auth files"
    )


def test_basic_auth_through_credential_helper(
    basic_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = basic_registry.host
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-imagepushtest"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        f'if [ "$host" = "{host}" ]; then echo \'{{"ServerURL":"{host}","Username":"alice","Secret":"{PASSWORD}"}}\'; '
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    authfile = tmp_path / "config.json"
    authfile.write_text(json.dumps({"auths": {}, "credHelpers": {host: "imagepushtest"}}))
    opts = StoreOptions(insecure_registries=(host,), authfile=str(authfile))
    assert RegistrySource(f"{host}/private/app", opts).get_root("1.0").media_type == mt.OCI_MANIFEST
    secrets_absent(caplog.text, PASSWORD)


# -- Bearer (token server) --------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    server = TokenServer(users={"bob": TOKEN_PASSWORD, "carol": CAROL_PASSWORD}, public=("public/app",),
                         refresh_tokens={"bob": REFRESH_TOKEN})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer, layout: Path) -> Iterator[Registry]:
    require_tool("docker-registry")
    require_tool("skopeo")
    reg = start_registry(tmp_path_factory.mktemp("token"), token=token_server)
    try:
        for name in ("public/app", "team/app"):
            run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", f"bob:{TOKEN_PASSWORD}",
                 f"oci:{layout}:demo/app:1.0", f"docker://{reg.host}/{name}:1.0"], timeout=60)
        yield reg
    finally:
        reg.stop()


def token_options(reg: Registry, tmp_path: Path, password: str | None = TOKEN_PASSWORD) -> StoreOptions:
    path = tmp_path / "auth.json"
    if password is None:
        path.write_text(json.dumps({"auths": {}}))
    else:
        write_authfile(path, reg.host, "bob", password)
    return StoreOptions(insecure_registries=(reg.host,), authfile=str(path))


def test_token_auth_pull_push_and_scopes(token_registry: Registry, token_server: TokenServer, tmp_path: Path) -> None:
    opts = token_options(token_registry, tmp_path)
    token_server.requests.clear()
    src = RegistrySource(f"{token_registry.host}/team/app", opts)
    root = src.get_root("1.0")
    assert token_server.requests[-1].scopes == ["repository:team/app:pull"]
    assert token_server.requests[-1].user == "bob"
    assert token_server.requests[-1].service == token_server.service
    # The token is cached per scope set: more reads of the repository ask for nothing new.
    asked = len(token_server.requests)
    src.get_manifest(root.digest)
    with src.open_blob(json.loads(root.data)["config"]["digest"]) as f:
        f.read()
    assert len(token_server.requests) == asked

    dest = RegistryDestination(f"{token_registry.host}/team/copy", opts)
    config_digest = json.loads(root.data)["config"]["digest"]
    assert dest.mount_blob(Descriptor(mt.OCI_CONFIG, config_digest, 0), [f"docker://{token_registry.host}/team/app"])
    mount_scopes = [r.scopes for r in token_server.requests if "repository:team/app:pull" in r.scopes
                    and "repository:team/copy:pull,push" in r.scopes]
    assert mount_scopes, [r.scopes for r in token_server.requests]
    for layer in json.loads(root.data)["layers"]:
        assert dest.mount_blob(Descriptor(mt.OCI_LAYER_GZIP, layer["digest"], 0), [f"docker://{token_registry.host}/team/app"])
    dest.put_manifest(root, root=True)
    dest.publish([Publication("copied", Descriptor(root.media_type, root.digest, len(root.data)), manifest=root.data)])
    assert ["repository:team/copy:pull,push"] in [r.scopes for r in token_server.requests]
    raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"bob:{TOKEN_PASSWORD}",
               f"docker://{token_registry.host}/team/copy:copied"], timeout=60).stdout
    assert raw == root.data

    token_server.requests.clear()
    refs = sorted(e.ref for e in RegistrySource(token_registry.host, opts).list_images())
    assert refs == ["public/app:1.0", "team/app:1.0", "team/copy:copied"]
    assert ["registry:catalog:*"] in [r.scopes for r in token_server.requests]


def test_token_auth_anonymous(token_registry: Registry, token_server: TokenServer, tmp_path: Path) -> None:
    opts = token_options(token_registry, tmp_path, password=None)
    token_server.requests.clear()
    root = RegistrySource(f"{token_registry.host}/public/app", opts).get_root("1.0")
    assert root.media_type == mt.OCI_MANIFEST
    assert token_server.requests and all(r.user is None for r in token_server.requests)
    with pytest.raises(AuthenticationError) as info:
        RegistrySource(f"{token_registry.host}/team/app", opts).get_root("1.0")
    assert "authentication required" in str(info.value) and "no credentials" in str(info.value)
    dest = RegistryDestination(f"{token_registry.host}/public/app", opts)
    with pytest.raises(AuthenticationError):
        dest.put_blob(Descriptor(mt.OCI_LAYER_GZIP, sha256(b"x"), 1), b"x")


def test_token_auth_wrong_password(
    token_registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Not-The-Token-Password"
    opts = token_options(token_registry, tmp_path, password=wrong)
    src = RegistrySource(f"{token_registry.host}/team/app", opts)
    with pytest.raises(AuthenticationError) as info:
        src.get_root("1.0")
    message = str(info.value)
    assert "\n" not in message and "authentication failed" in message
    assert message.startswith(f"{token_registry.host}/team/app: ")
    secrets_absent(message + caplog.text + repr(src.client) + repr(src.client.credentials()), wrong)


def test_token_auth_with_identity_token(token_registry: Registry, token_server: TokenServer, tmp_path: Path) -> None:
    """An ``identitytoken`` in the auth file is traded through the OAuth2 POST flow."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {f"https://{token_registry.host}/v1/": {"identitytoken": REFRESH_TOKEN}}}))
    opts = StoreOptions(insecure_registries=(token_registry.host,), authfile=str(path))
    token_server.requests.clear()
    client = RegistryClient(token_registry.host, opts)
    assert REFRESH_TOKEN not in repr(client.credentials())
    root = RegistrySource(f"{token_registry.host}/team/app", opts).get_root("1.0")
    assert root.media_type == mt.OCI_MANIFEST
    posts = [r for r in token_server.requests if r.method == "POST"]
    assert posts and posts[-1].grant_type == "refresh_token" and posts[-1].user == "bob"
    assert posts[-1].scopes == ["repository:team/app:pull"]


def test_namespace_credentials_are_used_for_their_repositories(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    """auth.json keyed ``HOST/team`` gives team/* its own account; the rest of the host keeps bob's."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {
        token_registry.host: {"auth": base64.b64encode(f"bob:{TOKEN_PASSWORD}".encode()).decode()},
        f"{token_registry.host}/team": {"auth": base64.b64encode(f"carol:{CAROL_PASSWORD}".encode()).decode()},
    }}))
    opts = StoreOptions(insecure_registries=(token_registry.host,), authfile=str(path))
    token_server.requests.clear()
    clients = ClientPool(opts)  # one client per host, as in a pipeline worker: credentials per repository
    team = RegistrySource(f"{token_registry.host}/team/app", opts, clients=clients)
    root = team.get_root("1.0")
    public = RegistrySource(f"{token_registry.host}/public/app", opts, clients=clients)
    assert public.get_root("1.0").digest == root.digest
    dest = RegistryDestination(f"{token_registry.host}/team/carols", opts, clients=clients)
    config = json.loads(root.data)["config"]
    assert dest.mount_blob(Descriptor(mt.OCI_CONFIG, config["digest"], config["size"]),
                           [f"docker://{token_registry.host}/public/app"])
    users = {tuple(r.scopes): r.user for r in token_server.requests}
    assert users[("repository:team/app:pull",)] == "carol"
    assert users[("repository:public/app:pull",)] == "bob"
    mount = next(scopes for scopes in users if "repository:team/carols:pull,push" in scopes)
    assert "repository:public/app:pull" in mount and users[mount] == "carol"
    clients.close()


def test_authfile_default_search_finds_registry_credentials(
    token_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no authfile option, $REGISTRY_AUTH_FILE (first in the search order) is used."""
    path = write_authfile(tmp_path / "env-auth.json", token_registry.host, "bob", TOKEN_PASSWORD)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    assert find_credentials(token_registry.host) is not None
    opts = StoreOptions(insecure_registries=(token_registry.host,))
    assert RegistrySource(f"{token_registry.host}/team/app", opts).get_root("1.0").media_type == mt.OCI_MANIFEST


def test_push_refused_is_clear(token_registry: Registry, tmp_path: Path) -> None:
    opts = token_options(token_registry, tmp_path, password=None)
    dest = RegistryDestination(f"{token_registry.host}/public/app", opts)
    body = b'{"schemaVersion":2}'
    with pytest.raises(StoreError) as info:
        dest.put_manifest(ManifestBlob(body, mt.OCI_MANIFEST, sha256(body)))
    assert "\n" not in str(info.value) and "authentication" in str(info.value)
