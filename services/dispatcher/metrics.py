"""The dispatcher's own series: provider calls (duration, in flight, result) through a wrapper
around each provider, and messages by outcome where outcomes are published."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping
from typing import Any

from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    Provider,
    RetryableProviderError,
)
from shared.metrics import (
    MESSAGES,
    PROVIDER_CALL_SECONDS,
    PROVIDER_CALLS,
    PROVIDER_IN_FLIGHT,
    reason_class,
)


class MeteredProvider:
    """A provider whose every call is timed, counted in flight and by result (`accepted`,
    `retryable`, `permanent`, `error` for anything else it raised)."""

    def __init__(self, provider: Provider, name: str) -> None:
        self.provider = provider
        self.name = name
        self._seconds = PROVIDER_CALL_SECONDS.labels(name)
        self._in_flight = PROVIDER_IN_FLIGHT.labels(name)
        self._results = {result: PROVIDER_CALLS.labels(name, result)
                         for result in ("accepted", "retryable", "permanent", "error")}

    async def send(self, message: OutgoingMessage) -> str:
        self._in_flight.inc()
        started = time.perf_counter()
        result = "error"
        try:
            provider_id = await self.provider.send(message)
            result = "accepted"
            return provider_id
        except RetryableProviderError:
            result = "retryable"
            raise
        except PermanentProviderError:
            result = "permanent"
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)
            self._in_flight.dec()
            self._results[result].inc()

    async def close(self) -> None:
        await self.provider.close()


def metered(providers: Mapping[Any, Provider], names: Mapping[Any, str]) -> dict[Any, Provider]:
    """Each provider wrapped once (one serving two channels stays one provider)."""
    wrapped: dict[int, Provider] = {}
    return {channel: wrapped.setdefault(id(p), MeteredProvider(p, names[channel]))
            for channel, p in providers.items()}


class OutcomeCounter:
    """`sendout_messages_total`, by channel, the channel's provider, outcome and reason
    class, counted where the dispatcher publishes outcomes."""

    def __init__(self, provider_names: Mapping[str, str]) -> None:
        self._providers = dict(provider_names)

    def count(self, outcomes: Iterable[tuple[Any, bytes]]) -> None:
        tally: collections.Counter[tuple[str, str, str]] = collections.Counter(
            (o.channel, o.status, reason_class(o.reason)) for o, _ in outcomes
        )
        for (channel, status, reason), n in tally.items():
            MESSAGES.labels(channel, self._providers.get(channel, "unknown"), status,
                            reason).inc(n)
