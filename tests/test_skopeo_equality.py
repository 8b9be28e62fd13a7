"""Conversions byte for byte against containers/image: skopeo 1.9.3 converts the same source.

For every deterministic conversion path, skopeo and imagepush convert one source and the
written manifests and configs must be the same bytes (hence the same digests), walked from
the root through every child of an index. Recompressing is the one path whose layer bytes
depend on the compressor (Go's and ours differ), so there the manifests are compared with
layer digests and sizes masked, and everything else, the config included, stays exact.

The sources are real images: the project's samples (pipeline/samples.py), a schema1 image
signed by skopeo itself (it signs every schema1 it writes), and "rich" images written
here that exercise what containers/image normalises: non-canonical timestamps and
offsets, unsorted annotation maps, layer annotations, pretty-printed manifests, Docker-only
config fields, missing os/created fields and v1Compatibility values spelled unusually.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from imagepush.pipeline.cli import main
from imagepush.pipeline.samples import write_oci_samples, write_schema1_sample
from tests.conftest import require_tool, run

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DIR_VERSION = "Directory Transport Version: 1.1\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> bytes:
    return run([require_tool("skopeo"), "--insecure-policy", *args]).stdout


def imagepush(*argv: str) -> None:
    assert main(list(argv)) == 0


def tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


TAR_A, TAR_B = tar({"etc/a": b"a\n"}), tar({"srv/b": b"b\n"})
GZ_A, GZ_B = gzip.compress(TAR_A, mtime=0), gzip.compress(TAR_B, mtime=0)
GZ_EMPTY = gzip.compress(tar({}), mtime=0)

#: An OCI config whose timestamps Go would spell differently and whose map is unsorted.
RICH_OCI_CONFIG = {
    "created": "2017-06-01T00:00:13.120000000Z", "author": "me <me@example.com>",
    "architecture": "arm64", "variant": "v8", "os": "linux",
    "config": {"Env": ["A=<b>&c"], "Cmd": ["/bin/sh"], "Labels": {"z": "1", "a": "2"}},
    "rootfs": {"type": "layers", "diff_ids": [sha256(TAR_A), sha256(TAR_B)]},
    "history": [
        {"created": "2017-06-01T02:00:13.500+02:00", "created_by": "ADD a /"},
        {"created": "2017-06-01T00:00:14+00:00", "created_by": "ADD b /", "comment": "x"},
        {"created": "2017-06-01T00:00:15.000000000Z", "created_by": "ENV X=1", "empty_layer": True},
    ],
}

#: A Docker config with Docker-only fields, an offset timestamp and a history entry without one.
RICH_DOCKER_CONFIG = {
    "architecture": "amd64",
    "config": {"Hostname": "", "Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "", "Labels": None,
               "OnBuild": None, "Image": "sha256:" + "0" * 64},
    "container": "abc", "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD"]},
    "created": "2019-03-04T05:06:07.123456789+02:00", "docker_version": "18.09.7",
    "history": [
        {"created": "2019-03-04T05:06:07.100000000+02:00", "created_by": "/bin/sh -c #(nop) ADD a"},
        {"created_by": "b"},
        {"created": "2019-03-04T03:06:08Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
    ],
    "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(TAR_A), sha256(TAR_B)]},
}


class Layout:
    """A minimal OCI layout writer, independent of imagepush's own stores."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.roots: list[dict[str, Any]] = []

    def put(self, data: bytes) -> dict[str, Any]:
        (self.path / "blobs/sha256" / sha256(data)[7:]).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    def tag(self, media_type: str, data: bytes, name: str) -> None:
        ref = {"org.opencontainers.image.ref.name": name}
        self.roots.append({"mediaType": media_type, **self.put(data), "annotations": ref})
        (self.path / "index.json").write_bytes(compact({"schemaVersion": 2, "manifests": self.roots}))

    def image(self, config: dict[str, Any], *, pretty: bool, annotated: bool,
              layer_type: str = OCI_GZIP, layers: tuple[bytes, ...] = (GZ_A, GZ_B)) -> bytes:
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **self.put(compact(config))}
        descs = []
        for i, layer in enumerate(layers):
            desc: dict[str, Any] = {"mediaType": layer_type, **self.put(layer)}
            if annotated:
                desc["annotations"] = {
                    "org.example.z": "1",
                    "containerd.io/snapshot/stargz/toc.digest": sha256(b"toc%d" % i),
                    "io.github.containers.zstd-chunked.manifest-checksum": sha256(b"chunked"),
                    "org.example.a": "2",
                }
            descs.append(desc)
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": descs}
        if annotated:
            doc["annotations"] = {"org.opencontainers.image.title": "t", "com.example.b": "<x>", "com.example.a": "y"}
        data = json.dumps(doc, indent=2).encode() if pretty else compact(doc)
        self.put(data)
        return data


