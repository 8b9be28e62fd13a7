"""Sample images the demo and the tests build from nothing: real tar layers, no network.

Every byte is deterministic (fixed mtimes, owners and gzip headers), so the same
command always produces the same digests.
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from typing import Any

from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.descriptor import Descriptor, Platform
from imagepush.transforms.formats.jsonio import dumps
from imagepush.transforms.stores.base import ManifestBlob, Publication
from imagepush.transforms.stores.dir import DirDestination
from imagepush.transforms.stores.layout.oci import OCILayoutDestination

CREATED = "2017-06-01T00:00:00Z"


def tar_layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of regular files (directories created as needed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1496275200
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 1496275200
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _desc(media_type: str, data: bytes, **kw: Any) -> Descriptor:
    return Descriptor(media_type=media_type, digest=digestlib.of_bytes(data), size=len(data), **kw)


def _image(dest: OCILayoutDestination, arch: str, layers: list[bytes], extra_env: str) -> Descriptor:
    """Write one OCI image's blobs and manifest; return the manifest's descriptor (with its platform)."""
    diff_ids = [digestlib.of_bytes(t) for t in layers]
    blobs = [gz(t) for t in layers]
    config = dumps({
        "created": CREATED,
        "author": "imagepush samples",
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": "1000",
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", extra_env],
            "Entrypoint": ["/bin/hello"],
            "Cmd": ["--greeting", "hi"],
            "WorkingDir": "/srv",
            "Labels": {"org.example.sample": "true"},
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"ADD base-{i} /", "comment": "sample"} for i in range(len(layers))
        ] + [{"created": CREATED, "created_by": "ENV SAMPLE=1", "empty_layer": True}],
    })
    config_desc = _desc(mt.OCI_CONFIG, config)
    dest.put_blob(config_desc, config)
    layer_descs = []
    for blob in blobs:
        d = _desc(mt.OCI_LAYER_GZIP, blob)
        dest.put_blob(d, blob)
        layer_descs.append(d)
    manifest = dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_desc.to_dict(),
        "layers": [d.to_dict() for d in layer_descs],
        "annotations": {"org.opencontainers.image.title": f"sample-{arch}"},
    })
    desc = _desc(mt.OCI_MANIFEST, manifest, platform=Platform(architecture=arch, os="linux"))
    dest.put_manifest(ManifestBlob(manifest, mt.OCI_MANIFEST, desc.digest))
    return desc


def write_oci_samples(url: str) -> None:
    """``demo/app:1.0`` (one image) and ``demo/multi:1.0`` (amd64 + arm64 sharing a base)."""
    dest = OCILayoutDestination(url)
    dest.prepare()
    base = tar_layer({"etc/os-release": b"NAME=sample\n", "bin/hello": b"#!/bin/sh\necho hello\n"})
    app = tar_layer({"srv/app.txt": b"application layer\n"})
    single = _image(dest, "amd64", [base, app], "APP=single")
    entries = []
    for arch in ("amd64", "arm64"):
        entries.append(_image(dest, arch, [base, tar_layer({"srv/arch": arch.encode()})], f"ARCH={arch}"))
    index = dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [e.to_dict() for e in entries],
    })
    index_desc = _desc(mt.OCI_INDEX, index)
    dest.put_manifest(ManifestBlob(index, mt.OCI_INDEX, index_desc.digest), root=True)
    single_root = Descriptor(single.media_type, single.digest, single.size)
    dest.publish([Publication("demo/app:1.0", single_root), Publication("demo/multi:1.0", index_desc)])


def write_schema1_sample(url: str) -> None:
    """An unsigned Docker schema1 image in a ``dir:``: two layers and one throwaway step."""
    base = gz(tar_layer({"etc/os-release": b"NAME=legacy\n"}))
    top = gz(tar_layer({"srv/legacy.txt": b"legacy layer\n"}))
    empty = gz(tar_layer({}))
    ids = [f"{i:064x}" for i in (3, 2, 1)]  # top first, as schema1 lists them
    v1 = [
        {"id": ids[0], "parent": ids[1], "created": "2017-06-01T00:00:03Z",
         "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"/bin/sh\"]"]},
         "throwaway": True, "architecture": "amd64", "os": "linux",
         "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv",
                    "Labels": {"legacy": "yes"}}},
        {"id": ids[1], "parent": ids[2], "created": "2017-06-01T00:00:02Z",
         "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file:legacy.txt in /srv"]}},
        {"id": ids[2], "created": "2017-06-01T00:00:01Z",
         "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file:base in /"]}},
    ]
    manifest = dumps({
        "schemaVersion": 1,
        "name": "demo/legacy",
        "tag": "1.0",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": digestlib.of_bytes(b)} for b in (empty, top, base)],
        "history": [{"v1Compatibility": dumps(h).decode()} for h in v1],
    })
    dest = DirDestination(url)
    dest.prepare()
    for blob in {empty, top, base}:
        dest.put_blob(_desc(mt.DOCKER_LAYER_GZIP, blob), blob)
    desc = _desc(mt.DOCKER_SCHEMA1, manifest)
    dest.put_manifest(ManifestBlob(manifest, mt.DOCKER_SCHEMA1, desc.digest), root=True)
    dest.publish([Publication(None, desc, manifest=manifest)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write imagepush's sample images.")
    parser.add_argument("oci_layout", help="where to write the OCI layout samples")
    parser.add_argument("schema1_dir", help="where to write the schema1 dir: sample")
    args = parser.parse_args(argv)
    write_oci_samples(args.oci_layout)
    write_schema1_sample(args.schema1_dir)


if __name__ == "__main__":
    main()
