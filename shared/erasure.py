"""The consumer every service holding recipients' addresses runs on `sendout.erasures.v1`
(written by the scheduler when a voter's personal data is erased): decode a batch, hand its
events to the service's own SQL in one connection, dead-letter what cannot be decoded
(shared/kafka.py `process_bounded`). What is blanked, and where, stays each service's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from shared import topics
from shared.db import Conn
from shared.events import ERASURE, RecipientsErased
from shared.kafka import BATCH_CONSUMER, process_bounded

# The service's erasure: blank the events' recipients in its tables; idempotent (an event may
# come again, alone or with others).
Erase = Callable[[Conn, Sequence[RecipientsErased]], Awaitable[object]]


def kafka_router(pool: asyncpg.Pool, erase: Erase, *, service: str, description: str,
                 max_records: int = 500) -> KafkaRouter:
    """A router with the service's erasure subscriber (consumer group
    `sendout-<service>-erasures`)."""
    router = KafkaRouter()

    @router.subscriber(
        topics.ERASURES,
        group_id=f"sendout-{service}-erasures",
        max_records=max_records,
        description=description,
        **BATCH_CONSUMER,
    )
    async def on_erasures(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], RecipientsErased]]) -> None:
            async with pool.acquire() as conn:
                await erase(conn, [event for _, event in good])

        await process_bounded(msg, broker, ERASURE, apply, service=service)

    return router
