"""Media type names and the small relations between them that conversion needs."""

from __future__ import annotations

# Docker
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar"

# OCI
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_ND_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_ND_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_ND_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
IMAGE_MANIFEST_TYPES = frozenset({DOCKER_SCHEMA2, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
MANIFEST_TYPES = SCHEMA1_TYPES | IMAGE_MANIFEST_TYPES | INDEX_TYPES

#: What we send as ``Accept`` when pulling a manifest (most preferred first).
ACCEPT_MANIFESTS = (
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_SCHEMA2,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
)


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_schema1(media_type: str) -> bool:
    return media_type in SCHEMA1_TYPES


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type; ``unknown`` otherwise.

    Unknown types are not an error: artifacts carry arbitrary blobs that we copy opaquely.
    """
    if media_type.endswith("+encrypted"):
        return "unknown"
    if media_type.endswith(("tar.gzip", "tar+gzip")):
        return "gzip"
    if media_type.endswith("tar+zstd"):
        return "zstd"
    if media_type.endswith((".tar", "diff.tar")):
        return "none"
    return "unknown"


#: Layer media type for each (manifest family, compression).
_LAYER_TYPES = {
    ("oci", "gzip"): OCI_LAYER_GZIP,
    ("oci", "zstd"): OCI_LAYER_ZSTD,
    ("oci", "none"): OCI_LAYER,
    ("docker", "gzip"): DOCKER_LAYER_GZIP,
    ("docker", "none"): DOCKER_LAYER,
}


def layer_type(manifest_type: str, compression: str) -> str:
    """The layer media type a manifest of ``manifest_type`` uses for ``compression``.

    Docker schema2 has no zstd layer type; asking for one is a ValueError that callers
    turn into "convert to OCI" or a usage error.
    """
    fam = "oci" if manifest_type in (OCI_MANIFEST, OCI_INDEX) else "docker"
    try:
        return _LAYER_TYPES[(fam, compression)]
    except KeyError:
        raise ValueError(f"a {manifest_type} manifest cannot hold {compression} layers") from None
