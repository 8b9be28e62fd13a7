"""Registries reached through an HTTP proxy named by the environment, as curl and skopeo do."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples
from tests.conftest import require_tool, run
from tests.http_proxy import HTTPProxy
from tests.registry_server import Registry, start_registry

pytestmark = pytest.mark.integration

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def without_proxies() -> dict[str, str]:
    """This process's environment with every proxy setting removed (for skopeo as a judge)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}


def raw_digest(host: str, image: str, *flags: str) -> str:
    raw = run([require_tool("skopeo"), "inspect", "--raw", *flags, f"docker://{host}/{image}"],
              env=without_proxies(), timeout=60).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture(autouse=True)
def no_inherited_proxies(monkeypatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def registries(tmp_path) -> Iterator[tuple[Registry, Registry]]:
    """A source registry holding demo/app:1.0 as team/app:1, and an empty destination."""
    require_tool("docker-registry")
    write_oci_samples(str(tmp_path / "layout"))
    regs = [start_registry(tmp_path / name) for name in ("src", "dst")]
    try:
        src = regs[0]
        assert main(["copy", f"oci:{tmp_path}/layout:demo/app:1.0", f"docker://{src.host}/team/app:1",
                     "--insecure-registry", src.host, "--audit", str(tmp_path / "seed.parquet")]) == 0
        yield regs[0], regs[1]
    finally:
        for reg in regs:
            reg.stop()


@pytest.fixture
def proxy() -> Iterator[HTTPProxy]:
    p = HTTPProxy(auth=("proxyuser", "pr0xy-Secret-9931")).start()
    try:
        yield p
    finally:
        p.stop()


def test_sync_between_registries_goes_through_the_proxy_named_by_HTTP_PROXY(
    registries, proxy, tmp_path, monkeypatch, capsys
):
    src, dst = registries
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    audit = tmp_path / "a.parquet"
    assert main(["sync", f"docker://{src.host}/team", f"docker://{dst.host}/mirror",
                 "--insecure-registry", src.host, "--insecure-registry", dst.host, "--audit", str(audit)]) == 0
    assert proxy.targets() == {src.host, dst.host}
    assert all(s.authorized for s in proxy.seen)
    assert raw_digest(dst.host, "mirror/app:1", "--tls-verify=false") == \
        raw_digest(src.host, "team/app:1", "--tls-verify=false")
    out, err = capsys.readouterr()
    assert "pr0xy-Secret-9931" not in out + err
    assert b"pr0xy-Secret-9931" not in audit.read_bytes()
    assert [r["status"] for r in pq.read_table(audit).to_pylist()] == ["copied"]


def test_no_proxy_sends_matching_hosts_direct(registries, proxy, tmp_path, monkeypatch):
    src, dst = registries
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert main(["copy", f"docker://{src.host}/team/app:1", f"docker://{dst.host}/direct/app:1",
                 "--insecure-registry", src.host, "--insecure-registry", dst.host,
                 "--audit", str(tmp_path / "a.parquet")]) == 0
    assert proxy.seen == []


@pytest.mark.parametrize("trust", ["ca-bundle", "insecure-registry"])
def test_https_registry_is_reached_through_a_connect_tunnel(tmp_path, proxy, monkeypatch, trust):
    """TLS goes end to end through CONNECT: verified with --ca-bundle, or unverified when named insecure."""
    require_tool("docker-registry")
    write_oci_samples(str(tmp_path / "layout"))
    reg = start_registry(tmp_path / "tls", tls=True)
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        flags = ["--ca-bundle", str(reg.certificate)] if trust == "ca-bundle" else ["--insecure-registry", reg.host]
        assert main(["copy", f"oci:{tmp_path}/layout:demo/app:1.0", f"docker://{reg.host}/tunnel/app:1", *flags,
                     "--audit", str(tmp_path / "a.parquet")]) == 0
        assert {(s.method, s.target) for s in proxy.seen} == {("CONNECT", reg.host)}
        row, = pq.read_table(tmp_path / "a.parquet").to_pylist()
        assert raw_digest(reg.host, "tunnel/app:1", "--cert-dir", str(_cert_dir(tmp_path, reg))) == \
            row["destination_digest"]
    finally:
        reg.stop()


def _cert_dir(tmp_path: Path, reg: Registry) -> Path:
    """A folder skopeo reads CAs from (``*.crt``), holding the registry's own certificate."""
    folder = tmp_path / "certs"
    folder.mkdir(exist_ok=True)
    assert reg.certificate is not None
    (folder / "ca.crt").write_bytes(reg.certificate.read_bytes())
    return folder
