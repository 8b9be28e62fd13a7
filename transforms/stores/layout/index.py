"""``index.json``: the names of an OCI layout, read and written the way umoci and skopeo do.

The layout directory and the oci-archive both keep their names here, so reading,
renaming and serialising entries is written once for both.
"""

from __future__ import annotations

from typing import Any

import orjson

from imagepush.transforms.formats import jsonio
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.stores.base import Publication, StoreError
from imagepush.transforms.stores.refs import split_repo_tag

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_CONTENT = b'{"imageLayoutVersion":"1.0.0"}'


def split_name(ref: str) -> tuple[str, str | None]:
    """Split a ref name into (repository, tag) for sync's name mapping.

    ``apps/web:1.0`` -> ``("apps/web", "1.0")``; a bare ``latest`` is a tag (skopeo and
    Docker 25 write only the tag); ``host:5000/app`` has no tag because the colon is
    before the last ``/``; ``app@sha256:…`` names a digest, not a tag.
    """
    if not ref:
        return "", None
    if "@" in ref:
        return ref.split("@", 1)[0], None
    repository, tag = split_repo_tag(ref)
    if repository == ref and "/" not in ref:
        return "", ref
    return repository, tag


def load_index(data: bytes, where: str) -> dict[str, Any]:
    try:
        index = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"{where}: index.json is not JSON ({exc})") from None
    if not isinstance(index, dict):
        raise StoreError(f"{where}: index.json is not a JSON object")
    manifests = index.get("manifests")
    if manifests is None:
        index["manifests"] = []  # Docker 25's untagged save writes null
    elif not isinstance(manifests, list):
        raise StoreError(f"{where}: index.json 'manifests' is not a list")
    return index


def entry_ref(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    annotations = entry.get("annotations")
    if isinstance(annotations, dict):
        name = annotations.get(REF_NAME)
        return name if isinstance(name, str) else None
    return None


def add_entry(manifests: list[Any], pub: Publication) -> list[Any]:
    """index.json entries after naming ``pub``: like umoci, a name moves to the new image.

    Older entries with the same name are dropped, and so is an unnamed entry of the same
    digest (it would be a duplicate). An entry that already says exactly this stays where
    it is, so re-publishing (a retried bundle) changes nothing.
    """
    desc = pub.descriptor
    annotations = dict(desc.annotations)
    annotations.pop(REF_NAME, None)
    if pub.ref:
        annotations[REF_NAME] = pub.ref
    new = desc.with_annotations(annotations).to_dict()

    def same_digest(entry: Any) -> bool:
        return isinstance(entry, dict) and entry.get("digest") == desc.digest

    if not pub.ref:
        if any(same_digest(e) and entry_ref(e) is None for e in manifests):
            return manifests
        return [*manifests, new]
    out: list[Any] = []
    placed = False
    for entry in manifests:
        name = entry_ref(entry)
        if name == pub.ref:
            if same_digest(entry) and not placed:
                out.append(new)
                placed = True
            continue
        if name is None and same_digest(entry):
            continue
        out.append(entry)
    if not placed:
        out.append(new)
    return out


def dump_index(index: dict[str, Any]) -> bytes:
    """index.json bytes: schemaVersion, mediaType, manifests first, other keys after."""
    ordered: dict[str, Any] = {"schemaVersion": index.get("schemaVersion", 2), "mediaType": mt.OCI_INDEX}
    ordered["manifests"] = index.get("manifests") or []
    for key, value in index.items():
        if key not in ordered:
            ordered[key] = value
    return jsonio.dumps(ordered)
