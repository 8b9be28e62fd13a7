"""A run file's problems name the file, line and column and the key's path, all at once, exit 2.

Misspelt keys get a did-you-mean; YAML that does not parse is placed too; no traceback.
"""

from __future__ import annotations

import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.exits import EXIT_USAGE


@pytest.fixture
def refused(capsys, tmp_path):
    """Run a run file that must be refused; return its file name and the lines of stderr."""

    def refuse(text: str) -> tuple[str, list[str]]:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        code = main(["run", str(path)])
        out, err = capsys.readouterr()
        assert (code, out) == (EXIT_USAGE, "")
        assert "Traceback" not in err
        assert {p.name for p in tmp_path.iterdir()} == {"run.yaml"}
        return str(path), err.splitlines()

    return refuse


def test_a_misspelt_to_is_placed_and_the_right_key_suggested(refused):
    path, lines = refused("jobs:\n  - sync: oci:/in\n    too: [oci:/out]\n")
    assert lines == [f"imagepush: config: {path}:3:5: jobs.0.too: unknown key (did you mean 'to'?)"]


def test_a_misspelt_format_in_a_destination_is_placed_and_the_right_key_suggested(refused):
    path, lines = refused("jobs:\n  - sync: oci:/in\n    to:\n      - ref: oci:/out\n        fromat: oci\n")
    assert lines == [f"imagepush: config: {path}:5:9: jobs.0.to.0.fromat: unknown key (did you mean 'format'?)"]


def test_a_key_indented_unlike_its_siblings_is_a_yaml_error_at_its_line_and_column(refused):
    path, lines = refused("jobs:\n  - sync: oci:/in\n    to: [oci:/out]\n   format: oci\n")
    assert lines == [
        f"imagepush: config: {path}:4:4: not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at 2:3); check the indentation"]


def test_every_problem_of_a_file_is_shown_at_once_in_file_order(refused, monkeypatch):
    monkeypatch.delenv("NO_SUCH_PASSWORD_VARIABLE", raising=False)
    path, lines = refused(
        "registries:\n"
        "  retries: -1\n"
        "  hosts:\n"
        "    quay.io: {username: bob, password_env: NO_SUCH_PASSWORD_VARIABLE}\n"
        "    https://quay.io: {}\n"
        "jobs:\n"
        "  - sync: oci:/in\n"
        "    to: [oci:/out]\n"
        "    semver: '>= banana'\n"
        "    latest: 0\n"
        "    rename: '{repo}/{tag}'\n"
        "  - copy: oci:/in:a\n"
        "    to: [oci:/out:a]\n"
        "    platfroms: [linux/amd64]\n"
    )
    assert lines == [
        f"imagepush: config: {path} has 7 problems:",
        f"  {path}:2:3: registries.retries: Input should be greater than or equal to 0",
        f"  {path}:4:5: registries.hosts.quay.io: password_env: the environment variable NO_SUCH_PASSWORD_VARIABLE "
        "is not set",
        f"  {path}:5:5: registries.hosts.https://quay.io: 'https://quay.io' is not a registry host[:port] "
        "(no scheme, no path)",
        f"  {path}:9:5: jobs.0.semver: '>= banana' is not a version range (e.g. '>=1.2, <2', '~1.2', '^1.2')",
        f"  {path}:10:5: jobs.0.latest: Input should be greater than or equal to 1",
        f"  {path}:11:5: jobs.0.rename: '{{repo}}/{{tag}}': unknown placeholder {{repo}} "
        "(use {registry}, {repository}, {name}, {tag})",
        f"  {path}:14:5: jobs.1.platfroms: unknown key (did you mean 'platforms'?)",
    ]


def test_a_password_given_inline_is_never_repeated_in_an_error(refused):
    path, lines = refused("registries:\n  hosts:\n    quay.io: {password: hunter2-secret}\njobs: []\n")
    assert lines == [f"imagepush: config: {path}:3:5: registries.hosts.quay.io: a password needs a 'username'"]


def test_filters_and_templates_belong_to_sync_jobs_and_verify_jobs_of_a_listed_store(refused):
    path, lines = refused("jobs:\n  - copy: oci:/in:a\n    to: [oci:/out:a]\n    latest: 2\n    rename: '{name}'\n")
    assert lines == [f"imagepush: config: {path}:2:5: jobs.0: 'latest' filters sync jobs only"]
    path, lines = refused("jobs:\n  - sync: oci:/in\n    to: [oci:/out]\n    rename: '{registry}/{name}'\n")
    assert lines == [f"imagepush: config: {path}:2:5: jobs.0: 'rename' uses {{registry}}, but 'oci:/in' is no registry"]
    path, lines = refused("jobs:\n  - verify: docker://reg.example/app:1\n    to: [oci:/out]\n    tags: ['1']\n")
    assert lines == [f"imagepush: config: {path}:2:5: jobs.0: 'docker://reg.example/app:1' names one image: "
                     "filters and 'rename' apply to a listed store"]


def test_a_key_written_twice_is_refused_where_it_repeats(refused):
    """YAML keeps the last silently: a second ``jobs:`` would drop every job of the first."""
    path, lines = refused("jobs:\n  - sync: oci:/in\n    to: [oci:/out]\n    to: [oci:/elsewhere]\njobs: []\n")
    assert lines == [f"imagepush: config: {path} has 2 problems:",
                     f"  {path}:4:5: jobs.0.to: duplicate key (first at 3:5)",
                     f"  {path}:5:1: jobs: duplicate key (first at 1:1)"]
