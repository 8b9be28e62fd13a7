"""Listing a registry: the catalog and tag lists, page by page, as lazy generators.

Pages are followed through ``Link: <…>; rel="next"`` verbatim (Distribution's links are
relative and carry their own query). Image entries follow the ``sync`` convention:
``ref`` is ``<full repository path>:<tag>`` below the host, ``repository`` the path
relative to the listed location (the last path component when the location *is* a
repository, as ``skopeo sync`` does), so that name mapping can append it to a destination.
"""

from __future__ import annotations

import json
from typing import Any, Iterator
from urllib.parse import urlsplit

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.pool import bounded_map
from imagepush.transforms.stores.base import ImageEntry, StoreError
from imagepush.transforms.stores.registry.auth import CATALOG_SCOPE, pull_scope
from imagepush.transforms.stores.registry.errors import RegistryNotFound
from imagepush.transforms.stores.registry.manifests import fetch_manifest, head_manifest
from imagepush.transforms.stores.registry.store import RegistryStore

#: Repositories whose first tag page is fetched ahead while a registry is listed.
LISTING_AHEAD = 4


def list_images(store: RegistryStore, *, details: bool, page_size: int | None) -> Iterator[ImageEntry]:
    """Tags of the store's repository; or, for a prefix / bare host, of every repository below it.

    ``page_size`` is sent as ``n=`` on the first catalog and tag-list request only.
    """
    if store.repository:
        tags = _tags(store, store.repository, page_size)
        if tags is not None:
            first = next(tags, None)
            if first is not None:
                relative = store.repository.rsplit("/", 1)[-1]
                for tag in _chain(first, tags):
                    entry = _entry(store, store.repository, tag, relative, details)
                    if entry is not None:
                        yield entry
                return
    prefix = store.repository
    for repository, tags in _tags_ahead(store, _repositories(store, page_size), page_size):
        if tags is None:
            continue
        if repository == prefix:
            relative = prefix.rsplit("/", 1)[-1]
        elif prefix:
            relative = repository[len(prefix) + 1 :]
        else:
            relative = repository
        for tag in tags:
            entry = _entry(store, repository, tag, relative, details)
            if entry is not None:
                yield entry


def _pages(
    store: RegistryStore, first: str, scopes: list[str], where: str, what: str, key: str, page_size: int | None
) -> Iterator[list[str]]:
    """Each page's list under ``key``, following ``Link: <…>; rel="next"`` verbatim."""
    url: str | None = first
    params: dict[str, int] | None = {"n": page_size} if page_size else None
    seen: set[str] = set()
    while url is not None:
        reply = store.client.request("GET", url, scopes=scopes, where=where, what=what, params=params)
        params = None  # the next link carries its own query
        try:
            doc = _json_object(reply.content)
        except ValueError:
            raise StoreError(f"{where}: {what} answered something that is not a JSON object") from None
        items = doc.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise StoreError(f"{where}: {what} has no list of names under {key!r}")
        yield items
        url = reply.link("next")
        if url is not None:
            if url in seen:  # a registry that loops its links must not loop us forever
                raise StoreError(f"{where}: {what} pagination repeats {urlsplit(url).query}")
            seen.add(url)


def _tags(store: RegistryStore, repository: str, page_size: int | None) -> Iterator[str] | None:
    """The tags of ``repository``, or None if the repository does not exist."""
    where = store.where(repository)
    pages = _pages(store, f"/v2/{repository}/tags/list", [pull_scope(repository)], where, "tag list", "tags", page_size)
    try:
        first = next(pages, [])
    except RegistryNotFound:
        return None

    def walk() -> Iterator[str]:
        yield from first
        for page in pages:
            yield from page

    return walk()


def _repositories(store: RegistryStore, page_size: int | None) -> Iterator[str]:
    """Catalog entries equal to or below the location's prefix, lazily."""
    prefix = store.repository
    for page in _pages(store, "/v2/_catalog", [CATALOG_SCOPE], store.host, "catalog", "repositories", page_size):
        for repository in page:
            if not prefix or repository == prefix or repository.startswith(prefix + "/"):
                yield repository


def _tags_ahead(
    store: RegistryStore, repositories: Iterator[str], page_size: int | None
) -> Iterator[tuple[str, Iterator[str] | None]]:
    """Each repository with its tags, in catalog order, first tag pages fetched ahead.

    One tag-list request per repository, made one after another, is most of the
    time of listing a registry of many small repositories (and of a rerun that finds
    everything current). A few are kept in flight, within the client's per-registry
    limit; the look-ahead is bounded, so a huge catalog is still listed lazily.
    """
    workers = max(1, min(LISTING_AHEAD, store.options.registry_concurrency))
    yield from bounded_map(
        lambda repository: _tags(store, repository, page_size), repositories,
        workers=workers, limit=workers + 1, ordered=True, name="tags",
    )


def _entry(store: RegistryStore, repository: str, tag: str, relative: str, details: bool) -> ImageEntry | None:
    """The entry of one tag; None when the tag was deleted between listing and now."""
    if not details:
        return ImageEntry(ref=f"{repository}:{tag}", repository=relative, tag=tag, digest="", media_type="")
    where = store.where(repository)
    reply = head_manifest(store.client, repository, tag, where)
    if reply is None:
        return None
    digest = reply.headers.get("Docker-Content-Digest")
    content_type = (reply.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if not digest or content_type not in mt.MANIFEST_TYPES:
        manifest = fetch_manifest(store.client, repository, tag, None, where)
        digest, content_type = manifest.digest, manifest.media_type
    return ImageEntry(ref=f"{repository}:{tag}", repository=relative, tag=tag, digest=digest, media_type=content_type)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _json_object(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    return doc
