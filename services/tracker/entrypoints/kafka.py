"""The tracker's Kafka subscribers: outcomes and lifecycle events into the progress projection,
receipts into delivered / not delivered, API tokens into its copy of them (its HTTP routes are
entrypoints/http/; erasures are services/tracker/erasure.py's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from services.tracker import identity, receipts_service, service
from services.tracker.service import PublishCompleted
from shared import topics
from shared.events import (
    IDENTITY,
    LIFECYCLE,
    RECEIPT,
    ApiTokenIssued,
    ApiTokenRevoked,
    DeliveryReported,
    LifecycleEvent,
)
from shared.kafka import BATCH_CONSUMER, process_bounded
from shared.metrics import RECEIPTS_CONSUMED
from shared.wire import Outcome, decode_outcomes

SERVICE = "tracker"


def kafka_router(
    pool: asyncpg.Pool, publish_completed: PublishCompleted, max_records: int
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.OUTCOMES,
        group_id="sendout-tracker",
        max_records=max_records,
        # A campaign's outcomes share one partition: at 1 MiB per fetch a batch held ~2,000.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        description="Counts each outcome once into its campaign's progress.",
        **BATCH_CONSUMER,
    )
    async def on_outcomes(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], list[Outcome]]]) -> None:
            await service.apply_outcomes(
                pool, topics.OUTCOMES,
                [(record, outcome) for record, outcomes in good for outcome in outcomes],
                publish_completed,
            )

        await process_bounded(msg, broker, decode_outcomes, apply, service=SERVICE)

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-tracker-lifecycle",
        max_records=500,
        description="Learns each campaign's totals when it starts sending, and its aborts.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], LifecycleEvent]]) -> None:
            await service.apply_lifecycle(pool, [e for _, e in good], publish_completed)

        await process_bounded(msg, broker, LIFECYCLE, apply, service=SERVICE)

    @router.subscriber(
        topics.RECEIPTS,
        group_id="sendout-tracker-receipts",
        max_records=max_records,
        description="Refines completed recipients into delivered / not delivered.",
        **BATCH_CONSUMER,
    )
    async def on_receipts(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], DeliveryReported]]) -> None:
            await receipts_service.apply_receipts(pool, topics.RECEIPTS, good)
            for _, receipt in good:
                RECEIPTS_CONSUMED.labels(receipt.status).inc()

        await process_bounded(msg, broker, RECEIPT, apply, service=SERVICE)

    @router.subscriber(
        topics.IDENTITY,
        group_id="sendout-tracker-identity",
        max_records=500,
        description="API tokens issued and revoked by the scheduler.",
        **BATCH_CONSUMER,
    )
    async def on_identity(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def store(
            good: Sequence[tuple[ConsumerRecord[Any, Any], ApiTokenIssued | ApiTokenRevoked]],
        ) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await identity.apply(conn, [e for _, e in good])

        await process_bounded(msg, broker, IDENTITY, store, service=SERVICE)

    return router
