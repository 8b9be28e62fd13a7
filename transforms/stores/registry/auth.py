"""How a registry wants to be authenticated, and the credentials and tokens that satisfy it.

A 401 carries ``WWW-Authenticate`` (possibly several challenges). ``Basic`` → resend
with the credentials from the auth files. ``Bearer`` → fetch a token from the realm
for exactly the scopes the operation needs (``pull`` to read, ``pull,push`` to write,
plus ``pull`` on the source of a mount, ``registry:catalog:*`` to list), anonymously
when there are no credentials. Tokens are cached per scope set until they expire, and
once a host has challenged us the right credentials are sent up front, which saves a
round trip on every later request. Credentials never appear in messages, logs or
``repr``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry.authfile import AuthFiles, Credentials
from imagepush.transforms.stores.registry.errors import (
    AuthenticationError,
    RegistryError,
    describe,
    registry_error_detail,
)
from imagepush.transforms.stores.registry.streams import StreamedResponse, read_capped
from imagepush.transforms.stores.registry.transport import Transport

log = logging.getLogger(__name__)

#: Token lifetimes below this are raised to it (docs/formats.md §10: default and minimum 60 s).
MIN_TOKEN_LIFETIME = 60
#: A cached token this close to expiry is replaced rather than sent.
TOKEN_EXPIRY_MARGIN = 10.0
#: containers/image caps token responses at 1 MiB; a larger answer is not a token.
TOKEN_RESPONSE_LIMIT = 1 << 20
#: Sent as OAuth2 ``client_id`` when trading an identity token for an access token.
CLIENT_ID = "imagepush"
CATALOG_SCOPE = "registry:catalog:*"

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def scope_repository(scopes: Iterable[str]) -> str:
    """The repository whose credentials a request with ``scopes`` uses; ``""`` for none.

    A mount asks for push on the destination and pull on the source in one token: the
    account that may push is the one to use.
    """
    repositories = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            if "push" in actions.split(","):
                return name
            repositories.append(name)
    return repositories[0] if repositories else ""


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lower-case scheme and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> list[str]:
        return (self.params.get("scope") or "").split()


def parse_challenges(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges: ``Bearer realm="…",service="…", Basic realm="…"``.

    Values may be quoted (with backslash escapes) or bare tokens; a token not followed
    by ``=`` starts a new challenge. Malformed trailing text is ignored rather than
    fatal: a registry's odd header should not hide the challenges we can use.
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        m = _TOKEN_RE.match(header, pos)
        if not m:
            break
        name, pos = m.group(0), m.end()
        probe = pos
        while probe < n and header[probe] in " \t":
            probe += 1
        if probe < n and header[probe] == "=" and challenges:
            pos = probe + 1
            while pos < n and header[pos] in " \t":
                pos += 1
            if pos < n and header[pos] == '"':
                pos += 1
                chars: list[str] = []
                while pos < n and header[pos] != '"':
                    if header[pos] == "\\" and pos + 1 < n:
                        pos += 1
                    chars.append(header[pos])
                    pos += 1
                pos += 1  # closing quote
                value = "".join(chars)
            else:
                end = pos
                while end < n and header[end] not in ", \t":
                    end += 1
                value, pos = header[pos:end], end
            params[name.lower()] = value
        else:
            params = {}
            challenges.append(Challenge(name.lower(), params))
    return challenges


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """The authentication state of one registry host: its challenge, credentials and tokens.

    Thread-safe, and per client: two runs in one process cannot see each other's
    credentials. ``credentials``, when given, are used for every repository (tests,
    embedders); otherwise the auth files are read on first need.
    """

    def __init__(
        self, host: str, transport: Transport, options: StoreOptions, credentials: Credentials | None = None
    ) -> None:
        self.host = host
        self._transport = transport
        self._options = options
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._credentials = credentials
        self._auth_files: AuthFiles | None = None
        self._repository_credentials: dict[str, Credentials | None] = {}

    def credentials(self, scopes: Sequence[str] = ()) -> Credentials | None:
        """Credentials for the repository ``scopes`` act on (or the host), from the auth files.

        The files are read once per client and each repository looked up once: auth.json
        may hold a different account per namespace of one registry.
        """
        if self._credentials is not None:
            return self._credentials
        given = dict(self._options.host_credentials).get(self.host)
        if given is not None:
            return given
        repository = scope_repository(scopes)
        with self._lock:
            if repository not in self._repository_credentials:
                if self._auth_files is None:
                    self._auth_files = AuthFiles(dict(self._options.host_authfiles).get(self.host,
                                                                                        self._options.authfile))
                self._repository_credentials[repository] = self._auth_files.find(self.host, repository)
            return self._repository_credentials[repository]

    def learn(self, headers: Mapping[str, str]) -> Challenge | None:
        """Remember the most capable challenge of a 401 (Bearer over Basic)."""
        challenges = parse_challenges(headers.get("WWW-Authenticate", ""))
        chosen = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if chosen is None:
            chosen = next((c for c in challenges if c.scheme == "basic"), None)
        if chosen is not None:
            with self._lock:
                self._challenge = Challenge(chosen.scheme, {k: v for k, v in chosen.params.items() if k != "error"})
        return chosen

    def for_request(self, scopes: Sequence[str], where: str) -> "RequestAuthorization":
        return RequestAuthorization(self, list(scopes), where)

    def header(self, scopes: Sequence[str], where: str) -> str | None:
        """What to send up front, once the host has said how it authenticates."""
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(scopes)
            if creds is None or not creds.has_password:
                return None
            return _basic(creds)
        return f"Bearer {self._token(challenge, scopes, where)}"

    def renew(self, headers: Mapping[str, str], scopes: list[str], body: bytes, where: str) -> list[str]:
        """After a 401: pick the challenge, and make sure the next attempt can succeed.

        Returns the scopes to ask for from now on: the request's, widened by the ones
        the challenge names.
        """
        challenge = self.learn(headers)
        if challenge is None:
            code, message = registry_error_detail(body)
            raise AuthenticationError(
                f"{where}: authentication required with an unsupported scheme "
                f"({describe(401, code or 'UNAUTHORIZED', message)})",
                status=401, code=code,
            )
        if challenge.scheme == "basic":
            creds = self.credentials(scopes)
            if creds is None or not creds.has_password:
                raise self.failed(body, where, scopes)
            return scopes
        wider = sorted(set(scopes) | set(challenge.scopes))
        # A cached token was refused (expired early, or too narrow): fetch a fresh one.
        self._token(Challenge(challenge.scheme, challenge.params), wider, where, refresh=True)
        return wider

    def failed(self, body: bytes, where: str, scopes: Sequence[str]) -> AuthenticationError:
        """The error for a 401 that credentials did not (or could not) answer."""
        code, message = registry_error_detail(body)
        code = code or "UNAUTHORIZED"
        creds = self.credentials(scopes)
        if creds is None:
            return AuthenticationError(
                f"{where}: authentication required ({code}); no credentials for {self.host} in the auth files",
                status=401, code=code,
            )
        return AuthenticationError(
            f"{where}: authentication failed ({code}) with the credentials from {creds.origin}",
            status=401, code=code,
        )

    def _token(self, challenge: Challenge, scopes: Sequence[str], where: str, *, refresh: bool = False) -> str:
        key = frozenset(scopes)
        with self._token_lock:
            cached = self._tokens.get(key)
            if cached is not None and not refresh and cached.expires_at - TOKEN_EXPIRY_MARGIN > time.monotonic():
                return cached.value
            token = self._fetch_token(challenge, sorted(key), where)
            self._tokens[key] = token
            return token.value

    def _fetch_token(self, challenge: Challenge, scopes: list[str], where: str) -> _Token:
        """Trade credentials (or nothing: anonymous) for a bearer token at the realm."""
        realm = challenge.params["realm"]
        service = challenge.params.get("service")
        creds = self.credentials(scopes)
        realm_host = urlsplit(realm).netloc or realm
        started = time.monotonic()
        response: StreamedResponse | None = None
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": CLIENT_ID,
                    "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            response = self._transport.send("POST", realm, where=where, what="token request", body=form, limited=False)
            if response.status_code in (404, 405):  # realm without OAuth2 support: plain GET below
                response.close()
                response = None
        if response is None:
            params: list[tuple[str, str]] = [("service", service)] if service else []
            params += [("scope", s) for s in scopes]
            headers: dict[str, str] = {}
            if creds is not None and creds.has_password:
                params.append(("account", creds.username))
                headers["Authorization"] = _basic(creds)
            response = self._transport.send(
                "GET", realm, where=where, what="token request", headers=headers, params=params, limited=False
            )
        try:
            body = read_capped(response.response, TOKEN_RESPONSE_LIMIT)
        finally:
            response.close()
        status = response.status_code
        if status in (401, 403):
            code, message = registry_error_detail(body)
            detail = describe(status, code or "UNAUTHORIZED", message)
            who = "authentication failed" if creds is not None else "anonymous access refused"
            raise AuthenticationError(
                f"{where}: {who} at token server {realm_host} ({detail})", status=status, code=code
            )
        if status != 200:
            code, message = registry_error_detail(body)
            raise RegistryError(
                f"{where}: token server {realm_host} answered {describe(status, code, message, body)}",
                status=status, code=code,
            )
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        value = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{where}: token server {realm_host} answered without a token")
        try:
            lifetime = int(doc.get("expires_in") or MIN_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = MIN_TOKEN_LIFETIME
        lifetime = max(MIN_TOKEN_LIFETIME, lifetime)
        log.debug("%s: got a token for %s (valid %ds)", where, " ".join(scopes) or "no scope", lifetime)
        return _Token(value, started + lifetime)


class RequestAuthorization:
    """One request's side of authentication: its scopes, widened when a challenge asks for more.

    Implements :class:`~imagepush.transforms.stores.registry.transport.Authorization`.
    """

    def __init__(self, authenticator: Authenticator, scopes: list[str], where: str) -> None:
        self._authenticator = authenticator
        self.scopes = scopes
        self._where = where

    def header(self) -> str | None:
        return self._authenticator.header(self.scopes, self._where)

    def renew(self, headers: Mapping[str, str], body: bytes) -> None:
        self.scopes = self._authenticator.renew(headers, self.scopes, body, self._where)


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")
