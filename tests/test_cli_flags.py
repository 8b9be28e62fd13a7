"""The flags skopeo users reach for, and no silent surprises (issue 13, items 4 to 6).

Local stores where the behaviour is the command line's; a real registry (Distribution)
where it is about registries: tags, credentials, TLS settings, digests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
import requests

from imagepush.pipeline.cli import EXAMPLES, build_parser, main
from imagepush.pipeline.exits import EXIT_USAGE
from imagepush.pipeline.platforms import system_platform
from imagepush.pipeline.samples import write_oci_samples
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.stores.layout.oci import OCILayoutSource
from tests.conftest import require_tool, sha256
from tests.registry_server import Registry, start_registry

PASSWORD = "s3cret-pa55word"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flag-samples")
    write_oci_samples(str(root))
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    require_tool("docker-registry")
    reg = start_registry(tmp_path_factory.mktemp("reg") / "r")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Iterator[Registry]:
    """A registry that wants a password (htpasswd, Basic auth)."""
    require_tool("docker-registry")
    reg = start_registry(tmp_path_factory.mktemp("locked") / "r", htpasswd={"robot": PASSWORD})
    try:
        yield reg
    finally:
        reg.stop()


def tags(reg: Registry, repository: str) -> list[str]:
    return requests.get(f"http://{reg.host}/v2/{repository}/tags/list", timeout=10).json()["tags"]


def registry_digest(reg: Registry, repository: str, tag: str) -> str:
    accept = ", ".join([mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_SCHEMA2, mt.DOCKER_LIST])
    reply = requests.get(f"http://{reg.host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept}, timeout=10)
    reply.raise_for_status()
    return sha256(reply.content)


# --- flags -------------------------------------------------------------------------------


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert (exit_.value.code, capsys.readouterr().out) == (0, f"imagepush {version('imagepush')}\n")


def test_every_command_s_help_shows_an_example_to_copy():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(EXAMPLES)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "example" in text and f"imagepush {name} " in text, name


def test_quiet_prints_the_summary_and_nothing_else(samples, tmp_path, capsys):
    code, out, err = run_cli(capsys, "copy", "-q", f"oci:{samples}:demo/app:1.0", f"oci:{tmp_path}/a:app",
                             f"dir:{tmp_path}/d", "--audit", str(tmp_path / "a.parquet"))
    assert (code, err) == (0, "")
    assert out.startswith("1 image to 2 destinations: 2 copied; ") and out.endswith(f"audit: {tmp_path}/a.parquet\n")


def test_the_default_audit_goes_to_the_per_user_state_folder(samples, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code, out, _ = run_cli(capsys, "copy", f"oci:{samples}:demo/app:1.0", f"oci:{tmp_path}/o:app")
    (written,) = (tmp_path / "state/imagepush/audit").glob("*.parquet")
    assert code == 0 and out.endswith(f"audit: {written}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "state"]


def test_no_clobber_keeps_a_tag_that_points_elsewhere_in_preflight_pipeline_and_direct_run(samples, tmp_path, capsys):
    out = f"oci:{tmp_path}/o:app"
    assert main(["copy", "-q", f"oci:{samples}:demo/multi:1.0", out, "--audit", str(tmp_path / "0.parquet")]) == 0
    before = OCILayoutSource(f"{tmp_path}/o").get_root("app").digest
    # The same rule whoever asks: the launcher's preflight, the Beam pipeline, the direct engine.
    for n, preflight in enumerate((["--no-preflight", "--engine", "beam"], ["--no-preflight", "--engine", "direct"],
                                   [])):
        audit = tmp_path / f"{n + 1}.parquet"
        assert main(["copy", "-q", f"oci:{samples}:demo/app:1.0", out, "--no-clobber", *preflight,
                     "--audit", str(audit)]) == 0
        (row,) = rows(audit)
        assert (row["status"], row["blobs_copied"]) == ("skipped", 0)
        assert row["error"].startswith(f"{out} already points at {before} (not sha256:")
        assert OCILayoutSource(f"{tmp_path}/o").get_root("app").digest == before
    assert "1 image to 1 destination: 1 skipped;" in capsys.readouterr().out
    # A dry run says so too, and counts nothing to upload.
    code, plan, _ = run_cli(capsys, "copy", "--dry-run", "--no-clobber", f"oci:{samples}:demo/app:1.0", out)
    assert code == 0 and plan.startswith(f"skip     oci:{samples}:demo/app:1.0 -> {out}  error: {out} already")
    assert "1 skip; blobs: 0 upload (0 B), 0 mount, 0 skip" in plan
    # Without the flag the tag moves, as before.
    assert main(["copy", "-q", f"oci:{samples}:demo/app:1.0", out, "--audit", str(tmp_path / "5.parquet")]) == 0
    assert OCILayoutSource(f"{tmp_path}/o").get_root("app").digest != before


def test_a_run_file_s_no_clobber_reaches_every_destination_of_every_job(tmp_path):
    from imagepush.pipeline.config import spec_from_yaml

    spec = spec_from_yaml("no_clobber: true\njobs:\n  - {copy: 'oci:/a:x', to: ['oci:/b:x', 'dir:/c']}\n"
                          "  - {sync: 'oci:/a', to: ['oci:/m']}\n", "r", str(tmp_path / "a.parquet"))
    assert [t.no_clobber for t in spec.jobs[0].targets] == [True, True]
    assert [o.no_clobber for o in spec.syncs[0].destinations] == [True]


def test_multi_arch_system_keeps_this_machine_s_platform_and_index_only_is_refused(samples, tmp_path, capsys):
    audit = tmp_path / "a.parquet"
    assert main(["copy", "-q", "--multi-arch", "system", f"oci:{samples}:demo/multi:1.0", f"oci:{tmp_path}/o:m",
                 "--audit", str(audit)]) == 0
    capsys.readouterr()
    assert {r["platform"] for r in rows(audit) if r["role"] == "child"} == {system_platform()}
    assert rows(audit)[0]["platforms"] == [system_platform()]
    code, out, err = run_cli(capsys, "copy", "--multi-arch", "index-only", f"oci:{samples}:demo/multi:1.0",
                             f"oci:{tmp_path}/p:m")
    assert (code, out) == (EXIT_USAGE, "") and "index-only is not supported" in err
    code, _, err = run_cli(capsys, "copy", "--all", "--platform", "linux/arm64", f"oci:{samples}:demo/multi:1.0",
                           f"oci:{tmp_path}/p:m")
    assert (code, err) == (EXIT_USAGE, "imagepush: --all and --platform both choose platforms: give one\n")


def test_sync_digestfile_has_a_reference_and_digest_line_per_image(samples, tmp_path):
    digests = tmp_path / "digests.txt"
    assert main(["sync", "-q", f"oci:{samples}", f"oci:{tmp_path}/m", "--digestfile", str(digests),
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    mirror = OCILayoutSource(f"{tmp_path}/m")
    assert sorted(digests.read_text().splitlines()) == [
        f"oci:{tmp_path}/m:{name} {mirror.get_root(name).digest}" for name in ("demo/app:1.0", "demo/multi:1.0")]


def test_inspect_platform_alone_shows_that_platform_s_manifest(samples, capsys):
    index = json.loads(OCILayoutSource(str(samples)).get_root("demo/multi:1.0").data)
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    code, out, _ = run_cli(capsys, "inspect", "--platform", "linux/arm64", f"oci:{samples}:demo/multi:1.0")
    assert code == 0
    assert sha256(out.rstrip("\n").encode()) == arm["digest"]


def test_a_missing_name_is_reported_with_the_closest_names_the_store_holds(samples, capsys):
    code, _, err = run_cli(capsys, "inspect", f"oci:{samples}:demo/app:1.1")
    assert code == 1
    assert err.strip().endswith("no image named 'demo/app:1.1'; closest names it holds: demo/app:1.0, demo/multi:1.0")


# --- registries --------------------------------------------------------------------------


def test_a_tagless_registry_destination_is_written_as_latest_with_skopeo_s_digestfile(
        samples, registry, tmp_path, capsys):
    digestfile = tmp_path / "digest"
    code, out, err = run_cli(capsys, "copy", f"oci:{samples}:demo/app:1.0", f"docker://{registry.host}/tagless/app",
                             "--dest-tls-verify=false", "--digestfile", str(digestfile),
                             "--audit", str(tmp_path / "a.parquet"))
    assert code == 0, err
    assert err.count("names no tag: writing it as") == 1
    assert f"docker://{registry.host}/tagless/app names no tag: writing it as " \
           f"docker://{registry.host}/tagless/app:latest" in err
    assert tags(registry, "tagless/app") == ["latest"]
    (row,) = rows(tmp_path / "a.parquet")
    assert row["destination"] == f"docker://{registry.host}/tagless/app:latest"
    # As skopeo writes it: the digest alone, no newline.
    assert digestfile.read_text() == registry_digest(registry, "tagless/app", "latest")
    # The source side reads a tagless reference as latest too: the two sides agree.
    code, out, err = run_cli(capsys, "copy", "-q", f"docker://{registry.host}/tagless/app", f"oci:{tmp_path}/o:x",
                             "--src-tls-verify=false", "--audit", str(tmp_path / "b.parquet"))
    assert (code, err) == (0, "")


def test_a_registry_not_found_lists_the_closest_tags(samples, registry, tmp_path, capsys):
    assert main(["copy", "-q", f"oci:{samples}:demo/app:1.0", f"docker://{registry.host}/near/app:v1.0.0",
                 "--dest-tls-verify=false",
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    code, _, err = run_cli(capsys, "inspect", "--tls-verify=false", f"docker://{registry.host}/near/app:v1.0")
    assert code == 1
    assert err.strip().endswith("closest names it holds: near/app:v1.0.0")


def test_a_preserve_copy_that_converts_says_so_on_the_console_and_in_the_audit(samples, registry, tmp_path, capsys):
    docker_list = f"docker://{registry.host}/lists/multi:1"
    assert main(["copy", "-q", "--format", "v2s2", f"oci:{samples}:demo/multi:1.0", docker_list,
                 "--dest-tls-verify=false", "--audit", str(tmp_path / "a.parquet")]) == 0
    audit = tmp_path / "b.parquet"
    code, out, err = run_cli(capsys, "copy", docker_list, f"oci:{tmp_path}/o:m", "--src-tls-verify=false",
                             "--audit", str(audit))
    assert code == 0
    index = next(r for r in rows(audit) if r["role"] == "index")
    assert (index["media_type"], index["converted_from"]) == (mt.OCI_INDEX, mt.DOCKER_LIST)
    assert index["destination_digest"] != index["source_digest"]
    notes = [line for line in err.splitlines() if line.startswith("imagepush: note:")]
    assert notes == [f"imagepush: note: {docker_list} -> oci:{tmp_path}/o:m: written as {mt.OCI_INDEX} "
                     f"({index['destination_digest']}): the destination cannot hold {mt.DOCKER_LIST} "
                     f"({index['source_digest']}), so its digest changed"]


def test_credentials_on_the_command_line_are_used_and_never_shown(samples, locked, tmp_path):
    audit = tmp_path / "a.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "imagepush.pipeline", "copy", "--debug", f"oci:{samples}:demo/app:1.0",
         f"docker://{locked.host}/private/app:1", f"--dest-creds=robot:{PASSWORD}", "--dest-tls-verify=false",
         "--audit", str(audit)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --debug traces each request (method, URL, status), never a header or a secret.
    assert f"imagepush: PUT http://{locked.host}/v2/private/app/manifests/1 -> 201" in proc.stderr
    assert f"imagepush: PUT http://{locked.host}/v2/private/app/blobs/uploads/" in proc.stderr
    assert "_state=***" in proc.stderr
    for text in (proc.stderr, proc.stdout, audit.read_bytes().decode("latin-1")):
        assert PASSWORD not in text and "Authorization" not in text and "Basic " not in text
    assert (tags_with_auth := requests.get(f"http://{locked.host}/v2/private/app/tags/list",
                                           auth=("robot", PASSWORD), timeout=10).json()["tags"]) == ["1"], tags_with_auth


def test_a_password_is_never_read_from_a_pipe(samples, locked, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "imagepush.pipeline", "copy", f"oci:{samples}:demo/app:1.0",
         f"docker://{locked.host}/private/app:2", "--dest-creds", "robot", "--dest-tls-verify=false"],
        capture_output=True, text=True, timeout=60, input=PASSWORD + "\n",
    )
    assert (proc.returncode, proc.stdout) == (EXIT_USAGE, "")
    assert proc.stderr == ("imagepush: --dest-creds: no password after 'robot', and standard input is not a "
                           "terminal to ask for one; give USER:PASS or put the credentials in an auth file\n")


def test_one_host_on_both_sides_with_different_settings_is_refused(registry, capsys):
    code, out, err = run_cli(capsys, "copy", f"docker://{registry.host}/a:1", f"docker://{registry.host}/b:1",
                             "--src-creds", "alice:x", "--dest-creds", "bob:y")
    assert (code, out) == (EXIT_USAGE, "")
    assert err == (f"imagepush: {registry.host} is both source and destination, and --src-creds and "
                   f"--dest-creds differ: one registry host takes one setting\n")


def test_side_settings_land_on_the_hosts_each_side_names():
    from imagepush.pipeline.cli import _tls_verify_as_skopeo
    from imagepush.pipeline.sides import with_sides
    from imagepush.transforms.stores.options import StoreOptions

    argv = _tls_verify_as_skopeo(["copy", "docker://src.example:5000/a:1", "docker://dst.example/b:1", "oci:/x:y",
                                  "--src-tls-verify", "--dest-tls-verify=false", "--src-creds", "alice:pw",
                                  "--dest-authfile", "/etc/dest-auth.json"])
    options = with_sides(build_parser().parse_args(argv), StoreOptions(insecure_registries=("other:1",)))
    assert options.insecure_registries == ("other:1", "dst.example")
    assert [(h.host, h.username, h.password.value if h.password else None, h.authfile, h.tls_verify)
            for h in options.hosts] == [("src.example:5000", "alice", "pw", None, True),
                                        ("dst.example", None, None, "/etc/dest-auth.json", False)]
    assert options.for_host("dst.example").authfile == "/etc/dest-auth.json"
    assert "pw" not in repr(options) and "pw" not in repr(options.hosts)
    # One host on both sides: the same account (or one side's alone) is that host's setting.
    same = ["copy", "docker://h.example/a:1", "docker://h.example/b:1", "--src-creds", "bob:pw", "--dest-creds", "bob:pw"]
    assert [h.host for h in with_sides(build_parser().parse_args(same), StoreOptions()).hosts] == ["h.example"]
