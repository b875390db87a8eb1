"""Provider failover: a chain of providers for one channel, first choice first.

A message goes to the first provider of the chain that is not passed over. When that provider
refuses it retryably for certain — an answer such as 429 or 5xx, or a connection that could
not be opened: the message was not accepted — the next provider is tried at once, and so on
down the chain. A provider that failed retryably `errors` times within `window_seconds`
(GOV.UK Notify's rule: 50 in 60 s) is passed over for `pause_seconds`: messages go straight
to the next one, and after the pause the provider gets its share again (if it still fails,
each message falls through to the next provider as above, and it is soon passed over again).
A passed-over provider is still tried when every provider after it failed too.

No message is accepted by two providers:
- a permanent refusal (invalid number, unsubscribed) is the message's outcome: no other
  provider is asked;
- a retryable error *in doubt* (`RetryableProviderError.in_doubt`: a timeout or a connection
  lost after the request went out — the provider may have accepted it) never moves the
  message to another provider: it is pinned to that provider and its retries (on the
  dispatcher's retry schedule) go there again, with the same idempotency key, which a provider
  that honours it answers with the message it already has instead of sending a second one.
  Pins live in this process's memory (the most recent `max_pins`); a retry that another
  dispatcher process picks up, or one after a restart, starts at the head of the chain again,
  so for those the guarantee rests on the providers honouring the idempotency key (the fake
  HTTP provider does; Twilio documents none — keep `SENDOUT_RESEND_IN_DOUBT` off there).

The dispatcher's circuit breaker for the channel sees the chain as one provider: it opens only
when the whole chain fails.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from services.dispatcher.providers import OutgoingMessage, Provider, RetryableProviderError


class _Health:
    def __init__(self, errors: int, window: float, pause: float) -> None:
        self._errors = errors
        self._window = window
        self._pause = pause
        self._failures: deque[float] = deque()
        self.paused_until = 0.0

    def failed(self, now: float) -> None:
        failures = self._failures
        failures.append(now)
        while failures and failures[0] < now - self._window:
            failures.popleft()
        if len(failures) >= self._errors:
            self.paused_until = now + self._pause
            failures.clear()


class FailoverProvider:
    def __init__(
        self,
        members: Sequence[tuple[str, Provider]],
        *,
        errors: int = 50,
        window_seconds: float = 60.0,
        pause_seconds: float = 30.0,
        max_pins: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(members) < 2:
            raise ValueError("a failover chain needs at least two providers")
        self.names = [name for name, _ in members]
        self.members = [provider for _, provider in members]
        self._health = [_Health(errors, window_seconds, pause_seconds) for _ in members]
        self._pins: OrderedDict[str, int] = OrderedDict()
        self._max_pins = max_pins
        self._clock = clock
        # Messages accepted per provider of the chain (by position), for tests and metrics.
        self.accepted = [0] * len(members)

    def passed_over(self, index: int) -> bool:
        return self._clock() < self._health[index].paused_until

    def _order(self, key: str) -> list[int]:
        pinned = self._pins.get(key)
        if pinned is not None:
            return [pinned]
        now = self._clock()
        indexes = range(len(self.members))
        ready = [i for i in indexes if now >= self._health[i].paused_until]
        return ready + [i for i in indexes if now < self._health[i].paused_until]

    async def send(self, message: OutgoingMessage) -> str:
        key = message.idempotency_key
        last: RetryableProviderError | None = None
        last_name = ""
        for index in self._order(key):
            try:
                provider_id = await self.members[index].send(message)
            except RetryableProviderError as exc:
                self._health[index].failed(self._clock())
                if exc.in_doubt:
                    self._pin(key, index)
                    raise
                last, last_name = exc, self.names[index]
                continue
            except BaseException:
                self._pins.pop(key, None)  # a permanent refusal (or a bug) ends the message
                raise
            self._pins.pop(key, None)
            self.accepted[index] += 1
            return provider_id
        assert last is not None
        raise RetryableProviderError(
            f"every provider of the chain failed; last ({last_name}): {last}"[:500],
            retry_after=last.retry_after,
        ) from last

    def _pin(self, key: str, index: int) -> None:
        self._pins[key] = index
        self._pins.move_to_end(key)
        while len(self._pins) > self._max_pins:
            self._pins.popitem(last=False)

    async def close(self) -> None:
        """The members are closed by their owner (one provider may serve several chains)."""
        return None
