"""The rules that keep one message's trouble its own, without I/O: what to do with a key found
in an earlier attempt, when to try a message again, and when a provider is down.

- A key with a recorded outcome is re-reported, never sent again.
- A key claimed (its provider call may have started) without an outcome is still being worked
  on while its claim is fresh (the owner refreshes it); once the claim is stale the owner died
  mid-call, and the message is *in doubt*: reported as failed `in_doubt` by default, or sent
  again with the same idempotency key where the provider honours it.
- A retryable failure is tried again after an exponential, jittered delay (at least the
  provider's Retry-After), until a deadline; then it fails with the last reason.
- A provider failing most calls trips a breaker: its sends wait (deferred, not failed) and a
  single probe decides when they resume.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class KeyAction(StrEnum):
    SEND = "send"          # nothing of it happened before: send it
    REPORT = "report"      # settled before: report the recorded outcome again
    WAIT = "wait"          # claimed by a live owner: its outcome is coming
    IN_DOUBT = "in_doubt"  # claimed by an owner that died mid-call: do not send again
    RESEND = "resend"      # the same, where re-sending was chosen
    SCHEDULED = "scheduled"  # handed to the retry schedule: the schedule owns it


@dataclass(frozen=True)
class KeyState:
    """What the dispatcher's tables say of one (campaign, recipient, channel)."""

    settled: bool = False
    claim_age_seconds: float | None = None  # age of its newest claim, if claimed
    scheduled: bool = False


def decide(state: KeyState, *, lease_seconds: float, resend_in_doubt: bool) -> KeyAction:
    if state.settled:
        return KeyAction.REPORT
    if state.scheduled:
        return KeyAction.SCHEDULED
    if state.claim_age_seconds is None:
        return KeyAction.SEND
    if state.claim_age_seconds < lease_seconds:
        return KeyAction.WAIT
    return KeyAction.RESEND if resend_in_doubt else KeyAction.IN_DOUBT


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter up to a deadline (GOV.UK Notify retries for about four
    hours)."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    deadline_seconds: float = 4 * 3600.0

    def next_due(
        self,
        attempt: int,
        *,
        first_at: float,
        now: float,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """When to try again after `attempt` failed calls; None once past the deadline."""
        delay = min(self.cap_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))
        delay *= 0.5 + rand()  # full spread 0.5x-1.5x: retries of one outage do not align
        if retry_after is not None:
            delay = max(delay, retry_after)
        due = now + delay
        return None if due > first_at + self.deadline_seconds else due


class CircuitBreaker:
    """Per provider. Closed: calls go. Open (most recent calls failed retryably): no call goes
    until `reopen_at`; then one probe call goes (half-open) and its answer closes the breaker
    or opens it again for twice as long (up to `max_open_seconds`).

    The window's answers are counted in ten slices of a tenth of the window each (a slice
    leaves the window whole), not call by call: recording an answer costs the same at 30,000
    calls a second as at ten."""

    SLICES = 10

    def __init__(
        self,
        *,
        window_seconds: float = 10.0,
        min_calls: int = 20,
        failure_ratio: float = 0.5,
        open_seconds: float = 2.0,
        max_open_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window_seconds
        self._min_calls = min_calls
        self._ratio = failure_ratio
        self._open_seconds = open_seconds
        self._max_open = max_open_seconds
        self._clock = clock
        self._slice = window_seconds / self.SLICES
        # [slice start, calls, failures], oldest first; the last is the one being filled.
        self._slices: deque[list[float]] = deque()
        self._slice_end = float("-inf")
        self._count = 0
        self._failures = 0
        self._opened_for = 0.0
        self.reopen_at = 0.0  # while open: when the next probe may go
        self._probing = False
        self.state = "closed"

    def allow(self) -> bool:
        """May a call start now? In the open state, the first caller after `reopen_at` is the
        probe; everyone else waits for its answer."""
        if self.state == "closed":
            return True
        if self._probing or self._clock() < self.reopen_at:
            return False
        self._probing = True
        self.state = "half_open"
        return True

    def cancel_probe(self) -> None:
        """A call allowed by `allow` did not go after all: the next caller may probe."""
        if self.state == "half_open" and self._probing:
            self._probing = False
            self.state = "open"

    def record(self, ok: bool) -> None:
        """A call's answer: `ok` unless it failed retryably (a refusal of one message says
        nothing about the provider's health)."""
        now = self._clock()
        if self.state != "closed":
            if not self._probing:
                return  # an answer to a call that started before the breaker opened
            self._probing = False
            if ok:
                self._close()
            else:
                self._open(now, self._opened_for * 2)
            return
        if now >= self._slice_end:
            self._next_slice(now)
        current = self._slices[-1]
        current[1] += 1
        self._count += 1
        if not ok:
            current[2] += 1
            self._failures += 1
        if (self._failures and self._count >= self._min_calls
                and self._failures >= self._ratio * self._count):
            self._open(now, self._open_seconds)

    def _next_slice(self, now: float) -> None:
        """Start a slice at `now`; forget the slices that began a window or more ago."""
        horizon = now - self._window
        slices = self._slices
        while slices and slices[0][0] <= horizon:
            _, calls, failures = slices.popleft()
            self._count -= int(calls)
            self._failures -= int(failures)
        slices.append([now, 0, 0])
        self._slice_end = now + self._slice

    def _open(self, now: float, seconds: float) -> None:
        self._opened_for = min(max(seconds, self._open_seconds), self._max_open)
        self.reopen_at = now + self._opened_for
        self.state = "open"
        self._forget()

    def _close(self) -> None:
        self.state = "closed"
        self._opened_for = 0.0
        self._forget()

    def _forget(self) -> None:
        self._slices.clear()
        self._slice_end = float("-inf")
        self._count = 0
        self._failures = 0
