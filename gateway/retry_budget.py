"""How many retries the gateway may send: a share of recent requests (a retry budget).

Retrying every failure multiplies the load on a pool exactly when it is failing: with three
attempts per request, an outage triples the traffic. A budget, as Envoy's and gRPC's retry
throttling have it, allows retries only while they stay under `ratio` of the requests of the
last `window_s` seconds (plus `min_retries` per window, so a quiet gateway can still retry).
When engines fail a share of requests at random, the retries each failure needs fit in the
budget and the caller's error rate falls well below the engines'; when a pool is down, the
retries add at most `ratio` to its load.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    """Counts requests and retries over a sliding window (two fixed windows, the previous one
    weighted by how much of it the sliding window still covers): a few operations per call."""

    __slots__ = ("_clock", "_current", "_min", "_previous", "_ratio", "_started", "_window")

    def __init__(
        self,
        *,
        ratio: float,
        min_retries: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._min = min_retries
        self._window = window_s
        self._clock = clock
        self._started = clock()
        self._current = [0, 0]  # requests, retries in the window that began at `_started`
        self._previous = (0, 0)

    def request(self) -> None:
        """Counts a request (its first attempt)."""
        self._roll(self._clock())[0] += 1

    def try_retry(self) -> bool:
        """Whether one more retry fits in the budget; if it does, it is counted."""
        now = self._clock()
        current = self._roll(now)
        covered = 1.0 - (now - self._started) / self._window
        requests = current[0] + self._previous[0] * covered
        retries = current[1] + self._previous[1] * covered
        if retries >= max(self._min, self._ratio * requests):
            return False
        current[1] += 1
        return True

    def _roll(self, now: float) -> list[int]:
        elapsed = now - self._started
        if elapsed >= self._window:
            # The window that just ended becomes the previous one; after a longer silence, none.
            self._previous = (self._current[0], self._current[1]) if elapsed < 2 * self._window else (0, 0)
            self._started = now - elapsed % self._window if elapsed < 2 * self._window else now
            self._current = [0, 0]
        return self._current
