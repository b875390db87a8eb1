"""Dispatcher composition root: settings → pool → migrations → provider → broker → HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.dispatcher import handlers
from services.dispatcher.providers import HttpProvider, NoopProvider, Provider
from services.dispatcher.service import Dispatcher, RateLimiter
from services.dispatcher.settings import DispatcherSettings
from shared import db, topics
from shared.kafka import ensure_topics, make_broker
from shared.service import ops_router, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"


def build_provider(settings: DispatcherSettings) -> Provider:
    if settings.provider == "http":
        return HttpProvider(
            settings.provider_url,
            timeout=settings.provider_timeout_seconds,
            max_connections=settings.concurrency,
        )
    return NoopProvider()


def create_app(settings: DispatcherSettings | None = None) -> FastAPI:
    settings = settings or DispatcherSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, "dispatcher", max_size=settings.db_pool_max
        )
        await db.migrate(pool, "dispatcher", MIGRATIONS)
        provider = build_provider(settings)
        dispatcher = Dispatcher(
            pool,
            provider,
            concurrency=settings.concurrency,
            rate_limiter=RateLimiter(settings.rate_limit_per_second),
            max_attempts=settings.max_attempts,
            retry_backoff_seconds=settings.retry_backoff_seconds,
        )
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="sendout-dispatcher")
        outcomes_pub = broker.publisher(
            topics.OUTCOMES, description="Sent / failed / skipped, keyed by campaign id."
        )
        broker.include_router(
            handlers.kafka_router(pool, dispatcher, outcomes_pub, settings.batch_max_records)
        )
        await broker.start()


        app.include_router(ops_router(standard_checks(pool, broker)))
        try:
            yield
        finally:
            await broker.stop()
            await provider.close()
            await pool.close()

    return FastAPI(title="Sendout dispatcher", lifespan=lifespan)
