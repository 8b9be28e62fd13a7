"""``transport:location[:ref]`` image references, parsed as skopeo does."""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagepush.transforms.errors import INVALID_INPUT
from imagepush.transforms.stores.base import StoreError

TRANSPORTS = ("docker", "oci", "oci-archive", "dir", "docker-archive", "registry-storage")
#: Transports whose location holds one image at most.
SINGLE_IMAGE = frozenset({"dir"})

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")


class ReferenceError(StoreError):
    kind = INVALID_INPUT

    """A reference string the user typed is malformed."""


@dataclass(frozen=True)
class ImageReference:
    transport: str
    #: Filesystem path / fsspec URL, or for ``docker`` the ``host[:port]/repo`` (repo may be "").
    location: str
    #: ``oci``: ref name; ``docker-archive``: ``repo:tag``; ``docker``: tag or ``sha256:…`` digest.
    ref: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            text = f"docker://{self.location}"
            if self.ref:
                text += ("@" if self.ref.startswith("sha256:") else ":") + self.ref
            return text
        return f"{self.transport}:{self.location}" + (f":{self.ref}" if self.ref else "")

    @property
    def registry_host(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def repository(self) -> str:
        return self.location.split("/", 1)[1] if "/" in self.location else ""


def _split_location_ref(rest: str) -> tuple[str, str | None]:
    """Split at the first ``:`` after the path (after a ``scheme://`` if there is one)."""
    start = rest.index("://") + 3 if "://" in rest else 0
    colon = rest.find(":", start)
    if colon < 0:
        return rest, None
    return rest[:colon], rest[colon + 1 :] or None


def _parse_docker(rest: str, text: str) -> ImageReference:
    if not rest.startswith("//"):
        raise ReferenceError(f"{text!r}: a registry reference is docker://HOST[:PORT]/REPO[:TAG|@DIGEST]")
    rest = rest[2:]
    ref: str | None = None
    if "@" in rest:
        rest, ref = rest.split("@", 1)
        if not re.match(r"^sha256:[a-f0-9]{64}$", ref):
            raise ReferenceError(f"{text!r}: invalid digest {ref!r}")
    host, _, repo = rest.partition("/")
    if not host:
        raise ReferenceError(f"{text!r}: no registry host")
    if ":" in repo:
        repo, tag = repo.rsplit(":", 1)
        if ref is not None:
            raise ReferenceError(f"{text!r}: give a tag or a digest, not both")
        if not _TAG_RE.match(tag):
            raise ReferenceError(f"{text!r}: invalid tag {tag!r}")
        ref = tag
    repo = repo.strip("/")
    if repo and not _REPO_RE.match(repo):
        raise ReferenceError(f"{text!r}: invalid repository name {repo!r}")
    return ImageReference("docker", f"{host}/{repo}" if repo else host, ref)


def parse_reference(text: str) -> ImageReference:
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ReferenceError(
            f"{text!r} is not a reference: use one of " + ", ".join(f"{t}:" for t in TRANSPORTS)
        )
    if transport == "docker":
        return _parse_docker(rest, text)
    if not rest:
        raise ReferenceError(f"{text!r}: no location after {transport}:")
    if transport in ("dir", "registry-storage"):
        return ImageReference(transport, rest)
    location, ref = _split_location_ref(rest)
    if not location:
        raise ReferenceError(f"{text!r}: no location after {transport}:")
    return ImageReference(transport, location, ref)
