"""Tag selection, version coercion, name templates and per-host options: pure rules, no registry."""

from __future__ import annotations

import pickle

import pytest

from imagepush.transforms.engine.selection import SelectionError, TagSelection, parse_range, tag_version
from imagepush.transforms.engine.templates import NameTemplate, TemplateError
from imagepush.transforms.stores.base import ImageEntry
from imagepush.transforms.stores.options import HostOptions, Secret, StoreOptions
from imagepush.transforms.stores.refs import ReferenceError


def entry(repository: str, tag: str | None) -> ImageEntry:
    return ImageEntry(ref=f"{repository}:{tag}" if tag else "", repository=repository, tag=tag, digest="", media_type="")


@pytest.mark.parametrize("tag, version", [
    ("1.0", "1.0.0"), ("v1.2.3", "1.2.3"), ("V2", "2.0.0"), ("1.10", "1.10.0"),
    ("2.1.0-rc.1", "2.1.0-rc.1"), ("v3.0-alpha", "3.0.0-alpha"),
])
def test_a_tag_with_a_v_prefix_or_missing_parts_is_coerced_to_a_full_version(tag, version):
    assert str(tag_version(tag)) == version


@pytest.mark.parametrize("tag", ["latest", "dev", "1.2.3.4", "01.2", "1.2.03", "v", "", None, "1.0-", "sha-1.2"])
def test_a_tag_that_is_no_version_has_none(tag):
    assert tag_version(tag) is None


def test_versions_order_numerically_not_by_text():
    assert sorted(["1.10", "1.9", "v1.2.3", "2.0", "2.0-rc.1"], key=tag_version) == [
        "v1.2.3", "1.9", "1.10", "2.0-rc.1", "2.0"]


@pytest.mark.parametrize("spelling", [">=1.2, <2", ">=1.2 <2", ">= 1.2 , < 2", "^1.2"])
def test_regsync_range_spellings_mean_the_same(spelling):
    inside = {str(v) for v in map(tag_version, ["1.0", "1.2", "v1.2.3", "1.10", "2.0", "2.1"]) if v in parse_range(spelling)}
    assert inside == {"1.2.0", "1.2.3", "1.10.0"}


def test_tilde_caret_and_alternatives():
    assert [t for t in ["1.2", "1.2.9", "1.3", "2.0"] if tag_version(t) in parse_range("~1.2")] == ["1.2", "1.2.9"]
    assert [t for t in ["0.2.1", "0.3", "1.0"] if tag_version(t) in parse_range("^0.2")] == ["0.2.1"]
    assert [t for t in ["1.0", "2.5", "3.0"] if tag_version(t) in parse_range("<2 || >=3")] == ["1.0", "3.0"]


@pytest.mark.parametrize("text", ["", "  ", "garbage", ">=", "1.2.3.4", ">=1.2 &&<2"])
def test_a_range_that_is_not_one_is_a_selection_error(text):
    with pytest.raises(SelectionError):
        parse_range(text)


TAGS = ["1.0", "v1.2.3", "1.10", "2.0", "2.1.0-rc.1", "latest", "dev"]


def kept(selection: TagSelection, entries: list[ImageEntry], grouped: bool = True) -> list[str]:
    return [e.ref for e in selection.select(entries, grouped=grouped)]


def test_every_filter_must_keep_an_image():
    app = [entry("app", t) for t in TAGS]
    assert kept(TagSelection(), app) == [e.ref for e in app]
    assert kept(TagSelection(semver=">=1.2, <2"), app) == ["app:v1.2.3", "app:1.10"]
    assert kept(TagSelection(tags=("latest", "1.0", "gone")), app) == ["app:1.0", "app:latest"]
    assert kept(TagSelection(include=(r":\d",), exclude=("rc",)), app) == ["app:1.0", "app:1.10", "app:2.0"]
    assert kept(TagSelection(tags=("latest",), semver=">=1"), app) == []


def test_latest_keeps_the_highest_releases_per_repository_in_listing_order():
    listing = [entry("app", t) for t in TAGS] + [entry("db", t) for t in ["9.6", "10", "v11.1", "dev"]]
    assert kept(TagSelection(latest=2), listing) == ["app:1.10", "app:2.0", "db:10", "db:v11.1"]
    assert kept(TagSelection(latest=1, semver=">=2.1.0-rc.0"), listing) == ["app:2.1.0-rc.1", "db:v11.1"]
    assert kept(TagSelection(latest=5, include=("^db:",)), listing) == ["db:9.6", "db:10", "db:v11.1"]


