"""Reading docker config.json / containers auth.json and running credential helpers."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from imagepush.transforms.stores.registry.authfile import (
    AuthFileError,
    AuthFiles,
    Credentials,
    default_auth_files,
    find_credentials,
    normalize_key,
    split_key,
)
from imagepush.transforms.stores.registry.auth import scope_repository


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def helper(bindir: Path, name: str, body: str) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def path_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def test_auths_entry_forms(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json", {"auths": {
        "reg.example:5000": {"auth": b64("alice:pa:ss")},
        "https://old.example/v1/": {"auth": b64("bob:pw")},
        "http://plain.example": {"username": "carol", "password": "pw3"},
        "token.example": {"identitytoken": "idtok"},
        "empty.example": {},
    }})
    creds = find_credentials("reg.example:5000", str(path))
    assert (creds.username, creds.password) == ("alice", "pa:ss")  # split at the first colon
    assert find_credentials("old.example", str(path)).username == "bob"
    assert find_credentials("plain.example", str(path)).password == "pw3"
    token = find_credentials("token.example", str(path))
    assert token.identity_token == "idtok" and not token.has_password
    assert find_credentials("empty.example", str(path)) is None
    assert find_credentials("reg.example", str(path)) is None  # the port is part of the key
    assert find_credentials("unknown.example", str(path)) is None


def test_docker_hub_spellings(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}}})
    assert find_credentials("docker.io", str(path)).username == "hub"
    assert find_credentials("registry-1.docker.io", str(path)).username == "hub"
    assert find_credentials("quay.io", str(path)) is None


def test_normalize_key() -> None:
    assert normalize_key("https://index.docker.io/v1/") == "index.docker.io"
    assert normalize_key("http://Reg.Example:5000/") == "reg.example:5000"
    assert normalize_key("reg.example:5000") == "reg.example:5000"


def test_credentials_never_show_secrets(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    creds = Credentials("alice", "Sup3r-Secret", "Id-Token-Secret", origin="/x/auth.json")
    for text in (repr(creds), str(creds), f"{creds}", f"{[creds]}"):
        assert "Sup3r-Secret" not in text and "Id-Token-Secret" not in text
        assert "alice" in text and "***" in text
    path = write(tmp_path / "auth.json", {"auths": {"h:1": {"auth": b64("alice:Sup3r-Secret")}}})
    find_credentials("h:1", str(path))
    assert "Sup3r-Secret" not in caplog.text and b64("alice:Sup3r-Secret") not in caplog.text


def test_broken_files_are_errors_without_content(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"h": {"auth": "Sup3r-Secret"')
    with pytest.raises(AuthFileError) as info:
        find_credentials("h", str(bad))
    assert "not valid JSON" in str(info.value) and "Sup3r-Secret" not in str(info.value)
    with pytest.raises(AuthFileError, match="does not exist"):
        find_credentials("h", str(tmp_path / "missing.json"))
    notb64 = write(tmp_path / "nb.json", {"auths": {"h": {"auth": b64("no-colon-Secret")}}})
    with pytest.raises(AuthFileError) as info:
        find_credentials("h", str(notb64))
    assert "no-colon-Secret" not in str(info.value)


def test_cred_helpers_per_host(tmp_path: Path, path_with: Path) -> None:
    helper(path_with, "fake", (
        'read host\n'
        'case "$host" in\n'
        '  reg.example:5000) echo \'{"ServerURL":"reg.example:5000","Username":"hu","Secret":"hs"}\' ;;\n'
        '  tok.example) echo \'{"ServerURL":"tok.example","Username":"<token>","Secret":"refresh"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    ))
    path = write(tmp_path / "config.json", {
        "auths": {"reg.example:5000": {"auth": b64("file:ignored")}, "other.example": {"auth": b64("o:p")}},
        "credHelpers": {"reg.example:5000": "fake", "tok.example": "fake", "none.example": "fake"},
    })
    creds = find_credentials("reg.example:5000", str(path))
    assert (creds.username, creds.password, creds.origin) == ("hu", "hs", "helper docker-credential-fake")
    assert find_credentials("tok.example", str(path)).identity_token == "refresh"
    assert find_credentials("none.example", str(path)) is None
    assert find_credentials("other.example", str(path)).username == "o"


def test_creds_store_default_and_fallback(tmp_path: Path, path_with: Path) -> None:
    helper(path_with, "desk", (
        'read host\n'
        'if [ "$host" = "a.example" ]; then echo \'{"Username":"du","Secret":"ds"}\'; '
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    ))
    path = write(tmp_path / "config.json", {
        "auths": {"a.example": {}, "b.example": {"auth": b64("bu:bp")}}, "credsStore": "desk",
    })
    assert find_credentials("a.example", str(path)).username == "du"
    assert find_credentials("b.example", str(path)).username == "bu"  # helper has none: file entry
    missing = write(tmp_path / "m.json", {"auths": {"b.example": {"auth": b64("bu:bp")}}, "credsStore": "nonexistent"})
    assert find_credentials("b.example", str(missing)).username == "bu"  # absent helper: warning only


def test_failing_helper_is_an_error(tmp_path: Path, path_with: Path) -> None:
    helper(path_with, "broken", "cat >/dev/null\necho 'keychain locked' >&2\nexit 3\n")
    path = write(tmp_path / "config.json", {"credHelpers": {"h.example": "broken"}})
    with pytest.raises(AuthFileError, match=r"docker-credential-broken failed for h\.example \(exit 3: keychain locked\)"):
        find_credentials("h.example", str(path))


def test_default_search_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        "REGISTRY_AUTH_FILE": str(tmp_path / "env.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "DOCKER_CONFIG": str(tmp_path / "dockercfg"),
        "HOME": str(home),
    }
    assert default_auth_files(env, home) == [
        tmp_path / "env.json",
        tmp_path / "run/containers/auth.json",
        home / ".config/containers/auth.json",
        tmp_path / "dockercfg/config.json",
        home / ".docker/config.json",
    ]
    write(home / ".docker/config.json", {"auths": {"h": {"auth": b64("docker:1")}, "only-docker": {"auth": b64("d:2")}}})
    write(home / ".config/containers/auth.json", {"auths": {"h": {"auth": b64("podman:1")}}})
    assert find_credentials("h", env=env, home=home).username == "podman"  # earlier file wins
    assert find_credentials("only-docker", env=env, home=home).username == "d"  # later file still searched
    write(tmp_path / "env.json", {"auths": {"h": {"auth": b64("env:1")}}})
    assert find_credentials("h", env=env, home=home).username == "env"
    assert find_credentials("nowhere", env=env, home=home) is None


def test_namespace_entries_most_specific_first(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json", {"auths": {
        "reg.example:5000": {"auth": b64("host:h")},
        "reg.example:5000/org": {"auth": b64("org:o")},
        "reg.example:5000/org/app": {"auth": b64("app:a")},
        "reg.example:5000/empty": {},
        "other.example/org": {"auth": b64("elsewhere:e")},
    }})
    files = AuthFiles(str(path))
    assert files.find("reg.example:5000", "org/app").username == "app"
    assert files.find("reg.example:5000", "org/app/sub").username == "app"
    assert files.find("reg.example:5000", "org/tool").username == "org"
    assert files.find("reg.example:5000", "organisation/app").username == "host"  # a prefix is not a namespace
    assert files.find("reg.example:5000", "empty/app").username == "host"  # placeholder entry skipped
    assert files.find("reg.example:5000").username == "host"  # the catalog: the host's account
    assert files.find("other.example", "org/app").username == "elsewhere"
    assert files.find("other.example", "team/app") is None


def test_split_key_reads_url_paths_as_docker_host_entries() -> None:
    assert split_key("reg.example:5000/org/app/") == ("reg.example:5000", "org/app")
    assert split_key("https://index.docker.io/v1/") == ("index.docker.io", "")
    assert split_key("Reg.Example") == ("reg.example", "")


def test_namespace_entry_beats_creds_store_and_helpers_run_once_per_host(tmp_path: Path, path_with: Path) -> None:
    calls = tmp_path / "calls"
    helper(path_with, "desk", f"read host\necho \"$host\" >> {calls}\necho '{{\"Username\":\"du\",\"Secret\":\"ds\"}}'\n")
    path = write(tmp_path / "config.json", {
        "auths": {"a.example/org": {"auth": b64("org:o")}}, "credsStore": "desk",
    })
    files = AuthFiles(str(path))
    assert files.find("a.example", "org/app").username == "org"
    assert [files.find("a.example", f"team/app{i}").username for i in range(3)] == ["du"] * 3
    assert calls.read_text().splitlines() == ["a.example"]


def test_scope_repository_prefers_the_pushed_one() -> None:
    assert scope_repository(["repository:src/app:pull", "repository:dst/app:pull,push"]) == "dst/app"
    assert scope_repository(["repository:src/app:pull"]) == "src/app"
    assert scope_repository(["registry:catalog:*"]) == ""
    assert scope_repository([]) == ""
