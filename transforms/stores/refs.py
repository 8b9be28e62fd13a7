"""References to stores and the images in them, and every naming rule that depends on the transport.

``transport:location[:name]`` is parsed as skopeo parses it. The rest of the program asks
a reference questions instead of looking at transport names: which store it points into,
which stores share blobs with it, where a sync writes a listed image, how a listed image
is shown. Each transport's answers are one rules object in ``_RULES``; transports.py maps
the same names to the classes that read and write the stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from imagepush.transforms.errors import INVALID_INPUT
from imagepush.transforms.stores.base import ImageEntry, StoreError

#: A tag in the Distribution reference grammar (registries refuse anything else).
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
#: A repository path in the Distribution reference grammar.
REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
#: The transport of registries, the one whose stores are repositories below a host.
REGISTRY_TRANSPORT = "docker"


class ReferenceError(StoreError):
    """A reference string the user typed is malformed."""

    kind = INVALID_INPUT


@dataclass(frozen=True)
class ImageReference:
    """A store (transport and location) and, optionally, the name of one image in it."""

    transport: str
    #: Filesystem path / fsspec URL, or for ``docker`` the ``host[:port]/repo`` (repo may be "").
    location: str
    #: ``oci``: ref name; ``docker-archive``: ``repo:tag``; ``docker``: tag or ``sha256:…`` digest.
    ref: str | None = None

    def __str__(self) -> str:
        return _rules(self.transport).text(self)

    def named(self, ref: str | None) -> ImageReference:
        return replace(self, ref=ref)

    @property
    def store(self) -> str:
        """The identity of the store, without the image name: stores are opened once per identity."""
        return str(self.named(None))

    @property
    def blob_domain(self) -> str:
        """The stores in which one digest names one blob, so a blob copied once serves them all."""
        return _rules(self.transport).blob_domain(self)

    @property
    def host(self) -> str:
        """A registry reference's ``host[:port]``, which its repositories share (and their blobs).

        Raises :class:`ReferenceError` for a transport without hosts.
        """
        return _rules(self.transport).registry_parts(self)[0]

    @property
    def repository(self) -> str:
        """A registry reference's repository path below its host; "" when it names the whole registry.

        Raises :class:`ReferenceError` for a transport without repositories.
        """
        return _rules(self.transport).registry_parts(self)[1]

    @property
    def per_repository(self) -> bool:
        """Whether a sync writes each source repository into a store of its own (a registry's).

        Such a destination has no single store to prepare before the run: its stores are
        only known once the source is listed.
        """
        return _rules(self.transport).per_repository

    def selection(self) -> tuple[str | None, str | None]:
        """The name and the digest that pick this reference's root image in its store (at most one is set)."""
        return _rules(self.transport).selection(self)

    def listed(self, entry: ImageEntry) -> ImageReference:
        """The reference to ``entry``, an image this store listed: how ``ls`` shows it, where a sync reads it."""
        return _rules(self.transport).listed(self, entry)

    def synced(self, entry: ImageEntry) -> ImageReference:
        """Where a sync into this destination writes ``entry``, an image its source listed."""
        return _rules(self.transport).synced(self, entry)


class _Rules:
    """A file store's rules: a location, then optionally ``:NAME`` of one image inside it."""

    #: Whether a ``:NAME`` may follow the location.
    takes_name = True
    #: Whether the store holds one image at most.
    one_image = False
    per_repository = False

    def parse(self, transport: str, rest: str, text: str) -> ImageReference:
        if self.takes_name:
            location, ref = _split_location_ref(rest)
        else:
            location, ref = rest, None
        if not location:
            raise ReferenceError(f"{text!r}: no location after {transport}:")
        return ImageReference(transport, location, ref)

    def text(self, ref: ImageReference) -> str:
        return f"{ref.transport}:{ref.location}" + (f":{ref.ref}" if ref.ref else "")

    def blob_domain(self, ref: ImageReference) -> str:
        return ref.store

    def registry_parts(self, ref: ImageReference) -> tuple[str, str]:
        """``(host, repository)``: only a registry's stores are repositories below a host."""
        raise ReferenceError(f"{ref}: {ref.transport}: has no registry host or repository")

    def selection(self, ref: ImageReference) -> tuple[str | None, str | None]:
        return ref.ref, None

    def listed(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        return ref.named(entry.ref or None)

    def synced(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        raise ReferenceError(f"{ref}: {ref.transport}: is a source only")


class _Layout(_Rules):
    """OCI layouts and oci-archives name an image ``REPO:TAG``, or ``TAG`` alone without a repository."""

    def synced(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        if entry.tag is None:
            return ref.named(None)
        return ref.named(f"{entry.repository}:{entry.tag}" if entry.repository else entry.tag)


class _DockerArchive(_Rules):
    """A docker-archive's RepoTags always have a repository: ``image`` stands in for a missing one."""

    def synced(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        if entry.tag is None:
            return ref.named(None)
        return ref.named(f"{entry.repository or 'image'}:{entry.tag}")


class _Dir(_Rules):
    """A ``dir:`` holds one unnamed image: everything after the prefix is the path."""

    takes_name = False
    one_image = True

    def synced(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        return ref.named(None)


class _RegistryStorage(_Rules):
    """A registry's storage tree is read only, and has no syntax to name one image."""

    takes_name = False


class _Registry(_Rules):
    """``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``: a store per repository, blobs shared per host."""

    per_repository = True

    def parse(self, transport: str, rest: str, text: str) -> ImageReference:
        if not rest.startswith("//"):
            raise ReferenceError(f"{text!r}: a registry reference is docker://HOST[:PORT]/REPO[:TAG|@DIGEST]")
        rest = rest[2:]
        ref: str | None = None
        if "@" in rest:
            rest, ref = rest.split("@", 1)
            if not _DIGEST_RE.match(ref):
                raise ReferenceError(f"{text!r}: invalid digest {ref!r}")
        host, _, repo = rest.partition("/")
        if not host:
            raise ReferenceError(f"{text!r}: no registry host")
        if ":" in repo:
            repo, tag = repo.rsplit(":", 1)
            if ref is not None:
                raise ReferenceError(f"{text!r}: give a tag or a digest, not both")
            if not TAG_RE.match(tag):
                raise ReferenceError(f"{text!r}: invalid tag {tag!r}")
            ref = tag
        repo = repo.strip("/")
        if repo and not REPOSITORY_RE.match(repo):
            raise ReferenceError(f"{text!r}: invalid repository name {repo!r}")
        return ImageReference(transport, f"{host}/{repo}" if repo else host, ref)

    def text(self, ref: ImageReference) -> str:
        if not ref.ref:
            return f"docker://{ref.location}"
        return f"docker://{ref.location}{'@' if _is_digest(ref.ref) else ':'}{ref.ref}"

    def registry_parts(self, ref: ImageReference) -> tuple[str, str]:
        """The location ``HOST[:PORT][/REPO]`` split at its first ``/``; the repository without edge slashes."""
        host, _, repository = ref.location.partition("/")
        return host, repository.strip("/")

    def blob_domain(self, ref: ImageReference) -> str:
        """Every repository of one registry host shares its blobs (cross-repository mounts)."""
        return f"docker://{ref.host}"

    def selection(self, ref: ImageReference) -> tuple[str | None, str | None]:
        if ref.ref and _is_digest(ref.ref):
            return None, ref.ref
        return ref.ref or "latest", None

    def listed(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        """A registry lists ``REPO:TAG`` with the full repository path below the host."""
        repository, _, tag = entry.ref.rpartition(":")
        return ImageReference(ref.transport, f"{ref.host}/{repository}", tag)

    def synced(self, ref: ImageReference, entry: ImageEntry) -> ImageReference:
        """The source's repository path goes below the destination's prefix, the tag is kept."""
        location = "/".join(part for part in (ref.location.rstrip("/"), entry.repository) if part)
        if "/" not in location:
            raise StoreError(f"{ref}: no repository to write {entry.ref or entry.digest} into")
        return ImageReference(ref.transport, location, entry.tag)


def _is_digest(name: str) -> bool:
    """Registry references name an image by tag or by digest; tags cannot hold a ``:``."""
    return name.startswith("sha256:")


_RULES: dict[str, _Rules] = {
    REGISTRY_TRANSPORT: _Registry(),
    "oci": _Layout(),
    "oci-archive": _Layout(),
    "dir": _Dir(),
    "docker-archive": _DockerArchive(),
    "registry-storage": _RegistryStorage(),
}
TRANSPORTS = tuple(_RULES)
#: Transports whose location holds one image at most.
SINGLE_IMAGE = frozenset(name for name, rules in _RULES.items() if rules.one_image)


def _rules(transport: str) -> _Rules:
    try:
        return _RULES[transport]
    except KeyError:
        raise ReferenceError(f"{transport}: is not a transport (use one of {', '.join(TRANSPORTS)})") from None


def _split_location_ref(rest: str) -> tuple[str, str | None]:
    """Split at the first ``:`` after the path (after a ``scheme://`` if there is one)."""
    start = rest.index("://") + 3 if "://" in rest else 0
    colon = rest.find(":", start)
    if colon < 0:
        return rest, None
    return rest[:colon], rest[colon + 1 :] or None


def parse_reference(text: str) -> ImageReference:
    transport, sep, rest = text.partition(":")
    if not sep or transport not in _RULES:
        raise ReferenceError(
            f"{text!r} is not a reference: use one of " + ", ".join(f"{t}:" for t in TRANSPORTS)
        )
    return _RULES[transport].parse(transport, rest, text)


def split_repo_tag(ref: str) -> tuple[str, str | None]:
    """``example.com:5000/a/b:tag`` -> ``("example.com:5000/a/b", "tag")``: the last ``:`` after the last ``/``.

    A ``:`` before the last ``/`` belongs to a registry host's port, not to a tag.
    """
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :] or None
    return ref, None


def blob_domain(store: str) -> str:
    """The blob-sharing domain of a store given by its identity (:attr:`ImageReference.store`)."""
    return parse_reference(store).blob_domain
