"""The run model: each rule once, refused with the same words from a flag and from the run file.

A flag's problem names the flag (a reference names itself); a run file's problem names
the path of the key in the file. Either way: exit 2, one line on stderr, nothing written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from imagepush.pipeline.cli import build_parser, main
from imagepush.pipeline.config import spec_from_flags, spec_from_yaml
from imagepush.pipeline.exits import EXIT_USAGE


@pytest.fixture
def refused(capsys, tmp_path):
    """Run a command line, or a run file (YAML text), that must be refused; return its one line."""

    def refuse(argv: list[str] | None = None, yaml: str | None = None) -> str:
        if yaml is not None:
            (tmp_path / "run.yaml").write_text(yaml)
            argv = ["run", str(tmp_path / "run.yaml")]
        code = main(argv)
        out, err = capsys.readouterr()
        assert (code, out) == (EXIT_USAGE, "")
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert {p.name for p in tmp_path.iterdir()} <= {"run.yaml"}
        if yaml is not None:
            # Every problem of a run file starts with its file, line and column (checked in
            # test_run_config_errors.py); the tests here are about the words after them.
            place = re.escape(str(tmp_path / "run.yaml")) + r"(:\d+:\d+)?: "
            assert re.match("imagepush: config: " + place, err), err
            err = re.sub(place, "", err, count=1)
        return err.rstrip("\n")

    return refuse


@pytest.fixture
def out(tmp_path) -> str:
    return f"oci:{tmp_path}/out"


def test_a_reference_must_name_a_transport(refused, out):
    message = "'nonsense' is not a reference: use one of docker:, oci:, oci-archive:, dir:, docker-archive:, registry-storage:"
    assert refused(["copy", "nonsense", out]) == f"imagepush: {message}"
    assert refused(yaml=f"jobs: [{{copy: nonsense, to: ['{out}']}}]") == f"imagepush: config: jobs.0.copy: {message}"


def test_a_registry_reference_needs_a_host(refused, out):
    assert refused(["copy", "docker://", out]) == "imagepush: 'docker://': no registry host"
    assert refused(yaml=f"jobs: [{{copy: 'oci:/in:a', to: ['{out}', 'docker://']}}]") == (
        "imagepush: config: jobs.0.to.1: 'docker://': no registry host")


def test_registry_storage_is_a_source_only(refused):
    message = "'registry-storage:/srv/x': registry-storage: is a source only"
    assert refused(["copy", "oci:/in:a", "registry-storage:/srv/x"]) == f"imagepush: {message}"
    assert refused(yaml="jobs: [{copy: 'oci:/in:a', to: ['registry-storage:/srv/x']}]") == (
        f"imagepush: config: jobs.0.to.0: {message}")


def test_a_sync_cannot_write_into_a_dir(refused, out):
    message = "'dir:/srv/d': a dir: holds one image; sync into oci:, docker-archive: or docker://"
    assert refused(["sync", "oci:/in", out, "dir:/srv/d"]) == f"imagepush: {message}"
    assert refused(yaml="jobs: [{sync: 'oci:/in', to: [{ref: 'dir:/srv/d'}]}]") == f"imagepush: config: jobs.0: {message}"


def test_a_platform_is_os_slash_arch(refused, out):
    message = "platform 'linux' is not OS/ARCH[/VARIANT]"
    assert refused(["copy", "--platform", "linux/amd64", "--platform", "linux", "oci:/in:a", out]) == (
        f"imagepush: --platform: {message}")
    assert refused(["inspect", "--platform", "linux", "oci:/in:a"]) == f"imagepush: --platform: {message}"
    assert refused(yaml=f"jobs: [{{copy: 'oci:/in:a', platforms: [linux], to: ['{out}']}}]") == (
        f"imagepush: config: jobs.0.platforms.0: {message}")


def test_a_format_is_preserve_oci_or_v2s2(refused, out):
    message = "Input should be 'preserve', 'oci' or 'v2s2'"
    assert refused(["copy", "--format", "v1", "oci:/in:a", out]) == f"imagepush: --format: {message}"
    assert refused(yaml=f"jobs: [{{copy: 'oci:/in:a', to: [{{ref: '{out}', format: v1}}]}}]") == (
        f"imagepush: config: jobs.0.to.0.format: {message}")


def test_a_compression_is_preserve_gzip_zstd_or_none(refused, out):
    message = "Input should be 'preserve', 'gzip', 'zstd' or 'none'"
    assert refused(["sync", "--compression", "lz4", "oci:/in", out]) == f"imagepush: --compression: {message}"
    assert refused(yaml=f"defaults: {{compression: lz4}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: defaults.compression: {message}")


def test_counts_are_whole_numbers(refused, out):
    message = "Input should be a valid integer, unable to parse string as an integer"
    assert refused(["sync", "--parallel", "many", "oci:/in", out]) == f"imagepush: --parallel: {message}"
    assert refused(yaml=f"parallel: many\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: parallel: {message}")


def test_zstd_layers_need_oci_manifests(refused, out):
    message = "zstd needs OCI manifests; it cannot be combined with format v2s2"
    assert refused(["copy", "--format", "v2s2", "--compression", "zstd", "oci:/in:a", out]) == (
        f"imagepush: --compression: {message}")
    assert refused(yaml=f"defaults: {{format: v2s2, compression: zstd}}\njobs: [{{copy: 'oci:/in:a', to: ['{out}']}}]") == (
        f"imagepush: config: defaults.compression: {message}")
    # Set at two levels: the more specific setting is the one named.
    assert refused(yaml=f"defaults: {{compression: zstd}}\n"
                        f"jobs: [{{copy: 'oci:/in:a', to: ['{out}', {{ref: 'oci:/o2', format: v2s2}}]}}]") == (
        f"imagepush: config: jobs.0.to.1.format: {message}")


def test_parallel_is_at_least_one(refused, out):
    message = "Input should be greater than or equal to 1"
    assert refused(["sync", "--parallel", "0", "oci:/in", out]) == f"imagepush: --parallel: {message}"
    assert refused(yaml=f"parallel: 0\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == f"imagepush: config: parallel: {message}"


def test_registry_concurrency_is_at_least_one(refused, out):
    message = "Input should be greater than or equal to 1"
    assert refused(["ls", "--registry-concurrency", "0", "oci:/in"]) == f"imagepush: --registry-concurrency: {message}"
    assert refused(yaml=f"registries: {{concurrency: 0}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: registries.concurrency: {message}")


def test_retries_are_zero_or_more(refused, out):
    message = "Input should be greater than or equal to 0"
    assert refused(["copy", "--retry-times", "-1", "oci:/in:a", out]) == f"imagepush: --retry-times: {message}"
    assert refused(yaml=f"registries: {{retries: -1}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: registries.retries: {message}")


def test_the_outage_grace_is_zero_or_more_seconds_and_thirty_by_default(refused, out):
    message = "Input should be greater than or equal to 0"
    assert refused(["copy", "--outage-grace", "-1", "oci:/in:a", out]) == f"imagepush: --outage-grace: {message}"
    assert refused(yaml=f"registries: {{outage_grace: -1}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: registries.outage_grace: {message}")
    assert _flags_spec(["copy", "oci:/in:app:1", "oci:/out:app:1"]).options.outage_grace == 30.0


def test_a_beam_option_must_be_one_beam_knows(refused, out):
    message = "unknown option --direct_num_worker"
    assert refused(["sync", "oci:/in", out, "--direct_num_worker", "2"]) == f"imagepush: {message}"
    assert refused(yaml=f"runner: {{direct_num_worker: 2}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: runner: {message}")


def test_a_beam_option_value_must_be_one_beam_accepts(refused, out):
    message = ("argument --direct_running_mode: invalid choice: 'bogus' "
               "(choose from 'in_memory', 'multi_threading', 'multi_processing')")
    assert refused(["sync", "oci:/in", out, "--direct_running_mode", "bogus"]) == f"imagepush: {message}"
    assert refused(yaml=f"runner: {{direct_running_mode: bogus}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        f"imagepush: config: runner: {message}")


def test_the_runner_must_be_one_beam_can_load(refused, out):
    prefix = "imagepush: --runner: Unexpected pipeline runner: NoSuchRunner. Valid values are "
    assert refused(["sync", "oci:/in", out, "--runner", "NoSuchRunner"]).startswith(prefix)
    assert refused(yaml=f"runner: {{runner: NoSuchRunner}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]").startswith(
        prefix.replace("imagepush: ", "imagepush: config: runner: "))


def test_a_misspelt_key_is_unknown_and_its_value_is_not_repeated(refused, out):
    err = refused(yaml=f"registries: {{authfile: a.json, pasword: hunter2}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]")
    assert err == "imagepush: config: registries.pasword: unknown key"
    assert refused(yaml=f"jobs:\n  - sync: oci:/in\n    to: ['{out}']\n    tagz: [hunter2]\n") == (
        "imagepush: config: jobs.0.tagz: unknown key (did you mean 'tags'?)")


def test_a_job_has_exactly_one_source(refused, out):
    assert refused(yaml=f"jobs: [{{copy: 'oci:/in:a', sync: 'oci:/in', to: ['{out}']}}]") == (
        "imagepush: config: jobs.0: each job needs exactly one of 'copy', 'sync', 'records' or 'verify'")
    assert refused(yaml=f"jobs: [{{to: ['{out}']}}]") == "imagepush: config: jobs.0: each job needs exactly one of 'copy', 'sync', 'records' or 'verify'"


def test_a_job_has_a_destination(refused):
    assert refused(yaml="jobs: [{copy: 'oci:/in:a', to: []}]") == (
        "imagepush: config: jobs.0.to: List should have at least 1 item after validation, not 0")


def test_filters_are_regular_expressions_of_sync_jobs(refused, out):
    assert refused(yaml=f"jobs: [{{sync: 'oci:/in', include: ['(('], to: ['{out}']}}]") == (
        "imagepush: config: jobs.0.include.0: bad regular expression '((': missing ), unterminated subpattern at position 1")
    assert refused(yaml=f"jobs: [{{copy: 'oci:/in:a', exclude: [x], to: ['{out}']}}]") == (
        "imagepush: config: jobs.0: 'exclude' filters sync jobs only")


def test_a_beam_switch_in_the_run_file_is_true_or_false(refused, out):
    assert refused(yaml=f"runner: {{save_main_session: 'yes please'}}\njobs: [{{sync: 'oci:/in', to: ['{out}']}}]") == (
        "imagepush: config: runner: --save_main_session is a switch: give true or false")


def test_the_run_file_must_be_readable_yaml_holding_a_mapping(refused, tmp_path):
    assert refused(["run", str(tmp_path / "none.yaml")]) == (
        f"imagepush: cannot read config {tmp_path / 'none.yaml'}: No such file or directory")
    assert refused(yaml="jobs: [\n") == ("imagepush: config: not valid YAML: expected the node content, "
                                         "but found '<stream end>' (while parsing a flow node at 2:1)")
    assert refused(yaml="- copy: oci:/in:a\n") == (
        "imagepush: config: Input should be a valid dictionary or instance of RunConfig")


def _flags_spec(argv: list[str], beam_args: Sequence[str] = ()):
    return spec_from_flags(build_parser().parse_args(argv), "r", "/audit.parquet", beam_args)


def _comparable(spec) -> tuple:
    return (spec.audit_url, spec.jobs, spec.syncs, spec.beam_args, spec.options, spec.parallel, spec.preflight)


def test_a_command_line_and_the_run_file_saying_the_same_make_the_same_run():
    flags = _flags_spec(
        ["sync", "oci:/in", "oci:/m", "docker://reg:5000/mirror", "--format", "oci", "--compression", "zstd",
         "--platform", "linux/arm64", "--parallel", "3", "--no-preflight", "--audit", "/a.parquet",
         "--insecure-registry", "reg:5000", "--authfile", "/auth.json", "--ca-bundle", "/ca.pem",
         "--registry-concurrency", "2", "--retry-times", "0", "--outage-grace", "7.5"],
        ["--direct_num_workers=2"],
    )
    yaml = spec_from_yaml(
        "audit: /a.parquet\nparallel: 3\npreflight: false\nrunner: {direct_num_workers: 2}\n"
        "defaults: {format: oci, compression: zstd, platforms: [linux/arm64]}\n"
        "registries: {insecure: ['reg:5000'], authfile: /auth.json, ca_bundle: /ca.pem, concurrency: 2, retries: 0,\n"
        "             outage_grace: 7.5}\n"
        "jobs: [{sync: 'oci:/in', to: ['oci:/m', 'docker://reg:5000/mirror']}]\n",
        "r", "/audit.parquet",
    )
    assert _comparable(flags) == _comparable(yaml)
    assert (flags.options.registry_concurrency, flags.options.registry_retries, flags.preflight) == (2, 0, False)
    assert flags.options.outage_grace == 7.5


def test_defaults_of_a_command_line_and_of_an_empty_run_file_are_the_same():
    flags = _flags_spec(["copy", "oci:/in:app:1", "oci:/out:app:1"])
    yaml = spec_from_yaml("jobs: [{copy: 'oci:/in:app:1', to: ['oci:/out:app:1']}]", "r", "/audit.parquet")
    assert _comparable(flags) == _comparable(yaml)
    assert (flags.audit_url, flags.parallel, flags.preflight, flags.beam_args) == ("/audit.parquet", 8, True, [])


def test_each_destination_of_a_run_file_is_written_with_its_own_settings_else_its_job_s_else_the_defaults():
    spec = spec_from_yaml(
        "defaults: {format: v2s2, compression: gzip}\n"
        "jobs:\n"
        "  - copy: oci:/a:app:1\n"
        "    compression: none\n"
        "    to: [oci:/b:app:1, {ref: 'dir:/c', format: oci, compression: zstd}]\n"
        "  - sync: oci:/a\n"
        "    include: ['^app']\n"
        "    to: [oci:/m]\n",
        "run1", "/tmp/audit.parquet", ["--runner=FnApiRunner"],
    )
    assert [(t.destination, t.format, t.compression) for t in spec.jobs[0].targets] == [
        ("oci:/b:app:1", "v2s2", "none"), ("dir:/c", "oci", "zstd")]
    assert [(o.ref, o.format, o.compression) for o in spec.syncs[0].destinations] == [("oci:/m", "v2s2", "gzip")]
    assert spec.syncs[0].selection.include == ("^app",)


def test_beam_options_of_a_run_file_become_flags_before_those_of_the_command_line():
    spec = spec_from_yaml(
        "runner: {direct_num_workers: 2, save_main_session: true, pickle_library: null, experiments: [a, b],"
        " beam_services: {x: 'y:1'}}\n"
        "jobs: [{copy: 'oci:/a:b', to: ['oci:/c']}]\n",
        "r", "/tmp/a", ["--direct_num_workers=3"],
    )
    assert spec.beam_args == ["--direct_num_workers=2", "--save_main_session", "--experiments=a", "--experiments=b",
                              '--beam_services={"x": "y:1"}', "--direct_num_workers=3"]


def test_a_run_file_without_beam_options_does_not_import_beam():
    code = ("import sys\n"
            "from imagepush.pipeline.config import spec_from_yaml\n"
            "spec_from_yaml(\"runner: {}\\njobs: [{copy: 'oci:/a:b', to: ['oci:/c']}]\", 'r', '/a')\n"
            "print('apache_beam' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr


def test_the_demo_run_file_is_valid():
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert spec_from_yaml(demo.read_text(), "r", "/a").jobs


def test_the_mirror_run_file_is_valid_and_its_selections_and_host_settings_reach_the_run(monkeypatch):
    from imagepush.pipeline.config import spec_from_file
    from imagepush.transforms.engine.selection import TagSelection

    monkeypatch.setenv("QUAY_PASSWORD", "from-the-environment")
    spec = spec_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "mirror.yaml"), "r", "/a")
    assert [s.selection for s in spec.syncs] == [
        TagSelection(semver=">=1.4, <2"), TagSelection(exclude=("-debug$",), latest=3),
        TagSelection(tags=("stable", "2.4"))]
    assert [s.rename and s.rename.text for s in spec.syncs] == [None, "team-{name}", "{registry}/{repository}"]
    quay = spec.options.for_host("quay.io")
    assert quay.host_entry("quay.io").password.value == "from-the-environment"
    assert spec.options.for_host("mirror.internal:5000").registry_concurrency == 4
    assert "from-the-environment" not in repr(spec)


def test_include_and_exclude_flags_select_the_images_of_sync_and_verify(refused, out):
    for command in ("sync", "verify"):
        spec = _flags_spec([command, "oci:/in", out, "--include", "^a", "--include", "b$", "--exclude", "dev"])
        assert spec.syncs[0].selection.include == ("^a", "b$")
        assert spec.syncs[0].selection.exclude == ("dev",)
    assert refused(["sync", "oci:/in", out, "--exclude", "[z"]) == (
        "imagepush: --exclude: bad regular expression '[z': unterminated character set at position 0")
