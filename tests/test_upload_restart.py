"""Interrupted uploads start again from a fresh read, for the interrupted stores only, within their budget."""

from __future__ import annotations

import contextlib
import io
from typing import BinaryIO, Iterator, Sequence

from imagepush.transforms.engine.deliver import BlobDelivery
from imagepush.transforms.engine.jobs import COPIED, FAILED, BlobRequest
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats.descriptor import Descriptor
from imagepush.transforms.stores.base import BlobSink, Destination, Source, StoreError, UploadInterrupted
from imagepush.transforms.stores.registry.errors import RegistryError, RegistryUnavailable, RetriableUploadError
from imagepush.transforms.stores.registry.upload import as_restartable

DATA = b"layer bytes " * 5000
DESCRIPTOR = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digestlib.of_bytes(DATA), len(DATA))


class CountingSource(Source):
    def __init__(self) -> None:
        self.opened = 0

    def list_images(self, *, details: bool = True):  # pragma: no cover - not used here
        return iter(())

    def get_root(self, ref):  # pragma: no cover
        raise NotImplementedError

    def get_manifest(self, digest):  # pragma: no cover
        raise NotImplementedError

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        self.opened += 1
        yield io.BytesIO(DATA)


class Sink(BlobSink):
    def __init__(self, store: "FlakyDestination") -> None:
        self.store, self.data = store, bytearray()

    def write(self, chunk: bytes) -> None:
        if self.store.failures:
            self.store.failures -= 1
            raise self.store.error
        self.data += chunk

    def commit(self) -> None:
        self.store.blobs[DESCRIPTOR.digest] = bytes(self.data)

    def abort(self) -> None:
        self.store.aborted += 1


class FlakyDestination(Destination):
    """Fails the first ``failures`` writes with ``error``; allows ``upload_restarts`` restarts."""

    def __init__(self, failures: int, restarts: int, error: Exception) -> None:
        self.failures, self.upload_restarts, self.error = failures, restarts, error
        self.blobs: dict[str, bytes] = {}
        self.aborted = 0

    def accepts_manifest(self, media_type: str) -> bool:
        return True

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    def blob_sink(self, descriptor: Descriptor) -> BlobSink:
        return Sink(self)

    def put_manifest(self, manifest, *, root: bool = False) -> None:  # pragma: no cover
        raise NotImplementedError

    def publish(self, publications):  # pragma: no cover
        raise NotImplementedError

    def current_digest(self, name: str):  # pragma: no cover
        return None

    def mount_blob(self, descriptor: Descriptor, known_at: Sequence[str]) -> bool:
        return False


class Stores:
    def __init__(self, source: CountingSource, destinations: dict[str, Destination]) -> None:
        self._source, self._destinations = source, destinations

    def source(self, store: str) -> Source:
        return self._source

    def destination(self, store: str) -> Destination:
        return self._destinations[store]


def deliver(destinations: dict[str, Destination]) -> tuple[CountingSource, dict[str, object], list[float]]:
    source, waits = CountingSource(), []
    delivery = BlobDelivery(Stores(source, destinations), sleep=waits.append)
    requests = [BlobRequest("src", store, f"key-{store}", DESCRIPTOR, False) for store in destinations]
    return source, {r.dest_store: r for _, r in delivery.deliver(requests)}, waits


def test_an_interrupted_upload_starts_again_for_that_store_only():
    flaky = FlakyDestination(2, 4, RetriableUploadError("reset mid-body", delay=3.0))
    healthy = FlakyDestination(0, 4, RuntimeError("never"))
    source, results, waits = deliver({"a": flaky, "b": healthy})
    assert source.opened == 3  # one read for both, then one per restart of "a" alone
    assert flaky.blobs[DESCRIPTOR.digest] == DATA and healthy.blobs[DESCRIPTOR.digest] == DATA
    assert results["a"].status == COPIED and results["b"].status == COPIED
    assert sum(r.retries for r in results.values()) == 2
    assert len(waits) == 2 and all(w >= 3.0 for w in waits)  # Retry-After honoured


def test_restarts_stop_at_the_budget_and_the_failure_is_reported():
    flaky = FlakyDestination(10, 2, RetriableUploadError("HTTP 503"))
    source, results, _ = deliver({"a": flaky})
    assert source.opened == 3
    assert results["a"].status == FAILED and "HTTP 503" in results["a"].error
    assert results["a"].retries == 2


def test_a_refusal_is_not_restarted():
    flaky = FlakyDestination(1, 4, StoreError("refused for good"))
    source, results, _ = deliver({"a": flaky})
    assert source.opened == 1 and results["a"].status == FAILED and results["a"].retries == 0


def test_which_registry_failures_a_fresh_upload_can_fix():
    def restartable(exc: Exception) -> bool:
        return isinstance(as_restartable(exc), UploadInterrupted)

    assert restartable(RegistryError("reset", status=None))
    assert restartable(RegistryError("busy", status=429))
    assert restartable(RegistryError("failing", status=502))
    assert restartable(RegistryError("session gone", status=404, code="BLOB_UPLOAD_UNKNOWN"))
    assert restartable(RegistryError("half-written", status=400, code="BLOB_UPLOAD_INVALID"))
    assert not restartable(RegistryError("wrong bytes", status=400, code="DIGEST_INVALID"))
    assert not restartable(RegistryError("denied", status=403, code="DENIED"))
    assert not restartable(RegistryUnavailable("down through every retry"))
