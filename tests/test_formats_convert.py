"""Specification of format conversion (containers/image semantics, deterministic output)."""

from __future__ import annotations

import dataclasses
import hashlib

import orjson
import pytest

from imagepush.transforms.formats import mediatypes as mt
from imagepush.transforms.formats.convert import (
    ConvertedImage,
    LayerInfo,
    convert_image,
    convert_index,
    docker_config_to_oci,
    oci_config_to_docker,
    replace_layers,
    schema1_to_docker_config,
)
from imagepush.transforms.formats.descriptor import Descriptor, FormatError, Platform
from imagepush.transforms.formats.manifest import ImageIndex, ImageManifest, parse_manifest
from imagepush.transforms.formats.schema1 import parse_schema1


from tests.conftest import fixture, sha256  # noqa: E402



DOCKER_CONFIG = "conversion/ci__schema2-config.json"
DOCKER_CONFIG_DIGEST = "sha256:9ca4bda0a6b3727a6ffcc43e981cad0f24e2ec79d338f6ba325b4dfd0756fb8f"
# tests/fixtures/README.md: the config digest/size containers/image produces for schema2 -> OCI.
OCI_CONFIG_DIGEST = "sha256:f15ba60ec257ee2cf4fddfb9451bb86ba2668450e88d402f5ecc7ea6ce1b661a"
OCI_CONFIG_SIZE = 4670
ONE_IMAGE = "layouts/go-containerregistry_test_index_one_image/blobs/sha256/"
ONE_IMAGE_MANIFEST = ONE_IMAGE + "98ceaf93e482fe91b9bfd6bba07137c098e49ee2d55e69f09fb6c951e75e0e46"
ONE_IMAGE_CONFIG = ONE_IMAGE + "381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810"
EMPTY_GZIP_TAR = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


def parsed(name: str):
    return parse_manifest(fixture(name), None)


def without_config_digest(manifest: dict) -> dict:
    config = {k: v for k, v in manifest["config"].items() if k not in ("digest", "size")}
    return {**manifest, "config": config}


def unsigned_by_docker() -> bytes:
    """The Docker Hub schema1 fixture without its (edited, no longer matching) signature."""
    data = fixture("conversion/ci__schema2-to-schema1-by-docker.json")
    return data[: data.index(b',\n   "signatures"')] + b"\n}"


def layer_info_from_schema2() -> dict[str, LayerInfo]:
    """Sizes from the schema2 original and diffIDs from its config: the truth for that image."""
    manifest = orjson.loads(fixture("conversion/ci__schema2.json"))
    diff_ids = orjson.loads(fixture(DOCKER_CONFIG))["rootfs"]["diff_ids"]
    return {layer["digest"]: LayerInfo(layer["size"], diff_id) for layer, diff_id in zip(manifest["layers"], diff_ids)}


# --------------------------------------------------------------------------- configs


def test_schema2_config_to_oci_matches_containers_image_expectation():
    out = docker_config_to_oci(fixture(DOCKER_CONFIG))
    assert orjson.loads(out) == orjson.loads(fixture("conversion/ci__schema2-to-oci1-config.json"))


def test_schema2_config_to_oci_is_byte_identical_to_containers_image():
    out = docker_config_to_oci(fixture(DOCKER_CONFIG))
    assert (sha256(out), len(out)) == (OCI_CONFIG_DIGEST, OCI_CONFIG_SIZE)


def test_docker_only_config_fields_are_dropped():
    out = orjson.loads(docker_config_to_oci(fixture(DOCKER_CONFIG)))
    assert list(out) == ["created", "architecture", "os", "config", "rootfs", "history"]
    assert list(out["config"]) == ["ExposedPorts", "Env", "Cmd", "WorkingDir", "ArgsEscaped"]
    source = orjson.loads(fixture(DOCKER_CONFIG))
    assert {"container", "container_config", "docker_version"} <= set(source)
    assert {"Hostname", "Image", "OnBuild", "Labels"} <= set(source["config"])


