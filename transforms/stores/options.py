"""Settings that stores need besides a reference: registry security and limits.

Plain, picklable values: they travel with the DoFns to every worker. Credentials are
normally not stored here, only where to read them from (an auth file); a password the
run file gives a registry (inline or from an environment variable of the launcher) or
the user typed (``--src-creds``) travels as a :class:`Secret`, which no ``repr``, log
line or audit row shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Secret:
    """A password on its way to the registry client: its value is shown nowhere."""

    value: str

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


@dataclass(frozen=True)
class HostOptions:
    """What one registry host gets instead of the run's settings; None keeps the run's.

    ``host`` is ``name[:port]``; an entry without a port covers every port of that name
    (as ``insecure_registries`` entries do), and one with the exact port wins.
    """

    host: str
    username: str | None = None
    password: Secret | None = None
    authfile: str | None = None
    ca_bundle: str | None = None
    #: False: plain HTTP or unverified TLS, as an ``insecure_registries`` entry.
    tls_verify: bool | None = None
    concurrency: int | None = None

    def matches(self, host: str) -> int:
        """How well this entry names ``host``: 2 exactly, 1 by name for any port, 0 not at all."""
        mine, host = self.host.strip().lower(), host.lower()
        if mine == host:
            return 2
        return 1 if re.sub(r":\d+$", "", host) == mine else 0


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
    #: Bytes per second one worker sends to one destination (a registry host, a layout, a
    #: bucket path: the stores sharing blobs); None: no cap. ``--max-bandwidth``.
    max_bandwidth: float | None = None
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
    #: Per-host settings (``registries:`` of a run file); see :meth:`for_host`.
    hosts: tuple[HostOptions, ...] = ()

    def host_entry(self, host: str) -> HostOptions | None:
        """The ``hosts`` entry that applies to ``host``: its exact ``name:port`` first, then its name."""
        best = max(self.hosts, key=lambda entry: entry.matches(host), default=None)
        return best if best is not None and best.matches(host) else None

    def for_host(self, host: str) -> StoreOptions:
        """The options one registry host's client uses: the run's, with that host's entry applied.

        Each client reads only its own options, so a per-host setting reaches its
        transport and authenticator without either knowing that hosts differ.
        """
        entry = self.host_entry(host)
        if entry is None:
            return self
        insecure = tuple(
            h for h in self.insecure_registries if not (entry.tls_verify is True and HostOptions(h).matches(host))
        )
        if entry.tls_verify is False:
            insecure += (host,)
        return replace(
            self,
            insecure_registries=insecure,
            authfile=entry.authfile or self.authfile,
            ca_bundle=entry.ca_bundle or self.ca_bundle,
            registry_concurrency=entry.concurrency or self.registry_concurrency,
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its values alone: the options travel inside every store a DoFn ships,
        and field names would make up most of a store's pickle."""
        return (StoreOptions, tuple(getattr(self, f.name) for f in fields(self)))
