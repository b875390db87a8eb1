"""Dispatcher composition root: settings → pool → migrations → provider → broker → HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.dispatcher import handlers, repo
from services.dispatcher.providers import HttpProvider, NoopProvider, Provider, SmtpProvider
from services.dispatcher.service import (
    AbortRegistry,
    Dispatcher,
    OptOutRegistry,
    RateLimiter,
)
from services.dispatcher.settings import DispatcherSettings
from shared import db, topics
from shared.events import Channel
from shared.kafka import ensure_topics, instance_client_id, make_broker
from shared.service import ops_router, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"


def build_providers(settings: DispatcherSettings) -> dict[Channel, Provider]:
    email = settings.provider or settings.email_provider
    sms = settings.provider or settings.sms_provider
    http: Provider | None = None
    if "http" in (email, sms):
        http = HttpProvider(settings.provider_url, timeout=settings.provider_timeout_seconds,
                            max_connections=settings.concurrency)
    providers: dict[Channel, Provider] = {}
    if email == "smtp":
        providers["email"] = SmtpProvider(
            settings.smtp_host, settings.smtp_port, connections=settings.smtp_connections,
            timeout=settings.provider_timeout_seconds, username=settings.smtp_username,
            password=settings.smtp_password, starttls=settings.smtp_starttls,
        )
    else:
        providers["email"] = http if email == "http" and http else NoopProvider()
    providers["sms"] = http if sms == "http" and http else NoopProvider()
    return providers


def create_app(settings: DispatcherSettings | None = None) -> FastAPI:
    settings = settings or DispatcherSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, "dispatcher", max_size=settings.db_pool_max
        )
        await db.migrate(pool, "dispatcher", MIGRATIONS)
        providers = build_providers(settings)
        aborts, opt_outs = AbortRegistry(), OptOutRegistry()
        async with pool.acquire() as conn:
            aborts.add(await repo.aborted_campaigns(conn))
            opt_outs.add(await repo.all_opt_outs(conn))
        dispatcher = Dispatcher(
            pool,
            providers,
            aborts=aborts,
            opt_outs=opt_outs,
            concurrency=settings.concurrency,
            rate_limiter=RateLimiter(settings.rate_limit_per_second),
            max_attempts=settings.max_attempts,
            retry_backoff_seconds=settings.retry_backoff_seconds,
        )
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        # The client id names this instance: the scheduler waits for each member's abort
        # acknowledgement.
        broker = make_broker(
            settings.kafka_bootstrap_servers,
            client_id=instance_client_id("dispatcher", settings.instance_id),
        )
        outcomes_pub = broker.publisher(
            topics.OUTCOMES,
            description="Sent / failed / skipped, in batches of one campaign's (or one alone), "
            "keyed by campaign id.",
        )
        lifecycle_pub = broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Abort acknowledgements, keyed by campaign id."
        )
        broker.include_router(
            handlers.kafka_router(
                pool, dispatcher, aborts, opt_outs, outcomes_pub, lifecycle_pub,
                instance=settings.instance_id, max_records=settings.batch_max_records,
                outcome_batch_size=settings.outcome_batch_size, consumers=settings.consumers,
            )
        )
        await broker.start()


        app.include_router(ops_router(standard_checks(pool, broker)))
        try:
            yield
        finally:
            await broker.stop()
            for provider in {id(p): p for p in providers.values()}.values():
                await provider.close()
            await pool.close()

    return FastAPI(title="Sendout dispatcher", lifespan=lifespan)