def test_oci_config_without_platform_gets_empty_strings_like_containers_image():
    # Neither the host's platform nor a fixed default: skopeo writes "" for both.
    out = docker_config_to_oci(b'{"rootfs":{"type":"layers","diff_ids":[]}}')
    assert out == b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
    absent = docker_config_to_oci(b'{"rootfs":{"type":"layers"}}')
    assert absent == b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":null}}'


def test_oci_config_keeps_every_oci_field_in_struct_order():
    config = {
        "Size": 5, "id": "x", "parent": "y", "container": "z",
        "history": [{"created_by": "b", "created": "2020-01-01T02:00:00.100+02:00", "empty_layer": False, "comment": "", "author": "me"}],
        "rootfs": {"diff_ids": ["sha256:" + "1" * 64], "type": "layers"},
        "config": {
            "ArgsEscaped": False, "StopSignal": "SIGTERM", "Labels": {"z": "1", "a": "2"}, "WorkingDir": "/w",
            "Volumes": {"/v": {}}, "Cmd": "sh", "Entrypoint": ["/init"], "Env": ["A=1"],
            "ExposedPorts": {"53/udp": {}, "443/tcp": {}}, "User": "1000", "Healthcheck": {"Test": ["NONE"]},
            "Shell": ["/bin/sh"],
        },
        "variant": "v8", "os.features": ["f"], "os.version": "10", "os": "windows", "architecture": "arm64",
        "author": "someone", "created": "2020-01-01T00:00:00.000+00:00",
    }
    out = docker_config_to_oci(orjson.dumps(config))
    assert out == (
        b'{"created":"2020-01-01T00:00:00Z","author":"someone","architecture":"arm64","variant":"v8",'
        b'"os":"windows","os.version":"10","os.features":["f"],"config":{"User":"1000",'
        b'"ExposedPorts":{"443/tcp":{},"53/udp":{}},"Env":["A=1"],"Entrypoint":["/init"],"Cmd":["sh"],'
        b'"Volumes":{"/v":{}},"WorkingDir":"/w","Labels":{"a":"2","z":"1"},"StopSignal":"SIGTERM"},'
        b'"rootfs":{"type":"layers","diff_ids":["sha256:' + b"1" * 64 + b'"]},'
        b'"history":[{"created":"2020-01-01T02:00:00.1+02:00","created_by":"b","author":"me"}]}'
    )


def test_oci_config_requires_rootfs():
    with pytest.raises(FormatError, match="rootfs"):
        docker_config_to_oci(b'{"architecture":"amd64","os":"linux"}')


def test_oci_config_rejects_mistyped_fields():
    with pytest.raises(FormatError, match="Env is not an array of strings"):
        docker_config_to_oci(b'{"rootfs":{"type":"layers"},"config":{"Env":"A=1"}}')


def test_oci_config_is_reused_unchanged_for_docker():
    config = fixture(ONE_IMAGE_CONFIG)
    assert oci_config_to_docker(config) is config


# --------------------------------------------------------------------------- schema2 -> OCI


def test_schema2_to_oci_manifest_matches_expected_fixture():
    raw = fixture("conversion/ci__schema2.json")
    config = fixture(DOCKER_CONFIG)
    result = convert_image(parse_manifest(raw, None), config, "oci", raw=raw)
    expected = orjson.loads(fixture("conversion/ci__schema2-to-oci1.json"))
    produced = orjson.loads(result.manifest)
    assert without_config_digest(produced) == without_config_digest(expected)
    assert produced["config"]["digest"] == sha256(result.config)
    assert produced["config"]["size"] == len(result.config)
    # Our serialisation matches Go's, so even the config descriptor agrees exactly.
    assert produced["config"] == expected["config"]
    assert result.media_type == mt.OCI_MANIFEST
    assert result.digest == sha256(result.manifest)
    assert result.config_changed
    assert result.config_descriptor == Descriptor(mt.OCI_CONFIG, OCI_CONFIG_DIGEST, OCI_CONFIG_SIZE)


