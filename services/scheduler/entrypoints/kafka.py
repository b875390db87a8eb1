"""The scheduler's Kafka subscribers: decode, then a use case over a unit of work (its HTTP
routes are entrypoints/http/)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.aborts import AbortAcks
from shared import topics
from shared.events import LIFECYCLE, AbortAcknowledged, CampaignCompleted, LifecycleEvent
from shared.kafka import (
    BATCH_CONSUMER,
    BROADCAST_CONSUMER,
    decode_records,
    process_bounded,
    records_of,
)

SERVICE = "scheduler"


def kafka_router(pool: asyncpg.Pool, acks: AbortAcks) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-scheduler",
        max_records=500,
        description="Learns from the tracker when a campaign has nothing pending any more.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], LifecycleEvent]]) -> None:
            for _, event in good:
                if isinstance(event, CampaignCompleted):
                    await use_cases.apply_completed(AsyncpgUnitOfWork(pool), event)

        await process_bounded(msg, broker, LIFECYCLE, apply, service=SERVICE)

    # No group: every scheduler process sees every acknowledgement, since the abort request
    # waiting for it may be on any of them. Bad records are the group consumer's to park.
    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        description="Abort acknowledgements from dispatcher instances.",
        **BROADCAST_CONSUMER,
    )
    async def on_abort_acks(body: list[bytes], msg: KafkaMessage) -> None:
        good, _ = decode_records(records_of(msg), LIFECYCLE)
        for _, event in good:
            if isinstance(event, AbortAcknowledged):
                acks.acknowledged(event)

    return router
