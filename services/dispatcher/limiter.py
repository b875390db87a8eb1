"""Adaptive concurrency for an HTTP provider: how many calls may be in flight at once.

Throughput from a provider is calls in flight / latency: 10,000 a second from an API answering
in 50 ms needs 500 calls in flight, one answering in 200 ms needs 2,000 — and a provider
that is saturated answers slower or with 429s, where more calls in flight only make it worse.
So the limit moves (AIMD, as TCP's congestion window):
- it grows by one for every call that succeeded while the limit was in use and latency stayed
  near the best seen lately (its moving average within `tolerance` times the best, plus
  `slack_seconds`): from `initial` it roughly doubles every round trip until it meets `maximum`
  or latency rises;
- it shrinks to `backoff` times itself on a sign of overload — 429, 503, a timeout, latency
  above that bound — at most once per round trip (one burst of 429s is one signal).
`maximum` stays a hard cap (SENDOUT_PROVIDER_MAX_CONCURRENCY); the dispatcher's rate limit
(SENDOUT_RATE_LIMIT_PER_SECOND) and its own concurrency are applied before the provider.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class AdaptiveLimiter:
    def __init__(
        self,
        *,
        maximum: int,
        initial: int = 50,
        minimum: int = 4,
        tolerance: float = 2.0,
        slack_seconds: float = 0.025,
        backoff: float = 0.7,
        baseline_window_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(max(self.minimum, min(initial, maximum)))
        self.in_flight = 0
        self._tolerance = tolerance
        self._slack = slack_seconds
        self._backoff = backoff
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The best latency of each window (current and previous): the baseline forgets an old
        # best after at most two windows, so a provider that became slower for good is not
        # judged overloaded forever.
        self._window = baseline_window_seconds
        self._window_start = clock()
        self._best_now = float("inf")
        self._best_before = float("inf")
        self._last_decrease = 0.0
        self._smoothed = 0.0  # moving average of latency: the length of a round trip
        # The most calls in flight lately (reset every two round trips): whether the limit was
        # in use, i.e. whether more would have been used.
        self._peak = 0
        self._peak_limit = 1  # the limit when the peak was reached
        self._peak_at = clock()

    @property
    def baseline(self) -> float:
        return min(self._best_now, self._best_before)

    async def acquire(self) -> float:
        """Wait for a free slot; the call's start time, for `release`."""
        while self.in_flight >= int(self.limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake()  # pass on a wake-up this cancelled waiter cannot use
                raise
        self.in_flight += 1
        if self.in_flight >= self._peak:
            self._peak, self._peak_limit = self.in_flight, int(self.limit)
        return self._clock()

    def release(self, started: float, *, overloaded: bool = False, measured: bool = True) -> None:
        """A call ended. `overloaded`: 429 or a timeout. `measured`: its latency says something
        about the provider (not for a connection refused or an error before the call)."""
        now = self._clock()
        # Growth is judged against the limit the calls started under: every call of a full
        # round trip adds one, so the limit doubles per round trip (TCP's slow start).
        used = self._peak >= self._peak_limit * 0.9
        if now - self._peak_at > 2 * max(self._smoothed, 0.001):
            self._peak, self._peak_limit = self.in_flight, int(self.limit)
            self._peak_at = now
        self.in_flight -= 1
        latency = now - started
        if measured and not overloaded:
            self._observe(now, latency)
        # Latency judged on its moving average, with some slack: a busy event loop delays
        # single answers by a few milliseconds without the provider being any slower.
        slow = measured and self._smoothed > self._tolerance * self.baseline + self._slack
        if overloaded or slow:
            if now - self._last_decrease >= max(self._smoothed, 0.001):
                self._last_decrease = now
                self.limit = max(float(self.minimum), self.limit * self._backoff)
        elif measured and used:
            self.limit = min(float(self.maximum), self.limit + 1.0)
        self._wake()

    def _observe(self, now: float, latency: float) -> None:
        if now - self._window_start >= self._window:
            self._best_before, self._best_now = self._best_now, float("inf")
            self._window_start = now
        self._best_now = min(self._best_now, latency)
        self._smoothed = latency if not self._smoothed else 0.9 * self._smoothed + 0.1 * latency

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