def test_schema2_to_oci_manifest_key_order():
    raw = fixture("conversion/ci__schema2.json")
    result = convert_image(parse_manifest(raw, None), fixture(DOCKER_CONFIG), "oci")
    assert result.manifest.startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"' + OCI_CONFIG_DIGEST.encode()
        + b'","size":4670},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",'
    )


def test_schema2_all_media_types_map_to_oci_types():
    raw = fixture("conversion/ci__schema2-all-media-types.json")
    result = convert_image(parse_manifest(raw, None), fixture(DOCKER_CONFIG), "oci")
    expected = orjson.loads(fixture("conversion/ci__schema2-all-media-types-to-oci1.json"))
    assert orjson.loads(result.manifest) == expected


def test_schema2_to_oci_keeps_layer_urls():
    m = parsed("docker-schema2/ci__v2s2.everything.json")
    config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    m = dataclasses.replace(m, config=Descriptor(mt.DOCKER_CONFIG, sha256(config), len(config)))
    result = convert_image(m, config, "oci")
    assert orjson.loads(result.manifest)["layers"] == [
        {
            "mediaType": mt.OCI_LAYER_GZIP,
            "digest": "sha256:" + "b" * 64,
            "size": 2,
            "urls": ["https://some.example/layer"],
        }
    ]


def test_schema2_layer_type_without_oci_equivalent_is_refused():
    m = parsed("conversion/ci__schema2.json")
    m = dataclasses.replace(m, layers=(dataclasses.replace(m.layers[0], media_type="application/x-odd"),))
    with pytest.raises(FormatError, match="'application/x-odd'"):
        convert_image(m, fixture(DOCKER_CONFIG), "oci")


def test_config_bytes_must_be_the_ones_the_manifest_names():
    with pytest.raises(FormatError, match="config bytes do not match"):
        convert_image(parsed("conversion/ci__schema2.json"), b"{}", "oci")


def test_conversion_is_deterministic():
    raw = fixture("conversion/ci__schema2.json")
    first = convert_image(parse_manifest(raw, None), fixture(DOCKER_CONFIG), "oci")
    second = convert_image(parse_manifest(raw, None), fixture(DOCKER_CONFIG), "oci")
    assert first == second
    schema1 = parse_schema1(unsigned_by_docker())
    one = convert_image(schema1, b"", "oci", layer_info_from_schema2())
    two = convert_image(parse_schema1(unsigned_by_docker()), b"", "oci", layer_info_from_schema2())
    assert (one.manifest, one.config) == (two.manifest, two.config)


# --------------------------------------------------------------------------- OCI -> schema2


def test_oci_to_schema2_keeps_config_digest():
    raw = fixture(ONE_IMAGE_MANIFEST)
    config = fixture(ONE_IMAGE_CONFIG)
    m = parse_manifest(raw, None)
    result = convert_image(m, config, "v2s2", raw=raw)
    assert result.config is config
    assert not result.config_changed
    assert result.config_descriptor == Descriptor(
        mt.DOCKER_CONFIG, "sha256:381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810", 452
    )
    assert result.manifest == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":452,'
        b'"digest":"sha256:381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810"},'
        b'"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":114,'
        b'"digest":"sha256:492b89b9dd3cda4596f94916d17f6901455fb8bd7f4c5a2a90df8d39c90f48a0"}]}'
    )
    assert result.digest == sha256(result.manifest)
    assert parse_manifest(result.manifest, result.media_type).layers[0].size == 114


def test_schema2_to_oci_and_back_restores_layer_types():
    raw = fixture("conversion/ci__schema2-all-media-types.json")
    oci = convert_image(parse_manifest(raw, None), fixture(DOCKER_CONFIG), "oci")
    back = convert_image(parse_manifest(oci.manifest, oci.media_type), oci.config, "v2s2")
    original = orjson.loads(raw)
    assert [layer["mediaType"] for layer in orjson.loads(back.manifest)["layers"]] == [
        layer["mediaType"] for layer in original["layers"]
    ]
    assert back.config_descriptor.digest == OCI_CONFIG_DIGEST


