"""Registry credentials from docker ``config.json`` / containers ``auth.json``.

Users already log in with ``docker login``, ``podman login`` or ``skopeo login``; reading
the files those tools write (and running the credential helpers they name) means
imagepush needs no credential handling of its own and never stores a secret anywhere.

Both files share one shape::

    {"auths": {"HOST[:PORT]": {"auth": base64("user:password")}
                              | {"username": ..., "password": ...}
                              | {"identitytoken": ...}},
     "credHelpers": {"HOST[:PORT]": "NAME"},     # run docker-credential-NAME for that host
     "credsStore": "NAME"}                        # docker only: helper for every other host

containers ``auth.json`` may also key ``auths`` by namespace (``HOST/ORG`` or
``HOST/ORG/REPO``): the most specific key that contains the repository wins, so one run
can read two organisations of one registry with two robot accounts. For one repository
we look, in order, at ``credHelpers[host]``, a namespace entry of ``auths``, then
``credsStore``, then the host's ``auths`` entry; docker writes empty ``auths`` entries as
placeholders when a helper holds the secret, so an entry without any credential is
skipped. Without an explicit path the files are searched where podman/skopeo and docker
keep them, first match wins. :class:`AuthFiles` reads them once and runs each helper at
most once per host, however many repositories a sync visits.

Secrets never reach a log line, an exception message or a ``repr``: :class:`Credentials`
masks them, and helper failures report only the helper's name and exit status.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from imagepush.transforms.errors import AUTH
from imagepush.transforms.stores.base import StoreError

log = logging.getLogger(__name__)

#: A credential helper must answer quickly; a hung keychain prompt must not hang a worker.
HELPER_TIMEOUT = 30.0
#: docker-credential helpers use this user name to say "the secret is an identity token".
TOKEN_USERNAME = "<token>"
#: Docker Hub's credentials are stored under any of these names (docker writes the v1 URL).
DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_MASK = "***"


class AuthFileError(StoreError):
    kind = AUTH

    """An auth file or credential helper that exists but cannot be used."""


@dataclass(frozen=True)
class Credentials:
    """A user name with a password, or an OAuth2 identity (refresh) token.

    ``repr``/``str`` show the user name only; the secrets are masked so a credentials
    object can appear in a log or traceback without leaking anything.
    """

    username: str = ""
    password: str = ""
    identity_token: str = ""
    #: Where they came from (file path or ``helper NAME``), for messages.
    origin: str = ""

    @property
    def has_password(self) -> bool:
        return bool(self.username or self.password)

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"]
        if self.password:
            parts.append(f"password={_MASK}")
        if self.identity_token:
            parts.append(f"identity_token={_MASK}")
        if self.origin:
            parts.append(f"origin={self.origin!r}")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__


def default_auth_files(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The files podman/skopeo and docker read, in the order containers/image searches them."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(home / ".config" / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    paths.append(home / ".docker" / "config.json")
    return paths


def normalize_key(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``: the spellings docker and podman write.

    Old docker versions stored keys as URLs (``https://index.docker.io/v1/``); both
    tools still match such keys against a bare host, and so do we.
    """
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.lower().startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.split("/", 1)[0].lower()


def split_key(key: str) -> tuple[str, str]:
    """An ``auths`` key as (host, namespace): ``reg:5000/org/app`` -> (``reg:5000``, ``org/app``).

    URL-shaped keys (``https://index.docker.io/v1/``) are docker's host entries: their
    path is an API version, not a namespace.
    """
    stripped = key.strip()
    url_shaped = stripped.lower().startswith(("https://", "http://"))
    host = normalize_key(stripped)
    if url_shaped:
        return host, ""
    _, _, path = stripped.partition("/")
    return host, path.strip("/")


def _in_namespace(repository: str, namespace: str) -> bool:
    return repository == namespace or repository.startswith(namespace + "/")