def write_dir(path: Path, manifest: bytes, blobs: list[bytes]) -> None:
    path.mkdir(parents=True)
    (path / "version").write_text(DIR_VERSION)
    for blob in blobs:
        (path / sha256(blob)[7:]).write_bytes(blob)
    (path / "manifest.json").write_bytes(manifest)


def write_rich(root: Path) -> None:
    """The rich sources: an OCI layout (img, plain, multi), a v2s2 dir and a schema1 dir."""
    layout = Layout(root / "rich-oci")
    img = layout.image(RICH_OCI_CONFIG, pretty=True, annotated=True)
    layout.tag(OCI_MANIFEST, img, "img")
    amd64 = dict(RICH_OCI_CONFIG, architecture="amd64")
    del amd64["variant"]
    sibling = layout.image(amd64, pretty=False, annotated=True)
    plain = layout.image(amd64, pretty=False, annotated=False,
                         layer_type="application/vnd.oci.image.layer.v1.tar", layers=(TAR_A, TAR_B))
    layout.tag(OCI_MANIFEST, plain, "plain")
    index = compact({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(img), "size": len(img), "annotations": {"z": "1", "a": "2"},
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256(sibling), "size": len(sibling),
             "platform": {"architecture": "amd64", "os": "linux", "os.features": ["f"]}},
        ],
        "annotations": {"zz": "1", "aa": "2"},
    })
    layout.tag(OCI_INDEX, index, "multi")

    config = compact(RICH_DOCKER_CONFIG)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": sha256(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(blob),
                    "digest": sha256(blob)} for blob in (GZ_A, GZ_B)],
    }, indent=3).encode()
    write_dir(root / "rich-v2s2", manifest, [config, GZ_A, GZ_B])

    ids = [f"{i:064x}" for i in (3, 2, 1)]
    v1 = [
        # Hand-spelled: an escaped é, numbers Go keeps as written, an escaped slash, spaces.
        '{"id":"%s", "parent":"%s", "created":"2017-06-01T02:00:03.120000000+02:00", "author":"a&b",'
        ' "throwaway":true, "architecture":"arm", "container_config":{"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"]},'
        ' "config":{"Cmd":["sh"],"Env":["X=1"],"Labels":{"b":"1","a":"2"}}, "docker_version":"1.13", "Size":0,'
        ' "comment":"caf\\u00e9 <b>", "weird":{"n":1.50, "e":1E3, "s":"a\\/b"}}' % (ids[0], ids[1]),
        json.dumps({"id": ids[1], "parent": ids[2], "created": "2017-06-01T00:00:02.5Z",
                    "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD b"]}, "comment": "c"}),
        json.dumps({"id": ids[2], "container_config": {}}),
    ]
    schema1 = json.dumps({
        "schemaVersion": 1, "name": "demo/rich", "tag": "1", "architecture": "arm",
        "fsLayers": [{"blobSum": sha256(blob)} for blob in (GZ_EMPTY, GZ_B, GZ_A)],
        "history": [{"v1Compatibility": text} for text in v1],
    }, indent=3).encode()
    write_dir(root / "rich-s1", schema1, [GZ_EMPTY, GZ_A, GZ_B])


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Every source image; the signed schema1 and the Docker list are written by skopeo."""
    root = tmp_path_factory.mktemp("sources")
    write_oci_samples(str(root / "samples"))
    write_schema1_sample(str(root / "s1"))
    write_rich(root)
    skopeo("copy", "--format", "v2s1", f"dir:{root}/s1", f"dir:{root}/s1-signed")
    skopeo("copy", "--format", "v2s1", f"dir:{root}/rich-s1", f"dir:{root}/rich-s1-signed")
    skopeo("copy", "--format", "v2s2", f"oci:{root}/samples:demo/app:1.0", f"dir:{root}/v2s2")
    skopeo("copy", "--all", "--format", "v2s2", f"oci:{root}/rich-oci:multi", f"dir:{root}/rich-list")
    for signed in ("s1-signed", "rich-s1-signed"):
        assert b'"signatures"' in (root / signed / "manifest.json").read_bytes()
    return root


class Tree:
    """Reads back what either tool wrote to an OCI layout or a dir:, by digest."""

    def __init__(self, ref: str) -> None:
        transport, _, rest = ref.partition(":")
        self.dir = transport == "dir"
        self.path = Path(rest if self.dir else rest.rsplit(":", 1)[0])

    def root(self) -> bytes:
        if self.dir:
            return (self.path / "manifest.json").read_bytes()
        index = json.loads((self.path / "index.json").read_bytes())
        (entry,) = index["manifests"]
        return self.blob(entry["digest"])

    def blob(self, digest: str) -> bytes:
        hex_ = digest.split(":", 1)[1]
        if self.dir:
            named = self.path / f"{hex_}.manifest.json"
            data = (named if named.exists() else self.path / hex_).read_bytes()
        else:
            data = (self.path / "blobs/sha256" / hex_).read_bytes()
        assert sha256(data) == digest
        return data


def mask_layers(manifest: bytes) -> bytes:
    """The manifest with layer digests and sizes replaced: they depend on the compressor."""
    doc = json.loads(manifest)
    for layer in doc["layers"]:
        layer["digest"], layer["size"] = "sha256:" + "0" * 64, 0
    return compact(doc)


def assert_same_tree(theirs: Tree, ours: Tree, *, recompressed: bool) -> int:
    """Walk both results from the root; returns how many documents were compared."""
    compared = 0
    pending: list[tuple[bytes, bytes]] = [(theirs.root(), ours.root())]
    while pending:
        a, b = pending.pop()
        doc_a, doc_b = json.loads(a), json.loads(b)
        if "manifests" in doc_a:
            assert a == b if not recompressed else len(doc_a["manifests"]) == len(doc_b["manifests"])
            if recompressed:
                masked = [dict(m, digest="", size=0) for m in doc_a["manifests"]], \
                         [dict(m, digest="", size=0) for m in doc_b["manifests"]]
                assert compact(dict(doc_a, manifests=masked[0])) == compact(dict(doc_b, manifests=masked[1]))
            for ma, mb in zip(doc_a["manifests"], doc_b["manifests"]):
                pending.append((theirs.blob(ma["digest"]), ours.blob(mb["digest"])))
        else:
            if recompressed:
                assert mask_layers(a) == mask_layers(b), (a, b)
            else:
                assert a == b, (a, b)
            assert doc_a["config"]["digest"] == doc_b["config"]["digest"]
            assert theirs.blob(doc_a["config"]["digest"]) == ours.blob(doc_b["config"]["digest"])
        compared += 1
    return compared


# (case id, source, skopeo flags, imagepush flags, destination transport, documents compared)
CASES = [
    ("schema1-unsigned-to-v2s2", "dir:{s}/s1", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("schema1-unsigned-to-oci", "dir:{s}/s1", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("schema1-signed-to-v2s2", "dir:{s}/s1-signed", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("schema1-signed-to-oci", "dir:{s}/s1-signed", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("rich-schema1-unsigned-to-v2s2", "dir:{s}/rich-s1", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("rich-schema1-unsigned-to-oci", "dir:{s}/rich-s1", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("rich-schema1-signed-to-v2s2", "dir:{s}/rich-s1-signed", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("rich-schema1-signed-to-oci", "dir:{s}/rich-s1-signed", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("v2s2-to-oci", "dir:{s}/v2s2", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("rich-v2s2-to-oci", "dir:{s}/rich-v2s2", ["--format", "oci"], ["--format", "oci"], "oci", 1),
    ("oci-to-v2s2", "oci:{s}/samples:demo/app:1.0", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("rich-oci-to-v2s2", "oci:{s}/rich-oci:img", ["--format", "v2s2"], ["--format", "v2s2"], "dir", 1),
    ("index-to-list", "oci:{s}/samples:demo/multi:1.0", ["--all", "--format", "v2s2"], ["--format", "v2s2"], "dir", 3),
    ("rich-index-to-list", "oci:{s}/rich-oci:multi", ["--all", "--format", "v2s2"], ["--format", "v2s2"], "dir", 3),
    ("rich-list-to-index", "dir:{s}/rich-list", ["--all", "--format", "oci"], ["--format", "oci"], "oci", 3),
    ("gzip-to-uncompressed", "dir:{s}/rich-v2s2", ["--dest-decompress"], ["--compression", "none"], "dir", 1),
    ("oci-gzip-to-uncompressed", "oci:{s}/rich-oci:img", ["--dest-decompress"], ["--compression", "none"], "dir", 1),
]

#: Recompression: layer bytes depend on the compressor, everything else must match.
RECOMPRESS_CASES = [
    ("gzip-to-zstd", "oci:{s}/samples:demo/app:1.0", ["--dest-compress-format", "zstd"], ["--compression", "zstd"], 1),
    ("rich-gzip-to-zstd", "oci:{s}/rich-oci:img", ["--dest-compress-format", "zstd"], ["--compression", "zstd"], 1),
    ("rich-index-gzip-to-zstd", "oci:{s}/rich-oci:multi", ["--all", "--dest-compress-format", "zstd"],
     ["--compression", "zstd"], 3),
    ("uncompressed-to-gzip", "oci:{s}/rich-oci:plain", ["--dest-compress"], ["--compression", "gzip"], 1),
]


def destinations(tmp_path: Path, transport: str) -> tuple[str, str]:
    if transport == "dir":
        return f"dir:{tmp_path}/theirs", f"dir:{tmp_path}/ours"
    return f"oci:{tmp_path}/theirs:x", f"oci:{tmp_path}/ours:x"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conversion_is_byte_identical_to_skopeo(sources, tmp_path, case):
    _, source, skopeo_flags, our_flags, transport, documents = case
    src = source.format(s=sources)
    theirs, ours = destinations(tmp_path, transport)
    skopeo("copy", *skopeo_flags, src, theirs)
    imagepush("copy", *our_flags, src, ours, "--audit", str(tmp_path / "audit.parquet"))
    assert assert_same_tree(Tree(theirs), Tree(ours), recompressed=False) == documents


@pytest.mark.parametrize("case", RECOMPRESS_CASES, ids=[c[0] for c in RECOMPRESS_CASES])
def test_recompression_matches_skopeo_but_for_layer_bytes(sources, tmp_path, case):
    _, source, skopeo_flags, our_flags, documents = case
    src = source.format(s=sources)
    theirs, ours = destinations(tmp_path, "oci")
    skopeo("copy", *skopeo_flags, src, theirs)
    imagepush("copy", *our_flags, src, ours, "--audit", str(tmp_path / "audit.parquet"))
    assert assert_same_tree(Tree(theirs), Tree(ours), recompressed=True) == documents
    # The layer annotations described the old compressed bytes: both tools drop them.
    for layer in json.loads(Tree(ours).root() if documents == 1 else b'{"layers":[]}')["layers"]:
        assert "annotations" not in layer
