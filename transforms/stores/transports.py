"""Map a parsed ``transport:location`` reference to the store that reads or writes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagepush.transforms.stores.base import Destination, Source, StoreError
from imagepush.transforms.stores.dir import DirDestination, DirSource
from imagepush.transforms.stores.docker_archive.reader import DockerArchiveSource
from imagepush.transforms.stores.docker_archive.writer import DockerArchiveDestination
from imagepush.transforms.stores.layout.archive import OCIArchiveDestination, OCIArchiveSource
from imagepush.transforms.stores.layout.oci import OCILayoutDestination, OCILayoutSource
from imagepush.transforms.stores.refs import ImageReference
from imagepush.transforms.stores.registry import ClientPool, RegistryDestination, RegistrySource
from imagepush.transforms.stores.registry_storage import RegistryStorageSource

if TYPE_CHECKING:
    from imagepush.transforms.stores.options import StoreOptions

_SOURCES: dict[str, type[Source]] = {
    "oci": OCILayoutSource,
    "oci-archive": OCIArchiveSource,
    "dir": DirSource,
    "docker-archive": DockerArchiveSource,
    "docker": RegistrySource,
    "registry-storage": RegistryStorageSource,
}
_DESTINATIONS: dict[str, type[Destination]] = {
    "oci": OCILayoutDestination,
    "oci-archive": OCIArchiveDestination,
    "dir": DirDestination,
    "docker-archive": DockerArchiveDestination,
    "docker": RegistryDestination,
}
#: Transports whose stores take :class:`StoreOptions` (registry security, limits, auth).
_WITH_OPTIONS = frozenset({"docker"})


def open_source(
    ref: ImageReference, options: StoreOptions | None = None, *, clients: ClientPool | None = None
) -> Source:
    """The store to read ``ref`` from; the ref's name is passed later to ``get_root``.

    ``options`` configure registry transports and ``clients`` shares their per-host
    connections; file stores need nothing beyond the URL.
    """
    return _open(_SOURCES, "a source", ref, options, clients)


def open_destination(
    ref: ImageReference, options: StoreOptions | None = None, *, clients: ClientPool | None = None
) -> Destination:
    """The store to write ``ref`` into; names are given later in ``publish``."""
    return _open(_DESTINATIONS, "a destination", ref, options, clients)


def _open(table: dict, role: str, ref: ImageReference, options: StoreOptions | None, clients: ClientPool | None):
    cls = table.get(ref.transport)
    if cls is None:
        raise StoreError(f"{ref.transport}: is not supported as {role} yet ({ref})")
    if ref.transport in _WITH_OPTIONS:
        return cls(ref.location, options, clients=clients)
    return cls(ref.location)
