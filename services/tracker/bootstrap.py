"""Tracker wiring: settings → pool → migrations → broker, publishers and subscribers → the
gauges' poller → the dependencies the HTTP routes use (`Tracker`, on `app.state.tracker`).

Nothing here runs at import time: `running(settings)` builds and starts everything, and stops
it in the reverse order. The HTTP app (app.py) is built without any of it, so its routes and
OpenAPI document exist without a database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.tracker import erasure, identity, metrics
from services.tracker.entrypoints import kafka
from services.tracker.receipts_service import PublishReceipts
from services.tracker.service import PublishCompleted
from services.tracker.settings import TrackerSettings
from shared import db, topics, webhooks
from shared.auth import LookUp
from shared.events import CampaignCompleted, DeliveryReported
from shared.kafka import ensure_topics, make_broker, publish_all
from shared.observability import LagMonitor
from shared.pollers import Poller
from shared.service import HealthCheck, serving_lifespan, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE = "tracker"


@dataclass
class Tracker:
    """What the HTTP routes need of a running tracker: the pool for reads, the caller's
    identity, and where accepted receipts go (with the webhook's nonces)."""

    pool: asyncpg.Pool
    settings: TrackerSettings
    look_up: LookUp
    publish_receipts: PublishReceipts
    receipt_nonces: webhooks.NonceStore
    checks: dict[str, HealthCheck] = field(default_factory=dict)


@dataclass
class _Publishers:
    lifecycle: DefaultPublisher
    receipts: DefaultPublisher


def _declare_publishers(broker: KafkaBroker) -> _Publishers:
    """Declared once, so the AsyncAPI document shows them."""
    return _Publishers(
        lifecycle=broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Completed campaigns, keyed by campaign id."
        ),
        receipts=broker.publisher(
            topics.RECEIPTS, description="Delivery receipts from providers, keyed by campaign id."
        ),
    )


def _publish_completed(pubs: _Publishers) -> PublishCompleted:
    async def publish_completed(events: list[CampaignCompleted]) -> None:
        await publish_all(
            pubs.lifecycle, [(e.campaign_id.bytes, e) for e in events], service=SERVICE
        )

    return publish_completed


def _publish_receipts(pubs: _Publishers) -> PublishReceipts:
    async def publish_receipts(items: list[tuple[bytes, DeliveryReported]]) -> None:
        await publish_all(pubs.receipts, items, service=SERVICE)

    return publish_receipts


@asynccontextmanager
async def running(settings: TrackerSettings) -> AsyncIterator[Tracker]:
    """The tracker's adapters and loops, started; stopped (in reverse) when the block ends."""
    async with AsyncExitStack() as stack:
        pool = await db.create_pool(
            settings.database_url, "tracker", max_size=settings.db_pool_max,
            session_state=False,
        )
        stack.push_async_callback(pool.close)
        await db.migrate(pool, "tracker", MIGRATIONS)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="sendout-tracker")
        pubs = _declare_publishers(broker)
        broker.include_router(
            kafka.kafka_router(pool, _publish_completed(pubs), settings.batch_max_records)
        )
        broker.include_router(erasure.kafka_router(pool))
        await broker.start()
        stack.push_async_callback(broker.stop)
        for loop in (
            LagMonitor(broker, interval=settings.metrics_interval_seconds),
            Poller("campaigns in flight", metrics.CampaignGauges(pool).update,
                   settings.metrics_interval_seconds),
        ):
            loop.start()
            stack.push_async_callback(loop.stop)
        yield Tracker(
            pool=pool, settings=settings, look_up=identity.look_up(pool),
            publish_receipts=_publish_receipts(pubs),
            receipt_nonces=webhooks.NonceStore(pool, settings.receipts_max_skew_seconds),
            checks=standard_checks(pool, broker),
        )


def lifespan(settings: TrackerSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the running tracker on `app.state.tracker` while it serves."""
    return serving_lifespan(running, settings, "tracker")
