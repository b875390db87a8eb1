"""A provider simulated on a virtual clock, called through the real `limited_request` and
`AdaptiveLimiter` (and asyncio's own timeouts): minutes of traffic in a fraction of a second,
the same every run (seeded).

`VirtualLoop` is an asyncio event loop whose clock jumps to the next timer instead of sleeping,
so `asyncio.sleep`, `asyncio.timeout` and the limiter's clock (`loop.time`) agree. The
simulated provider answers each call after its latency — or 500, 429 (`Retry-After`), or never
(a hang, which the caller's timeout ends), drawn per call — and can model a provider that
slows down (latency grows with the calls in flight past `knee`) or refuses (429 past
`capacity` calls in flight)."""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field

from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers import limited_request
from services.dispatcher.providers.http11 import Response


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events and timeout:
            self.now += timeout  # nothing to do before the next timer: jump to it
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._selector_clock = _JumpingSelector()
        super().__init__(self._selector_clock)

    def time(self) -> float:
        return self._selector_clock.now


@dataclass
class Provider:
    latency: float = 0.05
    error_500: float = 0.0
    error_429: float = 0.0
    hang: float = 0.0
    # Calls in flight past which each one adds `per_call` seconds of latency (a provider
    # queueing), and past which it answers 429 at once (a provider shedding load); 0: none.
    knee: int = 0
    per_call: float = 0.0
    capacity: int = 0
    # The caller's own CPU per call (seconds, one core): answers queue for it, as on a
    # dispatcher whose event loop is saturated; 0: none.
    cpu_per_call: float = 0.0
    seed: int = 1
    in_flight: int = 0
    answered: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._cpu = asyncio.Lock() if self.cpu_per_call else None

    async def request(self, data: bytes, within: float | None = None) -> Response:
        """`Http11Pool.request`: the answer within `within` seconds, else `TimeoutError`."""
        async with asyncio.timeout(within):
            return await self._answer()

    async def _answer(self) -> Response:
        self.in_flight += 1
        try:
            if self.capacity and self.in_flight > self.capacity:
                await asyncio.sleep(self.latency)
                return Response(429, b"{}", retry_after=1.0)
            draw = self._random.random()
            if draw < self.hang:
                await asyncio.sleep(3600)
            latency = self.latency
            if self.knee and self.in_flight > self.knee:
                latency += (self.in_flight - self.knee) * self.per_call
            await asyncio.sleep(latency * (0.9 + 0.2 * self._random.random()))
            if self._cpu is not None:
                async with self._cpu:
                    await asyncio.sleep(self.cpu_per_call)
            if draw < self.hang + self.error_500:
                return Response(500, b"{}")
            if draw < self.hang + self.error_500 + self.error_429:
                return Response(429, b"{}", retry_after=2.0)
            return Response(202, b'{"id": "x"}')
        finally:
            self.in_flight -= 1


@dataclass
class Run:
    seconds: float
    # Calls answered 202 in each whole second, and the limit sampled every 100 ms.
    accepted_per_second: list[int]
    limits: list[float]
    most_in_flight: int
    refused: int  # calls answered 429

    def rate(self, after: float = 0.0) -> float:
        """Accepted calls a second, from `after` seconds on."""
        seconds = self.accepted_per_second[int(after):]
        return sum(seconds) / max(len(seconds), 1)


def simulate(
    provider: Provider,
    *,
    seconds: float,
    workers: int,
    timeout: float = 5.0,
    limiter: Callable[[Callable[[], float]], AdaptiveLimiter | None],
    change: Callable[[float, Provider], None] | None = None,
) -> Run:
    """`workers` callers (the dispatcher's call slots) sending as fast as the provider and the
    limiter let them for `seconds` of virtual time. `limiter(clock)`: the limiter to use (or
    None: the static cap alone). `change(t, provider)`: called every 100 ms, to change the
    provider mid-run."""
    loop = VirtualLoop()
    accepted = [0] * (int(seconds) + 1)
    limits: list[float] = []
    peak = [0]
    refused = [0]

    async def main() -> None:
        lim = limiter(loop.time)
        end = loop.time() + seconds

        async def worker() -> None:
            while loop.time() < end:
                try:
                    response = await limited_request(provider, b"", timeout, lim)  # type: ignore[arg-type]
                except TimeoutError:
                    continue
                if response.status == 202 and loop.time() < end:
                    accepted[int(loop.time())] += 1
                elif response.status == 429:
                    refused[0] += 1
                peak[0] = max(peak[0], provider.in_flight)

        async def sample() -> None:
            start = loop.time()
            while loop.time() < end:
                limits.append(lim.limit if lim is not None else float(workers))
                if change is not None:
                    change(loop.time() - start, provider)
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        await sample()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return Run(seconds, accepted[: int(seconds)], limits, peak[0], refused[0])
