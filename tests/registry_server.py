"""Real Docker Distribution registries (and a token server) for tests, on loopback only.

Tests talk to the genuine ``docker-registry`` binary rather than a mock, because the
registry quirks we must survive (relative ``Link`` and ``Location`` headers, schema1
re-signing, mount answers) are exactly what a mock would get wrong. Each registry is a
subprocess on a free ``127.0.0.1`` port with its storage in a temporary directory, and is
stopped by its PID.

The token server is a small ``http.server`` that signs ES256 JWTs with a throwaway
key whose self-signed certificate is the registry's ``rootcertbundle``; it records
each token request so tests can see what a client asked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import requests

if TYPE_CHECKING:
    import fsspec

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _probe(url: str) -> None:
    """One GET that ignores proxy settings from the environment (loopback only)."""
    with requests.Session() as session, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unverified HTTPS to our own test certificate
        session.trust_env = False
        session.get(url, timeout=1, verify=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """An htpasswd file with bcrypt hashes, the only kind Distribution accepts."""
    import bcrypt

    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")


def write_tls_files(directory: Path, host: str = LOOPBACK) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (IP SAN) and its key, as PEM files.

    The certificate is its own CA, so the same file serves as the client's ``ca_bundle``.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagepush test registry")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "registry.crt", directory / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class TokenRequest:
    """What the token server saw: method, scopes, service, and the Basic user (if any)."""

    method: str
    scopes: list[str]
    service: str | None
    user: str | None
    grant_type: str | None = None


@dataclass
class TokenServer:
    """An ES256 JWT issuer for Distribution's ``auth.token`` on a loopback port.

    Authenticated users (Basic, or an OAuth2 refresh token equal to ``refresh_tokens[user]``)
    get every action they ask for; anonymous requests get only ``pull`` on repositories
    listed in ``public``.
    """

    users: dict[str, str]
    issuer: str = "imagepush-test-issuer"
    service: str = "imagepush-test-registry"
    public: tuple[str, ...] = ()
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    expires_in: int = 300
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagepush test token signer")])
        now = datetime.now(timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._cert_der_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/token"

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._cert_der_b64]}
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.expires_in,
            "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if user is None:
                wanted = [a for a in wanted if a == "pull"] if name in self.public else []
            if wanted:
                access.append({"type": kind, "name": name, "actions": wanted})
        return access

    def start(self) -> "TokenServer":
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _basic_user(self) -> tuple[str | None, bool]:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None, True
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                return (user, True) if server_ref.users.get(user) == pw else (None, False)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                query = parse_qs(urlsplit(self.path).query)
                scopes = query.get("scope", [])
                user, ok = self._basic_user()
                server_ref.requests.append(TokenRequest("GET", scopes, (query.get("service") or [None])[0], user))
                if not ok:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                token = server_ref.sign(user or "", server_ref._grant(user, scopes))
                self._answer(200, {"access_token": token, "expires_in": server_ref.expires_in})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                scopes = " ".join(form.get("scope", [])).split()
                grant = (form.get("grant_type") or [None])[0]
                refresh = (form.get("refresh_token") or [None])[0]
                user = next((u for u, t in server_ref.refresh_tokens.items() if t == refresh), None)
                server_ref.requests.append(
                    TokenRequest("POST", scopes, (form.get("service") or [None])[0], user, grant)
                )
                if grant != "refresh_token" or user is None:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                self._answer(200, {"token": server_ref.sign(user, server_ref._grant(user, scopes)), "expires_in": 30})

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # keep-alive handler threads must not delay teardown
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Registry:
    """One running ``docker-registry serve`` process."""

    root: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    #: The certificate (its own CA) when the registry serves HTTPS.
    certificate: Path | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def storage(self) -> Path:
        """The ``rootdirectory``; the tree is under ``docker/registry/v2``."""
        return self.root / "storage"

    def kill(self) -> None:
        """Stop at once (SIGKILL to its PID), as a crash would: in-flight requests break off."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again from the same config: same port, storage and upload-state secret."""
        self.kill()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.root / "config.yml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                _probe(f"{'https' if self.certificate else 'http'}://{self.host}/v2/")
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not restart: {self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_registry(
    root: Path,
    *,
    htpasswd: dict[str, str] | None = None,
    token: TokenServer | None = None,
    schema1: bool = False,
    catalog_max_entries: int | None = None,
    tls: bool = False,
) -> Registry:
    """Start Distribution on a free loopback port and wait until ``/v2/`` answers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage").mkdir(exist_ok=True)
    last_error = ""
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                # As in the configuration the Debian package ships.
                "cache": {"blobdescriptor": "inmemory"},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"{LOOPBACK}:{port}", "secret": uuid.uuid4().hex},
        }
        if catalog_max_entries is not None:
            config["catalog"] = {"maxentries": catalog_max_entries}
        certificate = None
        if tls:
            certificate, key = write_tls_files(root)
            config["http"]["tls"] = {"certificate": str(certificate), "key": str(key)}
        if htpasswd is not None:
            path = root / "htpasswd"
            write_htpasswd(path, htpasswd)
            config["auth"] = {"htpasswd": {"realm": "imagepush-test", "path": str(path)}}
        elif token is not None:
            bundle = root / "token-signer.pem"
            bundle.write_bytes(token.cert_pem)
            config["auth"] = {
                "token": {
                    "realm": token.realm, "service": token.service, "issuer": token.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        config_path = root / "config.yml"
        # JSON is YAML; it avoids quoting mistakes in generated config.
        config_path.write_text(json.dumps(config, indent=1))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        if schema1:
            env["REGISTRY_COMPATIBILITY_SCHEMA1_ENABLED"] = "true"
        log_path = root / "registry.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["docker-registry", "serve", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        registry = Registry(root, port, process, log_path, certificate)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                _probe(f"{'https' if tls else 'http'}://{registry.host}/v2/")
                return registry
            except requests.RequestException:
                time.sleep(0.05)
        registry.stop()
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start: {last_error}")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_registry_storage(fs: "fsspec.AbstractFileSystem", root: str, name: str,
                           blobs: list[bytes], manifests: list[bytes]) -> None:
    """Distribution's storage tree after a push of ``manifests`` (the root last) tagged ``name``.

    Blobs live once under ``blobs``; a repository links the layers and manifests it
    holds, and a tag links its current manifest and every manifest it pointed at.
    """
    repository, tag = name.rsplit(":", 1)
    v2 = f"{root}/docker/registry/v2"
    repo = f"{v2}/repositories/{repository}"

    def put(path: str, data: bytes) -> None:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    for data in (*blobs, *manifests):
        digest = _sha256(data)
        put(f"{v2}/blobs/sha256/{digest[7:9]}/{digest[7:]}/data", data)
    for data in blobs:
        put(f"{repo}/_layers/sha256/{_sha256(data)[7:]}/link", _sha256(data).encode())
    for data in manifests:
        put(f"{repo}/_manifests/revisions/sha256/{_sha256(data)[7:]}/link", _sha256(data).encode())
    root_digest = _sha256(manifests[-1])
    put(f"{repo}/_manifests/tags/{tag}/current/link", root_digest.encode())
    put(f"{repo}/_manifests/tags/{tag}/index/sha256/{root_digest[7:]}/link", root_digest.encode())
