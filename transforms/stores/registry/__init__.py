"""Registry stores (``docker://HOST[:PORT][/REPO]``) over the Docker Registry v2 / OCI distribution API.

The rest of imagepush imports from here; the modules below are one concern each.
"""

from imagepush.transforms.stores.registry.destination import RegistryDestination
from imagepush.transforms.stores.registry.source import RegistrySource
from imagepush.transforms.stores.registry.transport import (
    AccessDenied,
    AuthenticationError,
    ClientPool,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
    RetriableUploadError,
)

__all__ = [
    "AccessDenied",
    "AuthenticationError",
    "ClientPool",
    "RegistryClient",
    "RegistryDestination",
    "RegistryError",
    "RegistryNotFound",
    "RegistrySource",
    "RegistryUnavailable",
    "RetriableUploadError",
]
