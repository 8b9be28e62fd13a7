"""The command line: one-line errors with exit 2 for mistakes, Beam options passed through."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagepush.pipeline.cli import main, split_beam_args
from imagepush.pipeline.exits import EXIT_USAGE


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_beam_options_are_split_from_ours_with_their_values():
    ours, beam = split_beam_args(
        ["copy", "--runner", "FnApiRunner", "oci:/a:b", "--format", "oci", "oci:/c", "--direct_num_workers=2"]
    )
    assert ours == ["copy", "oci:/a:b", "--format", "oci", "oci:/c"]
    assert beam == ["--runner", "FnApiRunner", "--direct_num_workers=2"]


def test_a_beam_switch_does_not_take_the_next_argument_for_a_value():
    assert split_beam_args(["copy", "--save_main_session", "oci:/a:b", "oci:/c"]) == (
        ["copy", "oci:/a:b", "oci:/c"], ["--save_main_session"])


@pytest.mark.parametrize("beam", [
    ["--direct_running_mode", "multi_processing", "--direct_num_workers", "4"],
    ["--direct_running_mode=multi_processing", "--direct_num_workers=4"],
    ["--runner", "DataflowRunner", "--project", "P", "--region", "R", "--temp_location", "gs://b/tmp",
     "--setup_file", "./pyproject.toml"],
    ["--runner=DataflowRunner", "--project=P", "--region=R", "--temp_location=gs://b/tmp", "--setup_file=./pyproject.toml"],
])
def test_the_documented_beam_options_pass_through(beam):
    assert split_beam_args(["sync", "oci:/in", *beam, "oci:/out", "--parallel", "2"]) == (
        ["sync", "oci:/in", "oci:/out", "--parallel", "2"], beam)


@pytest.mark.parametrize("argv", [
    ["--s3_secret_acess_key", "hunter2"],
    ["--s3_secret_acess_key=hunter2"],
])
def test_an_option_nobody_knows_is_refused_by_name_without_its_value(capsys, tmp_path, argv):
    code, out, err = run_cli(capsys, "copy", "oci:/in:a", f"oci:{tmp_path}/o", *argv)
    assert (code, out, err) == (EXIT_USAGE, "", "imagepush: unknown option --s3_secret_acess_key\n")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_option_before_a_destination_does_not_swallow_it(capsys, tmp_path):
    code, out, err = run_cli(capsys, "copy", "oci:/in:a", "--bogus", f"oci:{tmp_path}/o")
    assert (code, err) == (EXIT_USAGE, "imagepush: unknown option --bogus\n")


def test_commands_that_run_no_pipeline_take_no_beam_options_and_do_not_import_beam(tmp_path):
    code = ("import sys\n"
            "from imagepush.pipeline.cli import main\n"
            f"code = main(['ls', 'oci:{tmp_path}', '--runner', 'DataflowRunner'])\n"
            "print(code, 'apache_beam' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.stdout, proc.stderr) == ("2 False\n", "imagepush: unknown option --runner\n")


def test_a_rerun_with_nothing_to_do_never_imports_beam(tmp_path):
    from imagepush.pipeline.samples import write_oci_samples

    write_oci_samples(str(tmp_path / "s"))
    copy = ["copy", f"oci:{tmp_path}/s:demo/app:1.0", f"oci:{tmp_path}/o:app", "--audit", str(tmp_path / "a.parquet")]
    assert main(copy) == 0
    code = ("import sys\n"
            "from imagepush.pipeline.cli import main\n"
            f"code = main({copy!r})\n"
            "print(code, 'apache_beam' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.splitlines()[-1] == "0 False", proc.stderr


def test_help_explains_references_and_exit_status():
    proc = subprocess.run([sys.executable, "-m", "imagepush.pipeline", "copy", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for text in ("docker://HOST[:PORT]/REPO", "oci:URL[:REF]", "--format", "--audit", "exit status"):
        assert text in proc.stdout


def test_the_program_exits_with_main_s_status_and_all_of_its_output(tmp_path):
    from imagepush.pipeline.samples import write_oci_samples

    write_oci_samples(str(tmp_path / "oci"))
    listed = subprocess.run([sys.executable, "-m", "imagepush.pipeline", "ls", f"oci:{tmp_path}/oci"],
                            capture_output=True, text=True)
    assert (listed.returncode, len(listed.stdout.splitlines())) == (0, 2)
    missing = subprocess.run([sys.executable, "-m", "imagepush.pipeline", "ls", f"oci:{tmp_path}/none"],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr == f"imagepush: oci:{tmp_path}/none: index.json not found\n"


def test_only_runners_that_run_here_count_as_local():
    from imagepush.pipeline.options import is_local

    assert is_local([]) and is_local(["--direct_num_workers", "2"])
    assert is_local(["--runner=DirectRunner"]) and is_local(["--runner", "apache_beam.runners.direct.DirectRunner"])
    assert not is_local(["--runner", "DataflowRunner", "--project", "p"])
    assert not is_local(["--runner=FlinkRunner"])


def test_inspect_of_a_missing_layout_fails_with_exit_1_in_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "inspect", f"oci:{tmp_path}/none:tag")
    assert code == 1
    assert err.strip() == f"imagepush: oci:{tmp_path}/none: index.json not found"


def test_ls_prints_one_json_record_per_image(capsys, tmp_path):
    import json

    from imagepush.pipeline.samples import write_oci_samples

    write_oci_samples(str(tmp_path / "s"))
    code, out, err = run_cli(capsys, "ls", f"oci:{tmp_path}/s")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["ref"], r["media_type"]) for r in records] == [
        (f"oci:{tmp_path}/s:demo/app:1.0", "application/vnd.oci.image.manifest.v1+json"),
        (f"oci:{tmp_path}/s:demo/multi:1.0", "application/vnd.oci.image.index.v1+json"),
    ]
    assert all(r["digest"].startswith("sha256:") and len(r["digest"]) == 71 for r in records)


def test_inspect_as_oci_converts_a_schema1_config_with_measured_diff_ids(capsys, tmp_path):
    import gzip
    import hashlib
    import json

    from imagepush.pipeline.samples import write_schema1_sample

    write_schema1_sample(str(tmp_path / "legacy"))
    code, out, err = run_cli(capsys, "inspect", "--as", "oci", "--config", f"dir:{tmp_path}/legacy")
    assert code == 0, err
    config = json.loads(out)
    manifest = json.loads((tmp_path / "legacy/manifest.json").read_bytes())
    kept = [layer["blobSum"] for layer, h in zip(manifest["fsLayers"], manifest["history"])
            if not json.loads(h["v1Compatibility"]).get("throwaway")]
    expected = ["sha256:" + hashlib.sha256(gzip.decompress((tmp_path / "legacy" / d[7:]).read_bytes())).hexdigest()
                for d in reversed(kept)]
    assert config["rootfs"] == {"type": "layers", "diff_ids": expected}
    assert [h["created_by"] for h in config["history"]][0] == "/bin/sh -c #(nop) ADD file:base in /"


def _slow_registry(layer: bytes) -> tuple[ThreadingHTTPServer, str, threading.Event]:
    """A loopback registry with one image whose layer trickles out; the event says it started."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    digest = lambda data: "sha256:" + hashlib.sha256(data).hexdigest()  # noqa: E731
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer),
                    "size": len(layer)}],
    }).encode()
    bodies = {"/v2/": (b"{}", "application/json"),
              "/v2/slow/app/manifests/1.0": (manifest, "application/vnd.oci.image.manifest.v1+json"),
              f"/v2/slow/app/manifests/{digest(manifest)}": (manifest, "application/vnd.oci.image.manifest.v1+json"),
              f"/v2/slow/app/blobs/{digest(config)}": (config, "application/octet-stream"),
              f"/v2/slow/app/blobs/{digest(layer)}": (layer, "application/octet-stream")}
    layer_started = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body, media_type = bodies.get(self.path, (None, ""))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Content-Digest", digest(body))
            self.end_headers()
            if body is not layer:
                self.wfile.write(body)
                return
            layer_started.set()
            try:
                for i in range(0, len(body), 4096):
                    self.wfile.write(body[i:i + 4096])
                    time.sleep(0.05)
            except OSError:  # the client went away
                pass

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}", layer_started


def test_ctrl_c_stops_at_once_with_one_line_and_exit_130(tmp_path):
    layer = bytes(range(256)) * 4096  # 1 MiB at 80 KB/s: about 13 s if nobody stops it
    server, host, layer_started = _slow_registry(layer)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagepush.pipeline", "copy", f"docker://{host}/slow/app:1.0", f"dir:{tmp_path / 'out'}",
             "--insecure-registry", host, "--audit", str(tmp_path / "audit.parquet")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert layer_started.wait(60), proc.communicate(timeout=60)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=5)
        finally:
            proc.kill()
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 130
    # The layer's first chunk never arrived, so no file was started: nothing to undo. The
    # config, delivered at the same time, may still be being written when the signal comes.
    assert re.fullmatch(r"imagepush: interrupted by SIGINT(: 1 upload in flight finished or cancelled)?; "
                        r"a rerun skips what was finished", err.decode().splitlines()[-1])
    assert "Traceback" not in err.decode()
    assert not (tmp_path / "out" / ("sha256:" + hashlib.sha256(layer).hexdigest())[7:]).exists()
