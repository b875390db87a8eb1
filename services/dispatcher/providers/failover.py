"""Provider failover: a chain of providers for one channel, first choice first.

A message goes to the first provider of the chain that is not passed over. When that provider
refuses it retryably for certain — an answer such as 429 or 5xx, or a connection that could
not be opened: the message was not accepted — the next provider is tried at once, and so on
down the chain. A provider that failed retryably `errors` times within `window_seconds`
(GOV.UK Notify's rule: 50 in 60 s) is passed over for `pause_seconds`: messages go straight
to the next one. After the pause it is on trial: one message at a time goes to it (the others
still pass it over) until one is accepted — then it gets its share again — or one fails —
then it is passed over for another pause. A provider still down thus costs one message per
pause, not another `errors` of them (and when it fails by timing out, one message in doubt
stays with it, not as many as there are calls in flight). A passed-over provider is still
tried when every provider after it failed too.

A provider that stops answering is passed over sooner: `doubt_errors` calls in a row that
ended in doubt (timed out, or the connection lost mid-call) with no answer of any kind in
between (5; a provider that loses a few calls among answers is not down). Each such call
leaves its message with that provider (below), so waiting for `errors` of them would strand a
second wave of messages started while the first wave's timeouts came in.

No message is accepted by two providers:
- a permanent refusal (invalid number, unsubscribed) is the message's outcome: no other
  provider is asked;
- a retryable error *in doubt* (`RetryableProviderError.in_doubt`: a timeout or a connection
  lost after the request went out — the provider may have accepted it) never moves the
  message to another provider: it is pinned to that provider and its retries (on the
  dispatcher's retry schedule) go there again, with the same idempotency key, which a provider
  that honours it answers with the message it already has instead of sending a second one.
  Pins live in this process's memory (the most recent `max_pins`), and travel with the
  message: the error of a pinned message begins with `in doubt at <provider>: ` (`mark`), the
  reason the dispatcher stores with the message on its retry schedule (`retries.last_reason`).
  A retry whose `OutgoingMessage.pinned_to` names a provider of the chain goes to that
  provider alone, whichever process sends it (`pinned_to(reason)` reads the name back). The
  dispatcher's retry round does not pass it on yet (services/dispatcher/service.py,
  `_settle_due`, is to set `pinned_to=pinned_to(row["last_reason"])` on the message it
  builds; the breaker's "circuit open" reason in `_call` and the "template not known yet"
  reschedule in `_settle_due` are to keep the mark of the reason they replace): until then a
  retry that another dispatcher process picks up, or one after a restart, starts at the head
  of the chain again, and for those the guarantee rests on the providers honouring the
  idempotency key (the fake HTTP provider does; Twilio documents none). A call in flight when
  its process died is another matter: which provider it went to is not recorded anywhere
  (the claim is taken before the chain chooses), so keep `SENDOUT_RESEND_IN_DOUBT` off with a
  chain.

The dispatcher's circuit breaker for the channel sees the chain as one provider: it opens only
when the whole chain fails.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from services.dispatcher.providers.base import (
    OutgoingMessage,
    PermanentProviderError,
    Provider,
    RetryableProviderError,
)

_MARK = re.compile(r"in doubt at ([A-Za-z0-9_.-]+): ")


def mark(provider: str, error: BaseException | str) -> str:
    """The reason of a message left in doubt with `provider` (at most 500 characters)."""
    return f"in doubt at {provider}: {error}"[:500]


def pinned_to(reason: str | None) -> str | None:
    """The provider a message was left in doubt with, from its last reason (`mark`)."""
    found = _MARK.match(reason or "")
    return found.group(1) if found else None


class _Health:
    def __init__(self, errors: int, window: float, pause: float, doubt_errors: int) -> None:
        self._errors = errors
        self._doubt_errors = doubt_errors
        self._doubts = 0  # calls in a row that ended in doubt
        self._window = window
        self._pause = pause
        self._failures: deque[float] = deque()
        self.paused_until = 0.0
        # Passed over at least once and not yet accepted a message since: on trial after the
        # pause, one message at a time (`probing`: that message is in flight).
        self.on_trial = False
        self.probing = False

    def failed(self, now: float, *, probe: bool, in_doubt: bool) -> None:
        self._doubts = self._doubts + 1 if in_doubt else 0
        if probe:  # on trial and failed again: another pause, without waiting for `errors`
            self.probing = False
            self._pass_over(now)
            return
        if self._doubts >= self._doubt_errors:
            self._doubts = 0
            self._pass_over(now)
            return
        failures = self._failures
        failures.append(now)
        while failures and failures[0] < now - self._window:
            failures.popleft()
        if len(failures) >= self._errors:
            self._pass_over(now)

    def accepted(self, *, probe: bool) -> None:
        self._doubts = 0
        if probe:
            self.probing = False
            self.on_trial = False

    def _pass_over(self, now: float) -> None:
        self.paused_until = now + self._pause
        self.on_trial = True
        self._failures.clear()


class FailoverProvider:
    def __init__(
        self,
        members: Sequence[tuple[str, Provider]],
        *,
        errors: int = 50,
        window_seconds: float = 60.0,
        pause_seconds: float = 30.0,
        doubt_errors: int = 5,
        max_pins: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(members) < 2:
            raise ValueError("a failover chain needs at least two providers")
        self.names = [name for name, _ in members]
        self._by_name = {name: i for i, name in enumerate(self.names)}
        self.members = [provider for _, provider in members]
        self._health = [_Health(errors, window_seconds, pause_seconds, doubt_errors)
                        for _ in members]
        self._pins: OrderedDict[str, int] = OrderedDict()
        self._max_pins = max_pins
        self._clock = clock
        # Messages accepted per provider of the chain (by position), for tests and metrics.
        self.accepted = [0] * len(members)

    def passed_over(self, index: int) -> bool:
        return self._clock() < self._health[index].paused_until

    def _order(self, key: str, hint: str | None) -> tuple[list[int], int | None]:
        """The providers to try for this message, in order, and which of them (if any) it
        is the trial message of. `hint`: the provider it was left in doubt with, if known
        (a provider no longer in the chain cannot be asked: the chain's order then)."""
        pinned = self._pins.get(key)
        if pinned is None and hint is not None:
            pinned = self._by_name.get(hint)
            if pinned is not None:
                self._pin(key, pinned)
        if pinned is not None:
            return [pinned], None
        now = self._clock()
        ready: list[int] = []
        passed: list[int] = []
        probe: int | None = None
        for i, health in enumerate(self._health):
            if now < health.paused_until:
                passed.append(i)
            elif not health.on_trial:
                ready.append(i)
            elif not health.probing and probe is None:
                health.probing = True  # this message is the trial
                probe = i
                ready.append(i)
            else:
                passed.append(i)  # on trial with its one message in flight
        return ready + passed, probe

    async def send(self, message: OutgoingMessage) -> str:
        key = message.idempotency_key
        last: RetryableProviderError | None = None
        last_name = ""
        order, probe = self._order(key, message.pinned_to)
        pinned = key in self._pins
        try:
            for index in order:
                on_probe = index == probe
                try:
                    provider_id = await self.members[index].send(message)
                except RetryableProviderError as exc:
                    in_doubt = self._failed(key, index, exc, on_probe=on_probe, pinned=pinned)
                    if on_probe:
                        probe = None
                    if in_doubt is not None:
                        raise in_doubt from exc
                    last, last_name = exc, self.names[index]
                    continue
                except PermanentProviderError:
                    # The provider answered: up. The refusal is the message's outcome.
                    self._health[index].accepted(probe=on_probe)
                    if on_probe:
                        probe = None
                    self._pins.pop(key, None)
                    raise
                except BaseException:
                    self._pins.pop(key, None)  # a bug ends the message
                    raise
                self._health[index].accepted(probe=on_probe)
                if on_probe:
                    probe = None
                self._pins.pop(key, None)
                self.accepted[index] += 1
                return provider_id
        finally:
            if probe is not None:  # the trial ended without an answer (cancelled, a bug):
                self._health[probe].probing = False  # the next message is the trial
        raise _chain_failed(last, last_name) from last

    def _failed(self, key: str, index: int, exc: RetryableProviderError, *, on_probe: bool,
                pinned: bool) -> RetryableProviderError | None:
        """Record a member's retryable failure; the error that ends the message when the member
        may have it (None: the next member is tried)."""
        self._health[index].failed(self._clock(), probe=on_probe, in_doubt=exc.in_doubt)
        if exc.in_doubt or pinned:  # it may have the message: stays in doubt
            self._pin(key, index)
            return RetryableProviderError(mark(self.names[index], exc),
                                          retry_after=exc.retry_after, in_doubt=True)
        return None

    def _pin(self, key: str, index: int) -> None:
        self._pins[key] = index
        self._pins.move_to_end(key)
        while len(self._pins) > self._max_pins:
            self._pins.popitem(last=False)

    async def close(self) -> None:
        """The members are closed by their owner (one provider may serve several chains)."""
        return None


def _chain_failed(last: RetryableProviderError | None, last_name: str) -> RetryableProviderError:
    assert last is not None
    return RetryableProviderError(
        f"every provider of the chain failed; last ({last_name}): {last}"[:500],
        retry_after=last.retry_after,
    )
