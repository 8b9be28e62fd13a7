"""The blob writes this process has open, so that a process told to stop can end them cleanly.

A sink that holds something outside the process (a registry upload session, a
temporary file, an S3 multipart upload) registers here while it does. When the
command line is told to stop (SIGTERM, Ctrl-C), :meth:`OpenSinks.stop` refuses every
new session or temporary file (:class:`Stopped`), gives the writes in flight a moment
to finish (a finished blob is kept, and leaves nothing behind), then aborts the rest.
Signals reach a whole process, so this is the one process-wide record: the stores are
per worker process anyway (``StoreCache``), and the record holds only what is in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from imagepush.transforms.stores.base import StoreError

log = logging.getLogger(__name__)


class Stopped(StoreError):
    """The process is stopping: no upload session or temporary file may be started."""


class Abortable(Protocol):
    def abort(self) -> None: ...


class OpenSinks:
    """Sinks that hold something to undo, and whether the process is stopping."""

    def __init__(self) -> None:
        # Re-entrant: the signal handler runs in the main thread, maybe between the
        # bytecodes of a ``with self._lock`` block of that same thread.
        self._lock = threading.RLock()
        self._sinks: set[Abortable] = set()
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def opened(self, sink: Abortable) -> None:
        """``sink`` now holds something to undo; refused (:class:`Stopped`) once stopping."""
        with self._lock:
            if self._stopping.is_set():
                raise Stopped("imagepush is stopping")
            self._sinks.add(sink)

    def closed(self, sink: Abortable) -> None:
        """``sink`` was committed or aborted: nothing left to undo."""
        with self._lock:
            self._sinks.discard(sink)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sinks)

    def stop(self, grace: float) -> tuple[int, int]:
        """Refuse new writes, let the ones in flight finish, abort the rest; (in flight, left open).

        The first half of ``grace`` seconds lets writes in flight finish: a blob that
        finishes is committed, which leaves nothing behind and spares the rerun its copy,
        while one cut in the middle of a request body may leave a registry session that
        the registry refuses to cancel (Distribution 2.8 does). The sinks still open are
        then aborted at once, each from a thread of its own rather than by its writer,
        which may be blocked reading a slow source; the second half bounds that.
        """
        self._stopping.set()
        in_flight = len(self)
        now = time.monotonic()
        drain_until, deadline = now + grace / 2, now + grace
        while len(self) and time.monotonic() < drain_until:
            time.sleep(0.05)
        with self._lock:
            sinks = list(self._sinks)
        threads = [threading.Thread(target=_abort, args=(sink,), daemon=True, name="imagepush-abort")
                   for sink in sinks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return in_flight, len(self)


def _abort(sink: Abortable) -> None:
    try:
        sink.abort()
    except Exception:  # cleanup is best effort
        log.debug("abort of %r failed while stopping", sink, exc_info=True)


#: This process's open sinks (see the module docstring for why there is one).
OPEN_SINKS = OpenSinks()
