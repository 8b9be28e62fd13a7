"""The names an archive gives its images (``RepoTags``), in the spellings Docker and skopeo use."""

from __future__ import annotations

from imagepush.transforms.stores.refs import split_repo_tag


def normalize_tag(ref: str) -> str:
    """RepoTags always carry a tag; Docker defaults a bare repository to ``latest``."""
    repository, tag = split_repo_tag(ref)
    return f"{repository}:{tag or 'latest'}"


def canonical_name(ref: str) -> str:
    """A RepoTags entry in fully qualified form, so that spellings of one name compare equal.

    Docker writes familiar names (``busybox:latest``), containers/image writes
    ``docker.io/interop/base:2``; both mean ``docker.io/library/busybox:latest`` and
    ``docker.io/interop/base:2``. A first component without ``.`` or ``:`` (and not
    ``localhost``) is a Docker Hub path, and official images live under ``library/``.
    """
    name, tag = split_repo_tag(ref)
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        first, rest = "docker.io", name
    if first == "index.docker.io":
        first = "docker.io"
    if first == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    return f"{first}/{rest}:{tag or 'latest'}"
