"""References: skopeo's syntax, and the answers that spare the rest of the program transport names."""

from __future__ import annotations

import pytest

from imagepush.transforms.stores.base import ImageEntry, StoreError
from imagepush.transforms.stores.refs import ImageReference, ReferenceError, blob_domain, parse_reference, split_repo_tag

DIGEST = "sha256:" + "ab" * 32


def entry(ref: str, repository: str, tag: str | None) -> ImageEntry:
    return ImageEntry(ref=ref, repository=repository, tag=tag, digest="sha256:" + "1" * 64, media_type="")


@pytest.mark.parametrize(
    "text, transport, location, name",
    [
        ("docker://reg:5000/team/app:1.0", "docker", "reg:5000/team/app", "1.0"),
        (f"docker://reg:5000/team/app@{DIGEST}", "docker", "reg:5000/team/app", DIGEST),
        ("docker://reg:5000", "docker", "reg:5000", None),
        ("docker://reg:5000/team/", "docker", "reg:5000/team", None),
        ("oci:/data/layout:apps/web:1.0", "oci", "/data/layout", "apps/web:1.0"),
        ("oci:s3://bucket/layout:apps/web:1.0", "oci", "s3://bucket/layout", "apps/web:1.0"),
        ("oci-archive:/x/a.tar", "oci-archive", "/x/a.tar", None),
        ("docker-archive:/x/a.tar:example.com:5000/app:1", "docker-archive", "/x/a.tar", "example.com:5000/app:1"),
        ("dir:/x/with:colon", "dir", "/x/with:colon", None),
        ("registry-storage:memory://tree", "registry-storage", "memory://tree", None),
    ],
)
def test_parse_and_print_round_trip(text: str, transport: str, location: str, name: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.location, ref.ref) == (transport, location, name)
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    "text, message",
    [
        ("nonsense", "is not a reference: use one of docker:, oci:, oci-archive:, dir:, docker-archive:, registry-storage:"),
        ("oci:", "no location after oci:"),
        ("oci::name", "no location after oci:"),
        ("dir:", "no location after dir:"),
        ("docker:reg/app", "a registry reference is docker://HOST"),
        ("docker:///app", "no registry host"),
        ("docker://reg/App", "invalid repository name 'App'"),
        ("docker://reg/app:-bad", "invalid tag '-bad'"),
        ("docker://reg/app@sha256:abc", "invalid digest 'sha256:abc'"),
        (f"docker://reg/app:1@{DIGEST}", "give a tag or a digest, not both"),
    ],
)
def test_malformed_references_are_refused_as_invalid_input(text: str, message: str) -> None:
    with pytest.raises(ReferenceError, match=message) as raised:
        parse_reference(text)
    assert raised.value.kind == "invalid_input"


@pytest.mark.parametrize(
    "text, store, domain",
    [
        ("docker://reg:5000/team/app:1.0", "docker://reg:5000/team/app", "docker://reg:5000"),
        (f"docker://reg:5000/app@{DIGEST}", "docker://reg:5000/app", "docker://reg:5000"),
        ("oci:/l:apps/web:1.0", "oci:/l", "oci:/l"),
        ("oci-archive:/a.tar:x", "oci-archive:/a.tar", "oci-archive:/a.tar"),
        ("docker-archive:/a.tar:app:1", "docker-archive:/a.tar", "docker-archive:/a.tar"),
        ("dir:/d", "dir:/d", "dir:/d"),
        ("registry-storage:/r", "registry-storage:/r", "registry-storage:/r"),
    ],
)
def test_store_identity_and_blob_domain(text: str, store: str, domain: str) -> None:
    """Repositories of one registry share blobs; every other store keeps its own."""
    ref = parse_reference(text)
    assert (ref.store, ref.blob_domain, blob_domain(ref.store)) == (store, domain, domain)


def test_only_registries_are_written_per_repository() -> None:
    assert [t for t in ("docker://r/p", "oci:/l", "oci-archive:/a", "docker-archive:/a", "dir:/d")
            if parse_reference(t).per_repository] == ["docker://r/p"]


