"""Dispatcher wiring: settings → pool → migrations → providers (providers/registry.py) → renderer
and the dispatcher → broker, publishers and subscribers → the retry and pruning loops; what the
HTTP app needs of it is `RunningDispatcher`, on `app.state.dispatcher`.

Nothing here runs at import time: `running(settings)` builds and starts everything, and stops
it in the reverse order. The HTTP app (app.py) is built without any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.dispatcher import erasure, metrics, repo
from services.dispatcher.domain import Outcome
from services.dispatcher.entrypoints import kafka
from services.dispatcher.providers import Provider
from services.dispatcher.providers.registry import adapters_of, build_providers, provider_names
from services.dispatcher.reliability import CircuitBreaker, RetryPolicy
from services.dispatcher.rendering import Renderer
from services.dispatcher.service import (
    AbortRegistry,
    Dispatcher,
    OptOutRegistry,
    RateLimiter,
)
from services.dispatcher.settings import DispatcherSettings
from shared import db, topics
from shared.events import Channel
from shared.kafka import ensure_topics, instance_client_id, make_broker, publish_encoded
from shared.observability import LagMonitor
from shared.service import HealthCheck, serving_lifespan, standard_checks
from shared.wire import outcome_records

MIGRATIONS = Path(__file__).parent / "migrations"


def build_breakers(
    settings: DispatcherSettings, providers: dict[Channel, Provider]
) -> dict[Channel, CircuitBreaker]:
    """One breaker per provider (one serving both channels is one provider's health)."""
    by_provider: dict[int, CircuitBreaker] = {}
    return {
        channel: by_provider.setdefault(id(provider), CircuitBreaker(
            window_seconds=settings.breaker_window_seconds,
            min_calls=settings.breaker_min_calls,
            failure_ratio=settings.breaker_failure_ratio,
            open_seconds=settings.breaker_open_seconds,
            max_open_seconds=settings.breaker_max_open_seconds,
        ))
        for channel, provider in providers.items()
    }


async def stop_between_rounds(
    task: asyncio.Task[None], dispatcher: Dispatcher, bound_seconds: float
) -> None:
    dispatcher.stopping = True
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), bound_seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass
class RunningDispatcher:
    """What the HTTP app needs of a running dispatcher: its health checks."""

    pool: asyncpg.Pool
    settings: DispatcherSettings
    dispatcher: Dispatcher
    checks: dict[str, HealthCheck] = field(default_factory=dict)


@dataclass
class _Publishers:
    outcomes: DefaultPublisher
    lifecycle: DefaultPublisher


def _declare_publishers(broker: KafkaBroker) -> _Publishers:
    """Declared once, so the AsyncAPI document shows them."""
    return _Publishers(
        outcomes=broker.publisher(
            topics.OUTCOMES,
            description="Sent / failed / skipped, in batches of one campaign's (or one alone), "
            "keyed by campaign id.",
        ),
        lifecycle=broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Abort acknowledgements, keyed by campaign id."
        ),
    )


async def _dispatcher(
    pool: asyncpg.Pool, settings: DispatcherSettings, providers: dict[Channel, Provider],
    renderer: Renderer,
) -> tuple[Dispatcher, AbortRegistry, OptOutRegistry]:
    """The dispatcher, with the aborts and opt-outs stored so far."""
    aborts, opt_outs = AbortRegistry(), OptOutRegistry()
    async with pool.acquire() as conn:
        aborts.add(await repo.aborted_campaigns(conn))
        aborts.add(await repo.aborted_gates(conn))
        opt_outs.add(await repo.all_opt_outs(conn))
    dispatcher = Dispatcher(
        pool,
        providers,
        aborts=aborts,
        opt_outs=opt_outs,
        concurrency=settings.concurrency,
        rate_limiter=RateLimiter(settings.rate_limit_per_second),
        instance=settings.instance_id,
        retry_policy=RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds,
                                 settings.retry_deadline_seconds),
        breakers=build_breakers(settings, providers),
        claim_lease_seconds=settings.claim_lease_seconds,
        resend_in_doubt=settings.resend_in_doubt,
        publish_at=settings.outcome_publish_at,
        publish_after=settings.outcome_publish_after_seconds,
        renderer=renderer,
    )
    return dispatcher, aborts, opt_outs


