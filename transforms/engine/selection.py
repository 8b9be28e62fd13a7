"""Which listed images a sync keeps: regular expressions, tag lists, semver ranges, the newest N.

Pure and Beam-free, so the launcher's preflight, the pipeline's listing step and
``verify`` keep exactly the same images. Versions are read from tags the way registry
mirroring tools read them: a ``v`` prefix is ignored and missing parts are zero
(``v1.2`` is 1.2.0); tags that are not versions (``latest``, ``dev``, ``1.2.3.4``) never
match a range and never count among the newest. Ranges use the constraint syntax of
regsync (Go's Masterminds/semver): ``>=1.2, <2``, ``~1.2``, ``^1.2``, ``1.x``, ``a || b``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import semantic_version

from imagepush.transforms.stores.base import ImageEntry

#: A version as tags spell it: optional ``v``, one to three numbers, optional pre-release.
#: Tags cannot hold a ``+``, so build metadata never appears.
_VERSION_TAG = re.compile(r"^[vV]?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?(?:\.(0|[1-9][0-9]*))?(?:-([0-9A-Za-z.-]+))?$")
#: An operator followed by blanks: Masterminds accepts ``>= 1.2``, npm ranges do not.
_SPACED_OPERATOR = re.compile(r"(<=|>=|<|>|=|~|\^)\s+")


class SelectionError(ValueError):
    """A selection the user wrote cannot be understood (a config error, found at load)."""


def tag_version(tag: str | None) -> semantic_version.Version | None:
    """The version a tag names, or None for a tag that is no version."""
    match = _VERSION_TAG.match(tag or "")
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    try:
        return semantic_version.Version(
            major=int(major), minor=int(minor or 0), patch=int(patch or 0),
            prerelease=tuple(pre.split(".")) if pre else (), build=(),
        )
    except ValueError:  # a pre-release part that semver refuses (empty, a leading zero)
        return None


@functools.lru_cache(maxsize=64)  # a pure function of the text: every entry of a listing asks it again
def parse_range(text: str) -> semantic_version.NpmSpec:
    """A version range in regsync's syntax, as the npm range it is equivalent to.

    Masterminds separates the parts of one range by commas or blanks and lets an
    operator stand apart from its version; npm wants blanks and no gap, so only those
    two spellings are translated and everything else is the library's to judge.
    """
    normalized = " ".join(_SPACED_OPERATOR.sub(r"\1", text.replace(",", " ")).split())
    if not normalized:
        raise SelectionError("an empty version range")
    try:
        return semantic_version.NpmSpec(normalized)
    except ValueError:
        raise SelectionError(f"{text!r} is not a version range (e.g. '>=1.2, <2', '~1.2', '^1.2')") from None


@dataclass(frozen=True)
class TagSelection:
    """A sync's filters; every one given must keep an image, and ``latest`` is applied last.

    ``include``/``exclude`` are regular expressions over ``repository:tag`` (the tag alone
    for an image without a repository). ``tags`` and ``semver`` look at the tag only, so
    an image without a tag is dropped by either. ``latest`` keeps, per repository, the N
    tags with the highest versions among those the other filters kept; pre-releases
    count only when a ``semver`` range admitted them.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    semver: str | None = None
    latest: int | None = None

    def __post_init__(self) -> None:
        if self.semver is not None:
            parse_range(self.semver)
        if self.latest is not None and self.latest < 1:
            raise SelectionError("'latest' keeps at least one tag")

    @property
    def per_repository(self) -> bool:
        """Whether a decision needs every tag of a repository (``latest``), not just one entry."""
        return self.latest is not None

    def wants(self, entry: ImageEntry) -> bool:
        """Whether one entry passes every filter that looks at it alone."""
        name = f"{entry.repository}:{entry.tag or ''}" if entry.repository else (entry.tag or entry.ref)
        if self.include and not any(re.search(p, name) for p in self.include):
            return False
        if any(re.search(p, name) for p in self.exclude):
            return False
        if self.tags and entry.tag not in self.tags:
            return False
        if self.semver is not None:
            version = tag_version(entry.tag)
            if version is None or version not in parse_range(self.semver):
                return False
        return True

    def newest(self, entries: Iterable[ImageEntry]) -> list[ImageEntry]:
        """Of one repository's entries (already filtered), the ``latest`` highest versions, in listing order."""
        entries = list(entries)
        if self.latest is None:
            return entries
        ranked = []
        for position, entry in enumerate(entries):
            version = tag_version(entry.tag)
            if version is None or (version.prerelease and self.semver is None):
                continue
            # Equal versions (``1.2`` and ``v1.2.0``) are ordered by tag text, so the choice never depends on listing order.
            ranked.append((version, entry.tag or "", position))
        ranked.sort(reverse=True)
        kept = sorted(position for _, _, position in ranked[: self.latest])
        return [entries[position] for position in kept]

    def select(self, entries: Iterable[ImageEntry], grouped: bool) -> Iterator[ImageEntry]:
        """The entries this selection keeps, lazily where it can be.

        ``grouped``: the listing gives each repository's tags one after another (a
        registry's catalog does), so ``latest`` can decide a repository as soon as the
        next begins. Otherwise the whole listing is read first (file stores, whose
        listings are one index held in memory anyway).
        """
        wanted = (entry for entry in entries if self.wants(entry))
        if not self.per_repository:
            yield from wanted
            return
        if grouped:
            for _, group in itertools.groupby(wanted, key=lambda entry: entry.repository):
                yield from self.newest(group)
            return
        by_repository: dict[str, list[ImageEntry]] = {}
        for entry in wanted:
            by_repository.setdefault(entry.repository, []).append(entry)
        kept = {id(entry) for group in by_repository.values() for entry in self.newest(group)}
        yield from (entry for group in by_repository.values() for entry in group if id(entry) in kept)
