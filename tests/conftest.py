"""Shared test fixtures: the public fixture files in ``tests/fixtures`` and external tools.

A test that needs skopeo, umoci or docker-registry is skipped when the tool is
missing, except under CI=true, where a missing tool is a failure (CI installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