def test_latest_over_a_listing_that_mixes_repositories_decides_each_on_all_its_tags():
    mixed = [entry("a", "1"), entry("b", "5"), entry("a", "3"), entry("b", "4"), entry("a", "2")]
    assert kept(TagSelection(latest=1), mixed, grouped=False) == ["a:3", "b:5"]


def test_equal_versions_are_ranked_by_tag_text_never_by_listing_order():
    assert kept(TagSelection(latest=1), [entry("a", "v1.2"), entry("a", "1.2.0")]) == ["a:v1.2"]
    assert kept(TagSelection(latest=1), [entry("a", "1.2.0"), entry("a", "v1.2")]) == ["a:v1.2"]


def test_an_untagged_image_is_dropped_by_tag_filters_only():
    untagged = [entry("app", None)]
    assert len(kept(TagSelection(), untagged)) == 1
    assert kept(TagSelection(semver=">=0"), untagged) == kept(TagSelection(tags=("x",)), untagged) == []


def test_a_selection_pickles_for_the_workers():
    selection = TagSelection(include=("a",), semver="^1.2", latest=3)
    assert pickle.loads(pickle.dumps(selection)) == selection


@pytest.mark.parametrize("template, expected", [
    ("{repository}", ("team/tools/cli", "1.0")),
    ("mirror/{repository:1}", ("mirror/tools/cli", "1.0")),
    ("{repository:2}:{tag}-amd64", ("cli", "1.0-amd64")),
    ("{registry}/{name}", ("quay.io/cli", "1.0")),
    ("flat/{name}:stable", ("flat/cli", "stable")),
])
def test_a_template_names_the_path_below_the_destination_and_keeps_the_tag_unless_it_gives_one(template, expected):
    assert NameTemplate(template).render("quay.io:443", "team/tools/cli", "1.0") == expected


@pytest.mark.parametrize("template, message", [
    ("{repo}", "unknown placeholder {repo} (use {registry}, {repository}, {name}, {tag})"),
    ("{tag:1}", "{tag:1}: only {repository:N} takes a number"),
    ("{repository:x}", "{repository:x}: only {repository:N} takes a number"),
    ("{name!r}", "{name!r}: placeholders take no conversion"),
    ("a/{name", "expected '}' before end of string (write {{ or }} for a literal brace)"),
])
def test_a_template_mistake_is_found_when_it_is_loaded(template, message):
    with pytest.raises(TemplateError) as raised:
        NameTemplate(template)
    assert str(raised.value) == f"{template!r}: {message}"


def test_a_rendered_name_that_no_registry_accepts_fails_that_image():
    with pytest.raises(ReferenceError, match="has no segments left after dropping 3"):
        NameTemplate("{repository:3}").render("h", "team/tools/cli", "1")
    with pytest.raises(ReferenceError, match="'Team/cli' is not a valid repository name"):
        NameTemplate("Team/{name}").render("h", "team/tools/cli", "1")


def test_a_host_s_own_options_replace_the_run_s_for_its_client_only():
    options = StoreOptions(
        insecure_registries=("reg.example",), authfile="/run.json", registry_concurrency=8,
        hosts=(HostOptions("reg.example:5000", tls_verify=True, concurrency=2),
               HostOptions("reg.example", authfile="/any-port.json"),
               HostOptions("other.example", tls_verify=False, ca_bundle=None, username="u", password=Secret("pw"))),
    )
    exact = options.for_host("reg.example:5000")
    assert (exact.insecure_registries, exact.registry_concurrency, exact.authfile) == ((), 2, "/run.json")
    by_name = options.for_host("reg.example:6000")
    assert (by_name.insecure_registries, by_name.authfile) == (("reg.example",), "/any-port.json")
    assert options.for_host("other.example").insecure_registries == ("reg.example", "other.example")
    assert options.for_host("elsewhere.example") is options
    assert "pw" not in repr(options) and pickle.loads(pickle.dumps(options)) == options
