"""Dispatching a batch of send requests: skip keys already settled, render, call the provider
with bounded concurrency and a rate limit, record the outcomes — never holding a connection
across a provider call."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg

from services.dispatcher import domain, repo
from services.dispatcher.domain import CampaignTemplate, Outcome, Request
from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    Provider,
    RetryableProviderError,
)
from shared.events import Channel

log = logging.getLogger(__name__)
T = TypeVar("T")
Publish = Callable[[list[tuple[Outcome, bytes]]], Awaitable[None]]


class TemplateNotYetKnown(Exception):
    """A send request overtook its campaign's `started` event; the batch is retried shortly."""


class RateLimiter:
    """Token bucket shared by every send of this process (`rate` per second, 0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._rate, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class Registry(Generic[T]):
    """What this process knows to stop for (aborted campaigns, opted-out addresses);
    consulted before every provider call."""

    def __init__(self) -> None:
        self._items: set[T] = set()

    def add(self, items: set[T]) -> None:
        self._items |= items

    def __contains__(self, item: object) -> bool:
        return item in self._items


AbortRegistry = Registry[uuid.UUID]
OptOutRegistry = Registry[tuple[uuid.UUID | None, str]]


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        providers: dict[Channel, Provider],
        *,
        aborts: AbortRegistry,
        opt_outs: OptOutRegistry | None = None,
        concurrency: int,
        rate_limiter: RateLimiter,
        max_attempts: int,
        retry_backoff_seconds: float,
    ) -> None:
        self._pool = pool
        self._providers = providers
        self._aborts = aborts
        self._opt_outs = opt_outs if opt_outs is not None else OptOutRegistry()
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._limiter = rate_limiter
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds
        self._templates: dict[uuid.UUID, CampaignTemplate] = {}

    async def dispatch(self, requests: Sequence[Request]) -> list[Outcome]:
        """Outcomes for every distinct request of the batch (re-reported if settled before)."""
        return [outcome for outcome, _ in await self.dispatch_encoded(requests)]

    async def dispatch_encoded(
        self, requests: Sequence[Request], publish: Publish | None = None
    ) -> list[tuple[Outcome, bytes]]:
        """`dispatch`, each outcome with its JSON: the bytes recorded are the bytes to publish.

        With `publish`, the outcomes are published while they are recorded, not after: both
        must be done before the batch's offsets commit, and neither depends on the other — if
        recording fails, the batch is redelivered and its messages sent again (as they would
        be had the process died before recording), and the tracker counts each key once.
        """
        unique = list({domain.dedupe_key(r): r for r in requests}.values())
        async with self._pool.acquire() as conn:
            await self._ensure_templates(conn, {r.campaign_id for r in unique})
            settled = await repo.settled(conn, unique)
        to_send = [r for r in unique if domain.dedupe_key(r) not in settled] if settled else unique
        # Requests settled without a provider call (aborted, no address, template error) need
        # no task of their own; the others are sent concurrently.
        fresh: list[tuple[Request, Outcome]] = []
        calls: list[tuple[Request, OutgoingMessage]] = []
        for req in to_send:
            ready = self._prepare(req)
            if isinstance(ready, OutgoingMessage):
                calls.append((req, ready))
            else:
                fresh.append((req, ready))
        fresh.extend(zip((req for req, _ in calls), await self._send_all(calls), strict=True))
        encoded = [(req, o, o.to_bytes()) for req, o in fresh]
        outcomes = [*((o, o.to_bytes()) for o in settled.values()),
                    *((o, data) for _, o, data in encoded)]
        async with asyncio.TaskGroup() as both:  # one failing cancels the other
            if encoded:
                both.create_task(self._record(encoded))
            if publish is not None and outcomes:
                both.create_task(publish(outcomes))
        return outcomes

    async def _record(self, encoded: Sequence[tuple[Request, Outcome, bytes]]) -> None:
        async with self._pool.acquire() as conn:
            await repo.record_outcomes(conn, encoded)

    async def _send_all(
        self, calls: Sequence[tuple[Request, OutgoingMessage]]
    ) -> list[Outcome]:
        """Send concurrently through at most `concurrency` workers sharing one queue, each
        holding one of the process's provider-call slots while it works: a task and a semaphore
        acquisition per message cost more than a no-op provider call (and in Python 3.11 each
        acquisition scans the semaphore's waiters). The outcomes are in the calls' order."""
        results: list[Outcome | None] = [None] * len(calls)
        queue = iter(enumerate(calls))

        async def worker() -> None:
            async with self._slots:
                for i, (req, message) in queue:
                    results[i] = await self._send(req, message)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(calls)))))
        return [r for r in results if r is not None]

    async def _ensure_templates(
        self, conn: asyncpg.Connection, campaign_ids: set[uuid.UUID]
    ) -> None:
        missing = [c for c in campaign_ids if c not in self._templates]
        if not missing:
            return
        self._templates.update(await repo.load_templates(conn, missing))
        unknown = [c for c in missing if c not in self._templates]
        if unknown:
            raise TemplateNotYetKnown(f"no started event seen yet for campaigns {unknown}")

    def _prepare(self, req: Request) -> Outcome | OutgoingMessage:
        """The message to send for a request, or its outcome if nothing is to be sent."""
        if req.campaign_id in self._aborts:
            return domain.skipped(req, "aborted")
        if not req.address:
            return domain.skipped(req, req.skip_reason or "missing_address")
        campaign = self._templates[req.campaign_id]
        if (campaign.organisation_id, req.address) in self._opt_outs:
            return domain.skipped(req, "opted_out")
        template = campaign.templates.get(req.channel)
        if template is None:
            return domain.failed(req, f"template_error: no {req.channel} template")
        try:
            body = domain.render(template.body, req.variables)
            subject = domain.render(template.subject, req.variables) if template.subject else None
        except domain.RenderError as exc:
            return domain.failed(req, str(exc))
        return OutgoingMessage(
            req.channel, req.address, campaign.sender_address(req.channel), subject, body,
            str(req.event_id),
        )

    async def _send(self, req: Request, message: OutgoingMessage) -> Outcome:
        """One message's provider calls (with retries); the caller holds a provider-call slot."""
        provider = self._providers[req.channel]
        for attempt in range(1, self._max_attempts + 1):
            await self._limiter.acquire()
            # The last moment to honour an abort or an opt-out: then the call starts.
            if req.campaign_id in self._aborts:
                return domain.skipped(req, "aborted")
            if (self._templates[req.campaign_id].organisation_id, req.address) in self._opt_outs:
                return domain.skipped(req, "opted_out")
            try:
                return domain.sent(req, await provider.send(message))
            except PermanentProviderError as exc:
                return domain.failed(req, str(exc))
            except RetryableProviderError as exc:
                if attempt == self._max_attempts:
                    return domain.failed(req, f"gave up after {attempt} attempts: {exc}")
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")
