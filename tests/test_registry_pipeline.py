"""imagepush copy/sync between real Docker Distribution registries, judged by skopeo."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline import commands
from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from tests.conftest import require_tool, running_registry, run
from tests.registry_server import Registry, start_registry

pytestmark = pytest.mark.integration

#: (repository, tag) -> how skopeo pushes it from the sample layout.
IMAGES = {
    ("team/app", "1"): ("demo/app:1.0", []),
    ("team/app", "v2s2"): ("demo/app:1.0", ["--format", "v2s2"]),
    ("team/multi", "1.0"): ("demo/multi:1.0", ["--all"]),
    ("legacy/s1", "1"): ("demo/app:1.0", ["--format", "v2s1"]),
}


def skopeo(*args: str) -> bytes:
    return run([require_tool("skopeo"), "--insecure-policy", *args], timeout=120).stdout


def digest_of(host: str, image: str) -> str:
    """The manifest digest as containers/image computes it (schema1: over the signed payload)."""
    return json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/{image}"))["Digest"] \
        if "legacy" in image else "sha256:" + __import__("hashlib").sha256(
            skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{image}")).hexdigest()


def push_samples(reg: Registry, root: Path) -> None:
    """Every image of IMAGES into ``reg``, pushed by skopeo from a sample layout made under ``root``."""
    write_oci_samples(str(root / "layout"))
    for (repo, tag), (ref, flags) in IMAGES.items():
        skopeo("copy", "--dest-tls-verify=false", *flags, f"oci:{root}/layout:{ref}",
               f"docker://{reg.host}/{repo}:{tag}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("src")
    for reg in running_registry(root / "registry", schema1=True):
        push_samples(reg, root)
        yield reg


@pytest.fixture
def mirror(tmp_path) -> Iterator[Registry]:
    yield from running_registry(tmp_path / "mirror", schema1=True)


def insecure(*regs: Registry) -> list[str]:
    return [a for r in regs for a in ("--insecure-registry", r.host)]


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_sync_of_a_whole_registry_keeps_every_digest(source, mirror, tmp_path, monkeypatch):
    audit = tmp_path / "a.parquet"
    assert main(["sync", f"docker://{source.host}/", f"docker://{mirror.host}/mirror",
                 *insecure(source, mirror), "--audit", str(audit)]) == 0
    for repo, tag in IMAGES:
        assert digest_of(mirror.host, f"mirror/{repo}:{tag}") == digest_of(source.host, f"{repo}:{tag}")
    children = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{source.host}/team/multi:1.0"))
    for child in children["manifests"]:
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{mirror.host}/mirror/team/multi@{child['digest']}")
    written = [r for r in rows(audit) if r["role"] != "child"]
    assert len(written) == len(IMAGES)
    assert all(r["status"] == "copied" and r["destination_digest"] == r["source_digest"] for r in written)

    # Every tag is current: the launcher settles the rerun without starting a pipeline.
    monkeypatch.setattr(commands, "run", lambda spec: pytest.fail(f"pipeline started for {spec.jobs}"))
    again = tmp_path / "again.parquet"
    assert main(["sync", f"docker://{source.host}/", f"docker://{mirror.host}/mirror",
                 *insecure(source, mirror), "--audit", str(again)]) == 0
    assert sum(r["bytes_copied"] for r in rows(again)) == 0
    assert sum(r["blobs_copied"] for r in rows(again)) == 0
    assert sorted((r["source"], r["destination_digest"]) for r in rows(again)) == \
        sorted((r["source"], r["destination_digest"]) for r in rows(audit))


def test_copy_within_a_registry_mounts_instead_of_uploading(source, tmp_path):
    audit = tmp_path / "a.parquet"
    assert main(["copy", f"docker://{source.host}/team/app:1", f"docker://{source.host}/mounted/app:1",
                 *insecure(source), "--audit", str(audit)]) == 0
    (row,) = rows(audit)
    assert (row["status"], row["blobs_copied"], row["blobs_mounted"], row["blobs_skipped"], row["bytes_copied"]) \
        == ("copied", 0, 3, 0, 0)
    assert (row["repository"], row["tag"]) == ("team/app", "1")
    assert row["bytes_total"] > 0
    assert digest_of(source.host, "mounted/app:1") == digest_of(source.host, "team/app:1")


def test_one_run_writes_an_index_to_two_registries_and_a_layout(source, tmp_path):
    regs = [start_registry(tmp_path / f"r{i}") for i in range(2)]
    try:
        assert main(["copy", f"docker://{source.host}/team/multi:1.0",
                     *(f"docker://{r.host}/copy/multi:1.0" for r in regs), f"oci:{tmp_path}/layout:multi",
                     *insecure(source, *regs), "--audit", str(tmp_path / "a.parquet")]) == 0
        want = digest_of(source.host, "team/multi:1.0")
        assert [digest_of(r.host, "copy/multi:1.0") for r in regs] == [want, want]
        assert "sha256:" + __import__("hashlib").sha256(
            skopeo("inspect", "--raw", f"oci:{tmp_path}/layout:multi")).hexdigest() == want
        # Each source blob was read once: the blob counts are per destination, the bytes add up.
        audit = rows(tmp_path / "a.parquet")
        assert len({r["destination"] for r in audit}) == 3
    finally:
        for r in regs:
            r.stop()


def test_schema1_into_a_registry_without_schema1_fails_clearly_or_converts(source, tmp_path):
    plain = start_registry(tmp_path / "plain")
    try:
        audit = tmp_path / "a.parquet"
        assert main(["copy", f"docker://{source.host}/legacy/s1:1", f"docker://{plain.host}/legacy/s1:1",
                     *insecure(source, plain), "--audit", str(audit)]) == 1
        (row,) = rows(audit)
        assert row["status"] == "failed" and "schema1" in row["error"]
        assert main(["copy", "--format", "v2s2", f"docker://{source.host}/legacy/s1:1",
                     f"docker://{plain.host}/legacy/s1:1", *insecure(source, plain),
                     "--audit", str(tmp_path / "b.parquet")]) == 0
        config = json.loads(skopeo("inspect", "--config", "--raw", "--tls-verify=false",
                                   f"docker://{plain.host}/legacy/s1:1"))
        original = json.loads(skopeo("inspect", "--config", "--raw", "--tls-verify=false",
                                     f"docker://{source.host}/team/app:1"))
        assert config["rootfs"]["diff_ids"] == original["rootfs"]["diff_ids"]
    finally:
        plain.stop()


def test_a_tag_the_registry_refuses_fails_alone_and_its_sibling_tags_are_written(tmp_path):
    """One repository, three tags; the destination refuses schema1: one row failed, two copied."""
    write_oci_samples(str(tmp_path / "layout"))
    for mixed in running_registry(tmp_path / "mixed", schema1=True):
        for tag, flags in {"v2s1": ["--format", "v2s1"], "v2s2": ["--format", "v2s2"], "oci": []}.items():
            skopeo("copy", "--dest-tls-verify=false", *flags, f"oci:{tmp_path}/layout:demo/app:1.0",
                   f"docker://{mixed.host}/mixed/app:{tag}")
        for plain in running_registry(tmp_path / "plain"):  # Distribution's default: no schema1
            audit = tmp_path / "a.parquet"
            assert main(["sync", f"docker://{mixed.host}/mixed/app", f"docker://{plain.host}/copy",
                         *insecure(mixed, plain), "--audit", str(audit)]) == 1
            outcome = {r["source"].rsplit(":", 1)[1]: r for r in rows(audit)}
            assert sorted(outcome) == ["oci", "v2s1", "v2s2"]
            assert outcome["v2s1"]["status"] == "failed"
            assert "registry refused a application/vnd.docker.distribution.manifest.v1+prettyjws manifest" \
                in outcome["v2s1"]["error"] and "--format v2s2 or oci" in outcome["v2s1"]["error"]
            for tag in ("v2s2", "oci"):
                assert (outcome[tag]["status"], outcome[tag]["error"]) == ("copied", None)
                assert outcome[tag]["destination_digest"] == digest_of(plain.host, f"copy/app:{tag}") \
                    == digest_of(mixed.host, f"mixed/app:{tag}")
            tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{plain.host}/copy/app"))["Tags"]
            assert sorted(tags) == ["oci", "v2s2"]


def test_registry_to_layout_sync_names_each_image_repo_and_tag(source, tmp_path):
    assert main(["sync", f"docker://{source.host}/team", f"oci:{tmp_path}/out",
                 *insecure(source), "--audit", str(tmp_path / "a.parquet")]) == 0
    names = sorted(json.loads(line)["ref"].split(":", 2)[2] for line in
                   run([str(Path(__import__("sys").executable).with_name("imagepush")), "ls",
                        f"oci:{tmp_path}/out"]).stdout.decode().splitlines())
    assert names == ["app:1", "app:v2s2", "multi:1.0"]


def test_wrong_password_fails_with_an_authentication_error_and_never_shows_it(source, tmp_path, capsys):
    secret = "not-the-Passw0rd-4711"
    for locked in running_registry(tmp_path / "locked", htpasswd={"alice": "right-password"}):
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"auths": {locked.host: {
            "auth": base64.b64encode(f"alice:{secret}".encode()).decode()}}}))
        audit = tmp_path / "a.parquet"
        code = main(["copy", f"docker://{source.host}/team/app:1", f"docker://{locked.host}/team/app:1",
                     *insecure(source, locked), "--authfile", str(authfile), "--audit", str(audit)])
        out, err = capsys.readouterr()
        assert code == 1
        (row,) = rows(audit)
        assert row["status"] == "failed" and "authentication" in row["error"].lower()
        assert secret not in out + err
        assert secret.encode() not in audit.read_bytes()

        authfile.write_text(json.dumps({"auths": {locked.host: {"username": "alice", "password": "right-password"}}}))
        assert main(["copy", f"docker://{source.host}/team/app:1", f"docker://{locked.host}/team/app:1",
                     *insecure(source, locked), "--authfile", str(authfile),
                     "--audit", str(tmp_path / "ok.parquet")]) == 0


def test_sync_from_a_registry_storage_tree_keeps_names_and_digests(source, tmp_path):
    """The storage tree of a registry is read directly, no registry process involved."""
    assert main(["sync", f"registry-storage:{source.storage}", f"oci:{tmp_path}/export",
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    audit = [r for r in rows(tmp_path / "a.parquet") if r["role"] != "child"]
    oci_kept = {r["source"].rsplit(":", 2)[-2] + ":" + r["source"].rsplit(":", 1)[-1]: r for r in audit}
    # schema1 cannot live in an OCI layout: converted; the others keep their digests.
    for (repo, tag) in IMAGES:
        row = oci_kept[f"{repo}:{tag}"]
        assert row["status"] == "copied"
        if repo != "legacy/s1" and tag != "v2s2":
            assert row["destination_digest"] == row["source_digest"] == digest_of(source.host, f"{repo}:{tag}")


def test_an_insecure_tls_registry_named_by_the_user_prints_no_tls_warnings(tmp_path):
    """urllib3 warns on every unverified connection; the user asked for exactly that, once."""
    import subprocess
    import sys

    write_oci_samples(str(tmp_path / "layout"))
    for tls in running_registry(tmp_path / "tls", tls=True):
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("imagepush")), "copy", f"oci:{tmp_path}/layout:demo/app:1.0",
             f"docker://{tls.host}/quiet/app:1", "--insecure-registry", tls.host,
             "--audit", str(tmp_path / "a.parquet")],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines() == [
            f"imagepush: oci:{tmp_path}/layout:demo/app:1.0 -> docker://{tls.host}/quiet/app:1: copied"]
