"""Adaptive concurrency for an HTTP provider: how many calls may be in flight at once.

Throughput from a provider is calls in flight / latency: 10,000 a second from an API answering
in 50 ms needs 500 calls in flight, one answering in 200 ms needs 2,000 — and a provider
that is saturated answers slower or with 429s, where more calls in flight only make it worse.
So the limit moves (AIMD, as TCP's congestion window):
- it grows by one for every call that succeeded while the limit was in use and latency stayed
  near the best seen lately (its moving average within `tolerance` times the best, plus
  `slack_seconds`): from `initial` it roughly doubles every round trip until it meets `maximum`
  or latency rises;
- it shrinks to `backoff` times itself on a sign of overload — 429, 503, latency above that
  bound, or timeouts making up more than `timeout_share` of the calls that ended lately — at
  most once per round trip (one burst of 429s is one signal), never below `minimum`.

A call that hangs is not a sign of load by itself (a provider that loses a few calls in every
hundred is not saturated; one that is answers slowly first, or with 429s), and it says nothing
of the provider's latency: a timeout is no latency sample, and shrinks the limit only when
timeouts are a large share of the calls. Nor may hung calls starve the others: a call in
flight longer than `hung_factor` round trips (at least `hung_min_seconds`) stops counting
against the limit, which governs the calls that are still expected to answer; it keeps its
place under `maximum` until its timeout ends it. Without that, a limit shrunk by a few 429s
below the number of hung calls let no call start until the hangs timed out (the fault suite's
provider-errors case: 19 calls a second with 50 allowed).

`maximum` stays a hard cap on every call in flight, hung or not (SENDOUT_PROVIDER_MAX_CONCURRENCY);
the dispatcher's rate limit (SENDOUT_RATE_LIMIT_PER_SECOND) and its own concurrency are applied
before the provider.
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
        timeout_share: float = 0.25,
        hung_factor: float = 8.0,
        hung_min_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(max(self.minimum, min(initial, maximum)))
        self.in_flight = 0  # every call in flight, hung ones included
        self.hung = 0  # of those, the ones in flight longer than a call should take
        self._tolerance = tolerance
        self._slack = slack_seconds
        self._backoff = backoff
        self._timeout_share = timeout_share
        self._hung_factor = hung_factor
        self._hung_min = hung_min_seconds
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
        # Moving share of the calls ended that timed out (about the last 50 calls).
        self._timeouts = 0.0
        # The most calls in flight lately (reset every two round trips): whether the limit was
        # in use, i.e. whether more would have been used.
        self._peak = 0
        self._peak_limit = 1  # the limit when the peak was reached
        self._peak_at = clock()
        # Start times of the calls in flight not yet counted as hung, oldest first; calls
        # that ended before being counted hung are struck out lazily (`_ended`), the starts of
        # those counted hung are kept in `_hung_starts` until they end.
        self._starts: deque[float] = deque()
        self._ended: dict[float, int] = {}
        self._hung_starts: dict[float, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def baseline(self) -> float:
        return min(self._best_now, self._best_before)

    @property
    def live(self) -> int:
        """Calls in flight that are still expected to answer: what the limit governs."""
        return self.in_flight - self.hung

    def hung_after(self) -> float:
        """How long a call may be in flight before it counts as hung."""
        return max(self._hung_min, self._hung_factor * self._smoothed)

    def _full(self, now: float) -> bool:
        self._count_hung(now)
        return self.in_flight - self.hung >= self.limit or self.in_flight >= self.maximum

    async def acquire(self) -> float:
        """Wait for a free slot; the call's start time, for `release`."""
        while self._full(self._clock()):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._arm_timer()
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake()  # pass on a wake-up this cancelled waiter cannot use
                raise
        self.in_flight += 1
        started = self._clock()
        self._starts.append(started)
        live = self.in_flight - self.hung
        if live >= self._peak:
            self._peak, self._peak_limit = live, int(self.limit)
        return started

    def release(self, started: float, *, overloaded: bool = False, measured: bool = True,
                timed_out: bool = False) -> None:
        """A call ended. `overloaded`: 429 or 503. `timed_out`: no answer within the timeout
        (no latency sample; a sign of overload only when timeouts are many). `measured`: its
        latency says something about the provider (not for a connection refused or an error
        before the call)."""
        now = self._clock()
        # Growth is judged against the limit the calls started under: every call of a full
        # round trip adds one, so the limit doubles per round trip (TCP's slow start).
        used = self._peak >= self._peak_limit * 0.9
        if now - self._peak_at > 2 * max(self._smoothed, 0.001):
            self._peak, self._peak_limit = self.live, int(self.limit)
            self._peak_at = now
        self._count_hung(now)
        self.in_flight -= 1
        self._end_start(started)
        latency = now - started
        if timed_out:
            measured = False
        if measured or timed_out:
            self._timeouts = 0.98 * self._timeouts + (0.02 if timed_out else 0.0)
        if measured and not overloaded:
            self._observe(now, latency)
        self._adapt(now, overloaded=overloaded, measured=measured, timed_out=timed_out,
                    used=used)
        self._wake()

    def _end_start(self, started: float) -> None:
        """A call that started at `started` ended: out of the hung count if it was hung, else
        noted as ended for `_count_hung`."""
        hung = self._hung_starts.get(started)
        if hung:
            if hung == 1:
                del self._hung_starts[started]
            else:
                self._hung_starts[started] = hung - 1
            self.hung -= 1
        else:
            self._ended[started] = self._ended.get(started, 0) + 1

    def _adapt(self, now: float, *, overloaded: bool, measured: bool, timed_out: bool,
               used: bool) -> None:
        """Back off on overload, slowness or many timeouts (at most once per round trip);
        otherwise grow by one per measured call while the limit is used."""
        # Latency judged on its moving average, with some slack: a busy event loop delays
        # single answers by a few milliseconds without the provider being any slower.
        slow = measured and self._smoothed > self._tolerance * self.baseline + self._slack
        lost = timed_out and self._timeouts > self._timeout_share
        if overloaded or slow or lost:
            if now - self._last_decrease >= max(self._smoothed, 0.001):
                self._last_decrease = now
                self.limit = max(float(self.minimum), self.limit * self._backoff)
        elif measured and used:
            self.limit = min(float(self.maximum), self.limit + 1.0)

    def _count_hung(self, now: float) -> None:
        """Move the calls in flight for longer than `hung_after` out of the limit's count."""
        starts = self._starts
        if not starts or starts[0] > now - self._hung_min:
            return  # the common case: no call in flight for even the shortest hung time
        oldest = now - self.hung_after()
        ended, hung = self._ended, self._hung_starts
        while starts and starts[0] <= oldest:
            start = starts.popleft()
            count = ended.get(start)
            if count:
                if count == 1:
                    del ended[start]
                else:
                    ended[start] = count - 1
            else:
                hung[start] = hung.get(start, 0) + 1
                self.hung += 1

    def _arm_timer(self) -> None:
        """Wake the waiters when the oldest call in flight would count as hung: a slot frees
        up without any call ending."""
        if self._timer is not None or not self._starts:
            return
        delay = self._starts[0] + self.hung_after() - self._clock()
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._count_hung(self._clock())
        self._wake()
        if self._waiters:
            self._arm_timer()

    def _observe(self, now: float, latency: float) -> None:
        if now - self._window_start >= self._window:
            self._best_before, self._best_now = self._best_now, float("inf")
            self._window_start = now
        self._best_now = min(self._best_now, latency)
        self._smoothed = latency if not self._smoothed else 0.9 * self._smoothed + 0.1 * latency

    def _wake(self) -> None:
        free = min(int(self.limit) - self.live, self.maximum - self.in_flight)
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
