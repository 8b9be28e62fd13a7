"""Descriptors and platforms: the records that point from one object to another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagepush.transforms.errors import INVALID_INPUT, ImagepushError
from imagepush.transforms.formats import digest as digestlib


class FormatError(ImagepushError, ValueError):
    kind = INVALID_INPUT

    """A manifest, config or descriptor that does not follow its format."""


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    #: Docker-only CPU features; OCI has no field for them.
    features: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> "Platform":
        if not isinstance(data, dict):
            raise FormatError("platform must be an object")
        arch, os_ = data.get("architecture"), data.get("os")
        if not isinstance(arch, str) or not isinstance(os_, str):
            raise FormatError("platform needs string architecture and os")
        return cls(
            architecture=arch,
            os=os_,
            variant=data.get("variant") or None,
            os_version=data.get("os.version") or None,
            os_features=tuple(data.get("os.features") or ()),
            features=tuple(data.get("features") or ()),
        )

    def to_dict(self, *, docker: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        if docker and self.features:
            out["features"] = list(self.features)
        return out

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``os/arch[/variant]`` as given to ``--platform``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise FormatError(f"platform {text!r} is not OS/ARCH[/VARIANT]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def matches(self, wanted: "Platform") -> bool:
        """True when this platform satisfies ``wanted`` (a variant-less request takes any variant)."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        return wanted.variant is None or wanted.variant == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None
    artifact_type: str | None = None
    data: str | None = None

    @classmethod
    def from_dict(cls, data: Any, *, default_media_type: str | None = None) -> "Descriptor":
        if not isinstance(data, dict):
            raise FormatError("descriptor must be an object")
        media_type = data.get("mediaType", default_media_type)
        dgst = data.get("digest")
        size = data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise FormatError("descriptor has no mediaType")
        try:
            digestlib.validate(dgst)
        except digestlib.DigestError as exc:
            raise FormatError(str(exc)) from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"descriptor {dgst} has an invalid size {size!r}")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise FormatError(f"descriptor {dgst} has invalid annotations")
        platform = data.get("platform")
        return cls(
            media_type=media_type,
            digest=dgst,
            size=size,
            urls=tuple(data.get("urls") or ()),
            annotations=tuple(annotations.items()),
            platform=Platform.from_dict(platform) if platform is not None else None,
            artifact_type=data.get("artifactType"),
            data=data.get("data"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The OCI descriptor in image-spec's Go field order, annotations sorted as Go emits a map.

        Documents we generate must have the bytes containers/image writes for the same
        content: their digest is their identity.
        """
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations))
        if self.data is not None:
            out["data"] = self.data
        if self.platform is not None:
            out["platform"] = self.platform.to_dict(docker=False)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def to_docker_dict(self) -> dict[str, Any]:
        """The Docker schema2 descriptor in its Go field order; schema2 has no place for the OCI extras."""
        out: dict[str, Any] = {"mediaType": self.media_type, "size": self.size, "digest": self.digest}
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def with_annotations(self, annotations: dict[str, str]) -> "Descriptor":
        return Descriptor(
            self.media_type, self.digest, self.size, self.urls, tuple(annotations.items()),
            self.platform, self.artifact_type, self.data,
        )
