"""The opened stores of one worker process, keyed by their identities (``ImageReference.store``).

Beam elements carry only store identities (cheap to pickle); a worker opens a store the
first time one of its steps needs it, and every step of that worker reuses it, with its
connection pools and per-registry request limits (the DoFns share one cache through
``apache_beam.utils.shared.Shared``). The launcher uses one for its preflight.
"""

from __future__ import annotations

import threading

from imagepush.transforms.pacing import RateBucket
from imagepush.transforms.stores.base import Destination, Source
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import ClientPool
from imagepush.transforms.stores.registry.limiter import Level
from imagepush.transforms.stores.refs import blob_domain, parse_reference
from imagepush.transforms.stores.transports import open_destination, open_source


class StoreCache:
    def __init__(self, options: StoreOptions | None = None) -> None:
        self._options = options or StoreOptions()
        self._clients = ClientPool(self._options)
        self._sources: dict[str, Source] = {}
        self._destinations: dict[str, Destination] = {}
        self._pacers: dict[str, RateBucket] = {}
        #: DoFns use the cache from their I/O threads.
        self._lock = threading.Lock()

    def source(self, store: str) -> Source:
        with self._lock:
            if store not in self._sources:
                self._sources[store] = open_source(parse_reference(store), self._options, clients=self._clients)
            return self._sources[store]

    def destination(self, store: str) -> Destination:
        with self._lock:
            if store not in self._destinations:
                self._destinations[store] = open_destination(
                    parse_reference(store), self._options, clients=self._clients
                )
            return self._destinations[store]

    def pacer(self, store: str) -> RateBucket | None:
        """What spaces out the bytes this worker sends to ``store`` (``--max-bandwidth``), if capped.

        One per blob-sharing domain: the repositories of one registry share its link, so
        the cap is the host's, not each repository's.
        """
        rate = self._options.max_bandwidth
        if rate is None:
            return None
        domain = blob_domain(store)
        with self._lock:
            if domain not in self._pacers:
                self._pacers[domain] = RateBucket(rate)
            return self._pacers[domain]

    def registry_levels(self) -> dict[str, Level]:
        """The request limit of each registry host this worker talks to, now and at most."""
        return self._clients.levels()

    def close(self) -> None:
        for store in [*self._sources.values(), *self._destinations.values()]:
            try:
                store.close()
            except Exception:  # teardown is best effort; Beam may not even call it
                pass
        self._sources.clear()
        self._destinations.clear()
        self._clients.close()
