"""What a run shows while it goes: a live display on a terminal, a plain line every few seconds elsewhere.

The figures come from progress events (transforms/engine/progress.py): reported
directly by the direct executor, or tailed from the run's progress folder where Beam's
workers append them. Each image's outcome is printed as its store publishes it
(``imagepush: SRC -> DST: copied``); a failure is the summary's to report, so it is
printed here only with ``-v``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, TextIO

from imagepush.transforms.engine.progress import EventTail, Outcome, ProgressEvent
from imagepush.transforms.records import CURRENT, FAILED

#: Seconds between two plain progress lines off a terminal (``--progress-interval``).
DEFAULT_INTERVAL = 5.0
#: Seconds between two redraws of the terminal display (and reads of the progress folder).
TICK = 0.25


@dataclass
class Tally:
    """The sum of a run's progress events, and what the display derives from it."""

    total: int = 0
    #: Sync listings left to the copy (the workers', or the direct executor's with ``--no-preflight``).
    listings: int = 0
    #: Whether records files are read by the workers: their images are known as each is planned.
    records: bool = False
    destinations: int = 1
    counts: ProgressEvent = field(default_factory=ProgressEvent)
    by_store: dict[str, collections.Counter[str]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    pairs: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_images: set[str] = field(default_factory=set)

    def add(self, event: ProgressEvent) -> None:
        c = self.counts
        for name in ("images_known", "listings_done", "images_planned", "blobs_planned", "bytes_planned", "blobs_done", "bytes_done", "blobs_copied",
                     "bytes_copied", "blobs_failed", "images_blobs_done"):
            setattr(c, name, getattr(c, name) + getattr(event, name))
        c.registry_levels.update(event.registry_levels)
        for o in event.outcomes:
            self.by_store[o.store][o.status] += 1
            self.pairs[o.source] += 1
            if o.status == FAILED:
                self.failed_images.add(o.source)

    @property
    def total_final(self) -> bool:
        """Whether every image of the run is known: all listings done and no records file read."""
        return not self.records and self.counts.listings_done >= self.listings

    @property
    def images(self) -> int:
        known = self.total + self.counts.images_known
        return known if self.total_final else max(known, self.counts.images_planned)

    @property
    def images_done(self) -> int:
        return sum(1 for n in self.pairs.values() if n >= self.destinations)

    def eta(self, elapsed: float) -> float | None:
        """Seconds left, from the bytes still to deliver at the rate blobs were delivered so far."""
        c = self.counts
        if not c.bytes_done or c.bytes_planned <= c.bytes_done or elapsed <= 0:
            return None
        return (c.bytes_planned - c.bytes_done) / (c.bytes_done / elapsed)

    def fields(self, elapsed: float) -> list[str]:
        """The figures of one progress line, in order."""
        c = self.counts
        total = f"{self.images}" if self.total_final else f"{self.images}+"
        images = f"{self.images_done}/{total} images done"
        if self.failed_images:
            images += f" ({len(self.failed_images)} failed)"
        eta = self.eta(elapsed)
        parts = [
            images,
            f"{c.images_blobs_done} with blobs done",
            f"blobs {c.blobs_done}/{c.blobs_planned}" + (f" ({c.blobs_failed} failed)" if c.blobs_failed else ""),
            f"{size(c.bytes_copied)} copied at {size(c.bytes_copied / elapsed if elapsed > 0 else 0)}/s",
            f"ETA {duration(eta)}" if eta is not None else "ETA -",
        ]
        for store in sorted(self.by_store):
            done = self.by_store[store]
            failed = f", {done[FAILED]} failed" if done[FAILED] else ""
            parts.append(f"{store}: {sum(done.values()) - done[FAILED]} done{failed}")
        for host, (limit, ceiling) in sorted(c.registry_levels.items()):
            if limit < ceiling:  # a registry that pushed back (429, 503) explains a slow copy
                parts.append(f"registry {host} at {limit}/{ceiling} requests")
        return parts


def size(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    scale = 0
    while n >= 1000 and scale < len(units) - 1:
        n /= 1000
        scale += 1
    return f"{n:.0f} B" if scale == 0 else f"{n:.1f} {units[scale]}"


def duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressDisplay:
    """Shows a run's progress on stderr until :meth:`close`: the reporter of the direct executor.

    ``folder``: a progress folder to tail (a Beam run on this machine), read on the
    display's own thread. ``terminal``: a live display (rich) rather than plain lines;
    by default when stderr is a terminal.
    """

    def __init__(self, tally: Tally, *, folder: str | None = None, interval: float = DEFAULT_INTERVAL,
                 terminal: bool | None = None, failures: bool = False) -> None:
        self.tally = tally
        self._tail = EventTail(folder) if folder else None
        self._interval = interval
        self._terminal = sys.stderr.isatty() if terminal is None else terminal
        self._failures = failures
        self._lock = threading.Lock()
        self._pending: list[ProgressEvent] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._last_line = self._started
        self._lines = 0
        self._live = None
        self._handlers: list[logging.StreamHandler] = []
        if self._terminal:
            from rich.console import Console
            from rich.live import Live

            # Log lines written while the display is drawn go above it, through rich's
            # proxy of sys.stderr, or the next redraw would overwrite them.
            before = sys.stderr
            self._handlers = [h for h in logging.getLogger().handlers
                              if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is before]
            self._live = Live(console=Console(stderr=True), auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=True)
            self._live.start()
            for h in self._handlers:
                h.setStream(sys.stderr)
        self._thread = threading.Thread(target=self._run, name="imagepush-progress", daemon=True)
        self._thread.start()

    def report(self, event: ProgressEvent) -> None:
        with self._lock:
            self._pending.append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._step(final=True)
        if self._live is not None:
            self._live.stop()
            for h in self._handlers:
                h.setStream(sys.stderr)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            self._step()

    def _step(self, final: bool = False) -> None:
        events = self._tail.read() if self._tail else []
        with self._lock:
            events, self._pending = self._pending + events, []
        for event in events:
            self.tally.add(event)
            for outcome in event.outcomes:
                self._outcome(outcome)
        now = time.monotonic()
        elapsed = now - self._started
        if self._live is not None:
            self._live.update(self._screen(elapsed), refresh=True)
        elif now - self._last_line >= self._interval or (final and self._lines):
            # A run shorter than the interval prints no line; a longer one ends on its final figures.
            self._last_line = now
            self._lines += 1
            print("imagepush: progress: " + "; ".join(self.tally.fields(elapsed)), file=sys.stderr, flush=True)

    def _outcome(self, o: Outcome) -> None:
        if o.status == FAILED and not self._failures:
            return
        line = f"imagepush: {o.source} -> {o.destination}: {o.status}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def _screen(self, elapsed: float):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        t = self.tally
        c = t.counts
        fields = t.fields(elapsed)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column(width=30)
        grid.add_column()
        total = t.images if t.total_final else None
        grid.add_row("images", ProgressBar(total=total or None, completed=t.images_done, width=30),
                     fields[0])
        grid.add_row("blobs", ProgressBar(total=c.bytes_planned or None, completed=c.bytes_done, width=30),
                     "; ".join(fields[1:5]))
        for line in fields[5:]:
            grid.add_row("", "", line)
        return grid


@contextlib.contextmanager
def progress_folder() -> Iterator[str]:
    """A run-scoped folder for the workers' progress events, removed when the run ends."""
    folder = tempfile.mkdtemp(prefix="imagepush-progress-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def workers_stderr_to(path: str) -> Iterator[None]:
    """Send what ``multi_processing`` workers write to stderr into ``path``; ours still goes to the user.

    Beam's worker processes inherit the launcher's stderr, and log their start-up (at
    info level, before any of our code runs in them) to it. Their stderr is file
    descriptor 2 as it is when they start, so for the run it is the log file, while
    this process writes to a duplicate of the user's stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    user = os.fdopen(saved, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                     errors="backslashreplace")
    old = sys.stderr
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old]
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = user
    for h in handlers:
        h.setStream(user)
    try:
        yield
    finally:
        user.flush()
        os.dup2(saved, 2)
        sys.stderr = old
        for h in handlers:
            h.setStream(old)
        user.close()


def summary_table(by_store: dict[str, collections.Counter[str]], nbytes: dict[str, int], out: TextIO) -> None:
    """The end-of-run table per destination on a terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    from imagepush.transforms.records import STATUSES

    statuses = [s for s in STATUSES if any(c[s] for c in by_store.values())]
    table = Table(title=None, show_edge=False)
    table.add_column("destination")
    for s in statuses:
        table.add_column(s, justify="right", style="red" if s == FAILED else "green" if s != CURRENT else None)
    table.add_column("bytes written", justify="right")
    for store in sorted(by_store):
        table.add_row(store, *(str(by_store[store][s]) for s in statuses), size(nbytes.get(store, 0)))
    Console(file=out).print(table)
