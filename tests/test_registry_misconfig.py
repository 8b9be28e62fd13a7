"""Misconfigured and failing registries, end to end against real Distribution: fail fast, say it once, ride out restarts.

* A plain-HTTP registry named without ``--insecure-registry`` fails at once with one line
  naming the flag; a host name that does not resolve (under ``.invalid``, RFC 2606) or a
  port that refuses fails without retries.
* A registry that is down fails a whole sync with one console line, while the audit keeps
  a row per image.
* A destination killed mid-run and restarted on the same port and storage 8 s later costs
  no image: the run ends with exit 0. 8 s outlasts the default attempt budget's backoff
  (at most 7.5 s over five attempts), so only the outage grace saves the images.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import _image, tar_layer
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import Publication
from imagepush.transforms.stores.layout.oci import OCILayoutDestination
from tests.http_proxy import HTTPProxy
from tests.registry_server import free_port

pytestmark = pytest.mark.integration


def many_images(path: Path, count: int, layer_size: int = 1024) -> list[str]:
    """An OCI layout of ``count`` images ``many/appN:1``, each with its own random layer; their names."""
    dest = OCILayoutDestination(str(path))
    dest.prepare()
    names, publications = [], []
    for i in range(count):
        layer = tar_layer({"data": os.urandom(layer_size)})
        descriptor = _image(dest, "amd64", [layer], f"N={i}")
        names.append(f"many/app{i}:1")
        # Published without the platform the helper gives it for an index entry.
        publications.append(Publication(names[-1], Descriptor(descriptor.media_type, descriptor.digest,
                                                              descriptor.size)))
    dest.publish(publications)
    return names


def failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("imagepush: FAILED")]


def test_a_plain_http_registry_without_the_flag_fails_at_once_and_says_use_insecure_registry_once(
    registry, tmp_path, capsys
):
    many_images(tmp_path / "layout", 12)
    started = time.monotonic()
    code = main(["sync", f"oci:{tmp_path}/layout", f"docker://{registry.host}/mirror",
                 "--audit", str(tmp_path / "a.parquet")])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    advice = f"{registry.host} speaks plain HTTP, not TLS: use --insecure-registry {registry.host}"
    assert failed_lines(err) == [f"imagepush: FAILED 12 images: {advice}"]
    assert err.count("--insecure-registry") == 1
    assert "retrying" not in err
    assert elapsed < 60  # generous for a shared machine; today's retries alone took 12.6 s per request
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len(rows) == 12 and {(r["status"], r["error"], r["error_kind"]) for r in rows} == {
        ("failed", advice, "invalid_input")}


def test_a_copy_to_a_plain_http_registry_without_the_flag_stops_before_the_run(registry, tmp_path, capsys):
    many_images(tmp_path / "layout", 1)
    code = main(["copy", f"oci:{tmp_path}/layout:many/app0:1", f"docker://{registry.host}/app:1",
                 "--audit", str(tmp_path / "a.parquet")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"imagepush: {registry.host} speaks plain HTTP, not TLS: use --insecure-registry {registry.host}"]


@pytest.mark.parametrize(("host", "why"), [("registry.invalid:5000", "the name does not resolve"),
                                           (None, "connection refused")])
def test_a_registry_that_does_not_resolve_or_refuses_fails_a_sync_at_once_in_one_line(host, why, tmp_path, capsys):
    host = host or f"127.0.0.1:{free_port()}"
    many_images(tmp_path / "layout", 30)
    started = time.monotonic()
    code = main(["sync", f"oci:{tmp_path}/layout", f"docker://{host}/mirror", "--insecure-registry", host,
                 "--audit", str(tmp_path / "a.parquet")])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    lines = failed_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"imagepush: FAILED destination {host} unreachable: "
                                                   f"30 images failed (first: ")
    assert lines[0].endswith(f"cannot reach {host} ({why}))")
    assert "retrying" not in err
    assert len(err.strip().splitlines()) <= 2  # the grouped line, and at most the launcher's warning
    assert elapsed < 60
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len(rows) == 30 and {(r["status"], r["error_kind"]) for r in rows} == {("failed", "unreachable")}
    assert len({r["destination"] for r in rows}) == 30


#: Longer than the backoff of the default five attempts, shorter than the default 30 s grace.
OUTAGE_SECONDS = 8.0


def test_a_destination_killed_mid_run_and_back_within_seconds_loses_no_image(registry, tmp_path, monkeypatch,
                                                                             capsys, caplog):
    count = 24
    names = many_images(tmp_path / "layout", count, layer_size=96 << 10)
    # Uploads paced through a proxy so the run lasts several seconds and the kill lands in it.
    proxy = HTTPProxy(upload_rate=64 << 10).start()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    for name in ("http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    tags = registry.storage / "docker/registry/v2/repositories/mirror/many"
    events: list[str] = []
    finished = threading.Event()

    def kill_and_restart() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not finished.is_set():
            if tags.exists() and any(tags.glob("*/_manifests/tags/1")):
                registry.kill()
                events.append(f"killed after {len(list(tags.glob('*/_manifests/tags/1')))} images")
                time.sleep(OUTAGE_SECONDS)
                registry.restart()
                events.append("restarted")
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_and_restart, daemon=True)
    watcher.start()
    try:
        code = main(["sync", f"oci:{tmp_path}/layout", f"docker://{registry.host}/mirror",
                     "--insecure-registry", registry.host, "--audit", str(tmp_path / "a.parquet")])
    finally:
        finished.set()
        watcher.join(timeout=30)
        proxy.stop()
    err = capsys.readouterr().err
    assert events and events[-1] == "restarted", events
    killed_after = int(events[0].split()[2])
    assert killed_after < count  # the kill landed mid-run: images were still to be written
    assert code == 0, err
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert sorted(r["destination"] for r in rows if r["role"] != "child") == sorted(
        f"docker://{registry.host}/mirror/{n}" for n in names)
    assert {r["status"] for r in rows} == {"copied"}
    assert f"{registry.host} stopped answering; waiting up to 30s for it" in err + caplog.text