def _with_one_image_config(name: str) -> tuple[ImageManifest, bytes]:
    """A fixture manifest re-pointed at a config we actually have the bytes of."""
    config = fixture(ONE_IMAGE_CONFIG)
    m = parsed(name)
    return dataclasses.replace(m, config=Descriptor(mt.OCI_CONFIG, sha256(config), len(config))), config


def test_oci_uncompressed_and_nondistributable_layers_map_to_docker_types():
    m, config = _with_one_image_config("oci-manifest/ci__ociv1.uncompressed.manifest.json")
    layers = orjson.loads(convert_image(m, config, "v2s2").manifest)["layers"]
    assert {layer["mediaType"] for layer in layers} == {mt.DOCKER_LAYER}
    m, config = _with_one_image_config("oci-manifest/ci__ociv1.nondistributable.manifest.json")
    layers = orjson.loads(convert_image(m, config, "v2s2").manifest)["layers"]
    assert [layer["mediaType"] for layer in layers] == [mt.DOCKER_FOREIGN_LAYER]


def test_oci_annotations_are_dropped_going_to_docker():
    m, config = _with_one_image_config("oci-manifest/ci__ociv1.manifest.json")
    assert m.annotations
    out = orjson.loads(convert_image(m, config, "v2s2").manifest)
    assert list(out) == ["schemaVersion", "mediaType", "config", "layers"]


def test_zstd_layers_cannot_become_docker_schema2():
    with pytest.raises(FormatError, match="zstd layers cannot be written as Docker schema2"):
        convert_image(parsed("oci-manifest/ci__ociv1.zstd.manifest.json"), b"{}", "v2s2")


def test_encrypted_layers_cannot_become_docker_schema2():
    with pytest.raises(FormatError, match=r"tar\+gzip\+encrypted"):
        convert_image(parsed("oci-manifest/ci__ociv1.encrypted.manifest.json"), b"{}", "v2s2")


def test_unknown_oci_layer_type_fails_conversion_not_parsing():
    m = parsed("invalid/ci__ociv1.invalid.mediatype.manifest.json")
    with pytest.raises(FormatError, match=r"tar\+unknown"):
        convert_image(m, b"{}", "v2s2")


@pytest.mark.parametrize("name", ["oci-artifact/ci__ociv1.everything.json", "oci-artifact/ci__ociv1.artifact.json"])
def test_non_image_artifacts_are_refused_for_docker(name):
    with pytest.raises(FormatError, match="non-image artifact"):
        convert_image(parsed(name), b"", "v2s2")


# --------------------------------------------------------------------------- no-op


@pytest.mark.parametrize(
    "name, target",
    [
        ("docker-schema2/ci__v2s2.manifest.json", "v2s2"),
        ("oci-manifest/ci__ociv1.zstd.manifest.json", "oci"),
        ("oci-artifact/ci__ociv1.everything.json", "oci"),
        ("oci-manifest/ci__ociv1nomime.manifest.json", "oci"),
    ],
)
def test_same_format_returns_the_original_bytes(name, target):
    raw = fixture(name)
    m = parse_manifest(raw, None)
    result = convert_image(m, b"config", target, raw=raw)
    assert result == ConvertedImage(raw, m.media_type, sha256(raw), b"config", m.config, False)


def test_same_format_without_raw_bytes_is_a_caller_error():
    with pytest.raises(ValueError, match="raw manifest bytes are required"):
        convert_image(parsed("docker-schema2/ci__v2s2.manifest.json"), b"", "v2s2")


def test_unknown_target_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown conversion target"):
        convert_image(parsed("docker-schema2/ci__v2s2.manifest.json"), b"", "schema1")


# --------------------------------------------------------------------------- schema1


