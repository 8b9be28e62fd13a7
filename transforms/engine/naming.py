"""Where each image goes: the jobs of ``copy`` and ``sync``, from references and listings.

Every rule that depends on a transport (store identity, which image a reference selects,
how a listed image maps to a destination) is asked of the reference (stores/refs.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from imagepush.transforms.engine.jobs import CopyJob, Output, SyncSpec, Target
from imagepush.transforms.engine.templates import NameTemplate
from imagepush.transforms.stores.base import ImageEntry
from imagepush.transforms.stores.refs import (
    REGISTRY_TRANSPORT, ImageReference, ReferenceError, parse_reference, split_repo_tag,
)
from imagepush.transforms.stores.cache import StoreCache


def _target(destination: ImageReference, out: Output) -> Target:
    return Target(destination=str(destination), store=destination.store, name=destination.ref, format=out.format,
                  compression=out.compression, no_clobber=out.no_clobber)


#: The tag a registry reference without one means, on either side of a copy (as skopeo reads it).
DEFAULT_TAG = "latest"


def untagged_registry(ref: ImageReference) -> bool:
    """A registry repository named without a tag or digest: a copy there writes ``latest``."""
    return ref.transport == "docker" and not ref.ref and bool(ref.repository)


def copy_target(out: Output) -> Target:
    """``copy``: the destination reference names the image itself.

    A registry destination without a tag gets ``latest``, as its source would be read:
    an image pushed under no name is not found by anyone.
    """
    ref = parse_reference(out.ref)
    if untagged_registry(ref):
        ref = ref.named(DEFAULT_TAG)
    return _target(ref, out)


def source_names(source: ImageReference) -> tuple[str | None, str | None]:
    """The repository and tag of a copy's source, as a listing of its store would name them.

    A registry reference knows its repository, and its tag is the one the copy selects
    (``latest`` when none is given). A file store's image name is ``REPO:TAG``, or a bare
    ``TAG`` (OCI layouts written by skopeo and Docker 25 name images by tag alone).
    """
    image, _ = source.selection()
    try:
        return source.repository or None, image
    except ReferenceError:
        pass
    if not image:
        return None, None
    repository, tag = split_repo_tag(image)
    if tag is None and "/" not in image:
        return None, image
    return repository or None, tag


def copy_job(source: ImageReference, outputs: list[Output], platforms: tuple[str, ...]) -> CopyJob:
    """``copy``: one root image, selected by the source reference's tag, ref name or digest."""
    image, digest = source.selection()
    repository, tag = source_names(source)
    return CopyJob(
        source_store=source.store,
        source=str(source),
        image=image,
        digest=digest,
        targets=tuple(copy_target(out) for out in outputs),
        platforms=platforms,
        repository=repository,
        tag=tag,
    )


def renamed(source: ImageReference, entry: ImageEntry, template: NameTemplate) -> ImageEntry:
    """``entry`` as ``template`` names it: the path written below a destination, and the tag.

    The template sees the full repository path in the source (what ``ls`` shows), not
    the path below the sync's source prefix that the default mapping appends.
    """
    listed = source.listed(entry)
    registry = source.host if source.transport == REGISTRY_TRANSPORT else ""
    repository = (source_names(listed)[0] if entry.ref else None) or entry.repository
    path, tag = template.render(registry, repository, entry.tag)
    return replace(entry, ref=f"{path}:{tag}" if tag else path, repository=path, tag=tag)


def sync_target(out: Output, entry: ImageEntry) -> Target:
    """``sync``: the repository path below the source is appended to the destination, tags kept."""
    return _target(parse_reference(out.ref).synced(entry), out)


def sync_job(
    source: ImageReference,
    entry: ImageEntry,
    outputs: list[Output],
    platforms: tuple[str, ...],
    rename: NameTemplate | None = None,
) -> CopyJob:
    """``sync``: one listed image; an unnamed one is read (and shown) by its digest."""
    listed = source.listed(entry)
    named = entry if rename is None else renamed(source, entry, rename)
    return CopyJob(
        source_store=listed.store,
        source=str(listed) if entry.ref else f"{listed}@{entry.digest}",
        image=listed.ref,
        digest=None if entry.ref else entry.digest,
        targets=tuple(sync_target(out, named) for out in outputs),
        platforms=platforms,
        # The full repository (a registry lists paths below the sync's prefix), the listed tag.
        repository=source_names(listed)[0] if entry.ref else (entry.repository or None),
        tag=entry.tag,
    )


def sync_jobs(spec: SyncSpec, stores: StoreCache) -> Iterator[CopyJob]:
    """One job per image the sync's source lists and its selection keeps, lazily (catalogs can be huge)."""
    source = parse_reference(spec.source)
    entries = stores.source(source.store).list_images(details=False)
    # A registry lists each repository's tags together; a file store's listing is one index.
    for entry in spec.selection.select(entries, grouped=source.transport == REGISTRY_TRANSPORT):
        yield sync_job(source, entry, list(spec.destinations), spec.platforms, spec.rename)
