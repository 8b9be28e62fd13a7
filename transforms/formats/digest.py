"""Content digests as used by OCI and Docker (``algorithm:encoded``)."""

from __future__ import annotations

import hashlib
import re
from typing import Callable

from imagepush.transforms.errors import INVALID_INPUT, ImagepushError

SHA256 = "sha256"
SHA512 = "sha512"

#: ``algorithm:encoded`` in the OCI digest grammar: only the shape of a digest (``repo:tag``
#: can have it too); :func:`validate` also checks the algorithm and the encoded length.
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_ENCODED_LEN = {SHA256: 64, SHA512: 128}
_HEX_RE = re.compile(r"^[a-f0-9]+$")


class DigestError(ImagepushError, ValueError):
    kind = INVALID_INPUT

    """A string that is not a digest we can verify."""


def validate(digest: str) -> str:
    """Return ``digest`` if it is well formed and of an algorithm we can hash.

    Registered algorithms must have exactly the registered length of lowercase hex;
    a digest that merely looks right could otherwise name a path outside a blob store.
    """
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise DigestError(f"invalid digest {digest!r}")
    algorithm, encoded = digest.split(":", 1)
    if algorithm not in _ENCODED_LEN:
        raise DigestError(f"unsupported digest algorithm {algorithm!r} in {digest!r}")
    if len(encoded) != _ENCODED_LEN[algorithm] or not _HEX_RE.match(encoded):
        raise DigestError(f"invalid {algorithm} digest {digest!r}")
    return digest


def split(digest: str) -> tuple[str, str]:
    """``sha256:abc`` -> ``("sha256", "abc")`` after validation."""
    algorithm, encoded = validate(digest).split(":", 1)
    return algorithm, encoded


def checked(digest: str, where: str, error: Callable[[str], Exception]) -> tuple[str, str]:
    """:func:`split` for a store: a bad digest is raised as ``error``, prefixed with ``where`` when given.

    Stores name files and URLs after the digests they are asked for, so they check each
    one first; a malformed digest is then a bad request to that store, reported as the
    store's own error (``error``: formats cannot import the stores' error classes).
    """
    try:
        return split(digest)
    except DigestError as exc:
        raise error(f"{where}: {exc}" if where else str(exc)) from None


def hasher(digest: str) -> "hashlib._Hash":
    """A fresh hash object of the algorithm ``digest`` names."""
    return hashlib.new(split(digest)[0])


def of_bytes(data: bytes, algorithm: str = SHA256) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def matches(digest: str, data: bytes) -> bool:
    algorithm, encoded = split(digest)
    return hashlib.new(algorithm, data).hexdigest() == encoded


def of_hasher(h: "hashlib._Hash") -> str:
    """The digest a finished streaming hash names: for blobs checked as they stream past."""
    return f"{h.name}:{h.hexdigest()}"