def test_schema1_conversion_recovers_the_original_docker_config_byte_for_byte():
    # Docker Hub down-converted ci__schema2.json to this schema1; converting back with the
    # true sizes and diffIDs reproduces the original config blob exactly.
    result = convert_image(parse_schema1(unsigned_by_docker()), b"", "v2s2", layer_info_from_schema2())
    assert result.config == fixture(DOCKER_CONFIG)
    assert result.config_descriptor == Descriptor(mt.DOCKER_CONFIG, DOCKER_CONFIG_DIGEST, 5940)
    expected = orjson.loads(fixture("conversion/ci__schema2.json"))
    expected["config"]["mediaType"] = mt.DOCKER_CONFIG  # the original used application/octet-stream
    assert orjson.loads(result.manifest) == expected
    assert result.config_changed


def test_schema1_history_is_reversed_with_empty_layer_for_throwaway_entries():
    m = parse_schema1(unsigned_by_docker())
    diff_ids = ["sha256:" + str(i) * 64 for i in range(1, 6)]
    config = orjson.loads(schema1_to_docker_config(m, diff_ids))
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    history = config["history"]
    assert len(history) == 15
    assert history[0] == {
        "created": "2016-09-23T18:08:50.537223822Z",
        "created_by": "/bin/sh -c #(nop) ADD "
        "file:c6c23585ab140b0b320d4e99bc1b0eb544c9e96c24d90fec5e069a6d57d335ca in / ",
    }
    assert history[1] == {
        "created": "2016-09-23T18:08:51.133779867Z",
        "created_by": '/bin/sh -c #(nop)  CMD ["/bin/bash"]',
        "empty_layer": True,
    }
    assert history[-1]["created_by"] == '/bin/sh -c #(nop)  CMD ["httpd-foreground"]'
    assert [bool(h.get("empty_layer")) for h in history] == [layer.throwaway for layer in m.layers]
    assert history == orjson.loads(fixture(DOCKER_CONFIG))["history"]
    assert not {"id", "parent", "throwaway", "Size"} & set(config)


def test_schema1_to_oci_with_made_up_layer_info():
    m = parse_schema1(unsigned_by_docker())
    real = [layer.blob_sum for layer in m.layers if not layer.throwaway]
    info = {blob: LayerInfo(size=1000 + i, diff_id="sha256:" + "abcde"[i] * 64) for i, blob in enumerate(real)}
    result = convert_image(m, b"", "oci", info)
    manifest = orjson.loads(result.manifest)
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"] == {
        "mediaType": mt.OCI_CONFIG, "digest": sha256(result.config), "size": len(result.config),
    }
    assert manifest["layers"] == [
        {"mediaType": mt.OCI_LAYER_GZIP, "digest": blob, "size": 1000 + i} for i, blob in enumerate(real)
    ]
    config = orjson.loads(result.config)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + c * 64 for c in "abcde"]
    assert "container_config" not in config and "docker_version" not in config
    assert sum(1 for h in config["history"] if h.get("empty_layer")) == 10


def test_schema1_pause_image_conversion():
    m = parse_schema1(fixture("docker-schema1/ci__schema1-for-oci-config.json"))
    info = {
        EMPTY_GZIP_TAR: LayerInfo(32, "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"),
        "sha256:f112334343777b75be77ec1f835e3bbbe7d7bd46e27b6a2ae35c6b3cfea0987c": LayerInfo(
            746888, "sha256:" + "f" * 64
        ),
    }
    result = convert_image(m, b"", "v2s2", info)
    layers = orjson.loads(result.manifest)["layers"]
    assert [(layer["digest"], layer["size"]) for layer in layers] == [
        (EMPTY_GZIP_TAR, 32),
        ("sha256:f112334343777b75be77ec1f835e3bbbe7d7bd46e27b6a2ae35c6b3cfea0987c", 746888),
        (EMPTY_GZIP_TAR, 32),
    ]
    config = orjson.loads(result.config)
    assert list(config) == sorted(config)
    assert config["rootfs"]["diff_ids"] == [
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
        "sha256:" + "f" * 64,
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
    ]
    assert [h["created_by"] for h in config["history"]] == [
        "/bin/sh -c #(nop) ARG ARCH",
        "/bin/sh -c #(nop) ADD file:b7eb6a5df9d5fbe509cac16ed89f8d6513a4362017184b14c6a5fae151eee5c5 in /pause",
        '/bin/sh -c #(nop) ENTRYPOINT &{["/pause"]}',
    ]
    assert not any("empty_layer" in h for h in config["history"])
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["docker_version"] == "1.9.1"
    assert config["container"] == "a9873535145fe72b464d3055efbac36aab70d059914e221cbbd7fe3cac53ef6b"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["created"] == "2016-05-04T06:26:41.522308365Z"
    assert not {"id", "parent", "Size"} & set(config)
    oci = convert_image(m, b"", "oci", info)
    oci_config = orjson.loads(oci.config)
    assert list(oci_config) == ["created", "architecture", "os", "config", "rootfs", "history"]
    assert oci_config["config"] == {"Entrypoint": ["/pause"]}


