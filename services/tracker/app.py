"""Tracker composition root: settings → pool → migrations → broker → HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from services.tracker import (
    erasure,
    handlers,
    identity,
    metrics,
    receipts,
    report,
    twilio_callbacks,
    voters,
)
from services.tracker.settings import TrackerSettings
from shared import db, http_input, openapi, topics
from shared.events import CampaignCompleted, DeliveryReported
from shared.kafka import ensure_topics, make_broker, publish_all
from shared.observability import HttpMetrics, LagMonitor
from shared.pollers import Poller
from shared.service import ops_router, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: TrackerSettings | None = None) -> FastAPI:
    settings = settings or TrackerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, "tracker", max_size=settings.db_pool_max,
            session_state=False,
        )
        await db.migrate(pool, "tracker", MIGRATIONS)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="sendout-tracker")
        lifecycle_pub = broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Completed campaigns, keyed by campaign id."
        )

        async def publish_completed(events: list[CampaignCompleted]) -> None:
            await publish_all(
                lifecycle_pub, [(e.campaign_id.bytes, e) for e in events], service="tracker"
            )

        broker.include_router(
            handlers.kafka_router(pool, publish_completed, settings.batch_max_records)
        )
        receipts_pub = broker.publisher(
            topics.RECEIPTS, description="Delivery receipts from providers, keyed by campaign id."
        )

        async def publish_receipts(items: list[tuple[bytes, DeliveryReported]]) -> None:
            await publish_all(receipts_pub, items, service="tracker")

        broker.include_router(receipts.kafka_router(pool, settings.batch_max_records))
        broker.include_router(identity.kafka_router(pool))
        broker.include_router(erasure.kafka_router(pool))
        await broker.start()
        lag = LagMonitor(broker, interval=settings.metrics_interval_seconds)
        lag.start()
        campaigns = Poller("campaigns in flight", metrics.CampaignGauges(pool).update,
                           settings.metrics_interval_seconds)
        campaigns.start()
        user = Depends(identity.require_user(pool))
        app.include_router(handlers.http_router(pool, user))
        app.include_router(voters.http_router(pool, user))
        app.include_router(receipts.http_router(
            pool, publish_receipts, settings.receipts_secret, settings.receipts_max_skew_seconds
        ))
        app.include_router(twilio_callbacks.http_router(
            pool, publish_receipts, settings.twilio_auth_token, settings.twilio_public_base_url
        ))
        app.include_router(report.http_router(pool, user))
        app.include_router(ops_router(standard_checks(pool, broker)))
        try:
            yield
        finally:
            await campaigns.stop()
            await lag.stop()
            await broker.stop()
            await pool.close()

    app = FastAPI(title="Sendout tracker", lifespan=lifespan)
    # Receipts are the only body the tracker takes: at most 1000 of them, well under 1 MiB.
    http_input.install(app, default_limit=http_input.DEFAULT_BODY_LIMIT)
    openapi.install(app, signed=frozenset({"/receipts", "/providers/twilio/status"}), extra={
        ("POST", "/receipts"): {503: "Receipts not configured (SENDOUT_RECEIPTS_SECRET)"},
        ("POST", "/providers/twilio/status"): {
            400: "Body is not UTF-8", 503: "Twilio not configured (SENDOUT_TWILIO_AUTH_TOKEN)"},
    })
    # Outermost (added last): requests the input guard refuses are measured too.
    app.add_middleware(HttpMetrics, service="tracker", webhooks={"/receipts": "receipts"})
    return app
