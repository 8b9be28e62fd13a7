"""Reading manifests from a registry, and what an answer must satisfy to be the one asked for.

A registry names what it sends (``Docker-Content-Digest``) and we may name what we
asked for (a digest reference); the bytes must match both, except that old registries
name signed schema1 by its whole file rather than by its payload. Writing, a registry
verifies schema1 signatures, so unsigned schema1 is signed before it is sent.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.asymmetric import ec

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.manifest import detect_media_type, manifest_digest
from imagepush.transforms.formats.schema1_sign import sign_schema1
from imagepush.transforms.stores.base import ManifestBlob, StoreError
from imagepush.transforms.stores.registry.auth import pull_scope
from imagepush.transforms.stores.registry.client import RegistryClient
from imagepush.transforms.stores.registry.errors import ResponseTooLarge
from imagepush.transforms.stores.registry.streams import Reply

#: Distribution and containers/image cap manifests at 4 MiB; a larger body is not one.
MANIFEST_LIMIT = 4 << 20
ACCEPT = ", ".join(mt.ACCEPT_MANIFESTS)


def fetch_manifest(
    client: RegistryClient, repository: str, reference: str, expected: str | None, where: str
) -> ManifestBlob:
    """The manifest ``reference`` names, checked against the registry's digest and ``expected``."""
    what = f"manifest {reference}"
    try:
        # request(), not open(): an answer cut mid-body is asked for again.
        reply = client.request(
            "GET", f"/v2/{repository}/manifests/{reference}", scopes=[pull_scope(repository)],
            where=where, what=what, headers={"Accept": ACCEPT}, limit=MANIFEST_LIMIT,
        )
    except ResponseTooLarge:
        raise StoreError(f"{where}: {what} is larger than {MANIFEST_LIMIT >> 20} MiB") from None
    data, headers = reply.content, reply.headers
    media_type = _media_type(data, headers.get("Content-Type"), f"{where}: {what}")
    try:
        digest = manifest_digest(data, media_type)
    except FormatError as exc:
        raise StoreError(f"{where}: {what} cannot be digested ({exc})") from None
    announced = headers.get("Docker-Content-Digest")
    if announced and announced != digest and not _whole_file_digest(announced, data, media_type):
        raise StoreError(f"{where}: {what} has digest {digest} but the registry says {announced}")
    if expected is not None and expected != digest and not _whole_file_digest(expected, data, media_type):
        raise StoreError(f"{where}: {what} has digest {digest}, not the digest asked for")
    return ManifestBlob(data=data, media_type=media_type, digest=digest)


def head_manifest(client: RegistryClient, repository: str, reference: str, where: str) -> Reply | None:
    """The registry's answer about a manifest without its body; None when there is none."""
    reply = client.request(
        "HEAD", f"/v2/{repository}/manifests/{reference}", scopes=[pull_scope(repository)],
        where=where, what=f"manifest {reference}", headers={"Accept": ACCEPT}, ok=(200, 404),
    )
    return reply if reply.status == 200 else None


def _media_type(data: bytes, content_type: str | None, where: str) -> str:
    """A known Content-Type, else the type detected from the bytes (CDNs send generic types)."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in mt.MANIFEST_TYPES:
        return declared
    try:
        return detect_media_type(data, declared)
    except FormatError as exc:
        raise StoreError(f"{where}: answered something that is not a manifest ({exc})") from None


def _whole_file_digest(candidate: str, data: bytes, media_type: str) -> bool:
    """True for schema1 named by the digest of its signed bytes rather than of its payload.

    Only old registries do that; the bytes still match what was named, so it is no
    corruption, while the canonical digest stays the payload digest.
    """
    if not mt.is_schema1(media_type):
        return False
    try:
        return digestlib.matches(candidate, data)
    except digestlib.DigestError:
        return False


class Schema1Signer:
    """Signs unsigned schema1 manifests for a PUT, with one ephemeral key made on first need.

    Distribution refuses schema1 without a valid signature, yet stores (and storage trees
    hold) only the unsigned payload. The signature keeps the payload, so the digest the
    registry answers is the one we planned. The key lives in this object only: never
    written, never pickled (stores pickle their location and options), and not made at
    all by a run without unsigned schema1.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: ec.EllipticCurvePrivateKey | None = None

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        with self._lock:
            if self._key is None:
                self._key = ec.generate_private_key(ec.SECP256R1())
            return self._key

    def for_put(self, data: bytes, media_type: str, where: str) -> tuple[bytes, str]:
        """The bytes and Content-Type to PUT: unsigned schema1 signed, everything else as given.

        Signed schema1 goes verbatim: its signatures are part of what was copied. Nothing
        beyond what signing needs is checked here; whether the manifest is acceptable is
        the registry's answer to give.
        """
        if not mt.is_schema1(media_type):
            return data, media_type
        try:
            if "signatures" in jsonio.load_object(data, "schema1 manifest"):
                return data, media_type
            return sign_schema1(data, self._signing_key()), mt.DOCKER_SCHEMA1_SIGNED
        except FormatError as exc:
            raise StoreError(f"{where}: cannot sign schema1 manifest for the registry ({exc})") from None
