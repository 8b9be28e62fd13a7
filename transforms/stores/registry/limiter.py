"""How many requests one registry host gets at once, and how often.

A registry that rate-limits answers 429 (or 503) once it is asked too much; a fixed
number of requests in flight either leaves it idle or keeps hitting that limit, each
hit costing a backoff. :class:`RequestLimiter` finds the level by itself, as TCP does
(additive increase, multiplicative decrease):

* It starts at a quarter of the ceiling (``--registry-concurrency``, at least 1) and
  grows by one after about ``limit`` successful requests, up to the ceiling.
* A 429 or 503 halves the limit (not below 1), at most once per *window*: an overload
  answer to a request sent before the last decrease does not decrease again, so one
  burst of 429s to the requests already in flight halves the limit once, not down to 1.
* ``Retry-After`` pauses the whole host: until it ends, new requests wait, not only the
  one that was refused (which waits it out in its own backoff, see ``Transport.send``).
* An optional rate (``--registry-rps``) spaces requests at least ``1/rate`` seconds
  apart: a token bucket holding one token, so no burst goes over a per-second limit.

A streamed response keeps its slot until it is closed. A thread that already holds a
slot of this host (reading a blob while uploading it to the same registry) is never
made to wait for another, since it could be waiting for itself; the ceiling is exceeded
only by such nested requests. With ``adaptive=False`` the limit stays at the ceiling
(the fixed limit of earlier versions); ``Retry-After`` and the rate still apply.

Beam-free and stateless at module level: each transport owns one limiter.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from imagepush.transforms.pacing import RateBucket

log = logging.getLogger(__name__)

__all__ = ["Level", "RateBucket", "RequestLimiter", "Slot"]

#: Overload statuses: the registry asks to be asked less.
OVERLOAD_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Level:
    """Where a limiter stands: requests allowed at once now, and the most it may allow."""

    limit: int
    ceiling: int


class Slot:
    """One request's place under the limit, released exactly once by whichever thread ends it."""

    def __init__(self, limiter: "RequestLimiter", owner: int) -> None:
        self._limiter = limiter
        self.owner = owner
        #: The limiter's decrease count when the request was sent: its window.
        self.window = 0
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._limiter._release(self)


class RequestLimiter:
    """Requests to one registry host from one worker process: how many at once, and when.

    Thread-safe (one :class:`threading.Condition`). ``clock`` and ``sleep`` time the
    ``Retry-After`` pause and the rate, so tests can check them without waiting.
    """

    def __init__(
        self,
        name: str,
        ceiling: int,
        *,
        adaptive: bool = True,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.ceiling = max(1, int(ceiling))
        self.adaptive = adaptive
        self._limit = max(1, self.ceiling // 4) if adaptive else self.ceiling
        self._clock = clock
        self._sleep = sleep
        self._bucket = RateBucket(rate, clock=clock, sleep=sleep) if rate is not None else None
        self._cond = threading.Condition()
        self._in_flight = 0
        #: Slots held per thread: a thread holding one never waits for another.
        self._held: dict[int, int] = {}
        #: Decreases so far; a slot remembers the value it was sent under.
        self._window = 0
        self._successes = 0
        #: Until when (``clock``) the host asked not to be asked (``Retry-After``).
        self._paused_until: float | None = None
        #: Threads that wait the current pause out in their own backoff (they were refused).
        self._waiting_elsewhere: set[int] = set()
        #: Overload answers seen (429/503), for the curious and for tests.
        self.overloads = 0

    @property
    def level(self) -> Level:
        """The current limit and the ceiling (a plain read: progress lines ask often)."""
        return Level(self._limit, self.ceiling)

    def acquire(self) -> Slot:
        """Wait for a slot, for any ``Retry-After`` pause, and for the rate; the caller releases the slot."""
        me = threading.get_ident()
        with self._cond:
            while self._held.get(me, 0) == 0 and self._in_flight >= self._limit:
                self._cond.wait()
            self._in_flight += 1
            self._held[me] = self._held.get(me, 0) + 1
        slot = Slot(self, me)
        try:
            self._wait_out_pause(me)
            if self._bucket is not None:
                self._bucket.take()
        except BaseException:
            slot.release()
            raise
        with self._cond:
            slot.window = self._window
        return slot

    def overloaded(self, slot: Slot, retry_after: float | None = None) -> None:
        """The request of ``slot`` was answered 429 or 503 (with ``Retry-After`` seconds, if given)."""
        with self._cond:
            self.overloads += 1
            if retry_after is not None and retry_after > 0:
                until = self._clock() + retry_after
                if self._paused_until is None or until > self._paused_until:
                    self._paused_until = until
                    self._waiting_elsewhere = set()
                self._waiting_elsewhere.add(slot.owner)
            if not self.adaptive or slot.window != self._window:
                return  # a fixed limit, or an answer to a request sent before the last decrease
            self._window += 1
            self._successes = 0
            before, self._limit = self._limit, max(1, self._limit // 2)
            now = self._limit
        if now != before:
            log.info("%s is overloaded: now %d requests at once (of %d)", self.name, now, self.ceiling)

    def succeeded(self, slot: Slot) -> None:
        """The request of ``slot`` was answered without overload: after ``limit`` of them, one more may go."""
        if not self.adaptive:
            return
        with self._cond:
            if slot.window != self._window or self._limit >= self.ceiling:
                return
            self._successes += 1
            if self._successes < self._limit:
                return
            self._successes = 0
            self._limit += 1
            now = self._limit
            self._cond.notify()
        log.debug("%s: now %d requests at once (of %d)", self.name, now, self.ceiling)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            self._in_flight -= 1
            left = self._held.get(slot.owner, 0) - 1
            if left > 0:
                self._held[slot.owner] = left
            else:
                self._held.pop(slot.owner, None)
            self._cond.notify()

    def _wait_out_pause(self, me: int) -> None:
        """Sleep while a ``Retry-After`` pause is in force; again only if it was extended meanwhile.

        A thread that was refused waits the pause out in its backoff before asking
        again, so its next request skips it once rather than waiting twice.
        """
        waited_for: float | None = None
        while True:
            with self._cond:
                until = self._paused_until
                if until is None or until == waited_for:
                    return
                if me in self._waiting_elsewhere:
                    self._waiting_elsewhere.discard(me)
                    return
                remaining = until - self._clock()
            if remaining <= 0:
                return
            self._sleep(remaining)
            waited_for = until
