"""The public fixtures carry their provenance: every file is listed with its origin.

``tests/fixtures/origins.json`` names, for every fixture file, the project, path and
commit it was copied from, its licence and its sha256; ``tests/fixtures/README.md``
gives the same origins for people. A file added, edited or dropped without its entry
fails here, so the provenance cannot silently rot.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

try:  # tests/ is a package
    from tests.conftest import FIXTURES
except ModuleNotFoundError:  # tests/ is a plain directory on sys.path
    from conftest import FIXTURES  # type: ignore[no-redef]

#: Files about the fixtures rather than fixtures.
NOT_FIXTURES = {"README.md", "origins.json", "LICENSE-Apache-2.0.txt"}
LICENCES = {"Apache-2.0"}
ENTRY_KEYS = {"file", "origin_repo", "origin_path", "origin_commit", "sha256", "licence"}


def _origins() -> list[dict]:
    return json.loads((FIXTURES / "origins.json").read_text(encoding="utf-8"))


def _on_disk() -> set[str]:
    return {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.relative_to(FIXTURES).as_posix() not in NOT_FIXTURES
    }


def test_every_fixture_file_has_exactly_one_origin_entry() -> None:
    listed = [entry["file"] for entry in _origins()]
    assert len(listed) == len(set(listed)), "a file is listed twice in origins.json"
    on_disk = _on_disk()
    assert sorted(on_disk - set(listed)) == [], "files without an origin in origins.json"
    assert sorted(set(listed) - on_disk) == [], "origins.json lists files that are not there"


def test_origin_entries_are_complete() -> None:
    for entry in _origins():
        assert set(entry) == ENTRY_KEYS, entry
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry["origin_repo"]), entry
        assert entry["origin_path"] and not entry["origin_path"].startswith("/"), entry
        assert re.fullmatch(r"[0-9a-f]{40}", entry["origin_commit"]), entry
        assert entry["licence"] in LICENCES, entry


@pytest.mark.parametrize("entry", _origins(), ids=lambda e: e["file"])
def test_fixture_bytes_match_their_recorded_sha256(entry: dict) -> None:
    data = (FIXTURES / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_readme_gives_the_origin_of_every_fixture() -> None:
    """Each JSON fixture has its own row; each layout folder has one row for its files."""
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 5:
            rows[cells[0]] = cells
    for entry in _origins():
        name = entry["file"]
        if name.startswith("layouts/"):
            folder = "/".join(name.split("/")[:2]) + "/"
            row = rows.get(folder)
            assert row is not None, f"README.md has no row for {folder}"
            # A member's upstream path is the folder's upstream path (plus its own relative path).
            assert entry["origin_path"].startswith(row[2]), (name, row)
        else:
            row = rows.get(name)
            assert row is not None, f"README.md has no row for {name}"
            assert row[2] == entry["origin_path"], (name, row)
        assert row[1] == entry["origin_repo"] and row[3] == entry["origin_commit"], (name, row)
        assert row[-1] == entry["licence"], (name, row)


def test_the_licence_text_travels_with_the_fixtures() -> None:
    text = (FIXTURES / "LICENSE-Apache-2.0.txt").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