def test_schema1_config_adds_no_os_or_architecture():
    """containers/image copies the v1Compatibility keys and adds no platform of its own."""
    v1 = '{"id":"' + "a" * 64 + '","created":"2020-01-01T00:00:00Z","container_config":{"Cmd":["a","b"]}}'
    data = orjson.dumps({
        "schemaVersion": 1, "name": "x", "tag": "y", "architecture": "s390x",
        "fsLayers": [{"blobSum": EMPTY_GZIP_TAR}], "history": [{"v1Compatibility": v1}],
    })
    config = orjson.loads(schema1_to_docker_config(parse_schema1(data), ["sha256:" + "1" * 64]))
    assert config == {
        "container_config": {"Cmd": ["a", "b"]},
        "created": "2020-01-01T00:00:00Z",
        "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "a b"}],
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }


def test_schema1_diff_id_count_must_match_non_throwaway_layers():
    m = parse_schema1(unsigned_by_docker())
    with pytest.raises(FormatError, match="5 non-empty layers but 4 diffIDs"):
        schema1_to_docker_config(m, ["sha256:" + "1" * 64] * 4)


def test_schema1_conversion_needs_layer_info_for_every_real_layer():
    m = parse_schema1(unsigned_by_docker())
    info = layer_info_from_schema2()
    del info["sha256:8f5dc8a4b12c307ac84de90cdd9a7f3915d1be04c9388868ca118831099c67a9"]
    with pytest.raises(FormatError, match="no size/diffID known for schema1 layer sha256:8f5dc8a4"):
        convert_image(m, b"", "v2s2", info)
    with pytest.raises(FormatError, match="needs the size and diffID"):
        convert_image(m, b"", "v2s2")


def test_layer_info_is_validated():
    with pytest.raises(FormatError):
        LayerInfo(-1, "sha256:" + "1" * 64)
    with pytest.raises(FormatError):
        LayerInfo(1, "sha256:nothex")


# --------------------------------------------------------------------------- indexes


def _replacement(d: Descriptor, media_type: str, seed: str) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(seed.encode() + d.digest.encode()).hexdigest(), d.size + 1)


def test_docker_list_to_oci_index_replaces_children_and_drops_cpu_features():
    raw = fixture("docker-manifest-list/ci__v2list.manifest.json")
    index = parse_manifest(raw, None)
    children = {entry.digest: _replacement(entry, mt.OCI_MANIFEST, "oci") for entry in index.manifests}
    data, media_type, digest = convert_index(index, "oci", children, raw)
    assert media_type == mt.OCI_INDEX
    assert digest == sha256(data)
    doc = orjson.loads(data)
    assert list(doc) == ["schemaVersion", "mediaType", "manifests"]
    assert doc["manifests"][1] == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": children["sha256:ae1b0e06e8ade3a11267564a26e750585ba2259c0ecab59ab165ad1af41d1bdd"].digest,
        "size": 1923,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    assert [e["platform"] for e in doc["manifests"]] == [
        {"architecture": "ppc64le", "os": "linux"},
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "s390x", "os": "linux"},
        {"architecture": "arm", "os": "linux", "variant": "armv7"},
        {"architecture": "arm64", "os": "linux", "variant": "armv8"},
    ]


