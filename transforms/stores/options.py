"""Settings that stores need besides a reference: registry security and limits.

Plain, picklable values: they travel with the DoFns to every worker. Credentials are
stored here only when the user typed them (``--src-creds``), for a local run: they
are masked in every ``repr`` and kept out of this object's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagepush.transforms.stores.registry.authfile import Credentials


@dataclass(frozen=True)
class StoreOptions:
    #: ``host:port`` entries allowed plain HTTP or unverified TLS.
    insecure_registries: tuple[str, ...] = ()
    #: docker config.json / containers auth.json; None = the usual default locations.
    authfile: str | None = None
    #: PEM bundle of extra CA certificates to trust for registries.
    ca_bundle: str | None = None
    #: Concurrent requests per registry host from one worker.
    registry_concurrency: int = 8
    #: Retries of a registry request after a connection error, 429 or 5xx (with backoff).
    registry_retries: int = 4
    #: Seconds a registry that answered earlier in the run is waited for (retrying with
    #: backoff) once it stops answering, before its requests fail: a restart must not
    #: fail the images in flight. A registry never reached gets no grace.
    outage_grace: float = 30.0
    #: Blobs of known size up to this are streamed in one PUT (the cheapest upload for a
    #: registry: no chunk state to save); larger or unsized ones go in chunked PATCHes.
    monolithic_upload_limit: int = 4 << 30
    #: Size of each PATCH when a blob is uploaded in chunks.
    upload_chunk_size: int = 128 << 20
    #: ``(host, credentials)`` given on the command line, used for that host before any auth file.
    host_credentials: tuple[tuple[str, "Credentials"], ...] = field(default=(), repr=False)
    #: ``(host, path)``: that host's credentials come from this auth file instead of ``authfile``.
    host_authfiles: tuple[tuple[str, str], ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its values alone: the options travel inside every store a DoFn ships,
        and field names would make up most of a store's pickle."""
        return (StoreOptions, tuple(getattr(self, f.name) for f in fields(self)))
