"""Registry stores (``docker://HOST[:PORT][/REPO]``) over the Docker Registry v2 / OCI distribution API.

The rest of imagepush imports the names below from here. Inside, one concern per module,
each importing only those listed before it:

``errors``       the errors, and how a registry's answer becomes one
``streams``      response bodies: whole, streamed, or a blob that resumes with ``Range``
``transport``    scheme, the one retry loop, redirects, the concurrency limit, proxies
``authfile``     credentials from docker/podman auth files and credential helpers
``auth``         challenges, bearer tokens and their cache, basic auth, scopes
``client``       requests as the stores make them; one client per host (``ClientPool``)
``store``        what source and destination share: location, client, pickling
``manifests``    manifest reads and their digest checks
``listing``      catalog and tag pagination
``upload``       the blob upload session and its sink
``source``       :class:`RegistrySource`
``destination``  :class:`RegistryDestination`
"""

from imagepush.transforms.stores.registry.client import ClientPool, RegistryClient
from imagepush.transforms.stores.registry.destination import RegistryDestination
from imagepush.transforms.stores.registry.errors import (
    AccessDenied,
    AuthenticationError,
    InvalidName,
    RegistryError,
    RegistryMisconfigured,
    RegistryNotFound,
    RegistryUnavailable,
    RetriableUploadError,
)
from imagepush.transforms.stores.registry.source import RegistrySource

__all__ = [
    "AccessDenied",
    "AuthenticationError",
    "ClientPool",
    "InvalidName",
    "RegistryClient",
    "RegistryDestination",
    "RegistryError",
    "RegistryMisconfigured",
    "RegistryNotFound",
    "RegistrySource",
    "RegistryUnavailable",
    "RetriableUploadError",
]