def test_oci_index_to_docker_list_drops_annotations_and_artifact_type():
    raw = fixture("oci-index/ci__oci1index.json")
    index = parse_manifest(raw, None)
    children = {entry.digest: _replacement(entry, mt.DOCKER_SCHEMA2, "docker") for entry in index.manifests}
    data, media_type, _ = convert_index(index, "v2s2", children, raw)
    assert media_type == mt.DOCKER_LIST
    doc = orjson.loads(data)
    assert list(doc) == ["schemaVersion", "mediaType", "manifests"]
    assert doc["manifests"][1] == {
        "mediaType": mt.DOCKER_SCHEMA2,
        "size": 7683,
        "digest": children["sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"].digest,
        "platform": {"architecture": "amd64", "os": "linux", "os.features": ["sse4"]},
    }
    assert all(set(e) == {"mediaType", "size", "digest", "platform"} for e in doc["manifests"])


def test_oci_index_entry_without_platform_cannot_join_a_docker_list():
    raw = fixture("oci-layout-index/ci__name_lookups.index.json")
    index = parse_manifest(raw, None)
    with pytest.raises(FormatError, match="index entry sha256:a+ has no platform; a Docker manifest list needs one"):
        convert_index(index, "v2s2", {}, raw)


def test_docker_list_cannot_reference_oci_manifests():
    raw = fixture("oci-index/ci__ociv1.image.index.json")
    with pytest.raises(FormatError, match="cannot reference"):
        convert_index(parse_manifest(raw, None), "v2s2", {}, raw)


def test_unchanged_index_of_the_target_type_is_returned_as_is():
    raw = fixture("oci-index/ci__oci1index.json")
    index = parse_manifest(raw, None)
    same = {entry.digest: entry for entry in index.manifests}
    assert convert_index(index, "oci", same, raw) == (raw, mt.OCI_INDEX, sha256(raw))
    assert convert_index(index, "oci", {}, raw) == (raw, mt.OCI_INDEX, sha256(raw))


def test_oci_index_with_a_converted_child_keeps_annotations_and_platforms():
    raw = fixture("oci-index/ci__ocilist-variants.json")
    index = parse_manifest(raw, None)
    zstd_entry = index.manifests[3]
    new = Descriptor(mt.OCI_MANIFEST, "sha256:" + "9" * 64, 600)
    data, media_type, digest = convert_index(index, "oci", {zstd_entry.digest: new}, raw)
    assert (media_type, digest) == (mt.OCI_INDEX, sha256(data))
    doc = orjson.loads(data)
    assert doc["manifests"][3] == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": "sha256:" + "9" * 64,
        "size": 600,
        "annotations": {"io.github.containers.compression.zstd": "true"},
        "platform": {"architecture": "arm", "os": "linux", "variant": "v6"},
    }
    assert doc["manifests"][0] == orjson.loads(raw)["manifests"][0]
    assert convert_index(index, "oci", {zstd_entry.digest: new}, raw)[0] == data


def test_index_conversion_keeps_oci_index_fields_when_target_is_oci():
    index = ImageIndex(
        media_type=mt.OCI_INDEX,
        manifests=(Descriptor(mt.DOCKER_SCHEMA2, "sha256:" + "1" * 64, 10, platform=Platform("amd64", "linux")),),
        annotations=(("z", "1"), ("a", "2")),
        subject=Descriptor(mt.OCI_MANIFEST, "sha256:" + "2" * 64, 20),
        artifact_type="application/x-thing",
    )
    children = {"sha256:" + "1" * 64: Descriptor(mt.OCI_MANIFEST, "sha256:" + "3" * 64, 30)}
    data, _, _ = convert_index(index, "oci", children, b"unused")
    assert data == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
        b'"artifactType":"application/x-thing","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"digest":"sha256:' + b"3" * 64 + b'","size":30,"platform":{"architecture":"amd64","os":"linux"}}],'
        b'"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:' + b"2" * 64
        + b'","size":20},"annotations":{"a":"2","z":"1"}}'
    )


