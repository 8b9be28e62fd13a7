"""Where each image goes: the name mapping of ``copy`` and ``sync``."""

from __future__ import annotations

from typing import Iterator

from imagepush.transforms.plan import CopyJob, Output, SyncSpec, Target
from imagepush.transforms.stores.base import ImageEntry, StoreError
from imagepush.transforms.stores.refs import ImageReference, parse_reference
from imagepush.transforms.storecache import StoreCache, store_id


def copy_target(out: Output) -> Target:
    """``copy``: the destination reference names the image itself."""
    dest = parse_reference(out.ref)
    return Target(destination=str(dest), store=store_id(dest), name=dest.ref, format=out.format,
                  compression=out.compression)


def copy_job(source: ImageReference, outputs: list[Output], platforms: tuple[str, ...]) -> CopyJob:
    """``copy``: one root image, selected by the source reference's tag, ref name or digest."""
    image, digest = source.ref, None
    if source.transport == "docker":
        store = store_id(ImageReference("docker", source.location))
        if image and image.startswith("sha256:"):
            image, digest = None, image
        else:
            image = image or "latest"
    else:
        store = store_id(source)
    return CopyJob(
        source_store=store,
        source=str(source),
        image=image,
        digest=digest,
        targets=tuple(copy_target(out) for out in outputs),
        platforms=platforms,
    )


def sync_target(out: Output, entry: ImageEntry) -> Target:
    """``sync``: the repository path below the source is appended to the destination, tags kept."""
    dest = parse_reference(out.ref)
    fmt, compression = out.format, out.compression
    if dest.transport == "docker":
        location = "/".join(p for p in (dest.location.rstrip("/"), entry.repository) if p)
        mapped = ImageReference("docker", location, entry.tag)
        if "/" not in location:
            raise StoreError(f"{dest}: no repository to write {entry.ref or entry.digest} into")
        return Target(destination=str(mapped), store=store_id(mapped), name=entry.tag, format=fmt, compression=compression)
    if dest.transport == "dir":
        return Target(destination=str(dest), store=store_id(dest), name=None, format=fmt, compression=compression)
    if entry.tag is None:
        name = None
    elif dest.transport == "oci":
        name = f"{entry.repository}:{entry.tag}" if entry.repository else entry.tag
    else:  # docker-archive RepoTags need a repository
        name = f"{entry.repository or 'image'}:{entry.tag}"
    mapped = ImageReference(dest.transport, dest.location, name)
    return Target(destination=str(mapped), store=store_id(mapped), name=name, format=fmt, compression=compression)


def sync_job(
    source: ImageReference,
    entry: ImageEntry,
    outputs: list[Output],
    platforms: tuple[str, ...],
) -> CopyJob:
    if source.transport == "docker":
        # Registry entries name their full repository path (below the host) in ``ref``.
        full_repo, _, tag = entry.ref.rpartition(":")
        location = f"{source.registry_host}/{full_repo}"
        shown = str(ImageReference("docker", location, tag))
        store = store_id(ImageReference("docker", location))
        return CopyJob(
            source_store=store,
            source=shown,
            image=tag,
            digest=None,
            targets=tuple(sync_target(out, entry) for out in outputs),
            platforms=platforms,
        )
    shown = str(ImageReference(source.transport, source.location, entry.ref or None))
    if not entry.ref:
        shown += f"@{entry.digest}"
    store = store_id(source)
    return CopyJob(
        source_store=store,
        source=shown,
        image=entry.ref or None,
        digest=None if entry.ref else entry.digest,
        targets=tuple(sync_target(out, entry) for out in outputs),
        platforms=platforms,
    )


def sync_jobs(spec: SyncSpec, stores: StoreCache) -> Iterator[CopyJob]:
    """One job per image the sync's source lists and its filters keep, lazily (catalogs can be huge)."""
    source = parse_reference(spec.source)
    for entry in stores.source(store_id(source)).list_images(details=False):
        if spec.wants(entry):
            yield sync_job(source, entry, list(spec.destinations), spec.platforms)
