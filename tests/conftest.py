"""Shared test fixtures: the public fixture files in ``tests/fixtures`` and external tools.

A test that needs skopeo, umoci or docker-registry is skipped when the tool is
missing, except under CI=true, where a missing tool is a failure (CI installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
import time
import sys
from pathlib import Path

import pytest

#: Public test data carried with the tests (origins and licence: fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def public_fixtures() -> Path:
    return FIXTURES


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


def fixture(name: str) -> bytes:
    """The bytes of one public fixture file, by its path below the fixture root."""
    return (FIXTURES / name).read_bytes()


def sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def layout(tmp_path_factory) -> Path:
    """An OCI layout of the project's sample images (demo/app:1.0, demo/multi:1.0)."""
    from imagepush.pipeline.samples import write_oci_samples

    path = tmp_path_factory.mktemp("samples") / "layout"
    write_oci_samples(str(path))
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3-compatible server (moto) on a loopback port, stopped by PID at the end."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] and s3fs are required under CI=true")
        pytest.skip("moto[server] or s3fs not installed")
    from tests.registry_server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the local S3 server did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def running_registry(root: Path, **options):
    """A Docker Distribution on a loopback port while the generator is open, stopped by PID after.

    ``options`` go to ``start_registry`` (``schema1``, ``tls``, ``htpasswd`` …).
    """
    from tests.registry_server import start_registry

    require_tool("docker-registry")
    reg = start_registry(root, **options)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def registry(tmp_path):
    """A fresh, empty Docker Distribution.

    Test files that need a registry set up differently (a module-wide one, schema1
    enabled, images pushed first) define their own ``registry`` fixture, which wins.
    """
    yield from running_registry(tmp_path / "registry")


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the local S3 server, with fsspec pointed at the server."""
    import fsspec
    import s3fs

    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fsspec.config.set_conf_env(fsspec.config.conf)
    s3fs.S3FileSystem.clear_instance_cache()
    name = f"imagepush-{time.monotonic_ns()}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.config.conf.pop("s3", None)


@pytest.fixture(autouse=True)
def _default_audits_in_a_temporary_state_folder(monkeypatch, tmp_path_factory):
    """A run without --audit writes to the user's state folder: in tests, a temporary one."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-state"))
