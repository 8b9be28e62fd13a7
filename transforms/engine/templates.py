"""The name a sync gives each listed image below its destinations, from a template.

One syntax, checked when the run is loaded so a typo fails before anything is listed:

``{registry}``      the source registry's host, without a port (``quay.io``)
``{repository}``    the image's full repository path in the source (``team/tools/app``)
``{repository:N}``  the same without its first N segments (``{repository:1}`` is ``tools/app``)
``{name}``          the last segment of the repository (``app``)
``{tag}``           the image's tag

The rendered text is ``PATH[:TAG]``: written below each destination prefix, with the
tag given, or the image's own tag when there is no ``:TAG``. ``{{`` and ``}}`` are
literal braces (Python's format syntax, whose parser this uses).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from imagepush.transforms.stores.refs import REPOSITORY_RE, TAG_RE, ReferenceError, split_repo_tag

PLACEHOLDERS = ("registry", "repository", "name", "tag")


class TemplateError(ValueError):
    """A template the user wrote cannot be used (a config error, found at load)."""


@dataclass(frozen=True)
class _Field:
    name: str
    #: Leading repository segments to drop (``{repository:N}`` only).
    drop: int = 0


def _parse(text: str) -> tuple[tuple[str, _Field | None], ...]:
    """The template as (literal, placeholder) pairs; every mistake is a :class:`TemplateError`."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{text!r}: {exc} (write {{{{ or }}}} for a literal brace)") from None
    parsed: list[tuple[str, _Field | None]] = []
    for literal, name, spec, conversion in parts:
        if name is None:
            parsed.append((literal, None))
            continue
        if name not in PLACEHOLDERS:
            raise TemplateError(
                f"{text!r}: unknown placeholder {{{name}}} (use {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
        if conversion is not None:
            raise TemplateError(f"{text!r}: {{{name}!{conversion}}}: placeholders take no conversion")
        drop = 0
        if spec:
            if name != "repository" or not spec.isdigit():
                raise TemplateError(f"{text!r}: {{{name}:{spec}}}: only {{repository:N}} takes a number")
            drop = int(spec)
        parsed.append((literal, _Field(name, drop)))
    return tuple(parsed)


@dataclass(frozen=True)
class NameTemplate:
    """A parsed template; :meth:`render` maps one listed image."""

    text: str

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise TemplateError("an empty template")
        _parse(self.text)

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(field.name for _, field in _parse(self.text) if field is not None)

    def render(self, registry: str, repository: str, tag: str | None) -> tuple[str, str | None]:
        """The repository path and tag an image gets; a :class:`ReferenceError` when they are not valid names."""
        segments = [s for s in repository.split("/") if s]
        values = {"registry": registry.partition(":")[0],
                  "name": segments[-1] if segments else "", "tag": tag or ""}
        out = []
        for literal, field in _parse(self.text):
            out.append(literal)
            if field is None:
                continue
            if field.name == "repository":
                if field.drop >= len(segments):
                    raise ReferenceError(
                        f"{self.text!r}: {repository or '(no repository)'} has no segments left "
                        f"after dropping {field.drop}"
                    )
                out.append("/".join(segments[field.drop:]))
            else:
                out.append(values[field.name])
        rendered = "".join(out)
        path, new_tag = split_repo_tag(rendered)
        path = path.strip("/")
        if not REPOSITORY_RE.match(path):
            raise ReferenceError(f"{self.text!r} gives {rendered!r}: {path!r} is not a valid repository name")
        if new_tag is not None and not TAG_RE.match(new_tag):
            raise ReferenceError(f"{self.text!r} gives {rendered!r}: {new_tag!r} is not a valid tag")
        return path, new_tag or tag
