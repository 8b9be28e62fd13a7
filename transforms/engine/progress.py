"""Progress as events: what the steps report while a run goes on, and the side channel that carries it.

The launcher shows progress, but the work happens in the steps: in its own threads
(the direct executor), in Beam's bundle threads, in ``multi_processing`` worker
processes or on Dask workers. Beam metrics reach the launcher only when the pipeline
is done (and the Dask runner has none), so the steps report to a
:class:`ProgressReporter` they are given: the launcher's display itself in the direct
executor, an :class:`EventWriter` elsewhere, which appends events as JSON lines to a
file of its own in a run-scoped folder the launcher tails (:class:`EventTail`).

Events hold counters and the outcome of each image (its names and status), never a
credential or an error message. Every field is a count to add, so events from any
number of writers sum up in any order.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Protocol

import orjson

from imagepush.transforms.engine.jobs import COPIED, FAILED, BlobRequest, BlobResult
from imagepush.transforms.records import AuditRow

#: The suffix of an event file in a progress folder.
EVENTS_SUFFIX = ".events.jsonl"


@dataclass(frozen=True)
class Outcome:
    """One image at one destination, as publishing it ended."""

    source: str
    destination: str
    store: str
    status: str


@dataclass
class ProgressEvent:
    """Counts to add to a run's progress (every field 0 or empty unless reported)."""

    #: Images known to the run (given, or listed by a sync on a worker), and sync listings finished.
    images_known: int = 0
    listings_done: int = 0
    #: Images whose manifests were read and planned (records rows are known only then).
    images_planned: int = 0
    #: Blobs a copy step is about to deliver, and their bytes (one per source blob).
    blobs_planned: int = 0
    bytes_planned: int = 0
    #: Source blobs delivered (copied, found present, mounted, or failed) and their bytes.
    blobs_done: int = 0
    bytes_done: int = 0
    #: Of those, blob writes that moved bytes, the bytes moved, and the blobs that failed.
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_failed: int = 0
    #: Images (at one destination) whose blobs are all delivered and manifests written.
    images_blobs_done: int = 0
    #: Images published, one each.
    outcomes: list[Outcome] = field(default_factory=list)
    #: Per registry host, its request limit as ``(now, at most)`` where it changed: the latest wins.
    registry_levels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v}
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, line: bytes) -> "ProgressEvent":
        data = orjson.loads(line)
        data["outcomes"] = [Outcome(**o) for o in data.get("outcomes", ())]
        data["registry_levels"] = {h: tuple(v) for h, v in data.get("registry_levels", {}).items()}
        return cls(**data)


class ProgressReporter(Protocol):
    """Where a step's progress goes; ``report`` may be called from any thread."""

    def report(self, event: ProgressEvent) -> None: ...


class NoProgress:
    """Progress nobody watches (``-q``, a remote runner, a test)."""

    def report(self, event: ProgressEvent) -> None:
        pass


NO_PROGRESS = NoProgress()


def blobs_planned(groups: list[list[BlobRequest]]) -> ProgressEvent:
    """The blob groups (requests of one source blob each) a copy step is about to deliver."""
    return ProgressEvent(blobs_planned=len(groups), bytes_planned=sum(g[0].descriptor.size for g in groups if g))


def blob_delivered(results: Iterable[BlobResult]) -> ProgressEvent:
    """One source blob delivered to every destination that wanted it."""
    results = list(results)
    copied = [r for r in results if r.status == COPIED]
    size = max((r.size for r in results), default=0)
    return ProgressEvent(
        blobs_done=1, bytes_done=size, blobs_copied=len(copied), bytes_copied=sum(r.bytes_copied for r in copied),
        blobs_failed=sum(1 for r in results if r.status == FAILED),
    )


def published(store: str, rows: Iterable[AuditRow]) -> ProgressEvent:
    """The images of one store published (an index's children are part of their image)."""
    return ProgressEvent(outcomes=[
        Outcome(row.source, row.destination, store, row.status)
        for row in rows if row.role != "child"
    ])


class EventWriter:
    """Appends events to a file of its own in ``folder``: one write per event, flushed at once.

    Each writer (one per DoFn instance) has its own file, so no two processes append to
    one file; the launcher reads whole lines only.
    """

    def __init__(self, folder: str) -> None:
        self._path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex[:12]}{EVENTS_SUFFIX}")
        self._lock = threading.Lock()
        self._file = None

    def report(self, event: ProgressEvent) -> None:
        line = event.to_json() + b"\n"
        with self._lock:
            if self._file is None:
                self._file = open(self._path, "ab", buffering=0)
            self._file.write(line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class EventTail:
    """Reads the events appended to a progress folder since the last call, whole lines only."""

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._offsets: dict[str, int] = {}

    def read(self) -> list[ProgressEvent]:
        events: list[ProgressEvent] = []
        try:
            names = sorted(n for n in os.listdir(self._folder) if n.endswith(EVENTS_SUFFIX))
        except FileNotFoundError:
            return events
        for name in names:
            path = os.path.join(self._folder, name)
            with open(path, "rb") as f:
                f.seek(self._offsets.get(name, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[name] = self._offsets.get(name, 0) + end
            events.extend(ProgressEvent.from_json(line) for line in data[:end].splitlines() if line)
        return events