def _renderer(settings: DispatcherSettings) -> Renderer:
    """Untrusted templates render in worker processes, with a time and an output limit per
    message; text-and-variable templates render inline."""
    return Renderer(time_limit_seconds=settings.render_time_limit_seconds,
                    max_output_chars=settings.render_max_output_chars,
                    workers=settings.render_workers,
                    memory_limit_mb=settings.render_memory_limit_mb)


async def _close_all(providers: dict[Channel, Provider]) -> None:
    for provider in adapters_of(providers):
        await provider.close()


@asynccontextmanager
async def running(settings: DispatcherSettings) -> AsyncIterator[RunningDispatcher]:
    """The dispatcher's adapters and loops, started; stopped (in reverse) when the block ends."""
    async with AsyncExitStack() as stack:
        pool = await db.create_pool(
            settings.database_url, "dispatcher", max_size=settings.db_pool_max,
            generic_plans=True, session_state=False,
        )
        stack.push_async_callback(pool.close)
        await db.migrate(pool, "dispatcher", MIGRATIONS)
        providers = build_providers(settings)
        stack.push_async_callback(_close_all, providers)
        renderer = _renderer(settings)
        await renderer.start()
        stack.push_async_callback(renderer.close)
        dispatcher, aborts, opt_outs = await _dispatcher(pool, settings, providers, renderer)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        # The client id names this instance: the scheduler waits for each member's abort
        # acknowledgement.
        broker = make_broker(
            settings.kafka_bootstrap_servers,
            client_id=instance_client_id("dispatcher", settings.instance_id),
        )
        pubs = _declare_publishers(broker)
        outcome_counter = metrics.OutcomeCounter(provider_names(settings))
        broker.include_router(
            kafka.kafka_router(
                pool, dispatcher, aborts, opt_outs, pubs.outcomes, pubs.lifecycle,
                instance=settings.instance_id, max_records=settings.batch_max_records,
                outcome_batch_size=settings.outcome_batch_size, consumers=settings.consumers,
                rebalance_seconds=settings.drain_seconds,
                outcome_counter=outcome_counter,
            )
        )
        broker.include_router(erasure.kafka_router(pool))
        await broker.start()
        stack.push_async_callback(broker.stop)
        lag = LagMonitor(broker, interval=settings.metrics_interval_seconds)
        lag.start()
        stack.push_async_callback(lag.stop)

        async def publish_outcomes(outcomes: list[tuple[Outcome, bytes]]) -> None:
            outcome_counter.count(outcomes)
            await publish_encoded(
                pubs.outcomes, outcome_records(outcomes, settings.outcome_batch_size),
                service="dispatcher",
            )

        retries = asyncio.create_task(dispatcher.retry_forever(publish_outcomes),
                                      name="retry-schedule")
        pruning = asyncio.create_task(
            dispatcher.prune_forever(settings.claim_retention_hours * 3600), name="prune")
        stack.callback(pruning.cancel)
        # The retry round in progress is settled first (bounded: a call that does not end
        # is left to its claim, which goes stale and is reported in doubt).
        stack.push_async_callback(stop_between_rounds, retries, dispatcher,
                                  settings.drain_seconds)
        yield RunningDispatcher(pool=pool, settings=settings, dispatcher=dispatcher,
                                checks=standard_checks(pool, broker))


def lifespan(
    settings: DispatcherSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the running dispatcher on `app.state.dispatcher` while it serves."""
    return serving_lifespan(running, settings, "dispatcher")