def test_docker_list_with_unchanged_children_converts_type_only():
    raw = fixture("docker-manifest-list/ci__schema2list.json")
    index = parse_manifest(raw, None)
    data, media_type, _ = convert_index(index, "oci", {}, raw)
    assert media_type == mt.OCI_INDEX
    doc, original = orjson.loads(data), orjson.loads(raw)
    assert doc["manifests"] == [
        {"mediaType": e["mediaType"], "digest": e["digest"], "size": e["size"], "platform": e["platform"]}
        for e in original["manifests"]
    ]
    # Same list back to Docker: nothing changed, so the original bytes come back.
    assert convert_index(index, "v2s2", {}, raw) == (raw, mt.DOCKER_LIST, sha256(raw))


def test_index_filtered_by_platform_lists_only_kept_entries():
    raw = fixture("oci-index/ci__oci1index.json")
    index = parse_manifest(raw, None)
    first = index.manifests[0]
    data, media_type, digest = convert_index(index, "oci", {}, raw, keep={first.digest})
    assert media_type == mt.OCI_INDEX
    assert [m["digest"] for m in orjson.loads(data)["manifests"]] == [first.digest]
    assert digest == sha256(data)


# --------------------------------------------------------------------------- Go's spelling


@pytest.mark.parametrize(
    ("written", "go"),
    [
        ("2017-06-01T00:00:13.120000000Z", "2017-06-01T00:00:13.12Z"),
        ("2017-06-01T00:00:15.000000000Z", "2017-06-01T00:00:15Z"),
        ("2017-06-01T02:00:13.500+02:00", "2017-06-01T02:00:13.5+02:00"),
        ("2017-06-01T00:00:14+00:00", "2017-06-01T00:00:14Z"),
        ("2017-06-01T00:00:14-00:00", "2017-06-01T00:00:14Z"),
        ("2019-03-04T05:06:07.123456789-05:30", "2019-03-04T05:06:07.123456789-05:30"),
    ],
)
def test_timestamps_are_spelled_as_go_marshals_a_time(written, go):
    from imagepush.transforms.formats.jsonio import go_time

    assert go_time(written, "created") == go


@pytest.mark.parametrize("bad", ["", "2017-06-01", "2017-06-01 00:00:00Z", "2017-13-01T00:00:00Z", "2017-02-30T00:00:00Z"])
def test_timestamps_go_would_refuse_are_format_errors(bad):
    from imagepush.transforms.formats.jsonio import go_time

    with pytest.raises(FormatError):
        go_time(bad, "created")


def test_raw_members_keep_the_spelling_of_values_like_a_go_raw_message():
    from imagepush.transforms.formats.jsonio import dumps, raw_members

    text = ' { "n" : [1.50, 1E3 ,"a b<"], "s":"caf\\u00e9\\/", "o":{ }, "n": 2 } '
    assert dumps(raw_members(text, "x")) == b'{"s":"caf\\u00e9\\/","o":{},"n":2}'


def test_replace_layers_drops_what_described_the_old_bytes_and_sorts_annotations():
    old = "sha256:" + "a" * 64
    kept = "sha256:" + "b" * 64
    manifest = orjson.dumps({
        "mediaType": mt.OCI_MANIFEST, "schemaVersion": 2, "unknown": 1,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 2},
        "layers": [
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": old, "size": 3, "urls": ["https://x/y"],
             "annotations": {"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "d" * 64}},
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": kept, "size": 4, "annotations": {"z": "1", "a": "2"}},
        ],
        "annotations": {"z": "1", "a": "2"},
    })
    new = Descriptor(mt.OCI_LAYER_ZSTD, "sha256:" + "e" * 64, 5)
    data, digest = replace_layers(manifest, {old: new})
    assert data == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:' + b"c" * 64
        + b'","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:'
        + b"e" * 64 + b'","size":5},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'
        + b"b" * 64 + b'","size":4,"annotations":{"a":"2","z":"1"}}],"annotations":{"a":"2","z":"1"}}'
    )
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
