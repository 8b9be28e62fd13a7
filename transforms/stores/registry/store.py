"""What a registry source and destination share: a location, options and a lazily built client.

Only ``location`` and ``options`` are pickled: Beam ships stores to workers, and a
client (sessions, tokens, locks) is rebuilt on first use in each of them.
"""

from __future__ import annotations

import threading
from typing import Any

from imagepush.transforms.stores.base import StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.refs import REGISTRY_TRANSPORT, ImageReference
from imagepush.transforms.stores.registry.client import ClientPool, RegistryClient


class RegistryStore:
    """The part of a registry store that is about where it is, not what it does.

    ``location`` is a registry reference's location, ``HOST[:PORT][/REPO]``, as the
    transports hand it over; the reference answers where that is (host, repository, blob domain).
    """

    def __init__(self, location: str, options: StoreOptions | None = None, *, clients: ClientPool | None = None) -> None:
        self.location = location
        self.options = options or StoreOptions()
        #: This store as a reference without an image name: refs.py owns the location's syntax.
        self.reference = ImageReference(REGISTRY_TRANSPORT, location)
        self.host, self.repository = self.reference.host, self.reference.repository
        if not self.host:
            raise StoreError(f"{location!r}: no registry host")
        self._client: RegistryClient | None = None
        self._client_lock = threading.Lock()
        #: Shared per-host clients of the owner (a worker's store cache); None: a private one.
        self._clients = clients

    @property
    def client(self) -> RegistryClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._clients.get(self.host) if self._clients else RegistryClient(self.host, self.options)
            return self._client

    def where(self, repository: str | None = None) -> str:
        """``host/repository`` for messages: the place a failure happened."""
        repo = self.repository if repository is None else repository
        return f"{self.host}/{repo}" if repo else self.host

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None and self._clients is None:
                self._client.close()  # a shared client is closed by its pool
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"