@pytest.mark.parametrize(
    "text, selection",
    [
        ("docker://reg/app", ("latest", None)),
        ("docker://reg/app:1", ("1", None)),
        (f"docker://reg/app@{DIGEST}", (None, DIGEST)),
        ("oci:/l", (None, None)),
        ("oci:/l:@2", ("@2", None)),
        ("docker-archive:/a.tar:app:1", ("app:1", None)),
        ("dir:/d", (None, None)),
    ],
)
def test_selection_of_the_root_image(text: str, selection: tuple[str | None, str | None]) -> None:
    assert parse_reference(text).selection() == selection


@pytest.mark.parametrize(
    "source, listed, shown",
    [
        ("docker://reg:5000/team", entry("team/app:1", "app", "1"), "docker://reg:5000/team/app:1"),
        ("docker://reg:5000", entry("a/b/c:v2", "a/b/c", "v2"), "docker://reg:5000/a/b/c:v2"),
        ("oci:/l", entry("apps/web:1.0", "apps/web", "1.0"), "oci:/l:apps/web:1.0"),
        ("oci:/l", entry("", "", None), "oci:/l"),
        ("docker-archive:/a.tar", entry("x/y:1", "x/y", "1"), "docker-archive:/a.tar:x/y:1"),
        ("dir:/d", entry("", "", None), "dir:/d"),
        ("registry-storage:/r", entry("team/app:1", "team/app", "1"), "registry-storage:/r:team/app:1"),
    ],
)
def test_a_listed_image_is_shown_as_the_reference_that_reads_it(source: str, listed: ImageEntry, shown: str) -> None:
    ref = parse_reference(source).listed(listed)
    assert str(ref) == shown


def test_a_listed_registry_image_reads_from_its_own_repository() -> None:
    ref = parse_reference("docker://reg:5000").listed(entry("team/app:1", "team/app", "1"))
    assert (ref.store, ref.ref) == ("docker://reg:5000/team/app", "1")


@pytest.mark.parametrize(
    "destination, listed, written",
    [
        ("docker://b:5000/mirror", entry("team/app:1", "team/app", "1"), "docker://b:5000/mirror/team/app:1"),
        ("docker://b:5000", entry("team/app:1", "team/app", "1"), "docker://b:5000/team/app:1"),
        ("oci:/out", entry("team/app:1", "team/app", "1"), "oci:/out:team/app:1"),
        ("oci:/out", entry("latest", "", "latest"), "oci:/out:latest"),
        ("oci:/out", entry("", "", None), "oci:/out"),
        ("oci-archive:/o.tar", entry("team/app:1", "team/app", "1"), "oci-archive:/o.tar:team/app:1"),
        ("oci-archive:/o.tar", entry("latest", "", "latest"), "oci-archive:/o.tar:latest"),
        ("docker-archive:/o.tar", entry("team/app:1", "team/app", "1"), "docker-archive:/o.tar:team/app:1"),
        ("docker-archive:/o.tar", entry("latest", "", "latest"), "docker-archive:/o.tar:image:latest"),
        ("docker-archive:/o.tar", entry("", "", None), "docker-archive:/o.tar"),
        ("dir:/d", entry("team/app:1", "team/app", "1"), "dir:/d"),
    ],
)
def test_sync_names_per_destination(destination: str, listed: ImageEntry, written: str) -> None:
    """docs/cli.md §4: repository paths go below the destination, tags are kept."""
    assert str(parse_reference(destination).synced(listed)) == written


def test_sync_cannot_write_into_a_registry_without_a_repository() -> None:
    with pytest.raises(StoreError, match="docker://b:5000: no repository to write latest into"):
        parse_reference("docker://b:5000").synced(entry("latest", "", "latest"))


def test_registry_storage_is_no_destination() -> None:
    with pytest.raises(ReferenceError, match="registry-storage: is a source only"):
        parse_reference("registry-storage:/r").synced(entry("a:1", "a", "1"))


def test_an_unknown_transport_built_by_hand_is_refused() -> None:
    with pytest.raises(ReferenceError, match="ftp: is not a transport"):
        str(ImageReference("ftp", "/x"))


@pytest.mark.parametrize(
    "name, split",
    [
        ("example.com:5000/a/b:tag", ("example.com:5000/a/b", "tag")),
        ("example.com:5000/a/b", ("example.com:5000/a/b", None)),
        ("busybox", ("busybox", None)),
        ("busybox:", ("busybox", None)),
        ("localhost:5000", ("localhost", "5000")),
    ],
)
def test_repository_and_tag_split_at_the_last_colon_after_the_last_slash(name: str, split: tuple) -> None:
    assert split_repo_tag(name) == split
