"""Settings that stores need besides a reference: registry security and limits.

Plain, picklable values: they travel with the DoFns to every worker. Credentials
themselves are never stored here, only where to read them from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class StoreOptions:
    #: ``host:port`` entries allowed plain HTTP or unverified TLS.
    insecure_registries: tuple[str, ...] = ()
    #: docker config.json / containers auth.json; None = the usual default locations.
    authfile: str | None = None
    #: PEM bundle of extra CA certificates to trust for registries.
    ca_bundle: str | None = None
    #: Concurrent requests per registry host from one worker: the ceiling of the adaptive
    #: limit, or the limit itself when ``adaptive_concurrency`` is off.
    registry_concurrency: int = 8
    #: Whether the limit adapts to a host's 429/503 answers (starting at a quarter of the
    #: ceiling); off, every host gets ``registry_concurrency`` at once from the start.
    adaptive_concurrency: bool = True
    #: Requests per second per registry host from one worker; None: no rate cap.
    registry_rps: float | None = None
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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its values alone: the options travel inside every store a DoFn ships,
        and field names would make up most of a store's pickle."""
        return (StoreOptions, tuple(getattr(self, f.name) for f in fields(self)))