def _load(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None if it does not exist. A broken file is an error, not 'no creds'."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        # The parser's message could quote file content (a secret); say only where.
        raise AuthFileError(f"auth file {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise AuthFileError(f"auth file {path} is not a JSON object")
    return data


def _decode_entry(entry: Any, where: str) -> Credentials | None:
    """Credentials from one ``auths`` entry; None for docker's empty placeholders."""
    if not isinstance(entry, dict):
        raise AuthFileError(f"{where}: entry is not an object")
    identity = entry.get("identitytoken") or ""
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth") or ""
    if encoded:
        if not isinstance(encoded, str):
            raise AuthFileError(f"{where}: 'auth' is not a string")
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFileError(f"{where}: 'auth' is not base64 of user:password") from None
        if ":" not in decoded:
            raise AuthFileError(f"{where}: 'auth' does not decode to user:password")
        username, password = decoded.split(":", 1)
    for name, value in (("username", username), ("password", password), ("identitytoken", identity)):
        if not isinstance(value, str):
            raise AuthFileError(f"{where}: '{name}' is not a string")
    if not (username or password or identity):
        return None
    return Credentials(username=username, password=password, identity_token=identity, origin=where)


def run_helper(name: str, host: str) -> Credentials | None:
    """Ask ``docker-credential-NAME get`` for ``host``; None when it has nothing for it.

    The helper protocol: the server address on stdin, ``{"ServerURL","Username","Secret"}``
    on stdout, a non-zero exit with "credentials not found" when it knows nothing. A
    missing helper is reported as a warning and treated as "nothing", as docker does,
    so a config copied from a desktop machine does not break headless runs.
    """
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=host.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        log.warning("credential helper %s is not installed; no credentials for %s from it", program, host)
        return None
    except subprocess.TimeoutExpired:
        raise AuthFileError(f"credential helper {program} did not answer within {HELPER_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise AuthFileError(f"credential helper {program} could not run: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        # stdout may hold a partial secret; stderr is the helper's message to the user.
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        text = (message[0] if message else "")[:200]
        if "not found" in (text + proc.stdout.decode(errors="replace")).lower():
            log.debug("credential helper %s has no credentials for %s", program, host)
            return None
        raise AuthFileError(f"credential helper {program} failed for {host} (exit {proc.returncode}: {text})")
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        raise AuthFileError(f"credential helper {program} answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise AuthFileError(f"credential helper {program} answered something that is not a JSON object")
    username = answer.get("Username") or ""
    secret = answer.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthFileError(f"credential helper {program} answered a non-string Username or Secret")
    if not (username or secret):
        return None
    origin = f"helper {program}"
    if username == TOKEN_USERNAME:
        return Credentials(identity_token=secret, origin=origin)
    return Credentials(username=username, password=secret, origin=origin)


def credentials_from_config(
    data: Mapping[str, Any],
    host: str,
    where: str,
    repository: str = "",
    helper: Callable[[str, str], Credentials | None] = run_helper,
) -> Credentials | None:
    """Credentials for ``repository`` on ``host`` from one parsed file (order: module docstring)."""
    wanted = normalize_key(host)
    hub = wanted in DOCKER_HUB_KEYS
    aliases = set(DOCKER_HUB_KEYS) if hub else {wanted}
    # Helpers know Docker Hub by the address docker login used for it.
    server = "https://index.docker.io/v1/" if hub else host
    helpers = data.get("credHelpers") or {}
    if not isinstance(helpers, dict):
        raise AuthFileError(f"{where}: 'credHelpers' is not an object")
    for key, name in helpers.items():
        if normalize_key(key) in aliases and name:
            return helper(str(name), server)
    auths = data.get("auths") or {}
    if not isinstance(auths, dict):
        raise AuthFileError(f"{where}: 'auths' is not an object")
    scoped: list[tuple[int, str]] = []
    hosts: list[str] = []
    for key in auths:
        key_host, namespace = split_key(key)
        if key_host not in aliases:
            continue
        if not namespace:
            hosts.append(key)
        elif repository and _in_namespace(repository, namespace):
            scoped.append((-len(namespace), key))
    for _, key in sorted(scoped):  # the longest namespace first
        found = _decode_entry(auths[key], f"{where} auths[{key!r}]")
        if found is not None:
            return found
    store = data.get("credsStore")
    if store:
        found = helper(str(store), server)
        if found is not None:
            return found
    # An exact key beats a URL-shaped spelling of the same host.
    for key in sorted(hosts, key=lambda k: k != host):
        found = _decode_entry(auths[key], f"{where} auths[{key!r}]")
        if found is not None:
            return found
    return None


class AuthFiles:
    """The auth files of one run, read once; credentials looked up per repository.

    With ``authfile`` only that file is read (it must exist, since the user named it);
    otherwise :func:`default_auth_files` are tried in order and the first file that has
    credentials wins. ``env``/``home`` replace the process environment and home
    directory for locating files (tests); helpers always run in the real environment.
    Not thread-safe: its owner serialises lookups.
    """

    def __init__(
        self, authfile: str | None = None, *, env: Mapping[str, str] | None = None, home: Path | None = None
    ) -> None:
        self._files: list[tuple[Path, dict[str, Any]]] = []
        if authfile:
            path = Path(authfile).expanduser()
            data = _load(path)
            if data is None:
                raise AuthFileError(f"auth file {path} does not exist")
            self._files.append((path, data))
        else:
            for path in default_auth_files(env, home):
                data = _load(path)
                if data is not None:
                    self._files.append((path, data))
        self._helper_answers: dict[tuple[str, str], Credentials | None] = {}

    def _helper(self, name: str, server: str) -> Credentials | None:
        key = (name, server)
        if key not in self._helper_answers:
            self._helper_answers[key] = run_helper(name, server)
        return self._helper_answers[key]

    def find(self, host: str, repository: str = "") -> Credentials | None:
        """Credentials for ``repository`` (``""``: the host itself) or None for anonymous access."""
        for path, data in self._files:
            found = credentials_from_config(data, host, str(path), repository, self._helper)
            if found is not None:
                log.debug("using credentials for %s from %s", "/".join(filter(None, (host, repository))), found.origin)
                return found
        log.debug("no credentials for %s; accessing it anonymously", "/".join(filter(None, (host, repository))))
        return None


def find_credentials(
    host: str,
    authfile: str | None = None,
    *,
    repository: str = "",
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Credentials | None:
    """Credentials for ``repository`` on ``host`` (``host[:port]``), or None: see :class:`AuthFiles`."""
    return AuthFiles(authfile, env=env, home=home).find(host, repository)
