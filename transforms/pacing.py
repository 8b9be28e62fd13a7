"""Spacing work out in time: at most ``rate`` units per second, without bursts.

Used for a registry host's requests per second (``--registry-rps``) and for the bytes
a worker sends to one destination (``--max-bandwidth``). Imports nothing of the
project, so every layer may use it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class RateBucket:
    """At most ``rate`` units per second: each ``take(n)`` reserves ``n / rate`` seconds.

    Each caller reserves the next free instant under the lock and sleeps outside it, so
    waiting callers are served in order without holding one another up. Nothing is
    saved up while idle (a bucket of one), so no burst goes over a per-second limit; an
    amount larger than a second's worth simply reserves more than a second.
    """

    def __init__(
        self, rate: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be above 0, not {rate}")
        self.rate = rate
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._lock = threading.Lock()

    def take(self, amount: float = 1.0) -> None:
        """Return when ``amount`` units may go."""
        with self._lock:
            now = self._clock()
            start = now if self._next is None else max(now, self._next)
            self._next = start + amount * self.interval
        if start > now:
            self._sleep(start - now)
