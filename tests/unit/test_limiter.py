"""Adaptive concurrency of HTTP providers: the limit's rules on a scripted clock, then against
the fake HTTP provider on the loopback (429s shrink it, a healthy provider lets it grow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devtools import lean_http
from devtools.fake_provider import Behaviour, Faults, ReceiptPoster, create_routes
from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers import HttpProvider, OutgoingMessage, RetryableProviderError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _fill(limiter: AdaptiveLimiter) -> list[float]:
    return [await limiter.acquire() for _ in range(int(limiter.limit))]


async def test_the_limit_grows_while_used_and_latency_stays_flat_never_past_the_cap() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(maximum=64, initial=8, clock=clock)
    for _ in range(10):
        starts = await _fill(limiter)
        clock.now += 0.05
        for started in starts:
            limiter.release(started)
    assert limiter.limit == 64 and limiter.in_flight == 0


async def test_the_limit_does_not_grow_when_it_is_not_used() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(maximum=64, initial=8, clock=clock)
    for _ in range(20):
        started = await limiter.acquire()
        clock.now += 0.05
        limiter.release(started)
    assert limiter.limit == 8


async def test_overload_shrinks_the_limit_once_per_round_trip() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(maximum=100, initial=100, backoff=0.5, clock=clock)
    starts = await _fill(limiter)
    clock.now += 0.05
    for started in starts[:50]:
        limiter.release(started)  # a latency baseline of 50 ms
    for started in starts[50:]:
        limiter.release(started, overloaded=True)  # one burst of 429s
    assert limiter.limit == 50
    clock.now += 0.1
    started = await limiter.acquire()
    limiter.release(started, overloaded=True)
    assert limiter.limit == 25


async def test_latency_well_above_the_best_seen_shrinks_the_limit() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(maximum=100, initial=40, tolerance=2.0, slack_seconds=0.025,
                              backoff=0.5, clock=clock)
    for _ in range(10):
        started = await limiter.acquire()
        clock.now += 0.05
        limiter.release(started)
    started = await limiter.acquire()
    clock.now += 0.5  # one slow answer: within what a busy event loop explains on average
    limiter.release(started)
    assert limiter.limit == 40
    for _ in range(10):
        started = await limiter.acquire()
        clock.now += 0.3  # six times the best, for a while
        limiter.release(started)
    assert limiter.limit <= 20


async def test_calls_over_the_limit_wait_for_a_free_slot() -> None:
    limiter = AdaptiveLimiter(maximum=2, initial=2, minimum=1)
    first, _ = await limiter.acquire(), await limiter.acquire()
    third = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not third.done() and limiter.in_flight == 2
    limiter.release(first, measured=False)
    await asyncio.wait_for(third, 1)
    assert limiter.in_flight == 2


@pytest.fixture
async def fake() -> AsyncIterator[tuple[str, Faults]]:
    behaviour = Behaviour(latency_ms=10)
    faults = Faults()
    server = await lean_http.serve(create_routes(behaviour, ReceiptPoster(behaviour), faults),
                                   "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", faults
    server.close()


def _message(n: int) -> OutgoingMessage:
    return OutgoingMessage("sms", "+4512345678", "Office", None, "hello", f"k{n}")


async def test_a_provider_answering_429_brings_the_limit_down_and_a_healthy_one_lets_it_grow(
    fake: tuple[str, Faults]
) -> None:
    url, faults = fake
    limiter = AdaptiveLimiter(maximum=200, initial=40, minimum=4)
    provider = HttpProvider(url, timeout=5, max_connections=200, limiter=limiter)
    await faults.configure({"error_429": 1.0, "retry_after_seconds": 1})

    async def send(n: int) -> None:
        try:
            await provider.send(_message(n))
        except RetryableProviderError:
            pass

    for round_ in range(8):
        await asyncio.gather(*(send(round_ * 100 + i) for i in range(100)))
    assert limiter.limit <= 10
    await faults.configure({"error_429": 0.0})
    for round_ in range(20):
        await asyncio.gather(*(send(10_000 + round_ * 200 + i) for i in range(200)))
    assert limiter.limit >= 100
    assert limiter.in_flight == 0
    await provider.close()
