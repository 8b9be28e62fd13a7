"""Which delivery serves each blob an image needs, when images claim blobs one by one in listing order.

The direct executor (``engine/direct.py``) decides image by image, where the Beam graph
sees every request for a blob at once. Its rule has to be modelled by ``plan`` too, or
the plan of a default run would count uploads and mounts the run does not make; so the
rule is here, once, without I/O, and both walk images through one :class:`ClaimLedger`:

- the stores of one blob that no earlier image claimed share one new delivery (one
  read of the source): ``fresh``;
- a store an earlier image claimed waits for that delivery: ``joined``;
- a store of a blob-sharing domain that an earlier image sent the blob to waits for
  that store's delivery and then takes the blob from it (a registry mount): ``after``.
  Its peers are the stores of its domain claimed before it, in claim order: when the
  first one's delivery failed (a repository that refuses pushes), the blob is taken
  from the next that got it, as the Beam graph's one delivery would mount it from the
  store it uploaded to, rather than uploaded again at every later store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from imagepush.transforms.engine.deliver import Stores
from imagepush.transforms.engine.jobs import BlobRequest
from imagepush.transforms.engine.steps import blob_groups, blob_key


#: Earlier stores of a domain a store may take a blob from. Past this many failures in a
#: row the domain most likely refuses the blob everywhere; and each later store of a
#: blob thousands of repositories share waits on a few deliveries, not on all of them.
PEERS = 8


@dataclass
class BlobClaim:
    """One image's share of one source blob: which delivery serves each store it needs the blob at."""

    key: str
    #: Stores nothing claimed before: one new delivery for all of them (store -> requests).
    fresh: dict[str, list[BlobRequest]] = field(default_factory=dict)
    #: Stores an earlier image's delivery serves (store -> requests).
    joined: dict[str, list[BlobRequest]] = field(default_factory=dict)
    #: Stores delivered after earlier stores of their blob domain, from the first of
    #: those whose delivery did not fail: (store, those peers in claim order, requests).
    after: list[tuple[str, tuple[str, ...], list[BlobRequest]]] = field(default_factory=list)

    @property
    def fresh_requests(self) -> list[BlobRequest]:
        return [r for requests in self.fresh.values() for r in requests]


@dataclass
class ClaimLedger:
    """The blobs claimed so far in a run: claims are made in listing order, one image at a time.

    Not locked: the caller makes claims in turn (the direct executor under its lock).
    ``domain_of``: a destination store's blob-sharing domain, None when it shares with
    nothing (or cannot be opened: its targets fail in planning).
    """

    domain_of: Callable[[str], str | None]
    #: (blob key, store) pairs some image claimed.
    _claimed: set[tuple[str, str]] = field(default_factory=set)
    #: (blob key, blob-sharing domain) -> the stores of that domain the blob was claimed at, in order.
    _domain_stores: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def claim(self, requests: Iterable[BlobRequest]) -> list[BlobClaim]:
        """One image's blob requests -> a claim per source blob (by :func:`blob_key`), the largest blobs first."""
        claims = []
        for group in blob_groups((blob_key(r), r) for r in requests):
            by_store: dict[str, list[BlobRequest]] = {}
            for request in group:
                by_store.setdefault(request.dest_store, []).append(request)
            claims.append(self._claim_blob(blob_key(group[0]), by_store))
        return claims

    def _claim_blob(self, key: str, by_store: dict[str, list[BlobRequest]]) -> BlobClaim:
        claim = BlobClaim(key)
        for store, requests in sorted(by_store.items()):
            if (key, store) in self._claimed:
                claim.joined[store] = requests
                continue
            self._claimed.add((key, store))
            domain = self.domain_of(store)
            peers = self._domain_stores.setdefault((key, domain), []) if domain is not None else []
            if peers and peers[0] not in claim.fresh:  # an earlier image's: this one takes the blob from it
                claim.after.append((store, tuple(peers[:PEERS]), requests))
            else:  # the first delivery of its domain, or part of this image's own delivery there
                claim.fresh[store] = requests
            if len(peers) < PEERS:
                peers.append(store)
        return claim


def domain_of(stores: Stores) -> Callable[[str], str | None]:
    """A ledger's ``domain_of`` over opened stores: a store that cannot be opened shares with nothing.

    Its targets failed in planning already, so no delivery there is started.
    """
    def domain(store: str) -> str | None:
        try:
            return stores.destination(store).blob_domain
        except Exception:
            return None
    return domain
