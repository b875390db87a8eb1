"""The dispatcher's own series: provider calls (duration, in flight, result) through a wrapper
around each provider, and messages by outcome where outcomes are published."""

from __future__ import annotations

import bisect
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
from shared.events import Channel
from shared.metrics import MESSAGES, PROVIDER_CALLS, reason_class


class MeteredProvider:
    """A provider whose every call is timed, counted in flight and by result (`accepted`,
    `retryable`, `permanent`, `error` for anything else it raised)."""

    def __init__(self, provider: Provider, name: str) -> None:
        self.provider = provider
        self.name = name
        self._stats = PROVIDER_CALLS.of(name)

    async def send(self, message: OutgoingMessage) -> str:
        stats = self._stats
        stats.in_flight += 1
        started = time.perf_counter()
        result = 3  # error
        try:
            provider_id = await self.provider.send(message)
            result = 0  # accepted
            return provider_id
        except RetryableProviderError:
            result = 1
            raise
        except PermanentProviderError:
            result = 2
            raise
        finally:
            elapsed = time.perf_counter() - started
            stats.in_flight -= 1
            stats.results[result] += 1
            stats.seconds += elapsed
            stats.buckets[bisect.bisect_left(_BOUNDS, elapsed)] += 1

    async def close(self) -> None:
        await self.provider.close()


_BOUNDS = PROVIDER_CALLS.BUCKETS


def metered(providers: Mapping[Any, Provider], names: Mapping[Any, str]) -> dict[Any, Provider]:
    """Each provider wrapped once (one serving two channels stays one provider)."""
    wrapped: dict[int, Provider] = {}
    return {channel: wrapped.setdefault(id(p), MeteredProvider(p, names[channel]))
            for channel, p in providers.items()}


class OutcomeCounter:
    """`sendout_messages_total`, by channel, the channel's provider, outcome and reason
    class, counted where the dispatcher publishes outcomes."""

    def __init__(self, provider_names: Mapping[Channel, str]) -> None:
        self._providers: dict[str, str] = {c: name for c, name in provider_names.items()}

    def count(self, outcomes: Iterable[tuple[Any, bytes]]) -> None:
        tally: collections.Counter[tuple[str, str, str]] = collections.Counter(
            (o.channel, o.status, reason_class(o.reason)) for o, _ in outcomes
        )
        for (channel, status, reason), n in tally.items():
            MESSAGES.labels(channel, self._providers.get(channel, "unknown"), status,
                            reason).inc(n)
