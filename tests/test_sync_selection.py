"""Sync jobs of a run file against real Distribution registries: which tags are copied, under which names,
and per-host registry settings reaching each host's client.

The source holds one tiny image under many tags (pushed once by skopeo, tagged by
manifest PUTs), so every filter is judged on tag names alone, by listing the mirror.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
import requests

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from tests.conftest import require_tool, running_registry, run
from tests.registry_server import Registry

pytestmark = pytest.mark.integration

#: repository -> its tags in the source registry.
SOURCE_TAGS = {
    "team/app": ["1.0", "v1.2.3", "1.10", "2.0", "2.1.0-rc.1", "latest", "dev"],
    "team/tools/cli": ["0.9", "1.0"],
}


def http(reg: Registry) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def tags_of(reg: Registry) -> dict[str, list[str]]:
    """Every repository of a plain-HTTP registry with its tags, sorted."""
    with http(reg) as session:
        repositories = session.get(f"http://{reg.host}/v2/_catalog", timeout=10).json()["repositories"]
        return {repo: sorted(session.get(f"http://{reg.host}/v2/{repo}/tags/list", timeout=10).json()["tags"] or [])
                for repo in repositories}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("selection")
    write_oci_samples(str(root / "layout"))
    for reg in running_registry(root / "registry"):
        skopeo = require_tool("skopeo")
        accept = "application/vnd.oci.image.manifest.v1+json"
        with http(reg) as session:
            for repo, tags in SOURCE_TAGS.items():
                run([skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false",
                     f"oci:{root}/layout:demo/app:1.0", f"docker://{reg.host}/{repo}:{tags[0]}"], timeout=120)
                manifest = session.get(f"http://{reg.host}/v2/{repo}/manifests/{tags[0]}",
                                       headers={"Accept": accept}, timeout=10)
                for tag in tags[1:]:
                    session.put(f"http://{reg.host}/v2/{repo}/manifests/{tag}", data=manifest.content,
                                headers={"Content-Type": manifest.headers["Content-Type"]},
                                timeout=10).raise_for_status()
        assert tags_of(reg) == {repo: sorted(tags) for repo, tags in SOURCE_TAGS.items()}
        yield reg


@pytest.fixture
def mirror(tmp_path) -> Iterator[Registry]:
    yield from running_registry(tmp_path / "mirror")


def run_file(tmp_path: Path, text: str) -> int:
    (tmp_path / "run.yaml").write_text(text)
    return main(["run", str(tmp_path / "run.yaml")])


def test_each_filter_and_name_template_of_a_run_file_copies_exactly_the_tags_it_selects(source, mirror, tmp_path):
    src, dst = f"docker://{source.host}", f"docker://{mirror.host}"
    code = run_file(tmp_path, f"""
audit: {tmp_path}/audit.parquet
registries:
  hosts:
    "{source.host}": {{tls_verify: false}}
    "{mirror.host.split(':')[0]}": {{tls_verify: false}}
jobs:
  - sync: {src}/team/app
    semver: ">= 1.2, <2"
    to: [{dst}/semver]
  - sync: {src}/team
    latest: 2
    to: [{dst}/newest]
  - sync: {src}/team/app
    semver: ">=2 || >=2.1.0-rc.0"
    latest: 1
    to: [{dst}/prerelease]
  - sync: {src}/team/app
    tags: [latest, dev, nope]
    to: [{dst}/listed]
  - sync: {src}/team
    include: ["^tools/"]
    rename: "flat/{{name}}:{{tag}}-cli"
    to: [{dst}]
  - sync: {src}/team/tools
    exclude: [":0"]
    rename: "{{registry}}/{{repository:1}}"
    to: [{dst}/by-host]
""")
    assert code == 0
    assert tags_of(mirror) == {
        # 1.10 is above 1.2.3, and v1.2.3 is 1.2.3; 1.0, 2.0, the rc and the words are not in the range.
        "semver/app": ["1.10", "v1.2.3"],
        # The two highest releases of each repository; a pre-release counts only where a range admits it.
        "newest/app": ["1.10", "2.0"],
        "newest/tools/cli": ["0.9", "1.0"],
        "prerelease/app": ["2.1.0-rc.1"],
        "listed/app": ["dev", "latest"],
        "flat/cli": ["0.9-cli", "1.0-cli"],
        "by-host/127.0.0.1/tools/cli": ["1.0"],
    }
    rows = pq.read_table(tmp_path / "audit.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"copied"}
    assert len({r["destination_digest"] for r in rows}) == 1


def test_sync_include_and_exclude_flags_filter_repository_and_tag(source, mirror, tmp_path):
    code = main(["sync", f"docker://{source.host}/team", f"docker://{mirror.host}/m",
                 "--include", r":v?1\.", "--include", ":dev$", "--exclude", "^tools/",
                 "--insecure-registry", source.host, "--insecure-registry", mirror.host,
                 "--audit", str(tmp_path / "a.parquet")])
    assert code == 0
    assert tags_of(mirror) == {"m/app": ["1.0", "1.10", "dev", "v1.2.3"]}


def test_a_host_s_own_credentials_and_ca_bundle_reach_only_its_client(source, tmp_path, monkeypatch, capsys):
    """The locked registry speaks TLS with its own CA and wants a password; the run has neither globally."""
    secret = "per-host-Passw0rd-815"
    monkeypatch.setenv("IMAGEPUSH_TEST_PASSWORD", secret)
    for locked in running_registry(tmp_path / "locked", tls=True, htpasswd={"carol": secret}):
        text = f"""
audit: {tmp_path}/audit.parquet
registries:
  insecure: ["{source.host}"]
  hosts:
    "{locked.host}":
      username: carol
      password_env: IMAGEPUSH_TEST_PASSWORD
      ca_bundle: {locked.certificate}
jobs:
  - sync: docker://{source.host}/team/tools
    tags: ["1.0"]
    to: [docker://{locked.host}/private]
"""
        assert run_file(tmp_path, text) == 0
        out, err = capsys.readouterr()
        auth = ("carol", secret)
        with requests.Session() as session:
            session.trust_env = False
            listed = session.get(f"https://{locked.host}/v2/private/cli/tags/list", auth=auth,
                                 verify=str(locked.certificate), timeout=10).json()
        assert listed["tags"] == ["1.0"]
        assert secret not in out + err
        assert secret.encode() not in (tmp_path / "audit.parquet").read_bytes()

        # Without the host's entry the same run is refused by the registry's TLS, then by its password.
        without_ca = text.replace(f"      ca_bundle: {locked.certificate}\n", "")
        assert run_file(tmp_path, without_ca) == 1
        assert f"TLS with {locked.host} failed (CERTIFICATE_VERIFY_FAILED)" in capsys.readouterr().err
        without_password = text.replace("      password_env: IMAGEPUSH_TEST_PASSWORD\n", "")
        assert run_file(tmp_path, without_password) == 1
        rows = pq.read_table(tmp_path / "audit.parquet").to_pylist()
        assert [r["error_kind"] for r in rows] == ["auth"]
        assert secret not in json.dumps(rows, default=str) + "".join(capsys.readouterr())
