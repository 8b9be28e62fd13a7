"""The one backoff rule: how long to wait before trying again.

Used by the registry transport between attempts of a request and by the engine between
restarts of an interrupted upload, so both wait alike. Imports nothing of the project.
"""

from __future__ import annotations

import random

#: First wait, doubled per attempt.
BASE = 0.5
#: Longest wait the doubling reaches.
MAXIMUM = 16.0


def backoff_delay(
    attempt: int,
    rng: random.Random,
    *,
    base: float = BASE,
    maximum: float = MAXIMUM,
    at_least: float | None = None,
    cap: float | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, jittered, at least ``at_least``.

    Jitter (a factor between 0.5 and 1) spreads the retries of parallel workers; a
    server's ``Retry-After`` (``at_least``) wins over the jittered value; ``cap`` bounds the
    exponential part (what is left of an outage's grace, say).
    """
    delay = min(maximum, base * (2 ** (attempt - 1)))
    if cap is not None:
        delay = min(delay, max(cap, 0.05))
    delay *= 0.5 + rng.random() / 2
    if at_least is not None:
        delay = max(delay, at_least)
    return delay
